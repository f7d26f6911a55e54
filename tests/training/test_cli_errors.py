"""Bad input: a clear message, a non-zero exit, nothing half-written."""

import json

from PIL import Image

from .conftest import cli


def test_unknown_recipe(tmp_path):
    proc = cli("run", "nope", "--out", tmp_path / "x", check=False)
    assert proc.returncode == 2 and "unknown recipe 'nope'" in proc.stderr and "toy2d" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_refuses_to_overwrite_or_resume_nothing(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    proc = cli("run", "toy2d", "--out", out, check=False)
    assert proc.returncode == 2 and "--resume" in proc.stderr
    assert (out / "keep.txt").read_text() == "user data"
    proc = cli("run", "toy2d", "--out", tmp_path / "empty", "--resume", check=False)
    assert proc.returncode == 2 and "no run to resume" in proc.stderr


def test_bad_override(tmp_path):
    proc = cli("run", "toy2d", "--out", tmp_path / "x", "--set", "teacher.stepz=3", check=False)
    assert proc.returncode == 2 and "stepz" in proc.stderr
    proc = cli("run", "toy2d", "--out", tmp_path / "x", "--set", "distill_start_steps=6", check=False)
    assert proc.returncode == 2 and "power of two" in proc.stderr


def make_folder(root, n=4, broken=None, metadata=True):
    root.mkdir()
    lines = []
    for k in range(n):
        name = f"img{k}.png"
        if k == broken:
            (root / name).write_bytes(b"not an image at all")
        else:
            Image.new("RGB", (20, 24), (40 * k, 100, 200)).save(root / name)
        lines.append(json.dumps({"file_name": name, "text": f"a picture number {k}"}))
    if metadata:
        (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_imagefolder_without_metadata(tmp_path):
    folder = make_folder(tmp_path / "data", metadata=False)
    proc = cli("run", "quick", "--out", tmp_path / "out", "--data-dir", folder, check=False)
    assert proc.returncode == 2 and "metadata.jsonl" in proc.stderr
    assert not (tmp_path / "out" / "recipe.json").exists()


def test_imagefolder_with_a_broken_image(tmp_path):
    folder = make_folder(tmp_path / "data", broken=2)
    proc = cli("run", "quick", "--out", tmp_path / "out", "--data-dir", folder, check=False)
    assert proc.returncode == 2 and "img2.png" in proc.stderr
    assert not (tmp_path / "out" / "recipe.json").exists() and not (tmp_path / "out" / "teacher").exists()


def test_imagefolder_trains(tmp_path):
    folder = make_folder(tmp_path / "data", n=6)
    small = ["--set", "teacher.steps=3", "--set", "stage1.steps=2", "--set", "distill.steps=1", "--set", "stochastic.steps=1", "--set", "distill_start_steps=8", "--set", "stochastic_steps=[4, 2]"]
    cli("run", "quick", "--out", tmp_path / "out", "--data-dir", folder, "--no-eval", *small)
    family = json.loads((tmp_path / "out" / "family.json").read_text())
    assert family["text_encoder"] == "all-MiniLM-L6-v2" and family["class_names"] == []
    assert {"teacher", "stage1", "distilled-2", "distilled-1", "stochastic-4", "stochastic-2"} <= set(family["checkpoints"])


def test_evaluate_and_sample_fail_clearly_on_missing_or_corrupt_checkpoints(quick_run, tmp_path):
    proc = cli("evaluate", tmp_path / "nowhere", check=False)
    assert proc.returncode == 2 and "recipe.json" in proc.stderr
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(quick_run, broken)
    weights = broken / "distilled-4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    proc = cli("sample", broken, "--steps", "4", "--class", "0", "--out", tmp_path / "s.png", check=False)
    assert proc.returncode == 2 and "distilled-4" in proc.stderr and "safetensors" in proc.stderr
    assert not (tmp_path / "s.png").exists()
    shutil.rmtree(broken / "teacher")
    proc = cli("evaluate", broken, check=False)
    assert proc.returncode == 2 and "teacher" in proc.stderr


def test_sample_rejects_gamma_outside_the_trained_range_and_missing_students(quick_run, tmp_path):
    proc = cli("sample", quick_run, "--guidance", "9", "--class", "0", "--out", tmp_path / "s.png", check=False)
    assert proc.returncode == 2 and "outside the trained range [0.0, 4.0]" in proc.stderr
    proc = cli("sample", quick_run, "--steps", "3", "--class", "0", "--out", tmp_path / "s.png", check=False)
    assert proc.returncode == 2 and "available: [1, 2, 4, 8]" in proc.stderr
    proc = cli("sample", quick_run, "--steps", "1", "--stochastic", "--class", "0", "--out", tmp_path / "s.png", check=False)
    assert proc.returncode == 2 and "stochastic" in proc.stderr
    proc = cli("sample", quick_run, "--class", "purple blob", "--out", tmp_path / "s.png", check=False)
    assert proc.returncode == 2 and "unknown class" in proc.stderr
    assert not (tmp_path / "s.png").exists()
    proc = cli("sample", quick_run, "--steps", "2", "--prompt", "a yellow square", "--out", tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 0

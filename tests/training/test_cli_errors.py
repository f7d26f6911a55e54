"""Bad input: a clear message, a non-zero exit, nothing half-written."""

import json

import pytest

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
    for bad, words in (("gamma_pathway=after", "gamma_pathway"), ("stage1.lr_schedule=cosine", "lr_schedule"), ("distill.ema_decay=1.5", "ema_decay")):
        proc = cli("run", "toy2d", "--out", tmp_path / "x", "--set", bad, check=False)
        assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x" / "recipe.json").exists()


def run_main(capsys, *args) -> tuple[int, str]:
    """`python -m training ARGS` in this process (no torch start-up per case): exit code, stderr."""
    from training.cli import main

    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # the parser's own errors
        code = exc.code
    return code, capsys.readouterr().err


def test_bad_arguments_are_refused_before_any_work(tmp_path, capsys):
    from training.recipes import get_recipe

    a_file = tmp_path / "a-file"
    a_file.write_text("user data")
    run_dir = tmp_path / "run"  # a run's folder with its recipe only: enough to reach the checks
    run_dir.mkdir()
    (run_dir / "recipe.json").write_text(get_recipe("quick").to_json())
    cases = [
        (("run", "quick", "--out", a_file), "is a file"),
        (("run", "quick", "--out", tmp_path / "x", "--dry-run", "--set", "teacher.lr=abc"), "recipe.teacher.lr: expected float, got 'abc'"),
        (("run", "quick", "--out", tmp_path / "x", "--dry-run", "--set", "teacher.steps=100k"), "recipe.teacher.steps: expected int, got '100k'"),
        (("run", "quick", "--out", tmp_path / "x", "--dry-run", "--set", "evaluation.repeats=0"), "repeats >= 1"),  # not after training
        (("evaluate", run_dir, "--samples", "1"), "must be at least 2"),
        (("evaluate", run_dir, "--device", "gpu"), "--device 'gpu' is not a device"),
        (("report", run_dir, "--out", tmp_path / "report"), "evaluate it first"),
        (("sample", run_dir, "--class", "0", "--out", tmp_path / "nowhere" / "s.png"), "no folder"),
        (("export", run_dir, "--to", tmp_path / "copy", "--max-steps", "0"), "must be at least 1"),
        (("data", "emoji", "--out", a_file, "--font", a_file), "is a file"),  # any existing --font: checked after the folder
    ]
    for args, needle in cases:
        code, err = run_main(capsys, *args)
        assert code == 2 and needle in err and "Traceback" not in err, (args, code, err[-1000:])
    assert a_file.read_text() == "user data" and not (tmp_path / "x").exists() and not (tmp_path / "report").exists()
    from training.cli import main

    assert main(["run", "quick", "--out", str(tmp_path / "x"), "--dry-run", "--set", "name=2024"]) == 0  # a number given to a text field
    assert json.loads(capsys.readouterr().out)["name"] == "2024"


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 230), "yellow": (240, 220, 30), "white": (245, 245, 245), "black": (10, 10, 10)}


def make_folder(root, n=4, broken=None, metadata=True, text=True, label=False):
    root.mkdir()
    lines = []
    names = list(COLOURS)
    for k in range(n):
        name = f"img{k}.png"
        colour = names[k % len(names)]
        if k == broken:
            (root / name).write_bytes(b"not an image at all")
        else:
            Image.new("RGB", (20, 24), COLOURS[colour]).save(root / name)
        row = {"file_name": name}
        if text:
            row["text"] = f"a {colour} picture"
        if label:
            row["label"] = colour
        lines.append(json.dumps(row))
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


SMALL = ["--set", "teacher.steps=3", "--set", "stage1.steps=2", "--set", "distill.steps=1", "--set", "stochastic.steps=1", "--set", "distill_start_steps=8", "--set", "stochastic_steps=[4, 2]", "--set", "evaluation.evaluator_steps=60",
         # every kind of row, each with fewer network calls (the recipe's 256-step reference took half the test's time)
         "--set", "evaluation.reference_steps=16", "--set", "evaluation.teacher_steps=[1, 2]", "--set", "evaluation.stage1_steps=2"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["captions", "labels", "both"])
def test_imagefolder_trains_and_evaluates(tmp_path, kind):
    """The default `run` on a user's folder, evaluation included: FID/KID against the folder's
    images, and adherence that fits the conditioning (caption retrieval for free text)."""
    folder = make_folder(tmp_path / "data", n=12, text=kind != "labels", label=kind != "captions")
    cli("run", "quick", "--out", tmp_path / "out", "--data-dir", folder, *SMALL)
    family = json.loads((tmp_path / "out" / "family.json").read_text())
    assert {"teacher", "stage1", "distilled-2", "distilled-1", "stochastic-4", "stochastic-2"} <= set(family["checkpoints"])
    assert (family["text_encoder"] == "all-MiniLM-L6-v2") == (kind != "labels")
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["conditioning"] == ("free-text" if kind == "captions" else "class")
    for row in metrics["rows"]:
        assert row["fid"] is not None and row["kid"] is not None and 0.0 <= row["adherence"] <= 1.0
    assert metrics["fid_real_vs_real"] is not None and metrics["edits"]["img2img"]


@pytest.mark.slow  # needs the quick recipe's run
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


@pytest.mark.slow  # needs the quick recipe's run
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


def test_a_kl_autoencoder_without_its_widths_is_refused_with_a_reason(tmp_path):
    out = tmp_path / "family"
    proc = cli("run", "quick", "--out", out, "--set", "autoencoder.kind=kl", check=False)
    assert proc.returncode == 2
    assert "needs block_out_channels" in proc.stderr
    assert not out.exists()

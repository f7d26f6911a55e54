"""The evaluation's progress folder: parts survive a restart with the same fingerprint only."""

import torch

from training.eval_progress import EvalProgress, fingerprint


def test_parts_and_tensors_survive_a_restart_with_the_same_fingerprint(tmp_path):
    p = EvalProgress(tmp_path, "key-a")
    p.put("row/1.0/distilled/4", {"fid": 1.5})
    p.save_tensors("reference-1.0", [torch.ones(2, 3), torch.zeros(1)])
    again = EvalProgress(tmp_path, "key-a")
    assert again.get("row/1.0/distilled/4") == {"fid": 1.5}
    saved = again.tensors("reference-1.0")
    assert torch.equal(saved[0], torch.ones(2, 3)) and torch.equal(saved[1], torch.zeros(1))


def test_another_fingerprint_or_no_resume_starts_afresh(tmp_path):
    EvalProgress(tmp_path, "key-a").put("edits", {"x": 1})
    assert "edits" not in EvalProgress(tmp_path, "key-b")
    EvalProgress(tmp_path, "key-b").put("edits", {"x": 1})
    assert "edits" not in EvalProgress(tmp_path, "key-b", resume=False)


def test_a_torn_last_line_and_damaged_tensors_are_ignored(tmp_path):
    p = EvalProgress(tmp_path, "k")
    p.put("a", 1)
    with p.parts_path.open("a") as f:
        f.write('{"key": "b", "val')  # a kill in the middle of a write
    (p.root / "reference-0.0.safetensors").write_bytes(b"not safetensors")
    again = EvalProgress(tmp_path, "k")
    assert again.parts == {"a": 1}
    assert again.tensors("reference-0.0") is None


def test_fingerprint_sees_the_weights_and_the_settings(tmp_path):
    (tmp_path / "teacher").mkdir()
    weights = tmp_path / "teacher" / "model.safetensors"
    weights.write_bytes(b"one")
    a = fingerprint(tmp_path, ["teacher"], {"samples": 1024})
    assert fingerprint(tmp_path, ["teacher"], {"samples": 512}) != a
    weights.write_bytes(b"two")
    assert fingerprint(tmp_path, ["teacher"], {"samples": 1024}) != a

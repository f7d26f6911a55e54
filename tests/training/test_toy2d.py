"""The headline claim at toy scale: an N-step distilled student is closer to the 256-step
guided teacher than the teacher's own DDIM with 2N steps (same noise)."""

import pytest

from .conftest import read_metrics

pytestmark = pytest.mark.slow  # trains the toy recipe


def row(metrics, sampler, steps, gamma):
    matches = [r for r in metrics["rows"] if r["sampler"] == sampler and r["steps"] == steps and r["guidance"] == gamma]
    assert len(matches) == 1, (sampler, steps, gamma)
    return matches[0]


@pytest.mark.parametrize("gamma", [0.0, 1.0, 4.0])
@pytest.mark.parametrize("n", [1, 2, 4])
def test_distilled_beats_teacher_ddim_with_twice_the_steps(toy2d_run, n, gamma):
    metrics = read_metrics(toy2d_run)
    distilled = row(metrics, "distilled", n, gamma)["rmse_to_reference"]
    teacher = row(metrics, "teacher-ddim", 2 * n, gamma)["rmse_to_reference"]
    assert distilled < teacher, f"N={n} gamma={gamma}: distilled {distilled:.4f} vs teacher DDIM-{2 * n} {teacher:.4f}"


def test_toy2d_metrics_schema_and_guidance_effect(toy2d_run):
    metrics = read_metrics(toy2d_run)
    assert metrics["family"] == "toy2d" and metrics["reference"]["steps"] == 256
    ref0, ref4 = row(metrics, "teacher-ddim", 256, 0.0), row(metrics, "teacher-ddim", 256, 4.0)
    assert ref0["rmse_to_reference"] == 0.0 and ref0["evals"] == 512
    assert row(metrics, "distilled", 1, 0.0)["evals"] == 1
    # guidance trades diversity for adherence, as it should
    assert ref4["adherence"] > ref0["adherence"]
    # the 1-step student adheres nearly as well as the 256-step teacher; 1-step DDIM does not
    assert row(metrics, "distilled", 1, 1.0)["adherence"] > 0.9 * row(metrics, "teacher-ddim", 256, 1.0)["adherence"]
    assert row(metrics, "teacher-ddim", 1, 1.0)["adherence"] < 0.6
    for r in metrics["rows"]:
        assert {"sampler", "steps", "evals", "guidance", "fid", "adherence", "rmse_to_reference"} <= set(r)

import pytest

from service.batching import cut_rows, plan_batches
from service.contract import Job, JobItem


def job(model="shapes", steps=4, stochastic=False, tag=0):
    return Job(id=f"job-{tag}", endpoint="generate", model=model, steps=steps, stochastic=stochastic, format="png", created=0.0, deadline=1e12,
               items=[JobItem(seed=tag, guidance=1.0, class_label=0)])


def tags(batches):
    return [[int(j.id.split("-")[1]) for j in b] for b in batches]


def test_compatible_requests_share_a_batch_in_arrival_order():
    jobs = [job(tag=0), job(steps=1, tag=1), job(tag=2), job(stochastic=True, tag=3), job(tag=4)]
    assert tags(plan_batches(jobs, max_batch_size=8)) == [[0, 2, 4], [1], [3]]


def test_batches_respect_the_size_limit():
    batches = plan_batches([job(tag=k) for k in range(10)], max_batch_size=4)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert [t for b in tags(batches) for t in b] == list(range(10))


def test_other_families_never_share():
    batches = plan_batches([job(model="a", tag=0), job(model="b", tag=1), job(model="a", tag=2)], max_batch_size=8)
    assert [[j.model for j in b] for b in batches] == [["a", "a"], ["b"]]


def test_runs_hold_at_most_the_fixed_row_count_in_arrival_order():
    rows = {0: 1, 1: 3, 2: 1, 3: 2, 4: 6, 5: 1, 6: 1}  # job tag -> images
    batch = [job(tag=k) for k in rows]
    runs = cut_rows(batch, lambda j: rows[int(j.id.split("-")[1])], 4)
    assert tags(runs) == [[0, 1], [2, 3], [4], [5, 6]]  # 6 images: alone, over two calls
    assert cut_rows(batch[:1], lambda j: 1, 4) == [batch[:1]]
    with pytest.raises(ValueError):
        cut_rows(batch, lambda j: 1, 0)

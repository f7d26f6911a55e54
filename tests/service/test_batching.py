from service.batching import plan_batches


def job(model="shapes", steps=4, stochastic=False, tag=0):
    return {"model": model, "steps": steps, "stochastic": stochastic, "tag": tag}


def test_compatible_requests_share_a_batch_in_arrival_order():
    jobs = [job(tag=0), job(steps=1, tag=1), job(tag=2), job(stochastic=True, tag=3), job(tag=4)]
    batches = plan_batches(jobs, max_batch_size=8)
    assert [[j["tag"] for j in b] for b in batches] == [[0, 2, 4], [1], [3]]


def test_batches_respect_the_size_limit():
    batches = plan_batches([job(tag=k) for k in range(10)], max_batch_size=4)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert [j["tag"] for b in batches for j in b] == list(range(10))


def test_other_families_never_share():
    batches = plan_batches([job(model="a"), job(model="b"), job(model="a")], max_batch_size=8)
    assert [[j["model"] for j in b] for b in batches] == [["a", "a"], ["b"]]

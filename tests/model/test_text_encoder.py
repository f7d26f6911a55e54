import torch

from model.text_encoder import TEXT_DIM, CachedTextEncoder, TextEncoder


def test_minilm_token_states_null_prompt_and_cache():
    enc = TextEncoder(max_length=8)
    states, mask = enc(["a red circle", "", "a blue square"])
    assert states.shape == (3, 8, TEXT_DIM) and mask.shape == (3, 8)
    assert mask[0].sum() == 5  # [CLS] a red circle [SEP]
    assert not mask[1].any()  # the empty prompt is the null condition
    assert not torch.allclose(states[0], states[2])
    # similar prompts are closer than unrelated ones: a real encoder, not a hash
    a, b, c = enc(["a red circle", "a red disc", "quarterly tax report"])[0][:, 0]
    cos = torch.nn.functional.cosine_similarity
    assert cos(a, b, dim=0) > cos(a, c, dim=0)
    again, _ = enc(["a red circle"])
    assert torch.equal(again[0], states[0])
    assert "a red circle" in enc._cache


def test_with_fixed_batch_an_encoding_does_not_depend_on_what_missed_the_cache_with_it():
    """Training resumes with a cold cache: its captions must encode to the same bits as in the
    uninterrupted run, whose cache history differs (CPU kernels choose their arithmetic by shape)."""
    prompts = [f"a {c} {s}" for c in ("red", "green", "blue", "yellow") for s in ("circle", "square", "triangle", "cross")]
    a, b = TextEncoder(16, fixed_batch=16), TextEncoder(16, fixed_batch=16)
    first = a(prompts[:6])[0]
    b(prompts[3:4])  # one of them cached first, the rest encoded beside fewer mates
    assert torch.equal(first, b(prompts[:6])[0])


class BatchMarkingEncoder(CachedTextEncoder):
    """A stand-in whose encoding of a prompt depends on its batch (as CPU kernels' last bits do,
    by shape): each row is marked with the batch's row count."""

    dim = 2

    def __init__(self, fixed_batch, cache_size=64):
        self.rows = []
        self._setup(4, cache_size, "cpu", fixed_batch, on_device=False)

    def _encode(self, prompts):
        self.rows.append(len(prompts))
        states = torch.tensor([[float(len(p)), float(len(prompts))] for p in prompts])[:, None].expand(-1, 4, -1)
        return states.clone(), torch.ones(len(prompts), 4, dtype=torch.bool)


def test_warm_encodes_in_the_fixed_chunks_a_call_uses():
    prompts = [f"prompt {k}" for k in range(11)]
    warmed, called = BatchMarkingEncoder(fixed_batch=4), BatchMarkingEncoder(fixed_batch=4)
    warmed.warm(prompts)
    assert warmed.rows == [4, 4, 4]  # 11 prompts: three calls of exactly 4 rows (the last padded)
    for k in range(0, 11, 3):
        assert torch.equal(warmed(prompts[k : k + 3])[0], called(prompts[k : k + 3])[0])
    small = BatchMarkingEncoder(fixed_batch=4, cache_size=6)
    small(prompts[:2])  # cached first, so the oldest entries...
    small(["other one", "other two"])
    small.warm(prompts[:6])  # ...but warmed again: they are kept, the others evicted
    assert set(small._cache) == set(prompts[:6])


def test_warm_caches_what_a_call_would_encode():
    """A training run encodes its caption vocabulary up front (`warm`); each caption must get
    the bits a step would have encoded it to, among whatever captions missed with it."""
    prompts = [f"a {c} {s}" for c in ("red", "green", "blue", "yellow") for s in ("circle", "square", "triangle", "cross")]
    warmed, called = TextEncoder(16, fixed_batch=8), TextEncoder(16, fixed_batch=8)
    warmed.warm([f" {p} " for p in prompts] + [""])  # stripped like a call's; the empty prompt is never cached
    assert set(warmed._cache) == set(prompts)
    batch = [prompts[5], prompts[0], "", prompts[11]]
    for got, want in zip(warmed(batch), called(batch)):
        assert torch.equal(got, want)
    small = TextEncoder(16, cache_size=4, fixed_batch=8)
    small.warm(prompts)
    assert len(small._cache) == 4  # the cache's bound holds

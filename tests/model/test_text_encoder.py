import torch

from model.text_encoder import TEXT_DIM, TextEncoder


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

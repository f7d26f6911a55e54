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

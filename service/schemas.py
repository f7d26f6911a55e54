"""Request bodies of the JSON endpoints: field types and service-wide bounds (n, seed).

What a field may hold for a given family (steps, guidance, class, prompt, images, strength)
is checked in one place, `model.validation.check_request`, when the job is built.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from .contract import Endpoint, Format


def utf8_text(value: str) -> str:
    """Text UTF-8 can carry. JSON's escapes can spell a lone UTF-16 surrogate ("\\ud800"), which
    Python decodes into a string that the tokenizer, Redis and the JSON answer cannot encode."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"holds a lone UTF-16 surrogate at character {exc.start}: not text") from None
    return value


Text = Annotated[str, AfterValidator(utf8_text)]


class Sampling(BaseModel):
    """Fields every generation endpoint takes."""

    model_config = ConfigDict(extra="forbid")

    model: Text | None = Field(default=None, description="model family; default: the built-in one")
    guidance: float | list[float] | None = Field(
        default=None,
        description="guidance weight gamma, within the family's trained range; a list of up to 8 values is a guidance sweep: one image per value, all from one seed (n = 1), in one batch",
    )
    steps: int | None = Field(default=None, description="sampling steps (1-8): a count the family has a student for; default: the nearest to the service's default")
    stochastic: bool = Field(default=False, description="use the N-step stochastic sampler")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 9, description="same seed and request -> same pixels; image k uses seed + k")
    n: int = Field(default=1, ge=1, le=8, description="number of images")
    format: Format = "png"


class Conditioned(Sampling):
    """At most one of a class label (id or name) and a prompt: exactly one for a conditional
    model, neither for an unconditional one (model/validation.py)."""

    class_label: int | Text | None = Field(default=None, description="class id or name")
    prompt: Text | None = None


class GenerateBody(Conditioned):
    pass


class Txt2ImgBody(Sampling):
    prompt: Text


class Img2ImgBody(Conditioned):
    image: Text = Field(description="base64 image (or a data: URL)")
    strength: float = Field(default=0.6, description="in (0, 1]: 1 ignores the image; small values change it little")


class InpaintBody(Conditioned):
    image: Text = Field(description="base64 image")
    mask: Text = Field(description="base64 image of the same size; white = repaint")


BODIES: dict[str, type[Sampling]] = {"generate": GenerateBody, "txt2img": Txt2ImgBody, "img2img": Img2ImgBody, "inpaint": InpaintBody}


class PngInfoBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: Text = Field(description="base64 PNG (or a data: URL) that this service returned")


class JobBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoint: Endpoint
    request: dict = Field(description="the body the endpoint takes")
    webhook: Text | None = Field(default=None, max_length=2048, description="URL the result is POSTed to when the job ends (a host the service allows; signed)")


class OpenAIGenerationBody(BaseModel):
    """POST /v1/images/generations, as the OpenAI Images API; unknown OpenAI fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    prompt: Text
    model: Text | None = None
    n: int = Field(default=1, ge=1, le=8)
    size: Text | None = None
    response_format: Literal["b64_json", "url"] | None = None
    output_format: Format | None = None
    stream: bool = False  # OpenAI's image event stream, with partial_images previews
    partial_images: int | None = Field(default=None, ge=0, le=3)
    # fewstep's own (pass them with extra_body)
    guidance: float | None = None
    steps: int | None = None
    stochastic: bool = False
    seed: int | None = Field(default=None, ge=0, le=2**63 - 9)

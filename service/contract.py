"""The job contract: what the API writes onto the Redis stream and what workers write back.

These models are the only things written to or read from the stream (`Job`) and the result
keys (`JobResult`). Both carry a format version; a worker that reads an entry it cannot
parse, or one of another version, finishes it as failed (`read_job`) instead of crashing.
A job is valid by construction: the API checked it against the family's manifest
(model/validation.py), so a worker runs it without checking again.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

FORMAT_VERSION = 3  # 2: Job.store_result; 3: Job.sweep and Job.webhook, JobResult.guidance may be a list

Format = Literal["png", "jpeg", "webp"]
Endpoint = Literal["generate", "txt2img", "img2img", "inpaint"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", ser_json_bytes="base64", val_json_bytes="base64")


class JobItem(_Model):
    """One image to draw. Images are PNG bytes at the family's resolution (base64 in JSON)."""

    seed: int
    guidance: float
    class_label: int | None = None
    prompt: str | None = None
    image: bytes | None = None  # RGB PNG: the img2img source, or the image to inpaint
    mask: bytes | None = None  # greyscale PNG, white = repaint (inpainting)
    strength: float = 1.0  # img2img: start at t = strength


class Job(_Model):
    """A checked request: one student (model, steps, stochastic), one output format, its items."""

    version: Literal[3] = FORMAT_VERSION
    id: str
    endpoint: Endpoint
    model: str
    steps: int
    stochastic: bool
    format: Format
    created: float  # unix time
    deadline: float  # unix time; a worker that reaches the job later fails it (504)
    store_result: bool = False  # True: kept for GET /v1/jobs/{id}; False: handed to the waiting request only
    sweep: bool = False  # a guidance sweep: the items share a seed and differ in guidance
    webhook: str | None = None  # an allowed URL the worker POSTs the result to (service/webhooks.py)
    items: list[JobItem] = Field(min_length=1)


class JobResult(_Model):
    """What a job came to: images (base64 of the encoded files) or an error with an HTTP status."""

    version: Literal[3] = FORMAT_VERSION
    status: Literal["succeeded", "failed"]
    code: int = 200  # the HTTP status a synchronous request answers with
    error: str | None = None
    model: str | None = None
    steps: int | None = None
    stochastic: bool | None = None
    format: Format | None = None
    seeds: list[int] = Field(default_factory=list)
    guidance: float | list[float] | None = None  # a list for a guidance sweep, one value per image
    images: list[str] = Field(default_factory=list)
    batch_requests: int | None = None
    batch_images: int | None = None
    model_seconds: float | None = None
    network_evaluations: int | None = None

    @classmethod
    def failed(cls, code: int, error: str) -> "JobResult":
        return cls(status="failed", code=code, error=error)

    def public(self) -> dict:
        """What clients see of a successful result."""
        return self.model_dump(include=PUBLIC_FIELDS, exclude_none=True)

    def public_error(self) -> dict:
        """What clients see of a failed one: its HTTP status and message."""
        return {"status": self.code, "detail": self.error or ""}


PUBLIC_FIELDS = {"model", "steps", "stochastic", "guidance", "seeds", "format", "images", "batch_requests", "model_seconds", "network_evaluations"}


class BadEntry(ValueError):
    """A stream entry that is not a job of this format version; `job_id` when one could be read."""

    def __init__(self, message: str, job_id: str | None):
        super().__init__(message)
        self.job_id = job_id


def read_job(raw: str | bytes | None) -> Job:
    """Parse a stream entry's job field; raise BadEntry with a message that says what is wrong."""
    if raw is None:
        raise BadEntry("the queue entry has no 'job' field", None)
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadEntry(f"the queue entry is not JSON ({type(exc).__name__})", None) from None
    job_id = data.get("id") if isinstance(data, dict) and isinstance(data.get("id"), str) else None
    if not isinstance(data, dict):
        raise BadEntry("the queue entry is not a JSON object", None)
    if data.get("version") != FORMAT_VERSION:
        raise BadEntry(f"the queue entry is a job of format version {data.get('version')!r}; this worker reads version {FORMAT_VERSION}", job_id)
    try:
        return Job.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)[:3])
        raise BadEntry(f"the queue entry is not a valid job ({problems})", job_id) from None
    except Exception as exc:  # noqa: BLE001 - whatever an entry holds, it must not stop the worker
        raise BadEntry(f"the queue entry could not be read ({type(exc).__name__})", job_id) from None


def read_result(raw: str | bytes) -> JobResult:
    """Parse a stored result; one that cannot be read is reported as a failed job."""
    try:
        return JobResult.model_validate_json(raw)
    except ValidationError as exc:
        return JobResult.failed(500, f"the job's stored result is unreadable ({exc.error_count()} problems)")

"""Service settings, read from the environment (prefix FEWSTEP_; REDIS_URL without one)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FEWSTEP_", extra="ignore")

    # where the queue lives; unset: `python -m service` starts an embedded Redis server
    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("REDIS_URL", "FEWSTEP_REDIS_URL"))
    queue_prefix: str = "fewstep"

    # models: the built-in families, plus every family found in models_dir
    models_dir: Path | None = None
    default_model: str = "shapes"  # a request that names no model (and asks by class, or by nothing)
    default_text_model: str = "emoji"  # a request that names no model and asks by prompt (default_model when absent)
    default_steps: int = Field(default=4, ge=1, le=8)
    default_guidance: float = 1.0
    device: str = "auto"  # auto: cuda when there is one, else cpu
    dtype: str = "auto"  # auto: float16 on cuda, float32 on cpu
    torch_threads: int | None = Field(default=None, ge=1)
    compile: bool = True  # compile the networks for the fixed batch shape during warm-up (FEWSTEP_COMPILE=0: eager)
    cpp_wrapper: bool = True  # on a CPU, compile each family into a compiled package (C++, loaded in ms by later starts); 0: torch.compile, Python wrapper
    compile_processes: int | None = Field(default=None, ge=1)  # on a CPU, families compiled at once during warm-up, in helper processes (default: the cores; 1: one after the other)
    cuda_graphs: bool = False  # on a CUDA device, compile with CUDA graphs (torch.compile mode "reduce-overhead"); ignored elsewhere

    # batching
    max_batch_size: int = Field(default=16, ge=1, le=256)  # requests a worker gathers at once (run in calls of fixed_batch rows)
    max_wait_ms: float = Field(default=2.0, ge=0)  # how long a worker waits to fill a batch
    fixed_batch: int | None = Field(default=4, ge=1)  # rows per network call: bit-identical seeds in any batch; each call answered on its own
    queue_capacity: int = Field(default=256, ge=1)  # queued + running requests; beyond: 429
    request_timeout_s: float = Field(default=60.0, gt=0)  # deadline of a synchronous request: 504
    job_ttl_s: int = Field(default=3600, ge=1)  # how long job results are kept
    claim_idle_ms: int = Field(default=15000, ge=100)  # a request its worker stopped refreshing this long ago is taken over
    max_deliveries: int = Field(default=3, ge=1)  # a request delivered more often fails and goes to the dead-letter stream
    heartbeat_s: float = Field(default=2.0, gt=0)
    batch_timeout_s: float = Field(default=300.0, gt=0)  # a batch running longer is hung: its requests are left to other workers
    workers: int = Field(default=1, ge=0)  # workers inside `python -m service` (0: API only)

    # limits and auth
    api_key: SecretStr | None = None
    max_body_bytes: int = Field(default=8 * 2**20, ge=1024)
    max_image_bytes: int = Field(default=4 * 2**20, ge=1024)
    max_image_side: int = Field(default=2048, ge=16)
    max_prompt_chars: int = Field(default=500, ge=1)

    # job webhooks (service/webhooks.py): none unless both are set
    webhook_hosts: str = ""  # comma-separated hosts (or host:port) a webhook may call
    webhook_secret: SecretStr | None = None  # the HMAC key that signs deliveries
    webhook_attempts: int = Field(default=5, ge=1, le=20)
    webhook_backoff_s: float = Field(default=1.0, ge=0)  # before the second try; doubles after each
    webhook_timeout_s: float = Field(default=10.0, gt=0)

    log_level: str = "info"  # debug, info, warning, error or critical (any case)

    # fault injection, for tests and soak runs only
    test_batch_delay_s: float = Field(default=0.0, ge=0)  # every batch takes this much longer (a slow worker)
    test_crash_prompt: str | None = None  # a worker that draws this prompt exits at once (a request that kills its worker)

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = {"warn": "warning", "fatal": "critical"}.get(value.strip().lower(), value.strip().lower())  # Python's aliases
        if level not in ("debug", "info", "warning", "error", "critical"):
            raise ValueError(f"log level {value!r} is not one of debug, info, warning, error, critical")
        return level

    @field_validator("api_key", "webhook_secret", "redis_url", "models_dir", "fixed_batch", "torch_threads", "compile_processes", mode="before")
    @classmethod
    def _empty_is_unset(cls, value):
        """An empty variable (as compose passes `${VAR:-}`) means unset, never an empty key."""
        return None if isinstance(value, str) and value.strip() == "" else value

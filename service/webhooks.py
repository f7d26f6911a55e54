"""Job webhooks: when an asynchronous job (POST /v1/jobs with `webhook`) succeeds or fails, its
worker POSTs what GET /v1/jobs/{id} would answer to the webhook URL.

- Only hosts listed in FEWSTEP_WEBHOOK_HOSTS (comma-separated host or host:port; default none)
  are accepted, checked when the job is created (a 422 otherwise), so that the service cannot be
  made to call internal addresses; webhooks also need FEWSTEP_WEBHOOK_SECRET.
- Each delivery is signed: `X-Fewstep-Timestamp: <unix seconds>` and
  `X-Fewstep-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" under the secret>`.
  A receiver recomputes it and refuses old timestamps (replays).
- A delivery that fails (no answer or a status other than 2xx) is retried with doubling
  backoff, FEWSTEP_WEBHOOK_ATTEMPTS tries in all. Delivery is best effort: a worker that stops
  meanwhile does not finish its retries; the result stays available at GET /v1/jobs/{id}.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from urllib.parse import urlsplit

from model.validation import InvalidRequest

from .contract import JobResult
from .settings import Settings

log = logging.getLogger("fewstep.webhooks")


def allowed_hosts(settings: Settings) -> set[str]:
    return {h.strip().lower() for h in settings.webhook_hosts.split(",") if h.strip()}


def check_webhook(url: str, settings: Settings) -> str:
    """The URL, if the service may call it; InvalidRequest (422, field `webhook`) says why not."""
    if settings.webhook_secret is None or not allowed_hosts(settings):
        raise InvalidRequest("webhooks are off on this service (it needs FEWSTEP_WEBHOOK_HOSTS and FEWSTEP_WEBHOOK_SECRET)", "webhook")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidRequest("webhook is not a valid URL", "webhook") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest("webhook must be an http:// or https:// URL with a host", "webhook")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise InvalidRequest("webhook must not contain spaces or control characters (percent-encode them)", "webhook")
    if parts.username or parts.password:
        raise InvalidRequest("webhook must not carry credentials in its URL", "webhook")
    host = parts.hostname.lower()
    hosts = allowed_hosts(settings)
    if host not in hosts and (port is None or f"{host}:{port}" not in hosts):
        raise InvalidRequest(f"webhook host {host!r} is not allowed (FEWSTEP_WEBHOOK_HOSTS lists the hosts a webhook may call)", "webhook")
    return url


def payload(job_id: str, result: JobResult) -> dict:
    """What GET /v1/jobs/{id} answers for a finished job."""
    if result.status == "succeeded":
        return {"id": job_id, "status": "succeeded", "result": result.public()}
    return {"id": job_id, "status": "failed", "error": result.public_error()}


def signature(secret: str, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


async def deliver(url: str, body: dict, settings: Settings) -> bool:
    """POST `body` to `url`, signed, with retries; True once a receiver answered 2xx. (Workers
    deliver; the API process, which only checks URLs, does not import httpx.)"""
    import httpx

    data = json.dumps(body).encode()
    secret = settings.webhook_secret.get_secret_value()
    backoff = settings.webhook_backoff_s
    async with httpx.AsyncClient(timeout=settings.webhook_timeout_s, follow_redirects=False) as client:
        for attempt in range(1, settings.webhook_attempts + 1):
            stamp = str(int(time.time()))
            headers = {"Content-Type": "application/json", "X-Fewstep-Timestamp": stamp, "X-Fewstep-Signature": signature(secret, stamp, data)}
            try:
                r = await client.post(url, content=data, headers=headers)
                if 200 <= r.status_code < 300:
                    return True
                problem = f"HTTP {r.status_code}"
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
            except httpx.InvalidURL as exc:  # no try would do better (URLs are checked when the job is created)
                problem = f"InvalidURL: {exc}"
                break
            if attempt < settings.webhook_attempts:
                log.info("webhook of job %s: try %d failed (%s); retrying in %.1fs", body.get("id"), attempt, problem, backoff)
                await asyncio.sleep(backoff)
                backoff *= 2
    log.warning("webhook of job %s: not delivered after %d tries (%s)", body.get("id"), attempt, problem)
    return False

"""Error answers, one shape per API family.

fewstep's own routes answer FastAPI's `{"detail": ...}`; the OpenAI routes (/v1/images/...)
answer OpenAI's `{"error": {"message", "type", "param", "code"}}`, which the official client
parses into its exceptions. Validation errors there are 400s, as OpenAI answers them.
"""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from model.validation import InvalidRequest

from .images import ImageError
from .registry import UnknownModel

log = logging.getLogger("fewstep.api")

OPENAI_PREFIX = "/v1/images"
_CODES = {401: "invalid_api_key", 404: "not_found", 413: "request_too_large", 429: "rate_limit_exceeded", 503: "service_unavailable", 504: "timeout"}


def is_openai(path: str) -> bool:
    return path == OPENAI_PREFIX or path.startswith(OPENAI_PREFIX + "/")


def json_safe(value):
    """`value` as a JSON answer can carry it: an error may echo what the client sent, and JSON's
    parser accepts what its writer refuses (NaN, 1e999 as infinity, a lone surrogate's escape)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return value if value.isascii() else value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {json_safe(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def error_response(path: str, status: int, detail, *, param: str | None = None, code: str | None = None, headers: dict | None = None) -> JSONResponse:
    """The error answer for a request to `path` in its API family's shape."""
    detail, param = json_safe(detail), json_safe(param)
    if not is_openai(path):
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)
    kind = "server_error" if status >= 500 else "rate_limit_error" if status == 429 else "invalid_request_error"
    message = detail if isinstance(detail, str) else str(detail)
    body = {"error": {"message": message, "type": kind, "param": param, "code": code or _CODES.get(status)}}
    return JSONResponse(body, status_code=status, headers=headers)


def _field(loc) -> str | None:
    names = [str(part) for part in loc if part not in ("body", "query", "header", "form")]
    return ".".join(names) or None


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error_response(request.url.path, exc.status_code, exc.detail, headers=getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = json_safe(jsonable_encoder(exc.errors()))
    if not is_openai(request.url.path):
        return JSONResponse({"detail": errors}, status_code=422)
    message = "; ".join(f"{_field(e.get('loc', ())) or 'body'}: {e.get('msg', '')}" for e in errors)
    param = _field(errors[0].get("loc", ())) if errors else None
    return error_response(request.url.path, 400, message, param=param)


async def _invalid_request(request: Request, exc: InvalidRequest) -> JSONResponse:
    status = 400 if is_openai(request.url.path) else 422
    return error_response(request.url.path, status, str(exc), param=exc.field)


async def _image_error(request: Request, exc: ImageError) -> JSONResponse:
    status = 400 if exc.status == 422 and is_openai(request.url.path) else exc.status
    return error_response(request.url.path, status, str(exc), param=exc.field)


async def _unknown_model(request: Request, exc: UnknownModel) -> JSONResponse:
    return error_response(request.url.path, 404, str(exc.args[0]), param="model", code="model_not_found")


async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning("Redis unreachable: %s", exc)
    return error_response(request.url.path, 503, "the request queue (Redis) is unreachable or refusing writes; retry shortly", headers={"Retry-After": "2"})


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected failure on %s", request.url.path, exc_info=exc)
    return error_response(request.url.path, 500, "internal error; it has been logged")


def install(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(InvalidRequest, _invalid_request)
    app.add_exception_handler(ImageError, _image_error)
    app.add_exception_handler(UnknownModel, _unknown_model)
    app.add_exception_handler(RedisError, _redis_down)  # unreachable, timed out, OOM, READONLY...
    app.add_exception_handler(Exception, _unexpected)

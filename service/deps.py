"""The routes' dependencies, as `Annotated` types: the process state and the API key check."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from .state import State


async def get_state(request: Request) -> State:
    """Async on purpose: FastAPI runs a plain-function dependency in its thread pool, a thread
    hop on every request."""
    return request.app.state.fewstep


StateDep = Annotated[State, Depends(get_state)]


async def require_key(request: Request) -> None:
    """With FEWSTEP_API_KEY set, /v1 needs `Authorization: Bearer KEY` (as the OpenAI client sends) or `X-API-Key`."""
    key = request.app.state.fewstep.settings.api_key
    if key is None:
        return
    headers = request.headers
    given, authorization = headers.get("x-api-key", ""), headers.get("authorization")
    if authorization and authorization.lower().startswith("bearer "):
        given = authorization[7:].strip()
    if not hmac.compare_digest(given.encode(), key.get_secret_value().encode()):
        raise HTTPException(401, "missing or wrong API key", headers={"WWW-Authenticate": "Bearer"})


KeyChecked = Depends(require_key)

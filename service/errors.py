"""Errors as HTTP answers: every failure is JSON ``{"detail": ...}`` saying what to fix.

``install(app)`` registers the handlers; ``HTTPError`` is what routes, dependencies and auth
raise for a status of their own; the ``E4xx`` dicts document the answers in OpenAPI.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.core import ClientError, NotFound
from service.policies import PolicyInputError, PolicyStoreUnavailable
from service.schemas import ErrorResponse

E422 = {"model": ErrorResponse, "description": "invalid input; `detail[].loc` names the field"}
E404 = {"model": ErrorResponse, "description": "unknown user / latent / policy"}
E401 = {"model": ErrorResponse, "description": "missing or wrong bearer token"}
E503 = {"model": ErrorResponse, "description": "admin disabled (no RECSAE_ADMIN_TOKEN) or policy store unreachable"}
E413 = {"model": ErrorResponse, "description": "request body over the size limit (RECSAE_MAX_BODY_BYTES, 64 KiB)"}
E409 = {"model": ErrorResponse, "description": "another reload is in progress"}
ADMIN_ERRORS = {401: E401, 422: E422, 503: E503}
AUDIT_ERRORS = {401: {"model": ErrorResponse, "description": "missing or wrong audit token"}, 422: E422}

STARTING = "the service is starting; retry when /readyz answers 200"


class HTTPError(Exception):
    """An answer with this status and detail (and headers, e.g. WWW-Authenticate)."""

    def __init__(self, status: int, detail: str, headers: dict | None = None):
        self.status, self.detail, self.headers = status, detail, headers


def _finite(v: Any) -> Any:
    """A validation error's echoed input with non-finite numbers (NaN, Infinity, 1e400) as text:
    JSON cannot hold them, and FastAPI's handler would fail with a 500 on the echo."""
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


async def _client_error(_: Request, e: ClientError) -> JSONResponse:
    return JSONResponse({"detail": e.detail()}, status_code=422)


async def _policy_input(_: Request, e: PolicyInputError) -> JSONResponse:
    return JSONResponse({"detail": [{"type": "value_error", "loc": ["body", e.field], "msg": str(e)}]}, status_code=422)


async def _not_found(_: Request, e: NotFound) -> JSONResponse:
    return JSONResponse({"detail": str(e)}, status_code=404)


async def _store_down(_: Request, e: PolicyStoreUnavailable) -> JSONResponse:
    return JSONResponse({"detail": str(e)}, status_code=503)


async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
    return JSONResponse({"detail": _finite(jsonable_encoder(e.errors()))}, status_code=422)


async def _http_error(_: Request, e: HTTPError) -> JSONResponse:
    return JSONResponse({"detail": e.detail}, status_code=e.status, headers=e.headers)


async def _unparsable_body(request: Request, e: StarletteHTTPException) -> Response:
    """FastAPI answers 400 for a body it cannot decode (e.g. invalid UTF-8); answer 422 like for
    malformed JSON, naming the body. Every other HTTP error keeps FastAPI's default answer."""
    if e.status_code == 400 and "parsing the body" in str(e.detail):
        return JSONResponse(
            {"detail": [{"type": "json_invalid", "loc": ["body"], "msg": "the body is not valid UTF-8 JSON"}]},
            status_code=422,
        )
    return await http_exception_handler(request, e)


def install(app: FastAPI) -> None:
    for exc, handler in (
        (ClientError, _client_error), (PolicyInputError, _policy_input), (NotFound, _not_found),
        (PolicyStoreUnavailable, _store_down), (RequestValidationError, _invalid), (HTTPError, _http_error),
        (StarletteHTTPException, _unparsable_body),
    ):
        app.add_exception_handler(exc, handler)

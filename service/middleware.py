"""ASGI middleware: the request body size limit (inside the app) and the edge (around
BentoML's whole app: URL length, repeated parameters, admin auth first, JSON 404/405)."""

from __future__ import annotations

import functools
from typing import Any, Callable

from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from fastapi.responses import RedirectResponse
from pydantic_core import to_json
from starlette.datastructures import QueryParams
from starlette.routing import Match
from uvicorn.protocols.http import h11_impl

from service import auth
from service.deps import served

# above the longest schema-valid URL (4,096-char `suppress`, percent-encoded), and httptools' own
# limit: uvicorn's httptools parser refuses longer URLs before the app sees them (below)
MAX_URL_BYTES = 64 * 1024 - 1
URL_TOO_LONG = {"detail": f"URL longer than {MAX_URL_BYTES} bytes"}  # the 414's body
# uvicorn's h11 parser drops a request whose head exceeds 16 KiB with a plain-text 400 (or a
# reset while the client still sends): let heads up to 1 MiB through so a long URL gets its 414.
h11_impl.DEFAULT_MAX_INCOMPLETE_EVENT_SIZE = max(h11_impl.DEFAULT_MAX_INCOMPLETE_EVENT_SIZE, 1 << 20)


def _answer_long_urls_with_414(protocol: Any) -> None:
    """uvicorn's httptools parser (the one it uses when httptools is installed, as here) answers a
    URL over 65,535 bytes with a plain-text 400 before any middleware runs: make that the same
    JSON 414 that ``Edge`` gives (the request head has been read whole by then)."""
    plain_400 = protocol.send_400_response

    @functools.wraps(plain_400)
    def send_400_response(self: Any, msg: str) -> None:
        if len(getattr(self, "url", b"")) <= MAX_URL_BYTES:
            return plain_400(self, msg)
        body = to_json(URL_TOO_LONG)
        self.transport.write(b"HTTP/1.1 414 URI Too Long\r\ncontent-type: application/json\r\ncontent-length: "
                             + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)
        self.transport.close()

    protocol.send_400_response = send_400_response


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # no httptools: uvicorn runs h11 (above)
    pass
else:
    _answer_long_urls_with_414(HttpToolsProtocol)


class _BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """Pure ASGI middleware: a request body over ``limit`` bytes gets 413 before the route runs
    (declared Content-Length checked up front; chunked bodies counted as they stream in)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    return await self._reject(send)
        seen = 0
        over = started = False

        async def limited_receive() -> dict:
            nonlocal seen, over
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    over = True
                    raise _BodyTooLarge()
            return msg

        async def limited_send(msg: dict) -> None:
            # the app may turn the read error into its own answer (FastAPI: 400): answer 413 instead
            nonlocal started
            if over:
                if msg["type"] == "http.response.start" and not started:
                    started = True
                    await self._reject(send)
                return
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, limited_send)
        except _BodyTooLarge:
            pass
        if over and not started:
            await self._reject(send)

    async def _reject(self, send: Any) -> None:
        body = to_json({"detail": f"request body larger than {self.limit} bytes"})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


async def _answer(send: Any, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
    raw = to_json(body)
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    hdrs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": raw})


class Edge:
    """What holds for every request before BentoML's router and the app see it:

    * a path holding a line break goes straight to the app, which validates it (422): BentoML's
      ``Mount`` pattern does not match it and would answer a plain-text 404;
    * a URL over ``MAX_URL_BYTES`` gets 414; a repeated query parameter 422 (every parameter is
      single-valued: ``policy=a&policy=`` must not silently apply the last one);
    * ``/admin/*`` checks the bearer token first: no field list for unauthenticated callers;
    * ``/`` redirects to ``/docs`` (BentoML's page loads a tag manager) and ``/docs.json`` is
      OpenAPI 3.0 (BentoML merges the app's 3.1-style schemas into its 3.0 document as they are).

    ``api``: the FastAPI app; ``docs_json``: BentoML's OpenAPI document as 3.0.
    """

    def __init__(self, app: Any, api: FastAPI, docs_json: Callable[[], dict]) -> None:
        self.app, self.api, self.docs_json = app, api, docs_json

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, qs = scope.get("path", ""), scope.get("query_string", b"")
        if len(scope.get("raw_path") or path.encode()) + len(qs) > MAX_URL_BYTES:
            return await _answer(send, 414, URL_TOO_LONG)
        if scope["method"] == "HEAD" and path not in _BENTOML_PATHS and "GET" in allowed_methods(self.api, path):
            # HEAD is GET without the body (RFC 9110 9.3.2): FastAPI routes answer GET only
            scope, send = {**scope, "method": "GET"}, _bodiless(send)
        if path.startswith("/admin/"):
            svc = served()
            denied = auth.admin_denied(svc.settings.admin_token, scope) if svc is not None else None
            if denied is not None:
                return await _answer(send, *denied)
        if qs:
            names = [k for k, _ in QueryParams(qs).multi_items()]
            repeated = sorted({k for k in names if names.count(k) > 1})
            if repeated:
                return await _answer(send, 422, {"detail": [
                    {"type": "value_error", "loc": ["query", k], "msg": "given more than once: give it once"}
                    for k in repeated]})
        if path == "/" and scope["method"] in ("GET", "HEAD"):
            return await RedirectResponse("/docs", status_code=307)(scope, receive, send)
        if path == "/docs.json" and scope["method"] in ("GET", "HEAD"):
            return await _answer(send, 200, self.docs_json())
        if "\n" in path or "\r" in path:
            return await self.api(scope, receive, send)
        replaced = False

        async def json_404(msg: dict) -> None:
            # Starlette's router answers unknown paths in plain text: JSON like every other error;
            # its 405 names only the first route's methods in Allow: name every route's
            nonlocal replaced
            if msg["type"] == "http.response.start" and msg["status"] == 405:
                allow = allowed_methods(self.api, path)
                if allow:
                    msg = {**msg, "headers": [(k, v) for k, v in msg.get("headers") or [] if k.lower() != b"allow"]
                           + [(b"allow", allow.encode())]}
            if msg["type"] == "http.response.start" and msg["status"] == 404:
                ctype = dict(msg.get("headers") or []).get(b"content-type", b"")
                if ctype.startswith(b"text/plain"):
                    replaced = True
                    return await _answer(send, 404, {"detail": f"no route {path!r}: see /docs for the API"})
            if not replaced:
                await send(msg)

        return await self.app(scope, receive, json_404)


def _bodiless(send: Any) -> Any:
    """``send`` of a HEAD answered as GET: the status and headers (Content-Length: the GET's),
    no body."""
    async def head_send(msg: dict) -> None:
        if msg["type"] == "http.response.body":
            msg = {**msg, "body": b""}
        await send(msg)
    return head_send


def _routes(api: FastAPI) -> list:
    """Every route of the app: FastAPI keeps included routers nested in ``app.routes``."""
    return list(iter_route_contexts(api.routes))


_BENTOML_PATHS = frozenset({"/", "/livez", "/readyz", "/healthz", "/metrics", "/docs.json", "/schema.json"})


@functools.lru_cache(maxsize=4096)
def route_template(api: FastAPI, path: str) -> str:
    """The metrics label of a request path: its route's template ('/concepts/{latent}'), BentoML's
    own paths as they are, 'unmatched' for anything else (bounded label values)."""
    if path in _BENTOML_PATHS:
        return path
    scope = {"type": "http", "path": path, "root_path": "", "method": "GET"}
    for route in _routes(api):
        if route.matches(scope)[0] != Match.NONE:
            return getattr(route, "path", "unmatched") or "unmatched"
    return "/static_content" if path.startswith("/static_content/") else "unmatched"


@functools.lru_cache(maxsize=256)
def allowed_methods(api: FastAPI, path: str) -> str:
    """The methods of every app route matching ``path``, for a 405's Allow header ('' if none)."""
    scope = {"type": "http", "path": path, "root_path": "", "method": "GET"}
    methods: set[str] = set()
    for route in _routes(api):
        if getattr(route, "methods", None) and route.matches(scope)[0] != Match.NONE:
            methods |= route.methods
    if "GET" in methods:  # answered as GET without the body (``Edge``)
        methods.add("HEAD")
    return ", ".join(sorted(methods))

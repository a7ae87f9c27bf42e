"""The BentoML service: recommendations with the concepts that drove them, suppressible at run time.

Run: ``RECSAE_BUNDLE=bundles/dev-ml100k bentoml serve service.service:RecSAEService``.
HTTP routes are a FastAPI app mounted on the service (BentoML ``@bentoml.api`` endpoints are
POST-only; ``GET /recommend?...`` needs FastAPI). BentoML adds ``/livez``, ``/readyz`` (ready
once the bundle is loaded, verified and warmed) and ``/metrics``.

Imports numpy/onnxruntime parts of ``recsae`` only: never torch (tested).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import math
import os
import pathlib
import re
import sys
import threading
import time
from contextlib import contextmanager
from typing import Annotated, Any, Iterator

import bentoml
from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from pydantic_core import to_json
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles

from recsae import BundleError, ConfigError, __version__
from recsae.concepts import Concept
from service import metrics as M
from service.config import Settings
from service.core import DECIMALS, ClientError, Core, NotFound
from service.policies import PolicyInputError, PolicyStoreUnavailable
from service.schemas import (
    POLICY_NAME,
    AuditList,
    AuditQuery,
    BundleInfo,
    ConceptList,
    ConceptQuery,
    ConceptSummary,
    ErrorResponse,
    NoParams,
    Policy,
    PolicyIn,
    PolicyList,
    RecommendQuery,
    RecommendRequest,
    RecommendResponse,
    ReloadRequest,
    ReloadResponse,
)
from service.schemas import DriftLatent, DriftQuery, DriftReport, RecentList, RecentQuery

log = logging.getLogger("recsae.service")
if logging.getLogger("recsae").level == logging.NOTSET:
    logging.getLogger("recsae").setLevel(logging.INFO)  # startup summary + Redis outage lines

app = FastAPI(
    title="RecSAE Serve",
    version=__version__,
    description=(
        "Recommendations with the sparse-autoencoder concepts that drove them; concepts can be "
        "suppressed per request (`suppress=`; the baseline, i.e. what all users share, chiefly "
        "popularity, with `suppress_baseline=`) or by stored policy (`policy=`)."
    ),
)

_bearer = HTTPBearer(auto_error=False, description="RECSAE_ADMIN_TOKEN")
_LABEL = re.compile(r"[^A-Za-z0-9_.@:-]")

E422 = {"model": ErrorResponse, "description": "invalid input; `detail[].loc` names the field"}
E404 = {"model": ErrorResponse, "description": "unknown user / latent / policy"}
E401 = {"model": ErrorResponse, "description": "missing or wrong bearer token"}
E503 = {"model": ErrorResponse, "description": "admin disabled (no RECSAE_ADMIN_TOKEN) or policy store unreachable"}
ADMIN_ERRORS = {401: E401, 422: E422, 503: E503}


PolicyName = Annotated[str, Path(pattern=POLICY_NAME, description="letters, digits, '_.-'; at most 64")]


# -- error mapping ------------------------------------------------------------------------------
@app.exception_handler(ClientError)
async def _client_error(_: Request, e: ClientError) -> JSONResponse:
    return JSONResponse({"detail": e.detail()}, status_code=422)


@app.exception_handler(PolicyInputError)
async def _policy_input(_: Request, e: PolicyInputError) -> JSONResponse:
    return JSONResponse({"detail": [{"type": "value_error", "loc": ["body", e.field], "msg": str(e)}]}, status_code=422)


@app.exception_handler(NotFound)
async def _not_found(_: Request, e: NotFound) -> JSONResponse:
    return JSONResponse({"detail": str(e)}, status_code=404)


@app.exception_handler(PolicyStoreUnavailable)
async def _store_down(_: Request, e: PolicyStoreUnavailable) -> JSONResponse:
    return JSONResponse({"detail": str(e)}, status_code=503)


class _HTTPError(Exception):
    def __init__(self, status: int, detail: str, headers: dict | None = None):
        self.status, self.detail, self.headers = status, detail, headers


@app.exception_handler(_HTTPError)
async def _http_error(_: Request, e: _HTTPError) -> JSONResponse:
    return JSONResponse({"detail": e.detail}, status_code=e.status, headers=e.headers)


@contextmanager
def _timed(route: str, explain: bool = False) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        M.REQUEST_LATENCY.labels(route, "true" if explain else "false").observe(time.perf_counter() - t0)


def _json(model: BaseModel) -> Response:
    return Response(model.model_dump_json(), media_type="application/json")


def _fail_start(message: str) -> None:
    """Refuse to start: one clear line on stderr and in the log, no traceback, exit code 3."""
    log.critical("RecSAE service cannot start: %s", message)
    print(f"RecSAE service cannot start: {message}", file=sys.stderr, flush=True)
    logging.shutdown()
    os._exit(3)


_current: "RecSAEService | None" = None


async def _core() -> Core:
    """The serving state of this worker (an async dependency: no thread hop per request)."""
    if _current is None or getattr(_current, "core", None) is None or not _current.core.ready:
        raise _HTTPError(503, "the service is starting; retry when /readyz answers 200")
    return _current.core


def _service() -> "RecSAEService":
    if _current is None:
        raise _HTTPError(503, "the service is starting; retry when /readyz answers 200")
    return _current


def _body(body: dict) -> Response:
    # pydantic-core's serializer on plain dicts: ~3x faster than json.dumps for explained bodies
    return Response(to_json(body), media_type="application/json")


CoreDep = Annotated[Core, Depends(_core)]
Creds = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
Label = Annotated[str | None, Header(max_length=64, description="who acts, for the audit trail")]


def _admin(svc: "RecSAEService", creds: HTTPAuthorizationCredentials | None, label: str | None) -> str:
    """Check the bearer token; return who acts ('token:<sha8>' plus the X-Admin-Label)."""
    token = svc.settings.admin_token
    if not token:
        raise _HTTPError(503, "admin disabled: set RECSAE_ADMIN_TOKEN to enable /admin endpoints")
    given = creds.credentials if creds is not None else ""
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise _HTTPError(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
    who = "token:" + hashlib.sha256(token.encode()).hexdigest()[:8]
    if label:
        who += "/" + _LABEL.sub("_", label)[:64]
    return who


# -- recommendations (async: CPU-bound work of ~1 ms runs on the event loop, no thread pool) ----
@app.get("/recommend", response_model=RecommendResponse, responses={404: E404, 422: E422},
         summary="Recommend for a known user")
async def recommend(q: Annotated[RecommendQuery, Query()], core: CoreDep) -> Response:
    with _timed("GET /recommend", q.explain):
        return _body(
            await core.recommend_user_async(
                q.user_id, k=q.k, explain=q.explain, suppress=q.suppress_strengths(), policy=q.policy,
                exclude_seen=q.exclude_seen, mode=q.mode, suppress_baseline=q.suppress_baseline,
            )
        )


@app.post("/recommend", response_model=RecommendResponse, responses={422: E422},
          summary="Recommend for an explicit history (sequential bundles)")
async def recommend_history(body: RecommendRequest, _: Annotated[NoParams, Query()], core: CoreDep) -> Response:
    with _timed("POST /recommend", body.explain):
        return _body(
            await core.recommend_history_async(
                body.history, k=body.k, explain=body.explain, suppress=body.suppress_strengths(),
                policy=body.policy, exclude_seen=body.exclude_seen, mode=body.mode,
                suppress_baseline=body.suppress_baseline,
            )
        )


# -- concepts and bundle ------------------------------------------------------------------------
@app.get("/concepts", response_model=ConceptList, responses={422: E422}, summary="Search the concept dictionary")
async def concepts(q: Annotated[ConceptQuery, Query()], core: CoreDep) -> Response:
    with _timed("GET /concepts"):
        found = core.store.search(q.q, q.status, q.sort)
        page = found[q.offset : q.offset + q.limit]
        return _json(ConceptList(total=len(found), concepts=[ConceptSummary.of(c) for c in page]))


@app.get("/concepts/{latent}", response_model=Concept, responses={404: E404, 422: E422}, summary="One concept")
async def concept(latent: Annotated[int, Path(ge=0)], _: Annotated[NoParams, Query()], core: CoreDep) -> Response:
    with _timed("GET /concepts/{latent}"):
        return _json(core.concept(latent))


@app.get("/bundle", response_model=BundleInfo, responses={422: E422}, summary="The served bundle")
async def bundle(_: Annotated[NoParams, Query()], core: CoreDep) -> Response:
    with _timed("GET /bundle"):
        return _json(core.bundle_info())


# -- admin: suppression policies (sync: a few Redis round trips, run in the thread pool) -------
ServiceDep = Annotated[Any, Depends(_service)]


@app.get("/admin/policies", response_model=PolicyList, responses=ADMIN_ERRORS, tags=["admin"])
def list_policies(_: Annotated[NoParams, Query()], svc: ServiceDep, creds: Creds, x_admin_label: Label = None) -> Response:
    with _timed("GET /admin/policies"):
        _admin(svc, creds, x_admin_label)
        return _json(PolicyList(policies=svc.core.policies.list()))


@app.get("/admin/policies/{name}", response_model=Policy, responses={**ADMIN_ERRORS, 404: E404}, tags=["admin"])
def get_policy(
    name: PolicyName, _: Annotated[NoParams, Query()], svc: ServiceDep, creds: Creds, x_admin_label: Label = None
) -> Response:
    with _timed("GET /admin/policies/{name}"):
        _admin(svc, creds, x_admin_label)
        p = svc.core.policies.get(name)
        if p is None:
            raise NotFound(f"no policy {name!r}")
        return _json(p)


@app.put("/admin/policies/{name}", response_model=Policy, responses=ADMIN_ERRORS, tags=["admin"])
def put_policy(
    name: PolicyName, body: PolicyIn, _: Annotated[NoParams, Query()], svc: ServiceDep, creds: Creds,
    x_admin_label: Label = None,
) -> Response:
    with _timed("PUT /admin/policies/{name}"):
        who = _admin(svc, creds, x_admin_label)
        return _json(svc.core.policies.put(name, body, who))


@app.delete("/admin/policies/{name}", status_code=204, responses={**ADMIN_ERRORS, 404: E404}, tags=["admin"])
def delete_policy(
    name: PolicyName, _: Annotated[NoParams, Query()], svc: ServiceDep, creds: Creds, x_admin_label: Label = None
) -> Response:
    with _timed("DELETE /admin/policies/{name}"):
        who = _admin(svc, creds, x_admin_label)
        if not svc.core.policies.delete(name, who):
            raise NotFound(f"no policy {name!r}")
        return Response(status_code=204)


@app.get("/admin/audit", response_model=AuditList, responses=ADMIN_ERRORS, tags=["admin"])
def audit(q: Annotated[AuditQuery, Query()], svc: ServiceDep, creds: Creds, x_admin_label: Label = None) -> Response:
    with _timed("GET /admin/audit"):
        _admin(svc, creds, x_admin_label)
        return _json(AuditList(entries=svc.core.policies.audit(q.limit)))


# -- hardening: request size limit, unparsable bodies, bundle reload (admin) -------------------
MAX_BODY_BYTES = int(os.environ.get("RECSAE_MAX_BODY_BYTES", str(64 * 1024)))


class BodySizeLimit:
    """Pure ASGI middleware: a request body over ``limit`` bytes gets 413 before the route runs
    (declared Content-Length checked up front; chunked bodies counted as they stream in)."""

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES) -> None:
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


class _BodyTooLarge(Exception):
    pass


app.add_middleware(BodySizeLimit)


@app.exception_handler(StarletteHTTPException)
async def _unparsable_body(request: Request, e: StarletteHTTPException) -> Response:
    """FastAPI answers 400 for a body it cannot decode (e.g. invalid UTF-8); answer 422 like for
    malformed JSON, naming the body. Every other HTTP error keeps FastAPI's default answer."""
    if e.status_code == 400 and "parsing the body" in str(e.detail):
        return JSONResponse(
            {"detail": [{"type": "json_invalid", "loc": ["body"], "msg": "the body is not valid UTF-8 JSON"}]},
            status_code=422,
        )
    return await http_exception_handler(request, e)


E413 = {"model": ErrorResponse, "description": "request body over the size limit (RECSAE_MAX_BODY_BYTES, 64 KiB)"}
E409 = {"model": ErrorResponse, "description": "another reload is in progress"}
_reload_lock = threading.Lock()


@app.post("/admin/reload", response_model=ReloadResponse, tags=["admin"],
          responses={**ADMIN_ERRORS, 409: E409, 413: E413},
          summary="Load, verify and warm a bundle off to the side; swap only on success")
def reload_bundle(
    _: Annotated[NoParams, Query()], svc: ServiceDep, creds: Creds, body: ReloadRequest | None = None,
    x_admin_label: Label = None,
) -> Response:
    """This worker only: the old engine keeps serving until the new one is loaded, hash-verified
    and warmed; then one reference swap. A bad bundle answers 422 with the reason and changes
    nothing. (Several workers/replicas: roll out a new bundle as a new deployment revision.)"""
    with _timed("POST /admin/reload"):
        _admin(svc, creds, x_admin_label)
        if not _reload_lock.acquire(blocking=False):
            raise _HTTPError(409, "a reload is already in progress")
        try:
            old = svc.core
            path = (body.path if body is not None and body.path else None) or svc.settings.bundle
            t0 = time.perf_counter()
            new = None
            try:
                settings = dataclasses.replace(svc.settings, bundle=path)
                new = Core(settings)
                new.start()
            except (BundleError, ConfigError) as e:
                if new is not None:
                    new.close()
                log.warning("reload of %s refused, still serving %s: %s", path, old.bundle.version, e)
                raise _HTTPError(422, f"bundle not loaded, still serving {old.bundle.version}: {e}") from None
            svc.settings, svc.core = settings, new  # the swap: requests read svc.core once each
            threading.Timer(5.0, old.close).start()  # let in-flight admin calls on the old core finish
            log.info("reloaded bundle %s from %s (was %s)", new.bundle.version, path, old.bundle.version)
            return _json(ReloadResponse(path=str(path), bundle_version=new.bundle.version,
                                        bundle_hash=new.bundle.bundle_hash, previous_hash=old.bundle.bundle_hash,
                                        seconds=round(time.perf_counter() - t0, 3)))
        finally:
            _reload_lock.release()


# -- audit page (/audit) and its read-only endpoints (audit token) -----------------------------
STATIC = pathlib.Path(__file__).with_name("static")
_audit_bearer = HTTPBearer(auto_error=False, scheme_name="AuditBearer", description="RECSAE_AUDIT_TOKEN")
AuditCreds = Annotated[HTTPAuthorizationCredentials | None, Depends(_audit_bearer)]
AUDIT_ERRORS = {401: {"model": ErrorResponse, "description": "missing or wrong audit token"}, 422: E422}


def _audit_auth(creds: HTTPAuthorizationCredentials | None) -> None:
    """Bearer RECSAE_AUDIT_TOKEN (constant-time compare); unset -> the audit routes are open."""
    token = os.environ.get("RECSAE_AUDIT_TOKEN")
    if not token:
        return
    given = creds.credentials if creds is not None else ""
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise _HTTPError(401, "missing or wrong audit token", {"WWW-Authenticate": "Bearer"})


@app.get("/audit", include_in_schema=False)
async def audit_page() -> Response:
    return Response((STATIC / "audit.html").read_bytes(), media_type="text/html; charset=utf-8",
                    headers={"Cache-Control": "no-cache"})


app.mount("/audit/static", StaticFiles(directory=STATIC, check_dir=False), name="audit-static")


@app.get("/audit/recent", response_model=RecentList, responses=AUDIT_ERRORS, tags=["audit"],
         summary="A sample of recently served recommendations (newest first)")
def audit_recent(q: Annotated[RecentQuery, Query()], svc: ServiceDep, creds: AuditCreds) -> Response:
    with _timed("GET /audit/recent"):
        _audit_auth(creds)
        return _body({"entries": svc.core.recent.recent(q.limit)})


@app.get("/audit/policies", response_model=PolicyList, responses=AUDIT_ERRORS, tags=["audit"],
         summary="The stored suppression policies, read-only (for the audit page's policy picker)")
def audit_policies(_: Annotated[NoParams, Query()], svc: ServiceDep, creds: AuditCreds) -> Response:
    with _timed("GET /audit/policies"):
        _audit_auth(creds)
        return _json(PolicyList(policies=svc.core.policies.list()))


@app.get("/drift", response_model=DriftReport, responses=AUDIT_ERRORS, tags=["audit"],
         summary="Reference vs live firing rates of the most drifted concepts (this worker)")
async def drift(q: Annotated[DriftQuery, Query()], core: CoreDep, creds: AuditCreds) -> Response:
    with _timed("GET /drift"):
        _audit_auth(creds)
        d = core.drift.snapshot()
        report = DriftReport(window_requests=core.drift.n, window_size=core.drift.window)
        if d is not None:
            report.jsd, report.psi = round(d.jsd, DECIMALS), round(d.psi, DECIMALS)
            def act(values, j: int) -> float | None:
                return round(float(values[j]), DECIMALS) if values is not None and math.isfinite(values[j]) else None

            shift = d.strength_shift()
            for j in (d.top_strength(q.top) if q.sort == "strength" else d.top(q.top)).tolist():
                c = core.store.concepts.get(j)
                report.latents.append(DriftLatent(
                    latent=j, description=c.description if c else None,
                    reference_rate=round(float(d.reference_rate[j]), DECIMALS),
                    live_rate=round(float(d.live_rate[j]), DECIMALS), psi_term=round(float(d.per_latent[j]), DECIMALS),
                    reference_mean_activation=act(d.reference_mean_activation, j),
                    live_mean_activation=act(d.live_mean_activation, j),
                    strength_shift=round(float(shift[j]), DECIMALS),
                ))
        return _json(report)


@bentoml.service(
    name="recsae",
    workers=int(os.environ.get("RECSAE_WORKERS", "1")),
    traffic={"timeout": 30},
    http={"port": int(os.environ.get("RECSAE_PORT", "3000"))},
)
@bentoml.asgi_app(app, path="/")
class RecSAEService:
    """Loads and verifies the bundle (RECSAE_BUNDLE), warms the request path, then serves."""

    def __init__(self) -> None:
        global _current
        try:
            self.settings = Settings.from_env()
            self.core = Core(self.settings)
            self.core.start()
        except (BundleError, ConfigError) as e:
            _fail_start(str(e))
        _current = self

    @bentoml.on_deployment
    def _check_bundle() -> None:  # type: ignore[misc]
        """Runs once in the `bentoml serve` main process before any worker starts: a bad bundle
        or setting stops the server with one clear message instead of a worker restart loop."""
        try:
            Core(Settings.from_env()).close()
        except (BundleError, ConfigError) as e:
            print(f"RecSAE service cannot start: {e}", file=sys.stderr, flush=True)
            raise SystemExit(3) from None

    @bentoml.on_shutdown
    def _close(self) -> None:
        if getattr(self, "core", None) is not None:
            self.core.close()

    def __is_ready__(self) -> bool:
        return bool(getattr(self, "core", None) and self.core.ready)

    def __metrics__(self, content: str) -> str:
        """Append the drift series rendered at scrape time (bounded, never stale)."""
        return content.rstrip("\n") + "\n" + self.core.drift.exposition()


class _LineBreakPaths:
    """BentoML mounts the app with a Starlette ``Mount`` whose pattern does not match a path
    holding a line break: it would answer a plain-text 404 for e.g. ``/concepts/1%0A``. Hand such
    requests straight to the app, which validates the path parameter (422) like any other."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if "\n" in path or "\r" in path:
            return await app(scope, receive, send)
        return await self.app(scope, receive, send)


RecSAEService.add_asgi_middleware(_LineBreakPaths)

"""The BentoML service: recommendations with the concepts that drove them, suppressible at run time.

Run: ``RECSAE_BUNDLE=bundles/dev-ml100k bentoml serve service.service:RecSAEService``.
HTTP routes are a FastAPI app mounted on the service (BentoML ``@bentoml.api`` endpoints are
POST-only; ``GET /recommend?...`` needs FastAPI). BentoML adds ``/livez``, ``/readyz`` (ready
once the bundle is loaded, verified and warmed) and ``/metrics``.

Imports numpy/onnxruntime parts of ``recsae`` only: never torch (tested).
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import gc
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
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, BeforeValidator
from pydantic_core import to_json
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.datastructures import QueryParams
from starlette.routing import Match
from uvicorn.protocols.http import h11_impl
from starlette.staticfiles import StaticFiles

from recsae import BundleError, ConfigError, __version__
from recsae.concepts import Concept
from service import metrics as M
from service.config import Settings
from service.audit_routes import drift_verdict, router as audit_router
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
    PutPolicyQuery,
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
    responses={414: {"model": ErrorResponse, "description": "URL longer than 64 KiB"}},
    docs_url=None,  # served below from local assets: FastAPI's pages load theirs from a CDN
    redoc_url=None,
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


@app.exception_handler(RequestValidationError)
async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
    return JSONResponse({"detail": _finite(jsonable_encoder(e.errors()))}, status_code=422)


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
AuditHeader = Annotated[str | None, Header(max_length=8, description="1: an auditor's request (the audit page), "
                                            "kept out of drift and the recent-traffic sample")]


def _admin(svc: "RecSAEService", creds: HTTPAuthorizationCredentials | None, label: str | None) -> str:
    """Check the bearer token; return who acts: the X-Admin-Label, or 'admin' without one (never
    anything derived from the token: audit-token holders read it)."""
    token = svc.settings.admin_token
    if not token:
        raise _HTTPError(503, "admin disabled: set RECSAE_ADMIN_TOKEN to enable /admin endpoints")
    given = creds.credentials if creds is not None else ""
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise _HTTPError(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
    return _LABEL.sub("_", label)[:64] if label else "admin"


# -- recommendations (async: CPU-bound work of ~1 ms runs on the event loop, no thread pool) ----
@app.get("/recommend", response_model=RecommendResponse, responses={404: E404, 422: E422},
         summary="Recommend for a known user")
async def recommend(q: Annotated[RecommendQuery, Query()], core: CoreDep, x_recsae_audit: AuditHeader = None) -> Response:
    with _timed("GET /recommend", q.explain):
        return _body(
            await core.recommend_user_async(
                q.user_id, k=q.k, explain=q.explain, suppress=q.suppress_strengths(), policy=q.policy,
                exclude_seen=q.exclude_seen, mode=q.mode, suppress_baseline=q.suppress_baseline,
                audit=x_recsae_audit == "1",
            )
        )


@app.post("/recommend", response_model=RecommendResponse, responses={422: E422},
          summary="Recommend for an explicit history (sequential bundles)")
async def recommend_history(body: RecommendRequest, _: Annotated[NoParams, Query()], core: CoreDep,
                            x_recsae_audit: AuditHeader = None) -> Response:
    with _timed("POST /recommend", body.explain):
        return _body(
            await core.recommend_history_async(
                body.history, k=body.k, explain=body.explain, suppress=body.suppress_strengths(),
                policy=body.policy, exclude_seen=body.exclude_seen, mode=body.mode,
                suppress_baseline=body.suppress_baseline, audit=x_recsae_audit == "1",
            )
        )


# -- concepts and bundle ------------------------------------------------------------------------
@app.get("/concepts", response_model=ConceptList, responses={422: E422}, summary="Search the concept dictionary")
async def concepts(q: Annotated[ConceptQuery, Query()], core: CoreDep) -> Response:
    with _timed("GET /concepts"):
        found = core.store.search(q.q, q.status, q.sort)
        page = found[q.offset : q.offset + q.limit]
        return _json(ConceptList(total=len(found), concepts=[ConceptSummary.of(c) for c in page]))


def _digits(v: Any) -> Any:
    """A latent id in the path is digits only: int() would accept '1\\n' or ' 1'."""
    if isinstance(v, str) and not (v.isascii() and v.isdigit()):
        raise ValueError("must be a latent id: digits only")
    return v


@app.get("/concepts/{latent}", response_model=Concept, responses={404: E404, 422: E422}, summary="One concept")
async def concept(latent: Annotated[int, Path(ge=0), BeforeValidator(_digits)], _: Annotated[NoParams, Query()], core: CoreDep) -> Response:
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
    name: PolicyName, body: PolicyIn, q: Annotated[PutPolicyQuery, Query()], svc: ServiceDep, creds: Creds,
    x_admin_label: Label = None,
) -> Response:
    with _timed("PUT /admin/policies/{name}"):
        who = _admin(svc, creds, x_admin_label)
        return _json(svc.core.policies.put(name, _for_this_bundle(name, body, svc.core.bundle.bundle_hash, q.force), who))


def _for_this_bundle(name: str, body: PolicyIn, serving: str, force: bool) -> PolicyIn:
    """A policy body made for another bundle (``bundle_hash``): its latent ids name other concepts
    here. Query-based: re-resolved against this bundle (explicit ids dropped); otherwise refused
    unless forced."""
    if body.name is not None and body.name != name:
        raise PolicyInputError("name", f"the body names policy {body.name!r} but the path {name!r}: they must agree")
    if body.bundle_hash is None or body.bundle_hash == serving or force or not body.latents:
        return body  # (a baseline applies to any bundle)
    if body.query:
        log.warning("policy %r was made for bundle %s, serving %s: re-resolving its query, dropping its %d latent ids",
                    name, body.bundle_hash[:12], serving[:12], len(body.latent_ids()))
        return body.model_copy(update={"latents": []})
    raise PolicyInputError(
        "bundle_hash",
        f"this policy was made for bundle {body.bundle_hash[:12]}, this service serves {serving[:12]}: latent ids "
        "name different concepts in another SAE. Re-run `recsae debias` on the served bundle, give a `query`, "
        "or PUT with ?force=true to store the ids as they are",
    )


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
_retiring: dict[Core, threading.Timer] = {}  # swapped-out cores awaiting _retire
_retiring_lock = threading.Lock()


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
            except (BundleError, ConfigError, OSError) as e:
                if new is not None:
                    new.close()
                if isinstance(e, OSError):  # e.g. a path component over 255 bytes (ENAMETOOLONG)
                    e = BundleError(f"cannot read {path!r}: {e.strerror or e}")
                log.warning("reload of %s refused, still serving %s: %s", path, old.bundle.version, e)
                raise _HTTPError(422, f"bundle not loaded, still serving {old.bundle.version}: {e}") from None
            svc.settings, svc.core = settings, new  # the swap: requests read svc.core once each
            # The old core is closed 5 s later (in-flight calls on it finish first), or at the next
            # swap, whichever comes first: it has then been out of service for a whole reload, far
            # longer than a request. So back-to-back reloads hold at most one old core, not one per
            # reload of the last 5 s (30 quick reloads had left the worker ~100 MB larger).
            timer = threading.Timer(5.0, _retire, (old,))
            with _retiring_lock:
                pending = list(_retiring)
                _retiring[old] = timer
            for core in pending:
                threading.Thread(target=_retire, args=(core,), daemon=True).start()
            timer.start()
            log.info("reloaded bundle %s from %s (was %s)", new.bundle.version, path, old.bundle.version)
            return _json(ReloadResponse(path=str(path), bundle_version=new.bundle.version,
                                        bundle_hash=new.bundle.bundle_hash, previous_hash=old.bundle.bundle_hash,
                                        seconds=round(time.perf_counter() - t0, 3)))
        finally:
            _reload_lock.release()


# -- API docs: Swagger UI from the copy BentoML ships (nothing is loaded from the network) ------
_SWAGGER = pathlib.Path(bentoml.__file__).parent / "_internal" / "server" / "static_content"
app.mount("/docs/assets", StaticFiles(directory=_SWAGGER, check_dir=False), name="docs-assets")


@app.get("/docs", include_in_schema=False)
async def docs_page() -> Response:
    return get_swagger_ui_html(
        openapi_url="/openapi.json", title=f"{app.title} - API docs",
        swagger_js_url="/docs/assets/swagger-ui-bundle.js", swagger_css_url="/docs/assets/swagger-ui.css",
        swagger_favicon_url="/docs/assets/favicon-light-32x32.png",
        swagger_ui_parameters={"validatorUrl": None},  # the default badge calls validator.swagger.io
    )


def _retire(old: Core) -> None:
    """Close a replaced core (once: by its timer or by the next swap, whichever comes first) and
    hand its memory back to the OS (glibc keeps freed arenas: without the trim every reload left
    the worker ~7 MB larger for the first ten)."""
    with _retiring_lock:
        timer = _retiring.pop(old, None)
    if timer is None:
        return  # already retired
    timer.cancel()
    old.close()
    del old
    # Core.start() froze every live object (gc.freeze), this core too while it still served; frozen
    # objects are never collected, so its reference cycles (batcher <-> core, tracker thread) would
    # stay until the next reload. Unfreeze, collect, freeze again: once per retired core.
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc


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
        report = DriftReport(window_requests=core.drift.n, window_size=core.drift.window,
                             **drift_verdict(core.drift.n, d.psi if d is not None else None, core.drift.reference, core.sae.k))
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


app.include_router(audit_router)  # the audit page's history, concept page and title search


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
            settings = Settings.from_env()
            core = Core(settings)
        except (BundleError, ConfigError) as e:
            print(f"RecSAE service cannot start: {e}", file=sys.stderr, flush=True)
            raise SystemExit(3) from None
        try:  # what to try on this bundle (whichever dataset `make serve` built it on)
            ds = core.bundle.manifest.get("dataset", {})
            print(f"RecSAE: serving bundle {core.bundle.version} ({ds.get('dataset', '?')}, "
                  f"{core.sae.n_latents} latents, {len(core.bundle.users.user_ids)} users)", file=sys.stderr)
            try:
                lines = core.examples(f"http://127.0.0.1:{os.environ.get('RECSAE_PORT', '3000')}")
            except Exception as e:  # a cosmetic hint must not stop the server; say why it is missing
                lines = []
                print(f"(no example requests: {type(e).__name__}: {e})", file=sys.stderr)
            for line in lines:
                print(f"try: {line}", file=sys.stderr)
            if not settings.admin_token:
                print("admin routes (/admin/policies, /admin/reload) are off: set RECSAE_ADMIN_TOKEN=<token> "
                      "to turn them on", file=sys.stderr)
            sys.stderr.flush()
        finally:
            core.close()

    @bentoml.on_shutdown
    def _close(self) -> None:
        if getattr(self, "core", None) is not None:
            self.core.close()

    def __is_ready__(self) -> bool:
        return bool(getattr(self, "core", None) and self.core.ready)

    def __metrics__(self, content: str) -> str:
        """Append the drift series rendered at scrape time (bounded, never stale)."""
        return content.rstrip("\n") + "\n" + self.core.drift.exposition()


MAX_URL_BYTES = 64 * 1024  # above the longest schema-valid URL (4,096-char `suppress`, percent-encoded)
# uvicorn's h11 parser drops a request whose head exceeds 16 KiB with a plain-text 400 (or a
# reset while the client still sends): let heads up to 1 MiB through so a long URL gets its 414.
h11_impl.DEFAULT_MAX_INCOMPLETE_EVENT_SIZE = max(h11_impl.DEFAULT_MAX_INCOMPLETE_EVENT_SIZE, 1 << 20)


async def _answer(send: Any, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
    raw = to_json(body)
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    hdrs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": raw})


class _Edge:
    """What holds for every request before BentoML's router and the app see it:

    * a path holding a line break goes straight to the app, which validates it (422): BentoML's
      ``Mount`` pattern does not match it and would answer a plain-text 404;
    * a URL over ``MAX_URL_BYTES`` gets 414; a repeated query parameter 422 (every parameter is
      single-valued: ``policy=a&policy=`` must not silently apply the last one);
    * ``/admin/*`` checks the bearer token first: no field list for unauthenticated callers;
    * ``/`` redirects to ``/docs`` (BentoML's page loads a tag manager) and ``/docs.json`` is
      OpenAPI 3.0 (BentoML merges the app's 3.1-style schemas into its 3.0 document as they are).
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, qs = scope.get("path", ""), scope.get("query_string", b"")
        if len(scope.get("raw_path") or path.encode()) + len(qs) > MAX_URL_BYTES:
            return await _answer(send, 414, {"detail": f"URL longer than {MAX_URL_BYTES} bytes"})
        if path.startswith("/admin/") and _current is not None:
            denied = _admin_denied(_current.settings.admin_token, scope)
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
            return await send_redirect(scope, receive, send)
        if path == "/docs.json" and scope["method"] in ("GET", "HEAD"):
            return await _answer(send, 200, docs_json())
        if "\n" in path or "\r" in path:
            return await app(scope, receive, send)
        replaced = False

        async def json_404(msg: dict) -> None:
            # Starlette's router answers unknown paths in plain text: JSON like every other error;
            # its 405 names only the first route's methods in Allow: name every route's
            nonlocal replaced
            if msg["type"] == "http.response.start" and msg["status"] == 405:
                allow = allowed_methods(path)
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


async def send_redirect(scope: dict, receive: Any, send: Any) -> None:
    await RedirectResponse("/docs", status_code=307)(scope, receive, send)


def _admin_denied(token: str | None, scope: dict) -> tuple[int, dict, dict | None] | None:
    """(status, body, headers) when the request may not reach an admin route, else None."""
    if not token:
        return 503, {"detail": "admin disabled: set RECSAE_ADMIN_TOKEN to enable /admin endpoints"}, None
    auth = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
    scheme, _, given = auth.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        return 401, {"detail": "missing or wrong bearer token"}, {"WWW-Authenticate": "Bearer"}
    return None


_DOCS_JSON: dict | None = None


def docs_json() -> dict:
    """BentoML's OpenAPI document (the app's routes plus /livez, /readyz, /metrics) as valid 3.0."""
    global _DOCS_JSON
    if _DOCS_JSON is None:
        from service.openapi import to_openapi_30

        _DOCS_JSON = to_openapi_30(RecSAEService.openapi_spec.asdict())
    return _DOCS_JSON


RecSAEService.add_asgi_middleware(_Edge)

_BENTOML_PATHS = frozenset({"/", "/livez", "/readyz", "/healthz", "/metrics", "/docs.json", "/schema.json"})


@functools.lru_cache(maxsize=4096)
def route_template(path: str) -> str:
    """The metrics label of a request path: its route's template ('/concepts/{latent}'), BentoML's
    own paths as they are, 'unmatched' for anything else (bounded label values)."""
    if path in _BENTOML_PATHS:
        return path
    scope = {"type": "http", "path": path, "root_path": "", "method": "GET"}
    for route in app.routes:
        if route.matches(scope)[0] != Match.NONE:
            return getattr(route, "path", "unmatched") or "unmatched"
    return "/static_content" if path.startswith("/static_content/") else "unmatched"


M.bound_endpoint_labels(route_template)


@functools.lru_cache(maxsize=256)
def allowed_methods(path: str) -> str:
    """The methods of every app route matching ``path``, for a 405's Allow header ('' if none)."""
    scope = {"type": "http", "path": path, "root_path": "", "method": "GET"}
    methods: set[str] = set()
    for route in app.routes:
        if getattr(route, "methods", None) and route.matches(scope)[0] != Match.NONE:
            methods |= route.methods
    return ", ".join(sorted(methods))

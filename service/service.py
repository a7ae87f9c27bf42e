"""The BentoML service: recommendations with the concepts that drove them, suppressible at run time.

Run: ``RECSAE_BUNDLE=bundles/dev-ml100k bentoml serve service.service:RecSAEService``.
HTTP routes are a FastAPI app mounted on the service (BentoML ``@bentoml.api`` endpoints are
POST-only; ``GET /recommend?...`` needs FastAPI). BentoML adds ``/livez``, ``/readyz`` (ready
once the bundle is loaded, verified and warmed) and ``/metrics``.

Imports numpy/onnxruntime parts of ``recsae`` only: never torch (tested).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import sys
import time
from contextlib import contextmanager
from typing import Annotated, Any, Iterator

import bentoml
from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from pydantic_core import to_json

from recsae import BundleError, ConfigError, __version__
from recsae.concepts import Concept
from service import metrics as M
from service.config import Settings
from service.core import ClientError, Core, NotFound
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
)

log = logging.getLogger("recsae.service")
if logging.getLogger("recsae").level == logging.NOTSET:
    logging.getLogger("recsae").setLevel(logging.INFO)  # startup summary + Redis outage lines

app = FastAPI(
    title="RecSAE Serve",
    version=__version__,
    description=(
        "Recommendations with the sparse-autoencoder concepts that drove them; concepts can be "
        "suppressed per request (`suppress=`) or by stored policy (`policy=`)."
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
            core.recommend_user(
                q.user_id, k=q.k, explain=q.explain, suppress=q.suppress_list(), policy=q.policy,
                exclude_seen=q.exclude_seen, mode=q.mode,
            )
        )


@app.post("/recommend", response_model=RecommendResponse, responses={422: E422},
          summary="Recommend for an explicit history (sequential bundles)")
async def recommend_history(body: RecommendRequest, _: Annotated[NoParams, Query()], core: CoreDep) -> Response:
    with _timed("POST /recommend", body.explain):
        return _body(
            core.recommend_history(
                body.history, k=body.k, explain=body.explain, suppress=body.suppress_list(),
                policy=body.policy, exclude_seen=body.exclude_seen, mode=body.mode,
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

"""The audit page (``/audit``) and its read-only endpoints: recent traffic, the policies, drift
(bearer RECSAE_AUDIT_TOKEN when it is set)."""

from __future__ import annotations

import math
import pathlib
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response
from starlette.staticfiles import StaticFiles

from service import auth
from service.auth import AuditCreds
from service.audit_routes import drift_verdict
from service.core import DECIMALS
from service.deps import CoreDep, ServiceDep, body_json, model_json, timed
from service.errors import AUDIT_ERRORS
from service.schemas import DriftLatent, DriftQuery, DriftReport, NoParams, PolicyList, RecentList, RecentQuery

STATIC = pathlib.Path(__file__).parent.parent / "static"
router = APIRouter()


@router.get("/audit", include_in_schema=False)
async def audit_page() -> Response:
    return Response((STATIC / "audit.html").read_bytes(), media_type="text/html; charset=utf-8",
                    headers={"Cache-Control": "no-cache"})


@router.get("/audit/atlas", include_in_schema=False)
async def atlas_page(core: CoreDep) -> Response:
    """The bundle's static concept atlas (written by the offline job), linked from the audit page;
    its cards link back to the concept pages here."""
    path = core.bundle.path / "atlas.html"
    if not path.is_file():
        return Response("this bundle has no atlas.html (built with --describer none?): "
                        "write one with `recsae interpret BUNDLE`", status_code=404, media_type="text/plain")
    return Response(path.read_bytes(), media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-cache"})


router.mount("/audit/static", StaticFiles(directory=STATIC, check_dir=False), name="audit-static")


@router.get("/audit/recent", response_model=RecentList, responses=AUDIT_ERRORS, tags=["audit"],
            summary="A sample of recently served recommendations (newest first)")
def audit_recent(q: Annotated[RecentQuery, Query()], svc: ServiceDep, creds: AuditCreds) -> Response:
    with timed("GET /audit/recent"):
        auth.audit(svc.settings, creds)
        return body_json({"entries": svc.core.recent.recent(q.limit)})


@router.get("/audit/policies", response_model=PolicyList, responses=AUDIT_ERRORS, tags=["audit"],
            summary="The stored suppression policies, read-only (for the audit page's policy picker)")
def audit_policies(_: Annotated[NoParams, Query()], svc: ServiceDep, creds: AuditCreds) -> Response:
    with timed("GET /audit/policies"):
        auth.audit(svc.settings, creds)
        return model_json(PolicyList(policies=svc.core.policies.list()))


@router.get("/drift", response_model=DriftReport, responses=AUDIT_ERRORS, tags=["audit"],
            summary="Reference vs live firing rates of the most drifted concepts (this worker)")
async def drift(q: Annotated[DriftQuery, Query()], core: CoreDep, creds: AuditCreds, svc: ServiceDep) -> Response:
    with timed("GET /drift"):
        auth.audit(svc.settings, creds)
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
        return model_json(report)

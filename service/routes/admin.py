"""``/admin/*``: suppression policies, their audit trail and bundle reload (bearer
RECSAE_ADMIN_TOKEN; sync routes: a few Redis round trips, run in the thread pool)."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response

from service import auth
from service.auth import Creds, Label
from service.deps import ServiceDep, model_json, timed
from service.errors import ADMIN_ERRORS, E404, E409, E413
from service.core import NotFound
from service.policies import PolicyInputError
from service.schemas import (
    POLICY_NAME,
    AuditList,
    AuditQuery,
    NoParams,
    Policy,
    PolicyIn,
    PolicyList,
    PutPolicyQuery,
    ReloadRequest,
    ReloadResponse,
)

log = logging.getLogger("recsae.service")
router = APIRouter()

PolicyName = Annotated[str, Path(pattern=POLICY_NAME, description="letters, digits, '_.-'; at most 64")]


@router.get("/admin/policies", response_model=PolicyList, responses=ADMIN_ERRORS, tags=["admin"])
def list_policies(_: Annotated[NoParams, Query()], svc: ServiceDep, creds: Creds, x_admin_label: Label = None) -> Response:
    with timed("GET /admin/policies"):
        auth.admin(svc.settings, creds, x_admin_label)
        return model_json(PolicyList(policies=svc.core.policies.list()))


@router.get("/admin/policies/{name}", response_model=Policy, responses={**ADMIN_ERRORS, 404: E404}, tags=["admin"])
def get_policy(
    name: PolicyName, _: Annotated[NoParams, Query()], svc: ServiceDep, creds: Creds, x_admin_label: Label = None
) -> Response:
    with timed("GET /admin/policies/{name}"):
        auth.admin(svc.settings, creds, x_admin_label)
        p = svc.core.policies.get(name)
        if p is None:
            raise NotFound(f"no policy {name!r}")
        return model_json(p)


@router.put("/admin/policies/{name}", response_model=Policy, responses=ADMIN_ERRORS, tags=["admin"])
def put_policy(
    name: PolicyName, body: PolicyIn, q: Annotated[PutPolicyQuery, Query()], svc: ServiceDep, creds: Creds,
    x_admin_label: Label = None,
) -> Response:
    with timed("PUT /admin/policies/{name}"):
        who = auth.admin(svc.settings, creds, x_admin_label)
        body = _for_this_bundle(name, body, svc.core.bundle.bundle_hash, q.force)
        return model_json(svc.core.policies.put(name, body, who))


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


@router.delete("/admin/policies/{name}", status_code=204, responses={**ADMIN_ERRORS, 404: E404}, tags=["admin"])
def delete_policy(
    name: PolicyName, _: Annotated[NoParams, Query()], svc: ServiceDep, creds: Creds, x_admin_label: Label = None
) -> Response:
    with timed("DELETE /admin/policies/{name}"):
        who = auth.admin(svc.settings, creds, x_admin_label)
        if not svc.core.policies.delete(name, who):
            raise NotFound(f"no policy {name!r}")
        return Response(status_code=204)


@router.get("/admin/audit", response_model=AuditList, responses=ADMIN_ERRORS, tags=["admin"])
def audit(q: Annotated[AuditQuery, Query()], svc: ServiceDep, creds: Creds, x_admin_label: Label = None) -> Response:
    with timed("GET /admin/audit"):
        auth.admin(svc.settings, creds, x_admin_label)
        return model_json(AuditList(entries=svc.core.policies.audit(q.limit)))


@router.post("/admin/reload", response_model=ReloadResponse, tags=["admin"],
             responses={**ADMIN_ERRORS, 409: E409, 413: E413},
             summary="Load, verify and warm a bundle off to the side; swap only on success")
def reload_bundle(
    _: Annotated[NoParams, Query()], svc: ServiceDep, creds: Creds, body: ReloadRequest | None = None,
    x_admin_label: Label = None,
) -> Response:
    """This worker only: the old engine keeps serving until the new one is loaded, hash-verified
    and warmed; then one reference swap. A bad bundle answers 422 with the reason and changes
    nothing. (Several workers/replicas: roll out a new bundle as a new deployment revision.)"""
    with timed("POST /admin/reload"):
        auth.admin(svc.settings, creds, x_admin_label)
        return model_json(svc.reloader.reload(svc, body.path if body is not None and body.path else None))

"""Who may call what: the admin bearer token (``/admin/*``) and the audit token (``/audit/*``,
``/drift``), both compared in constant time, both read from the served ``Settings``."""

from __future__ import annotations

import hmac
import re
from typing import Annotated

from fastapi import Depends, Header
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.config import Settings
from service.errors import HTTPError

_bearer = HTTPBearer(auto_error=False, description="RECSAE_ADMIN_TOKEN")
_audit_bearer = HTTPBearer(auto_error=False, scheme_name="AuditBearer", description="RECSAE_AUDIT_TOKEN")
_LABEL = re.compile(r"[^A-Za-z0-9_.@:-]")

Creds = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
AuditCreds = Annotated[HTTPAuthorizationCredentials | None, Depends(_audit_bearer)]
Label = Annotated[str | None, Header(max_length=64, description="who acts, for the audit trail")]

ADMIN_OFF = "admin disabled: set RECSAE_ADMIN_TOKEN to enable /admin endpoints"


def _matches(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode(), token.encode())


def admin(settings: Settings, creds: HTTPAuthorizationCredentials | None, label: str | None) -> str:
    """Check the bearer token; return who acts: the X-Admin-Label, or 'admin' without one (never
    anything derived from the token: audit-token holders read it)."""
    token = settings.admin_token
    if not token:
        raise HTTPError(503, ADMIN_OFF)
    if not _matches(creds.credentials if creds is not None else "", token):
        raise HTTPError(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
    return _LABEL.sub("_", label)[:64] if label else "admin"


def audit(settings: Settings, creds: HTTPAuthorizationCredentials | None) -> None:
    """Bearer RECSAE_AUDIT_TOKEN (constant-time compare); unset -> the audit routes are open."""
    token = settings.audit_token
    if token and not _matches(creds.credentials if creds is not None else "", token):
        raise HTTPError(401, "missing or wrong audit token", {"WWW-Authenticate": "Bearer"})


def admin_denied(token: str | None, scope: dict) -> tuple[int, dict, dict | None] | None:
    """For the edge middleware, before any routing or validation: (status, body, headers) when
    the request may not reach an admin route, else None."""
    if not token:
        return 503, {"detail": ADMIN_OFF}, None
    auth = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
    scheme, _, given = auth.partition(" ")
    if scheme.lower() != "bearer" or not _matches(given.strip(), token):
        return 401, {"detail": "missing or wrong bearer token"}, {"WWW-Authenticate": "Bearer"}
    return None

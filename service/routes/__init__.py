"""The HTTP routes, one module per job. ``ROUTERS`` is the one place they are registered: its
order is the order of the OpenAPI document's paths (and of matching)."""

from __future__ import annotations

from fastapi import APIRouter

from service import audit_routes, segments
from service.routes import admin, audit, concepts, docs, recommend

ROUTERS: list[APIRouter] = [recommend.router, concepts.router, admin.router, docs.router, audit.router,
                            audit_routes.router, segments.router]  # the audit page's history, concept page, segments, search

"""``/recommend``: recommendations with the concepts that drove them (async: the CPU-bound work
of ~1 ms runs in the batcher's thread, the event loop never waits on a thread pool)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import Response

from service.deps import CoreDep, body_json, timed
from service.errors import E404, E422
from service.schemas import NoParams, RecommendQuery, RecommendRequest, RecommendResponse

router = APIRouter()
AuditHeader = Annotated[str | None, Header(max_length=8, description="1: an auditor's request (the audit page), "
                                            "kept out of drift and the recent-traffic sample")]


@router.get("/recommend", response_model=RecommendResponse, responses={404: E404, 422: E422},
            summary="Recommend for a known user")
async def recommend(q: Annotated[RecommendQuery, Query()], core: CoreDep, x_recsae_audit: AuditHeader = None) -> Response:
    with timed("GET /recommend", q.explain):
        return body_json(await core.recommend_user_async(q.user_id, q.options(audit=x_recsae_audit == "1")))


@router.post("/recommend", response_model=RecommendResponse, responses={422: E422},
             summary="Recommend for an explicit history (sequential bundles)")
async def recommend_history(body: RecommendRequest, _: Annotated[NoParams, Query()], core: CoreDep,
                            x_recsae_audit: AuditHeader = None) -> Response:
    with timed("POST /recommend", body.explain):
        return body_json(await core.recommend_history_async(body.history, body.options(audit=x_recsae_audit == "1")))

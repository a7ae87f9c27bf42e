"""The concept dictionary (``/concepts``) and the served bundle (``/bundle``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response
from pydantic import BeforeValidator

from recsae.concepts import Concept
from service.deps import CoreDep, model_json, timed
from service.errors import E404, E422
from service.schemas import BundleInfo, ConceptList, ConceptQuery, ConceptSummary, NoParams

router = APIRouter()


@router.get("/concepts", response_model=ConceptList, responses={422: E422}, summary="Search the concept dictionary")
async def concepts(q: Annotated[ConceptQuery, Query()], core: CoreDep) -> Response:
    with timed("GET /concepts"):
        found = core.store.search(q.q, q.status, q.sort)
        page = found[q.offset : q.offset + q.limit]
        return model_json(ConceptList(total=len(found), concepts=[ConceptSummary.of(c) for c in page]))


def _digits(v: Any) -> Any:
    """A latent id in the path is digits only: int() would accept '1\\n' or ' 1'."""
    if isinstance(v, str) and not (v.isascii() and v.isdigit()):
        raise ValueError("must be a latent id: digits only")
    return v


@router.get("/concepts/{latent}", response_model=Concept, responses={404: E404, 422: E422}, summary="One concept")
async def concept(latent: Annotated[int, Path(ge=0), BeforeValidator(_digits)], _: Annotated[NoParams, Query()],
                  core: CoreDep) -> Response:
    with timed("GET /concepts/{latent}"):
        return model_json(core.concept(latent))


@router.get("/bundle", response_model=BundleInfo, responses={422: E422}, summary="The served bundle")
async def bundle(_: Annotated[NoParams, Query()], core: CoreDep) -> Response:
    with timed("GET /bundle"):
        return model_json(core.bundle_info())

"""Segments: which concepts separate two groups of users (issue 20, item 4).

A group is a pasted list of user ids or "users whose history is at least S% FEATURE" (an item
attribute of the catalogue: genre, decade, popularity band). The bundle carries no user
attributes (gender, age), so a group by those is a pasted list made from the dataset's user
table. Group B defaults to everyone else. Per concept: the share of each group in whom it fires
and its mean strength there, ranked by the difference in share.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from service.audit_routes import BODY_ERRORS, ERRORS, Audit, CoreDep, user_codes
from service.concepts import label_of
from service.core import DECIMALS, ClientError, Core
from service.schemas import NoParams

router = APIRouter()


class IdsGroup(BaseModel):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    user_ids: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        min_length=1, max_length=10_000, description="a pasted list of user ids (the body stays under 64 KiB)")


class FeatureGroup(BaseModel):
    model_config = ConfigDict(extra="forbid")

    feature: str = Field(min_length=1, max_length=200, description="an item attribute, e.g. 'genre:Horror' "
                         "(GET /audit/features)")
    min_share: float = Field(0.3, gt=0, le=1, description="its share of the user's history at least this")


class AttributeGroup(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_attribute: str = Field(min_length=1, max_length=200, description="a user attribute of the dataset, e.g. "
                                "'gender:F' or 'age:25-34' (GET /audit/features lists them)")


Group = IdsGroup | FeatureGroup | AttributeGroup


class SegmentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    a: Group
    b: Group | None = Field(None, description="null: every other user of the bundle")
    top: int = Field(20, ge=1, le=1000)


class SegmentConcept(BaseModel):
    latent: int
    label: str | None = None
    rate_a: float = Field(description="share of group A in whom it fires")
    rate_b: float
    difference: float = Field(description="rate_a - rate_b")
    mean_a: float | None = Field(None, description="mean strength over the group A users it fires in")
    mean_b: float | None = None


class SegmentSide(BaseModel):
    label: str
    n: int
    unknown: list[str] = Field(default_factory=list, description="pasted ids the bundle does not know (first 20)")


class SegmentReport(BaseModel):
    a: SegmentSide
    b: SegmentSide
    concepts: list[SegmentConcept] = Field(description="largest difference in firing share first")


class FeatureList(BaseModel):
    features: list[str] = Field(description="item attributes: a group 'history at least a share of one'")
    user_attributes: list[str] = Field(default_factory=list, description="user attributes (empty when the "
                                       "dataset has none): a group 'users with one'")


def _members(core: Core, g: Group, where: str) -> tuple[np.ndarray, str, list[str]]:
    users = core.bundle.users
    if isinstance(g, IdsGroup):
        idx, unknown = [], []
        for raw in g.user_ids:
            u = users.index_of(raw.strip())
            (unknown if u is None else idx).append(raw if u is None else u)
        return np.unique(np.asarray(idx, dtype=np.int64)), f"{len(g.user_ids)} pasted ids", unknown[:20]
    if isinstance(g, AttributeGroup):
        names = [] if users.feature_names is None else [str(n) for n in users.feature_names]
        if g.user_attribute not in names:
            raise ClientError(("body", where, "user_attribute"), f"unknown user attribute {g.user_attribute!r}; "
                              + ("GET /audit/features lists them" if names else "this bundle's data has no user attributes"))
        rows = np.flatnonzero(users.features[:, names.index(g.user_attribute)])
        return rows, f"users with {g.user_attribute}", []
    cat = core.bundle.catalog
    if g.feature not in cat.feature_names:
        raise ClientError(("body", where, "feature"), f"unknown feature {g.feature!r}; GET /audit/features lists them")
    f = cat.feature_names.index(g.feature)
    has = np.array([f in fs for fs in cat.item_features], dtype=bool)
    share = np.array([has[users.history(u)].mean() if len(users.history(u)) else 0.0
                      for u in range(len(users.user_ids))])
    return np.flatnonzero(share >= g.min_share), f"history at least {g.min_share:.0%} {g.feature}", []


def compare(core: Core, req: SegmentRequest) -> SegmentReport:
    a, la, ua = _members(core, req.a, "a")
    if req.b is None:
        b = np.setdiff1d(np.arange(len(core.bundle.users.user_ids)), a)
        lb, ub = "everyone else", []
    else:
        b, lb, ub = _members(core, req.b, "b")
    for name, g in (("a", a), ("b", b)):
        if not len(g):
            raise ClientError(("body", name), f"group {name} has no user of this bundle: paste known ids or lower min_share")
    codes = user_codes(core)
    m = core.sae.n_latents

    def stats(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx, acts = codes.idx[rows].ravel(), codes.acts[rows].ravel()
        on = acts > 0
        count = np.bincount(idx[on], minlength=m).astype(np.float64)
        total = np.bincount(idx[on], weights=acts[on], minlength=m)
        return count / len(rows), np.divide(total, count, out=np.full(m, np.nan), where=count > 0)

    ra, ma = stats(a)
    rb, mb = stats(b)
    diff = ra - rb
    order = np.lexsort((np.arange(m), -np.abs(diff)))[: req.top]
    r = lambda x: round(float(x), DECIMALS)  # noqa: E731
    out = []
    for j in order.tolist():
        c = core.store.concepts.get(j)
        out.append(SegmentConcept(latent=j, label=label_of(c.description) if c else None, rate_a=r(ra[j]), rate_b=r(rb[j]),
                                  difference=r(diff[j]), mean_a=None if np.isnan(ma[j]) else r(ma[j]),
                                  mean_b=None if np.isnan(mb[j]) else r(mb[j])))
    return SegmentReport(a=SegmentSide(label=la, n=len(a), unknown=ua), b=SegmentSide(label=lb, n=len(b), unknown=ub),
                         concepts=out)


@router.post("/audit/segments", response_model=SegmentReport, responses=BODY_ERRORS, tags=["audit"],
             summary="Compare concept firing between two groups of users")
def audit_segments(body: SegmentRequest, _q: Annotated[NoParams, Query()], core: CoreDep, _: Audit) -> Response:
    return Response(compare(core, body).model_dump_json(), media_type="application/json")


@router.get("/audit/features", response_model=FeatureList, responses=ERRORS, tags=["audit"],
            summary="Item attributes a segment can be defined by")
def audit_features(_q: Annotated[NoParams, Query()], core: CoreDep, _: Audit) -> Response:
    names = core.bundle.users.feature_names
    return Response(FeatureList(features=list(core.bundle.catalog.feature_names),
                                user_attributes=[] if names is None else [str(n) for n in names]).model_dump_json(),
                    media_type="application/json")

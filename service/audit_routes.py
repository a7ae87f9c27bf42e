"""The audit page's own routes (audit token): a user's history with the items that drove each
concept, one concept's page and its data, catalogue title search, and the drift verdict.

An ``APIRouter`` included by ``service.service`` (one line there), so the page's features grow
here rather than in the service module.
"""

from __future__ import annotations

import pathlib
import threading
import time
from contextlib import contextmanager
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response
from pydantic import BeforeValidator

from recsae.kernel import Codes
from service.attribution import attribute, top_positions
from service.audit_schemas import (
    CatalogItem,
    ConceptAttribution,
    ConceptDetail,
    DecoderItem,
    HistoryAttribution,
    HistoryItem,
    HistoryQuery,
    HistoryRequest,
    ItemAttribution,
    ItemList,
    ItemQuery,
    PolicyUse,
    TopUser,
)
from service import auth
from service import metrics as M
from service.auth import AuditCreds
from service.deps import CoreDep, ServiceDep
from service.concepts import label_of
from service.core import DECIMALS, ClientError, Core, NotFound
from service.schemas import ErrorResponse, NoParams

router = APIRouter()
STATIC = pathlib.Path(__file__).with_name("static")
ERRORS = {401: {"model": ErrorResponse, "description": "missing or wrong audit token"},
          404: {"model": ErrorResponse, "description": "unknown user / latent"},
          422: {"model": ErrorResponse, "description": "invalid input; `detail[].loc` names the field"}}
BODY_ERRORS = {**ERRORS, 413: {"model": ErrorResponse, "description": "request body over the size limit "
                                                                      "(RECSAE_MAX_BODY_BYTES, 64 KiB)"}}


def _auth(svc: ServiceDep, creds: AuditCreds) -> None:
    """Bearer RECSAE_AUDIT_TOKEN, as for /audit/recent and /drift; unset -> open."""
    auth.audit(svc.settings, creds)


Audit = Annotated[None, Depends(_auth)]


def _digits(v: Any) -> Any:
    if isinstance(v, str) and not (v.isascii() and v.isdigit()):
        raise ValueError("must be a latent id: digits only")
    return v


Latent = Annotated[int, Path(ge=0), BeforeValidator(_digits)]


@contextmanager
def _timed(route: str):
    """The route's latency in ``recsae_request_latency_seconds`` (what the attribution costs live)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        M.REQUEST_LATENCY.labels(route, "false").observe(time.perf_counter() - t0)


def _r(x: float) -> float:
    return round(float(x), DECIMALS)


# -- item 1: which history items drove each concept ---------------------------------------------
def history_attribution(core: Core, history: np.ndarray, user: int | None, user_id: str | None,
                        top: int) -> HistoryAttribution:
    res = attribute(core.engine, history, user)
    ids, titles = core.item_ids, core.titles
    hist = history.tolist()
    concepts = []
    latents = res["latents"].tolist()
    described = dict(zip(latents, core.store.described(latents)))
    order = np.argsort(-res["activations"], kind="stable")
    for c in order.tolist():
        j = int(res["latents"][c])
        col = res["attr"][:, c]
        d = described.get(j)
        concepts.append(ConceptAttribution(
            latent=j, activation=_r(res["activations"][c]),
            label=d.label if d else None, description=d.summary.description if d else None,
            attributions=[_r(v) for v in col],
            top=[ItemAttribution(position=int(p), item_id=ids[hist[p]], title=titles[hist[p]], attribution=_r(col[p]))
                 for p in top_positions(col, top, res["activations"][c]).tolist()],
        ))
    items = [HistoryItem(position=p, item_id=ids[i], title=titles[i], in_window=bool(res["in_window"][p]))
             for p, i in reversed(list(enumerate(hist)))]
    return HistoryAttribution(user_id=user_id, method=res["method"], window=res["window"], items=items,
                              concepts=concepts, seconds=round(res["seconds"], 4))


@router.get("/audit/history", response_model=HistoryAttribution, responses=ERRORS, tags=["audit"],
            summary="A user's history, newest first, and the items that drove each active concept")
def audit_history(q: Annotated[HistoryQuery, Query()], core: CoreDep, _: Audit) -> Response:
    with _timed("GET /audit/history"):
        u = core.bundle.users.index_of(q.user_id)
        if u is None:
            raise NotFound(f"unknown user_id {q.user_id!r}: this bundle knows {len(core.bundle.users.user_ids)} users")
        body = history_attribution(core, core.bundle.users.history(u), u, q.user_id, q.top)
        return Response(body.model_dump_json(), media_type="application/json")


@router.post("/audit/history", response_model=HistoryAttribution, responses=BODY_ERRORS, tags=["audit"],
             summary="The same for an explicit history (sequential bundles)")
def audit_history_post(body: HistoryRequest, _q: Annotated[NoParams, Query()], core: CoreDep, _: Audit) -> Response:
    if not core.engine.accepts_history:
        raise ClientError(("body", "history"), "this bundle's model encodes user ids, not histories: use "
                          "GET /audit/history?user_id=")
    idx, unknown = [], []
    for raw in body.history:
        i = core.bundle.catalog.index_of(raw)
        (unknown if i is None else idx).append(raw if i is None else i)
    if unknown:
        raise ClientError(("body", "history"), f"{len(unknown)} item id(s) not in the catalog: {unknown[:10]}")
    out = history_attribution(core, np.asarray(idx, dtype=np.int64), None, None, body.top)
    return Response(out.model_dump_json(), media_type="application/json")


class TitleSearch:
    """Case-insensitive word search over a catalogue's titles, as one casefolded text searched by
    ``str.find`` (C speed): a query no title matches costs one pass over the text (~0.1 s at 10M
    titles) instead of a Python comparison per title (seconds, holding the GIL the event loop
    needs). Built on first use (10M titles: a few seconds, and the text's size in memory)."""

    def __init__(self, titles: Any):
        parts = [t.casefold().replace("\n", " ") for t in titles]
        self.starts = np.zeros(len(parts) + 1, dtype=np.int64)  # title i is text[starts[i]:starts[i + 1] - 1]
        np.cumsum(np.fromiter((len(p) + 1 for p in parts), dtype=np.int64, count=len(parts)), out=self.starts[1:])
        self.text = "\n".join(parts)

    def find(self, q: str, limit: int, skip: int | None = None) -> list[int]:
        """The first ``limit`` titles (catalogue order) holding every word of ``q``, but ``skip``."""
        words = q.casefold().split()
        if not words:
            return [i for i in range(min(limit + 1, len(self.starts) - 1)) if i != skip][:limit]
        text, out, cur = self.text, [], 0
        # leapfrog: each word's next occurrence from ``cur``; the title holding the furthest one is
        # the first that can hold them all (no earlier title holds that word): check it, move on.
        # Each step passes at least one title holding the rarest word.
        while len(out) < limit:
            far = -1
            for w in words:
                p = text.find(w, cur)
                if p < 0:
                    return out
                far = max(far, p)
            start = text.rfind("\n", 0, far) + 1
            end = text.find("\n", far)
            end = len(text) if end < 0 else end
            title = text[start:end]
            if all(w in title for w in words):
                i = int(np.searchsorted(self.starts, start))
                if i != skip:
                    out.append(i)
                cur = end + 1
            else:  # a word is missing here: its next occurrence is past this title
                cur = start
        return out


_search_lock = threading.Lock()


def title_search(core: Core) -> TitleSearch:
    with _search_lock:
        index = getattr(core, "_audit_title_search", None)
        if index is None:
            index = core._audit_title_search = TitleSearch(core.titles)  # type: ignore[attr-defined]
        return index


@router.get("/audit/items", response_model=ItemList, responses=ERRORS, tags=["audit"],
            summary="Catalogue items whose title contains every word (for typing a history by title)")
def audit_items(q: Annotated[ItemQuery, Query()], core: CoreDep, _: Audit) -> Response:
    exact = core.bundle.catalog.index_of(q.q.strip())
    found = ([exact] if exact is not None else []) + title_search(core).find(q.q, q.limit, skip=exact)
    out = ItemList(items=[CatalogItem(item_id=core.item_ids[i], title=core.titles[i]) for i in found[: q.limit]])
    return Response(out.model_dump_json(), media_type="application/json")


# -- item 2: one concept's page -------------------------------------------------------------------
_users_lock = threading.Lock()


def user_codes(core: Core) -> Codes:
    """Every bundle user's SAE code, computed once per served core (the concept page's top users
    and histogram; ~0.1-0.3 s for ml-100k's 943 users) and kept on it."""
    with _users_lock:
        codes = getattr(core, "_audit_user_codes", None)
        if codes is None:
            n = len(core.bundle.users.user_ids)
            parts = [core.sae.encode(core.engine.encode_users(np.arange(s, min(n, s + 512), dtype=np.int64)))
                     for s in range(0, n, 512)]
            codes = Codes(np.concatenate([p.acts for p in parts]), np.concatenate([p.idx for p in parts])) if parts \
                else Codes(np.zeros((0, core.sae.k), np.float32), np.zeros((0, core.sae.k), np.int64))
            core._audit_user_codes = codes  # type: ignore[attr-defined]
        return codes


def concept_detail(core: Core, latent: int, top: int = 10) -> ConceptDetail:
    c = core.concept(latent)
    w = core.engine.item_emb @ core.sae.W_dec[latent]  # (n_items,): what one unit of it adds to each score
    up = np.argsort(-w, kind="stable")[:top]
    down = np.argsort(w, kind="stable")[:top]
    item = lambda i: DecoderItem(item_id=core.item_ids[i], title=core.titles[i], weight=_r(w[i]))  # noqa: E731
    codes = user_codes(core)
    act = np.where(codes.idx == latent, codes.acts, 0.0).sum(axis=1)
    firing = np.flatnonzero(act > 0)
    best = firing[np.argsort(-act[firing], kind="stable")][:top]
    hmax = float(act.max()) if len(firing) else 0.0
    hist = np.histogram(act[firing], bins=20, range=(0.0, hmax or 1.0))[0].tolist() if len(firing) else [0] * 20
    d = core.drift.snapshot()
    policies = []
    for p in core.policies.list():
        s = core.policies.effective_latents(p).get(latent)
        if s:
            policies.append(PolicyUse(name=p.name, strength=float(s), description=p.description))
    return ConceptDetail(
        concept=c, label=label_of(c.description), pushes_up=[item(i) for i in up.tolist()],
        pushes_down=[item(i) for i in down.tolist()],
        top_users=[TopUser(user_id=str(core.bundle.users.user_ids[u]), activation=_r(act[u])) for u in best.tolist()],
        users_firing=int(len(firing)), users_total=int(len(act)), user_histogram=hist, user_histogram_max=_r(hmax),
        reference_rate=_r(core.bundle.firing_frequency[latent]),
        live_rate=_r(d.live_rate[latent]) if d is not None else None, live_requests=int(core.drift.n),
        live_min_requests=MIN_DRIFT_WINDOW,
        policies=policies,
    )


@router.get("/audit/concepts/{latent}/detail", response_model=ConceptDetail, responses=ERRORS, tags=["audit"],
            summary="Everything the concept page shows about one concept")
def audit_concept_detail(latent: Latent, _q: Annotated[NoParams, Query()], core: CoreDep, _: Audit) -> Response:
    with _timed("GET /audit/concepts/{latent}/detail"):
        return Response(concept_detail(core, latent).model_dump_json(), media_type="application/json")


@router.get("/audit/concepts/{latent}", include_in_schema=False)
async def audit_concept_page(latent: Latent) -> Response:
    return Response((STATIC / "concept.html").read_bytes(), media_type="text/html; charset=utf-8",
                    headers={"Cache-Control": "no-cache"})


# -- drift verdict ---------------------------------------------------------------------------------
MIN_DRIFT_WINDOW = 200
"""Fewer live requests than this: no verdict (14 requests once read 'PSI 5.87': sampling noise)."""
PSI_WATCH, PSI_DRIFT = 0.10, 0.25
"""The usual PSI bands (< 0.1 stable, 0.1-0.25 moderate, > 0.25 significant), counted *above* the
PSI that sampling alone gives at this window size, which over hundreds of latents is far from 0."""


def psi_noise(reference: np.ndarray, k: int, n: int, draws: int = 20, seed: int = 0) -> float:
    """95th percentile of the PSI of ``n`` requests drawn from the reference rates themselves."""
    from service.metrics import drift_stats

    ref = np.asarray(reference, dtype=np.float64)
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(draws):
        counts = rng.binomial(n, np.clip(ref, 0.0, 1.0))
        d = drift_stats(counts, n, ref)
        if d is not None:
            vals.append(d.psi)
    return float(np.percentile(vals, 95)) if vals else 0.0


def drift_verdict(n: int, psi: float | None, reference: np.ndarray, k: int) -> dict[str, Any]:
    """``verdict`` (not-enough-traffic / stable / watch / drifting), the thresholds it used, and why."""
    out: dict[str, Any] = {"min_window": MIN_DRIFT_WINDOW, "psi_noise": None, "psi_watch": None, "psi_drift": None}
    if psi is None or n < MIN_DRIFT_WINDOW:
        out.update(verdict="not-enough-traffic",
                   verdict_text=f"not enough live traffic for a verdict: {n} of the {MIN_DRIFT_WINDOW} requests needed")
        return out
    noise = psi_noise(reference, k, n)
    watch, drift = noise + PSI_WATCH, noise + PSI_DRIFT
    out.update(psi_noise=round(noise, 4), psi_watch=round(watch, 4), psi_drift=round(drift, 4))
    verdict = "stable" if psi <= watch else "watch" if psi <= drift else "drifting"
    words = {"stable": "no drift beyond sampling noise", "watch": "moderate drift: worth a look",
             "drifting": "significant drift: concepts fire differently from the reference"}[verdict]
    out.update(verdict=verdict, verdict_text=f"{words} (PSI {psi:.3f}; sampling noise alone reaches {noise:.3f} "
               f"over {n} requests; watch above {watch:.3f}, drifting above {drift:.3f})")
    return out


"""A de-bias experiment's inputs: a bundle's engine, the leave-one-out split, dev- and test-stage
representations and codes; and the list statistics every sweep point is measured with."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from recsae import ConfigError, DataError
from recsae.debias.measures import BIASES, TOP_K, BiasMeasure, GenderBias, PopularityBias, genre_matrix
from recsae.evaluate import eval_users, metrics_from_ranks, ranks_from_scores, stage_targets
from recsae.kernel import Codes, SAEKernel, SteerMode, top_items
from recsae.policy import steering

DEFAULT_RERANK_GRID = (0.0, 0.02, 0.05, 0.08, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5)
"""Re-ranking strengths, in units of std(scores) / std(penalty) (so one grid fits any model)."""


# =============================================================================================
# 2. Inputs
# =============================================================================================
@dataclass
class StageInputs:
    """One evaluation stage: who, their representation and codes, what to exclude, the target."""

    stage: str
    users: np.ndarray
    x: np.ndarray
    codes: Codes
    exclude: list[np.ndarray]
    targets: np.ndarray


@dataclass
class DebiasData:
    """Everything an experiment needs; ``select`` (dev stage) picks latents, ``test`` reports."""

    kernel: SAEKernel
    item_emb: np.ndarray
    popularity: np.ndarray  # training interaction count per item (the catalog's)
    item_genres: np.ndarray  # (n_items, n_genres) bool
    genre_names: list[str]
    train_histories: list[np.ndarray]
    select: StageInputs
    test: StageInputs
    gender: np.ndarray | None = None  # (n_users,) 1 F, 0 M, -1 unknown
    concepts: list[dict] | None = None
    source: dict = field(default_factory=dict)
    top_k: int = TOP_K

    def measure(self, bias: str) -> BiasMeasure:
        if bias == "popularity":
            return PopularityBias(self.popularity)
        if bias == "gender":
            if self.gender is None or not (self.gender == 1).any() or not (self.gender == 0).any():
                raise ConfigError("the gender experiment needs user features gender:F / gender:M (MovieLens)")
            if self.item_genres.shape[1] < 4:
                raise ConfigError("the gender experiment needs item genres (genre:<name> features)")
            return GenderBias(self.gender, self.train_histories, self.item_genres, self.genre_names)
        raise ConfigError(f"unknown bias {bias!r}; choose one of {BIASES}")


def stage_inputs(
    kernel: SAEKernel, split, stage: str, encode: Callable[[np.ndarray, list[np.ndarray]], np.ndarray],
    batch: int = 1024,
) -> StageInputs:
    users = eval_users(split, stage)
    hist = [split.history(int(u), stage) for u in users]
    parts = [encode(users[s : s + batch], hist[s : s + batch]) for s in range(0, len(users), batch)]
    x = np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, kernel.d_in), np.float32)
    return StageInputs(stage, users, x, kernel.encode(x), hist, stage_targets(split, users, stage))


def gender_of(user_features) -> np.ndarray | None:
    """(n_users,) 1 female, 0 male, -1 unknown; None without ``gender:F``/``gender:M`` features."""
    if user_features is None or "gender:F" not in user_features.names or "gender:M" not in user_features.names:
        return None
    f = user_features.matrix[:, user_features.names.index("gender:F")]
    m = user_features.matrix[:, user_features.names.index("gender:M")]
    return np.where(f, 1, np.where(m, 0, -1)).astype(np.int8)


def data_from_engine(engine, split, user_features=None) -> DebiasData:
    """Inputs from a loaded :class:`recsae.engine.Engine` and the dataset's split.

    Sequential bundles: each stage's input is the user's history before that stage's target,
    windowed by ``history_windows`` and run through the bundle's ONNX encoder
    (``engine.encode_histories``). User-id bundles: one representation per user at every stage.
    """
    if split.n_items != engine.n_items:
        raise DataError(f"the split has {split.n_items} items, the bundle {engine.n_items}")

    def encode(users: np.ndarray, hist: list[np.ndarray]) -> np.ndarray:
        if engine.accepts_history:
            return engine.encode_histories(hist)
        return engine.encode_users(users)

    cat = engine.bundle.catalog
    genres, names = genre_matrix(cat.feature_names, cat.item_features)
    b = engine.bundle
    return DebiasData(
        kernel=engine.sae,
        item_emb=engine.item_emb,
        popularity=np.asarray(cat.popularity, dtype=np.float64),
        item_genres=genres,
        genre_names=names,
        train_histories=list(split.train),
        select=stage_inputs(engine.sae, split, "dev", encode),
        test=stage_inputs(engine.sae, split, "test", encode),
        gender=gender_of(user_features),
        concepts=b.concepts,
        source={"bundle": str(b.path), "version": b.version, "bundle_hash": b.bundle_hash,
                "model": b.model.get("name"), "dataset": b.manifest.get("dataset", {}).get("dataset"),
                "sae_reserve": b.manifest.get("settings", {}).get("sae_reserve")},
    )


def with_kernel(data: DebiasData, kernel: SAEKernel, label: str) -> DebiasData:
    """The same users and representations under another SAE (e.g. another run on the same
    recommender): codes re-encoded, concept descriptions dropped (they belong to the bundle's SAE)."""
    if kernel.d_in != data.item_emb.shape[1]:
        raise ConfigError(f"SAE input size {kernel.d_in} != representation size {data.item_emb.shape[1]}")

    def re(st: StageInputs) -> StageInputs:
        return StageInputs(st.stage, st.users, st.x, kernel.encode(st.x), st.exclude, st.targets)

    from dataclasses import replace

    return replace(data, kernel=kernel, select=re(data.select), test=re(data.test), concepts=None,
                   source={**data.source, "sae": label})


def load_data(bundle_path: str | Path, data_dir: str | Path | None = None, threads: int | None = None) -> DebiasData:
    """Load a bundle, the dataset it was built from (settings in its manifest) and its split.

    Checks that the dataset is the bundle's: same raw user and item ids and the same full
    histories as the bundle's users table (what serving sees).
    """
    from recsae.data import leave_one_out
    from recsae.data.loaders import load_dataset
    from recsae.engine import Engine

    engine = Engine.from_path(str(bundle_path), threads)
    settings = engine.bundle.manifest.get("settings", {})
    name = settings.get("dataset") or engine.bundle.manifest.get("dataset", {}).get("dataset")
    if not name:
        raise DataError(f"bundle {bundle_path} does not name its dataset; cannot evaluate it")
    if settings.get("data"):  # a log file (`recsae train --data`): loaded, and split, as the job did
        from dataclasses import fields

        from recsae.pipeline import JobConfig
        from recsae.pipeline import load_data as job_data

        known = {f.name for f in fields(JobConfig)}
        ds = job_data(JobConfig(**{k: v for k, v in settings.items() if k in known}))
    else:
        ds = load_dataset(name, data_dir=data_dir if data_dir is not None else settings.get("data_dir"),
                          min_rating=settings.get("min_rating"), kcore=int(settings.get("kcore") or 0))
    b = engine.bundle
    same = (
        ds.n_items == engine.n_items
        and list(map(str, ds.item_ids)) == list(b.catalog.item_ids)
        and np.array_equal(ds.user_ids.astype(str), b.users.user_ids.astype(str))
    )
    split = leave_one_out(ds)
    if same:
        same = all(np.array_equal(split.full_history(u), b.users.history(u)) for u in range(split.n_users))
    if not same:
        raise DataError(
            f"dataset {name!r} (from {data_dir or settings.get('data_dir')}) is not the one bundle "
            f"{bundle_path} was built from: ids or histories differ; pass the right --data-dir"
        )
    return data_from_engine(engine, split, ds.user_features)


# =============================================================================================
# Evaluation helpers
# =============================================================================================
def _list_stats(data: DebiasData, st: StageInputs, xs: np.ndarray, rows: np.ndarray | None = None,
                scores: np.ndarray | None = None, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Top-k lists and 0-based target ranks for ``xs`` (rows ``rows`` of the stage)."""
    rows = np.arange(len(st.users)) if rows is None else rows
    ids_out, rank_out = [], []
    for s in range(0, len(rows), chunk):
        r = rows[s : s + chunk]
        sc = scores[s : s + chunk] if scores is not None else xs[s : s + chunk] @ data.item_emb.T
        ex = [st.exclude[i] for i in r]
        ids_out.append(top_items(sc, data.top_k, ex)[0])
        rank_out.append(ranks_from_scores(sc, st.targets[r], ex))
    if not ids_out:
        return np.zeros((0, data.top_k), np.int64), np.zeros(0, np.int64)
    return np.concatenate(ids_out), np.concatenate(rank_out)


def _gain(ranks: np.ndarray, k: int) -> np.ndarray:
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)


def _summarise(data: DebiasData, st: StageInputs, measure: BiasMeasure, ids: np.ndarray, ranks: np.ndarray) -> dict:
    k = data.top_k
    m = metrics_from_ranks(ranks, (k,))
    return {
        "bias": measure.value(measure.per_user(ids), st.users),
        "ndcg": m[f"NDCG@{k}"],
        "hr": m[f"HR@{k}"],
        **measure.extras(ids, st.users),
    }


def evaluate_suppression(
    data: DebiasData, st: StageInputs, measure: BiasMeasure, latents: Sequence[int], strength: float,
    mode: SteerMode = "error", baseline: float = 0.0, direction: np.ndarray | None = None,
) -> dict:
    """Bias and NDCG/HR@k of the stage's users with ``latents`` suppressed at ``strength`` and the
    baseline (``b_dec``) at ``baseline``; ``direction`` (d,), if given, is also subtracted (the
    random comparator of baseline suppression)."""
    return _summarise(data, st, measure, *steered_lists(data, st, latents, strength, mode, baseline, direction))


def steered_lists(
    data: DebiasData, st: StageInputs, latents: Sequence[int], strength: float,
    mode: SteerMode = "error", baseline: float = 0.0, direction: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k lists and target ranks of the stage's users under one suppression (see
    :func:`evaluate_suppression`). The point is steered as the service steers a request naming
    its saved policy (one rule: :func:`recsae.policy.steering`)."""
    rule = steering("sweep", {int(j): float(strength) for j in latents}, baseline, mode)
    xs = data.kernel.steer(st.x, st.codes, rule.strengths, rule.mode, rule.baseline)
    if direction is not None:
        xs = xs - direction.astype(np.float32)
    return _list_stats(data, st, xs)


def random_directions(d: int, n: int, seed: int = 0) -> np.ndarray:
    """(n, d) random unit vectors (isotropic): the comparator of baseline suppression is
    ``x - beta * |b_dec| * u`` — the same edit size as ``x - beta * b_dec``, in a random direction."""
    u = np.random.default_rng(seed).standard_normal((n, d))
    return (u / np.linalg.norm(u, axis=1, keepdims=True)).astype(np.float32)


def rerank_curve(data: DebiasData, st: StageInputs, measure: BiasMeasure, grid: Sequence[float] = DEFAULT_RERANK_GRID) -> list[dict]:
    """The post-hoc baseline: rank by ``score - lambda * penalty`` for each lambda of ``grid``
    (in units of std(scores) / std(penalty))."""
    scores = st.x @ data.item_emb.T
    base_ids, _ = top_items(scores, data.top_k, st.exclude)
    pen = measure.penalty(base_ids, st.users)
    scale = float(scores.std() / max(float(np.std(pen)), 1e-12))
    out = []
    for c in grid:
        lam = float(c) * scale
        ids, ranks = _list_stats(data, st, st.x, scores=scores - lam * pen)
        out.append({"c": float(c), "lambda": lam, **_summarise(data, st, measure, ids, ranks)})
    return out


def _ci_text(ci: list[float] | None) -> str:
    return f" (95% CI {ci[0]:+.1%} to {ci[1]:+.1%})" if ci else ""


def _cut_text(cut: float) -> str:
    """A re-ranking cut at matched NDCG; NaN when suppression made the list more accurate than
    any re-ranking point (re-ranking never gains NDCG), so there is no match."""
    return "none reaches that NDCG" if math.isnan(cut) else f"{cut:+.1%}"


def matched_bias(curve: list[dict], ndcg: float) -> float:
    """The lowest bias the curve reaches at NDCG >= ``ndcg`` (its points and the linear
    interpolation between neighbouring points); NaN when every point is less accurate."""
    best = float("nan")

    def take(b: float) -> None:
        nonlocal best
        if math.isnan(best) or abs(b) < abs(best):
            best = b

    for p in curve:
        if p["ndcg"] >= ndcg:
            take(p["bias"])
    for a, b in zip(curve, curve[1:]):
        lo, hi = sorted((a["ndcg"], b["ndcg"]))
        if lo < ndcg < hi:
            t = (ndcg - a["ndcg"]) / (b["ndcg"] - a["ndcg"])
            take(a["bias"] + t * (b["bias"] - a["bias"]))
    return best

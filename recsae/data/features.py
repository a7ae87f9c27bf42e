"""Item and user features (``group:value`` columns; naming in :mod:`recsae.data.loaders`), popularity
buckets, rating thresholds, and the assembly of a :class:`Dataset` from raw ids."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from recsae import DataError
from recsae.data.core import Dataset, FeatureTable

POPULARITY_BUCKETS: tuple[tuple[str, float], ...] = (("head", 0.10), ("mid", 0.50), ("tail", 1.0))

ML1M_AGES = {
    "1": "Under 18",
    "18": "18-24",
    "25": "25-34",
    "35": "35-44",
    "45": "45-49",
    "50": "50-55",
    "56": "56+",
}
ML1M_OCCUPATIONS = [
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
]  # fmt: skip
ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
]  # fmt: skip
_NO_GENRE = {"unknown", "(no genres listed)", ""}
_TITLE_YEAR = re.compile(r"\((\d{4})(?:\s*[-\u2013]\s*\d{4})?\)\s*$")
_DATE_YEAR = re.compile(r"(\d{4})\s*$")
# --------------------------------------------------------------------------------------------
# Assembly: raw ids -> dense indices, features, meta
# --------------------------------------------------------------------------------------------


def _index(raw: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Dense codes for raw ids; ids that are all canonical integers are ordered numerically."""
    arr = np.asarray(raw, dtype=str)
    if len(raw) and all(s.isdigit() and (s == "0" or s[0] != "0") for s in set(raw)):
        uniq, codes = np.unique(arr.astype(np.int64), return_inverse=True)
        return uniq.astype(str), codes
    uniq, codes = np.unique(arr, return_inverse=True)
    return uniq, codes


def _feature_table(per_entity: list[Iterable[str]]) -> FeatureTable:
    names = sorted({f for feats in per_entity for f in feats})
    col = {n: j for j, n in enumerate(names)}
    m = np.zeros((len(per_entity), len(names)), dtype=bool)
    for e, feats in enumerate(per_entity):
        for f in feats:
            m[e, col[f]] = True
    return FeatureTable(names, m)


def popularity_features(items: np.ndarray, n_items: int) -> FeatureTable:
    """Disjoint head/mid/tail buckets by interaction count, none empty (see module docstring)."""
    counts = np.bincount(items, minlength=n_items)
    values = np.unique(counts)[::-1]  # distinct counts, most popular first
    at_or_above = (n_items - np.searchsorted(np.sort(counts), values, side="left")) / max(1, n_items)
    names = [name for name, _ in POPULARITY_BUCKETS]
    buckets = min(len(names), len(values))
    if buckets < 2:  # every item equally popular: popularity names nothing
        return FeatureTable([], np.zeros((n_items, 0), dtype=bool))
    if buckets == 2:
        names = [names[0], names[-1]]
    targets = [share for _, share in POPULARITY_BUCKETS[:-1]][-(buckets - 1) :]
    cuts, lo = [], 0
    for b, target in enumerate(targets):
        hi = len(values) - (buckets - 1 - b)  # leave one distinct count for every later bucket
        j = lo + int(np.argmin(np.abs(at_or_above[lo:hi] - target)))
        cuts.append(values[j])
        lo = j + 1
    labels = np.full(n_items, buckets - 1)
    for b in range(buckets - 2, -1, -1):
        labels[counts >= cuts[b]] = b
    return FeatureTable([f"popularity:{n}" for n in names], labels[:, None] == np.arange(buckets)[None, :])


def _drop_empty(t: FeatureTable) -> FeatureTable:
    keep = t.matrix.any(axis=0)
    return FeatureTable([n for n, k in zip(t.names, keep, strict=True) if k], t.matrix[:, keep])


def add_popularity(static: FeatureTable, items: np.ndarray, n_items: int) -> FeatureTable:
    """Replace any ``popularity:`` columns by ones computed from ``items``; drop empty columns."""
    keep = [j for j, n in enumerate(static.names) if not n.startswith("popularity:")]
    base = _drop_empty(FeatureTable([static.names[j] for j in keep], static.matrix[:, keep]))
    pop = _drop_empty(popularity_features(items, n_items))
    return FeatureTable.concat([base, pop]) if base.names or pop.names else base


def _assemble(
    name: str,
    users: list[str],
    items: list[str],
    times: list[int] | np.ndarray,
    titles: dict[str, str],
    item_feats: dict[str, list[str]],
    user_feats: dict[str, list[str]] | None,
    meta: dict,
) -> Dataset:
    if not users:
        raise DataError(
            f"dataset {name!r} has no interactions after filtering ({meta.get('filters')}); "
            f"source {meta.get('source')}"
        )
    user_ids, ucodes = _index(users)
    item_ids, icodes = _index(items)
    static = _feature_table([item_feats.get(i, ()) for i in item_ids])
    item_features = add_popularity(static, icodes, len(item_ids))
    uf = None
    if user_feats is not None:
        uf = _drop_empty(_feature_table([user_feats.get(u, ()) for u in user_ids]))
    meta = dict(meta)
    meta["counts"] = {
        **meta.get("counts", {}),
        "interactions": len(users),
        "users": len(user_ids),
        "items": len(item_ids),
    }
    return Dataset(
        name=name,
        user_ids=user_ids,
        item_ids=item_ids,
        users=ucodes.astype(np.int32),
        items=icodes.astype(np.int32),
        times=np.asarray(times, dtype=np.int64),
        item_titles=[titles.get(i) or f"item {i}" for i in item_ids],
        item_features=item_features,
        user_features=uf,
        meta=meta,
    )


def _decade(title: str, date: str = "") -> str | None:
    """From a MovieLens title's trailing "(1995)" / "(1994-1998)", else the date; never "(1935-)"."""
    m = _TITLE_YEAR.search(title) or _DATE_YEAR.search(date)
    return f"decade:{int(m.group(1)) // 10 * 10}s" if m else None


def _movie_feats(title: str, genres: Iterable[str], date: str = "", title_years: bool = True) -> list[str]:
    """Genres, and the decade where the layout declares a year (``title_years``: MovieLens titles)."""
    feats = [f"genre:{g.strip()}" for g in genres if g.strip() not in _NO_GENRE]
    d = _decade(title if title_years else "", date)
    return feats + ([d] if d else [])


def _age_bucket(age: int) -> str:
    for hi, label in (
        (18, "Under 18"),
        (25, "18-24"),
        (35, "25-34"),
        (45, "35-44"),
        (50, "45-49"),
        (56, "50-55"),
    ):
        if age < hi:
            return label
    return "56+"


def _ml_min_rating(min_rating: float | str | None, scale: tuple[float, float]) -> float | None:
    """``"auto"`` -> the scale's midpoint (:func:`rating_threshold`); else as given."""
    if min_rating == "auto":
        return rating_threshold(*scale)
    return None if min_rating is None else float(min_rating)


def _rating_meta(meta: dict, given: float | str | None, thr: float | None, scale: tuple[float, float], kept: int) -> dict:
    """Record in ``meta["weights"]`` what the ratings did (shown in the job summary and manifest)."""
    if thr is None:
        rule = "no threshold: every rating, however low, is a positive interaction"
    elif given == "auto":
        rule = (f"rating >= {thr:g}, the midpoint of the {scale[0]:g}-{scale[1]:g} scale: lower ratings "
                "are dislikes, not positive feedback (--min-rating all keeps them)")
    else:
        rule = f"rating >= {thr:g} (given)"
    raw = meta["counts"]["raw_interactions"]
    meta["weights"] = {"column": "rating", "kind": "rating", "rule": rule,
                       "effect": "a rating is a threshold: rows at or above it are positive interactions, the rest dropped",
                       "rows": raw, "kept": kept, "dropped": raw - kept}
    return meta


def _meta(fmt: str, path: Path, min_rating: float | None, raw: int) -> dict:
    return {
        "format": fmt,
        "source": str(path),
        "filters": {"min_rating": min_rating, "kcore": 0},
        "counts": {"raw_interactions": raw},
    }


def rating_threshold(lo: float, hi: float) -> float:
    """Default positive-feedback bar of a rating scale: its midpoint (3 on 1-5, 2.75 on 0.5-5).

    Ratings below the midpoint are dislikes (1-2 stars): treating them as positive interactions
    makes a film the user disliked drive their recommendations. The midpoint keeps the neutral
    and the liked (82% of ml-100k); the stricter "4 or more" of Liang et al. (2018) also drops the
    lukewarm, 45% of ml-100k, which shortens the histories a sequential model learns from.
    """
    return (lo + hi) / 2


#: What a count does by default, and why (README, "Bring your own data").

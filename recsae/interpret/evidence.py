"""What a latent fires on: samples, the attribute vocabulary, and per-latent evidence.

A *sample* is one captured representation: its history window (oldest -> newest, left-padded
with ``n_items``), its user, and the model's top recommendation for that window (argmax of
``x . item_emb`` over items not in the window). Describers see evidence built from the SAE
*training* samples only; scorers see only the *held-out* samples.

Attributes are feature names with an optional source prefix, so a description can say *where*
a feature matters (SASRec latents are often about the most recent item)::

    genre:Horror          history: share of the window's items with the feature
    last:genre:Horror     the most recent item has it
    next:genre:Horror     the model's top recommendation has it
    user:gender:F         the user has it (datasets with user features)
    last:item:50          the most recent item is item 50 (raw id); also ``item:`` / ``next:item:``

How strongly a sample matches a list of attributes (:meth:`FeatureSpace.match`): attributes
with the same source and group form one clause, read as OR (``genre:Horror`` + ``genre:Thriller``
= the share of window items that are Horror or Thriller); the match is the mean over clauses
(a soft AND), in [0, 1]. Item feature groups must not be named ``last``, ``next``, ``user``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, lru_cache

import numpy as np

from recsae.concepts import Enrichment, Evidence, Example
from recsae.data.core import FeatureTable
from recsae.kernel import SAEKernel

SOURCES = ("history", "last", "next", "user")
_PREFIX = {"history": "", "last": "last:", "next": "next:", "user": "user:"}
_CHUNK = 8192


# -- samples -------------------------------------------------------------------------------------
@dataclass
class SampleSet:
    """One side (train or held-out) of the captured activations, encoded by the SAE."""

    windows: np.ndarray  # (N, L) int64, pad = n_items, most recent last
    users: np.ndarray  # (N,) int64
    recs: np.ndarray  # (N,) int64 top recommendation outside the window
    acts: np.ndarray  # (N, k) float32, descending; 0 = not firing
    idx: np.ndarray  # (N, k) int64 latent ids
    n_items: int
    n_latents: int

    def __len__(self) -> int:
        return len(self.windows)

    @classmethod
    def build(
        cls, x: np.ndarray, windows: np.ndarray, users: np.ndarray, kernel: SAEKernel, item_emb: np.ndarray
    ) -> "SampleSet":
        """Encode ``x`` and find each row's top recommendation, in chunks (memmaps stay lazy)."""
        n, n_items = len(windows), item_emb.shape[0]
        acts = np.zeros((n, kernel.k), np.float32)
        idx = np.zeros((n, kernel.k), np.int64)
        recs = np.zeros(n, np.int64)
        windows = np.asarray(windows, dtype=np.int64)
        for s in range(0, n, _CHUNK):
            xs = np.asarray(x[s : s + _CHUNK], dtype=np.float32)
            c = kernel.encode(xs)
            acts[s : s + len(xs)], idx[s : s + len(xs)] = c.acts, c.idx
            sc = np.empty((len(xs), n_items + 1), np.float32)
            np.matmul(xs, item_emb.T, out=sc[:, :n_items])
            sc[:, n_items] = -np.inf  # the pad column absorbs the window's padding
            np.put_along_axis(sc, windows[s : s + len(xs)], -np.inf, axis=1)
            recs[s : s + len(xs)] = sc.argmax(axis=1)
        return cls(windows, np.asarray(users, np.int64), recs, acts, idx, n_items, kernel.n_latents)

    @cached_property
    def by_latent(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, values, bounds): firing rows grouped by latent, strongest first within a latent.

        Rows of latent ``j`` are ``rows[bounds[j]:bounds[j + 1]]``. One sort over the sparse
        codes (N * k entries) replaces a scan of all N rows per latent.
        """
        on = self.acts > 0
        rows = np.broadcast_to(np.arange(len(self))[:, None], self.acts.shape)[on]
        lat, val = self.idx[on], self.acts[on]
        order = np.lexsort((-val, lat))
        bounds = np.searchsorted(lat[order], np.arange(self.n_latents + 1))
        return rows[order], val[order], bounds

    def firing(self, latent: int) -> tuple[np.ndarray, np.ndarray]:
        rows, vals, b = self.by_latent
        return rows[b[latent] : b[latent + 1]], vals[b[latent] : b[latent + 1]]

    @cached_property
    def counts(self) -> np.ndarray:
        return np.diff(self.by_latent[2])

    def history(self, row: int) -> np.ndarray:
        w = self.windows[row]
        return w[w < self.n_items]


# -- attributes ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Attribute:
    source: str
    group: str
    value: str

    @property
    def name(self) -> str:
        return f"{_PREFIX[self.source]}{self.group}:{self.value}"

    @property
    def feature(self) -> str:
        return f"{self.group}:{self.value}"

    @classmethod
    def parse(cls, name: str) -> "Attribute":
        return _parse(name)

    @classmethod
    def _parse(cls, name: str) -> "Attribute":
        head, _, rest = name.partition(":")
        source = {"last": "last", "next": "next", "user": "user"}.get(head, "history")
        if source != "history":
            name = rest
        group, sep, value = name.partition(":")
        if not sep or not group or not value:
            raise ValueError(f"attribute {name!r} is not 'group:value' with an optional source prefix")
        return cls(source, group, value)


@lru_cache(maxsize=65536)
def _parse(name: str) -> Attribute:
    return Attribute._parse(name)


class FeatureSpace:
    """The attribute vocabulary of a dataset, and how strongly samples match attributes."""

    def __init__(
        self,
        item_features: FeatureTable,
        titles: list[str],
        item_ids: list[str] | np.ndarray,
        user_features: FeatureTable | None = None,
    ) -> None:
        self.item_features = item_features
        self.user_features = user_features if user_features is not None and user_features.names else None
        self.titles = list(titles)
        self.item_ids = [str(i) for i in item_ids]
        self.n_items = len(self.item_ids)
        self._item_col = {n: j for j, n in enumerate(item_features.names)}
        self._user_col = {n: j for j, n in enumerate(self.user_features.names)} if self.user_features else {}
        self._item_index = {r: i for i, r in enumerate(self.item_ids)}
        # padded: row n_items (the window's pad) has no feature
        self._if = np.vstack([item_features.matrix.astype(bool), np.zeros((1, len(item_features.names)), bool)])
        self._masks: dict[tuple, np.ndarray] = {}
        self._clause_cache: dict[tuple, list] = {}

    # vocabulary
    def item_attribute(self, source: str, item: int) -> str:
        return f"{_PREFIX[source]}item:{self.item_ids[item]}"

    def item_index(self, raw_id: str) -> int:
        return self._item_index[raw_id]

    def is_valid(self, name: str) -> bool:
        try:
            a = Attribute.parse(name)
        except ValueError:
            return False
        if a.source == "user":
            return a.feature in self._user_col
        if a.group == "item":
            return a.value in self._item_index
        return a.feature in self._item_col

    def label(self, name: str) -> str:
        """Human words for an attribute: a title for items, the value otherwise."""
        a = Attribute.parse(name)
        if a.group == "item" and a.value in self._item_index:
            return self.titles[self._item_index[a.value]]
        if a.group == "popularity":
            return {"head": "popular (head)", "mid": "mid-popularity", "tail": "long-tail"}.get(a.value, a.value)
        return a.value

    # matching
    def _item_mask(self, group: str, values: tuple[str, ...]) -> np.ndarray:
        key = (group, values)
        if key not in self._masks:
            if group == "item":
                m = np.zeros(self.n_items + 1, bool)
                m[[self._item_index[v] for v in values]] = True
            else:
                m = self._if[:, [self._item_col[f"{group}:{v}"] for v in values]].any(axis=1)
            if len(self._masks) > 4096:
                self._masks.clear()
            self._masks[key] = m
        return self._masks[key]

    def clauses(self, attributes: list[str]) -> list[tuple[str, str, tuple[str, ...]]]:
        """(source, group, values) per clause; invalid attributes are ignored."""
        key = tuple(attributes)
        hit = self._clause_cache.get(key)
        if hit is None:
            if len(self._clause_cache) > 65536:
                self._clause_cache.clear()
            hit = self._clause_cache[key] = self._clauses(attributes)
        return hit

    def _clauses(self, attributes: list[str]) -> list[tuple[str, str, tuple[str, ...]]]:
        groups: dict[tuple[str, str], list[str]] = {}
        for name in attributes:
            if self.is_valid(name):
                a = Attribute.parse(name)
                groups.setdefault((a.source, a.group), []).append(a.value)
        return [(s, g, tuple(sorted(set(v)))) for (s, g), v in groups.items()]

    def clause_values(self, clause: tuple[str, str, tuple[str, ...]], samples: SampleSet, rows: np.ndarray) -> np.ndarray:
        source, group, values = clause
        if source == "user":
            cols = [self._user_col[f"{group}:{v}"] for v in values]
            return self.user_features.matrix[samples.users[rows]][:, cols].any(axis=1).astype(np.float32)
        mask = self._item_mask(group, values)
        if source == "history":
            w = samples.windows[rows]
            n = np.maximum((w < self.n_items).sum(axis=1), 1)
            return (mask[w].sum(axis=1) / n).astype(np.float32)
        if source == "last":
            return mask[samples.windows[rows, -1]].astype(np.float32)
        return mask[samples.recs[rows]].astype(np.float32)  # next

    def match(self, attributes: list[str], samples: SampleSet, rows: np.ndarray) -> np.ndarray:
        """Mean over clauses of each clause's match, in [0, 1]; zeros when nothing is valid."""
        cl = self.clauses(attributes)
        if not cl:
            return np.zeros(len(rows), np.float32)
        return np.mean([self.clause_values(c, samples, rows) for c in cl], axis=0)

    # per-sample feature values, for enrichment
    def sample_features(self, samples: SampleSet) -> tuple[np.ndarray, list[str]]:
        """(N, C) float32 value of every feature attribute per sample, with the column names.

        Columns: history shares, last item, top recommendation (item features each), then user
        features. Computed in chunks: (N, L, F) never materialises.
        """
        fn = self.item_features.names
        names = [f"{_PREFIX[s]}{n}" for s in ("history", "last", "next") for n in fn]
        if self.user_features is not None:
            names += [f"user:{n}" for n in self.user_features.names]
        out = np.zeros((len(samples), len(names)), np.float32)
        F = len(fn)
        ift = self._if.astype(np.float32)
        for s in range(0, len(samples), _CHUNK):
            w = samples.windows[s : s + _CHUNK]
            n = np.maximum((w < self.n_items).sum(axis=1, keepdims=True), 1)
            block = out[s : s + len(w)]
            block[:, :F] = ift[w].sum(axis=1) / n
            block[:, F : 2 * F] = ift[w[:, -1]]
            block[:, 2 * F : 3 * F] = ift[samples.recs[s : s + len(w)]]
            if self.user_features is not None:
                block[:, 3 * F :] = self.user_features.matrix[samples.users[s : s + len(w)]]
        return out, names


# -- evidence ------------------------------------------------------------------------------------
@dataclass
class ItemEnrichment:
    """An item over-represented as the most recent item ("last") or the top recommendation."""

    source: str
    item: int
    share: float
    background: float
    count: int

    @property
    def lift(self) -> float:
        return self.share / max(self.background, 1e-12)


@dataclass
class LatentEvidence:
    """Everything known about one latent from the training samples."""

    latent: int
    rows: np.ndarray  # activating training rows, strongest first
    values: np.ndarray  # their activations
    n_samples: int
    shares: np.ndarray  # (C,) mean of each sample feature over the activating rows
    counts: np.ndarray  # (C,) activating rows where the sample feature is non-zero
    enriched: list[Enrichment]
    items: list[ItemEnrichment]
    top_rows: list[int]  # strongest activating rows, one per user
    top_values: list[float]
    negative_rows: list[int]  # a random sample of non-activating rows
    quantiles: dict[str, float]
    histogram: list[int]
    histogram_max: float
    context: "EvidenceContext" = field(repr=False)

    @property
    def firing_frequency(self) -> float:
        return len(self.rows) / max(1, self.n_samples)

    def top_items(self, n: int = 8) -> list[str]:
        seen, out = set(), []
        for it in sorted(self.items, key=lambda e: -e.count):
            if it.item not in seen:
                seen.add(it.item)
                out.append(self.context.space.titles[it.item])
        return out[:n]

    def item_set(self, source: str, min_share: float = 0.02, min_lift: float = 2.0, n: int = 10) -> list[ItemEnrichment]:
        """Items much more often the latest item / the recommendation when the latent fires,
        largest share first: the describer's item-set clause and its exemplars."""
        items = [e for e in self.items if e.source == source and e.share >= min_share and e.lift >= min_lift]
        return sorted(items, key=lambda e: -e.share)[:n]

    def exemplar_sources(self) -> list[str]:
        """"last" and "next", the one whose item set covers more firing samples first."""
        return sorted(("last", "next"), key=lambda src: -sum(e.share for e in self.item_set(src)))

    def exemplars(self, n: int = 3) -> list[str]:
        """Titles of the ``n`` items that stand for the latent: the largest shares of the item set
        of the source that covers more firing samples (empty when no item is over-represented)."""
        t = self.context.space.titles
        return [t[e.item] for e in self.item_set(self.exemplar_sources()[0])[:n]]

    def summary(self, n_examples: int = 3) -> Evidence:
        ctx = self.context
        return Evidence(
            top_items=self.top_items(),
            enriched=self.enriched,
            activation_quantiles=self.quantiles,
            histogram=self.histogram,
            histogram_max=self.histogram_max,
            n_activating=int(len(self.rows)),
            examples=[ctx.example(r, v) for r, v in zip(self.top_rows[:n_examples], self.top_values)],
        )


@dataclass
class EvidenceContext:
    """The training side shared by every latent's evidence."""

    train: SampleSet
    space: FeatureSpace
    features: np.ndarray  # (N, C) sample features
    names: list[str]
    sources: np.ndarray  # (C,) the source of each column
    background: np.ndarray  # (C,) mean over all training samples
    last_background: np.ndarray  # (n_items + 1,) share of samples with each most-recent item
    next_background: np.ndarray  # (n_items,) share of samples with each top recommendation

    def text(self, samples: SampleSet, row: int, max_titles: int = 10) -> str:
        """One sample as a line of titles (oldest -> newest) and the model's recommendation."""
        t = self.space.titles
        hist = [t[i] for i in samples.history(row)[-max_titles:]]
        return f"history: {' | '.join(hist)} -> recommended next: {t[samples.recs[row]]}"

    def example(self, row: int, activation: float, max_titles: int = 8) -> Example:
        t = self.space.titles
        return Example(
            history=[t[i] for i in self.train.history(row)[-max_titles:]],
            recommendation=t[self.train.recs[row]],
            activation=round(activation, 4),
        )


def build_context(train: SampleSet, space: FeatureSpace) -> EvidenceContext:
    feats, names = space.sample_features(train)
    n = max(1, len(train))
    return EvidenceContext(
        train=train,
        space=space,
        features=feats,
        names=names,
        sources=np.array([Attribute.parse(n).source for n in names]),
        background=feats.mean(axis=0) if len(train) else np.zeros(len(names), np.float32),
        last_background=np.bincount(train.windows[:, -1], minlength=train.n_items + 1) / n,
        next_background=np.bincount(train.recs, minlength=train.n_items) / n,
    )


def latent_evidence(
    ctx: EvidenceContext,
    latent: int,
    seed: int = 0,
    n_enriched: int = 12,
    n_items: int = 10,
    n_top: int = 10,
    n_negative: int = 5,
) -> LatentEvidence | None:
    """Evidence for one latent from the training samples; None when it never fires there."""
    train = ctx.train
    rows, vals = train.firing(latent)
    if len(rows) == 0:
        return None
    n = len(rows)
    # attribute enrichment: share among activating vs overall
    f = ctx.features[rows]
    share = f.mean(axis=0)
    count = (f > 0).sum(axis=0)
    bg = ctx.background
    lift = share / np.maximum(bg, 1e-9)
    score = share * np.log(np.maximum(lift, 1e-9))  # KL-like: large shares with large lifts first
    keep = np.flatnonzero((lift > 1.0) & (count >= 2))
    keep = keep[np.argsort(-score[keep], kind="stable")][:n_enriched]
    enriched = [
        Enrichment(
            feature=ctx.names[c],
            lift=round(float(lift[c]), 4),
            share=round(float(share[c]), 4),
            background=round(float(bg[c]), 4),
            count=int(count[c]),
        )
        for c in keep
    ]
    # items: most recent item and top recommendation
    items: list[ItemEnrichment] = []
    for source, col, bgv in (
        ("last", train.windows[rows, -1], ctx.last_background),
        ("next", train.recs[rows], ctx.next_background),
    ):
        ids, cnt = np.unique(col, return_counts=True)
        ok = ids < train.n_items
        ids, cnt = ids[ok], cnt[ok]
        order = np.argsort(-cnt, kind="stable")[: 4 * n_items]
        cands = [ItemEnrichment(source, int(i), c / n, float(bgv[i]), int(c)) for i, c in zip(ids[order], cnt[order])]
        items += [e for e in cands if e.lift > 1.0][:n_items]
    # strongest samples, one per user; random non-activating ones
    top_rows: list[int] = []
    top_values: list[float] = []
    seen_users: set[int] = set()
    for r, v in zip(rows, vals):
        u = int(train.users[r])
        if u not in seen_users:
            seen_users.add(u)
            top_rows.append(int(r))
            top_values.append(float(v))
            if len(top_rows) == n_top:
                break
    rng = np.random.default_rng([seed, latent, 1])
    negatives: list[int] = []
    if len(train) > n:
        firing = np.zeros(len(train), bool)
        firing[rows] = True
        cand = rng.choice(len(train), size=min(len(train), 8 * n_negative + 64), replace=False)
        negatives = [int(r) for r in cand[~firing[cand]][:n_negative]]
    vmax = float(vals.max())
    hist, _ = np.histogram(vals, bins=20, range=(0.0, vmax if vmax > 0 else 1.0))
    q = np.quantile(vals, [0.1, 0.5, 0.9, 0.99])
    return LatentEvidence(
        latent=latent,
        rows=rows,
        values=vals,
        n_samples=len(train),
        shares=share,
        counts=count,
        enriched=enriched,
        items=items,
        top_rows=top_rows,
        top_values=top_values,
        negative_rows=negatives,
        quantiles={
            "p10": round(float(q[0]), 5), "p50": round(float(q[1]), 5), "p90": round(float(q[2]), 5),
            "p99": round(float(q[3]), 5), "max": round(vmax, 5),
        },  # fmt: skip
        histogram=hist.astype(int).tolist(),
        histogram_max=round(vmax, 5),
        context=ctx,
    )


# -- calibration (training side) -----------------------------------------------------------------
def best_threshold(pos: np.ndarray, neg: np.ndarray, grid: int = 4000) -> tuple[float, float]:
    """(threshold, balanced accuracy) of the rule "score > threshold" that best separates pos/neg.

    Scores in [0, 1] are counted on a fine grid (no sort: this runs ~40 times per latent), and
    the threshold lies halfway between the two observed grid values around the best cut, so a
    sample scoring like a calibration sample never sits on the boundary.
    """
    if len(pos) == 0 or len(neg) == 0:
        return 0.5, 0.5
    qp = np.rint(np.clip(pos, 0, 1) * grid).astype(np.int64)
    qn = np.rint(np.clip(neg, 0, 1) * grid).astype(np.int64)
    cp = np.bincount(qp, minlength=grid + 1)[::-1].cumsum()[::-1]  # cp[c] = #pos with q >= c
    cn = np.bincount(qn, minlength=grid + 1)[::-1].cumsum()[::-1]
    ba = 0.5 * (cp / len(pos) + 1 - cn / len(neg))
    ba[0] = 0.5  # "everything fires" is no rule
    c = int(ba.argmax())
    if ba[c] <= 0.5:  # nothing separates: predict "not firing" for everything
        return 1.0, 0.5
    seen = np.union1d(qp, qn)
    lower = seen[seen < c].max() if (seen < c).any() else c - 1
    upper = seen[seen >= c].min()
    return float((lower + upper) / 2 / grid), float(ba[c])


def to_scale(score: np.ndarray, threshold: float) -> np.ndarray:
    """Map a match score in [0, 1] to 0-10 so that exactly the scores above the threshold land
    above 5 (the paper's cut): piecewise linear through (0, 0), (threshold, 5), (1, 10)."""
    s = np.clip(np.asarray(score, dtype=np.float64), 0.0, 1.0)
    t = float(threshold)
    lo = 5.0 * s / t if t > 0 else np.zeros_like(s)
    hi = 5.0 + 5.0 * (s - t) / (1.0 - t) if t < 1 else np.full_like(s, 10.0)
    return np.where(s > t, np.clip(hi, 5.0 + 1e-6, 10.0), np.clip(lo, 0.0, 5.0))


def calibration_rows(ev: LatentEvidence, n: int = 1500, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Training rows to calibrate on: up to ``n`` activating and ``n`` random non-activating."""
    train = ev.context.train
    rng = np.random.default_rng([seed, ev.latent, 3])
    pos = ev.rows if len(ev.rows) <= n else rng.choice(ev.rows, n, replace=False)
    firing = np.zeros(len(train), bool)
    firing[ev.rows] = True
    cand = rng.choice(len(train), size=min(len(train), 2 * n + 256), replace=False)
    neg = cand[~firing[cand]][:n]
    return np.sort(pos), neg


def calibrate(ev: LatentEvidence, attributes: list[str], seed: int = 0) -> tuple[float, float]:
    """Threshold of the attribute-match predictor for these attributes, on training samples."""
    pos, neg = calibration_rows(ev, seed=seed)
    space, train = ev.context.space, ev.context.train
    return best_threshold(space.match(attributes, train, pos), space.match(attributes, train, neg))

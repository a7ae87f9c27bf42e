"""De-biasing recommendations by suppressing SAE latents or the SAE baseline (GitHub issue 5, part 2).

NumPy only (``plot_tradeoff`` imports matplotlib lazily). Everything goes through the serving
kernel (``recsae.kernel``) so a saved policy does in the service exactly what was measured here.

Pieces, in the order an experiment uses them:

1. **Bias measures** on top-k lists (:func:`popularity_share`, :func:`mean_popularity`,
   :func:`gender_gap`, :func:`gender_auc`) and their experiment wrappers
   :class:`PopularityBias` / :class:`GenderBias` (a per-user list statistic ``b_u`` and user
   weights ``w_u``; the bias is ``sum_u w_u b_u``).
2. **Inputs** (:func:`load_data`, :func:`data_from_engine`): a bundle's engine, the dataset's
   leave-one-out split, dev-stage inputs (pick latents) and test-stage inputs (report).
3. **Candidate latents** (:func:`latent_evidence`, :func:`greedy_selection`), chosen from
   dev-stage data only: the test items never influence which latents are picked; and the
   evidence that the SAE's *baseline* ``b_dec`` is the popularity concept (:func:`baseline_evidence`).
4. **Sweep** (:func:`run_experiment`): number of suppressed latents x strength, against random
   latents; baseline strength (``x - beta * b_dec``), against random directions of the same norm;
   both combined; and a post-hoc re-ranking baseline at matched accuracy.
5. **Policies** (:func:`choose_policy`, :func:`save_policy`): the chosen suppression as a JSON
   file ``{"name", "latents", "strength", "mode", "baseline", "description"}`` the service can import.

Why a baseline method: a TopK SAE absorbs what every input shares into its decoder bias (it starts
at the data mean) and spends no sparse latent on it. In a recommender that is chiefly popularity,
so suppressing latents cannot remove popularity, while suppressing the baseline can.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from recsae import ConfigError, DataError
from recsae.evaluate import eval_users, metrics_from_ranks, paired_ratio_ci, ranks_from_scores, stage_targets
from recsae.kernel import Codes, SAEKernel, SteerMode, top_items

TOP_K = 10
HEAD_FRACTION = 0.2
BIASES = ("popularity", "gender")
LATENT_METHODS = ("association", "greedy")
METHODS = (*LATENT_METHODS, "baseline", "baseline+greedy")
COMPARATOR = {"association": "random", "greedy": "random", "baseline": "random-direction",
              "baseline+greedy": "random-direction+latents"}
"""Each method's random comparator: random latents from the same candidates (same n, strength); a
random direction of the same norm as ``beta * b_dec``; both (for the combination)."""
POLICY_METHODS = ("association", "greedy", "baseline", "baseline+greedy")
"""What ``choose_policy(result, "best")`` picks from (on the dev stage)."""
DEFAULT_COUNTS = (1, 2, 4, 8, 16, 32)
DEFAULT_STRENGTHS = (0.5, 1.0)
RESERVED_STRENGTHS = (0.1, 0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8, 0.9, 1.0)
"""The default sweep for a bundle with a reserved latent: one broad concept, whose useful
strengths lie between "a little" and "all of it"; steps of 0.05 where a third of the head share
goes on ml-100k (0.5-0.6 across SASRec seeds; README, "De-biasing")."""
DEFAULT_BASELINE_STRENGTHS = (0.1, 0.2, 0.3, 0.4, 0.5)
DEFAULT_RERANK_GRID = (0.0, 0.02, 0.05, 0.08, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5)
"""Re-ranking strengths, in units of std(scores) / std(penalty) (so one grid fits any model)."""
POLICY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
"""Same rule as the service's policy names (``service.schemas.POLICY_NAME``)."""
POLICY_KEYS = ("name", "latents", "strength", "mode", "baseline", "bundle_hash", "description")
POLICY_REQUIRED = ("name", "latents", "strength", "mode", "description")
"""``baseline`` and ``bundle_hash`` are optional in a policy file (files written before they
existed lack them: baseline 0, no bundle check). ``bundle_hash`` is the bundle whose latent ids
the file names: the service refuses the file on another bundle unless forced."""
MAX_DESCRIPTION = 500


# =============================================================================================
# 1. Bias measures on top-k lists
# =============================================================================================
def head_items(popularity: np.ndarray, fraction: float = HEAD_FRACTION) -> np.ndarray:
    """Boolean mask of the ``ceil(fraction * n)`` most popular items (ties: lower item id first)."""
    pop = np.asarray(popularity)
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"head fraction must be in (0, 1], not {fraction}")
    n = len(pop)
    order = np.argsort(-pop, kind="stable")
    head = np.zeros(n, dtype=bool)
    head[order[: max(1, math.ceil(fraction * n))]] = True
    return head


def head_share_per_user(top_ids: np.ndarray, head: np.ndarray) -> np.ndarray:
    """(B,) share of each list's items that are head items."""
    top_ids = np.atleast_2d(np.asarray(top_ids, dtype=np.int64))
    return head[top_ids].mean(axis=1) if top_ids.shape[1] else np.zeros(len(top_ids))


def popularity_share(top_ids: np.ndarray, head: np.ndarray) -> float:
    """Popularity bias: the share of recommended items that are head items (mean over users)."""
    return float(head_share_per_user(top_ids, head).mean()) if len(top_ids) else 0.0


def mean_popularity(top_ids: np.ndarray, popularity: np.ndarray) -> float:
    """Mean training interaction count of the recommended items."""
    top_ids = np.atleast_2d(np.asarray(top_ids, dtype=np.int64))
    return float(np.asarray(popularity, dtype=np.float64)[top_ids].mean()) if top_ids.size else 0.0


def genre_matrix(feature_names: Sequence[str], item_features: Sequence[Sequence[int]]) -> tuple[np.ndarray, list[str]]:
    """(n_items, n_genres) bool and the genre names, from a catalog's ``genre:<name>`` features."""
    cols = [j for j, name in enumerate(feature_names) if name.startswith("genre:")]
    pos = {j: c for c, j in enumerate(cols)}
    g = np.zeros((len(item_features), len(cols)), dtype=bool)
    for i, feats in enumerate(item_features):
        for f in feats:
            if f in pos:
                g[i, pos[f]] = True
    return g, [feature_names[j].split(":", 1)[1] for j in cols]


@dataclass(frozen=True)
class StereotypedGenres:
    """Genres whose share of the training interactions differs most between female and male users."""

    female: list[str]
    male: list[str]
    share_female: dict[str, float]
    share_male: dict[str, float]

    def item_sign(self, item_genres: np.ndarray, genre_names: Sequence[str]) -> np.ndarray:
        """(n_items,) +1 female-leaning genre, -1 male-leaning genre, 0 neither (or both)."""
        col = {g: j for j, g in enumerate(genre_names)}
        f = item_genres[:, [col[g] for g in self.female]].any(axis=1)
        m = item_genres[:, [col[g] for g in self.male]].any(axis=1)
        return f.astype(np.float32) - m.astype(np.float32)


def stereotyped_genres(
    histories: Sequence[np.ndarray],
    female: np.ndarray,
    male: np.ndarray,
    item_genres: np.ndarray,
    genre_names: Sequence[str],
    per_side: int = 2,
) -> StereotypedGenres:
    """The ``per_side`` genres with the largest (female - male) and (male - female) share.

    A genre's share for a group is the fraction of that group's interactions (``histories``,
    e.g. the training sequences, one per user) with an item of the genre.
    """
    def shares(mask: np.ndarray) -> np.ndarray:
        us = np.flatnonzero(mask)
        items = np.concatenate([np.asarray(histories[u], dtype=np.int64) for u in us]) if len(us) else np.zeros(0, np.int64)
        if not len(items):
            raise DataError("no interactions for one of the gender groups")
        return item_genres[items].mean(axis=0)

    if item_genres.shape[1] < 2 * per_side:
        raise DataError(f"need at least {2 * per_side} genres to pick stereotyped ones, found {item_genres.shape[1]}")
    sf, sm = shares(female), shares(male)
    diff = sf - sm
    order = np.argsort(-diff, kind="stable")
    fem = [genre_names[j] for j in order[:per_side]]
    mal = [genre_names[j] for j in order[::-1][:per_side]]
    return StereotypedGenres(
        fem, mal,
        {g: float(s) for g, s in zip(genre_names, sf)},
        {g: float(s) for g, s in zip(genre_names, sm)},
    )


def stereotype_per_user(top_ids: np.ndarray, item_sign: np.ndarray) -> np.ndarray:
    """(B,) share of female-leaning-genre items minus share of male-leaning-genre items per list."""
    top_ids = np.atleast_2d(np.asarray(top_ids, dtype=np.int64))
    return item_sign[top_ids].mean(axis=1).astype(np.float64)


def gender_gap(top_ids: np.ndarray, item_sign: np.ndarray, female: np.ndarray, male: np.ndarray) -> float:
    """User-attribute bias: mean stereotype score of female users' lists minus male users'.

    ``female`` / ``male`` are boolean masks over the rows of ``top_ids``. 0 = no gap.
    """
    s = stereotype_per_user(top_ids, item_sign)
    if not female.any() or not male.any():
        raise DataError("gender gap needs at least one female and one male user")
    return float(s[female].mean() - s[male].mean())


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank."""
    _, inv, counts = np.unique(np.asarray(values, dtype=np.float64), return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    return (upper - (counts - 1) / 2.0)[inv.reshape(-1)]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (Pearson on average ranks); NaN when one side is constant."""
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb / den) if den > 0 else float("nan")


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U; ties count one half)."""
    labels = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = average_ranks(scores)
    return float((r[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _logistic_fit(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iters: int = 25) -> np.ndarray:
    """L2-regularised logistic regression by Newton's method; ``x`` includes an intercept column."""
    w = np.zeros(x.shape[1])
    reg = np.full(x.shape[1], l2)
    reg[0] = 0.0  # no penalty on the intercept
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -30, 30)))
        grad = x.T @ (p - y) + reg * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + np.diag(reg) + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def gender_auc(
    top_ids: np.ndarray, item_genres: np.ndarray, female: np.ndarray, male: np.ndarray,
    folds: int = 5, seed: int = 0, l2: float = 1.0,
) -> float:
    """How well gender can be predicted from the lists: out-of-fold AUC of a logistic regression
    on each list's genre mix (share of items per genre). 0.5 = not at all."""
    top_ids = np.atleast_2d(np.asarray(top_ids, dtype=np.int64))
    keep = female | male
    feats = item_genres[top_ids[keep]].mean(axis=1).astype(np.float64)
    y = female[keep].astype(np.float64)
    if y.sum() < folds or (1 - y).sum() < folds:
        return float("nan")
    mu, sd = feats.mean(0), feats.std(0)
    feats = (feats - mu) / np.where(sd > 0, sd, 1.0)
    x = np.hstack([np.ones((len(feats), 1)), feats])
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=np.int64)
    for cls in (0.0, 1.0):  # stratified folds
        idx = np.flatnonzero(y == cls)
        fold[rng.permutation(idx)] = np.arange(len(idx)) % folds
    pred = np.empty(len(y))
    for f in range(folds):
        test = fold == f
        w = _logistic_fit(x[~test], y[~test], l2)
        pred[test] = x[test] @ w
    return auc(pred, y.astype(bool))


# ---------------------------------------------------------------------------------------------
# Experiment wrappers: bias = sum_u w_u * b_u(list_u)
# ---------------------------------------------------------------------------------------------
class BiasMeasure:
    """A bias as a weighted sum of a per-user list statistic, plus what the experiment needs.

    * ``per_user(ids)``: (B,) statistic of each top-k list;
    * ``weights(users)``: (B,) user weights; ``value = sum(weights * per_user)``;
    * ``item_direction``: (n_items,) item weights for a latent's direct effect
      ``W_dec[j] . (item_emb.T @ item_direction)`` (how much it pushes biased over other items);
    * ``penalty(base_ids, users)``: the re-ranking baseline's penalty, (n_items,) or (B, n_items);
      the baseline ranks by ``score - lambda * penalty``.
    """

    name: str = ""
    label: str = ""
    item_direction: np.ndarray

    def per_user(self, ids: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def weights(self, users: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def value(self, per_user: np.ndarray, users: np.ndarray) -> float:
        return float(np.dot(self.weights(users), per_user))

    def extras(self, ids: np.ndarray, users: np.ndarray) -> dict[str, float]:
        return {}

    def penalty(self, base_ids: np.ndarray, users: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name, "label": self.label}


class PopularityBias(BiasMeasure):
    name = "popularity"
    label = "top-20% share"

    def __init__(self, popularity: np.ndarray, fraction: float = HEAD_FRACTION):
        self.popularity = np.asarray(popularity, dtype=np.float64)
        self.fraction = fraction
        self.head = head_items(self.popularity, fraction)
        n_head, n_tail = int(self.head.sum()), int((~self.head).sum())
        self.item_direction = np.where(self.head, 1.0 / n_head, -1.0 / max(1, n_tail)).astype(np.float32)

    def per_user(self, ids: np.ndarray) -> np.ndarray:
        return head_share_per_user(ids, self.head)

    def weights(self, users: np.ndarray) -> np.ndarray:
        return np.full(len(users), 1.0 / max(1, len(users)))

    def extras(self, ids: np.ndarray, users: np.ndarray) -> dict[str, float]:
        return {"mean_popularity": mean_popularity(ids, self.popularity)}

    def penalty(self, base_ids: np.ndarray, users: np.ndarray) -> np.ndarray:
        return np.log1p(self.popularity).astype(np.float32)

    def describe(self) -> dict:
        return {
            **super().describe(),
            "head_fraction": self.fraction,
            "head_items": int(self.head.sum()),
            "head_share_of_training_interactions": float(
                self.popularity[self.head].sum() / max(1.0, self.popularity.sum())
            ),
        }


class GenderBias(BiasMeasure):
    name = "gender"
    label = "F-M stereotype gap"

    def __init__(
        self, gender: np.ndarray, train_histories: Sequence[np.ndarray], item_genres: np.ndarray,
        genre_names: Sequence[str], per_side: int = 2,
    ):
        """``gender``: (n_users,) 1 female, 0 male, -1 unknown."""
        self.gender = np.asarray(gender)
        self.item_genres = item_genres
        self.genres = stereotyped_genres(
            train_histories, self.gender == 1, self.gender == 0, item_genres, genre_names, per_side
        )
        self.item_sign = self.genres.item_sign(item_genres, genre_names)
        nf, nm = int((self.item_sign > 0).sum()), int((self.item_sign < 0).sum())
        self.item_direction = np.where(
            self.item_sign > 0, 1.0 / max(1, nf), np.where(self.item_sign < 0, -1.0 / max(1, nm), 0.0)
        ).astype(np.float32)
        self.history_gap = self._gap_of_histories(train_histories)

    def _gap_of_histories(self, histories: Sequence[np.ndarray]) -> float:
        s = np.array([self.item_sign[np.asarray(h, dtype=np.int64)].mean() if len(h) else 0.0 for h in histories])
        return float(s[self.gender == 1].mean() - s[self.gender == 0].mean())

    def per_user(self, ids: np.ndarray) -> np.ndarray:
        return stereotype_per_user(ids, self.item_sign)

    def weights(self, users: np.ndarray) -> np.ndarray:
        g = self.gender[np.asarray(users, dtype=np.int64)]
        nf, nm = int((g == 1).sum()), int((g == 0).sum())
        if nf == 0 or nm == 0:
            raise DataError("gender bias needs female and male users among the evaluated users")
        return np.where(g == 1, 1.0 / nf, np.where(g == 0, -1.0 / nm, 0.0))

    def extras(self, ids: np.ndarray, users: np.ndarray) -> dict[str, float]:
        g = self.gender[np.asarray(users, dtype=np.int64)]
        s = self.per_user(ids)
        return {
            "stereotype_female": float(s[g == 1].mean()),
            "stereotype_male": float(s[g == 0].mean()),
            "gender_auc": gender_auc(ids, self.item_genres, g == 1, g == 0),
        }

    def penalty(self, base_ids: np.ndarray, users: np.ndarray) -> np.ndarray:
        """Genre-mix re-ranking, gender-blind: push each list towards the average genre mix.

        ``lean_u`` = the user's unpenalised stereotype score minus the mean over users; items get
        ``lean_u * item_sign``, so a list leaning to female-coded genres is pushed towards
        male-coded ones and vice versa.
        """
        s = self.per_user(base_ids)
        lean = (s - s.mean()).astype(np.float32)
        return lean[:, None] * self.item_sign[None, :]

    def describe(self) -> dict:
        return {
            **super().describe(),
            "female_genres": self.genres.female,
            "male_genres": self.genres.male,
            "share_female": {g: round(self.genres.share_female[g], 4) for g in self.genres.female + self.genres.male},
            "share_male": {g: round(self.genres.share_male[g], 4) for g in self.genres.female + self.genres.male},
            "female_users": int((self.gender == 1).sum()),
            "male_users": int((self.gender == 0).sum()),
            "gap_in_training_histories": self.history_gap,
        }


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
    :func:`evaluate_suppression`)."""
    xs = data.kernel.steer(st.x, st.codes, {int(j): float(strength) for j in latents}, mode, baseline)
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


# =============================================================================================
# 3. Candidate latents (dev stage only)
# =============================================================================================
def firing(codes: Codes, n_latents: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, m) dense activations and (m,) firing rate."""
    b = codes.idx.shape[0]
    dense = np.zeros((b, n_latents), dtype=np.float32)
    np.put_along_axis(dense, codes.idx, codes.acts, axis=1)
    return dense, (dense > 0).mean(axis=0) if b else np.zeros(n_latents)


def candidate_pool(data: DebiasData, min_freq: float) -> np.ndarray:
    """Latents firing for at least ``min_freq`` of the dev-stage users ("active enough")."""
    _, freq = firing(data.select.codes, data.kernel.n_latents)
    pool = np.flatnonzero(freq >= min_freq)
    if not len(pool):
        raise ConfigError(f"no latent fires for >= {min_freq:.1%} of the dev-stage users; lower min_freq")
    return pool


class _Incremental:
    """Dev-stage state for greedy selection: current representation, per-user bias statistic
    and NDCG gain; a candidate latent only changes the rows where it fires."""

    def __init__(self, data: DebiasData, measure: BiasMeasure, strength: float, mode: SteerMode,
                 baseline: float = 0.0):
        self.data, self.measure, self.strength = data, measure, float(strength)
        if mode not in ("error", "reconstruction"):
            raise ConfigError(f"unknown steering mode {mode!r}; use 'error' or 'reconstruction'")
        st = data.select
        self.st = st
        self.x = np.array(data.kernel.steer(st.x, st.codes, {}, mode, baseline), dtype=np.float32)
        self.w = measure.weights(st.users)
        ids, ranks = _list_stats(data, st, self.x)
        self.b = measure.per_user(ids)
        self.g = _gain(ranks, data.top_k)
        self.v0, self.n0 = float(self.w @ self.b), float(self.g.mean())
        self.act = {}

    def rows_of(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        if j not in self.act:
            hit = self.st.codes.idx == j
            rows = np.flatnonzero(hit.any(axis=1))
            self.act[j] = (rows, (self.st.codes.acts * hit).sum(axis=1)[rows])
        return self.act[j]

    def try_latent(self, j: int) -> tuple[float, float, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(bias, ndcg) after also suppressing ``j``, and the row update to apply it."""
        rows, a = self.rows_of(j)
        if not len(rows):
            return float(self.w @ self.b), float(self.g.mean()), rows, self.x[rows], self.b[rows], self.g[rows]
        xr = self.x[rows] - (self.strength * a)[:, None] * self.data.kernel.W_dec[j]
        ids, ranks = _list_stats(self.data, self.st, xr, rows=rows)
        br, gr = self.measure.per_user(ids), _gain(ranks, self.data.top_k)
        bias = float(self.w @ self.b + self.w[rows] @ (br - self.b[rows]))
        ndcg = float((self.g.sum() + (gr - self.g[rows]).sum()) / len(self.g))
        return bias, ndcg, rows, xr, br, gr

    def apply(self, rows, xr, br, gr) -> None:
        self.x[rows], self.b[rows], self.g[rows] = xr, br, gr


def latent_evidence(data: DebiasData, measure: BiasMeasure, min_freq: float = 0.005,
                    strength: float = 1.0, mode: SteerMode = "error") -> dict:
    """Per candidate latent, from dev-stage data only: why it is associated with the bias.

    * ``contrast`` = ``sum_u w_u a_uj`` with the bias' user weights: the mean activation
      (popularity) or mean activation of female minus male users (gender);
    * ``rate_contrast``: the same with firing indicators (firing rate; F - M for gender);
    * ``direct_effect`` = ``W_dec[j] . item_emb.T @ item_direction``: how much more the latent
      adds to biased items' scores than to the others (head - tail mean; F-genre - M-genre mean);
    * ``association`` = sign(bias) * contrast * direct_effect: the latent's direct contribution to
      the bias (the simple ranking);
    * ``solo_bias`` / ``solo_ndcg``: dev-stage change in the bias (sign-adjusted: negative =
      less biased) and in NDCG@k when this latent alone is suppressed.
    """
    st = data.select
    pool = candidate_pool(data, min_freq)
    dense, freq = firing(st.codes, data.kernel.n_latents)
    w = measure.weights(st.users)
    contrast = w @ dense
    rate_contrast = w @ (dense > 0).astype(np.float32)
    item_dir = data.item_emb.T @ measure.item_direction  # (d,)
    direct = data.kernel.W_dec @ item_dir
    inc = _Incremental(data, measure, strength, mode)
    sign = 1.0 if inc.v0 >= 0 else -1.0
    assoc = sign * contrast * direct
    solo_b = np.full(data.kernel.n_latents, np.nan)
    solo_n = np.full(data.kernel.n_latents, np.nan)
    for j in pool:
        bias, ndcg, *_ = inc.try_latent(int(j))
        solo_b[j] = abs(bias) - abs(inc.v0)
        solo_n[j] = ndcg - inc.n0
    mean_act = np.where(freq > 0, dense.sum(0) / np.maximum(1, (dense > 0).sum(0)), 0.0)
    order = pool[np.argsort(-assoc[pool], kind="stable")]
    return {
        "pool": pool, "association_order": order, "freq": freq, "mean_act": mean_act,
        "contrast": contrast, "rate_contrast": rate_contrast, "direct_effect": direct,
        "association": assoc, "solo_bias": solo_b, "solo_ndcg": solo_n,
        "base_select": {"bias": inc.v0, "ndcg": inc.n0},
    }


def greedy_selection(
    data: DebiasData, measure: BiasMeasure, n_max: int = 32, strength: float = 1.0, mode: SteerMode = "error",
    min_freq: float = 0.005, max_ndcg_loss: float = 0.10, pool: np.ndarray | None = None,
    baseline: float = 0.0, ndcg_ref: float | None = None,
) -> tuple[list[int], list[dict]]:
    """Forward greedy selection on dev-stage users (never the test items).

    Each step adds the candidate that leaves the lowest dev-stage |bias| when suppressed
    together with the latents already chosen (at ``strength``), among the candidates that keep
    dev NDCG@k within ``max_ndcg_loss`` (relative) of ``ndcg_ref`` (default: the starting
    point's); if none does, the one that loses least NDCG. Ties go to higher NDCG. ``baseline``:
    start from the representation with the baseline already suppressed (the combined method).
    Returns the order and a trace of the dev-stage bias and NDCG after each step.
    """
    pool = candidate_pool(data, min_freq) if pool is None else np.asarray(pool)
    inc = _Incremental(data, measure, strength, mode, baseline)
    floor = (1.0 - max_ndcg_loss) * (inc.n0 if ndcg_ref is None else ndcg_ref)
    chosen: list[int] = []
    trace: list[dict] = []
    left = [int(j) for j in pool]
    for _ in range(min(n_max, len(left))):
        best = None
        for j in left:
            bias, ndcg, *upd = inc.try_latent(j)
            key = (0, round(abs(bias), 12), -ndcg) if ndcg >= floor else (1, -ndcg, round(abs(bias), 12))
            if best is None or key < best[0]:
                best = (key, j, bias, ndcg, upd)
        _, j, bias, ndcg, upd = best
        inc.apply(*upd)
        chosen.append(j)
        left.remove(j)
        trace.append({"latent": j, "bias": bias, "ndcg": ndcg})
    return chosen, trace


# =============================================================================================
# 4. The sweep
# =============================================================================================
def baseline_evidence(data: DebiasData, pool: np.ndarray | None = None) -> dict:
    """Why ``b_dec`` is the popularity concept (training-split popularity, dev-stage codes only).

    * Spearman correlation over all items between ``b_dec . e_i`` and item popularity, and the
      same for every candidate decoder row ``W_dec[j]`` (``pool``): the item embeddings have a
      popularity axis, so correlation alone does not single ``b_dec`` out;
    * what does is weight and universality: ``b_dec`` is in every representation at full weight;
      the popularity-aligned latents (rho > 0.5) fire for few users. Compared through the
      head-minus-tail direct effect, latents weighted by their mean dev-stage activation;
    * the head share of the ``top_k`` items with the highest ``b_dec . e_i`` (chance: the head
      fraction) and of the ``|head|`` highest.
    """
    pop = data.popularity
    measure = PopularityBias(pop)
    head = measure.head
    b = data.item_emb @ data.kernel.b_dec
    order = np.argsort(-b, kind="stable")
    rows = np.arange(data.kernel.n_latents) if pool is None else np.asarray(pool)
    rho = np.array([spearman(r, pop) for r in data.kernel.W_dec[rows] @ data.item_emb.T])
    dense, freq = firing(data.select.codes, data.kernel.n_latents)
    item_dir = data.item_emb.T @ measure.item_direction
    weighted = dense.mean(axis=0)[rows] * (data.kernel.W_dec[rows] @ item_dir)  # mean act x direct effect
    aligned = rho > 0.5
    hi, lo = (int(np.nanargmax(rho)), int(np.nanargmin(rho))) if len(rho) else (0, 0)
    xbar = data.select.x.mean(axis=0)
    cos = float(xbar @ data.kernel.b_dec / max(1e-12, float(np.linalg.norm(xbar) * np.linalg.norm(data.kernel.b_dec))))
    return {
        "spearman_bdec_popularity": spearman(b, pop),
        "head_share_top_k_by_bdec": float(head[order[: data.top_k]].mean()),
        "head_share_top_head_by_bdec": float(head[order[: int(head.sum())]].mean()),
        "head_fraction": float(head.mean()),
        "latents_compared": int(len(rho)),
        "latents_spearman_over_0_5": int(aligned.sum()),
        "latents_spearman_under_minus_0_5": int((rho < -0.5).sum()),
        "most_aligned_latent": int(rows[hi]) if len(rho) else None,
        "most_aligned_spearman": float(rho[hi]) if len(rho) else float("nan"),
        "most_aligned_firing_rate": float(freq[rows[hi]]) if len(rho) else float("nan"),
        "most_opposed_latent": int(rows[lo]) if len(rho) else None,
        "most_opposed_spearman": float(rho[lo]) if len(rho) else float("nan"),
        "aligned_latents_mean_firing_rate": float(freq[rows[aligned]].mean()) if aligned.any() else 0.0,
        "direct_effect_bdec": float(data.kernel.b_dec @ item_dir),
        "direct_effect_aligned_latents": float(weighted[aligned].sum()),
        "direct_effect_all_latents": float(weighted.sum()),
        "spearman_mean_x_popularity": spearman(data.item_emb @ xbar, pop),
        "cosine_bdec_mean_x": cos,
        "bdec_norm": float(np.linalg.norm(data.kernel.b_dec)),
        "mean_x_norm": float(np.linalg.norm(xbar)),
    }


def run_experiment(
    data: DebiasData,
    bias: str,
    counts: Sequence[int] = DEFAULT_COUNTS,
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    mode: SteerMode = "error",
    seeds: int = 5,
    min_freq: float = 0.005,
    max_ndcg_loss: float = 0.10,
    methods: Sequence[str] = METHODS,
    rerank_grid: Sequence[float] = DEFAULT_RERANK_GRID,
    progress: Callable[[str], None] | None = None,
    baseline_strengths: Sequence[float] = DEFAULT_BASELINE_STRENGTHS,
) -> dict:
    """Sweep suppressing the top-n latents of each selection method at each strength, against
    ``seeds`` draws of n random latents from the same candidate pool; the baseline (``b_dec``) at
    each of ``baseline_strengths``, against ``seeds`` random directions of the same norm; the
    baseline at its dev-chosen strength plus greedy latents picked on top of it, against both
    random comparators; and the re-ranking baseline (at matched test NDCG@k). Every choice is
    made on the dev stage. Returns a JSON-serialisable result."""
    say = progress or (lambda s: None)
    for s in [*strengths, *baseline_strengths]:
        if not 0.0 <= s <= 1.0:
            raise ConfigError(f"strength {s} outside [0, 1]")
    counts = sorted({int(c) for c in counts if int(c) > 0})
    if not counts:
        raise ConfigError("give at least one positive number of latents")
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"unknown selection method {m!r}; choose from {METHODS}")
    use_baseline = any(m.startswith("baseline") for m in methods)
    betas = sorted({float(b) for b in baseline_strengths if b > 0})
    if use_baseline and not betas:
        raise ConfigError("the baseline methods need at least one baseline strength > 0")
    measure = data.measure(bias)
    say(f"{bias}: candidate evidence")
    ev = latent_evidence(data, measure, min_freq, strength=max(strengths), mode=mode)
    pool = ev["pool"]
    n_max = min(max(counts), len(pool))
    rankings: dict[str, list[int]] = {}
    greedy_trace: list[dict] = []
    if "association" in methods:
        rankings["association"] = [int(j) for j in ev["association_order"][:n_max]]
    if "greedy" in methods:
        say(f"{bias}: greedy selection of {n_max} latents on dev-stage users")
        rankings["greedy"], greedy_trace = greedy_selection(
            data, measure, n_max, max(strengths), mode, min_freq, max_ndcg_loss, pool
        )

    stages = (data.select, data.test)
    base_lists = {st.stage: _list_stats(data, st, st.x) for st in stages}
    base = {st.stage: _summarise(data, st, measure, *base_lists[st.stage]) for st in stages}
    say(f"{bias}: re-ranking baseline")
    rerank = rerank_curve(data, data.test, measure, rerank_grid)
    rows: list[dict] = []
    rng = np.random.default_rng(0)
    random_sets = {n: [rng.choice(pool, size=min(n, len(pool)), replace=False).tolist() for _ in range(seeds)] for n in counts}
    dirs = random_directions(data.kernel.d_in, seeds) * float(np.linalg.norm(data.kernel.b_dec))

    test_lists: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}  # (method, n, s, beta) -> test per-user stat, gain

    def point(method: str, n: int, s: float, beta: float, lat: list[int]) -> dict:
        row = {"method": method, "n": n, "strength": float(s), "baseline": float(beta), "latents": lat}
        for st in stages:
            ids, ranks = steered_lists(data, st, lat, s, mode, beta)
            row[st.stage] = _summarise(data, st, measure, ids, ranks)
            if st is data.test:
                test_lists[(method, *_key(row))] = (measure.per_user(ids), _gain(ranks, data.top_k))
        return row

    def random_point(method: str, n: int, s: float, beta: float, use_dirs: bool) -> dict:
        """Mean over the ``seeds`` draws: random latents (same n, s) and/or a random direction of
        norm ``beta * |b_dec|`` in place of ``beta * b_dec``."""
        row = {"method": method, "n": n, "strength": float(s), "baseline": float(beta), "seeds": seeds}
        for st in stages:
            rs = [evaluate_suppression(data, st, measure, random_sets[n][i] if n else [], s, mode, 0.0,
                                       beta * dirs[i] if use_dirs else None) for i in range(seeds)]
            row[st.stage] = {key: float(np.nanmean([r[key] for r in rs])) for key in rs[0]}
            row[st.stage]["bias_std"] = float(np.std([r["bias"] for r in rs]))
            row[st.stage]["ndcg_std"] = float(np.std([r["ndcg"] for r in rs]))
        return row

    for n in counts:
        for s in strengths:
            for method, order in rankings.items():
                rows.append(point(method, n, s, 0.0, order[:n]))
            if seeds and rankings:
                say(f"{bias}: random n={n} strength={s}")
                rows.append(random_point("random", n, s, 0.0, use_dirs=False))

    combined: dict | None = None
    if use_baseline:
        say(f"{bias}: baseline (b_dec) strengths {betas}")
        for beta in betas:
            rows.append(point("baseline", 0, 0.0, beta, []))
            if seeds:
                rows.append(random_point("random-direction", 0, 0.0, beta, use_dirs=True))
    if "baseline+greedy" in methods:
        sel = data.select.stage
        ok = [r for r in rows if r["method"] == "baseline" and r[sel]["ndcg"] >= (1 - max_ndcg_loss) * base[sel]["ndcg"]]
        if ok:
            beta = min(ok, key=lambda r: (round(abs(r[sel]["bias"]), 12), r["baseline"]))["baseline"]
            say(f"{bias}: greedy selection of {n_max} latents on top of baseline {beta:g} (dev stage)")
            order, trace = greedy_selection(data, measure, n_max, max(strengths), mode, min_freq, max_ndcg_loss, pool,
                                            baseline=beta, ndcg_ref=base[sel]["ndcg"])
            combined = {"baseline": beta, "latents": order, "trace": trace}
            for n in counts:
                for s in strengths:
                    rows.append(point("baseline+greedy", n, s, beta, order[:n]))
                    if seeds:
                        rows.append(random_point("random-direction+latents", n, s, beta, use_dirs=True))
        else:
            say(f"{bias}: no baseline strength keeps dev NDCG within {max_ndcg_loss:.0%}: no combined method")
    for row in rows:
        row["rerank_bias_at_matched_ndcg"] = matched_bias(rerank, row["test"]["ndcg"])
    result = {
        "bias": bias,
        "measure": measure.describe(),
        "source": data.source,
        "settings": {"counts": counts, "strengths": [float(s) for s in strengths], "mode": mode, "seeds": seeds,
                     "baseline_strengths": betas if use_baseline else [], "methods": list(methods),
                     "min_freq": min_freq, "max_ndcg_loss": max_ndcg_loss, "top_k": data.top_k,
                     "select_stage": data.select.stage, "report_stage": data.test.stage,
                     "select_users": len(data.select.users), "test_users": len(data.test.users)},
        "pool_size": int(len(pool)),
        "base": base,
        "rankings": rankings,
        "greedy_trace": greedy_trace,
        "combined": combined,
        "evidence": evidence_table(data, ev, rankings, n=max(16, min(32, n_max))),
        "evidence_summary": {
            "sum_of_negative_solo_bias": float(np.nansum(np.minimum(ev["solo_bias"], 0.0))),
            "best_solo_bias": float(np.nanmin(ev["solo_bias"])),
            "latents_reducing_bias_alone": int(np.nansum(ev["solo_bias"] < 0)),
            "decoder_bias_direct_effect": float(data.kernel.b_dec @ (data.item_emb.T @ measure.item_direction)),
            "latents_total_direct_effect": float(np.sum(ev["contrast"] * ev["direct_effect"])),
        },
        "baseline_evidence": baseline_evidence(data, pool) if bias == "popularity" else None,
        "rows": rows,
        "rerank": rerank,
    }
    if isinstance(measure, PopularityBias):
        result["target_head_share"] = {st.stage: float(measure.head[st.targets].mean()) for st in stages}
    result["targets"] = check_targets(result, max_loss=max_ndcg_loss)
    ids0, ranks0 = base_lists[data.test.stage]
    test_base = (measure.per_user(ids0), _gain(ranks0, data.top_k))
    add_ndcg_loss_intervals(result, test_lists, test_base[1])
    add_crossfit_choices(measure, result, test_lists, test_base, data.test.users)
    return result


def add_crossfit_choices(measure: BiasMeasure, result: dict, test_lists: dict[tuple, tuple[np.ndarray, np.ndarray]],
                         test_base: tuple[np.ndarray, np.ndarray], users: np.ndarray, splits: int = 5) -> None:
    """Each method's point chosen on half of the test users and reported on the other half.

    Why: the dev stage is a different distribution from the test stage (on ml-100k 55% of dev
    targets are head items against 46% of test targets, and SASRec was early-stopped on dev), so
    a point chosen on dev misjudges what it costs on test. Choosing on one half of the test users
    and applying the choice to the other, both ways, pools an honest "choose, then deploy"
    estimate over all users; repeated over ``splits`` random halvings. The two rules of
    :func:`pick_point`: ``max_cut`` (lowest |bias| within the NDCG-loss limit) and ``min_loss``
    (highest NDCG among points cutting |bias| by the target). ``test_lists`` / ``test_base``: per
    test user, the bias statistic and NDCG gain of each sweep point / of the unsuppressed lists.
    Where a half has no admissible point, nothing is suppressed there."""
    t = result["targets"]
    max_loss, min_cut = t["max_ndcg_loss"], t["min_cut"]
    pu0, g0 = test_base
    b0, n0 = abs(measure.value(pu0, users)), float(g0.mean())
    if b0 == 0 or n0 == 0:
        return
    halvings = [np.random.default_rng(rep).permutation(len(users)) for rep in range(splits)]

    def choose(keys: list[tuple], sel: np.ndarray, rule: str) -> tuple | None:
        cands = {k: (abs(measure.value(test_lists[k][0][sel], users[sel])), float(test_lists[k][1][sel].mean()))
                 for k in keys}
        return pick_point(cands, abs(measure.value(pu0[sel], users[sel])), float(g0[sel].mean()), max_loss,
                          min_cut if rule == "min_loss" else None)

    for method, target in t.items():
        keys = [k for k in test_lists if k[0] == method]
        if not isinstance(target, dict) or not keys:
            continue
        target["crossfit"] = {}
        for rule in ("max_cut", "min_loss"):
            reps = []
            for perm in halvings:
                halves = (perm[: len(perm) // 2], perm[len(perm) // 2 :])
                pu, g, chosen = pu0.copy(), g0.copy(), []
                for out, sel in (halves, halves[::-1]):
                    k = choose(keys, sel, rule)
                    chosen.append(None if k is None else dict(zip(("n", "strength", "baseline"), k[1:])))
                    if k is not None:
                        pu[out], g[out] = test_lists[k][0][out], test_lists[k][1][out]
                lo, hi = paired_ratio_ci(g, g0)
                reps.append({"points": chosen, "cut": 1 - abs(measure.value(pu, users)) / b0,
                             "ndcg_loss": 1 - float(g.mean()) / n0,
                             "ndcg_loss_ci95": [round(1 - hi, 4), round(1 - lo, 4)]})
            cut = float(np.mean([r["cut"] for r in reps]))
            loss = float(np.mean([r["ndcg_loss"] for r in reps]))
            target["crossfit"][rule] = {
                "splits": splits, "cut": cut, "ndcg_loss": loss,
                "cut_range": [min(r["cut"] for r in reps), max(r["cut"] for r in reps)],
                "ndcg_loss_range": [min(r["ndcg_loss"] for r in reps), max(r["ndcg_loss"] for r in reps)],
                "cut_target_met": bool(cut >= min_cut and loss <= max_loss),
                "repeats": reps,
            }


def add_ndcg_loss_intervals(result: dict, test_lists: dict[tuple, tuple[np.ndarray, np.ndarray]],
                            base_gain: np.ndarray) -> None:
    """Give each method's best point and dev-chosen points a 95% paired-bootstrap interval of the
    test NDCG@k loss (in ``targets``), from the per-user gains the sweep kept.

    Why: with ~1k test users, the loss of a single point moves by several points from sampling
    alone (on ml-100k the same suppression cost 7.5% on test users and 17.7% on dev users), so
    "within 10% loss" needs its interval to be read."""
    for method, t in result["targets"].items():
        if not isinstance(t, dict) or "best_point" not in t:
            continue
        for where, point in (("best", t["best_point"]), ("dev", t["dev_choice"]), ("dev", t["dev_choice_min_loss"])):
            if not point:
                continue
            lo, hi = paired_ratio_ci(test_lists[(method, point["n"], point["strength"], point["baseline"])][1], base_gain)
            ci = [round(1 - hi, 4), round(1 - lo, 4)]
            if where == "best":
                t["best_ndcg_loss_ci95"] = ci
            else:
                point["test_ndcg_loss_ci95"] = ci


def evidence_table(data: DebiasData, ev: dict, rankings: dict[str, list[int]], n: int = 16) -> list[dict]:
    """Rows for the top ``n`` latents by association plus every latent a selection picked."""
    picked = list(dict.fromkeys([int(j) for j in ev["association_order"][:n]] + [j for r in rankings.values() for j in r]))
    rank_assoc = {int(j): i + 1 for i, j in enumerate(ev["association_order"])}
    out = []
    for j in picked:
        desc = None
        if data.concepts and j < len(data.concepts):
            c = data.concepts[j]
            desc = c.get("description") or (", ".join(map(str, c.get("attributes") or [])) or None)
        out.append({
            "latent": j,
            "association_rank": rank_assoc.get(j),
            "greedy_rank": (rankings.get("greedy", []).index(j) + 1) if j in rankings.get("greedy", []) else None,
            "freq": float(ev["freq"][j]),
            "mean_act": float(ev["mean_act"][j]),
            "contrast": float(ev["contrast"][j]),
            "rate_contrast": float(ev["rate_contrast"][j]),
            "direct_effect": float(ev["direct_effect"][j]),
            "association": float(ev["association"][j]),
            "solo_bias": float(ev["solo_bias"][j]),
            "solo_ndcg": float(ev["solo_ndcg"][j]),
            "description": desc,
        })
    return out


def _key(row: dict) -> tuple:
    """A sweep point: (n latents, their strength, baseline strength)."""
    return row["n"], row["strength"], row.get("baseline", 0.0)


def _try_choice(result: dict, method: str, max_loss: float, target_cut: float | None) -> dict | None:
    try:
        return choose_policy(result, method, max_loss, target_cut)
    except ConfigError:
        return None


def check_targets(result: dict, min_cut: float = 1 / 3, max_loss: float = 0.10) -> dict:
    """Per method: the best test bias cut within ``max_loss`` relative NDCG loss over the sweep;
    whether the method beats its random comparator (lower |bias|, :data:`COMPARATOR`) at every
    point of the sweep; and the test numbers of the point chosen on the dev stage
    (:func:`choose_policy`), with the re-ranking baseline's cut at the same test NDCG."""
    b0 = abs(result["base"]["test"]["bias"])
    n0 = result["base"]["test"]["ndcg"]
    rows = result["rows"]

    def cut(bias: float) -> float:
        return 1 - abs(bias) / b0 if b0 > 0 else 0.0

    def on_test(row: dict | None) -> dict | None:
        return None if row is None else {
            **dict(zip(("n", "strength", "baseline"), _key(row))),
            "test_cut": cut(row["test"]["bias"]),
            "test_ndcg_loss": 1 - row["test"]["ndcg"] / n0 if n0 > 0 else None,
            "rerank_cut_at_matched_ndcg": cut(row["rerank_bias_at_matched_ndcg"]),
            "cut_target_met": bool(cut(row["test"]["bias"]) >= min_cut and row["test"]["ndcg"] >= (1 - max_loss) * n0),
        }

    out: dict = {}
    for method in [m for m in COMPARATOR if any(r["method"] == m for r in rows)]:
        rand = {_key(r): r for r in rows if r["method"] == COMPARATOR[method]}
        mine = [r for r in rows if r["method"] == method]
        ok = [r for r in mine if r["test"]["ndcg"] >= (1 - max_loss) * n0]
        best = min(ok, key=lambda r: abs(r["test"]["bias"]), default=None)
        beats = [abs(r["test"]["bias"]) < abs(rand[_key(r)]["test"]["bias"]) for r in mine if _key(r) in rand]
        vs_rerank = [abs(r["test"]["bias"]) < abs(r["rerank_bias_at_matched_ndcg"]) for r in mine
                     if not math.isnan(r["rerank_bias_at_matched_ndcg"])]
        dev, dev_cut = (_try_choice(result, method, max_loss, target) for target in (None, min_cut))
        out[method] = {
            "comparator": COMPARATOR[method],
            "best_cut_within_loss": cut(best["test"]["bias"]) if best else 0.0,
            "best_point": dict(zip(("n", "strength", "baseline"), _key(best))) if best else None,
            "best_ndcg_loss": (1 - best["test"]["ndcg"] / n0) if best and n0 > 0 else None,
            "best_rerank_cut_at_matched_ndcg": cut(best["rerank_bias_at_matched_ndcg"]) if best else None,
            "cut_target_met": bool(best and cut(best["test"]["bias"]) >= min_cut),
            "beats_random_everywhere": bool(beats) and all(beats),
            "beats_random_points": f"{sum(beats)}/{len(beats)}",
            "beats_rerank_at_matched_ndcg_points": f"{sum(vs_rerank)}/{len(vs_rerank)}",
            "dev_choice": on_test(dev),
            "dev_choice_min_loss": on_test(dev_cut),
        }
    ok = [p for p in result["rerank"] if p["ndcg"] >= (1 - max_loss) * n0]
    best = min(ok, key=lambda p: abs(p["bias"]), default=None)
    out["rerank"] = {"best_cut_within_loss": cut(best["bias"]) if best else 0.0,
                     "best_lambda": best["lambda"] if best else None}
    out["min_cut"], out["max_ndcg_loss"] = min_cut, max_loss
    return out


# =============================================================================================
# 5. Policies
# =============================================================================================
def choose_policy(result: dict, method: str | Sequence[str] = "greedy", max_ndcg_loss: float = 0.10,
                  target_cut: float | None = None) -> dict:
    """The dev-stage choice among the sweep points of ``method`` (a name, several, or ``"best"`` =
    :data:`POLICY_METHODS`). Without ``target_cut``: the lowest dev |bias| whose dev NDCG@k lost
    at most ``max_ndcg_loss`` (relative). With it: the highest dev NDCG among points that cut dev
    |bias| by at least ``target_cut`` (the cheapest way to a stated cut). Ties -> fewer latents,
    lower strength, lower baseline. Chosen on the dev stage, so its test numbers are not tuned on."""
    methods = POLICY_METHODS if method == "best" else (method,) if isinstance(method, str) else tuple(method)
    rows = [r for r in result["rows"] if r["method"] in methods]
    if not rows:
        raise ConfigError(f"the sweep has no {'/'.join(methods)} rows; run it with that method")
    sel = result["settings"]["select_stage"]
    base = result["base"][sel]
    cands = {(*_key(r), i): (abs(r[sel]["bias"]), r[sel]["ndcg"]) for i, r in enumerate(rows)}
    key = pick_point(cands, abs(base["bias"]), base["ndcg"], max_ndcg_loss, target_cut)
    if key is None:
        raise ConfigError(
            f"no {'/'.join(methods)} point cuts the dev-stage bias by {target_cut:.0%}; sweep higher strengths or "
            "more latents, or lower --target-cut" if target_cut is not None else
            f"no {'/'.join(methods)} point keeps dev NDCG within {max_ndcg_loss:.0%} of the original")
    best = rows[key[-1]]
    rule = (f"least dev NDCG loss cutting the bias by >= {target_cut:.0%}" if target_cut is not None
            else f"lowest dev bias within {max_ndcg_loss:.0%} dev NDCG loss")
    return {**best, "improves": abs(best[sel]["bias"]) < abs(base["bias"]), "rule": rule}


def pick_point(cands: dict[tuple, tuple[float, float]], bias0: float, ndcg0: float, max_ndcg_loss: float,
               target_cut: float | None = None) -> tuple | None:
    """The policy rules over candidate points ``key -> (|bias|, NDCG)`` measured on some users
    whose unsuppressed |bias| and NDCG are ``bias0``, ``ndcg0``. Without ``target_cut``: the lowest
    |bias| whose NDCG lost at most ``max_ndcg_loss`` (relative); with it: the highest NDCG among
    points cutting |bias| by at least ``target_cut``. Ties -> the smaller key. None: no point
    qualifies."""
    if target_cut is None:
        ok = [k for k, (_, n) in cands.items() if n >= (1 - max_ndcg_loss) * ndcg0]
        return min(ok, key=lambda k: (round(cands[k][0], 12), k), default=None)
    ok = [k for k, (b, _) in cands.items() if bias0 > 0 and 1 - b / bias0 >= target_cut]
    return min(ok, key=lambda k: (-round(cands[k][1], 12), k), default=None)


def budget_edge_warning(result: dict, point: dict, max_ndcg_loss: float, edge: float = 0.8) -> str | None:
    """A warning when a policy chosen as "lowest bias within the NDCG budget" used most of the
    budget on the dev stage: the loss of one stage is noisy (±9 points with ~1k users), so such a
    point often exceeds the budget on new users (docs/DEBIAS.md); a stated cut is steadier."""
    sel = result["settings"]["select_stage"]
    n0 = result["base"][sel]["ndcg"]
    loss = 1 - point[sel]["ndcg"] / n0 if n0 > 0 else 0.0
    if max_ndcg_loss <= 0 or loss < edge * max_ndcg_loss:
        return None
    return (f"the chosen point loses {loss:.1%} of {sel} NDCG@{result['settings']['top_k']}, at the edge of the "
            f"{max_ndcg_loss:.0%} budget: on new users it may exceed it; --target-cut FRACTION chooses by the bias cut "
            "instead, which is measured far more tightly")


def policy_document(name: str, point: dict, result: dict) -> dict:
    """The policy file body: ``name, latents, strength, mode, baseline, bundle_hash, description``
    (the body of ``PUT /admin/policies/{name}`` as is)."""
    if not POLICY_NAME.match(name):
        raise ConfigError(f"policy name {name!r}: use letters, digits, '_.-' (at most 64, starting with a letter or digit)")
    t0, t1 = result["base"]["test"], point["test"]
    src = result.get("source", {})
    k = result["settings"]["top_k"]
    beta = float(point.get("baseline", 0.0))
    what = ([f"{len(point['latents'])} latents at strength {point['strength']:g}"] if point["latents"] else []) + (
        [f"the baseline (SAE decoder bias) at {beta:g}"] if beta else [])
    desc = (
        f"{result['bias']} de-bias ({point['method']}, chosen on dev-stage users: "
        f"{point.get('rule', 'lowest dev bias within the NDCG budget')}): suppress "
        f"{' and '.join(what) or 'nothing'}; test "
        f"{result['measure']['label']} {t0['bias']:.3f}->{t1['bias']:.3f}, NDCG@{k} "
        f"{t0['ndcg']:.4f}->{t1['ndcg']:.4f}; bundle {src.get('version', '?')} "
        f"({str(src.get('bundle_hash', '?'))[:12]})"
    )
    return {
        "name": name,
        "latents": [int(j) for j in point["latents"]],
        "strength": float(point["strength"]) if point["latents"] else 1.0,
        "mode": result["settings"]["mode"],
        "baseline": beta,
        "bundle_hash": src.get("bundle_hash"),
        "description": desc[:MAX_DESCRIPTION],
    }


def policy_json(doc: dict) -> str:
    """The policy as indented JSON with the latent list on one line."""
    return json.dumps({**doc, "latents": "\0"}, indent=2).replace('"\\u0000"', json.dumps(doc["latents"]))


def check_policy_dir(folder: str | Path) -> Path:
    """Refuse a folder inside a bundle: bundles are hash-verified, policies live outside them."""
    folder = Path(folder)
    for p in [folder.resolve(), *folder.resolve().parents]:
        if (p / "manifest.json").is_file() and (p / "sae").is_dir():
            raise ConfigError(f"{folder} is inside bundle {p}: bundles are hash-verified; use another --policy-dir")
    return folder


def save_policy(doc: dict, folder: str | Path) -> Path:
    """Write ``<folder>/<name>.json`` atomically; refuses a folder inside a bundle (bundles are
    hash-verified: an extra file there would be silently ignored or break verification)."""
    if not set(POLICY_REQUIRED) <= set(doc) <= set(POLICY_KEYS):
        raise ConfigError(f"a policy file has the keys {POLICY_KEYS} ('baseline', 'bundle_hash' optional)")
    if not POLICY_NAME.match(doc["name"]):
        raise ConfigError(f"bad policy name {doc['name']!r}")
    folder = check_policy_dir(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{doc['name']}.json"
    fd, tmp = tempfile.mkstemp(prefix=f".{doc['name']}.", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(policy_json(doc) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_policy(path: str | Path) -> dict:
    """Read and check a policy file written by :func:`save_policy`."""
    doc = json.loads(Path(path).read_text())
    if not isinstance(doc, dict) or not set(POLICY_REQUIRED) <= set(doc) <= set(POLICY_KEYS):
        raise ConfigError(f"{path}: a policy file has the keys {POLICY_KEYS} ('baseline', 'bundle_hash' optional)")
    if not all(isinstance(j, int) and j >= 0 for j in doc["latents"]) or not 0 <= doc["strength"] <= 1:
        raise ConfigError(f"{path}: latents must be ids >= 0 and strength in [0, 1]")
    if not 0 <= doc.get("baseline", 0.0) <= 1:
        raise ConfigError(f"{path}: baseline must be in [0, 1]")
    if not isinstance(doc.get("bundle_hash", ""), (str, type(None))):
        raise ConfigError(f"{path}: bundle_hash must be a string")
    if doc["mode"] not in ("error", "reconstruction"):
        raise ConfigError(f"{path}: mode must be 'error' or 'reconstruction'")
    return doc


# =============================================================================================
# Reporting
# =============================================================================================
def _f(v, digits=3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


def sweep_table(result: dict) -> str:
    """Markdown table of the sweep (test stage; dev-stage bias alongside)."""
    k = result["settings"]["top_k"]
    b0, n0 = result["base"]["test"]["bias"], result["base"]["test"]["ndcg"]
    extra = "mean pop" if result["bias"] == "popularity" else "gender AUC"
    ekey = "mean_popularity" if result["bias"] == "popularity" else "gender_auc"
    lines = [
        f"| method | n | strength | baseline | test {result['measure']['label']} | change | test NDCG@{k} | "
        f"NDCG change | test HR@{k} | {extra} | dev bias | re-rank bias at same NDCG |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = result["base"]["test"]
    lines.append(
        f"| original | 0 | - | - | {_f(b0)} | - | {_f(n0, 4)} | - | {_f(base['hr'], 4)} | "
        f"{_f(base.get(ekey), 3 if ekey == 'gender_auc' else 1)} | {_f(result['base']['dev']['bias'])} | - |"
    )
    order = {m: i for i, m in enumerate(("association", "greedy", "random", "baseline", "random-direction",
                                         "baseline+greedy", "random-direction+latents"))}
    for r in sorted(result["rows"], key=lambda r: (order.get(r["method"], 9), r["strength"], r["n"], r.get("baseline", 0))):
        t = r["test"]
        bias = _f(t["bias"]) + (f" ± {t['bias_std']:.3f}" if "bias_std" in t else "")
        strength = f"{r['strength']:g}" if r["n"] else "-"
        beta = f"{r['baseline']:g}" if r.get("baseline") else "-"
        lines.append(
            f"| {r['method']} | {r['n']} | {strength} | {beta} | {bias} | "
            f"{_rel(t['bias'], b0)} | {_f(t['ndcg'], 4)} | {_rel(t['ndcg'], n0)} | {_f(t['hr'], 4)} | "
            f"{_f(t.get(ekey), 3 if ekey == 'gender_auc' else 1)} | {_f(r['dev']['bias'])} | "
            f"{_f(r['rerank_bias_at_matched_ndcg'])} |"
        )
    return "\n".join(lines)


def _rel(v: float, base: float) -> str:
    """Relative change of |v| against |base|, as a signed percentage."""
    return f"{(abs(v) / abs(base) - 1) * 100:+.1f}%" if base else "-"


def rerank_table(result: dict) -> str:
    k = result["settings"]["top_k"]
    b0, n0 = result["base"]["test"]["bias"], result["base"]["test"]["ndcg"]
    lines = [f"| lambda | test {result['measure']['label']} | change | test NDCG@{k} | NDCG change |",
             "|---:|---:|---:|---:|---:|"]
    for p in result["rerank"]:
        lines.append(f"| {p['lambda']:.3f} | {_f(p['bias'])} | {_rel(p['bias'], b0)} | {_f(p['ndcg'], 4)} | {_rel(p['ndcg'], n0)} |")
    return "\n".join(lines)


def baseline_markdown(result: dict) -> str:
    """Why the SAE's baseline (``b_dec``) is the popularity concept, in numbers."""
    e, ev = result.get("baseline_evidence"), result["evidence_summary"]
    if not e:
        return (f"Direct effect of the baseline b_dec on the bias' item contrast: {ev['decoder_bias_direct_effect']:+.3f}; "
                f"all latents together: {ev['latents_total_direct_effect']:+.3f}.")
    k = result["settings"]["top_k"]
    return "\n".join([
        f"- Rank correlation (Spearman, all items) between the baseline's score `b_dec · e_i` and the item's "
        f"training popularity: **{e['spearman_bdec_popularity']:+.3f}**. Of the {k} items `b_dec` alone scores "
        f"highest, {e['head_share_top_k_by_bdec']:.0%} are head items; of its top "
        f"{result['measure'].get('head_items', '|head|')}, {e['head_share_top_head_by_bdec']:.0%} (chance: "
        f"{e['head_fraction']:.0%}).",
        f"- Correlation alone does not single `b_dec` out: the item embeddings have a popularity axis, so "
        f"{e['latents_spearman_over_0_5']} of {e['latents_compared']} candidate latent directions also correlate "
        f"> 0.5 (most: #{e['most_aligned_latent']}, {e['most_aligned_spearman']:+.3f}) and "
        f"{e['latents_spearman_under_minus_0_5']} below −0.5 (#{e['most_opposed_latent']}, "
        f"{e['most_opposed_spearman']:+.3f}).",
        f"- What does single it out is weight and universality: `b_dec` is in every user's representation at full "
        f"weight (cosine with the mean dev-stage representation {e['cosine_bdec_mean_x']:+.3f}, norms "
        f"{e['bdec_norm']:.2f} vs {e['mean_x_norm']:.2f}), while the popularity-aligned latents fire for "
        f"{e['aligned_latents_mean_firing_rate']:.1%} of users on average. Head-minus-tail direct effect: `b_dec` "
        f"{e['direct_effect_bdec']:+.3f}; the aligned latents, weighted by their mean activation, "
        f"{e['direct_effect_aligned_latents']:+.3f}; all candidate latents together {e['direct_effect_all_latents']:+.3f}.",
    ])


def evidence_markdown(result: dict, limit: int = 16) -> str:
    gender = result["bias"] == "gender"
    contrast = "mean act F-M" if gender else "mean act (all)"
    rate = "firing rate F-M" if gender else "firing rate"
    direct = "direct effect F-M genres" if gender else "direct effect head-tail"
    lines = [
        f"| latent | assoc. rank | greedy rank | {rate} | {contrast} | {direct} | association | "
        "solo Δ|bias| (dev) | solo ΔNDCG (dev) | concept |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    rows = sorted(result["evidence"], key=lambda r: (r["greedy_rank"] or 999, r["association_rank"] or 999))
    for r in rows[:limit]:
        lines.append(
            f"| {r['latent']} | {r['association_rank'] or '-'} | {r['greedy_rank'] or '-'} | "
            f"{r['rate_contrast']:+.3f} | {r['contrast']:+.4f} | {r['direct_effect']:+.4f} | {r['association']:+.5f} | "
            f"{r['solo_bias']:+.4f} | {r['solo_ndcg']:+.4f} | {(r['description'] or '-')[:60]} |"
        )
    return "\n".join(lines)


def plot_tradeoff(result: dict, path: str | Path) -> Path:
    """PNG: bias vs test NDCG@k for the selections, random latents and re-ranking; the right
    panel zooms on the latent-suppression points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = result["settings"]["top_k"]
    b0, n0 = result["base"]["test"]["bias"], result["base"]["test"]["ndcg"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 6.4))
    styles = {"association": ("tab:blue", "o"), "greedy": ("tab:purple", "s"), "random": ("tab:red", "x")}
    seeds = result["settings"]["seeds"]
    base_styles = {  # method -> (colour, marker, label); lines start at the original model
        "baseline": ("tab:orange", "D", "baseline suppressed: x - β·b_dec"),
        "random-direction": ("tab:brown", "x", f"random direction, norm β·|b_dec| (mean of {seeds})"),
    }
    zoom_x, zoom_y = [n0], [b0]
    for ax in axes:
        rr = [p for p in result["rerank"] if p["ndcg"] >= 0.6 * n0]
        ax.plot([p["ndcg"] for p in rr], [p["bias"] for p in rr], "-", color="tab:green", marker=".",
                label="re-ranking: score - λ·penalty")
        for method, (color, marker, label) in base_styles.items():
            rows = sorted([r for r in result["rows"] if r["method"] == method], key=lambda r: r["baseline"])
            if not rows:
                continue
            ax.plot([n0] + [r["test"]["ndcg"] for r in rows], [b0] + [r["test"]["bias"] for r in rows], "-",
                    color=color, marker=marker, ms=5, label=label)
            if method == "baseline":
                for r in rows:
                    ax.annotate(f"β={r['baseline']:g}", (r["test"]["ndcg"], r["test"]["bias"]), fontsize=7,
                                textcoords="offset points", xytext=(4, -9), color=color)
            else:
                ax.errorbar([r["test"]["ndcg"] for r in rows], [r["test"]["bias"] for r in rows],
                            yerr=[r["test"].get("bias_std", 0) for r in rows], fmt="none", ecolor=color, alpha=0.4)
        comb = result.get("combined")
        top = max(result["settings"]["strengths"])
        for method, color, label in (("baseline+greedy", "tab:olive", "baseline {b:g} + greedy latents (strength {s:g})"),
                                     ("random-direction+latents", "tab:gray", "random direction + random latents")):
            rows = sorted([r for r in result["rows"] if r["method"] == method and r["strength"] == top],
                          key=lambda r: r["n"])
            if comb and rows:
                ax.plot([r["test"]["ndcg"] for r in rows], [r["test"]["bias"] for r in rows], "--", color=color,
                        marker="P", ms=5, label=label.format(b=comb["baseline"], s=top))
        strengths = sorted(result["settings"]["strengths"])
        for method, (color, marker) in styles.items():
            for s in strengths:
                rows = sorted([r for r in result["rows"] if r["method"] == method and r["strength"] == s],
                              key=lambda r: r["n"])
                if not rows:
                    continue
                xs = [n0] + [r["test"]["ndcg"] for r in rows]
                ys = [b0] + [r["test"]["bias"] for r in rows]
                zoom_x += xs
                zoom_y += ys
                strongest = s == strengths[-1]
                extra = f" (mean of {result['settings']['seeds']})" if method == "random" else ""
                # one legend entry for the strongest line and one for all weaker (dashed) ones
                label = (f"{method} latents, strength {s:g}{extra}" if strongest else
                         f"{method} latents, strength {s:g}{extra}" if len(strengths) == 2 else
                         f"{method} latents, strengths {strengths[0]:g}–{strengths[-2]:g} (dashed){extra}"
                         if s == strengths[0] else None)
                ax.plot(xs, ys, "-" if strongest else "--", color=color, marker=marker, ms=5,
                        alpha=0.9 if strongest else 0.55, label=label)
                if method == "random":
                    ax.errorbar(xs[1:], ys[1:], yerr=[r["test"].get("bias_std", 0) for r in rows], fmt="none",
                                ecolor=color, alpha=0.4)
                else:
                    for r in rows:  # counts along the strongest line, strengths at n=1 on the others
                        text = str(r["n"]) if strongest and r["n"] in (1, 4, 32) else (
                            f"s={s:g}" if not strongest and r["n"] == 1 and method == "association" else None)
                        if text:
                            ax.annotate(text, (r["test"]["ndcg"], r["test"]["bias"]), fontsize=7,
                                        textcoords="offset points", xytext=(3, 3), color=color)
        ax.plot([n0], [b0], "k*", ms=12, label="original model")
        if result["bias"] == "popularity":
            t = result["targets"]
            ax.axhline(b0 * (1 - t["min_cut"]), color="k", lw=0.6, ls="--")
            ax.axvline(n0 * (1 - t["max_ndcg_loss"]), color="k", lw=0.6, ls="--")
        else:
            ax.axhline(0.0, color="k", lw=0.6, ls="--")
        ax.set_xlabel(f"test NDCG@{k}  (accuracy falls to the right)")
        ax.grid(alpha=0.3)
    ax0, ax1 = axes
    ax0.set_ylabel(f"test {result['measure']['label']}" + (" (F - M)" if result["bias"] == "gender" else ""))
    if result["bias"] == "popularity":
        t = result["targets"]
        ax0.text(n0 * (1 - t["max_ndcg_loss"]), b0 * (1 - t["min_cut"]), " target: ≥1/3 cut, ≤10% NDCG loss",
                 fontsize=7, va="bottom")
    handles, labels = ax0.get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=3, frameon=False)
    ax0.invert_xaxis()
    dx = max(1e-4, max(zoom_x) - min(zoom_x)) * 0.15
    dy = max(1e-3, max(zoom_y) - min(zoom_y)) * 0.15
    ax1.set_xlim(max(zoom_x) + dx, min(zoom_x) - dx)
    ax1.set_ylim(min(zoom_y) - dy, max(zoom_y) + dy)
    ax1.set_title("zoom on latent suppression (baseline points lie outside)", fontsize=9)
    src = result.get("source", {})
    sae = f", SAE {src['sae']}" if src.get("sae") else ""
    ax0.set_title(f"{result['bias']} bias vs accuracy — {src.get('model', '?')} / {src.get('dataset', '?')}{sae}",
                  fontsize=10)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def measure_markdown(result: dict) -> str:
    m = result["measure"]
    if result["bias"] == "popularity":
        return (
            f"Head items: the {m['head_items']} most popular items (top {m['head_fraction']:.0%} by training "
            f"interactions; they hold {m['head_share_of_training_interactions']:.1%} of the training interactions)."
            + ("" if "target_head_share" not in result else
               " Held-out targets that are head items: " + ", ".join(
                   f"{stage} {v:.1%}" for stage, v in result["target_head_share"].items())
               + " — the stages differ, so a point chosen on dev is also checked by choosing on half the test users.")
        )
    return (
        f"Female-leaning genres: {', '.join(m['female_genres'])}; male-leaning: {', '.join(m['male_genres'])} "
        f"(training-interaction shares F/M: "
        + ", ".join(f"{g} {m['share_female'][g]:.3f}/{m['share_male'][g]:.3f}" for g in m["female_genres"] + m["male_genres"])
        + f"). {m['female_users']} female, {m['male_users']} male users. The same gap measured on the users' "
        f"training histories is {m['gap_in_training_histories']:+.3f}."
    )


def _point_text(pt: dict) -> str:
    parts = ([f"n={pt['n']}, strength {pt['strength']:g}"] if pt["n"] else []) + (
        [f"baseline β={pt['baseline']:g}"] if pt.get("baseline") else [])
    return ", ".join(parts) or "nothing"


def targets_markdown(result: dict) -> str:
    """The targets as one table (a row per method) and the rules behind its columns."""
    t = result["targets"]
    pop = result["bias"] == "popularity"
    lim, goal = t["max_ndcg_loss"], t["min_cut"]

    def cell(cut: float, loss: float | None, ci: list[float] | None = None) -> str:
        return f"{cut:+.1%} at {loss:+.1%}" + (f" ({ci[0]:+.1%}…{ci[1]:+.1%})" if ci else "") if loss is not None else "—"

    def crossfit_cell(cf: dict | None) -> str:
        if not cf:
            return "—"
        first = " / ".join(_point_text(p) if p else "nothing" for p in cf["repeats"][0]["points"])
        return (f"{cf['cut']:+.1%} at {cf['ndcg_loss']:+.1%} (losses {cf['ndcg_loss_range'][0]:+.1%}…"
                f"{cf['ndcg_loss_range'][1]:+.1%}; e.g. {first}){' ✔' if cf['cut_target_met'] else ''}")

    head = ("| method | best test point within the limit (cut at NDCG loss, 95% CI) | below the comparator | "
            f"below re-ranking at the same NDCG | lowest bias within {lim:.0%} loss, chosen on dev → test | … chosen on "
            f"half the test users → the other half | least loss cutting ≥{goal:.0%}, chosen on dev → test | … chosen on "
            "half the test users → the other half |\n|---|---|---|---|---|---|---|---|")
    rows = [head]

    def dev_cell(dev: dict | None) -> str:
        return (f"{_point_text(dev)}: {cell(dev['test_cut'], dev['test_ndcg_loss'], dev.get('test_ndcg_loss_ci95'))}"
                f"{' ✔' if dev['cut_target_met'] else ''}") if dev else "no such point on dev"

    for method in COMPARATOR:
        if method not in t:
            continue
        x = t[method]
        pt, cf = x["best_point"], x.get("crossfit") or {}
        best = (f"{_point_text(pt)}: {cell(x['best_cut_within_loss'], x['best_ndcg_loss'], x.get('best_ndcg_loss_ci95'))}"
                f"{' ✔' if x['cut_target_met'] else ''}") if pt else "—"
        rows.append(
            f"| {method} | {best} | {x['beats_random_points']} vs {x['comparator']}"
            f"{' (**every point**)' if x['beats_random_everywhere'] else ''} | {x['beats_rerank_at_matched_ndcg_points']} | "
            f"{dev_cell(x['dev_choice'])} | {crossfit_cell(cf.get('max_cut'))} | "
            f"{dev_cell(x.get('dev_choice_min_loss'))} | {crossfit_cell(cf.get('min_loss'))} |"
        )
    rr = t["rerank"]
    target = (f"Target: cut the {result['measure']['label']} by ≥{goal:.0%} at ≤{lim:.0%} NDCG@{result['settings']['top_k']} loss "
              "(✔ = met)" if pop else f"Yardstick (the popularity target's): ≥{goal:.0%} cut at ≤{lim:.0%} NDCG loss (✔ = reached)")
    return (
        f"{target}; the post-hoc re-ranking baseline's best test cut within {lim:.0%} loss: "
        f"{rr['best_cut_within_loss']:+.1%}.\n\n" + "\n".join(rows) + "\n\n"
        "Columns: the best point of the test sweep is the target as stated (reported, not chosen blind); the "
        "comparator columns count sweep points with lower |bias|. The last four are chosen blind, by two rules "
        "(the saved policy's: `--target-cut` picks the second): on the dev stage, and on one half of the test users "
        "with the choice applied to the other half, both ways, averaged over "
        f"{next((c['splits'] for x in t.values() if isinstance(x, dict) for c in (x.get('crossfit') or {}).values()), 0)} "
        "random halvings (the loss range is over those halvings)."
    )


def render_section(result: dict, plot_rel: str) -> str:
    """One bias' section of the report (markdown)."""
    s = result["settings"]
    ev = result["evidence_summary"]
    src = result.get("source", {})
    parts = [
        f"## {result['bias'].capitalize()} bias",
        "",
        f"Bundle `{src.get('bundle')}` (version {src.get('version')}), {s['test_users']} test users; "
        f"latents and baseline strengths picked on the {s['select_stage']} stage ({s['select_users']} users) from "
        f"{result['pool_size']} candidates firing for ≥{s['min_freq']:.1%} of them; mode `{s['mode']}`; random = mean of "
        f"{s['seeds']} draws (latents from the same candidates; directions of the same norm as β·b_dec)"
        + (f"; baseline+greedy = baseline β={result['combined']['baseline']:g} (chosen on dev) plus latents picked "
           "greedily on top of it" if result.get("combined") else "") + ".",
        "",
        measure_markdown(result),
        "",
        "### Targets",
        "",
        targets_markdown(result),
        "",
        f"![{result['bias']} trade-off]({plot_rel})",
        "",
        "### Sweep (test stage)",
        "",
        sweep_table(result),
        "",
        "### Re-ranking baseline (test stage)",
        "",
        rerank_table(result),
        "",
        "### Candidate latents (dev-stage evidence)",
        "",
        f"Latents that reduce the bias when suppressed alone: {ev['latents_reducing_bias_alone']} of "
        f"{result['pool_size']}; the sum of all their solo reductions is {ev['sum_of_negative_solo_bias']:+.4f} "
        f"(best single latent {ev['best_solo_bias']:+.4f}) against a dev-stage bias of "
        f"{result['base']['dev']['bias']:+.4f}. Direct effect of the SAE decoder bias b_dec: "
        f"{ev['decoder_bias_direct_effect']:+.3f}; all latents together (Σ_j contrast_j × direct effect_j): "
        f"{ev['latents_total_direct_effect']:+.3f}.",
        "",
        evidence_markdown(result),
        "",
        "### The baseline: what all users share (the SAE decoder bias b_dec)",
        "",
        baseline_markdown(result),
        "",
    ]
    return "\n".join(parts)


def write_outputs(result: dict, out_dir: str | Path, policy: dict | None = None) -> dict[str, Path]:
    """Write ``<out>/debias-<bias>.json``, ``tradeoff-<bias>.png`` and ``report-<bias>.md``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    b = result["bias"]
    png = plot_tradeoff(result, out / f"tradeoff-{b}.png")
    js = out / f"debias-{b}.json"
    js.write_text(json.dumps(result, indent=1, default=_json_default))
    md = out / f"report-{b}.md"
    text = f"# De-biasing by suppressing SAE latents and the baseline: {b}\n\n" + render_section(result, png.name)
    if policy is not None:
        text += "\n### Chosen policy (dev stage)\n\n```json\n" + policy_json(policy) + "\n```\n"
    md.write_text(text)
    return {"json": js, "plot": png, "report": md}


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")

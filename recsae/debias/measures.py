"""Bias measures on top-k lists, their experiment wrappers (bias = sum_u w_u b_u(list_u)), and the
experiment's methods and default grids."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from recsae import DataError
from recsae.evaluate import HEAD_FRACTION, auc, average_ranks, head_items

TOP_K = 10
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


# =============================================================================================
# 1. Bias measures on top-k lists
# =============================================================================================
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


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (Pearson on average ranks); NaN when one side is constant."""
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb / den) if den > 0 else float("nan")


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

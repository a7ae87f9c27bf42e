"""Ranking metrics for leave-one-out evaluation (NumPy only: shared with the serving code).

Two protocols:

* **Full ranking** (:func:`rank_metrics`): the target is ranked against every item, after removing
  the items the user has already seen at that stage (never the target itself). This is the
  protocol the project reports.
* **Sampled** (:func:`sampled_metrics`): the target is ranked against 99 sampled negatives the user
  never interacted with. Reported for comparison with older papers; it inflates numbers.

Ties are resolved deterministically. A target's 0-based rank is the number of candidates with a
strictly higher score, plus, with ``ties="pessimistic"`` (the default), the number of candidates
with exactly the same score. The pessimistic rule means a constant scorer gets no credit, so a
degenerate model can never look good by accident; ``ties="optimistic"`` counts only strictly
higher scores.

With a single held-out item, ``HR@k = [rank < k]`` and ``NDCG@k = [rank < k] / log2(rank + 2)``
(the ideal DCG is 1).
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import numpy as np

from recsae import ConfigError
from recsae.data.core import Split

Ties = Literal["pessimistic", "optimistic"]
DEFAULT_KS: tuple[int, ...] = (5, 10, 20)
_STAGES = ("dev", "test")


def ranks_from_scores(
    scores: np.ndarray,
    targets: np.ndarray,
    exclude: Sequence[np.ndarray] | None = None,
    ties: Ties = "pessimistic",
) -> np.ndarray:
    """0-based rank of each row's target among all columns, skipping each row's excluded items.

    ``scores`` is ``(B, n_items)``, ``targets`` ``(B,)`` item indices, ``exclude[b]`` the item
    indices row ``b`` must not be ranked against (seen items); the target is never excluded.
    """
    scores = np.asarray(scores)
    targets = np.asarray(targets, dtype=np.int64)
    if scores.ndim != 2 or targets.shape != (scores.shape[0],):
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} do not match")
    if ties not in ("pessimistic", "optimistic"):
        raise ValueError(f"ties must be 'pessimistic' or 'optimistic', not {ties!r}")
    b, n = scores.shape
    if b and (targets.min() < 0 or targets.max() >= n):
        raise ValueError(f"targets must be item indices in [0, {n})")
    rows = np.arange(b)
    t = scores[rows, targets][:, None]
    beats = scores > t
    if ties == "pessimistic":
        beats |= scores == t
        beats[rows, targets] = False
    if exclude is not None:
        if len(exclude) != b:
            raise ValueError(f"exclude has {len(exclude)} rows, scores {b}")
        lens = np.fromiter((len(e) for e in exclude), dtype=np.int64, count=b)
        if lens.sum():
            r = np.repeat(rows, lens)
            c = np.concatenate([np.asarray(e, dtype=np.int64) for e in exclude])
            keep = c != targets[r]  # the target itself is never excluded
            beats[r[keep], c[keep]] = False
    return beats.sum(axis=1)


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS, prefix: str = "") -> dict:
    """Mean ``HR@k`` and ``NDCG@k`` over users from 0-based ranks (one held-out item each)."""
    ranks = np.asarray(ranks)
    out: dict[str, float] = {}
    for k in ks:
        out[f"{prefix}HR@{k}"] = float((ranks < k).mean()) if len(ranks) else 0.0
        out[f"{prefix}NDCG@{k}"] = float(ndcg_per_user(ranks, k).mean()) if len(ranks) else 0.0
    return out


def ndcg_per_user(ranks: np.ndarray, k: int) -> np.ndarray:
    """Each user's NDCG@k from 0-based ranks (one held-out item): the unit for paired comparisons."""
    ranks = np.asarray(ranks)
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)


def rank_metrics(
    scores: np.ndarray,
    targets: np.ndarray,
    exclude: Sequence[np.ndarray] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    ties: Ties = "pessimistic",
) -> dict:
    """Full-ranking ``HR@k`` / ``NDCG@k`` of ``targets`` in ``scores (B, n_items)``.

    ``exclude[b]`` lists the items row ``b`` has already seen; they are removed from the ranking
    (but the target never is).
    """
    return metrics_from_ranks(ranks_from_scores(scores, targets, exclude, ties), ks)


def sampled_metrics(
    scores: np.ndarray,
    targets: np.ndarray,
    negatives: np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
    ties: Ties = "pessimistic",
) -> dict:
    """Sampled-protocol metrics: rank each target among its row of ``negatives`` (e.g. 99).

    Keys are prefixed ``"sampled_"`` so they can sit next to full-ranking metrics.
    """
    scores = np.asarray(scores)
    targets = np.asarray(targets, dtype=np.int64)
    negatives = np.asarray(negatives, dtype=np.int64)
    if negatives.ndim != 2 or negatives.shape[0] != scores.shape[0]:
        raise ValueError(f"negatives {negatives.shape} do not match scores {scores.shape}")
    if ties not in ("pessimistic", "optimistic"):
        raise ValueError(f"ties must be 'pessimistic' or 'optimistic', not {ties!r}")
    ranks = _sampled_ranks(scores, targets, negatives, ties)
    return metrics_from_ranks(ranks, ks, prefix="sampled_")


def sample_negatives(
    split: Split, users: np.ndarray, n: int = 99, seed: int = 0
) -> np.ndarray:
    """``(B, n)`` items each user never interacted with (full history), uniform, no repeats per row.

    Deterministic for a given ``seed`` so every model is scored against the same negatives.
    """
    rng = np.random.default_rng(seed)
    out = np.empty((len(users), n), dtype=np.int64)
    for row, u in enumerate(np.asarray(users)):
        seen = np.zeros(split.n_items, dtype=bool)
        seen[split.full_history(int(u))] = True
        pool = np.flatnonzero(~seen)
        if len(pool) < n:
            raise ValueError(f"user {u} has only {len(pool)} unseen items, need {n} negatives")
        out[row] = rng.choice(pool, size=n, replace=False)
    return out


def eval_users(split: Split, stage: str) -> np.ndarray:
    """Users that have a held-out item at ``stage`` ("dev" or "test")."""
    return np.flatnonzero(_stage_targets(split, stage) >= 0)


def stage_targets(split: Split, users: np.ndarray, stage: str) -> np.ndarray:
    """Held-out item of each user at ``stage``; raises if one has none."""
    t = _stage_targets(split, stage)[np.asarray(users, dtype=np.int64)]
    if (t < 0).any():
        bad = np.asarray(users)[t < 0][:5].tolist()
        raise ValueError(f"users {bad} have no {stage} item; select them with eval_users()")
    return t.astype(np.int64)


def stage_histories(split: Split, users: np.ndarray, stage: str) -> list[np.ndarray]:
    """Items each user has seen before ``stage``'s target (what must be excluded)."""
    return [split.history(int(u), stage) for u in users]


def popularity_scores(split: Split, stage: str = "test") -> np.ndarray:
    """Interaction counts of each item among what is observable before ``stage``.

    For ``"test"`` that is train + dev; for ``"dev"`` train only (no leakage either way).
    """
    if stage not in _STAGES:
        raise ValueError(f"stage must be one of {_STAGES}, not {stage!r}")
    items = [np.concatenate(split.train)] if split.train else []
    if stage == "test":
        items.append(split.dev[split.dev >= 0])
    all_items = np.concatenate(items) if items else np.zeros(0, dtype=np.int64)
    return np.bincount(all_items, minlength=split.n_items).astype(np.float32)


def evaluate_scores(
    scores: np.ndarray,
    split: Split,
    users: np.ndarray,
    stage: str,
    ks: Sequence[int] = DEFAULT_KS,
    negatives: np.ndarray | None = None,
    ties: Ties = "pessimistic",
) -> dict:
    """Full-ranking metrics (and sampled ones if ``negatives`` given) for precomputed scores.

    ``scores`` is ``(B, n_items)`` for ``users``, or ``(n_items,)`` to give everyone the same
    scores (e.g. :func:`popularity_scores`).
    """
    users = np.asarray(users, dtype=np.int64)
    scores = np.asarray(scores)
    if scores.ndim == 1:
        scores = np.broadcast_to(scores, (len(users), scores.shape[0]))
    targets = stage_targets(split, users, stage)
    out = rank_metrics(scores, targets, stage_histories(split, users, stage), ks, ties)
    if negatives is not None:
        out.update(sampled_metrics(scores, targets, negatives, ks, ties))
    out["users"] = len(users)
    return out


def paired_ratio_ci(
    new: np.ndarray, ref: np.ndarray, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(new) / mean(ref)``, resampling users in pairs.

    Why: with ~1k test users a ratio of mean NDCGs moves by several percent from sampling alone,
    so a fidelity figure such as "98% of the original" needs its interval to mean anything.
    """
    new, ref = np.asarray(new, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if new.shape != ref.shape or new.ndim != 1 or len(new) == 0:
        raise ValueError(f"need two equal-length 1-d arrays, got {new.shape} and {ref.shape}")
    rng = np.random.default_rng(seed)
    # resamples drawn in blocks (the same stream as one (n_boot, n) draw): all at once, 40k
    # rows x 2,000 resamples held ~2 GB of indices and gathered values
    ratios = np.empty(n_boot)
    step = max(1, 2**22 // len(new))
    for s in range(0, n_boot, step):
        idx = rng.integers(0, len(new), size=(min(step, n_boot - s), len(new)))
        ratios[s : s + len(idx)] = new[idx].mean(1) / np.maximum(ref[idx].mean(1), 1e-12)
    a = (1 - level) / 2
    lo, hi = np.quantile(ratios, [a, 1 - a])
    return float(lo), float(hi)


def evaluate_reps(
    reps: np.ndarray,
    item_emb: np.ndarray,
    split: Split,
    users: np.ndarray,
    stage: str,
    ks: Sequence[int] = DEFAULT_KS,
    negatives: np.ndarray | None = None,
    ties: Ties = "pessimistic",
    chunk: int = 1024,
) -> dict:
    """Score ``reps (B, d) @ item_emb.T`` and evaluate ``users`` at ``stage`` ("dev"/"test").

    This is the scorer every representation goes through, so the SAE fidelity check can replace
    ``reps`` by their reconstruction and compare like with like. Work is chunked over users to keep
    the ``(B, n_items)`` score matrix small.
    """
    ranks, sranks = stage_ranks(reps, item_emb, split, users, stage, negatives, ties, chunk)
    out = metrics_from_ranks(ranks, ks)
    if sranks is not None:
        out.update(metrics_from_ranks(sranks, ks, prefix="sampled_"))
    out["users"] = len(users)
    return out


def stage_ranks(
    reps: np.ndarray,
    item_emb: np.ndarray,
    split: Split,
    users: np.ndarray,
    stage: str,
    negatives: np.ndarray | None = None,
    ties: Ties = "pessimistic",
    chunk: int = 1024,
) -> tuple[np.ndarray, np.ndarray | None]:
    """0-based full-ranking ranks of each user's ``stage`` target (and sampled ranks with
    ``negatives``), scoring ``reps @ item_emb.T`` in chunks of users."""
    reps = np.asarray(reps, dtype=np.float32)
    item_emb = np.asarray(item_emb, dtype=np.float32)
    users = np.asarray(users, dtype=np.int64)
    if reps.ndim != 2 or reps.shape[0] != len(users) or reps.shape[1] != item_emb.shape[1]:
        raise ValueError(
            f"reps {reps.shape}, item_emb {item_emb.shape} and {len(users)} users do not match"
        )
    if item_emb.shape[0] != split.n_items:
        raise ValueError(f"item_emb has {item_emb.shape[0]} rows, split has {split.n_items} items")
    targets = stage_targets(split, users, stage)
    return target_ranks(reps, item_emb, targets, stage_histories(split, users, stage), negatives, ties, chunk)


def target_ranks(
    reps: np.ndarray,
    item_emb: np.ndarray,
    targets: np.ndarray,
    exclude: Sequence[np.ndarray],
    negatives: np.ndarray | None = None,
    ties: Ties = "pessimistic",
    chunk: int = 1024,
) -> tuple[np.ndarray, np.ndarray | None]:
    """0-based full-ranking ranks of each row's target (skipping its ``exclude`` items), and
    sampled ranks with ``negatives``, scoring ``reps @ item_emb.T`` in chunks of rows."""
    reps = np.asarray(reps, dtype=np.float32)
    item_emb = np.asarray(item_emb, dtype=np.float32)
    targets = np.asarray(targets, dtype=np.int64)
    ranks: list[np.ndarray] = []
    sranks: list[np.ndarray] = []
    for s in range(0, len(reps), chunk):
        sc = reps[s : s + chunk] @ item_emb.T
        tg = targets[s : s + chunk]
        ranks.append(ranks_from_scores(sc, tg, exclude[s : s + chunk], ties))
        if negatives is not None:
            sranks.append(_sampled_ranks(sc, tg, negatives[s : s + chunk], ties))
    full = np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)
    return full, (np.concatenate(sranks) if negatives is not None else None)


def _sampled_ranks(
    scores: np.ndarray, targets: np.ndarray, negatives: np.ndarray, ties: Ties
) -> np.ndarray:
    rows = np.arange(scores.shape[0])
    targets = np.asarray(targets, dtype=np.int64)
    negatives = np.asarray(negatives, dtype=np.int64)
    t = scores[rows, targets][:, None]
    neg = scores[rows[:, None], negatives]
    beats = (neg >= t) if ties == "pessimistic" else (neg > t)
    beats &= negatives != targets[:, None]  # a sampled copy of the target is not a competitor
    return beats.sum(axis=1)


def _stage_targets(split: Split, stage: str) -> np.ndarray:
    if stage == "dev":
        return split.dev
    if stage == "test":
        return split.test
    raise ValueError(f"stage must be one of {_STAGES}, not {stage!r}")


# -- list measures shared by the offline job and the de-bias experiment ----------------------
HEAD_FRACTION = 0.2


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


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank."""
    _, inv, counts = np.unique(np.asarray(values, dtype=np.float64), return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    return (upper - (counts - 1) / 2.0)[inv.reshape(-1)]


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U; ties count one half)."""
    labels = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = average_ranks(scores)
    return float((r[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def head_of(n_items: int, split: Split) -> np.ndarray:
    """Mask of the top-20% items by training interactions: the de-bias head."""
    return head_items(np.bincount(np.concatenate(split.train), minlength=n_items))

"""Typed containers for an implicit-feedback dataset and its chronological split.

Internal indices are dense: users ``0..n_users-1`` and items ``0..n_items-1``. Raw ids from the
source files are kept in ``user_ids`` / ``item_ids`` (strings) so bundles and the service can
translate both ways. Sequential models use ``n_items`` as their padding index.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from recsae import DataError


@dataclass(frozen=True)
class FeatureTable:
    """Binary attributes of entities (items or users), used to interpret latents.

    ``names`` are ``"group:value"`` strings, e.g. ``"genre:Horror"``, ``"decade:1990s"``,
    ``"popularity:top 10%"``, ``"gender:F"``; ``matrix[e, f]`` says whether entity ``e`` has
    feature ``f``.
    """

    names: list[str]
    matrix: np.ndarray  # bool, (n_entities, n_features)

    def __post_init__(self) -> None:
        if self.matrix.ndim != 2 or self.matrix.shape[1] != len(self.names):
            raise DataError(
                f"feature matrix shape {self.matrix.shape} does not match {len(self.names)} names"
            )
        if len(set(self.names)) != len(self.names):
            raise DataError("feature names must be unique")

    @property
    def groups(self) -> list[str]:
        return sorted({n.split(":", 1)[0] for n in self.names})

    def columns(self, group: str) -> list[int]:
        return [i for i, n in enumerate(self.names) if n.split(":", 1)[0] == group]

    def of(self, entity: int) -> list[str]:
        return [self.names[i] for i in np.flatnonzero(self.matrix[entity])]

    @staticmethod
    def empty(n_entities: int) -> "FeatureTable":
        return FeatureTable([], np.zeros((n_entities, 0), dtype=bool))

    @staticmethod
    def concat(tables: list["FeatureTable"]) -> "FeatureTable":
        tables = [t for t in tables if t.matrix.shape[1]]
        if not tables:
            raise DataError("concat needs at least one non-empty table")
        return FeatureTable(
            [n for t in tables for n in t.names], np.concatenate([t.matrix for t in tables], axis=1)
        )


@dataclass
class Dataset:
    """An implicit-feedback interaction log with item (and optional user) metadata.

    The log is sorted by (user, time, item) so each user's rows are one chronological block.
    """

    name: str
    user_ids: np.ndarray  # str, raw id per internal user index
    item_ids: np.ndarray  # str, raw id per internal item index
    users: np.ndarray  # int32, per interaction
    items: np.ndarray  # int32, per interaction
    times: np.ndarray  # int64 (unix seconds or any monotone clock), per interaction
    item_titles: list[str]
    item_features: FeatureTable
    user_features: FeatureTable | None = None
    meta: dict = field(default_factory=dict)  # provenance: source path, filters applied, counts

    def __post_init__(self) -> None:
        n = len(self.users)
        if n == 0:
            raise DataError(
                f"dataset {self.name!r} has no interactions: check the file and the filters "
                "(rating threshold, k-core)"
            )
        if not (len(self.items) == len(self.times) == n):
            raise DataError("users, items and times must have the same length")
        order = np.lexsort((self.items, self.times, self.users))
        if not np.array_equal(order, np.arange(n)):
            self.users, self.items, self.times = self.users[order], self.items[order], self.times[order]
        self.users = self.users.astype(np.int32, copy=False)
        self.items = self.items.astype(np.int32, copy=False)
        self.times = self.times.astype(np.int64, copy=False)
        if len(self.item_titles) != self.n_items:
            raise DataError(f"{len(self.item_titles)} titles for {self.n_items} items")
        if self.item_features.matrix.shape[0] != self.n_items:
            raise DataError("item_features must have one row per item")
        if self.user_features is not None and self.user_features.matrix.shape[0] != self.n_users:
            raise DataError("user_features must have one row per user")

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_interactions(self) -> int:
        return len(self.users)

    def sequences(self) -> list[np.ndarray]:
        """Each user's items in chronological order (index = internal user id)."""
        bounds = np.searchsorted(self.users, np.arange(self.n_users + 1))
        return [self.items[bounds[u] : bounds[u + 1]] for u in range(self.n_users)]

    def item_popularity(self) -> np.ndarray:
        return np.bincount(self.items, minlength=self.n_items)

    def summary(self) -> dict:
        return {
            "dataset": self.name,
            "users": self.n_users,
            "items": self.n_items,
            "interactions": self.n_interactions,
            "density": round(self.n_interactions / max(1, self.n_users * self.n_items), 5),
        }


@dataclass
class Split:
    """Chronological leave-one-out: last item -> test, second-to-last -> dev, rest -> train.

    ``dev[u]`` / ``test[u]`` are item indices, or -1 for users with too short a history (they
    keep everything in train and are not evaluated).
    """

    train: list[np.ndarray]
    dev: np.ndarray
    test: np.ndarray
    n_items: int

    @property
    def n_users(self) -> int:
        return len(self.train)

    def history(self, user: int, stage: str) -> np.ndarray:
        """Items the model may see before predicting ``stage`` ("dev" or "test")."""
        if stage == "dev":
            return self.train[user]
        if stage == "test":
            d = self.dev[user]
            return self.train[user] if d < 0 else np.append(self.train[user], d).astype(np.int32)
        raise ValueError(f"stage must be 'dev' or 'test', not {stage!r}")

    def full_history(self, user: int) -> np.ndarray:
        """Everything known about the user (what the service sees at serving time)."""
        h = self.history(user, "test")
        t = self.test[user]
        return h if t < 0 else np.append(h, t).astype(np.int32)


def has_time(ds: Dataset) -> bool:
    """Whether the log has a clock (False for a file loaded without a time column)."""
    return bool(ds.meta.get("has_time", True))


def split_description(ds: Dataset) -> str:
    """How :func:`leave_one_out` splits ``ds``, in words (job summary and manifest)."""
    if has_time(ds):
        return "chronological leave-one-out: each user's last item is the test item, the one before it dev"
    return (f"random leave-one-out (seed {int(ds.meta.get('split_seed', 0))}): the log has no time column, so "
            "each user's test and dev items are drawn at random from their items")


def leave_one_out(ds: Dataset, min_train: int = 1) -> Split:
    """Split each user's chronological sequence: last -> test, second-to-last -> dev.

    Without a clock (:func:`has_time` False) "last" means nothing: the test and dev items are
    drawn at random per user, seeded by ``ds.meta["split_seed"]`` (default 0) so every caller
    (job, re-interpretation, de-biasing) gets the same split; train keeps the file order.
    Users with fewer than ``min_train + 2`` interactions are kept whole in train (dev/test -1).
    """
    seqs = ds.sequences()
    dev = np.full(ds.n_users, -1, dtype=np.int32)
    test = np.full(ds.n_users, -1, dtype=np.int32)
    train: list[np.ndarray] = []
    rng = None if has_time(ds) else np.random.default_rng(int(ds.meta.get("split_seed", 0)))
    for u, s in enumerate(seqs):
        if len(s) >= min_train + 2:
            if rng is not None:
                t, d = rng.choice(len(s), 2, replace=False)
                rest = np.ones(len(s), bool)
                rest[[t, d]] = False
                s = np.concatenate([s[rest], s[[d, t]]])
            train.append(s[:-2].copy())
            dev[u], test[u] = s[-2], s[-1]
        else:
            train.append(s.copy())
    return Split(train=train, dev=dev, test=test, n_items=ds.n_items)

"""A small synthetic dataset with planted concepts: the default data and the interpretation oracle.

Items carry three attribute groups (``genre``, ``decade``, ``style``). A *concept* is one genre
(``genre:space opera``) or a genre conjoined with a decade or a style
(``genre:heist`` & ``style:animated``); its members are every item whose features include all of
the concept's features. Single-genre concepts and conjunctions use disjoint genres, so no concept
contains another.

Each user prefers a mixture of 1-3 concepts. Their sequence is a Markov walk: the next item comes
from the *current* concept (popular members more likely, no repeats); with probability
``p_switch`` the user drifts to another concept of their mixture, and with probability ``p_noise``
they pick any item by global popularity. So the recent items predict the next one (signal for a
sequential model), and a good user representation should encode the concepts (signal for an SAE).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from recsae import ConfigError
from recsae.data.core import Dataset, FeatureTable
from recsae.data.features import add_popularity

__all__ = ["Concept", "PlantedTruth", "make_synthetic", "GENRES", "DECADES", "STYLES"]

GENRES = (
    "space opera", "film noir", "cozy mystery", "heist",
    "western", "romcom", "kaiju", "courtroom drama",
)  # fmt: skip
DECADES = ("1950s", "1970s", "1990s", "2010s")
STYLES = ("animated", "live action", "documentary")
_T0 = 1_600_000_000  # 2020-09-13, an arbitrary but fixed epoch for synthetic timestamps


@dataclass(frozen=True)
class Concept:
    """A planted concept: the features that define it and the items that have all of them."""

    name: str
    features: tuple[str, ...]
    items: np.ndarray  # sorted internal item indices


@dataclass
class PlantedTruth:
    """What the generator planted, to check what a model or an SAE recovered."""

    concepts: list[Concept]
    user_mixture: np.ndarray  # float (n_users, n_concepts); each row sums to 1
    interaction_concept: np.ndarray  # int, aligned with the dataset log; -1 = popularity noise
    params: dict = field(default_factory=dict)

    @property
    def n_concepts(self) -> int:
        return len(self.concepts)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.concepts]

    def user_concepts(self, user: int) -> np.ndarray:
        """Indices of the concepts in the user's mixture, heaviest first."""
        w = self.user_mixture[user]
        nz = np.flatnonzero(w > 0)
        return nz[np.argsort(-w[nz], kind="stable")]

    def membership(self, n_items: int) -> np.ndarray:
        """Bool (n_items, n_concepts): item i belongs to concept c."""
        m = np.zeros((n_items, self.n_concepts), dtype=bool)
        for c, concept in enumerate(self.concepts):
            m[concept.items, c] = True
        return m


def _concept_specs(n_concepts: int, rng: np.random.Generator) -> list[tuple[str, ...]]:
    """Concept definitions: single genres from half of the genres, conjunctions from the rest."""
    genres = [GENRES[i] for i in rng.permutation(len(GENRES))]
    half = len(genres) // 2
    n_single = min(half, (n_concepts + 1) // 2)
    specs: list[tuple[str, ...]] = [(f"genre:{g}",) for g in genres[:n_single]]
    partners = [f"decade:{d}" for d in DECADES] + [f"style:{s}" for s in STYLES]
    per_genre = [
        [(f"genre:{g}", partners[j]) for j in rng.permutation(len(partners))] for g in genres[half:]
    ]
    # Round-robin over genres so conjunctions spread over as many genres as possible.
    for rank in range(len(partners)):
        for cands in per_genre:
            if len(specs) < n_concepts:
                specs.append(cands[rank])
    return specs


def make_synthetic(
    n_users: int = 600,
    n_items: int = 400,
    n_concepts: int = 10,
    seed: int = 0,
    min_len: int = 30,
    max_len: int = 60,
    p_switch: float = 0.1,
    p_noise: float = 0.1,
    filler: float = 0.15,
) -> tuple[Dataset, PlantedTruth]:
    """Generate a dataset with planted concepts; identical output for identical arguments.

    ``filler`` is the share of items generated with random attributes (they join a concept only
    by chance); the others are generated to satisfy one concept's definition, so every concept
    has about ``n_items * (1 - filler) / n_concepts`` members or more.
    """
    max_concepts = len(GENRES) // 2 + (len(GENRES) - len(GENRES) // 2) * (
        len(DECADES) + len(STYLES)
    )
    if not 1 <= n_concepts <= max_concepts:
        raise ConfigError(f"n_concepts must be in 1..{max_concepts}, not {n_concepts}")
    if n_items < 5 * n_concepts:
        raise ConfigError(
            f"n_items={n_items} is too few for {n_concepts} concepts (need >= {5 * n_concepts})"
        )
    if n_users < 1 or not 3 <= min_len <= max_len:
        raise ConfigError(
            f"need n_users >= 1 and 3 <= min_len <= max_len (got {n_users}, {min_len}, {max_len})"
        )
    if not (0 <= p_switch <= 1 and 0 <= p_noise < 1 and 0 <= filler < 1):
        raise ConfigError(
            "p_switch, p_noise and filler must be probabilities (p_noise, filler < 1)"
        )
    rng = np.random.default_rng(seed)
    specs = _concept_specs(n_concepts, rng)

    # Items: each non-filler item is built to satisfy one concept; the remaining groups are random.
    n_home = int(round(n_items * (1 - filler)))
    home = np.full(n_items, -1)
    home[:n_home] = np.arange(n_home) % n_concepts
    home = home[rng.permutation(n_items)]
    attrs: list[dict[str, str]] = []
    for i in range(n_items):
        a = {
            "genre": GENRES[rng.integers(len(GENRES))],
            "decade": DECADES[rng.integers(len(DECADES))],
            "style": STYLES[rng.integers(len(STYLES))],
        }
        if home[i] >= 0:
            for feat in specs[home[i]]:
                group, value = feat.split(":", 1)
                a[group] = value
        attrs.append(a)
    names = (
        [f"genre:{g}" for g in GENRES]
        + [f"decade:{d}" for d in DECADES]
        + [f"style:{s}" for s in STYLES]
    )
    col = {n: j for j, n in enumerate(names)}
    feat_m = np.zeros((n_items, len(names)), dtype=bool)
    for i, a in enumerate(attrs):
        for group, value in a.items():
            feat_m[i, col[f"{group}:{value}"]] = True
    counters = {g: 0 for g in GENRES}
    titles = []
    for a in attrs:
        counters[a["genre"]] += 1
        titles.append(f"{a['genre'].title()} #{counters[a['genre']]}")

    concepts = []
    for spec in specs:
        members = np.flatnonzero(feat_m[:, [col[f] for f in spec]].all(axis=1))
        label = " & ".join(f.split(":", 1)[1] for f in spec)
        concepts.append(Concept(name=label, features=spec, items=members))

    # Popularity: a long-tailed base weight shared by concept sampling and noise.
    pop = rng.lognormal(0.0, 1.3, size=n_items)
    concept_cum = [(c.items, pop[c.items]) for c in concepts]

    mixture = np.zeros((n_users, n_concepts))
    users, items, times, labels = [], [], [], []
    for u in range(n_users):
        k = min(n_concepts, int(rng.choice([1, 2, 3], p=[0.2, 0.4, 0.4])))
        chosen = rng.choice(n_concepts, size=k, replace=False)
        mixture[u, chosen] = rng.dirichlet(np.full(k, 2.0))
        weights = mixture[u, chosen]
        length = int(rng.integers(min_len, max_len + 1))
        seen = np.zeros(n_items, dtype=bool)
        current = int(rng.choice(chosen, p=weights))
        t = _T0 + int(rng.integers(0, 30 * 86400))
        for _ in range(length):
            if k > 1 and rng.random() < p_switch:
                current = int(rng.choice(chosen, p=weights))
            item, label = -1, -1
            if rng.random() >= p_noise:
                order = [current] + [int(c) for c in chosen if c != current]
                for c in order:  # fall back to another of the user's concepts when one is used up
                    members, w = concept_cum[c]
                    w = np.where(seen[members], 0.0, w)
                    if w.sum() > 0:
                        cum = np.cumsum(w)
                        item = int(
                            members[np.searchsorted(cum, rng.random() * cum[-1], side="right")]
                        )
                        label, current = c, c
                        break
            if item < 0:
                w = np.where(seen, 0.0, pop)
                if w.sum() == 0:
                    break  # the user has consumed the whole catalogue
                cum = np.cumsum(w)
                item = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
            seen[item] = True
            t += 60 + int(rng.exponential(6 * 3600))
            users.append(u)
            items.append(item)
            times.append(t)
            labels.append(label)

    items_a = np.asarray(items, dtype=np.int32)
    params = {
        "n_users": n_users, "n_items": n_items, "n_concepts": n_concepts, "seed": seed,
        "min_len": min_len, "max_len": max_len, "p_switch": p_switch, "p_noise": p_noise,
        "filler": filler,
    }  # fmt: skip
    ds = Dataset(
        name="synthetic",
        user_ids=np.array([str(u + 1) for u in range(n_users)]),
        item_ids=np.array([str(i + 1) for i in range(n_items)]),
        users=np.asarray(users, dtype=np.int32),
        items=items_a,
        times=np.asarray(times, dtype=np.int64),
        item_titles=titles,
        item_features=add_popularity(FeatureTable(names, feat_m), items_a, n_items),
        user_features=None,
        meta={
            "format": "synthetic",
            "source": "recsae.data.synthetic.make_synthetic",
            "params": params,
            "filters": {"min_rating": None, "kcore": 0},
            "counts": {"interactions": len(users), "users": n_users, "items": n_items},
        },
    )
    truth = PlantedTruth(
        concepts=concepts,
        user_mixture=mixture,
        interaction_concept=np.asarray(labels, dtype=np.int32),
        params=params,
    )
    return ds, truth

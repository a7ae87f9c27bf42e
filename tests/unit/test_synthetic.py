"""The synthetic dataset: deterministic, and the planted concepts really shape the sequences."""

from __future__ import annotations

import numpy as np
import pytest

from recsae import ConfigError
from recsae.data import Dataset, PlantedTruth, leave_one_out, make_synthetic


@pytest.fixture(scope="module")
def synth() -> tuple[Dataset, PlantedTruth]:
    return make_synthetic(seed=7)


def test_deterministic_given_seed(synth: tuple[Dataset, PlantedTruth]) -> None:
    ds, truth = synth
    ds2, truth2 = make_synthetic(seed=7)
    for a in ("users", "items", "times", "user_ids", "item_ids"):
        assert np.array_equal(getattr(ds, a), getattr(ds2, a)), a
    assert ds.item_titles == ds2.item_titles and ds.item_features.names == ds2.item_features.names
    assert np.array_equal(ds.item_features.matrix, ds2.item_features.matrix)
    assert truth.names == truth2.names and np.array_equal(truth.user_mixture, truth2.user_mixture)
    other, _ = make_synthetic(seed=8)
    assert not np.array_equal(other.items[:200], ds.items[:200])


def test_shape_and_defaults(synth: tuple[Dataset, PlantedTruth]) -> None:
    ds, truth = synth
    assert (ds.n_users, ds.n_items, truth.n_concepts) == (600, 400, 10)
    lengths = np.bincount(ds.users)
    assert lengths.min() >= 25 and lengths.max() <= 60
    assert 30 * 600 <= ds.n_interactions <= 60 * 600
    assert ds.item_features.groups == ["decade", "genre", "popularity", "style"]
    assert (ds.item_features.matrix[:, ds.item_features.columns("genre")].sum(axis=1) == 1).all()
    assert all(t.split(" #")[0].lower() in {g.split(":")[1] for g in ds.item_features.of(i)}
               for i, t in enumerate(ds.item_titles))  # fmt: skip
    assert ds.item_titles.count("Space Opera #1") <= 1
    # no item repeats within a user's sequence, times strictly increase
    for s in ds.sequences():
        assert len(np.unique(s)) == len(s)
    same_user = ds.users[1:] == ds.users[:-1]
    assert (np.diff(ds.times)[same_user] > 0).all()


def test_concepts_match_their_features(synth: tuple[Dataset, PlantedTruth]) -> None:
    ds, truth = synth
    names = ds.item_features.names
    for c in truth.concepts:
        assert 1 <= len(c.features) <= 2 and c.features[0].startswith("genre:")
        has_all = ds.item_features.matrix[:, [names.index(f) for f in c.features]].all(axis=1)
        assert np.array_equal(np.flatnonzero(has_all), c.items)
        assert len(c.items) >= 25
    singles = {c.features[0] for c in truth.concepts if len(c.features) == 1}
    conj_genres = {c.features[0] for c in truth.concepts if len(c.features) == 2}
    assert singles and conj_genres and not singles & conj_genres  # no concept contains another
    assert len(set(truth.names)) == truth.n_concepts


def test_users_concentrate_in_their_concepts(synth: tuple[Dataset, PlantedTruth]) -> None:
    ds, truth = synth
    member = truth.membership(ds.n_items)
    assert np.allclose(truth.user_mixture.sum(axis=1), 1)
    k = (truth.user_mixture > 0).sum(axis=1)
    assert set(k.tolist()) == {1, 2, 3}
    inside, chance = [], []
    for u, seq in enumerate(ds.sequences()):
        mine = member[:, truth.user_concepts(u)].any(axis=1)
        inside.append(mine[seq].mean())
        chance.append(mine.mean())
    assert np.mean(inside) > 0.8 and np.mean(chance) < 0.35
    # the heaviest concept is the most frequent generator label for most users
    labels = truth.interaction_concept
    top = []
    for u in range(0, ds.n_users, 5):
        mine = labels[(ds.users == u) & (labels >= 0)]
        top.append(
            np.bincount(mine, minlength=truth.n_concepts).argmax() == truth.user_concepts(u)[0]
        )
    assert np.mean(top) > 0.7


def test_sequential_signal(synth: tuple[Dataset, PlantedTruth]) -> None:
    """Consecutive items share a concept far more often than the user's mixture alone implies."""
    ds, truth = synth
    labels = truth.interaction_concept
    assert labels.shape == ds.items.shape
    assert 0.05 < (labels == -1).mean() < 0.2  # popularity noise
    member = truth.membership(ds.n_items)
    valid = labels >= 0
    assert member[ds.items[valid], labels[valid]].all()  # each label is a concept the item is in
    same_user = ds.users[1:] == ds.users[:-1]
    both = same_user & valid[1:] & valid[:-1]
    stay = (labels[1:] == labels[:-1])[both].mean()
    mix = truth.user_mixture[ds.users[1:][both]]
    by_chance = (mix**2).sum(axis=1).mean()  # P(two independent draws from the mixture agree)
    assert stay > 0.85 and stay > by_chance + 0.15
    split = leave_one_out(ds)
    assert (split.test >= 0).all()


def test_popularity_noise_is_long_tailed(synth: tuple[Dataset, PlantedTruth]) -> None:
    ds, _ = synth
    pop = np.sort(ds.item_popularity())[::-1]
    # users never repeat an item, which flattens popularity; the head still stands out
    assert pop[: len(pop) // 10].sum() > 0.18 * pop.sum()  # uniform would be 0.10
    assert pop[0] > 3 * np.median(pop)


def test_validation() -> None:
    with pytest.raises(ConfigError):
        make_synthetic(n_concepts=0)
    with pytest.raises(ConfigError):
        make_synthetic(n_items=20, n_concepts=10)
    with pytest.raises(ConfigError):
        make_synthetic(min_len=10, max_len=5)
    ds, truth = make_synthetic(n_users=50, n_items=120, n_concepts=12, seed=1, min_len=5, max_len=8)
    assert ds.n_users == 50 and truth.n_concepts == 12
    assert all(len(c.items) > 0 for c in truth.concepts)

"""Large catalogues are held packed (``recsae.bundle.PACK_FROM``): they must read exactly as the
lists they replace, find the same ids, and serve the same answers."""

from __future__ import annotations

import numpy as np
import pytest

from recsae import bundle as B

IDS = ["1", "10", "2", "héllo", "", "a" * 40, "\U0001f600x", "lone\udcffsurrogate", "z", "u" * 10_000]


def test_packed_strings_read_as_the_list():
    p = B.PackedStrings(IDS)
    assert len(p) == len(IDS) and list(p) == IDS and [p[i] for i in range(len(IDS))] == IDS
    assert p[-1] == IDS[-1] and p[np.int64(3)] == IDS[3] and p[2:5] == IDS[2:5] and p[::-2] == IDS[::-2]
    for bad in (len(IDS), -len(IDS) - 1):
        with pytest.raises(IndexError):
            p[bad]
    assert list(B.PackedStrings([])) == []


def test_packed_int_lists_read_as_the_lists():
    lists = [[], [3], [0, 1, 2], [], [7, 7]]
    p = B.PackedIntLists(lists)
    assert [p[i] for i in range(len(lists))] == lists and list(p) == lists and p[1:3] == lists[1:3]
    assert p[-1] == [7, 7]


def _catalog(ids):
    n = len(ids)
    return B.Catalog(list(ids), [f"title {i}" for i in range(n)], ["f0", "f1"],
                     [[i % 2] if i % 3 else [] for i in range(n)], np.arange(n))


def test_a_packed_catalogue_finds_what_the_dict_finds(monkeypatch):
    rng = np.random.default_rng(0)
    ids = IDS + [str(x) for x in rng.choice(10**6, 500, replace=False)]
    small = _catalog(ids)
    monkeypatch.setattr(B, "PACK_FROM", 1)
    packed = _catalog(ids)
    assert isinstance(packed.item_ids, B.PackedStrings) and isinstance(small.item_ids, list)
    probes = ids + ["", "1\0", "h", "héllo ", "a" * 41, "a" * 39, "0", "\udcff", "zz", "+1"]
    assert [packed.index_of(x) for x in probes] == [small.index_of(x) for x in probes]
    assert all(packed.index_of(x) == i for i, x in enumerate(ids))
    assert packed.to_json() == small.to_json()
    assert [packed.features_of(i) for i in range(len(ids))] == [small.features_of(i) for i in range(len(ids))]
    assert B.Catalog.from_json(packed.to_json()).to_json() == small.to_json()


def test_ids_whose_hashes_collide_are_told_apart_by_their_text(monkeypatch):
    monkeypatch.setattr(B, "_hash", lambda s: 7)  # every id in one bucket
    index = B._IdIndex(B.PackedStrings(IDS, keep_hashes=True))
    assert [index.get(x) for x in IDS] == list(range(len(IDS)))
    assert index.get("11") is None and index.get("u" * 9_999) is None


def test_a_packed_bundle_serves_the_same_answers(bundle, monkeypatch, tmp_path):
    from service.config import Settings
    from service.core import Core
    from service.options import RecommendOptions

    def answers(state):
        core = Core(Settings(bundle=str(bundle), redis_url=None, state_dir=str(tmp_path / state), warmup=False))
        core.start()
        try:
            users = [str(u) for u in core.bundle.users.user_ids[:5]]
            out = [core.recommend_user(u, RecommendOptions(k=10, explain=True)) for u in users]
            if core.engine.accepts_history:
                out.append(core.recommend_history(list(core.item_ids[3:8]), RecommendOptions(k=5, where="body")))
            return type(core.item_ids), out
        finally:
            core.close()

    kind, plain = answers("lists")
    monkeypatch.setattr(B, "PACK_FROM", 1)
    packed_kind, packed = answers("packed")
    assert kind is list and packed_kind is B.PackedStrings
    assert packed == plain

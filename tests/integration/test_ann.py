"""Approximate retrieval (``recsae.ann``): a bundle built by the offline job with ``--ann ivf``
(a synthetic log of 3,000 items), served in-process through ``service.core.Core``, answers like
the same bundle scored exactly (``RECSAE_ANN=off``): the same top-k for most users, with and
without suppression, seen items excluded, scores and explanations exact; an altered index file
is refused at load; without faiss an explicit ``--ann`` fails before training and a bundle with
an index is served exactly."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="recsae-prom-"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from recsae import BundleError, ConfigError, ann  # noqa: E402

pytest.importorskip("faiss", reason="faiss-cpu (the `ann` extra) is not installed: `make install` installs it")

from tests.conftest import BUNDLE_CACHE, SYNTHETIC_SETTINGS, build_test_bundle  # noqa: E402

pytestmark = pytest.mark.slow
N_ITEMS = 3000
RECALL_FLOOR = 0.95  # mean recall@10 against exact; the index was calibrated to 0.99 on these users


def synthetic_log(path: Path) -> Path:
    """A 3,000-item log with planted concepts (recsae.data.synthetic), as a CSV the job reads."""
    from recsae.data.synthetic import make_synthetic

    if not path.exists():
        ds, _ = make_synthetic(n_users=600, n_items=N_ITEMS, n_concepts=12, seed=3)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write("user_id,item_id,ts\n")
            for u, i, t in zip(ds.users, ds.items, ds.times):
                f.write(f"{ds.user_ids[u]},{ds.item_ids[i]},{t}\n")
        os.replace(tmp, path)
    return path


@pytest.fixture(scope="module")
def ann_bundle() -> Path:
    log = synthetic_log(BUNDLE_CACHE / "ann-log-3000.csv")
    spec = {"path": str(log), "user_col": "user_id", "item_col": "item_id", "time_col": "ts"}
    # 20 epochs: with the usual 4 the recommender gives nearly everyone the same popular items
    # (19 distinct items in 300 top-10s), which any index finds in one list
    return build_test_bundle("ann-ivf", "auto", None, **{**SYNTHETIC_SETTINGS, "data": spec, "ann": "ivf",
                                                        "train_params": {"epochs": 20, "patience": 20}})


def make_core(bundle: Path, tmp: Path):
    from service.config import Settings
    from service.core import Core

    c = Core(Settings(bundle=str(bundle), redis_url=None, redis_prefix=f"ann-{uuid.uuid4().hex[:8]}",
                      state_dir=str(tmp), warmup=False))
    c.start()
    return c


@pytest.fixture(scope="module")
def cores(ann_bundle, tmp_path_factory):
    """The bundle served with its index, and served exactly (RECSAE_ANN=off)."""
    with_index = make_core(ann_bundle, tmp_path_factory.mktemp("ann"))
    os.environ["RECSAE_ANN"] = "off"
    try:
        exact = make_core(ann_bundle, tmp_path_factory.mktemp("exact"))
    finally:
        del os.environ["RECSAE_ANN"]
    yield with_index, exact
    with_index.close()
    exact.close()


def opts(**kw):
    from service.options import RecommendOptions

    return RecommendOptions(**{"k": 10, "explain": True, **kw})


def test_bundle_holds_a_calibrated_index(ann_bundle, cores):
    from recsae.bundle import verify_bundle

    m = verify_bundle(ann_bundle)
    assert m["model"]["n_items"] > 2000  # the items the log's users touched
    assert m["ann"]["kind"] == "ivf" and ann.ANN_FILE in m["files"]
    # calibrated on the users' own queries (histories excluded) and really approximate here
    assert m["ann"]["calibration"]["recall_at_10"] >= ann.TARGET_RECALL
    assert m["ann"]["nprobe"] < m["ann"]["nlist"], m["ann"]
    with_index, exact = cores
    assert with_index.engine.ann is not None and exact.engine.ann is None
    assert with_index.engine.item_emb.flags.c_contiguous  # candidate rows are gathered
    assert with_index.bundle_info().metrics["ann"]["used"] and not exact.bundle_info().metrics["ann"]["used"]
    # the users' exact top-10s differ (else recall would be trivial)
    tops = {i["item_id"] for u in exact.bundle.users.user_ids[:150]
            for i in exact.recommend_user(str(u), opts(explain=False))["items"]}
    assert len(tops) >= 150, len(tops)


def recall(a: dict, b: dict) -> float:
    ia, ib = {i["item_id"] for i in a["items"]}, {i["item_id"] for i in b["items"]}
    return len(ia & ib) / max(1, len(ib))


def check_exact_items(core, body: dict, seen: set[str]) -> None:
    """Seen items absent; each returned score is the exact (steered) score, and bias +
    contributions + error adds up to it."""
    assert len(body["items"]) == 10
    assert not seen & {i["item_id"] for i in body["items"]}
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)
    for it in body["items"]:
        ex = it["explanation"]
        total = ex["bias"] + ex["error"] + sum(c["contribution"] for c in ex["contributions"])
        assert total == pytest.approx(it["score"], abs=5e-5)


@pytest.mark.parametrize("suppressed", [False, True], ids=["plain", "suppressed"])
def test_ann_answers_match_exact(cores, suppressed):
    with_index, exact = cores
    users = [str(u) for u in with_index.bundle.users.user_ids[:150]]
    recalls, same_lists = [], 0
    rows0, fallbacks0 = with_index.engine.ann.rows, with_index.engine.ann.fallbacks
    for uid in users:
        o = opts()
        if suppressed:  # the user's two strongest concepts suppressed: a different query vector
            first = exact.recommend_user(uid, opts())["active_latents"]
            top2 = sorted(first, key=lambda a: -a["activation"])[:2]
            o = opts(suppress={a["latent"]: 1.0 for a in top2})
        a, e = with_index.recommend_user(uid, o), exact.recommend_user(uid, o)
        if suppressed:
            assert {s["latent"] for s in a["suppressed"]} == set(o.suppress)
        u = with_index.bundle.users.index_of(uid)
        seen = {with_index.item_ids[i] for i in with_index.bundle.users.history(u)}
        check_exact_items(with_index, a, seen)
        recalls.append(recall(a, e))
        # an item both return has the same score in both: re-scoring is exact
        se = {i["item_id"]: i["score"] for i in e["items"]}
        for it in a["items"]:
            if it["item_id"] in se:
                assert it["score"] == pytest.approx(se[it["item_id"]], abs=2e-6)
        same_lists += [i["item_id"] for i in a["items"]] == [i["item_id"] for i in e["items"]]
    assert np.mean(recalls) >= RECALL_FLOOR, (np.mean(recalls), sorted(recalls)[:10])
    # answered from the index's candidates, not by the exact fallback
    assert with_index.engine.ann.rows - rows0 == len(users)
    assert with_index.engine.ann.fallbacks - fallbacks0 <= 0.05 * len(users)
    assert same_lists >= 0.8 * len(users), same_lists


def test_suppression_changes_the_ann_answer(cores):
    """Suppressing a user's strongest concepts is a different query to the index, not a filter."""
    with_index, _ = cores
    changed = 0
    for uid in [str(u) for u in with_index.bundle.users.user_ids[:20]]:
        base = with_index.recommend_user(uid, opts())
        top2 = sorted(base["active_latents"], key=lambda a: -a["activation"])[:2]
        sup = with_index.recommend_user(uid, opts(suppress={a["latent"]: 1.0 for a in top2}))
        changed += [i["item_id"] for i in sup["items"]] != [i["item_id"] for i in base["items"]]
    assert changed >= 10, changed


def test_seen_items_only_without_exclusion(cores):
    """exclude_seen=False may return seen items (the index is not filtered by history)."""
    with_index, exact = cores
    uid = str(with_index.bundle.users.user_ids[0])
    a = with_index.recommend_user(uid, opts(exclude_seen=False, explain=False))
    e = exact.recommend_user(uid, opts(exclude_seen=False, explain=False))
    assert recall(a, e) >= 0.8


def test_too_few_candidates_fall_back_to_exact(cores):
    """One list probed holds fewer items than asked: those rows are scored exactly."""
    with_index, exact = cores
    eng = with_index.engine
    users = np.arange(8)
    x = eng.encode_users(users)
    seen = [eng.bundle.users.history(int(u)) for u in users]
    depth = eng.ann.depth
    try:
        eng.ann.set_depth(1)
        k = 100  # > the ~47 items of one list
        ids, sc = eng.ann.top_items(x, k, seen)
    finally:
        eng.ann.set_depth(depth)
    from recsae.kernel import top_items

    ex_ids, ex_sc = top_items(x @ exact.engine.item_emb.T, k, seen)
    assert np.array_equal(ids, ex_ids)
    np.testing.assert_allclose(sc, ex_sc, atol=1e-5)


def test_history_request_uses_the_index(cores):
    with_index, exact = cores
    if not with_index.engine.accepts_history:
        pytest.skip("this bundle's model encodes user ids")
    hist = with_index.item_ids[:8]
    a = with_index.recommend_history(hist, opts())
    e = exact.recommend_history(hist, opts())
    check_exact_items(with_index, a, set(hist))
    assert recall(a, e) >= 0.7


def test_altered_index_is_refused(ann_bundle, tmp_path):
    from recsae.bundle import load_bundle
    from recsae.engine import Engine

    copy = tmp_path / "b"
    shutil.copytree(ann_bundle, copy)
    f = copy / ann.ANN_FILE
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"ann\.faiss does not match its manifest hash"):
        Engine(load_bundle(copy))
    f.unlink()
    with pytest.raises(BundleError, match=r"ann\.faiss is missing"):
        load_bundle(copy)


def test_without_faiss(ann_bundle, monkeypatch, caplog):
    """faiss missing: an explicit --ann fails before any training; a bundle with an index is
    served exactly, with a warning."""
    from recsae.bundle import load_bundle
    from recsae.engine import Engine
    from recsae.pipeline import JobConfig, run_job

    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` raises ImportError
    with pytest.raises(ConfigError, match=r"--ann ivf needs faiss-cpu"):
        run_job(JobConfig(dataset="synthetic", ann="ivf", quality_budget=0), Path(tempfile.mkdtemp()) / "never")
    assert ann.write_for_bundle(Path("/nonexistent"), np.zeros((ann.AUTO_MIN_ITEMS, 4), np.float32), "auto", None) is None
    with caplog.at_level(logging.WARNING, logger="recsae.ann"):
        eng = Engine(load_bundle(ann_bundle))
    assert eng.ann is None and "faiss-cpu is not installed" in caplog.text


def test_resolve():
    assert ann.resolve("auto", ann.AUTO_MIN_ITEMS - 1) is None
    assert ann.resolve("auto", ann.AUTO_MIN_ITEMS) == "ivf"
    assert ann.resolve("off", 10**7) is None and ann.resolve("hnsw", 10) == "hnsw"
    with pytest.raises(ConfigError, match="unknown --ann"):
        ann.resolve("fast", 10)

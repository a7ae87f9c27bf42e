"""The benchmark scripts' in-process parts still run against today's code: they call the
service's internals, which change under them (a stale call in ``catalogue_scale`` once went
unnoticed for sessions). A few calls each on the test bundle; nothing here is timed or compared
with a speed: the benchmarks themselves do that, side by side, in one run."""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks import batch_inprocess, catalogue_scale  # noqa: E402


@pytest.fixture
def prefix():
    import redis

    try:
        redis.Redis.from_url(catalogue_scale.SHARED_REDIS, socket_timeout=2).ping()
    except redis.RedisError as e:
        pytest.skip(f"no Redis at {catalogue_scale.SHARED_REDIS}: {e}")
    p = f"test-bench-{uuid.uuid4().hex[:8]}"
    yield p
    catalogue_scale.cleanup(p)


def test_catalogue_scale_times_each_stage_of_a_request(bundle, prefix):
    out = catalogue_scale.stage_times(bundle, 3, prefix)
    assert set(out) == {False, True}
    assert len(out[True]["explain"]) == 3 and len(out[True]["core_total"]) == 3
    assert out[False]["explain"] == [] and all(t > 0 for t in out[True]["explain"])


def test_catalogue_scale_builds_a_larger_synthetic_catalogue_that_serves(bundle, prefix, tmp_path, monkeypatch):
    from recsae.bundle import load_bundle

    monkeypatch.setattr(catalogue_scale, "BASE", Path(bundle))
    base = load_bundle(bundle)
    n = int(base.manifest["model"]["n_items"]) + 500
    big = catalogue_scale.synthetic_bundle(n, tmp_path / "big")
    assert len(load_bundle(big).catalog.item_ids) == n
    out = catalogue_scale.stage_times(big, 2, prefix)
    assert len(out[True]["core_total"]) == 2


def test_batch_inprocess_prices_explanation_per_batch_size(bundle, prefix, capsys):
    from service.core import Job
    from service.options import RecommendOptions

    cores = [batch_inprocess.started_core(bundle, catalogue_scale.SHARED_REDIS, prefix, plain) for plain in (True, False)]
    args = argparse.Namespace(bundle=bundle, size=None, batches="1,4", requests=8, rounds=1)
    batch_inprocess.price(cores, args, Job, RecommendOptions)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 1 |") or line.startswith("| 4 |")]
    assert len(rows) == 2 and all(len(r.split("|")) == 8 for r in rows), rows

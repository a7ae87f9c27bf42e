"""Concept drift: the pure math on hand-computed cases, and the sliding-window tracker."""

from __future__ import annotations

import math
import os
import re
import tempfile

os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="recsae-prom-"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from service.metrics import DriftTracker, drift_stats  # noqa: E402


def test_identical_distributions_have_no_drift():
    ref = np.array([0.2, 0.1, 0.0, 0.7])
    d = drift_stats(ref * 1000, 1000, ref)
    assert d is not None
    assert d.jsd == pytest.approx(0.0, abs=1e-12)
    assert d.psi == pytest.approx(0.0, abs=1e-12)
    # scale does not matter: counts over any window size give the same shares
    assert drift_stats(ref * 7, 35, ref).jsd == pytest.approx(0.0, abs=1e-12)


def test_two_bin_hand_case():
    # p = live shares (0.5, 0.5), q = reference shares (0.9, 0.1), m = (0.7, 0.3)
    # PSI = (0.5-0.9) ln(0.5/0.9) + (0.5-0.1) ln(0.5/0.1) = 0.235115 + 0.643775 = 0.878890
    # JSD = 0.5 [0.5 log2(5/7) + 0.5 log2(5/3)] + 0.5 [0.9 log2(9/7) + 0.1 log2(1/3)]
    #     = 0.5 * 0.125770 + 0.5 * 0.167817 = 0.146793
    d = drift_stats(np.array([50, 50]), 100, np.array([0.9, 0.1]), eps=0)
    psi = -0.4 * math.log(0.5 / 0.9) + 0.4 * math.log(5.0)
    jsd = 0.5 * (0.5 * math.log2(5 / 7) + 0.5 * math.log2(5 / 3)) + 0.5 * (
        0.9 * math.log2(9 / 7) + 0.1 * math.log2(1 / 3)
    )
    assert d.psi == pytest.approx(psi, rel=1e-9)
    assert d.psi == pytest.approx(0.878890, abs=1e-6)
    assert d.jsd == pytest.approx(jsd, rel=1e-9)
    assert d.jsd == pytest.approx(0.146793, abs=1e-6)
    # per-latent PSI terms sum to the PSI and live rates are counts / window
    assert d.per_latent.sum() == pytest.approx(d.psi)
    assert d.live_rate.tolist() == [0.5, 0.5]


def test_disjoint_distributions_have_jsd_one_and_finite_psi():
    d = drift_stats(np.array([10, 0]), 10, np.array([0.0, 0.3]))
    assert d.jsd == pytest.approx(1.0)
    assert math.isfinite(d.psi) and d.psi > 5  # eps-floored, large but finite


def test_symmetry_of_jsd_and_psi():
    a, b = np.array([0.6, 0.3, 0.1]), np.array([0.2, 0.2, 0.6])
    ab, ba = drift_stats(a * 10, 10, b), drift_stats(b * 10, 10, a)
    assert ab.jsd == pytest.approx(ba.jsd)
    assert ab.psi == pytest.approx(ba.psi)


def test_nothing_to_compare_returns_none():
    assert drift_stats(np.zeros(3), 0, np.ones(3)) is None
    assert drift_stats(np.zeros(3), 5, np.ones(3)) is None
    assert drift_stats(np.ones(3), 5, np.zeros(3)) is None
    with pytest.raises(ValueError):
        drift_stats(np.ones(3), 5, np.ones(4))


def test_top_latents_are_the_largest_psi_terms():
    ref = np.array([0.25, 0.25, 0.25, 0.25, 0.0])
    live = np.array([25, 25, 40, 10, 0])
    d = drift_stats(live, 100, ref, eps=0)
    top = d.top(2).tolist()
    assert set(top) == {2, 3}
    assert 4 not in d.top(10).tolist()  # never fires on either side: not a candidate


def test_tracker_window_evicts_old_requests():
    ref = np.array([0.5, 0.5, 0.0, 0.0])
    t = DriftTracker(ref, k=2, window=4, top=2)
    for _ in range(4):
        t.record(np.array([0, 1]))
    d = t.snapshot()
    assert t.n == 4 and d.jsd == pytest.approx(0.0, abs=1e-12)
    assert d.live_rate.tolist() == [1.0, 1.0, 0.0, 0.0]
    for _ in range(4):  # the window now holds only latents 2 and 3
        t.record(np.array([2, 3]))
    d = t.snapshot()
    assert t.n == 4
    assert d.live_rate.tolist() == [0.0, 0.0, 1.0, 1.0]
    assert d.jsd == pytest.approx(1.0)
    t.record(np.array([0]))  # one old request leaves, one new enters
    assert t.snapshot().live_rate.tolist() == [0.25, 0.0, 0.75, 0.75]


def test_exposition_has_only_current_top_n_and_drops_stale_series():
    ref = np.full(50, 1.0 / 50)
    t = DriftTracker(ref, k=3, window=10, top=3)
    for _ in range(10):
        t.record(np.array([1, 2, 3]))
    first = t.exposition()
    lines = [ln for ln in first.splitlines() if not ln.startswith("#")]
    assert len(lines) == 6  # 3 latents x (live, reference)
    latents = {int(m) for m in re.findall(r'latent="(\d+)"', first)}
    assert latents == {1, 2, 3}
    for _ in range(10):
        t.record(np.array([40, 41, 42]))
    second = t.exposition()
    assert {int(m) for m in re.findall(r'latent="(\d+)"', second)} == {40, 41, 42}
    assert 'kind="live",latent="40"} 1' in second
    assert 'kind="reference",latent="40"} 0.02' in second


def test_tracker_keeps_live_mean_activations_over_the_window():
    """How strongly a concept is present drifts too: latent 0 fires in every request (its rate
    cannot move) while its activation doubles; the window's mean follows, old requests leave."""
    ref = np.array([1.0, 0.5, 0.0])
    t = DriftTracker(ref, k=2, window=4, top=3, reference_mean_activation=np.array([2.0, 1.0, 0.0]))
    for _ in range(4):
        t.record(np.array([0, 1]), np.array([2.0, 1.0]))
    d = t.snapshot()
    assert d.live_mean_activation[:2].tolist() == [2.0, 1.0] and np.isnan(d.live_mean_activation[2])
    for _ in range(2):
        t.record(np.array([0]), np.array([4.0]))
    d = t.snapshot()
    assert d.live_rate[0] == 1.0  # the firing rate says nothing changed ...
    assert d.live_mean_activation[0] == pytest.approx(3.0)  # ... the strength says it did
    assert d.top_strength(3).tolist() == [0] and d.strength_shift()[0] == pytest.approx(np.log(1.5))
    assert d.live_mean_activation[1] == pytest.approx(1.0)
    text = t.exposition()
    assert 'recsae_concept_mean_activation{kind="live",latent="0"} 3' in text
    assert 'recsae_concept_mean_activation{kind="reference",latent="0"} 2' in text
    for _ in range(4):
        t.record(np.array([2]), np.array([0.5]))
    d = t.snapshot()
    assert np.isnan(d.live_mean_activation[0]) and d.live_mean_activation[2] == pytest.approx(0.5)


def test_a_batch_of_codes_counts_as_its_requests_one_by_one():
    """The service records a whole batch with ``record_codes``: firing (activation > 0) latents
    of each row, in order, through the ring: the same counts and sums as one request at a time,
    whatever the batch sizes and wherever the ring wraps. Checked against a recount of the
    window's rows (not against the tracker's own bookkeeping)."""
    rng = np.random.default_rng(4)
    ref = np.full(12, 1 / 12)
    window, k = 7, 4
    batched, single = DriftTracker(ref, k=k, window=window), DriftTracker(ref, k=k, window=window)
    rows = []
    for size in [3, 1, 5, 9, 2, 7, 4]:  # 9 > window: only its last 7 rows stay
        idx = np.array([rng.choice(12, k, replace=False) for _ in range(size)])
        acts = np.sort(rng.random((size, k)), axis=1)[:, ::-1].copy()
        acts[rng.random((size, k)) < 0.3] = 0.0  # some latents do not fire
        acts = -np.sort(-acts, axis=1)
        batched.record_codes(idx, acts)
        for r in range(size):
            firing = acts[r] > 0
            single.record(idx[r][firing], acts[r][firing])
            rows.append((idx[r][firing], acts[r][firing]))
        want_counts, want_sums = np.zeros(12), np.zeros(12)
        for lat, a in rows[-window:]:
            want_counts[lat] += 1
            want_sums[lat] += a
        for t in (batched, single):
            assert t.n == min(len(rows), window)
            counts, sums = t.totals()
            assert counts.tolist() == want_counts.tolist()
            assert np.allclose(sums, want_sums)
    b, s = batched.snapshot(), single.snapshot()
    assert b.jsd == pytest.approx(s.jsd) and np.allclose(b.live_rate, s.live_rate)


def test_batches_recorded_while_others_read_are_all_counted():
    """The batch thread appends while /metrics and /drift fold: no batch may fall between them."""
    import sys
    import threading

    t = DriftTracker(np.full(8, 1.0 / 8), k=2, window=100_000, top=2)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads take turns between nearly any two bytecodes
    stop = threading.Event()

    def read():
        while not stop.is_set():
            t.totals()

    def write(latent):
        for _ in range(3000):
            t.record_codes(np.array([[latent, 7]]), np.array([[1.0, 0.0]]))

    reader = threading.Thread(target=read)
    writers = [threading.Thread(target=write, args=(j,)) for j in range(4)]
    reader.start()
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    reader.join()
    sys.setswitchinterval(interval)
    counts, sums = t.totals()
    assert t.n == 12_000
    assert counts[:4].tolist() == [3000] * 4 and counts[7] == 0 and sums[:4].tolist() == [3000.0] * 4

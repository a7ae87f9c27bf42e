"""Prometheus metrics of the service, and concept drift.

Metrics are defined once, at module level (BentoML runs workers in Prometheus multiprocess
mode: metrics created per instance would collide). Drift compares which concepts fire for live
requests (a ring buffer over the last N requests) with the bundle's reference firing
frequencies (``reference_stats.npz``); the math is the pure function :func:`drift_stats`.

``recsae_concept_firing_rate`` is not a prometheus_client object: its label set (the top-N most
drifted latents) changes over time, and multiprocess mode cannot remove stale series. It is
rendered at scrape time (:meth:`DriftTracker.exposition`, hooked into ``/metrics``), so only the
current top-N latents are ever exported.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np


def _start_time(pid: int) -> str | None:
    """A process' start time (clock ticks since boot, Linux): with the pid, unique per process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def instance_multiproc_dir(state_dir: str, shared: str | None) -> str | None:
    """Give this ``bentoml serve`` instance its own Prometheus multiprocess directory.

    BentoML points every instance on a host at ``$BENTOML_HOME/prometheus_multiproc_dir`` and
    empties it at start: a second instance wipes the first's metric files, and each then reports
    the other's counts. Workers (children of the instance's main process) switch to
    ``{state_dir}/metrics/{main pid}-{its start time}`` before any metric value exists; folders
    of instances no longer running are removed. Other settings of the variable are left alone.
    ``shared``: PROMETHEUS_MULTIPROC_DIR as BentoML set it. Returns the folder to use, or None."""
    if not shared or Path(shared).name != "prometheus_multiproc_dir":
        return None
    ppid = os.getppid()
    me = f"{ppid}-{_start_time(ppid)}"
    root = Path(state_dir) / "metrics"
    try:
        (root / me).mkdir(parents=True, exist_ok=True)
        for old in root.iterdir():
            pid, _, start = old.name.partition("-")
            if old.name != me and pid.isdigit() and _start_time(int(pid)) != start:
                shutil.rmtree(old, ignore_errors=True)
    except OSError:
        return None  # keep BentoML's folder rather than fail to start
    return str(root / me)


if "_bentoml_impl" in (sys.argv[0] if sys.argv else ""):  # a `bentoml serve` worker
    from service.config import use_metrics_dir, worker_metrics_dirs

    _shared, _state = worker_metrics_dirs()
    _mine = instance_multiproc_dir(_state, _shared)
    if _mine is not None:
        use_metrics_dir(_mine)

from prometheus_client import Counter, Gauge, Histogram  # noqa: E402

# -- metric objects (module level) ------------------------------------------------------------
REQUEST_LATENCY = Histogram(
    "recsae_request_latency_seconds",
    "Time to answer a request, by route and explain flag (handler incl. JSON encoding).",
    ["route", "explain"],
    buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
BATCH_SIZE = Histogram(
    "recsae_batch_size",
    "Recommendation requests computed together in one batch (service.batching.Batcher).",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
)
HOTPATH_FALLBACK = Counter(
    "recsae_hotpath_fallback",
    "Requests whose explanation or body the compiled hot path (service/_hotpath.c) declined, "
    "computed in Python instead (answers unchanged, slower; the log says why once).",
    ["part"],
)
RECOMMENDATIONS = Counter(
    "recsae_recommendations_served",
    "Recommendation responses served, by input (user id or explicit history).",
    ["source"],
)
CACHE_HITS = Counter(
    "recsae_concept_cache_hits", "Concept lookups answered by the cache.", ["backend"]
)
CACHE_MISSES = Counter(
    "recsae_concept_cache_misses",
    "Concept lookups the cache did not hold (filled from the bundle and written back).",
    ["backend"],
)
CACHE_FALLBACK = Counter(
    "recsae_concept_cache_fallback",
    "Concept lookups answered from the in-process dictionary because Redis was unavailable.",
)
REDIS_ERRORS = Counter(
    "recsae_redis_errors", "Failed Redis round trips (connection, timeout, or error reply).", ["op"]
)
REDIS_ROUNDTRIPS = Counter("recsae_redis_roundtrips", "Redis round trips made, by purpose.", ["op"])
REDIS_UP = Gauge(
    "recsae_redis_up",
    "1 while Redis answers, 0 during an outage (in-process fallback in use); absent without "
    "REDIS_URL. Label: the deployment's key prefix.",
    ["prefix"],
    multiprocess_mode="livemin",
)
SUPPRESSION = Counter(
    "recsae_suppression_requests",
    "Requests that suppressed concepts, by policy ('adhoc' = explicit latents, 'other' = beyond "
    "the label limit).",
    ["policy"],
)
BASELINE_SUPPRESSION = Counter(
    "recsae_baseline_suppression_requests",
    "Requests that suppressed the baseline (the SAE decoder bias: what all users share, chiefly "
    "popularity), by policy as in recsae_suppression_requests; they are counted there too.",
    ["policy"],
)
DRIFT_JSD = Gauge(
    "recsae_concept_drift_jsd",
    "Jensen-Shannon divergence (base 2, 0..1) between live and reference concept firing.",
    multiprocess_mode="livemax",
)
DRIFT_PSI = Gauge(
    "recsae_concept_drift_psi",
    "Population stability index between live and reference concept firing.",
    multiprocess_mode="livemax",
)
DRIFT_WINDOW = Gauge(
    "recsae_concept_drift_window_requests",
    "Requests currently in the drift window (alert only once it is full enough).",
    multiprocess_mode="livemin",
)

class _ByTemplate:
    """A labelled metric whose ``endpoint`` label is mapped to a route template."""

    def __init__(self, metric: Any, template: Callable[[str], str]) -> None:
        self._metric, self._template = metric, template

    def labels(self, *args: Any, **kw: Any) -> Any:
        if "endpoint" in kw:
            kw["endpoint"] = self._template(kw["endpoint"])
        return self._metric.labels(*args, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._metric, name)


def bound_endpoint_labels(template: Callable[[str], str]) -> None:
    """BentoML labels its request metrics (``bentoml_service_request_*``) with the raw URL path:
    2,000 junk paths made 40,000 series (a 7.6 MB, 5 s scrape). Its traffic middlewares keep
    the metric objects as attributes made in ``_setup``; wrap them so ``endpoint`` is the route
    template (unknown paths one value)."""
    from bentoml._internal.server.http import instruments

    for cls in (instruments.RunnerTrafficMetricsMiddleware, instruments.HTTPTrafficMetricsMiddleware):
        if getattr(cls, "_recsae_bounded", False):
            continue
        setup = cls._setup

        def _setup(self: Any, *a: Any, _setup: Any = setup, **kw: Any) -> None:
            _setup(self, *a, **kw)
            for name, metric in list(vars(self).items()):
                if name.startswith("metrics_") and "endpoint" in getattr(metric, "_labelnames", ()):
                    setattr(self, name, _ByTemplate(metric, template))

        cls._setup = _setup
        cls._recsae_bounded = True


_POLICY_LABELS: set[str] = set()
_POLICY_LABEL_LIMIT = 32
_label_lock = threading.Lock()


def policy_label(name: str | None) -> str:
    """Bounded label values for SUPPRESSION: the first 32 policy names seen, then 'other'."""
    if name is None:
        return "adhoc"
    with _label_lock:
        if name in _POLICY_LABELS:
            return name
        if len(_POLICY_LABELS) < _POLICY_LABEL_LIMIT:
            _POLICY_LABELS.add(name)
            return name
    return "other"


# -- drift math (pure) ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Drift:
    jsd: float
    """Jensen-Shannon divergence, log base 2: 0 = identical, 1 = disjoint."""
    psi: float
    """Population stability index, sum (p - q) ln(p / q) over smoothed shares."""
    per_latent: np.ndarray
    """Each latent's PSI term (>= 0): how much it contributes to the drift."""
    live_rate: np.ndarray
    """Share of live requests in which each latent fired."""
    reference_rate: np.ndarray
    """Share of reference users in which each latent fired."""
    n: int
    live_mean_activation: np.ndarray | None = None
    """Each latent's mean activation over the live requests it fired in (NaN where it did not)."""
    reference_mean_activation: np.ndarray | None = None
    """The same over the reference users: a shift in *how strongly* a concept is present, which
    firing rates miss for a concept that fires for almost everyone (a reserved popularity latent)."""

    def top(self, n: int) -> np.ndarray:
        """Ids of the ``n`` most drifted latents (largest PSI term first, ties by id)."""
        return _top_by(self.per_latent, np.flatnonzero((self.live_rate > 0) | (self.reference_rate > 0)), n)

    def strength_shift(self) -> np.ndarray:
        """Per latent, ``|ln(live / reference mean activation)|`` weighted by its live firing rate
        (0 where either side is missing): a concept present as often as before but much more or
        less strongly ranks high; a rare one cannot dominate."""
        if self.live_mean_activation is None or self.reference_mean_activation is None:
            return np.zeros_like(self.live_rate)
        live, ref = self.live_mean_activation, self.reference_mean_activation
        ok = np.isfinite(live) & (live > 0) & (ref > 0)
        out = np.zeros_like(self.live_rate)
        out[ok] = np.abs(np.log(live[ok] / ref[ok])) * self.live_rate[ok]
        return out

    def top_strength(self, n: int) -> np.ndarray:
        """Ids of the ``n`` latents whose strength shifted most (:meth:`strength_shift`; ties by id)."""
        shift = self.strength_shift()
        return _top_by(shift, np.flatnonzero(shift > 0), n)


def _top_by(score: np.ndarray, candidates: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` candidates with the largest ``score``, ties by id."""
    return candidates[np.lexsort((candidates, -score[candidates]))][:n]


def drift_stats(
    live_counts: np.ndarray, n_live: int, reference_freq: np.ndarray, eps: float = 1e-4,
    live_sums: np.ndarray | None = None, reference_mean_activation: np.ndarray | None = None,
) -> Drift | None:
    """Compare live firing counts with reference firing frequencies.

    ``live_counts[j]``: requests (out of ``n_live``) in which latent ``j`` fired.
    ``reference_freq[j]``: share of reference users in which it fired. Both are turned into
    distributions over latents (shares of all firings). JSD needs no smoothing (0 log 0 = 0);
    PSI uses shares floored at ``eps`` and renormalised, so a latent that never fires on one
    side gives a large but finite term. Returns None when either side has no firing at all.
    """
    live = np.asarray(live_counts, dtype=np.float64)
    ref = np.asarray(reference_freq, dtype=np.float64)
    if live.shape != ref.shape:
        raise ValueError(f"live counts {live.shape} and reference {ref.shape} differ in shape")
    if n_live <= 0 or live.sum() <= 0 or ref.sum() <= 0:
        return None
    p, q = live / live.sum(), ref / ref.sum()
    m = 0.5 * (p + q)

    def kl(a: np.ndarray, b: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / b[nz])))

    jsd = min(1.0, max(0.0, 0.5 * kl(p, m) + 0.5 * kl(q, m)))
    if eps > 0:
        ps, qs = np.maximum(p, eps), np.maximum(q, eps)
        ps, qs = ps / ps.sum(), qs / qs.sum()
    else:
        ps, qs = p, q
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(ps == qs, 0.0, (ps - qs) * np.log(ps / qs))
    live_mean = None
    if live_sums is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            live_mean = np.where(live > 0, np.asarray(live_sums, dtype=np.float64) / live, np.nan)
    return Drift(jsd, float(terms.sum()), terms, live / n_live, ref, int(n_live), live_mean,
                 None if reference_mean_activation is None else np.asarray(reference_mean_activation, dtype=np.float64))


class DriftTracker:
    """Live firing counts over the last ``window`` requests (a ring buffer of latent ids)."""

    def __init__(self, reference_freq: np.ndarray, k: int, window: int = 2000, top: int = 10,
                 reference_mean_activation: np.ndarray | None = None):
        self.reference = np.asarray(reference_freq, dtype=np.float64)
        self.reference_mean_activation = reference_mean_activation
        self.window, self.top_n = int(window), int(top)
        self._ring = np.full((self.window, k), -1, dtype=np.int64)
        self._ring_acts = np.zeros((self.window, k), dtype=np.float64)
        self._counts = np.zeros(len(self.reference), dtype=np.int64)
        self._sums = np.zeros(len(self.reference), dtype=np.float64)
        self._has_acts = False  # live mean activations are reported once requests bring them
        self._pos = 0
        self._n = 0
        self._lock = threading.Lock()
        self._last_gauge = 0.0
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []  # batches not yet in the ring
        self._fold_lock = threading.Lock()  # one fold at a time, batches in order
        self._pending_lock = threading.Lock()  # held only to append to or take ``_pending``

    @property
    def n(self) -> int:
        self._fold()
        return self._n

    def record(self, latents: np.ndarray, acts: np.ndarray | None = None) -> None:
        """Count one request whose firing latents (activation > 0, distinct) are ``latents``, with
        their activations ``acts`` (same order) when known."""
        latents = np.asarray(latents, dtype=np.int64)[: self._ring.shape[1]]
        self._fold()  # after the batches recorded before it
        if acts is None:
            self._record(latents[None], np.zeros((1, len(latents))))
        else:
            self._has_acts = True
            self._record(latents[None], np.asarray(acts, dtype=np.float64)[None, : len(latents)])
        self._gauges_if_due()

    def record_codes(self, idx: np.ndarray, acts: np.ndarray) -> None:
        """Count several requests at once (the service records a batch in one call): row r's
        firing latents are ``idx[r]`` where ``acts[r] > 0``, with those activations."""
        with self._pending_lock:  # folded in by the next reader, or a second or 64 batches on
            self._pending.append((idx, acts))
            waiting = len(self._pending)
        if waiting >= 64 or time.monotonic() - self._last_gauge >= 1.0:
            self._fold()

    def _fold(self) -> None:
        """Enter the batches recorded since the last fold: the request path only appends (~1 us a
        batch; entering a batch of one costs ~17 us, nearly all of it per call)."""
        if not self._pending:
            return
        with self._fold_lock:
            with self._pending_lock:  # a batch appended meanwhile is in this fold or the next
                pending, self._pending = self._pending, []
            if not pending:
                return
            idx = np.concatenate([i for i, _ in pending]) if len(pending) > 1 else pending[0][0]
            acts = np.concatenate([a for _, a in pending]) if len(pending) > 1 else pending[0][1]
            acts = np.asarray(acts, dtype=np.float64)[:, : self._ring.shape[1]]
            firing = acts > 0
            self._has_acts = True
            self._record(np.where(firing, np.asarray(idx)[:, : acts.shape[1]], -1), np.where(firing, acts, 0.0))
        self._gauges_if_due()

    def _record(self, ids: np.ndarray, acts: np.ndarray) -> None:
        """Rows of latent ids (-1: none) and activations enter the ring, the oldest rows leave.

        The ring is written in at most two contiguous slices and the counts change by one
        ``bincount`` each way, so the cost barely grows with the rows entered at once."""
        rows = len(ids)
        if rows == 0:
            return
        if rows > self.window:  # only the last window's requests stay
            ids, acts, rows = ids[-self.window :], acts[-self.window :], self.window
        m, k = len(self._counts), ids.shape[1]
        with self._lock:
            start = self._pos
            for lo, hi, src in ((start, min(start + rows, self.window), 0),
                                (0, max(0, start + rows - self.window), self.window - start)):
                if hi <= lo:
                    continue
                ring, ring_acts = self._ring[lo:hi], self._ring_acts[lo:hi]
                gone = ring >= 0
                if gone.any():
                    self._counts -= np.bincount(ring[gone], minlength=m)
                    self._sums -= np.bincount(ring[gone], weights=ring_acts[gone], minlength=m)
                new, new_acts = ids[src : src + hi - lo], acts[src : src + hi - lo]
                ring[:, :k], ring[:, k:] = new, -1
                ring_acts[:, :k], ring_acts[:, k:] = new_acts, 0.0
                fired = new >= 0
                self._counts += np.bincount(new[fired], minlength=m)
                self._sums += np.bincount(new[fired], weights=new_acts[fired], minlength=m)
            self._pos = (start + rows) % self.window
            self._n = min(self._n + rows, self.window)

    def _gauges_if_due(self) -> None:
        if time.monotonic() - self._last_gauge >= 1.0:
            self.update_gauges()

    def totals(self) -> tuple[np.ndarray, np.ndarray]:
        """(firing count, activation sum) per latent over the window."""
        self._fold()
        with self._lock:
            return self._counts.copy(), self._sums.copy()

    def snapshot(self) -> Drift | None:
        self._fold()
        with self._lock:
            counts, sums, n = self._counts.copy(), self._sums.copy(), self._n
        return drift_stats(counts, n, self.reference, live_sums=sums if self._has_acts else None,
                           reference_mean_activation=self.reference_mean_activation)

    def update_gauges(self) -> Drift | None:
        d = self.snapshot()
        self._last_gauge = time.monotonic()
        DRIFT_WINDOW.set(self._n)
        if d is not None:
            DRIFT_JSD.set(d.jsd)
            DRIFT_PSI.set(d.psi)
        return d

    def exposition(self) -> str:
        """Prometheus text for the current top-N drifted latents (refreshes the gauges too)."""
        d = self.update_gauges()
        lines = [
            "# HELP recsae_concept_firing_rate Share of requests (live: last N in this worker; "
            "reference: the bundle's users) in which a latent fires; only the most drifted latents.",
            "# TYPE recsae_concept_firing_rate gauge",
        ]
        act_lines = [
            "# HELP recsae_concept_mean_activation Mean activation of a latent over the requests it fires "
            "in (live: last N in this worker; reference: the bundle's users); the same latents as above.",
            "# TYPE recsae_concept_mean_activation gauge",
        ]
        if d is not None:
            # the most drifted by firing (PSI) and by strength: at most 2N series of each metric
            for j in dict.fromkeys([*d.top(self.top_n).tolist(), *d.top_strength(self.top_n).tolist()]):
                lines.append(f'recsae_concept_firing_rate{{kind="live",latent="{j}"}} {d.live_rate[j]:.6g}')
                lines.append(
                    f'recsae_concept_firing_rate{{kind="reference",latent="{j}"}} {d.reference_rate[j]:.6g}'
                )
                for kind, values in (("live", d.live_mean_activation), ("reference", d.reference_mean_activation)):
                    if values is not None and np.isfinite(values[j]):
                        act_lines.append(f'recsae_concept_mean_activation{{kind="{kind}",latent="{j}"}} {values[j]:.6g}')
        return "\n".join(lines + act_lines) + "\n"

"""RecSAE Serve: TopK sparse autoencoders over a recommender's user representation.

Layers are one-way: ``service`` -> ``recsae`` -> numpy/onnxruntime. Modules that need torch
(``recsae.sae``, ``recsae.train``, ``models``) are never imported by the service.

``recsae`` itself is two layers (docs/ARCHITECTURE.md; tests/unit/test_layout.py holds them):
the **core** (``data``, ``kernel``, ``bundle``, ``concepts``, ``evaluate``, ``sae``, ``engine``,
``policy``), which the service and every job build on, and the **jobs** (``config``, ``stages``,
``quality``, ``pipeline``, ``interpret``, ``debias``, ``train``, ``cli``). The core never imports a job.
"""

__version__ = "0.1.0"


class RecSAEError(Exception):
    """Base class for failures a user can act on; the message says what to do."""


class DataError(RecSAEError):
    """The dataset is missing, malformed or empty."""


class ConfigError(RecSAEError):
    """An option is out of range or inconsistent with another."""


class BundleError(RecSAEError):
    """A model bundle is missing a file, has an altered file, or does not fit the service."""


def cpu_share() -> int:
    """CPUs this process can expect to get now (``--threads auto``), at least 1.

    The CPUs it may run on (affinity mask, cgroup v2 quota) less the 1-minute load average: on a
    busy machine, threads beyond that wait for a core and spin, so they slow a job down instead
    of speeding it up (benchmarks/threads.py).
    """
    import os

    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, round(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    return max(1, min(n, round(n - load)))

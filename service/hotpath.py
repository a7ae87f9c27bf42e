"""The hot path's per-request work in C (``service/_hotpath.c``), when the install compiled it:
``compiled_explain`` decomposes a batch's listed scores (``Core._explain_batch``) and
``compiled_items`` writes a body's items as JSON (``Core.finish``). Either is ``None`` when the
module is not built (a Bento or the Docker image: no compiler there), and the service computes the
same with the NumPy kernel (``recsae.kernel.SAEKernel.explain``) and dicts + orjson.

Why C: the service is bound by one core's worth of Python under the GIL; an explained request
adds ~35 small NumPy calls to its batch and ~100 small objects to its body, most of what
``explain=true`` costs under load (benchmarks/RESULTS.md, "The hot path"). Tests hold both paths
to the same answers: ``tests/unit/test_hotpath.py`` (the items' bytes equal orjson's for any
strings and numbers; the decomposition equals the kernel's) and the service tests, which serve
through it.
"""

from __future__ import annotations

import logging
from typing import Callable

from service.metrics import HOTPATH_FALLBACK

log = logging.getLogger("recsae.service")

API = 3
"""The ``_hotpath`` interface this code calls; a module built from another version is not used."""

compiled_explain: Callable[..., None] | None = None
compiled_items: Callable[..., bytes] | None = None
try:
    from service import _hotpath

    if getattr(_hotpath, "API", None) == API:
        compiled_explain, compiled_items = _hotpath.explain, _hotpath.items
    else:
        log.warning("service/_hotpath is a stale build (API %s, want %s): computing explanations in NumPy; "
                    "reinstall (make install) to rebuild it", getattr(_hotpath, "API", None), API)
except ImportError:  # not compiled (no C compiler at install, or a source tree copied as is)
    pass

KIND = "compiled" if compiled_items is not None else "python"
"""Whether it is built (``Core.hot_path``: whether it is used, ``RECSAE_COMPILED_HOTPATH``)."""

_declined: set[str] = set()


def declined(what: str, e: Exception) -> None:
    """The compiled hot path refused an input and the NumPy/Python path answers instead: counted
    every time (``recsae_hotpath_fallback_total``), logged once per kind of refusal."""
    HOTPATH_FALLBACK.labels(what).inc()
    key = f"{what}: {type(e).__name__}: {e}"
    if key not in _declined and len(_declined) < 100:
        _declined.add(key)
        log.warning("compiled hot path declined the %s (%s): computed in Python instead", what, e)

"""Swapping the served bundle (``POST /admin/reload``) and retiring the core it replaced."""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import logging
import threading
import time
from typing import Any

from recsae import BundleError, ConfigError
from service.core import Core
from service.errors import HTTPError
from service.schemas import ReloadResponse

log = logging.getLogger("recsae.service")


class Reloader:
    """One per service instance: at most one reload at a time; swapped-out cores awaiting
    ``retire`` (at most one is held, whatever the pace of reloads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._retiring: dict[Core, threading.Timer] = {}
        self._retiring_lock = threading.Lock()

    def reload(self, svc: Any, path: str | None) -> ReloadResponse:
        """Load, verify and warm ``path`` (default: the configured bundle) off to the side; swap
        ``svc.core`` only on success. A bad bundle raises a 422 and changes nothing."""
        if not self._lock.acquire(blocking=False):
            raise HTTPError(409, "a reload is already in progress")
        try:
            old = svc.core
            path = path or svc.settings.bundle
            t0 = time.perf_counter()
            new = None
            try:
                settings = dataclasses.replace(svc.settings, bundle=path)
                new = Core(settings)
                new.start()
            except (BundleError, ConfigError, OSError) as e:
                if new is not None:
                    new.close()
                if isinstance(e, OSError):  # e.g. a path component over 255 bytes (ENAMETOOLONG)
                    e = BundleError(f"cannot read {path!r}: {e.strerror or e}")
                log.warning("reload of %s refused, still serving %s: %s", path, old.bundle.version, e)
                raise HTTPError(422, f"bundle not loaded, still serving {old.bundle.version}: {e}") from None
            svc.settings, svc.core = settings, new  # the swap: requests read svc.core once each
            # The old core is closed 5 s later (in-flight calls on it finish first), or at the next
            # swap, whichever comes first: it has then been out of service for a whole reload, far
            # longer than a request. So back-to-back reloads hold at most one old core, not one per
            # reload of the last 5 s (30 quick reloads had left the worker ~100 MB larger).
            timer = threading.Timer(5.0, self.retire, (old,))
            with self._retiring_lock:
                pending = list(self._retiring)
                self._retiring[old] = timer
            for core in pending:
                threading.Thread(target=self.retire, args=(core,), daemon=True).start()
            timer.start()
            log.info("reloaded bundle %s from %s (was %s)", new.bundle.version, path, old.bundle.version)
            return ReloadResponse(path=str(path), bundle_version=new.bundle.version,
                                  bundle_hash=new.bundle.bundle_hash, previous_hash=old.bundle.bundle_hash,
                                  seconds=round(time.perf_counter() - t0, 3))
        finally:
            self._lock.release()

    def retire(self, old: Core) -> None:
        """Close a replaced core (once: by its timer or by the next swap, whichever comes first) and
        hand its memory back to the OS (glibc keeps freed arenas: without the trim every reload left
        the worker ~7 MB larger for the first ten)."""
        with self._retiring_lock:
            timer = self._retiring.pop(old, None)
        if timer is None:
            return  # already retired
        timer.cancel()
        old.close()
        del old
        # Core.start() froze every live object (gc.freeze), this core too while it still served; frozen
        # objects are never collected, so its reference cycles (batcher <-> core, tracker thread) would
        # stay until the next reload. Unfreeze, collect, freeze again: once per retired core.
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass  # not glibc

"""Concurrent recommendation requests computed together (``Batcher``): one encoder call, one
SAE encode and one scoring pass per batch (``service.core.Core.run_batch``)."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable


class Batcher:
    """Concurrent requests share one ``Core.run_batch`` call.

    An in-process batcher rather than BentoML's adaptive batching: that batches ``@bentoml.api``
    POST endpoints, while ``GET /recommend`` is a route of the mounted FastAPI app (and the
    per-request parts — policies, suppression, explanation — must stay per request anyway).
    No timer: one worker thread computes; whatever arrived while it computed (the event loop
    keeps accepting requests, as NumPy and ONNX Runtime release the GIL) is the next batch. A
    lone request therefore waits for nothing but a thread hop, and under load the batch grows
    with the load. At most ``max_batch`` requests per batch (bounds the (B, n_items) scores).
    """

    def __init__(self, run: Callable[[list[Any]], list[Any]], max_batch: int = 32,
                 observe: Callable[[int], None] | None = None):
        self.run, self.max_batch, self.observe = run, max(1, int(max_batch)), observe
        self._queue: list[tuple[Any, Any, Any]] = []
        self._lock = threading.Lock()
        self._busy = False
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="recsae-batch")
        self.sizes: deque[int] = deque(maxlen=1000)  # recent batch sizes (benchmarks read them)

    async def submit(self, job: Any) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._lock:
            self._queue.append((job, fut, loop))
            start, self._busy = not self._busy, True
        if start:
            try:
                self._pool.submit(self._drain)
            except RuntimeError:  # closed (this core was just swapped out by a reload): compute here
                self._drain()
        return await fut

    def _drain(self) -> None:
        while True:
            with self._lock:
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
                if not batch:
                    self._busy = False
                    return
            self.sizes.append(len(batch))
            if self.observe is not None:
                self.observe(len(batch))
            try:
                results: list[Any] = self.run([job for job, _, _ in batch])
            except Exception as e:  # noqa: BLE001 - a failure of the shared part fails this batch only
                results = [e] * len(batch)
            # one wake-up of each waiting event loop per batch, not one per request
            settled: dict[Any, list[tuple[Any, Any]]] = {}
            for (_, fut, loop), res in zip(batch, results):
                settled.setdefault(loop, []).append((fut, res))
            for loop, done in settled.items():
                try:
                    loop.call_soon_threadsafe(_settle_all, done)
                except RuntimeError:  # that event loop has closed: nobody waits for these
                    pass

    def close(self) -> None:
        self._pool.shutdown(wait=False)


def _settle_all(done: list[tuple[Any, Any]]) -> None:
    for fut, res in done:
        _settle(fut, res)


def _settle(fut: Any, res: Any) -> None:
    if fut.cancelled():
        return
    if isinstance(res, Exception):
        fut.set_exception(res)
    else:
        fut.set_result(res)

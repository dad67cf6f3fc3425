"""The read path of a scene: many range requests in flight, a bounded window of chunks ahead of the compute.

On an object store each GET waits tens of ms for its first byte and each connection carries tens of MB/s, so a
worker that reads from as many threads as it computes on mostly waits. :func:`run_chunks` decouples the two:

* ``read_concurrency`` I/O threads (each with its own GDAL handles, so its own HTTP connection) fetch and decode
  the chunks' inputs, one task per band and chunk (a 1024 x 1024 window of a 1024-block COG is one range
  request);
* ``compute_threads`` threads compute each chunk as soon as all its inputs are there;
* at most ``ahead`` chunks are held at once (being read, read, or being computed): a prefetch window of chunks,
  never the scene, so memory stays ``ahead x chunk`` however many threads read.

:class:`StripCache` serves a band that many chunks share (SCL: one 20 m block row covers two rows of 10 m
chunks) from one read per block row: a whole row of blocks is one merged range request, fetched once and
dropped when the window has moved past it, instead of one request per chunk and per thread handle.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

W = TypeVar("W")
R = TypeVar("R")


@dataclass
class PipelineStats:
    """What a run of :func:`run_chunks` did (for logs and tests)."""

    chunks: int = 0
    reads: int = 0
    max_held: int = 0  # chunks held at once (the prefetch bound)
    max_reads_in_flight: int = 0


def run_chunks(
    windows: Sequence[W],
    reads: Sequence[Callable[[W], Any]],
    compute: Callable[[W, list], R],
    *,
    read_concurrency: int,
    compute_threads: int,
    ahead: int,
    stats: PipelineStats | None = None,
) -> list[R]:
    """``compute(window, [read(window) for read in reads])`` for every window, in parallel; results in order.

    Reads run on ``read_concurrency`` threads, computes on ``compute_threads`` threads, and at most ``ahead``
    chunks are started and not yet computed. The first exception (a read or a compute) stops new chunks from
    starting; the chunks in flight finish or are skipped, then it is raised."""
    if read_concurrency < 1 or compute_threads < 1 or ahead < 1:
        raise ValueError("read_concurrency, compute_threads and ahead must be at least 1")
    stats = stats if stats is not None else PipelineStats()
    results: list[Any] = [None] * len(windows)
    errors: list[BaseException] = []
    cond = threading.Condition()
    held = 0
    reads_in_flight = 0

    def finished() -> None:
        nonlocal held
        with cond:
            held -= 1
            cond.notify_all()

    def fail(exc: BaseException) -> None:
        with cond:
            errors.append(exc)

    with (
        ThreadPoolExecutor(read_concurrency, thread_name_prefix="read") as io_pool,
        ThreadPoolExecutor(compute_threads, thread_name_prefix="compute") as cpu_pool,
    ):

        def computed(i: int, futures: list[Future]) -> None:
            try:
                if not errors:
                    results[i] = compute(windows[i], [f.result() for f in futures])
            except BaseException as exc:  # noqa: BLE001 - re-raised by the caller's thread
                fail(exc)
            finally:
                futures.clear()  # drop the chunk's inputs before signalling its slot free
                finished()

        def timed_read(read: Callable[[W], Any], window: W) -> Any:
            nonlocal reads_in_flight
            with cond:
                reads_in_flight += 1
                stats.max_reads_in_flight = max(stats.max_reads_in_flight, reads_in_flight)
            try:
                return None if errors else read(window)
            finally:
                with cond:
                    reads_in_flight -= 1

        for i, window in enumerate(windows):
            with cond:
                while held >= ahead and not errors:
                    cond.wait()
                if errors:
                    break
                held += 1
                stats.max_held = max(stats.max_held, held)
            stats.chunks += 1
            futures = [io_pool.submit(timed_read, read, window) for read in reads]
            stats.reads += len(futures)
            remaining = [len(futures)]
            lock = threading.Lock()

            def one_done(_f: Future, i=i, futures=futures, remaining=remaining, lock=lock) -> None:
                with lock:
                    remaining[0] -= 1
                    if remaining[0]:
                        return
                exc = next((f.exception() for f in futures if f.exception() is not None), None)
                if exc is not None:
                    fail(exc)
                    futures.clear()
                    finished()
                else:
                    cpu_pool.submit(computed, i, futures)

            for f in futures:
                f.add_done_callback(one_done)
        with cond:
            while held:
                cond.wait()
    if errors:
        raise errors[0]
    return results


class StripCache:
    """Rows of a raster read one block row at a time, each row read once and kept while recent.

    ``read_rows(row0, row1)`` reads rows ``[row0, row1)`` over the full width (one call per block row of the
    source). ``rows(r0, r1, c0, c1)`` returns a copy of that region, reading the block rows it touches unless
    they are held. At most ``keep`` block rows are held (least recently used dropped first); chunks visited
    roughly in order need one or two at a time.
    """

    def __init__(self, read_rows: Callable[[int, int], np.ndarray], height: int, strip: int, keep: int = 4):
        self.read_rows = read_rows
        self.height = height
        self.strip = strip
        self.keep = max(2, keep)
        self.reads = 0
        self._strips: OrderedDict[int, Future] = OrderedDict()
        self._lock = threading.Lock()

    def _strip(self, k: int) -> np.ndarray:
        with self._lock:
            fut = self._strips.get(k)
            owner = fut is None
            if owner:
                fut = Future()
                self._strips[k] = fut
                while len(self._strips) > self.keep:
                    oldest = next(iter(self._strips))
                    if oldest == k:
                        break
                    self._strips.pop(oldest)
            self._strips.move_to_end(k)
        if owner:
            try:
                r0 = k * self.strip
                data = self.read_rows(r0, min(r0 + self.strip, self.height))
                self.reads += 1
            except BaseException as exc:
                with self._lock:  # a failed read is not cached: the next caller retries it
                    if self._strips.get(k) is fut:
                        self._strips.pop(k)
                fut.set_exception(exc)
                raise
            fut.set_result(data)
        return fut.result()

    def rows(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        parts = []
        for k in range(r0 // self.strip, (r1 - 1) // self.strip + 1):
            data = self._strip(k)
            s0 = k * self.strip
            parts.append(data[max(r0, s0) - s0 : min(r1, s0 + data.shape[0]) - s0, c0:c1])
        return parts[0].copy() if len(parts) == 1 else np.concatenate(parts)

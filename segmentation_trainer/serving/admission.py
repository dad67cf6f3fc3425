"""Admission and one-at-a-time inference within a worker process (:data:`GATE`, one per process)."""

from __future__ import annotations

import threading
import time


class InferenceGate:
    """Admission and serialisation of inferences within a worker process (the math already uses the worker's
    cores): at most ``limit`` invocations are admitted (one runs, the others wait for the slot, each until its
    deadline), the rest are refused at once so threads stay free for /ping. It also tells the worker's accept
    loop whether it is busy (idle workers take new connections first) and the watchdog since when the running
    inference runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._in_flight = 0
        self.running_since: float | None = None

    @property
    def busy(self) -> bool:
        return self._in_flight > 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def admit(self, limit: int) -> bool:
        """Count one more invocation in this worker, unless ``limit`` are already in."""
        with self._count_lock:
            if self._in_flight >= limit:
                return False
            self._in_flight += 1
            return True

    def leave(self) -> None:
        with self._count_lock:
            self._in_flight -= 1

    def acquire(self, timeout: float) -> bool:
        """The inference slot, waiting at most ``timeout`` seconds."""
        if not self._lock.acquire(timeout=max(0.0, timeout)):
            return False
        self.running_since = time.monotonic()
        return True

    def release(self) -> None:
        self.running_since = None
        self._lock.release()

    def __enter__(self) -> InferenceGate:  # admitted and holding the slot, without limits (scripts, tests)
        with self._count_lock:
            self._in_flight += 1
        self._lock.acquire()
        self.running_since = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self.leave()


GATE = InferenceGate()  # one per worker process

"""Slow work off the poll thread: the ring buffer is drained by a loop that only decodes, enriches
and spools; anything that can take long (walking the cgroup tree to extend policy to new jobs,
hashing a large executable, killing) is queued here and done by one background thread."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, name: str, max_queued: int = 10_000) -> None:
        self.name = name
        self._q: queue.Queue = queue.Queue(maxsize=max_queued)
        self.done = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable, *args) -> bool:
        """Queue fn(*args); never blocks the caller (a full queue drops and counts)."""
        try:
            self._q.put_nowait((fn, args))
            return True
        except queue.Full:
            self.dropped += 1
            if self.dropped & (self.dropped - 1) == 0:
                log.error("%s: work queue full, dropped %d task(s)", self.name, self.dropped)
            return False

    def _run(self) -> None:
        while True:
            item = self._q.get()
            try:
                if item is None:
                    return
                fn, args = item
                fn(*args)
                self.done += 1
            except Exception:
                log.exception("%s: background task failed", self.name)
            finally:
                self._q.task_done()

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued so far is done (tests, clean stop)."""
        finished = threading.Event()
        threading.Thread(target=lambda: (self._q.join(), finished.set()), daemon=True).start()
        return finished.wait(timeout)

    def close(self) -> None:
        try:
            self._q.put(None, timeout=5)
        except queue.Full:
            return
        self._thread.join(5)

"""Detection off the ack path: ingest hands committed batches here, one thread evaluates them.

Acks go out as soon as a batch is committed, whatever detection is doing (a
slow rule or a policy reload holding the lock cannot stall other agents). The
queue is bounded in events; past the bound, batches are not evaluated, counted
in ``skipped`` and logged (they stay stored and queryable).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)


class DetectionWorker:
    def __init__(self, detect: Callable[[str, list], None], max_events: int = 200_000) -> None:
        self.detect = detect
        self.max_events = max_events
        self.pending = 0
        self.skipped = 0
        self.evaluated = 0
        self._q: queue.Queue = queue.Queue()
        self._submitted: deque[float] = deque()     # monotonic submit time of each queued batch, oldest first
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="detection", daemon=True)
        self._thread.start()

    def submit(self, session, events: list) -> None:
        """Ingest listener: queue a committed batch for detection (never blocks)."""
        if not events:
            return
        with self._lock:
            if self.pending + len(events) > self.max_events:
                self.skipped += len(events)
                if self.skipped == len(events) or self.skipped % 10_000 < len(events):
                    log.error("detection is %d events behind: skipped %d events from %s (stored, not evaluated)",
                              self.pending, self.skipped, session.host_id)
                return
            self.pending += len(events)
            self._submitted.append(time.monotonic())
        self._q.put((session.host_id, events))

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            host, events = item
            try:
                self.detect(host, events)
            except Exception:
                log.exception("detection failed on a batch from %s", host)
            finally:
                with self._lock:
                    self.pending -= len(events)
                    self.evaluated += len(events)
                    if self._submitted:
                        self._submitted.popleft()
                self._q.task_done()

    def lag_seconds(self) -> float:
        """Age of the oldest batch not yet evaluated (0 when detection is caught up)."""
        with self._lock:
            return time.monotonic() - self._submitted[0] if self._submitted else 0.0

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far was evaluated (tests, shutdown)."""
        done = threading.Event()
        threading.Thread(target=lambda: (self._q.join(), done.set()), daemon=True).start()
        return done.wait(timeout)

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(5)

"""Detection as a durable consumer of the store.

Ingest commits and acks; detection reads committed events afterwards, in commit order, through a cursor kept
in the store (``cursors``), so a crash loses nothing: the next detector resumes where the cursor says. With
several collectors on one database, exactly one of them detects at a time: it holds the ``detector`` lease
(renewed every poll; another collector takes it over when it expires). Correlations see every host of a job,
whatever collector each host streams to. A detector that takes the lease first replays the recent past
(the longest correlation window) into its correlation state without alerting, so a correlation that spans a
failover still fires. Alerts are upserts by id and kill orders are outbox rows by id: re-evaluating events
after a crash between evaluation and cursor save repeats neither.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable

log = logging.getLogger(__name__)

CURSOR = "detector"
LEASE = "detector"


class DurableDetector:
    def __init__(self, store, evaluate: Callable[..., None], warm_window_s: Callable[[], float],
                 lease_ttl_s: float = 10.0, batch: int = 5000, poll_s: float = 0.2, owner: str = "") -> None:
        self.store = store
        self.evaluate = evaluate            # (host, events, emit=True) -> None  (PolicyManager.on_events)
        self.warm_window_s = warm_window_s  # the longest correlation window now in force
        self.lease_ttl_s, self.batch, self.poll_s = lease_ttl_s, batch, poll_s
        self.owner = owner or f"collector-{uuid.uuid4().hex[:12]}"
        self.leader = False
        self.evaluated = 0
        self.pending = 0                     # rows of the batch being evaluated
        self.skipped = 0                     # never: a durable consumer does not skip (kept for the metrics API)
        self.failures = 0
        self._lag_s = 0.0
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="detector", daemon=True)
        self._thread.start()

    # -- the ingest side: a hint that there is something to read ---------------------------------
    def submit(self, _session, events: list) -> None:
        if events:
            self._idle.clear()
            self._wake.set()

    def lag_seconds(self) -> float:
        return self._lag_s

    # -- the loop --------------------------------------------------------------------------------
    def _run(self) -> None:
        cursor: tuple = ()
        while not self._stop.is_set():
            try:
                if not self.store.take_lease(LEASE, self.owner, self.lease_ttl_s):
                    if self.leader:
                        log.warning("detector lease lost to another collector: standing by")
                    self.leader = False
                    self._idle.set()
                    self._wake.wait(self.poll_s * 5)
                    self._wake.clear()
                    continue
                if not self.leader:
                    self.leader = True
                    cursor = self.store.get_cursor(CURSOR)
                    self._warm_up()
                    log.info("detector lease taken by %s; reading from cursor %s", self.owner, cursor or "start")
                rows = self.store.read_committed(cursor, self.batch)
                if not rows:
                    self._lag_s = 0.0
                    self._idle.set()
                    self._wake.wait(self.poll_s)
                    self._wake.clear()
                    continue
                self._lag_s = max(0.0, (time.time_ns() - rows[0][2]) / 1e9) if rows[0][2] else 0.0
                self.pending = len(rows)
                self._evaluate_in_order(rows)
                cursor = rows[-1][0]
                self.store.set_cursor(CURSOR, cursor)      # after the alerts and orders are written
                self.evaluated += len(rows)
                self.pending = 0
            except Exception:   # the store is down, or a rule blew up: log, wait, go on
                self.failures += 1
                if self.failures & (self.failures - 1) == 0:
                    log.exception("detector loop failed (%d times so far)", self.failures)
                self._stop.wait(min(5.0, self.poll_s * 10))

    def _evaluate_in_order(self, rows) -> None:
        """Consecutive events of one host go together (the evaluator's unit), commit order kept."""
        host, run = None, []
        for _cursor, h, _ing, ev in rows:
            if h != host and run:
                self.evaluate(host, run)
                run = []
            host = h
            run.append(ev)
        if run:
            self.evaluate(host, run)

    def _warm_up(self) -> None:
        """Correlation state for the recent past, without alerting (a new leader's first duty)."""
        since = time.time_ns() - int(self.warm_window_s() * 1e9)
        rows = self.store.recent_events(since, 200_000)
        host, run = None, []
        for h, ev in rows:
            if h != host and run:
                self.evaluate(host, run, emit=False)
                run = []
            host = h
            run.append(ev)
        if run:
            self.evaluate(host, run, emit=False)
        if rows:
            log.info("detector warmed its correlation state on %d events of the last %.0f s", len(rows),
                     self.warm_window_s())

    # -- tests and shutdown ------------------------------------------------------------------------
    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until everything committed so far was evaluated (a read came back empty after this call)."""
        self._idle.clear()
        self._wake.set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._idle.wait(0.05) and self.leader and self.pending == 0:
                return True
        return False

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(5)

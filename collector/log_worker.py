"""``gpuguard worker``: the consumer side of the event log. Run as many as wanted.

Each worker says it is alive (``EventLog.members``) and leases the partitions that fall to it (partition p goes
to the (p mod n)-th live worker, so n workers split them evenly); it renews its leases every third of the lease
time, lets go of partitions that now fall to another worker, and takes over those whose owner died once their
lease expires. For each partition it holds, one thread reads entries after the partition's committed offset
and, per read:

1. loads the events into the store, one COPY per host (idempotent by (host, seq): a replayed entry stores
   nothing twice);
2. runs detection on the events it has not evaluated yet (per host, by seq), so alerts and kill orders follow
   from every event once; alerts are upserts by id and kill orders outbox rows by id, so a replay after a crash
   repeats neither; the host's collector delivers the order;
3. commits the offset (a store cursor ``log:<p>``) after both.

On taking a partition, the worker first replays the partition's recent entries (the longest correlation window)
up to the committed offset into its correlation state without alerting, so a correlation spanning a handover
still fires, once.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from collector.eventlog import EventLog, LogEntry
from collector.validate import clock_suspect, invalid_value, refused_gap
from gpuguard.v1 import collector_pb2 as cpb
from gpuguard.v1 import events_pb2 as pb

log = logging.getLogger(__name__)


def cursor_name(partition: int) -> str:
    return f"log:{partition}"


def assigned(partitions: int, members: list[str], owner: str) -> set[int]:
    """The partitions that fall to ``owner`` among ``members`` (sorted): an even split, the same on every worker
    that sees the same members."""
    if owner not in members:
        return set()
    i, n = members.index(owner), len(members)
    return {p for p in range(partitions) if p % n == i}


@dataclass
class PartitionState:
    partition: int
    offset: int = 0                                     # last entry stored and evaluated
    evaluated: dict[str, int] = field(default_factory=dict)   # host -> highest seq evaluated
    thread: threading.Thread | None = None
    stop: threading.Event = field(default_factory=threading.Event)


@dataclass
class WorkerStats:
    entries: int = 0
    events_stored: int = 0
    events_evaluated: int = 0
    malformed: int = 0
    failures: int = 0
    detect_failures: int = 0      # batches detection raised on (stored, not evaluated; logged)
    refused: int = 0              # forwarded events a store cannot keep, stored as gaps naming the value
    clock_suspect: int = 0        # forwarded events stamped more than a day from when the collector got them
    disagreeing: int = 0          # forwarded parts whose bodies' seqs are not the seqs the collector acked
    takeovers: int = 0
    lag_s: float = 0.0
    decode_cpu_s: float = 0.0     # CPU of each phase (thread time), for the bench's per-phase figures
    load_cpu_s: float = 0.0
    detect_cpu_s: float = 0.0


class LogWorker:
    def __init__(self, log_: EventLog, store, evaluate, warm_window_s, owner: str = "", lease_s: float = 10.0,
                 read_batch: int = 2000) -> None:
        self.log = log_
        self.store = store
        self.evaluate = evaluate              # (host, events, emit=True) -> None  (PolicyManager.on_events)
        self.warm_window_s = warm_window_s
        self.owner = owner or f"worker-{uuid.uuid4().hex[:12]}"
        self.lease_s = lease_s
        self.read_batch = read_batch
        self.held: dict[int, PartitionState] = {}
        self.stats = WorkerStats()
        self._stop = threading.Event()
        self._lock = threading.Lock()

    # -- leases ------------------------------------------------------------------------------------
    def rebalance(self) -> None:
        """One round: say we are alive, renew or take what falls to us, let go of the rest."""
        members = self.log.members(self.owner)
        want = assigned(self.log.partitions, members, self.owner)
        for p in sorted(set(self.held) - want):
            self._let_go(p, "it falls to another worker now")
        for p in sorted(want | set(self.held)):
            if self.log.claim(p, self.owner):
                if p not in self.held:
                    self._take(p)
            elif p in self.held:
                self._let_go(p, "its lease is held by another worker")

    def _take(self, p: int) -> None:
        state = PartitionState(p, offset=(self.store.get_cursor(cursor_name(p)) or (0,))[0])
        self._warm(state)
        state.thread = threading.Thread(target=self._consume, args=(state,), name=f"partition-{p}", daemon=True)
        self.held[p] = state
        self.stats.takeovers += 1
        log.info("worker %s: took partition %d (from offset %d)", self.owner, p, state.offset)
        state.thread.start()

    def _let_go(self, p: int, why: str, timeout_s: float | None = None) -> None:
        state = self.held.pop(p)
        state.stop.set()
        if state.thread is not None:
            state.thread.join(timeout_s or 10)     # a read blocked on a dead log is a daemon thread: not waited for
        self.log.release(p, self.owner, timeout_s)
        log.info("worker %s: let go of partition %d at offset %d (%s)", self.owner, p, state.offset, why)

    def _warm(self, state: PartitionState) -> None:
        """The partition's recent past, up to the committed offset, into the correlation state (no alerts)."""
        since = time.time_ns() - int(self.warm_window_s() * 1e9)
        entries = self.log.read_since(state.partition, since, state.offset, 200_000)
        for batch in self._batches(entries):
            self._evaluate(state, batch, emit=False)
        if entries:
            log.info("worker %s: partition %d warmed on %d entries of the last %.0f s", self.owner, state.partition,
                     len(entries), self.warm_window_s())

    # -- one partition -----------------------------------------------------------------------------
    def _consume(self, state: PartitionState) -> None:
        failures = 0
        while not state.stop.is_set() and not self._stop.is_set():
            try:
                entries = self.log.read(state.partition, state.offset, self.read_batch, 0.5)
                if entries:
                    self._handle(state, entries)
                failures = 0
            except Exception as exc:   # the log or the store is down: wait, retry from the committed offset
                failures += 1
                self.stats.failures += 1
                if failures & (failures - 1) == 0:
                    log.warning("worker %s: partition %d: %s: %s (retrying, %d so far)", self.owner,
                                state.partition, type(exc).__name__, exc, failures)
                state.stop.wait(min(2.0, 0.1 * failures))

    def _handle(self, state: PartitionState, entries: list[LogEntry]) -> None:
        t0 = time.thread_time()
        batches = self._batches(entries)
        per_host: dict[str, list[pb.Event]] = {}
        for b in batches:
            per_host.setdefault(b.host_id, []).extend(b.events)
        t1 = time.thread_time()
        stored = self.store.ingest_many(list(per_host.items())).stored     # one transaction, one COPY
        t2 = time.thread_time()
        for b in batches:
            self._evaluate(state, b, emit=True)
        t3 = time.thread_time()
        self.store.set_cursor(cursor_name(state.partition), (entries[-1].offset,))
        state.offset = entries[-1].offset
        with self._lock:
            self.stats.decode_cpu_s += t1 - t0
            self.stats.load_cpu_s += t2 - t1 + time.thread_time() - t3
            self.stats.detect_cpu_s += t3 - t2
            self.stats.entries += len(entries)
            self.stats.events_stored += stored
            if batches:
                self.stats.lag_s = max(0.0, (time.time_ns() - batches[-1].received_ns) / 1e9)

    def _batches(self, entries: list[LogEntry]) -> list[cpb.LogBatch]:
        out = []
        for e in entries:
            try:
                batch = cpb.LogBatch.FromString(e.payload)
            except DecodeError as exc:     # not ours: counted and skipped, the partition goes on
                self.stats.malformed += 1
                log.error("worker %s: log entry %d is not a LogBatch (%s): skipped", self.owner, e.offset, exc)
                continue
            if batch.unchecked:
                self._check_bodies(batch, e.offset)
            out.append(batch)
        return out

    def _check_bodies(self, batch: cpb.LogBatch, offset: int) -> None:
        """What a collector forwarding a RawBatch left to whoever decodes the bodies: the same checks its
        EventBatch path makes (collector/ingest.py), done here in place and counted."""
        events = batch.events
        if [ev.seq for ev in events] != list(batch.seqs):
            self.stats.disagreeing += 1
            log.error("worker %s: log entry %d from %s: event bodies disagree with the seqs the collector acked "
                      "(%d..%d): stored as a gap", self.owner, offset, batch.host_id, batch.seqs[0], batch.seqs[-1])
            first, last = batch.seqs[0], batch.seqs[-1]
            del events[:]
            events.add(seq=first, ts_ns=batch.received_ns, gap=pb.Gap(
                from_seq=first, to_seq=last, reason="event bodies disagreed with the seqs the collector acked"))
            return
        received = batch.received_ns
        for ev in events:
            why = invalid_value(ev)
            if why is not None:
                self.stats.refused += 1
                log.warning("worker %s: %s seq %d refused: %s; stored as a gap (the original stays in the log)",
                            self.owner, batch.host_id, ev.seq, why)
                ev.CopyFrom(refused_gap(ev, why, "worker"))
            elif clock_suspect(ev.ts_ns, received):
                ev.clock_suspect = True
                self.stats.clock_suspect += 1

    def _evaluate(self, state: PartitionState, batch: cpb.LogBatch, emit: bool) -> None:
        seen = state.evaluated.get(batch.host_id, 0)
        fresh = [ev for ev in batch.events if ev.seq > seen]
        if not fresh:
            return
        try:
            self.evaluate(batch.host_id, fresh, emit=emit)
        except Exception:   # a rule that blows up on one batch must not stop the partition (the events are stored)
            self.stats.detect_failures += 1
            log.exception("worker %s: detection failed on %s seq %d..%d (stored, not evaluated; %d so far)",
                          self.owner, batch.host_id, fresh[0].seq, fresh[-1].seq, self.stats.detect_failures)
        state.evaluated[batch.host_id] = fresh[-1].seq
        if emit:
            with self._lock:
                self.stats.events_evaluated += len(fresh)

    # -- the loop ----------------------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None, report_s: float = 10.0) -> None:
        stop = stop or self._stop
        last_report = time.monotonic()
        while not stop.is_set() and not self._stop.is_set():
            try:
                self.rebalance()
            except Exception as exc:   # the log is down: keep what we hold until the leases say otherwise
                log.warning("worker %s: rebalance failed: %s: %s", self.owner, type(exc).__name__, exc)
            if time.monotonic() - last_report >= report_s:
                last_report = time.monotonic()
                s = self.stats
                log.info("worker %s: partitions %s; %d entries, %d events stored, %d evaluated, lag %.1f s, "
                         "%d failures", self.owner, sorted(self.held), s.entries, s.events_stored,
                         s.events_evaluated, s.lag_s, s.failures)
            stop.wait(self.lease_s / 3)
        self.close()

    def close(self) -> None:
        if self._stop.is_set() and not self.held:
            return
        self._stop.set()
        for state in self.held.values():       # every partition's reader stops first, then the leases go back
            state.stop.set()
        deadline = time.monotonic() + 5.0      # a dead log must not hold a stopping worker: leases expire
        for p in list(self.held):
            try:
                self._let_go(p, "the worker stops", timeout_s=max(0.1, min(1.0, deadline - time.monotonic())))
            except Exception as exc:   # noqa: BLE001 - the log may be down; the lease expires
                log.debug("let go of %d: %s", p, exc)
        s = self.stats
        log.info("worker %s: %d events stored, %d evaluated; CPU: decode %.2f s, load %.2f s, detect %.2f s "
                 "(%.0f stored events per load CPU-second, %.0f evaluated per detect CPU-second)", self.owner,
                 s.events_stored, s.events_evaluated, s.decode_cpu_s, s.load_cpu_s, s.detect_cpu_s,
                 s.events_stored / s.load_cpu_s if s.load_cpu_s else 0,
                 s.events_evaluated / s.detect_cpu_s if s.detect_cpu_s else 0)

"""Agent messages -> validated, stored batches -> acks. No gRPC here: tests call it directly.

Every problem with a message becomes a ``StreamProblem`` with a gRPC-style code
and a message that says what was wrong; the stream and the server go on. An
agent speaks only for the host of its identity, and is acked only for what
was stored: a seq jump is stored as an explicit gap, never acked as data.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from collector.store.base import IngestResult, Store
from collector.validate import clock_suspect, invalid_value, refused_gap
from gpuguard import rawbatch
from gpuguard.credentials import Identity
from gpuguard.v1 import collector_pb2 as cpb
from gpuguard.v1 import events_pb2 as pb

log = logging.getLogger(__name__)

MAX_SEQ = rawbatch.MAX_SEQ          # stores keep seqs as signed 64-bit integers
MAX_EVENT_BYTES = 2 << 20          # one event, serialised (agents quarantine theirs beyond 1 MiB)


class StreamProblem(Exception):
    def __init__(self, code: str, message: str, seq: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.seq = seq              # the event it is about, when one (the agent quarantines it)


class Unauthenticated(StreamProblem):
    """Ends the stream: the identity may not speak for this host."""


class StoreUnavailable(StreamProblem):
    """Nothing was stored (corruption, disk full, locked): the agent keeps its spool and backs off."""

    def __init__(self, message: str, retry_after_ms: int = 5000) -> None:
        super().__init__("UNAVAILABLE", message)
        self.retry_after_ms = retry_after_ms


@dataclass
class AgentSession:
    host_id: str
    hostname: str
    boot_id: str
    stored_through: int
    policy_version: int = 0
    events: int = 0
    duplicates: int = 0
    identity: str = ""
    agent_started_ns: int = 0
    heartbeat_s: float = 0.0


EventListener = Callable[[AgentSession, list[pb.Event]], None]


class Ingestor:
    def __init__(self, store: Store, max_batch_events: int = 10_000, log_sink=None) -> None:
        self.store = store
        self.log_sink = log_sink             # collector.eventlog.LogSink: events go to the log, not the store
        self.sink_name = "event log" if log_sink is not None else "collector store"
        self.max_batch_events = max_batch_events
        self.listeners: list[EventListener] = []
        self.clock_suspect = 0
        self.refused = 0                     # events replaced by a gap: a value no store can keep
        self._store_error_logged = ""
        self.stored = 0                      # events written (metrics)
        self.batches = 0
        self.raw_batches = 0                 # RawBatches that passed the checks (older agents send EventBatch)
        self.duplicates = 0
        self.on_commit: Callable[[float], None] | None = None    # seconds per store commit (metrics)
        # Listeners get every event of a RawBatch forwarded to a log only when this says so (someone follows the
        # stream); otherwise only the ones health needs (status, capture loss, gaps): no decode per event.
        self.wants_all_events: Callable[[], bool] = lambda: True

    def hello(self, msg: cpb.Hello, who: Identity) -> AgentSession:
        host = msg.host.host_id
        if not host:
            raise StreamProblem("INVALID_ARGUMENT", "hello without host.host_id")
        if who.role != "agent" or host != who.host:
            log.warning("refused hello from identity %s (host %s) claiming host %r", who.name, who.host, host[:128])
            raise Unauthenticated("PERMISSION_DENIED",
                                  f"identity {who.name!r} may stream only for host {who.host!r}, not {host[:128]!r}")
        stored = self._guarded((self.log_sink or self.store).register_agent, host, msg.host.hostname, msg.host.boot_id,
                               msg.policy_version)
        if self.log_sink is not None and msg.first_unacked_seq:
            stored = max(stored, msg.first_unacked_seq - 1)   # acked before (by any collector): in the log
        log.info("agent %s (%s) connected as %s, version %s, stored through %d, agent spool starts at %d",
                 host, msg.host.hostname, who.name, msg.agent_version, stored, msg.first_unacked_seq)
        return AgentSession(host, msg.host.hostname, msg.host.boot_id, stored, msg.policy_version,
                            identity=who.name, agent_started_ns=msg.agent_started_ns, heartbeat_s=msg.heartbeat_s)

    def _guarded(self, fn, *args):
        """Run a store call; turn its failures into StoreUnavailable, logged once per distinct cause."""
        try:
            result = fn(*args)
        except self._sink_errors() as exc:
            raise self._unavailable(exc) from exc
        self._works()
        return result

    def _sink_errors(self) -> tuple[type[BaseException], ...]:
        return getattr(self.log_sink or self.store, "errors", (sqlite3.Error, OSError))

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        cause = f"{type(exc).__name__}: {exc}"
        if cause != self._store_error_logged:
            log.error("%s error, agents told to keep their spool and retry: %s", self.sink_name, cause)
            self._store_error_logged = cause
        return StoreUnavailable(f"{self.sink_name} unavailable ({cause}); nothing stored, keep the spool and retry")

    def _works(self) -> None:
        if self._store_error_logged:
            log.info("%s works again", self.sink_name)
            self._store_error_logged = ""

    def batch(self, session: AgentSession, batch: cpb.EventBatch) -> tuple[int, list[StreamProblem]]:
        """Store one batch; return (ack seq, non-fatal problems). Raises StreamProblem to reject it whole."""
        return self.events(session, list(batch.events))

    def raw_batch(self, session: AgentSession, raw: cpb.RawBatch) -> tuple[int, list[StreamProblem]]:
        """A RawBatch: with an event log, checked, deduped, gap-filled and published without decoding an event
        into a Python object (gpuguard/rawbatch.py); into a store, decoded and stored like an EventBatch."""
        if self.log_sink is not None:          # one forwarding path (the collector's loop awaits it directly)
            return asyncio.run(self.raw_batch_async(session, raw))
        return self.events(session, list(self._check_raw(raw).parsed.events))

    async def raw_batch_async(self, session: AgentSession, raw: cpb.RawBatch) -> tuple[int, list[StreamProblem]]:
        """``raw_batch`` with an event log, on the caller's event loop (the collector's gRPC loop): the checks are
        array work, the publish is awaited, no thread waits on it; listeners run in a thread only when a batch
        holds events for them."""
        view, problems, top, duplicates = self._prepare_raw(session, raw)
        if len(view):
            await self._commit_async(self.log_sink.ingest_raw_async(session.host_id, session.hostname,
                                                                    session.boot_id, view))
        self._account(session, stored=len(view), duplicates=duplicates, top=top)
        heard = self._heard(view)
        if heard:
            await asyncio.to_thread(self._notify, session, heard)
        else:
            self._notify(session, heard)
        return top, problems

    def _check_raw(self, raw: cpb.RawBatch) -> rawbatch.RawView:
        try:
            view = rawbatch.check(raw, self.max_batch_events, MAX_EVENT_BYTES)
        except rawbatch.RawBatchProblem as exc:
            raise StreamProblem(exc.code, exc.message) from None
        self.raw_batches += 1
        return view

    def _prepare_raw(self, session: AgentSession,
                     raw: cpb.RawBatch) -> tuple[rawbatch.RawView, list[StreamProblem], int, int]:
        """Checked, without what the host already stored, a gap record first when seqs jumped: (view, problems,
        top seq, duplicates)."""
        view = self._check_raw(raw)
        top, n = int(view.seqs[-1]), len(view)
        view = view.drop_through(session.stored_through)
        problems = []
        if len(view) and view.seqs[0] > session.stored_through + 1 and view.kinds[0] != rawbatch.BODY_FIELD["gap"]:
            hole = (session.stored_through + 1, int(view.seqs[0]) - 1)
            problems.append(self._hole_problem(session, hole))
            view = view.prepend(pb.Event(seq=hole[0], ts_ns=view.parsed.events[0].ts_ns,
                                         gap=pb.Gap(from_seq=hole[0], to_seq=hole[1], reason="not received")))
        fresh = len(view) - len(problems)          # a gap record prepended is not the agent's
        return view, problems, top, n - fresh

    def _heard(self, view: rawbatch.RawView) -> list[pb.Event]:
        """What listeners get of a forwarded batch: every event when someone follows the stream, else the few
        health needs."""
        if not len(view):
            return []
        return list(view.parsed.events) if self.wants_all_events() else view.notable()

    def events(self, session: AgentSession, events: list[pb.Event]) -> tuple[int, list[StreamProblem]]:
        """An agent batch's events, decoded: checked, deduped, gap-filled, stored (or published), listeners told."""
        if not events:
            raise StreamProblem("INVALID_ARGUMENT", "empty event batch")
        if len(events) > self.max_batch_events:
            raise StreamProblem("RESOURCE_EXHAUSTED",
                                f"batch of {len(events)} events exceeds the limit of {self.max_batch_events}")
        seqs = [e.seq for e in events]
        if seqs[0] == 0:
            raise StreamProblem("INVALID_ARGUMENT", "event with seq 0 (sequence numbers start at 1)")
        if seqs[-1] > MAX_SEQ:
            raise StreamProblem("OUT_OF_RANGE", f"seq {seqs[-1]} exceeds the maximum {MAX_SEQ}")
        if any(b <= a for a, b in zip(seqs, seqs[1:], strict=False)):
            raise StreamProblem("INVALID_ARGUMENT", f"batch seqs not strictly ascending: {seqs[:10]}...")
        problems = []
        fresh = [e for e in events if e.seq > session.stored_through]
        fresh = self._refuse_invalid(fresh, problems)
        self._flag_clock(fresh, session.host_id)
        new = list(fresh)   # what detection has not seen yet (before a gap record is prepended)
        if fresh and fresh[0].seq > session.stored_through + 1 and not fresh[0].HasField("gap"):
            hole = (session.stored_through + 1, fresh[0].seq - 1)
            problems.append(self._hole_problem(session, hole))
            fresh.insert(0, pb.Event(seq=hole[0], ts_ns=fresh[0].ts_ns,
                                     gap=pb.Gap(from_seq=hole[0], to_seq=hole[1], reason="not received")))
        if self.log_sink is not None:
            result = self._commit(self.log_sink.ingest, session.host_id, session.hostname, session.boot_id, fresh)
        else:
            result = self._commit(self.store.ingest, session.host_id, fresh)
        self._account(session, result.stored, result.duplicates + len(events) - len(new), seqs[-1])
        self._notify(session, new)
        return seqs[-1], problems

    @staticmethod
    def _hole_problem(session: AgentSession, hole: tuple[int, int]) -> StreamProblem:
        return StreamProblem("OUT_OF_RANGE", f"seq jumped from {session.stored_through} to {hole[1] + 1}: "
                             f"events {hole[0]}..{hole[1]} never arrived (stored what came, recorded the hole as a "
                             "gap)")

    def _commit(self, fn, *args) -> IngestResult:
        started = time.perf_counter()
        result: IngestResult = self._guarded(fn, *args)
        self._timed(started)
        return result

    async def _commit_async(self, coro) -> IngestResult:
        """``_commit`` of an awaited write: the same failure handling and timing."""
        started = time.perf_counter()
        try:
            result: IngestResult = await coro
        except self._sink_errors() as exc:
            raise self._unavailable(exc) from exc
        self._works()
        self._timed(started)
        return result

    def _timed(self, started: float) -> None:
        if self.on_commit is not None:
            self.on_commit(time.perf_counter() - started)

    def _account(self, session: AgentSession, stored: int, duplicates: int, top: int) -> None:
        session.events += stored
        session.duplicates += duplicates
        self.stored += stored
        self.batches += 1
        self.duplicates += duplicates
        session.stored_through = max(session.stored_through, top)

    def _notify(self, session: AgentSession, events: list[pb.Event]) -> None:
        for listener in self.listeners:
            try:
                listener(session, events)
            except Exception:  # detection must never stop ingest
                log.exception("event listener failed")

    def _refuse_invalid(self, events: list[pb.Event], problems: list[StreamProblem]) -> list[pb.Event]:
        """Events a store cannot keep as sent: each becomes a gap naming the value (the rest of the batch is
        stored and acked), and a StreamError with its seq tells the agent to keep the original in quarantine."""
        out = []
        for ev in events:
            why = invalid_value(ev)
            if why is None:
                out.append(ev)
                continue
            self.refused += 1
            problems.append(StreamProblem("INVALID_ARGUMENT", f"event seq {ev.seq} refused: {why}; stored as a gap, "
                                          "the agent keeps the event in its quarantine", seq=ev.seq))
            out.append(refused_gap(ev, why, "collector"))   # why quotes the value: no NUL
        return out

    def _flag_clock(self, events: list[pb.Event], host: str) -> None:
        """Stamped more than a day from our clock: stored as sent, flagged ``clock_suspect`` (a clock
        the timeline should not trust blindly), counted, logged on the first of each power of two."""
        now = time.time_ns()
        odd = [e for e in events if clock_suspect(e.ts_ns, now)]
        for e in odd:
            e.clock_suspect = True
        if odd:
            before = self.clock_suspect
            self.clock_suspect += len(odd)
            if before.bit_length() != self.clock_suspect.bit_length():
                log.warning("%s: %d event(s) stamped more than 24 h from this collector's clock (first seq %d); "
                            "stored with clock_suspect (%d so far)", host, len(odd), odd[0].seq, self.clock_suspect)

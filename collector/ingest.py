"""Agent messages -> validated, stored batches -> acks. No gRPC here: tests call it directly.

Every problem with a message becomes a ``StreamProblem`` with a gRPC-style code
and a message that says what was wrong; the stream and the server go on.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from collector.store.base import IngestResult, Store
from gpuguard.v1 import collector_pb2 as cpb
from gpuguard.v1 import events_pb2 as pb

log = logging.getLogger(__name__)


class StreamProblem(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Unauthenticated(StreamProblem):
    """Ends the stream: the agent is not one we know."""


@dataclass
class AgentSession:
    host_id: str
    hostname: str
    boot_id: str
    stored_through: int
    policy_version: int = 0
    events: int = 0
    duplicates: int = 0
    holes: list[tuple[int, int]] = field(default_factory=list)


EventListener = Callable[[AgentSession, list[pb.Event]], None]


class Ingestor:
    def __init__(self, store: Store, tokens: tuple[str, ...] = (), max_batch_events: int = 10_000) -> None:
        self.store = store
        self.tokens = tokens
        self.max_batch_events = max_batch_events
        self.listeners: list[EventListener] = []

    def hello(self, msg: cpb.Hello) -> AgentSession:
        if not msg.host.host_id:
            raise StreamProblem("INVALID_ARGUMENT", "hello without host.host_id")
        if self.tokens and not any(hmac.compare_digest(msg.token, t) for t in self.tokens):
            raise Unauthenticated("UNAUTHENTICATED", f"unknown agent {msg.host.host_id!r}: token not accepted")
        stored = self.store.register_agent(msg.host.host_id, msg.host.hostname, msg.host.boot_id,
                                           msg.policy_version)
        log.info("agent %s (%s) connected, version %s, stored through %d, agent spool starts at %d",
                 msg.host.host_id, msg.host.hostname, msg.agent_version, stored, msg.first_unacked_seq)
        return AgentSession(msg.host.host_id, msg.host.hostname, msg.host.boot_id, stored, msg.policy_version)

    def batch(self, session: AgentSession, batch: cpb.EventBatch) -> tuple[int, list[StreamProblem]]:
        """Store one batch; return (ack seq, non-fatal problems). Raises StreamProblem to reject it whole."""
        events = list(batch.events)
        if not events:
            raise StreamProblem("INVALID_ARGUMENT", "empty event batch")
        if len(events) > self.max_batch_events:
            raise StreamProblem("RESOURCE_EXHAUSTED",
                                f"batch of {len(events)} events exceeds the limit of {self.max_batch_events}")
        seqs = [e.seq for e in events]
        if seqs[0] == 0:
            raise StreamProblem("INVALID_ARGUMENT", "event with seq 0 (sequence numbers start at 1)")
        if any(b <= a for a, b in zip(seqs, seqs[1:], strict=False)):
            raise StreamProblem("INVALID_ARGUMENT", f"batch seqs not strictly ascending: {seqs[:10]}...")
        problems = []
        fresh = [e for e in events if e.seq > session.stored_through]
        new = list(fresh)   # what detection has not seen yet (before a gap record is prepended)
        if fresh and fresh[0].seq > session.stored_through + 1 and not fresh[0].HasField("gap"):
            hole = (session.stored_through + 1, fresh[0].seq - 1)
            session.holes.append(hole)
            problems.append(StreamProblem(
                "OUT_OF_RANGE", f"seq jumped from {session.stored_through} to {fresh[0].seq}: "
                f"events {hole[0]}..{hole[1]} never arrived (stored what came, recorded the hole)"))
            fresh.insert(0, pb.Event(seq=hole[0], ts_ns=fresh[0].ts_ns,
                                     gap=pb.Gap(from_seq=hole[0], to_seq=hole[1], reason="not received")))
        result: IngestResult = self.store.ingest(session.host_id, events if not problems else fresh)
        session.events += result.stored
        session.duplicates += result.duplicates
        session.stored_through = max(session.stored_through, result.stored_through, seqs[-1])
        for listener in self.listeners:
            try:
                listener(session, new)
            except Exception:  # detection must never stop ingest
                log.exception("event listener failed")
        return seqs[-1], problems

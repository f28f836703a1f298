"""The event log between ingest and the store (``--log``): what a collector publishes, what a worker reads.

A fleet too large for one database writer and one detector puts a partitioned, replicated log in the middle:
collectors authenticate, validate and dedupe, publish each agent batch to the log and ack the agent only once
the log has it at the configured replication; workers lease partitions, load them into the store in large
batches and run detection with per-job state. The partition key is the **job**: every event a correlation
needs about one job (all its hosts) lands in one partition, so one worker sees it all, in order.

``EventLog`` is the interface both sides use; ``collector/nats_log.py`` implements it on NATS JetStream. A
Kafka log fits the same shape: a partition is a Kafka partition, an offset a Kafka offset, ``publish`` an
idempotent producer's send awaited for ``acks=all``, ``mark`` / ``set_mark`` a compacted topic keyed by host,
``claim`` / ``members`` a consumer group's assignment (or the same lease protocol on a compacted topic).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
import uuid
import zlib
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from collector.store.base import IngestResult
from gpuguard.rawbatch import RawView
from gpuguard.v1 import collector_pb2 as cpb
from gpuguard.v1 import events_pb2 as pb

log = logging.getLogger(__name__)

DEFAULT_PARTITIONS = 16


class LogUnavailable(Exception):
    """The log did not take a batch at the configured replication (nodes down, no quorum, timeout): nothing is
    acked, the agent keeps its spool and retries."""


@dataclass(frozen=True)
class LogMessage:
    partition: int
    msg_id: str           # the log drops a second message with the same id (a retried batch)
    payload: bytes        # a serialised cpb.LogBatch


@dataclass(frozen=True)
class LogEntry:
    offset: int           # position in the log; a worker commits the last one it stored and evaluated
    payload: bytes
    ts_ns: int            # when the log took it


class EventLog(Protocol):
    partitions: int

    def publish(self, messages: list[LogMessage]) -> int:
        """Returns once every message is in the log at the configured replication (raises LogUnavailable);
        the number the log already had (duplicates by id)."""

    def mark(self, host_id: str) -> int:
        """The highest seq of the host the log has taken, as far as the collectors' saved marks say."""

    def save_marks(self, owner: str, marks: dict[str, int]) -> None:
        """One collector's marks (host -> highest seq published), replacing its previous ones."""

    def read(self, partition: int, after: int, limit: int, wait_s: float) -> list[LogEntry]:
        """Up to ``limit`` entries of the partition after offset ``after``, waiting up to ``wait_s`` for one."""

    def tail(self, partition: int) -> int:
        """The offset of the partition's last entry (0 while it has none): where a reader of what comes next
        starts."""

    def read_since(self, partition: int, since_ns: int, through: int, limit: int) -> list[LogEntry]:
        """Entries taken since ``since_ns`` up to offset ``through`` (a new owner's warm-up)."""

    def claim(self, partition: int, owner: str) -> bool:
        """Take or renew the lease on a partition; False while another owner holds it."""

    def release(self, partition: int, owner: str, timeout_s: float | None = None) -> None:
        """Give a partition back, best effort within timeout_s (an unreleased lease expires)."""

    def members(self, owner: str) -> list[str]:
        """Say ``owner`` is alive; the live workers, sorted."""

    def close(self) -> None: ...


def partition_key(host_id: str, ev: pb.Event) -> str:
    """The job, or the host for what belongs to no job (gaps, host processes)."""
    return f"job:{ev.job.id}" if ev.job.id else f"host:{host_id}"


def partition_of(key: str, partitions: int) -> int:
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % partitions


def message_id(host_id: str, boot_id: str, first_seq: int, last_seq: int, partition: int) -> str:
    """The id the log dedupes a part by: host, boot, first and last seq of the part, partition (a resend cut at
    other boundaries is not mistaken for a retry; its overlap is dropped by (host, seq) downstream)."""
    return f"{host_id}:{boot_id}:{first_seq}-{last_seq}:{partition}"


def split_batch(host_id: str, hostname: str, boot_id: str, events: list[pb.Event], partitions: int,
                received_ns: int | None = None) -> list[LogMessage]:
    """One agent batch -> one message per partition it touches (``message_id``: the log dedupes a retry), events
    kept in seq order."""
    parts: dict[int, list[pb.Event]] = {}
    of_job: dict[str, int] = {}                  # a batch holds few jobs: hash each once
    for ev in events:
        job = ev.job.id
        p = of_job.get(job)
        if p is None:
            p = of_job[job] = partition_of(partition_key(host_id, ev), partitions)
        parts.setdefault(p, []).append(ev)
    received = time.time_ns() if received_ns is None else received_ns
    out = []
    for p, evs in sorted(parts.items()):
        body = cpb.LogBatch(host_id=host_id, hostname=hostname, boot_id=boot_id, events=evs, received_ns=received)
        out.append(LogMessage(p, message_id(host_id, boot_id, evs[0].seq, evs[-1].seq, p), body.SerializeToString()))
    return out


def split_raw(host_id: str, hostname: str, boot_id: str, view: RawView, partitions: int,
              received_ns: int | None = None) -> list[LogMessage]:
    """``split_batch`` for a checked RawBatch: partitions from the batch's few distinct jobs, each partition's
    frames appended to a LogBatch header as the agent framed them (marked unchecked: the worker checks bodies)."""
    part_of_job = np.array([partition_of(f"job:{j}" if j else f"host:{host_id}", partitions) for j in view.job_ids],
                           dtype=np.int64)
    received = time.time_ns() if received_ns is None else received_ns
    if bool((part_of_job == part_of_job[0]).all()):      # the common case: the node runs one job
        groups = [(int(part_of_job[0]), np.arange(len(view)))]
    else:
        parts = part_of_job[view.jobs]
        groups = [(p, np.flatnonzero(parts == p)) for p in np.unique(parts).tolist()]
    out = []
    for p, index in groups:
        seqs = view.seqs[index]
        head = cpb.LogBatch(host_id=host_id, hostname=hostname, boot_id=boot_id, received_ns=received,
                            unchecked=True, seqs=seqs.tolist())
        out.append(LogMessage(p, message_id(host_id, boot_id, int(seqs[0]), int(seqs[-1]), p),
                              head.SerializeToString() + view.slices(index)))
    return out


def host_key(host_id: str) -> str:
    """A key any log accepts for a host id (ids are agent-chosen text)."""
    return "h" + hashlib.sha256(host_id.encode("utf-8", "surrogatepass")).hexdigest()[:40]


class LogSink:
    """What the Ingestor writes to in log mode: the agent registry stays in the store (best effort: the log,
    not the database, is the write path), events go to the log, and resume marks to the log once a second.

    A collector saves the marks of all its hosts in one write a second (``flush_marks``; a replicated write per
    batch would double the log's work), so one that dies leaves marks up to a second old. The agent's hello says
    where its spool starts (everything before was acked, so it is in the log) and the Ingestor resumes from the
    later of the two; what an agent resends between them is a duplicate the store and the workers drop by
    (host, seq).
    """

    errors = (LogUnavailable, TimeoutError, OSError)
    MARK_EVERY_S = 1.0
    FORGET_AFTER_S = 600.0        # a host silent this long leaves this collector's marks (it streams elsewhere)

    def __init__(self, log: EventLog, store=None, owner: str = "") -> None:
        self.log = log
        self.store = store
        self.owner = owner or f"collector-{uuid.uuid4().hex[:12]}"
        self.published = 0
        self.log_duplicates = 0
        self._lock = threading.Lock()
        self._marks: dict[str, int] = {}          # host -> highest seq published through this collector
        self._seen: dict[str, float] = {}         # host -> monotonic time of its last batch
        self._dirty = False

    def register_agent(self, host_id: str, hostname: str, boot_id: str, policy_version: int) -> int:
        if self.store is not None:
            try:
                self.store.register_agent(host_id, hostname, boot_id, policy_version)
            except Exception as exc:   # the registry is for queries; ingest goes on without it
                log.warning("agent %s: registry update failed (ingest goes on): %s",
                                                    host_id, exc)
        with self._lock:
            own = self._marks.get(host_id, 0)
        try:
            saved = self.log.mark(host_id)
        except LogUnavailable as exc:   # marks only save resends: the agent's hello says where its spool starts
            log.warning("agent %s: saved marks unreadable (%s); resuming from the agent's "
                                                "spool start", host_id, exc)
            saved = 0
        return max(saved, own)

    def ingest(self, host_id: str, hostname: str, boot_id: str, events: list[pb.Event]) -> IngestResult:
        result = IngestResult()
        if not events:
            return result
        messages = split_batch(host_id, hostname, boot_id, events, self.log.partitions)
        dup_messages = self.log.publish(messages)
        self._published(host_id, events[-1].seq, len(messages), dup_messages)   # ascending (the Ingestor checked)
        result.stored = len(events)
        return result

    async def ingest_raw_async(self, host_id: str, hostname: str, boot_id: str, view: RawView) -> IngestResult:
        """A checked RawBatch to the log, on the caller's event loop: the split is array work, the publish is
        awaited (a log without an async publish is called in a thread)."""
        messages = split_raw(host_id, hostname, boot_id, view, self.log.partitions)
        publish_async = getattr(self.log, "publish_async", None)
        if publish_async is not None:
            dup_messages = await publish_async(messages)
        else:
            dup_messages = await asyncio.to_thread(self.log.publish, messages)
        self._published(host_id, int(view.seqs[-1]), len(messages), dup_messages)
        return IngestResult(stored=len(view))

    def _published(self, host_id: str, top: int, messages: int, dup_messages: int) -> None:
        with self._lock:
            if top > self._marks.get(host_id, 0):
                self._marks[host_id] = top
            self._seen[host_id] = time.monotonic()
            self._dirty = True
        self.published += messages
        self.log_duplicates += dup_messages

    def flush_marks(self) -> int:
        """Save this collector's marks if they changed (the collector calls this every second and at stop)."""
        with self._lock:
            if not self._dirty:
                return 0
            cutoff = time.monotonic() - self.FORGET_AFTER_S
            for host in [h for h, t in self._seen.items() if t < cutoff]:
                self._seen.pop(host)
                self._marks.pop(host, None)
            snapshot, self._dirty = dict(self._marks), False
        try:
            self.log.save_marks(self.owner, snapshot)
        except LogUnavailable:
            with self._lock:
                self._dirty = True                 # next time
            raise
        return len(snapshot)

"""The agent's straight line: probe -> decode -> enrich -> sinks (printer, spool).

Runs the ring-buffer poll loop in the calling thread. Each poll's events are
decoded and enriched as one batch and handed to every sink as one list.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.batch import CONNECT_KINDS, ArenaBatch
from agent.capture_loss import DEFAULT_BUDGET_PER_S, CaptureLossReporter, set_budget
from agent.connect_batch import BulkConnects, bulk_ready
from agent.encoded import EncodedEvent, EncodedRun, count, pid_of
from agent.enrich import Enricher
from agent.events import DecodeStats
from agent.exe_hash import ExeHasher
from agent.gpu_usage import GpuUsageReporter
from agent.identity import HostIdentity
from agent.jobs import JobPattern, JobResolver, ensure_cgroup2_mount
from agent.lifecycle_batch import ShortLives
from agent.loader import CaptureProbes, Drained
from agent.process_table import ProcessTable
from agent.selfcheck import run_selfcheck
from gpuguard.v1 import events_pb2 as pb

log = logging.getLogger(__name__)

Record = pb.Event | EncodedEvent | EncodedRun   # what the sinks get: encoded events only when the enricher is told to
Sink = Callable[[list[Record]], None]
LOSS_REPORT_S = 1.0           # how often the per-job loss counters are read


@dataclass
class CaptureStats:
    records: int = 0
    decode: DecodeStats = field(default_factory=DecodeStats)
    kernel_lost: dict[str, int] = field(default_factory=dict)
    enrich_failed: int = 0
    short_lives: int = 0        # processes forked, exec'd and gone within a drain, made from the columns
    by_kind: Counter = field(default_factory=Counter)       # records by body kind (metrics)
    actions: Counter = field(default_factory=Counter)       # enforcement records by action (metrics)


class Capture:
    """Loads the probes and turns ring-buffer batches into enriched records."""

    def __init__(self, identity: HostIdentity | None = None, job_patterns: tuple[JobPattern, ...] = (),
                 ringbuf_pages: int = 4096, hash_executables: bool = True, verify_offsets: bool = True,
                 priority_pages: int = 2048, budget_per_s: int = DEFAULT_BUDGET_PER_S, consumer: str = "auto",
                 packet_sockets: bool = True) -> None:
        self.verify_offsets = verify_offsets
        self.identity = identity or HostIdentity.current()
        self.probes = CaptureProbes(ringbuf_pages=ringbuf_pages, priority_pages=priority_pages, consumer=consumer,
                                    watch_packet_sockets=packet_sockets)
        self.table = ProcessTable(self.identity.boot_id)
        self.hasher = ExeHasher() if hash_executables else None
        self.jobs = JobResolver(ensure_cgroup2_mount(), job_patterns)
        self.enricher = Enricher(self.identity, self.table, self.jobs, self.hasher)
        self.stats = CaptureStats()
        self.sinks: list[Sink] = []
        self.stop_event = threading.Event()
        self.ignore_pids: set[int] = set()   # the agent's own pid: its gRPC connects are not evidence
        self.injected: list = []             # deques of records made in user space (enforcement)
        self.held: list[pb.Event] = []           # records seen before the sinks were attached (start-up check)
        self.budget_per_s = budget_per_s
        self.gpu: GpuUsageReporter | None = None      # set by the agent when it samples GPUs (agent/gpu_usage.py)
        self.losses: CaptureLossReporter | None = None
        self._losses_due = 0.0

    def start(self) -> None:
        self.probes.load(self.jobs.root)  # attach first, then seed: nothing falls between the two
        self.enricher.gpu_drivers = self.probes.majors
        set_budget(self.probes.bpf, self.budget_per_s)
        self.losses = CaptureLossReporter(self.probes.bpf, self.jobs, self.identity, self.enricher.clock)
        seeded = self.table.seed()
        log.info("process table seeded with %d processes from /proc", seeded)
        if not self.verify_offsets:
            return
        try:
            run_selfcheck(self)
        except Exception:
            self.close()
            raise
        log.info("kernel struct offsets proven on a check process (argv, environment, parent, exit code)")

    def process(self, drained: Drained) -> list[Record]:
        records: list[Record] = []
        self.enricher.new_drain()
        for events, lives, bulk in self._parts(drained):
            if bulk is not None:
                bulk.note_leaving()            # before the drain's execs look for an ancestor that connected out
            self._enrich(events, records)
            if lives is not None:
                self._enrich_lives(lives, records)
            if bulk is not None:
                self._enrich_bulk(bulk, records)
        records.extend(r for r in self.enricher.connects.expired() if pid_of(r) not in self.ignore_pids)
        now = time.monotonic()
        if self.losses is not None and now >= self._losses_due:      # what the kernel could not report, per job
            self._losses_due = now + LOSS_REPORT_S
            records.extend(self.losses.report())
        if self.gpu is not None:
            records.extend(self.gpu.report(now))
        for source in self.injected:
            while source:
                records.append(source.popleft())
        self.stats.records += count(records)
        by_kind = self.stats.by_kind
        for rec in records:
            if type(rec) is EncodedRun:
                by_kind.update(rec.kind_counts())
                continue
            if type(rec) is EncodedEvent:
                by_kind[rec.body_name] += 1
                continue
            kind = rec.WhichOneof("body")
            by_kind[kind] += 1
            if kind == "enforcement":
                self.stats.actions[rec.enforcement.action] += 1
        if self.held and self.sinks:             # counted when first seen
            records[:0], self.held = self.held, []
        if records:
            for sink in self.sinks:
                sink(records)
        return records

    def _parts(self, drained: Drained):
        """(events in order, short lives as columns or None, connects as columns or None) per part of a drain: a
        batch's lives that can be made from its columns (agent/lifecycle_batch.py) and its connects that can
        (agent/connect_batch.py) are given apart, after its other records."""
        if drained.raw is not None or not self.enricher.encode_events:
            yield drained.events(self.stats.decode), None, None
            return
        for batch in drained.batches:
            lives, rest = self._short_lives(batch)
            if bulk_ready(rest, self.enricher):
                yield rest.events(self.stats.decode, skip=CONNECT_KINDS), lives, BulkConnects(rest, self.enricher,
                                                                                            self.ignore_pids)
            else:
                yield rest.events(self.stats.decode), lives, None

    def _short_lives(self, batch: ArenaBatch) -> tuple[ShortLives | None, ArenaBatch]:
        try:
            return ShortLives.split(batch, self.enricher, self.ignore_pids)
        except Exception:          # whatever a record holds, the ordered loop still takes the drain
            log.exception("could not look for short lives in a drain; the ordered loop takes it all")
            return None, batch

    def _enrich_lives(self, lives: ShortLives, records: list[Record]) -> None:
        """Short lives as columns; should that fail on some record nobody foresaw, the same records one at a time."""
        try:
            records.extend(lives.events(self.stats.decode))
            self.stats.short_lives += len(lives)
        except Exception:
            log.exception("short lives as columns failed; enriching them one at a time")
            self._enrich(lives.batch_of_them().events(self.stats.decode), records)

    def _enrich(self, events: list, records: list[Record]) -> None:
        for ev in events:
            try:
                rec = self.enricher.enrich(ev)
            except Exception as exc:   # an observed process must never stop the capture loop
                self.stats.enrich_failed += 1
                if self.stats.enrich_failed & (self.stats.enrich_failed - 1) == 0:   # 1st, 2nd, 4th, 8th...
                    log.exception("could not enrich a %s event of pid %d (%d so far): %s", type(ev).__name__,
                                  ev.hdr.pid, self.stats.enrich_failed, exc)
                continue
            if rec is not None and pid_of(rec) not in self.ignore_pids:
                records.append(rec)

    def _enrich_bulk(self, bulk: BulkConnects, records: list[Record]) -> None:
        """Connects as columns; should that fail on some record nobody foresaw, the same records one at a time."""
        try:
            records.extend(bulk.events())
            self.stats.decode.decoded += len(bulk)
        except Exception:
            log.exception("connects as columns failed; enriching them one at a time")
            self._enrich(bulk.batch.events(self.stats.decode, skip=frozenset(bulk.batch.arrays) - CONNECT_KINDS),
                         records)

    def poll_once(self, timeout_ms: int = 50) -> list[Record]:
        return self.process(self.probes.poll(timeout_ms))

    def kernel_lost(self) -> dict[str, int]:
        self.stats.kernel_lost = self.probes.lost_counts()
        return self.stats.kernel_lost

    def close(self) -> None:
        self.probes.close()
        if self.hasher:
            self.hasher.close()

    def __enter__(self) -> Capture:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

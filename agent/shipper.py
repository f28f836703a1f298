"""Spool -> collector over one long-lived gRPC stream, with acks, replay and backoff.

Protocol (proto/gpuguard/v1/collector.proto): the agent says Hello, the
collector answers with the highest seq it already stored for this host, the
agent sends batches read from the spool after that point (RawBatch: the spooled
bytes as they are, to a collector that says it takes them; EventBatch to older
ones), and the collector acks each batch once it is committed. Acked records leave the spool.
On any stream error the shipper reconnects with exponential backoff and
jitter and replays everything unacked; the collector drops duplicates.

Trust: the agent's credential travels as call metadata. Acks are believed
only up to the highest seq this stream actually sent, so no reply can make the
agent delete records it never shipped. Every batch stays under
``MAX_BATCH_BYTES``; an event over ``MAX_RECORD_BYTES`` is quarantined on disk
and replaced by a gap naming its seq, so one event can never block the stream.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np

from agent.identity import HostIdentity
from agent.spool import Spool
from gpuguard import __version__, rawbatch
from gpuguard.credentials import bearer
from gpuguard.rawbatch import FramedRun
from gpuguard.tls import open_channel
from gpuguard.v1 import collector_pb2 as cpb
from gpuguard.v1 import collector_pb2_grpc as cgrpc
from gpuguard.v1 import events_pb2 as pb

log = logging.getLogger(__name__)

GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 16 << 20),
    ("grpc.max_receive_message_length", 16 << 20),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]

CommandHandler = Callable[[cpb.CollectorMessage], cpb.AgentMessage | None]

MAX_RECORD_BYTES = 1 << 20
MAX_BATCH_BYTES = 4 << 20          # well under the collector's 8 MiB soft limit
QUARANTINE_KEEP = 1000
IDLE_WAIT_S = 1.0                  # with nothing to send, how long the send loop sleeps between looks


class Quarantine:
    """Events that could not be sent, kept on disk for forensics (bounded), each replaced by a gap."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.count = 0

    def put(self, ev: pb.Event, reason: str) -> pb.Event:
        seq = ev.seq
        self.count += 1
        log.error("quarantined event seq %d (%s): %s", seq, ev.WhichOneof("body"), reason)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            kept = sorted(self.dir.glob("seq-*.pb"))
            for old in kept[: max(len(kept) - QUARANTINE_KEEP + 1, 0)]:
                old.unlink()
            (self.dir / f"seq-{seq:020d}.pb").write_bytes(ev.SerializeToString())
        except OSError as exc:
            log.error("could not keep quarantined event %d on disk: %s", seq, exc)
        return pb.Event(seq=seq, ts_ns=ev.ts_ns,
                        gap=pb.Gap(from_seq=seq, to_seq=seq, reason=f"quarantined by the agent: {reason}"[:300]))


class Shipper:
    def __init__(self, target: str, spool: Spool, identity: HostIdentity, token: str | Callable[[], str] = "",
                 batch_max_events: int = 2048, batch_max_delay_s: float = 0.2, window_batches: int = 8,
                 on_command: CommandHandler | None = None, policy_version: Callable[[], int] = lambda: 0,
                 backoff_max_s: float = 10.0, tls: tuple[str, str, str] = ("", "", ""),
                 heartbeat_s: float = 10.0) -> None:
        self.targets = [t.strip() for t in target.split(",") if t.strip()] or [target]
        self._current = 0          # index into targets: failover moves to the next after a failed session
        self.spool = spool
        self.identity = identity
        self.token = token
        self.batch_max_events = batch_max_events
        self.batch_max_delay_s = batch_max_delay_s
        self.window_events = window_batches * batch_max_events
        self.on_command = on_command
        self.policy_version = policy_version
        self.backoff_max_s = backoff_max_s
        self.tls = tls   # (ca, cert, key); plaintext when ca is empty
        self.heartbeat_s = heartbeat_s
        self.started_ns = time.time_ns()
        self.quarantine = Quarantine(Path(spool.dir) / "quarantine")
        self.retry_after_s = 0.0
        self.stop_event = threading.Event()
        self.new_data = threading.Event()
        self.connected = threading.Event()
        self.sent_batches = 0
        self.reconnects = 0
        self.last_ack_mono = time.monotonic()
        self._outbox: queue.Queue | None = None

    def lag_seconds(self, now: float) -> float:
        """How long events have waited for an ack: 0 when the spool is empty."""
        return 0.0 if not self.spool.depth() else max(0.0, now - self.last_ack_mono)

    def notify(self, _records: list[dict] | None = None) -> None:
        """Sink hook: the spool has new records. Set only when clear: Event.set takes the event's lock and wakes
        waiters even when already set, once per capture turn."""
        if not self.new_data.is_set():
            self.new_data.set()

    def send(self, msg: cpb.AgentMessage) -> None:
        """Queue a control message (policy ack) on the current stream, if any."""
        if self._outbox is not None:
            self._outbox.put(msg)

    @property
    def target(self) -> str:
        return self.targets[self._current]

    def _fail_over(self) -> bool:
        """Move to the next collector of the list; True while the list has not been gone round."""
        if len(self.targets) < 2:
            return False
        self._current = (self._current + 1) % len(self.targets)
        self._failed_in_row += 1
        log.warning("failing over to collector %s (%d of %d)", self.target, self._current + 1, len(self.targets))
        return self._failed_in_row % len(self.targets) != 0

    def run(self) -> None:
        backoff = 0.2
        self._failed_in_row = 0
        while not self.stop_event.is_set():
            started = time.monotonic()
            try:
                self._session()
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                log.warning("collector %s: stream ended: %s %s", self.target, code,
                            exc.details() if hasattr(exc, "details") else exc)
            except Exception:  # never let the shipper thread die: log and reconnect
                log.exception("shipper session failed")
            finally:
                self.connected.clear()
                self._outbox = None
            if self.stop_event.is_set():
                break
            if time.monotonic() - started > 30:
                backoff = 0.2
                self._failed_in_row = 0
            quick = self._fail_over()      # another collector of the list: try it at once
            delay = max(0.05 if quick else backoff * (0.5 + random.random()), self.retry_after_s)
            self.retry_after_s = 0.0
            log.info("reconnecting to %s in %.1fs (%d events waiting in the spool)",
                     self.target, delay, self.spool.depth())
            self.reconnects += 1
            self.stop_event.wait(delay)
            backoff = min(backoff * 2, self.backoff_max_s)

    def _requests(self, outbox: queue.Queue):
        while True:
            msg = outbox.get()
            if msg is None:
                return
            yield msg

    def _session(self) -> None:
        outbox: queue.Queue = queue.Queue()
        self._outbox = outbox
        hello = cpb.Hello(agent_version=__version__, first_unacked_seq=self.spool.acked + 1,
                          policy_version=self.policy_version(), agent_started_ns=self.started_ns,
                          heartbeat_s=self.heartbeat_s)
        hello.host.host_id = self.identity.host_id
        hello.host.hostname = self.identity.hostname
        hello.host.boot_id = self.identity.boot_id
        outbox.put(cpb.AgentMessage(hello=hello))
        with open_channel(self.target, *self.tls, options=GRPC_OPTIONS) as channel:
            token = self.token() if callable(self.token) else self.token   # re-read: a credential may be new
            call = cgrpc.CollectorStub(channel).Stream(self._requests(outbox), metadata=bearer(token))
            state = {"acked": self.spool.acked, "sent": self.spool.acked, "error": None, "raw": False}
            try:
                first = next(call)
                if not first.HasField("hello"):
                    raise RuntimeError(f"collector answered {first.WhichOneof('msg')} instead of hello")
                stored = first.hello.stored_through_seq
                if stored > self.spool.last_seq:
                    # The collector holds seqs this spool never made (the spool was lost or reset):
                    # continue numbering after them, or new records would be dropped as duplicates.
                    log.warning("collector holds seq %d for this host, beyond this spool's %d: numbering "
                                "resumes after it", stored, self.spool.last_seq)
                    self.spool.skip_to(stored)
                elif stored > self.spool.acked:
                    self.spool.ack(stored)
                state["acked"] = state["sent"] = self.spool.acked
                state["raw"] = first.hello.raw_batches
                log.info("connected to collector %s (stored through seq %d, replaying %d; %s batches)",
                         self.target, stored, self.spool.depth(), "raw" if state["raw"] else "event")
                self.connected.set()
                reader = threading.Thread(target=self._read_responses, args=(call, state), daemon=True)
                reader.start()
                self._send_loop(outbox, state, reader)
            finally:
                outbox.put(None)
                call.cancel()
            if state["error"]:
                raise state["error"]

    def _read_responses(self, call, state: dict) -> None:
        try:
            for msg in call:
                kind = msg.WhichOneof("msg")
                if kind == "ack":
                    seq = min(msg.ack.seq, state["sent"])    # never believe an ack for what was not sent
                    if seq < msg.ack.seq:
                        log.error("collector acked seq %d but this stream only sent up to %d: ignored beyond",
                                  msg.ack.seq, state["sent"])
                    self.spool.ack(seq)
                    self.last_ack_mono = time.monotonic()
                    state["acked"] = max(state["acked"], seq)
                    self.new_data.set()
                elif kind == "error":
                    log.error("collector rejected a message: %s: %s", msg.error.code, msg.error.message)
                    if msg.error.seq and msg.error.code == "INVALID_ARGUMENT":
                        self._keep_refused(msg.error.seq, msg.error.message)
                    if msg.error.code == "UNAVAILABLE":
                        self.retry_after_s = min(msg.error.retry_after_ms / 1000, 300.0)
                elif self.on_command:
                    reply = self.on_command(msg)
                    if reply is not None:
                        self.send(reply)
                elif kind == "kill" and msg.kill.order_id:     # an agent that does not enforce says so
                    self.send(cpb.AgentMessage(kill_ack=cpb.KillAck(order_id=msg.kill.order_id, executed=False,
                                                                    detail="this agent runs with --no-enforce")))
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                state["error"] = exc
        finally:
            self.new_data.set()

    def _keep_refused(self, seq: int, why: str) -> None:
        """The collector stored this event as a gap (a value no store can keep): keep the original on disk. It is
        still in the spool here, since the batch's ack comes after the error."""
        found = self.spool.read_after(seq - 1, 1)
        if found and found[0].seq == seq:
            self.quarantine.put(found[0], f"refused by the collector: {why}")

    def _send_loop(self, outbox: queue.Queue, state: dict, reader: threading.Thread) -> None:
        cursor = state["acked"]
        last_send = 0.0
        while not self.stop_event.is_set() and reader.is_alive():
            if cursor - state["acked"] >= self.window_events:
                self.new_data.wait(self.batch_max_delay_s)
                self.new_data.clear()
                continue
            after = max(cursor, state["acked"])
            linger = self.linger_s(time.monotonic() - last_send, self.spool.last_seq - after)
            if linger:
                self.stop_event.wait(linger)
                continue
            if state["raw"]:
                records = self.spool.read_raw_after(after, self.batch_max_events)
            else:
                records = self.spool.read_after(after, self.batch_max_events)
            if not records:
                self.new_data.wait(IDLE_WAIT_S)       # notify() and acks wake it: the timeout is a safety net
                self.new_data.clear()
                continue
            if state["raw"]:
                raw = self.build_raw_batch(records)
                last = raw.seqs[-1]
                message = cpb.AgentMessage(raw=raw)
            else:
                batch = self.build_batch(records)
                last = batch.events[-1].seq
                message = cpb.AgentMessage(batch=batch)
            state["sent"] = max(state["sent"], last)
            outbox.put(message)
            cursor = last
            last_send = time.monotonic()
            self.sent_batches += 1

    def linger_s(self, since_send_s: float, unsent: int) -> float:
        """How long a part batch waits to fill up before it is sent (0: send now). Each send and its ack wake
        three threads here and a commit at the collector, so under a steady stream fewer, fuller batches cost far
        less CPU (bench/agent_cpu.py: ~20 % of the agent's). A record after a quiet spell still goes at once: the
        last send is long past."""
        if unsent <= 0 or unsent >= self.batch_max_events:
            return 0.0
        return max(0.0, self.batch_max_delay_s - since_send_s)

    def build_batch(self, records: list[pb.Event]) -> cpb.EventBatch:
        """Spooled events -> one batch under MAX_BATCH_BYTES (stops early; the rest go in the next batch)."""
        batch = cpb.EventBatch()
        size = 0
        for spooled in records:
            ev, n = spooled, spooled.ByteSize()
            if n > MAX_RECORD_BYTES:
                ev = self.quarantine.put(spooled, f"event of {n} bytes exceeds {MAX_RECORD_BYTES}")
                n = ev.ByteSize()
            if batch.events and size + n > MAX_BATCH_BYTES:
                break
            batch.events.append(ev)
            size += n
        return batch

    def build_raw_batch(self, records: list[tuple[int, bytes, int, str] | FramedRun]) -> cpb.RawBatch:
        """Spooled (seq, bytes, kind, job) and framed runs -> one RawBatch under MAX_BATCH_BYTES, the bytes sent as
        spooled (a run's frames as one slice)."""
        items: list[tuple[int, bytes, int, str] | FramedRun] = []
        for item in records:                 # a run with an oversized event (never made so) goes one at a time
            if type(item) is FramedRun and bool((item.sizes() > MAX_RECORD_BYTES).any()):
                items.extend(item.records())
            else:
                items.append(item)
        chosen: list[tuple[int, bytes, int, str] | FramedRun] = []
        size = 0
        for item in items:
            if type(item) is FramedRun:
                fits = int(np.searchsorted(item.ends, MAX_BATCH_BYTES - size, side="right"))
                if not chosen:
                    fits = max(fits, 1)          # the first event goes whatever its size (under MAX_RECORD_BYTES)
                if fits:
                    chosen.append(item[:fits])
                    size += len(chosen[-1].frames)
                if fits < len(item):
                    break
                continue
            seq, body, _kind, _job = record = item
            if len(body) > MAX_RECORD_BYTES:
                gap = self.quarantine.put(pb.Event.FromString(body), f"event of {len(body)} bytes exceeds "
                                          f"{MAX_RECORD_BYTES}")
                record = (seq, gap.SerializeToString(), rawbatch.body_kind(gap), "")
            if chosen and size + len(record[1]) > MAX_BATCH_BYTES:
                break
            chosen.append(record)
            size += len(record[1])
        return rawbatch.build(chosen)

    def stop(self) -> None:
        self.stop_event.set()
        self.new_data.set()

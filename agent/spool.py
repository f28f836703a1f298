"""Durable on-disk queue of events not yet acknowledged by the collector.

Layout: ``DIR/seg-<first_seq>.log`` append-only segments of frames ``[u32 length][u32 crc32][msgpack body]``,
up to 4 MiB each: one frame (one CRC) per append, that is per ring-buffer poll, or a few. Events already encoded by
the agent (connects, execs, exits) are spooled as runs, ``[first seq, RawBatch frames, ends (u64), body kind (a run
of connects) or each one's kind (u32), jobs (u32), job ids]``, framed in C (agent/wire.py) exactly as a RawBatch
carries them; events built as objects (status, GPU samples, enforcement) as ``[first seq, [serialized
gpuguard.v1.Event...], [body kind...], [job id...]]``. The events' wire bytes are serialised once, from enrichment
to the collector, with the two columns a collector partitions by. Frames of older agents hold one record each
(``[seq, bytes]`` or ``[seq, bytes, kind, job]``) and are read as such.
``DIR/acked`` holds the highest acknowledged seq. Sequence numbers are per agent, monotonic and
never reused (they survive restarts: the last one is recovered from disk).

fsync policy: ``append`` writes (the capture loop appends one batch per ring-buffer poll) and fsyncs when
``fsync_interval_s`` has passed since the last fsync; otherwise the write waits for the next append or for
``sync_due``, which the agent's loop calls at every turn (at least twice a second). A killed agent loses nothing
either way (its writes are in the page cache); a host that loses power loses at most the interval's records that
the collector had not yet acked. The agent's default is 0.2 s (``spool_fsync_ms``): 20 polls a second paid an
fsync each, ~3 us of CPU per event of an exec storm on this VM (bench/agent_cpu.py); 0 fsyncs every append. The
ack file is replaced atomically (write, fsync, rename) at most every 0.5 s,
before a segment is deleted and at close (a crash resends at most that much,
which the collector drops as duplicates). A torn or corrupt tail found at
start-up is truncated and logged.

Bounded: when the spool would exceed ``max_bytes`` (or the disk is full) new
records are dropped but still consume sequence numbers; once space is back a
``gap`` record names the exact dropped range, so the collector knows what is
missing rather than silently missing it.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import msgpack
import numpy as np

from agent import wire
from agent.encoded import CONNECT_FIELD, ENCODED, EncodedEvent, EncodedRun, count
from gpuguard.rawbatch import FramedRun, body_kind
from gpuguard.v1 import events_pb2 as pb

log = logging.getLogger(__name__)

FRAME = struct.Struct("<II")
MAX_FRAME = 8 << 20
BATCH_FRAME_BYTES = 4 << 20        # one append's records share a frame up to this size
RUN_FIELDS = 6                     # a run's frame: [first seq, frames, ends, kind or kinds, jobs, job ids]
ACK_PERSIST_S = 0.5                # the acked pointer reaches the disk at most this often (see Spool.ack)


def _last_seq(fields: list) -> int:
    """The last seq in a frame, by its layout: a run of connects, a batch of records, one record."""
    if len(fields) == RUN_FIELDS:
        return fields[0] + len(fields[2]) // 8 - 1
    return fields[0] + len(fields[1]) - 1 if isinstance(fields[1], list) else fields[0]


def _form(record) -> type:
    """How a record is spooled: a run as it came, encoded events as one run, anything else as an object."""
    kind = type(record)
    return kind if kind in ENCODED else pb.Event


def _framed(fields: list, packer: msgpack.Packer) -> bytes:
    """One frame on disk: length, CRC, the msgpack body."""
    body = packer.pack(fields)
    return FRAME.pack(len(body), zlib.crc32(body)) + body


@dataclass
class SpoolStats:
    appended: int = 0
    dropped: int = 0
    corrupt_truncated: int = 0
    unpackable: int = 0


class Spool:
    def __init__(self, directory: str | Path, max_bytes: int = 1 << 30, segment_bytes: int = 16 << 20,
                 fsync: bool = True, fsync_interval_s: float = 0.0) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.fsync_interval_s = fsync_interval_s
        self._synced_at = float("-inf")     # monotonic time of the last fsync of the active segment
        self._unsynced = False              # the active segment has writes no fsync has covered yet
        self.stats = SpoolStats()
        self._lock = threading.Lock()
        self.acked = self._read_acked()
        self._ack_on_disk, self._ack_written = self.acked, float("-inf")
        self.last_seq = self.acked
        self._gap: tuple[int, int, str] | None = None
        self._segments: list[tuple[int, Path]] = []   # (first_seq, path), ascending
        self._active = None
        self._active_size = 0
        self._reason = "spool full"
        self._packer = msgpack.Packer(use_bin_type=True)   # reused: packb builds one per call
        self._bytes = 0                                     # kept up to date: no stat per append
        self._recover()
        self._cursor: tuple[Path | None, int, int] = (None, 0, 0)   # (segment, byte offset, seq there)
        self._partial: tuple | None = None        # the frame a read stopped inside: (path, start, end, first, last,
                                                  # records)

    # -- start-up --------------------------------------------------------------
    def _read_acked(self) -> int:
        try:
            return int((self.dir / "acked").read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _recover(self) -> None:
        for path in sorted(self.dir.glob("seg-*.log")):
            self._segments.append((int(path.stem[4:]), path))
        for _first, path in self._segments:
            good_end, last = self._scan(path)
            if last:
                self.last_seq = max(self.last_seq, last)
            if good_end < path.stat().st_size:
                log.warning("spool %s: truncating corrupt tail at byte %d", path.name, good_end)
                self.stats.corrupt_truncated += 1
                with open(path, "r+b") as f:
                    f.truncate(good_end)
            self._bytes += good_end
        self._drop_acked_segments()

    @staticmethod
    def _frames(path: Path, offset: int = 0):
        """Yield (start, end, first seq, last seq, msgpack fields) for each intact frame; stop at the first bad
        one."""
        with open(path, "rb") as f:
            f.seek(offset)
            pos = offset
            while True:
                head = f.read(FRAME.size)
                if len(head) < FRAME.size:
                    return
                length, crc = FRAME.unpack(head)
                if length > MAX_FRAME:
                    return
                body = f.read(length)
                if len(body) < length or zlib.crc32(body) != crc:
                    return
                start, pos = pos, pos + FRAME.size + length
                fields = msgpack.unpackb(body, raw=False)
                yield start, pos, fields[0], _last_seq(fields), fields

    @staticmethod
    def _records(fields: list) -> list[tuple[int, bytes, int | None, str | None]] | FramedRun:
        """A frame's records: (seq, serialised event, body kind, job id); kind and job None in the frames of
        agents that spooled one record per frame without them; a run of connects as it was framed."""
        if len(fields) == RUN_FIELDS:
            first, frames, ends, kind, jobs, job_ids = fields
            if isinstance(kind, bytes):                      # each event's kind
                kind = np.frombuffer(kind, "<u4").astype(np.int64)
            return FramedRun(first, frames, np.frombuffer(ends, "<u8").astype(np.int64), kind,
                             np.frombuffer(jobs, "<u4").astype(np.int64), job_ids)
        if isinstance(fields[1], list):                     # a batch: [first seq, bodies, kinds, jobs]
            first, bodies, kinds, jobs = fields
            return [(first + i, b, k, j) for i, (b, k, j) in enumerate(zip(bodies, kinds, jobs, strict=True))]
        if len(fields) >= 4:                                 # one record with its columns
            return [(fields[0], fields[1], fields[2], fields[3])]
        return [(fields[0], fields[1], None, None)]          # one record, as the oldest agents spooled it

    def _scan(self, path: Path) -> tuple[int, int]:
        good_end, last = 0, 0
        for _start, end, _first, last_seq, _fields in self._frames(path):
            good_end, last = end, last_seq
        return good_end, last

    # -- writing -----------------------------------------------------------------
    def size_bytes(self) -> int:
        return self._bytes

    def _open_segment(self, first_seq: int) -> None:
        if self._active:
            self._sync_logged(f"fsync of {self._active.name}", force=True)   # the segment left behind, on disk first
            self._active.close()
        path = self.dir / f"seg-{first_seq:020d}.log"
        self._active = open(path, "ab")  # noqa: SIM115 - kept open across appends
        self._active_size = self._active.tell()
        self._segments.append((first_seq, path))

    def _entry(self, seq: int, record: pb.Event) -> tuple[int, bytes, int, str]:
        """(seq, serialised event, body kind, job id); an event that cannot be serialised (it never should)
        becomes a gap naming its seq, so one odd event never costs the rest of the poll."""
        try:
            record.seq = seq
            return seq, record.SerializeToString(), body_kind(record), record.job.id
        except Exception as exc:   # noqa: BLE001 - whatever the encoder raises, the poll goes on
            return self._gap_entry(seq, record, exc)

    def _gap_entry(self, seq: int, record, exc: Exception) -> tuple[int, bytes, int, str]:
        self.stats.unpackable += 1
        log.error("spool: event seq %d (%s) cannot be encoded (%s); stored as a gap", seq,
                  record.WhichOneof("body") if isinstance(record, pb.Event) else type(record).__name__, exc)
        gap = pb.Event(seq=seq, gap=pb.Gap(from_seq=seq, to_seq=seq, reason=f"unencodable event: {str(exc)[:200]}"))
        return seq, gap.SerializeToString(), body_kind(gap), ""

    def _frame(self, entries: list[tuple[int, bytes, int, str]]) -> bytes:
        """One frame for a run of consecutive records: one CRC, one msgpack header."""
        return _framed([entries[0][0], [e[1] for e in entries], [e[2] for e in entries], [e[3] for e in entries]],
                       self._packer)

    def _frames_for(self, entries: list[tuple[int, bytes, int, str]]) -> list[bytes]:
        """The records of one append as frames of up to BATCH_FRAME_BYTES (a larger record gets its own)."""
        frames, run, size = [], [], 0
        for entry in entries:
            if run and size + len(entry[1]) > BATCH_FRAME_BYTES:
                frames.append(self._frame(run))
                run, size = [], 0
            run.append(entry)
            size += len(entry[1])
        frames.append(self._frame(run))
        return frames

    def _run_frames(self, first_seq: int, run: EncodedRun) -> list[bytes]:
        """A run framed for a RawBatch with its seqs (agent/wire.py), as frames of up to BATCH_FRAME_BYTES:
        [first seq, frames, ends (u64), body kind (a run of connects) or each one's (u32), jobs (u32), job ids]."""
        framed, ends = wire.frame_events(run.data, run.ends, first_seq)
        jobs = run.jobs.astype("<u4")
        out, a = [], 0
        while a < ends.size:
            cut = int(ends[a - 1]) if a else 0
            b = max(a + 1, int(np.searchsorted(ends, cut + BATCH_FRAME_BYTES, side="right")))
            kind = CONNECT_FIELD if run.kinds is None else run.kinds[a:b].tobytes()
            out.append(_framed([first_seq + a, framed[cut:int(ends[b - 1])], (ends[a:b] - cut).astype("<u8").tobytes(),
                                kind, jobs[a:b].tobytes(), run.job_ids], self._packer))
            a = b
        return out

    def _events_frames(self, first_seq: int, events: list[EncodedEvent]) -> list[bytes]:
        """Consecutive encoded events (execs, exits, connects one by one) as one run: framed in C like a drain's
        connects, with each one's body kind - no tuple, no msgpack entry per event, here or in the shipper."""
        n = len(events)
        data = [e.data for e in events]
        ids = [e.job_id for e in events]
        if ids.count(ids[0]) == n:                           # most drains: one job
            jobs, job_ids = np.zeros(n, np.int64), ids[:1]
        else:
            index: dict[str, int] = {}
            jobs = np.array([index.setdefault(j, len(index)) for j in ids], np.int64)
            job_ids = list(index)
        ends = np.cumsum(np.fromiter(map(len, data), np.uint64, n))
        run = EncodedRun(b"".join(data), ends, np.zeros(0, np.int64), jobs, job_ids,
                         np.array([e.kind for e in events], "<u4"))
        return self._run_frames(first_seq, run)

    def append(self, records: list[pb.Event | EncodedEvent | EncodedRun]) -> int:
        """Append records; returns how many were stored (the rest were dropped and counted)."""
        with self._lock:
            if self._gap:
                if not self._try_write([self._gap_record()]):
                    return self._drop(records)
                self._gap = None
            return self._try_write(records) or self._drop(records)

    def _gap_record(self) -> pb.Event:
        first, last, reason = self._gap
        return pb.Event(ts_ns=time.time_ns(), gap=pb.Gap(from_seq=first, to_seq=last, reason=reason))

    def _try_write(self, records: list[pb.Event | EncodedEvent]) -> int:
        if not records:
            return 0
        next_seq = self.last_seq
        frames: list[bytes] = []
        for form, group in itertools.groupby(records, key=_form):     # consecutive records of one form together
            if form is EncodedRun:                          # a drain's connects or short lives, already a run
                for run in group:
                    frames.extend(self._run_frames(next_seq + 1, run))
                    next_seq += len(run)
            elif form is EncodedEvent:                      # events already their bytes: one run
                events = list(group)
                frames.extend(self._events_frames(next_seq + 1, events))
                next_seq += len(events)
            else:                                           # events as objects (status, GPU samples, ...)
                entries = []
                for rec in group:
                    next_seq += 1
                    entries.append(self._entry(next_seq, rec))
                frames.extend(self._frames_for(entries))
        blob = b"".join(frames)
        if self.size_bytes() + len(blob) > self.max_bytes:
            self._reason = "spool full"
            for rec in records:
                if type(rec) not in ENCODED:
                    rec.seq = 0
            return 0
        if self._active is None or self._active_size >= self.segment_bytes:
            self._open_segment(self.last_seq + 1)
        start = self._active_size
        try:
            self._active.write(blob)
            self._active.flush()
            self._unsynced = True
            self._sync()
        except OSError as exc:
            self._active.truncate(start)
            self._active.seek(start)
            self._reason = f"disk error: {errno.errorcode.get(exc.errno, exc.errno)}"
            log.error("spool write failed (%s); dropping %d records", exc, next_seq - self.last_seq)
            return 0
        self._active_size = start + len(blob)
        self._bytes += len(blob)
        stored, self.last_seq = next_seq - self.last_seq, next_seq
        self.stats.appended += stored
        return stored

    def _drop(self, records: list[pb.Event | EncodedEvent | EncodedRun]) -> int:
        n = count(records)
        if not n:
            return 0
        first = self.last_seq + 1
        self.last_seq += n
        reason = self._reason
        self._gap = (self._gap[0] if self._gap else first, self.last_seq, reason)
        self.stats.dropped += n
        return 0

    # -- reading and acks ------------------------------------------------------------
    def read_after(self, seq: int, max_records: int) -> list[pb.Event]:
        """Events with seq > given seq, in order, at most max_records."""
        return [pb.Event.FromString(body) for chunk in self._read(seq, max_records)
                for _seq, body, _kind, _job in (chunk.records() if type(chunk) is FramedRun else chunk)]

    def read_raw_after(self, seq: int, max_records: int) -> list[tuple[int, bytes, int, str] | FramedRun]:
        """(seq, serialised event, body kind, job id) and runs of connects as they were framed, with seq > given
        seq, in order, at most max_records events: what a RawBatch carries, without decoding an event (frames of
        older agents are decoded for their two columns)."""
        out: list[tuple[int, bytes, int, str] | FramedRun] = []
        for chunk in self._read(seq, max_records):
            if type(chunk) is FramedRun:
                out.append(chunk)
                continue
            for rec_seq, body, kind, job in chunk:
                if kind is None:
                    ev = pb.Event.FromString(body)
                    out.append((rec_seq, body, body_kind(ev), ev.job.id))
                else:
                    out.append((rec_seq, body, kind, job))
        return out

    def _read(self, seq: int, max_records: int) -> list:
        """Spooled records with seq > given seq. Sequential readers (the shipper) resume from a remembered byte
        offset (a frame's start or end, with the last seq before it), so reading costs O(records read), not
        O(segment)."""
        with self._lock:
            segments = list(self._segments)
            if self._active:
                self._active.flush()
        cursor_path, cursor_off, cursor_seq = self._cursor
        out: list = []            # chunks: a frame's records (a list of tuples, or a FramedRun), or part of one
        taken = 0
        for i, (_first, path) in enumerate(segments):
            next_first = segments[i + 1][0] if i + 1 < len(segments) else None
            if next_first is not None and next_first <= seq + 1:
                continue
            offset = cursor_off if (path == cursor_path and cursor_seq <= seq) else 0
            try:
                for start, end, first, last, records in self._frames_from(path, offset):
                    if last <= seq:
                        continue
                    wanted = records[max(0, seq + 1 - first):]      # a frame's records run first..last
                    room = max_records - taken
                    out.append(wanted[:room])
                    taken += min(room, len(wanted))
                    if len(wanted) > room:               # stopped inside this frame: resume at its start
                        self._cursor = (path, start, first - 1)
                        self._partial = (path, start, end, first, last, records)
                        return out
                    self._cursor = (path, end, last)
                    if taken >= max_records:
                        return out
            except FileNotFoundError:
                continue
        return out

    def _frames_from(self, path: Path, offset: int):
        """_frames with each frame's records; the frame a read stopped inside is not read, checked and decoded
        again (a poll's frame may hold thousands of records, the shipper takes a few hundred at a time)."""
        partial = self._partial
        if partial is not None and partial[0] == path and partial[1] == offset:
            self._partial = None
            yield partial[1:]
            offset = partial[2]
        for start, end, first, last, fields in self._frames(path, offset):
            yield start, end, first, last, self._records(fields)

    def skip_to(self, seq: int) -> None:
        """Number new records after ``seq`` (the collector already holds seqs up to it for this host).

        Used when the spool was lost or reset: records already spooled under lower
        seqs are still sent, and the collector answers them as duplicates.
        """
        with self._lock:
            self.last_seq = max(self.last_seq, seq)

    def ack(self, seq: int) -> None:
        """Records up to seq are stored by the collector. The pointer is written to disk at most every
        ACK_PERSIST_S, before a segment is deleted, and at close: after a crash the spool may resend up to that
        much, which the collector answers as duplicates (it dedups by seq)."""
        with self._lock:
            seq = min(seq, self.last_seq)     # never past what this spool made
            if seq <= self.acked:
                return
            self.acked = seq
            droppable = len(self._segments) > 1 and self._segments[1][0] - 1 <= seq
            if droppable or time.monotonic() - self._ack_written >= ACK_PERSIST_S:
                self._write_acked()
            if droppable:
                self._drop_acked_segments()

    def _write_acked(self) -> None:
        tmp = self.dir / "acked.tmp"
        with open(tmp, "w") as f:
            f.write(str(self.acked))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / "acked")
        self._ack_written = time.monotonic()
        self._ack_on_disk = self.acked

    def _drop_acked_segments(self) -> None:
        """Delete whole segments whose every record is acknowledged (never the active one)."""
        keep = []
        for i, (first, path) in enumerate(self._segments):
            next_first = self._segments[i + 1][0] if i + 1 < len(self._segments) else None
            active = self._active is not None and path == Path(self._active.name)
            if next_first is not None and next_first - 1 <= self.acked and not active:
                try:
                    self._bytes -= path.stat().st_size
                    path.unlink()
                except FileNotFoundError:
                    pass
            else:
                keep.append((first, path))
        self._segments = keep

    def depth(self) -> int:
        return max(self.last_seq - self.acked, 0)

    def _sync(self, force: bool = False) -> None:
        """fsync the active segment if it has unsynced writes and the interval has passed (or ``force``)."""
        if not (self.fsync and self._unsynced and self._active is not None):
            return
        now = time.monotonic()
        if force or now - self._synced_at >= self.fsync_interval_s:
            os.fsync(self._active.fileno())
            self._synced_at, self._unsynced = now, False

    def sync_due(self) -> None:
        """The deferred fsync, once its interval has passed (the agent's loop calls this at every turn)."""
        with self._lock:
            self._sync_logged("fsync")

    def _sync_logged(self, what: str, force: bool = False) -> None:
        """``_sync`` where a failure is logged, not raised: the records are written, the collector may already
        hold them, only the disk may not."""
        try:
            self._sync(force)
        except OSError as exc:
            log.error("spool %s failed (%s): records written since the last fsync may not be on disk", what, exc)

    def close(self) -> None:
        with self._lock:
            if self.acked != self._ack_on_disk:
                self._write_acked()
            if self._active:
                self._sync_logged("fsync at close", force=True)
                self._active.close()
                self._active = None

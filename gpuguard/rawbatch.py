"""RawBatch: an agent batch as its spool holds it, checked and split with array operations.

The agent spools each event serialised once; a RawBatch carries those bytes framed back to back as field 4 of
``LogBatch`` (tag 0x22, varint length, the Event), plus one column per event: seq, frame end, body kind, job. A
collector that forwards to an event log never decodes an event into a Python object: it checks the columns and
the framing with numpy, lets the C protobuf parser prove the frames are well-formed, drops the prefix it already
has, and appends each partition's frames to a LogBatch header as they are (a LogBatch is then just those bytes).
What only the event bodies can tell (a value a store refuses, a skewed clock, a body whose seq or job disagrees
with its column) is checked by the worker that decodes them anyway (``collector/log_worker.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from google.protobuf.message import DecodeError

from gpuguard.v1 import collector_pb2 as cpb
from gpuguard.v1 import events_pb2 as pb

FRAME_TAG = 0x22                           # LogBatch.events: field 4, length-delimited
MAX_SEQ = (1 << 63) - 1                    # stores keep seqs as signed 64-bit integers
MAX_JOB_ID_CHARS = 1024
BODY_FIELD = {f.name: f.number for f in pb.Event.DESCRIPTOR.oneofs_by_name["body"].fields}
KIND_TABLE = 256                           # body kinds are field numbers: tables indexed by kind
VALID_KIND = np.zeros(KIND_TABLE, dtype=bool)
VALID_KIND[list(BODY_FIELD.values())] = True
NOTABLE_KIND = np.zeros(KIND_TABLE, dtype=bool)   # what ingest listeners need without a decode
NOTABLE_KIND[[BODY_FIELD["status"], BODY_FIELD["capture_loss"], BODY_FIELD["gap"]]] = True


class RawBatchProblem(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


MASK64 = (1 << 64) - 1
_NEGATIVE: dict[int, bytes] = {}     # negative results (-errno): a handful of values, ten bytes each
_HIGH = [(-1, b"")]                 # (the last value >> 28, its encoding): kernel times share it for 268 ms;
                                    # one tuple, replaced whole, so threads never see half of one


def _varint_loop(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def varint(n: int) -> bytes:
    """A protobuf varint (negative values as ten-byte two's complement); the per-event values (lengths, seqs,
    ports, nanosecond times, -errno) without a loop per byte."""
    if n < 0:
        enc = _NEGATIVE.get(n)
        if enc is None:
            enc = _varint_loop(n & MASK64)
            if len(_NEGATIVE) < 4096:
                _NEGATIVE[n] = enc
        return enc
    if n < 0x80:
        return bytes((n,))
    if n < 0x4000:
        return bytes(((n & 0x7F) | 0x80, n >> 7))
    if n < 1 << 21:                 # ports, lengths and seqs: three bytes at most
        return bytes(((n & 0x7F) | 0x80, ((n >> 7) & 0x7F) | 0x80, n >> 14))
    if n < 1 << 28:
        return bytes(((n & 0x7F) | 0x80, ((n >> 7) & 0x7F) | 0x80, ((n >> 14) & 0x7F) | 0x80, n >> 21))
    high = n >> 28
    cached = _HIGH[0]
    if cached[0] != high:
        cached = _HIGH[0] = (high, _varint_loop(high))
    return bytes(((n & 0x7F) | 0x80, ((n >> 7) & 0x7F) | 0x80, ((n >> 14) & 0x7F) | 0x80,
                  ((n >> 21) & 0x7F) | 0x80)) + cached[1]


def frame(body: bytes) -> bytes:
    """One serialised Event as a LogBatch.events entry."""
    return b"\x22" + varint(len(body)) + body


def body_kind(ev: pb.Event) -> int:
    return BODY_FIELD.get(ev.WhichOneof("body") or "", 0)


@dataclass
class FramedRun:
    """Consecutive events framed as a RawBatch carries them (tag, length, the event with its seq), each with its
    body kind and its job: how the agent spools a drain's connects, execs and exits (agent/spool.py) and ships
    them, without a Python object per event."""

    first_seq: int
    frames: bytes
    ends: np.ndarray        # int64: where each frame ends
    kind: int | np.ndarray  # the body kind of all (a run of connects), or each one's (int64)
    jobs: np.ndarray        # int64: index into job_ids
    job_ids: list[str]

    def __len__(self) -> int:
        return int(self.ends.size)

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self) - 1

    def __getitem__(self, part: slice) -> FramedRun:
        """The events from part.start to part.stop (no step)."""
        a, b, _step = part.indices(len(self))
        b = max(a, b)
        cut = int(self.ends[a - 1]) if a else 0
        end = int(self.ends[b - 1]) if b else 0
        kind = self.kind[a:b] if isinstance(self.kind, np.ndarray) else self.kind
        return FramedRun(self.first_seq + a, self.frames[cut:end], self.ends[a:b] - cut, kind, self.jobs[a:b],
                         self.job_ids)

    def kinds(self) -> np.ndarray:
        """Each event's body kind."""
        if isinstance(self.kind, np.ndarray):
            return self.kind
        return np.full(len(self), self.kind, np.int64)

    def sizes(self) -> np.ndarray:
        return np.diff(self.ends, prepend=0)

    def records(self) -> list[tuple[int, bytes, int, str]]:
        """(seq, serialised event, body kind, job id) each: the frames unwrapped (readers that want events)."""
        out, start, frames = [], 0, self.frames
        for i, (end, kind, job) in enumerate(zip(self.ends.tolist(), self.kinds().tolist(), self.jobs.tolist(),
                                                 strict=True)):
            body = start + 1
            while frames[body] & 0x80:          # the length varint
                body += 1
            out.append((self.first_seq + i, frames[body + 1:end], kind, self.job_ids[job]))
            start = end
        return out


def build(records: list[tuple[int, bytes, int, str] | FramedRun]) -> cpb.RawBatch:
    """(seq, serialised event, body kind, job id) and framed runs, in ascending seq -> a RawBatch."""
    frames: list[bytes] = []
    seqs: list[int] = []
    ends: list[int] = []
    kinds: list[int] = []
    jobs: list[int] = []
    job_index: dict[str, int] = {}
    size = 0
    for item in records:
        if type(item) is FramedRun:
            n = len(item)
            frames.append(item.frames)
            seqs.extend(range(item.first_seq, item.first_seq + n))
            ends.extend((item.ends + size).tolist())
            kinds.extend(item.kinds().tolist())
            remap = np.array([job_index.setdefault(job, len(job_index)) for job in item.job_ids], np.int64)
            jobs.extend(remap[item.jobs].tolist())
            size += len(item.frames)
            continue
        seq, body, kind, job = item
        framed = frame(body)
        frames.append(framed)
        size += len(framed)
        seqs.append(seq)
        ends.append(size)
        kinds.append(kind)
        jobs.append(job_index.setdefault(job, len(job_index)))
    return cpb.RawBatch(frames=b"".join(frames), seqs=seqs, ends=ends, kinds=kinds, jobs=jobs,
                        job_ids=list(job_index))


def from_events(events: list[pb.Event]) -> cpb.RawBatch:
    """Events (with their seqs) -> a RawBatch (tests, simulators)."""
    return build([(ev.seq, ev.SerializeToString(), body_kind(ev), ev.job.id) for ev in events])


@dataclass
class RawView:
    """A checked RawBatch: its frames and columns as arrays, and the C parse of the frames (nothing in it is
    wrapped in a Python object until asked for)."""

    frames: bytes
    seqs: np.ndarray        # uint64
    starts: np.ndarray      # int64: each frame's first byte
    ends: np.ndarray        # int64
    kinds: np.ndarray       # uint32
    jobs: np.ndarray        # int64, index into job_ids
    job_ids: list[str]
    parsed: cpb.LogBatch    # .events holds the events, decoded by the C parser

    def __len__(self) -> int:
        return int(self.seqs.size)

    def events_at(self, index: np.ndarray) -> list[pb.Event]:
        events = self.parsed.events
        return [events[i] for i in index.tolist()]

    def notable(self) -> list[pb.Event]:
        """The events ingest listeners need even when nobody follows the stream: status, capture loss, gaps."""
        return self.events_at(np.flatnonzero(NOTABLE_KIND[self.kinds]))

    def drop_through(self, seq: int) -> RawView:
        """Without the events whose seq is <= seq (already stored: a resend)."""
        k = int(np.searchsorted(self.seqs, np.uint64(seq), side="right"))
        if k == 0:
            return self
        cut = int(self.ends[k - 1])
        frames = self.frames[cut:]
        return RawView(frames, self.seqs[k:], self.starts[k:] - cut, self.ends[k:] - cut,
                       self.kinds[k:], self.jobs[k:], self.job_ids, cpb.LogBatch.FromString(frames))

    def prepend(self, ev: pb.Event) -> RawView:
        """With one event before the first (the gap record of a seq jump), as a job-less event."""
        body = frame(ev.SerializeToString())
        n = len(body)
        job_ids = self.job_ids if "" in self.job_ids else [*self.job_ids, ""]
        frames = body + self.frames
        return RawView(frames, np.concatenate(([np.uint64(ev.seq)], self.seqs)),
                       np.concatenate(([0], self.starts + n)), np.concatenate(([n], self.ends + n)),
                       np.concatenate(([np.uint32(body_kind(ev))], self.kinds)),
                       np.concatenate(([job_ids.index("")], self.jobs)), job_ids, cpb.LogBatch.FromString(frames))

    def slices(self, index: np.ndarray) -> bytes:
        """The frames of the events at ``index`` (ascending), concatenated: one slice per contiguous run."""
        if index.size == len(self):
            return self.frames
        breaks = np.flatnonzero(np.diff(index) != 1)
        run_first = np.concatenate(([index[0]], index[breaks + 1]))
        run_last = np.concatenate((index[breaks], [index[-1]]))
        return b"".join(self.frames[s:e] for s, e in zip(self.starts[run_first].tolist(),
                                                          self.ends[run_last].tolist(), strict=True))


def _varint_at(data: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decode the varint at each position (at most 4 bytes: frames are < 256 MiB) in one gather: (value, bytes
    used), bytes used 0 where it is longer. Bytes past the data read as its last byte; a varint that runs past
    its frame is caught by the caller's length check."""
    b = data[np.minimum(pos[:, None] + np.arange(4), data.size - 1)].astype(np.int64)
    more = b >= 0x80
    c0, c1, c2 = more[:, 0], more[:, 0] & more[:, 1], more[:, 0] & more[:, 1] & more[:, 2]
    low = b & 0x7F
    value = low[:, 0] | (c0 * (low[:, 1] << 7)) | (c1 * (low[:, 2] << 14)) | (c2 * (low[:, 3] << 21))
    used = 1 + c0 + c1 + c2
    return value, np.where(c2 & more[:, 3], 0, used)


def check(raw: cpb.RawBatch, max_events: int, max_event_bytes: int) -> RawView:
    """The RawBatch's columns agree with each other and with its frames, or RawBatchProblem says how not."""
    n = len(raw.seqs)
    if n == 0:
        raise RawBatchProblem("INVALID_ARGUMENT", "empty raw batch")
    if n > max_events:
        raise RawBatchProblem("RESOURCE_EXHAUSTED", f"batch of {n} events exceeds the limit of {max_events}")
    columns = {"ends": len(raw.ends), "kinds": len(raw.kinds), "jobs": len(raw.jobs)}
    if any(m != n for m in columns.values()):
        raise RawBatchProblem("INVALID_ARGUMENT", f"raw batch columns disagree: {n} seqs, "
                              + ", ".join(f"{m} {name}" for name, m in columns.items()))
    seqs = np.array(raw.seqs, dtype=np.uint64)
    if seqs[0] == 0:
        raise RawBatchProblem("INVALID_ARGUMENT", "event with seq 0 (sequence numbers start at 1)")
    if seqs[-1] > MAX_SEQ:
        raise RawBatchProblem("OUT_OF_RANGE", f"seq {int(seqs[-1])} exceeds the maximum {MAX_SEQ}")
    if n > 1 and not bool(np.all(seqs[1:] > seqs[:-1])):
        raise RawBatchProblem("INVALID_ARGUMENT", f"batch seqs not strictly ascending: {seqs[:10].tolist()}...")
    ends = np.array(raw.ends, dtype=np.int64)
    starts = np.concatenate(([0], ends[:-1]))
    if int(ends[-1]) != len(raw.frames) or not bool(np.all(ends - starts >= 2)):
        raise RawBatchProblem("INVALID_ARGUMENT", f"frame ends do not tile the {len(raw.frames)} frame bytes")
    data = np.frombuffer(raw.frames, dtype=np.uint8)
    length, used = _varint_at(data, starts + 1)
    bad = (data[starts] != FRAME_TAG) | (used == 0) | (starts + 1 + used + length != ends)
    if bool(bad.any()):
        i = int(np.flatnonzero(bad)[0])
        raise RawBatchProblem("INVALID_ARGUMENT", f"frame of event seq {int(seqs[i])} is not one Event framed as "
                              f"LogBatch field 4 (bytes {int(starts[i])}..{int(ends[i])})")
    if int(length.max()) > max_event_bytes:
        i = int(np.argmax(length))
        raise RawBatchProblem("RESOURCE_EXHAUSTED", f"event seq {int(seqs[i])} of {int(length[i])} bytes exceeds "
                              f"{max_event_bytes}")
    jobs = np.array(raw.jobs, dtype=np.int64)
    if int(jobs.max()) >= len(raw.job_ids):
        raise RawBatchProblem("INVALID_ARGUMENT", f"job index {int(jobs.max())} beyond the batch's "
                              f"{len(raw.job_ids)} job ids")
    for job in raw.job_ids:
        if len(job) > MAX_JOB_ID_CHARS or "\x00" in job:
            raise RawBatchProblem("INVALID_ARGUMENT", f"job id {job[:80]!r}: longer than {MAX_JOB_ID_CHARS} "
                                  "characters or holds a NUL byte")
    kinds = np.array(raw.kinds, dtype=np.uint32)
    if int(kinds.max()) >= KIND_TABLE or not bool(VALID_KIND[kinds].all()):
        raise RawBatchProblem("INVALID_ARGUMENT", f"body kind not one of Event.body's fields: "
                              f"{sorted(set(kinds.tolist()) - set(BODY_FIELD.values()))[:5]}")
    try:
        parsed = cpb.LogBatch.FromString(raw.frames)
    except DecodeError as exc:
        raise RawBatchProblem("INVALID_ARGUMENT", f"frames are not well-formed Events: {exc}") from None
    return RawView(raw.frames, seqs, starts, ends, kinds, jobs, list(raw.job_ids), parsed)

"""Events written straight to their wire bytes, without a protobuf object per event.

A connect flood is the one load that reaches the agent by the hundred thousand (the kernel folds repeats, but a
sweep of distinct ports or hosts is still one record each), and building, filling and serialising a
``gpuguard.v1.Event`` per connect was most of the agent's CPU per event. Here the part every connect of one
thread shares - boot id, process (with or without its ancestry), job - is serialised once through protobuf and
kept on the process; each connect adds only its time and its ``Connect`` body, encoded by hand in the canonical
field order, so the bytes parse to exactly the event ``Enricher`` would have built (tests/test_encoded.py
compares them). The spool puts the seq in front (field 1) and stores the bytes as they are.

Execs and exits come by the thousand a second from a shell loop or a build, each from a new process image, so
nothing is shared between two of them but the job, the boot id and the ancestry: their events are assembled from
a process's fields serialised once per image (``process_fields``: the exec makes them, the exit reuses them) and
a body, again in canonical order.

Only the agent's own pipeline turns this on (``Enricher.encode_events``): sinks that want objects (a printer,
tests) get ``pb.Event`` as before, and ``EncodedEvent.event()`` decodes one when something needs to look.
"""

from __future__ import annotations

import numpy as np

from gpuguard.rawbatch import BODY_FIELD, varint
from gpuguard.v1 import events_pb2 as pb


def field_tag(number: int) -> bytes:
    """The tag of a length-delimited field (a message or a string) numbered ``number``."""
    return varint((number << 3) | 2)


CONNECT_FIELD, EXEC_FIELD, EXIT_FIELD = BODY_FIELD["connect"], BODY_FIELD["exec"], BODY_FIELD["exit"]
BODY_NAMES = {number: name for name, number in BODY_FIELD.items()}
BODY_TAGS = {number: field_tag(number) for number in BODY_FIELD.values()}
PROCESS_TAG = field_tag(pb.Event.PROCESS_FIELD_NUMBER)
JOB_TAG = field_tag(pb.Event.JOB_FIELD_NUMBER)


class ImageTail:
    """A Process's fields from exe on (exe ... exe_sha256) as a message, and its bytes once asked for. Shared by
    the processes that run one exec shape (agent/events.py) in one cgroup as one user: a shell loop's thousands of
    /bin/true serialise it once."""

    __slots__ = ("data", "message")

    def __init__(self, message: pb.Process) -> None:
        self.message = message
        self.data: bytes | None = None

    def serialized(self) -> bytes:
        if self.data is None:
            self.data = self.message.SerializeToString()
        return self.data

    def set_hash(self, digest: str) -> None:
        self.message.exe_sha256 = digest
        self.data = None


class ImageRecord:
    """What every event of one process image shares of its Process (agent/enrich.py ``_image``): the fields
    from exe on (``tail``, perhaps shared with other processes), and made from it on first use the whole message
    without ancestors (for events built as objects) and the serialised pieces (for events built as bytes)."""

    __slots__ = ("fields", "ident", "message", "tail", "thread")

    def __init__(self, ident: tuple[int, int, int], tail: ImageTail) -> None:
        self.ident, self.tail = ident, tail
        self.message: pb.Process | None = None
        self.fields: tuple[bytes, bytes, bytes] | None = None
        self.thread: tuple | None = None       # (fields, tid, comm, the Process's bytes for that thread)


def process_head(key: str, parent_key: str, pid: int) -> bytes:
    """A Process's fields 1-3 (key, parent_key, pid): the part of its bytes that is its own."""
    return text_field(1, key) + text_field(2, parent_key) + int_field(3, pid)


SMALL_VARINTS = tuple(varint(n) for n in range(1 << 14))     # lengths and small values: a look-up, not a call
TEXT_TAGS = tuple(field_tag(n) for n in range(32))
INT_TAGS = tuple(bytes((n << 3,)) for n in range(16))


def text_field(number: int, value: str) -> bytes:
    """A proto3 string field (numbered below 32); the empty string is the default and is not written."""
    if not value:
        return b""
    raw = value.encode()
    n = len(raw)
    return TEXT_TAGS[number] + (SMALL_VARINTS[n] if n < 16384 else varint(n)) + raw


def int_field(number: int, value: int) -> bytes:
    """A proto3 varint field (int32, uint32, int64; numbered below 16); zero is the default and is not written."""
    if not value:
        return b""
    return INT_TAGS[number] + (SMALL_VARINTS[value] if 0 < value < 16384 else varint(value))


class EncodedEvent:
    """A finished event's bytes (every field but seq) and the columns the agent and the spool need: its process,
    its job and its body (the field number of Event.body: a connect unless said)."""

    __slots__ = ("data", "job_id", "kind", "pid")

    def __init__(self, data: bytes, pid: int, job_id: str, kind: int = CONNECT_FIELD) -> None:
        self.data = data
        self.pid = pid
        self.job_id = job_id
        self.kind = kind

    @property
    def body_name(self) -> str:
        return BODY_NAMES[self.kind]

    def event(self) -> pb.Event:
        return pb.Event.FromString(self.data)


class EncodedRun:
    """A drain's finished events back to back (its connects: agent/connect_batch.py; its short lives' execs and
    exits: agent/lifecycle_batch.py; assembled by agent/wire.py): their bytes (every field but seq), where each
    ends, each one's process and job, and each one's body kind (``kinds``, Event.body field numbers; None: all
    connects) - no Python object per event unless one is asked for. The spool frames it whole (agent/spool.py),
    the shipper sends it as it was spooled."""

    __slots__ = ("data", "ends", "job_ids", "jobs", "kinds", "pids")

    def __init__(self, data: bytes, ends: np.ndarray, pids: np.ndarray, jobs: np.ndarray, job_ids: list[str],
                 kinds: np.ndarray | None = None) -> None:
        self.data, self.ends, self.pids, self.jobs, self.job_ids = data, ends, pids, jobs, job_ids
        self.kinds = kinds

    def __len__(self) -> int:
        return int(self.ends.size)

    def kind_counts(self) -> dict[str, int]:
        """Events by body kind (metrics)."""
        if self.kinds is None:
            return {"connect": len(self)}
        numbers, counts = np.unique(self.kinds, return_counts=True)
        return {BODY_NAMES[k]: c for k, c in zip(numbers.tolist(), counts.tolist(), strict=True)}

    def events(self) -> list[EncodedEvent]:
        """One EncodedEvent each (printers, tests, user-space enforcement of execs)."""
        starts = [0, *self.ends.tolist()][:-1]
        kinds = self.kinds.tolist() if self.kinds is not None else [CONNECT_FIELD] * len(self)
        return [EncodedEvent(self.data[s:e], pid, self.job_ids[j], kind)
                for s, e, pid, j, kind in zip(starts, self.ends.tolist(), self.pids.tolist(), self.jobs.tolist(), kinds,
                                              strict=True)]


ENCODED = (EncodedEvent, EncodedRun)     # records that are already their bytes: connects, execs, exits


def count(records: list) -> int:
    """Events in a list of records (a run holds many)."""
    return sum(len(r) if type(r) is EncodedRun else 1 for r in records)


def expand(records: list) -> list:
    """The records with each run as its events (sinks that look at events one by one)."""
    if not any(type(r) is EncodedRun for r in records):
        return records
    out: list = []
    for r in records:
        if type(r) is EncodedRun:
            out.extend(r.events())
        else:
            out.append(r)
    return out


class EncodedConnect:
    """A connect waiting for its outcome (agent/enrich.py PendingConnects): everything but the result."""

    __slots__ = ("address", "daddr", "dport", "job_id", "name", "nolink", "pid", "prefix", "repeats", "ts_ns")

    def __init__(self, ts_ns: int, prefix: bytes, address: bytes, dport: int, name: bytes, repeats: int, pid: int,
                 job_id: str, daddr: str, nolink: bool = False) -> None:
        self.ts_ns, self.prefix, self.address, self.dport, self.name = ts_ns, prefix, address, dport, name
        self.repeats, self.pid, self.job_id, self.daddr, self.nolink = repeats, pid, job_id, daddr, nolink

    def done(self, result: int) -> EncodedEvent:
        return EncodedEvent(connect_data(self.ts_ns, self.prefix, self.address, self.dport, result, self.name,
                                         self.repeats, self.nolink), self.pid, self.job_id)


# Connect's fields, written in its field order: family (1), proto (2), daddr (3) | dport (4), result (5) |
# name (6), name_scope (7) | repeats (8), image_nolink (9). The two parts shared by many connects are made once by
# their callers.
IMAGE_NOLINK_FIELD = bytes((9 << 3, 1))      # field 9, varint, true
def connect_address(family: str, proto: str, daddr: str) -> bytes:
    """Fields 1-3: one per destination and socket type."""
    return text_field(1, family) + text_field(2, proto) + text_field(3, daddr)


def connect_name(name: str, name_scope: str) -> bytes:
    """Fields 6-7: one per job and destination."""
    return text_field(6, name) + text_field(7, name_scope)


def connect_data(ts_ns: int, prefix: bytes, address: bytes, dport: int, result: int, name: bytes,
                 repeats: int, nolink: bool = False) -> bytes:
    """A connect event's bytes (every field but seq): its time, the shared prefix (boot id, process, job), the
    Connect body."""
    body = address + int_field(4, dport) + int_field(5, result) + name + int_field(8, repeats)
    if nolink:
        body += IMAGE_NOLINK_FIELD
    return event_data(ts_ns, prefix, CONNECT_FIELD, body)


def encoded_connect(ts_ns: int, prefix: bytes, family: str, proto: str, daddr: str, dport: int, name: str,
                    name_scope: str, repeats: int, pid: int, job_id: str, nolink: bool = False) -> EncodedConnect:
    return EncodedConnect(ts_ns, prefix, connect_address(family, proto, daddr), dport,
                          connect_name(name, name_scope), repeats, pid, job_id, daddr, nolink)


def pid_of(rec: pb.Event | EncodedEvent) -> int:
    """The process a record is about, whichever form it has."""
    return rec.pid if type(rec) is EncodedEvent else rec.process.pid


def with_seq(seq: int, data: bytes) -> bytes:
    """The spooled bytes of an encoded event: its seq (field 1) first, as the canonical serialisation has it."""
    return b"\x08" + varint(seq) + data if seq else data


def length_delimited(tag: bytes, payload: bytes) -> bytes:
    """A message field (tag, length, the message's bytes): present even when the message is empty."""
    n = len(payload)
    return tag + (SMALL_VARINTS[n] if n < 16384 else varint(n)) + payload


def process_data(fields: tuple[bytes, bytes, bytes], tid: int, comm: str) -> bytes:
    """A Process's bytes in field order, without its ancestors: the image's fields 1-3 (key, parent_key, pid), the
    thread (4), field 5 (ppid), the thread's comm (6), fields 7-13 (exe ... exe_sha256). The ancestors (14) go
    last and are repeated, so appending the bytes of a Process holding only them adds them."""
    head, ppid, tail = fields
    return head + int_field(4, tid) + ppid + text_field(6, comm) + tail


def event_prefix(boot: bytes, process: bytes, job: bytes) -> bytes:
    """What an event holds between its time and its body: the boot id field (3), the process (4), the job field
    (5). A connect storm's events share it (agent/enrich.py ``_connect_prefix``)."""
    return boot + length_delimited(PROCESS_TAG, process) + job


def event_data(ts_ns: int, prefix: bytes, body_field: int, body: bytes) -> bytes:
    """An event's bytes (every field but seq): time (2), the prefix, the body (its tag, then the message's bytes;
    written even when empty, as the object path sets it)."""
    return int_field(2, ts_ns) + prefix + length_delimited(BODY_TAGS[body_field], body)

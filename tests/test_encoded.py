"""Connects encoded without a protobuf object (agent/encoded.py) are the events the object path builds: the same
kernel records through two enrichers, one of each kind, give byte-for-byte the same spooled events (pure logic:
this process stands in for the observed one, a plain directory for the cgroup tree)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import wire
from agent.batch import ArenaBatch
from agent.connect_batch import BulkConnects, bulk_ready
from agent.decode import CONNECT_IMAGE_NOLINK
from agent.encoded import EncodedEvent, expand, pid_of, varint
from agent.enrich import Enricher
from agent.events import (
    ConnectEvent,
    ConnectResultEvent,
    DecodeStats,
    ExecEvent,
    ExecShape,
    ExitEvent,
    ForkEvent,
    Header,
)
from agent.exe_hash import file_key
from agent.identity import BootClock, HostIdentity
from agent.jobs import JobResolver
from agent.process_table import ProcessTable
from agent.spool import Spool
from gpuguard.rawbatch import FramedRun
from gpuguard.v1 import events_pb2 as pb
from tests.conftest import arena

PID = os.getpid()


def enricher(root: Path, encode: bool) -> Enricher:
    clock = BootClock()
    clock.offset_ns = 1_700_000_000 * 10**9           # both enrichers turn kernel times into the same wall times
    e = Enricher(HostIdentity("h", "node-1", "boot-1"), ProcessTable("boot-1"), JobResolver(root), clock=clock)
    e.encode_events = encode
    return e


def connect(ts: int, cg: int, daddr: str, dport: int, sk: int, *, tid: int = PID, comm: str = "python3",
            family: int = 2, sock_type: int = 1, repeats: int = 0, image_nolink: bool = False) -> ConnectEvent:
    return ConnectEvent(Header(ts, cg, tid, PID, 1000, 1000, 0, comm), family, sock_type, daddr, dport, sk,
                        repeats=repeats, image_nolink=image_nolink)


def outcome(ts: int, cg: int, sk: int, result: int) -> ConnectResultEvent:
    return ConnectResultEvent(Header(ts, cg, 0, 0, 0, 0, result, ""), sk)


def spooled(tmp: Path, name: str, e: Enricher, events: list) -> list[bytes]:
    """What the spool stores for these kernel records, in order (seq from 1)."""
    out = [r for ev in events if (r := e.enrich(ev)) is not None]
    e.connects.wait_s = 0                    # the connects still waiting for an outcome: -EINPROGRESS now
    out.extend(e.connects.expired())
    spool = Spool(tmp / name)
    spool.append(out)
    return [body for _seq, body, _kind, _job in raw_records(spool)]


def raw_records(spool: Spool) -> list[tuple[int, bytes, int, str]]:
    """(seq, bytes, kind, job) of every spooled event, runs unwrapped."""
    return [r for chunk in spool.read_raw_after(0, 10_000)
            for r in (chunk.records() if type(chunk) is FramedRun else [chunk])]


@pytest.fixture
def job_root(tmp_path):
    root = tmp_path / "cgroup"
    (root / "slurm" / "uid_0" / "job_4242").mkdir(parents=True)
    return root


def test_varint_matches_protobuf():
    for n in (1, 127, 128, 300, 16383, 16384, 2**21 - 1, 2**21, 2**28 - 1, 2**28, 2**31 - 1, 2**63, 2**64 - 1):
        assert pb.Event(seq=n).SerializeToString() == b"\x08" + varint(n)
    for n in (-1, -errno.ECONNREFUSED, -(2**31)):                # negative int32: ten bytes
        assert pb.Connect(result=n).SerializeToString() == b"\x28" + varint(n)


def test_a_storm_from_one_process_encodes_to_the_object_paths_bytes(tmp_path, job_root):
    cg = os.stat(job_root / "slurm" / "uid_0" / "job_4242").st_ino
    records = []
    for i in range(50):                              # refused, established, v6, UDP, folded repeats, no outcome
        records.append(connect(100 + i, cg, "127.0.0.1", 20000 + i, 0xFFFF0000 + i, repeats=i % 3,
                               image_nolink=i % 7 == 0))     # a program that deleted itself
        if i % 5:
            records.append(outcome(101 + i, cg, 0xFFFF0000 + i, -errno.ECONNREFUSED if i % 2 else 0))
    records.append(connect(200, cg, "2001:db8::7", 443, 77, family=10))
    records.append(outcome(201, cg, 77, -errno.ETIMEDOUT))
    records.append(connect(202, cg, "10.0.0.9", 53, 0, sock_type=2))
    records.append(connect(203, cg, "10.0.0.9", 8000, 78, tid=PID + 1, comm="worker"))   # another thread
    records.append(outcome(204, cg, 78, 0))
    plain = spooled(tmp_path, "plain", enricher(job_root, False), records)
    encoded = spooled(tmp_path, "encoded", enricher(job_root, True), records)
    assert len(plain) == len(encoded) == 53
    for a, b in zip(plain, encoded, strict=True):
        assert pb.Event.FromString(a) == pb.Event.FromString(b)
        assert a == b                                  # canonical field order, the same bytes on the wire
    first = pb.Event.FromString(encoded[0])
    assert first.job.id == "4242" and first.process.pid == PID and first.connect.dport == 20001


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(daddr=st.text(max_size=60), dport=st.integers(0, 65535), result=st.integers(-4095, 0),
       repeats=st.integers(0, 2**32 - 1), comm=st.text(max_size=15), family=st.sampled_from([2, 10, 0]))
def test_any_field_values_encode_alike(tmp_path, job_root, daddr, dport, result, repeats, comm, family):
    cg = os.stat(job_root / "slurm").st_ino
    records = [connect(5, cg, daddr, dport, 9, comm=comm, family=family, repeats=repeats),
               outcome(6, cg, 9, result)]
    sub = tmp_path / f"h{abs(hash((daddr, dport, result, repeats, comm, family)))}"
    plain = spooled(sub, "plain", enricher(job_root, False), records)
    encoded = spooled(sub, "encoded", enricher(job_root, True), records)
    assert plain == encoded


def test_encoded_connects_pass_the_agent_side_filters(job_root):
    e = enricher(job_root, True)
    cg = os.stat(job_root / "slurm").st_ino
    assert e.enrich(connect(1, cg, "127.0.0.1", 1, 5)) is None          # held for its outcome
    rec = e.enrich(outcome(2, cg, 5, -errno.ECONNREFUSED))
    assert type(rec) is EncodedEvent and pid_of(rec) == PID and rec.body_name == "connect"
    assert rec.event().connect.result == -errno.ECONNREFUSED
    e.enrich(ExitEvent(Header(3, cg, PID, PID, 0, 0, 0, "python3"), 0, 0))


class DigestLater:
    """An executable hasher whose digest is known from the n-th lookup on (the worker computes it meanwhile)."""

    def __init__(self, known_from: int) -> None:
        self.calls, self.known_from = 0, known_from

    def lookup(self, exe: str, pid: int, inode) -> str:
        self.calls += 1
        return f"{len(exe):02d}" + "ab" * 31 if self.calls >= self.known_from else ""


def exec_(ts: int, cg: int, pid: int, argv: list[str], *, comm: str = "true", filename: str = "/usr/bin/true",
          stdio: list[str] | None = None, traits: list[str] | None = None, truncated: bool = False,
          slurm: str = "") -> ExecEvent:
    return ExecEvent(Header(ts, cg, pid, pid, 1000, 1000, 0, comm), filename, argv, truncated, False, slurm, ppid=PID,
                     stdio=stdio, traits=traits, argv_bytes=sum(len(a.encode()) + 1 for a in argv))


def fork(ts: int, cg: int, child: int) -> ForkEvent:
    return ForkEvent(Header(ts, cg, PID, PID, 1000, 1000, 0, "python3"), child, PID)


def exit_(ts: int, cg: int, pid: int, code: int = 0, signal: int = 0, comm: str = "true") -> ExitEvent:
    return ExitEvent(Header(ts, cg, pid, pid, 1000, 1000, 0, comm), code, signal)


def test_execs_and_exits_encode_to_the_object_paths_bytes(tmp_path, job_root):
    """A shell loop's children (fork, exec, exit), an exec of a process no fork was seen for, an exit of one never
    seen, arguments that are empty or not ASCII, stdio and traits, a job from the cgroup and one from SLURM_JOB_ID,
    a signal, and an image whose hash becomes known between its exec and its exit: the same events, byte for
    byte."""
    cg = os.stat(job_root / "slurm" / "uid_0" / "job_4242").st_ino
    host_cg = os.stat(job_root).st_ino
    records: list = []
    for i in range(6):
        child = 3_900_000 + i
        records += [fork(10 * i, cg, child),
                    exec_(10 * i + 1, cg, child, ["/usr/bin/true", "", f"x{i}", "héllo"], stdio=["pty", "pipe", "pipe"],
                          traits=["image_nolink"] if i == 2 else None),
                    exit_(10 * i + 2, cg, child, code=i, signal=9 if i == 3 else 0)]
    records += [exec_(100, host_cg, 3_900_100, ["/bin/sh", "-c", "sleep 1"], comm="sh", slurm="777"),
                exit_(101, host_cg, 3_900_100, comm="sh"),
                exit_(102, cg, 3_900_200, code=1, comm="ghost")]
    plain_e, encoded_e = enricher(job_root, False), enricher(job_root, True)
    plain_e.hasher, encoded_e.hasher = DigestLater(3), DigestLater(3)
    plain = spooled(tmp_path, "plain", plain_e, records)
    encoded = spooled(tmp_path, "encoded", encoded_e, records)
    assert len(plain) == len(encoded) == 6 * 2 + 3
    for a, b in zip(plain, encoded, strict=True):
        assert pb.Event.FromString(a) == pb.Event.FromString(b)
        assert a == b                                  # canonical field order, the same bytes on the wire
    events = [pb.Event.FromString(b) for b in encoded]
    assert events[0].exec.argv == ["/usr/bin/true", "", "x0", "héllo"] and events[0].process.ancestors
    assert events[0].job.id == "4242" and not events[1].process.ancestors and events[1].exit.code == 0
    assert events[7].exit.signal == 9 and events[12].job.id == "777" and events[14].process.comm == "ghost"
    assert not events[0].process.exe_sha256 and events[-4].process.exe_sha256    # known from the third lookup on


def test_one_images_exec_connects_and_exit_share_its_fields_as_the_object_path_does(tmp_path, job_root):
    """Connects from a process whose exec was seen (no ancestry: the exec carried it), then from a forked child
    first seen by its connect (ancestry once), a hash learned in the middle of the storm (every later event
    carries it), a second thread, and the exit: one image's cached fields serve all of them, byte for byte the
    object path's."""
    cg = os.stat(job_root / "slurm" / "uid_0" / "job_4242").st_ino
    child, stranger = 3_900_300, 3_900_400
    records: list = [fork(1, cg, child), exec_(2, cg, child, ["/usr/bin/curl", "-s", "http://10.0.0.9/"])]
    for i in range(8):
        tid = child if i % 3 else child + 1
        records += [ConnectEvent(Header(10 + i, cg, tid, child, 1000, 1000, 0, "curl"), 2, 1, "10.0.0.9", 80 + i,
                                 500 + i),
                    outcome(11 + i, cg, 500 + i, -errno.ECONNREFUSED)]
    records += [fork(29, cg, stranger),        # a child that never execs: its first event carries the ancestry
                ConnectEvent(Header(30, cg, stranger, stranger, 1000, 1000, 0, "nc"), 2, 1, "10.0.0.9", 9, 600),
                outcome(31, cg, 600, 0),
                ConnectEvent(Header(32, cg, stranger, stranger, 1000, 1000, 0, "nc"), 2, 1, "10.0.0.9", 10, 601),
                outcome(33, cg, 601, 0),
                exit_(40, cg, child, comm="curl")]
    plain_e, encoded_e = enricher(job_root, False), enricher(job_root, True)
    plain_e.hasher, encoded_e.hasher = DigestLater(4), DigestLater(4)
    plain = spooled(tmp_path, "plain", plain_e, records)
    encoded = spooled(tmp_path, "encoded", encoded_e, records)
    assert len(plain) == len(encoded) == 1 + 8 + 2 + 1
    for a, b in zip(plain, encoded, strict=True):
        assert pb.Event.FromString(a) == pb.Event.FromString(b)
        assert a == b
    events = [pb.Event.FromString(b) for b in encoded]
    assert events[0].process.ancestors and not any(e.process.ancestors for e in events[1:9])
    assert not events[1].process.exe_sha256 and events[8].process.exe_sha256 and events[-1].process.exe_sha256
    assert events[9].process.ancestors and not events[10].process.ancestors      # the stranger's first event only
    assert {e.process.tid for e in events[1:9]} == {child, child + 1}


def test_execs_of_one_shape_share_one_tail_and_give_the_object_paths_bytes(tmp_path, job_root):
    """A shell loop's identical execs (one ExecShape from the batch decoder, one executable file) share the Process
    fields from exe on; the hash learned in the middle of the loop reaches every later event, also the exits of
    processes whose exec went out before it; a different file of the same path does not share."""
    cg = os.stat(job_root / "slurm" / "uid_0" / "job_4242").st_ino
    shape, argv = ExecShape(), ["/usr/bin/true", "x"]
    records: list = []
    for i in range(6):
        child = 3_901_000 + i
        ex = exec_(10 * i + 1, cg, child, argv)
        ex.shape, ex.exe_inode = shape, (8, 77 if i != 5 else 78, 1)      # the last: the file was replaced
        records += [fork(10 * i, cg, child), ex]
        if i % 2:
            records.append(exit_(10 * i + 2, cg, child))
    records += [exit_(90 + i, cg, 3_901_000 + i) for i in range(0, 6, 2)]
    plain_e, encoded_e = enricher(job_root, False), enricher(job_root, True)
    plain_e.hasher, encoded_e.hasher = DigestLater(3), DigestLater(3)
    plain = spooled(tmp_path, "plain", plain_e, records)
    encoded = spooled(tmp_path, "encoded", encoded_e, records)
    assert len(plain) == len(encoded) == 12
    for a, b in zip(plain, encoded, strict=True):
        assert pb.Event.FromString(a) == pb.Event.FromString(b)
        assert a == b
    events = [pb.Event.FromString(b) for b in encoded]
    assert not events[0].process.exe_sha256 and all(e.process.exe_sha256 for e in events[-3:])
    assert len(encoded_e._tails) == 2 and shape.body is not None      # one per file; the body made once
    assert all(e.exec.argv == argv for e in events if e.WhichOneof("body") == "exec")


def test_encoded_execs_and_exits_say_their_kind(tmp_path, job_root):
    """The spool files each under its own body (the collector's columns), and the agent's counters see it."""
    e = enricher(job_root, True)
    cg = os.stat(job_root / "slurm").st_ino
    ex = e.enrich(exec_(1, cg, 3_900_300, ["/usr/bin/true"]))
    gone = e.enrich(exit_(2, cg, 3_900_300))
    assert type(ex) is EncodedEvent and ex.body_name == "exec" and ex.event().exec.filename == "/usr/bin/true"
    assert type(gone) is EncodedEvent and gone.body_name == "exit" and pid_of(gone) == 3_900_300
    spool = Spool(tmp_path / "s")
    spool.append([ex, gone])
    assert [kind for _seq, _body, kind, _job in raw_records(spool)] == [10, 13]
    run = spool.read_raw_after(0, 10)[0]                  # one run, each event with its own kind
    assert type(run) is FramedRun and run.kinds().tolist() == [10, 13] and run.job_ids == [ex.job_id]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=st.lists(st.text(max_size=40), max_size=8), comm=st.text(max_size=15), filename=st.text(max_size=80),
       code=st.integers(0, 255), signal=st.integers(0, 64), truncated=st.booleans())
def test_any_exec_and_exit_encode_alike(tmp_path, job_root, argv, comm, filename, code, signal, truncated):
    cg = os.stat(job_root / "slurm").st_ino
    records = [fork(1, cg, 3_900_400), exec_(2, cg, 3_900_400, argv, comm=comm, filename=filename, truncated=truncated),
               exit_(3, cg, 3_900_400, code, signal, comm=comm)]
    sub = tmp_path / f"h{abs(hash((tuple(argv), comm, filename, code, signal, truncated)))}"
    assert spooled(sub, "plain", enricher(job_root, False), records) == \
        spooled(sub, "encoded", enricher(job_root, True), records)


# ---- a drain's connects as columns (agent/connect_batch.py) against the ordered loop -----------------------------
def _v4(addr: str) -> bytes:
    return bytes(10) + b"\xff\xff" + bytes(int(x) for x in addr.split("."))


def c_row(ts, cg, daddr, dport, sk, *, tid=PID, comm=b"python3", sock_type=1, repeats=0, pid=PID, flags=0):
    return pb.KIND_CONNECT, {"hdr_ts_ns": ts, "hdr_cgroup_id": cg, "hdr_tid": tid, "hdr_tgid": pid, "hdr_uid": 1000,
                             "hdr_gid": 1000, "hdr_comm": comm, "family": 2, "dport": dport, "sock_type": sock_type,
                             "daddr": np.void(_v4(daddr)), "sk": sk, "repeats": repeats, "flags": flags}


def r_row(ts, cg, sk, result):
    return pb.KIND_CONNECT_RESULT, {"hdr_ts_ns": ts, "hdr_cgroup_id": cg, "hdr_result": result, "sk": sk}


def through(e: Enricher, batches: list[ArenaBatch], bulk: bool) -> list[bytes]:
    out = []
    for b in batches:
        if bulk:
            assert bulk_ready(b, e)
            columns = BulkConnects(b, e, set())
            columns.note_leaving()
            out.extend(expand(columns.events()))
        else:
            out.extend(r for ev in b.events(DecodeStats()) if (r := e.enrich(ev)) is not None)
    e.connects.wait_s = 0
    out.extend(e.connects.expired())
    return sorted(r.data for r in out)


@pytest.mark.parametrize("c_library", [True, False], ids=["wire.c", "python"])
def test_connects_as_columns_are_the_ordered_loops_events(job_root, monkeypatch, c_library):
    """A storm with what a loop does to socket addresses (one freed and reused at once, its second outcome after),
    threads of one process, UDP, an off-node peer, connects whose outcomes come in the next drain, and connects
    that never get one: the same events, byte for byte, and the same state left behind - their bytes assembled by
    agent/wire.c or, without it, in Python."""
    if c_library:
        assert wire.library() is not None, "agent/wire.c could not be built or loaded"
    else:
        monkeypatch.setattr(wire, "library", lambda: None)
    cg = os.stat(job_root / "slurm" / "uid_0" / "job_4242").st_ino
    first, second = [], []
    for i in range(80):
        sk = 0xAA00 + i % 7                                  # seven socket addresses reused over and over
        first.append(c_row(1000 + 10 * i, cg, "127.0.0.1", 20000 + i, sk, repeats=i % 2,
                           flags=CONNECT_IMAGE_NOLINK if i % 9 == 0 else 0))
        first.append(r_row(1001 + 10 * i, cg, sk, -errno.ECONNREFUSED if i % 3 else 0))   # told apart
    first += [c_row(2000, cg, "203.0.113.9", 443, 0xBB01, tid=PID + 1, comm=b"worker"),   # waits for the next drain
              c_row(2001, cg, "10.0.0.9", 53, 0xBB02, sock_type=2),                      # UDP: no outcome
              c_row(2002, cg, "198.51.100.7", 22, 0xBB03, flags=CONNECT_IMAGE_NOLINK)]   # never answered
    second += [r_row(3000, cg, 0xBB01, 0)] + [c_row(3001 + i, cg, "127.0.0.1", 21000 + i, 0xCC00 + i)
                                               for i in range(70)]
    second += [r_row(3100 + i, cg, 0xCC00 + i, -errno.ECONNREFUSED) for i in range(70)]
    loop, columns = enricher(job_root, True), enricher(job_root, True)
    expected = through(loop, [arena(first), arena(second)], bulk=False)
    got = through(columns, [arena(first), arena(second)], bulk=True)
    assert len(expected) == 80 + 3 + 70 and got == expected
    assert sum(pb.Event.FromString(d).connect.image_nolink for d in got) == 9 + 1     # the flag kept, both ways
    assert columns.connected_out == loop.connected_out and PID + 0 in columns.connected_out
    ancestry = [pb.Event.FromString(d).process.ancestors for d in got]
    assert sum(1 for a in ancestry if a) <= 1               # a process image's ancestry rides on one event


def test_only_drains_that_cannot_change_the_connects_go_as_columns(job_root):
    e = enricher(job_root, True)
    cg = os.stat(job_root / "slurm").st_ino
    storm = [c_row(10 + i, cg, "127.0.0.1", 1000 + i, 0xD000 + i) for i in range(70)]
    assert bulk_ready(arena(storm), e)
    assert not bulk_ready(arena(storm[:10]), e)                                    # too few to bother
    exec_row = (pb.KIND_EXEC, {"hdr_ts_ns": 5, "hdr_tgid": PID, "hdr_tid": PID})
    assert not bulk_ready(arena([exec_row, *storm]), e)                           # its image changes in the drain
    other = (pb.KIND_EXEC, {"hdr_ts_ns": 5, "hdr_tgid": PID + 99, "hdr_tid": PID + 99})
    assert bulk_ready(arena([other, *storm]), e)                                   # another process's exec
    assert not bulk_ready(arena([(pb.KIND_FLOW, {"hdr_ts_ns": 5}), *storm]), e)   # a DNS answer may name them
    e.connects.denied(PID, "127.0.0.1", 1000)
    assert not bulk_ready(arena(storm), e)                                         # a denial waits for its connect


def test_a_relative_exec_is_named_by_the_file_that_ran(tmp_path):
    """`cd /dev/shm && ./x` must not pass the rules that read where a program runs from: a relative exec's process
    gets the absolute path of the file the kernel ran (cwd joined, checked by inode through the process's root);
    another file under that name, or a process gone, leaves the name as given."""
    hidden = tmp_path / ".x"
    hidden.mkdir()
    shutil.copy("/bin/sleep", hidden / "s")
    proc = subprocess.Popen(["./s", "30"], cwd=hidden)
    try:
        e = enricher(tmp_path, encode=True)
        image = file_key(os.stat(hidden / "s"))
        assert e._absolute(proc.pid, "./s", image) == str(hidden / "s")
        assert e._absolute(proc.pid, "/usr/bin/sleep", image) == "/usr/bin/sleep"       # absolute: as given
        other = file_key(os.stat("/bin/sh"))
        assert e._absolute(proc.pid, "./t", other) == "./t"                             # not the file that ran
    finally:
        proc.kill()
        proc.wait(5)
    assert enricher(tmp_path, encode=True)._absolute(proc.pid, "./s", image) == "./s"   # gone: as given
    holder = subprocess.Popen(["sleep", "30"], cwd=hidden)                             # ... unless its parent is there
    try:
        assert enricher(tmp_path, encode=True)._absolute(proc.pid, "./s", image, holder.pid) == str(hidden / "s")
    finally:
        holder.kill()
        holder.wait(5)

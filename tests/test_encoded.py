"""Connects encoded without a protobuf object (agent/encoded.py) are the events the object path builds: the same
kernel records through two enrichers, one of each kind, give byte-for-byte the same spooled events (pure logic:
this process stands in for the observed one, a plain directory for the cgroup tree)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.encoded import EncodedEvent, varint
from agent.enrich import Enricher
from agent.events import ConnectEvent, ConnectResultEvent, ExitEvent, Header
from agent.identity import BootClock, HostIdentity
from agent.jobs import JobResolver
from agent.process_table import ProcessTable
from agent.runtime import pid_of
from agent.spool import Spool
from gpuguard.v1 import events_pb2 as pb

PID = os.getpid()


def enricher(root: Path, encode: bool) -> Enricher:
    clock = BootClock()
    clock.offset_ns = 1_700_000_000 * 10**9           # both enrichers turn kernel times into the same wall times
    e = Enricher(HostIdentity("h", "node-1", "boot-1"), ProcessTable("boot-1"), JobResolver(root), clock=clock)
    e.encode_connects = encode
    return e


def connect(ts: int, cg: int, daddr: str, dport: int, sk: int, *, tid: int = PID, comm: str = "python3",
            family: int = 2, sock_type: int = 1, repeats: int = 0) -> ConnectEvent:
    return ConnectEvent(Header(ts, cg, tid, PID, 1000, 1000, 0, comm), family, sock_type, daddr, dport, sk,
                        repeats=repeats)


def outcome(ts: int, cg: int, sk: int, result: int) -> ConnectResultEvent:
    return ConnectResultEvent(Header(ts, cg, 0, 0, 0, 0, result, ""), sk)


def spooled(tmp: Path, name: str, e: Enricher, events: list) -> list[bytes]:
    """What the spool stores for these kernel records, in order (seq from 1)."""
    out = [r for ev in events if (r := e.enrich(ev)) is not None]
    e.connects.wait_s = 0                    # the connects still waiting for an outcome: -EINPROGRESS now
    out.extend(e.connects.expired())
    spool = Spool(tmp / name)
    spool.append(out)
    return [body for _seq, body, _kind, _job in spool.read_raw_after(0, 10_000)]


@pytest.fixture
def job_root(tmp_path):
    root = tmp_path / "cgroup"
    (root / "slurm" / "uid_0" / "job_4242").mkdir(parents=True)
    return root


def test_varint_matches_protobuf():
    for n in (1, 127, 128, 300, 2**31 - 1, 2**63, 2**64 - 1):
        assert pb.Event(seq=n).SerializeToString() == b"\x08" + varint(n)
    for n in (-1, -errno.ECONNREFUSED, -(2**31)):                # negative int32: ten bytes
        assert pb.Connect(result=n).SerializeToString() == b"\x28" + varint(n)


def test_a_storm_from_one_process_encodes_to_the_object_paths_bytes(tmp_path, job_root):
    cg = os.stat(job_root / "slurm" / "uid_0" / "job_4242").st_ino
    records = []
    for i in range(50):                              # refused, established, v6, UDP, folded repeats, no outcome
        records.append(connect(100 + i, cg, "127.0.0.1", 20000 + i, 0xFFFF0000 + i, repeats=i % 3))
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

"""Whatever an observed process puts in its name, path, argv or cgroup, the agent decodes, enriches,
spools and ships it: no exception, valid UTF-8 on the wire, bounded sizes (property-based)."""

from __future__ import annotations

import os
import struct
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent.decode import EV_EXEC, EXEC_TAIL, HEADER, decode
from agent.enrich import Enricher
from agent.identity import HostIdentity
from agent.jobs import JobResolver
from agent.process_table import ProcessTable, read_proc
from agent.shipper import MAX_BATCH_BYTES, MAX_RECORD_BYTES, Shipper
from agent.spool import Spool
from agent.text import clean, unclean
from gpuguard.v1 import collector_pb2 as cpb
from gpuguard.v1 import events_pb2 as pb

ESCAPE_LOOKALIKE = b"\\x"
names = st.binary(min_size=0, max_size=300)


@given(st.binary(max_size=2000))
def test_clean_is_valid_utf8_and_reversible(raw):
    text = clean(raw)
    text.encode("utf-8")                                  # never raises: valid on the wire
    if ESCAPE_LOOKALIKE not in raw:
        assert unclean(text) == raw
    assert clean(raw.decode("utf-8", "surrogateescape")) == text   # same result from an os.* str


def exec_event(pid: int, comm: bytes, filename: bytes, argv: list[bytes]) -> bytes:
    args = b"\0".join(argv) + b"\0"
    head = HEADER.pack(10**9, 1, EV_EXEC, pid, pid, 0, 0, 0, comm[:16].ljust(16, b"\0"))
    return head + EXEC_TAIL.pack(len(argv), min(len(args), 2048), 0, 0, filename[:255], b"", 0, 1, 0, 0, 0, 0, 0, 0,
                                 0, args[:2048])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(comm=names, filename=names, argv=st.lists(st.binary(max_size=200), max_size=12),
       cgroup=st.binary(min_size=1, max_size=200).filter(lambda b: b"/" not in b and b"\0" not in b
                                                          and b not in (b".", b"..")))
@example(comm=b"", filename=b"", argv=[], cgroup=b".\x01")      # a hidden cgroup name kept its dot only since 12-05
def test_enrich_spool_ship_with_arbitrary_bytes(tmp_path, comm, filename, argv, cgroup):
    with tempfile.TemporaryDirectory(dir=tmp_path) as tmp:
        root = Path(tmp) / "cgroup"
        (root / os.fsdecode(cgroup)).mkdir(parents=True)   # a cgroup with any name (a plain dir stands in)
        jobs = JobResolver(root)
        cg_id = os.stat(root / os.fsdecode(cgroup)).st_ino
        identity = HostIdentity("h", "h", "b")
        enricher = Enricher(identity, ProcessTable("b"), jobs)
        raw = exec_event(os.getpid(), comm, filename, [a.replace(b"\0", b"") for a in argv])
        raw = raw[:8] + struct.pack("<Q", cg_id) + raw[16:]
        rec = enricher.enrich(decode(raw))
        assert rec.process.cgroup == clean(b"/" + cgroup)
        spool = Spool(Path(tmp) / "spool")
        assert spool.append([rec]) == 1
        shipper = Shipper("127.0.0.1:1", spool, identity)
        batch = shipper.build_batch(spool.read_after(0, 10))
        wire = batch.SerializeToString()
        ev = cpb.EventBatch.FromString(wire).events[0]      # what the collector parses
        assert ev.seq == 1 and ev.HasField("exec")
        assert ev.exec.filename == clean(filename.split(b"\0")[0][:255])
        assert ev.process.comm == clean(comm[:16].split(b"\0")[0])
        assert len(wire) <= MAX_BATCH_BYTES


def test_a_record_too_large_is_quarantined_and_the_stream_moves_on(tmp_path):
    spool = Spool(tmp_path / "spool")
    huge = pb.Event(ts_ns=1, exec=pb.Exec(filename="/x", argv=["a" * (2 << 20)]))
    small = pb.Event(ts_ns=2, exit=pb.Exit(code=0))
    spool.append([huge, small, pb.Event(ts_ns=3, exit=pb.Exit(code=1))])
    shipper = Shipper("127.0.0.1:1", spool, HostIdentity("h", "h", "b"))
    batch = shipper.build_batch(spool.read_after(0, 10))
    assert [e.seq for e in batch.events] == [1, 2, 3]
    assert [e.WhichOneof("body") for e in batch.events] == ["gap", "exit", "exit"]
    assert "quarantined" in batch.events[0].gap.reason and str(MAX_RECORD_BYTES) in batch.events[0].gap.reason
    assert (batch.events[0].gap.from_seq, batch.events[0].gap.to_seq) == (1, 1)
    assert shipper.quarantine.count == 1
    kept = [p.name for p in (tmp_path / "spool" / "quarantine").iterdir()]
    assert kept == [f"seq-{1:020d}.pb"]
    assert pb.Event.FromString((tmp_path / "spool" / "quarantine" / kept[0]).read_bytes()).exec.filename == "/x"


def test_batches_stay_under_the_byte_ceiling(tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.append([pb.Event(ts_ns=1, exec=pb.Exec(filename="/x", argv=["a" * (900 << 10)])) for _ in range(10)])
    shipper = Shipper("127.0.0.1:1", spool, HostIdentity("h", "h", "b"))
    first = shipper.build_batch(spool.read_after(0, 512))
    assert 1 <= len(first.events) < 10 and first.ByteSize() <= MAX_BATCH_BYTES
    rest = shipper.build_batch(spool.read_after(first.events[-1].seq, 512))
    assert rest.events[0].seq == first.events[-1].seq + 1          # nothing skipped


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(comm=st.binary(max_size=15).filter(lambda b: b")" not in b), cmdline=st.binary(max_size=5000),
       exe=st.binary(min_size=1, max_size=100).filter(lambda b: b"/" not in b and b"\0" not in b
                                                       and b not in (b".", b"..")))
def test_proc_seeding_reads_any_bytes(tmp_path, comm, cmdline, exe):
    with tempfile.TemporaryDirectory(dir=tmp_path) as tmp:
        proc = Path(tmp)
        (proc / "42").mkdir()
        fields = b" ".join([b"S", b"1"] + [b"0"] * 17 + [b"777"] + [b"0"] * 10)
        (proc / "42" / "stat").write_bytes(b"42 (" + comm + b") " + fields)
        (proc / "42" / "cmdline").write_bytes(cmdline)
        (proc / "42" / "status").write_bytes(b"")
        os.symlink(b"/tmp/" + exe, os.fsencode(proc / "42" / "exe"))
        info = read_proc(42, proc)
        assert info["comm"] == clean(comm) and info["start_ticks"] == 777 and info["ppid"] == 1
        assert info["exe"] == clean(b"/tmp/" + exe)
        for text in [info["comm"], info["exe"], *info["argv"]]:
            text.encode("utf-8")


def test_a_huge_parent_command_line_is_bounded_in_every_childs_ancestry(tmp_path):
    proc = tmp_path / "proc"
    for pid, ppid, cmd in ((100, 1, b"\0".join([b"x" * 4000] * 210) + b"\0"), (101, 100, b"child\0")):
        (proc / str(pid)).mkdir(parents=True)
        fields = b" ".join([b"S", str(ppid).encode()] + [b"0"] * 17 + [b"5"] + [b"0"] * 10)
        (proc / str(pid) / "stat").write_bytes(f"{pid} (p) ".encode() + fields)
        (proc / str(pid) / "cmdline").write_bytes(cmd)
        (proc / str(pid) / "status").write_bytes(b"")
    table = ProcessTable("b", proc)
    child = table.get(101)
    lineage = table.lineage(child)
    parent_argv = lineage[0]["argv"]
    assert sum(len(a) for a in parent_argv) <= 1024 and len(parent_argv) <= 8
    assert sum(len(a) for a in table.get(100).argv) <= 16 << 10            # its own records: bounded too

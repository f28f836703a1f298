"""agent/wire.c against its Python oracle, and runs of connects through the spool and into RawBatches.

A run (agent/encoded.py EncodedRun) is how a drain's connects travel without a Python object each: assembled by
wire.c, framed with their seqs when spooled, sent as one slice. Each step must give the bytes the one-event-at-a-time
path gives: the same events read back, the same RawBatch."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import agent.shipper as shipper_module
import agent.spool as spool_module
from agent import wire
from agent.connect_batch import unique_rows, words
from agent.encoded import EncodedEvent, EncodedRun, connect_address, connect_data, connect_name
from agent.shipper import Shipper
from agent.spool import Spool
from gpuguard import rawbatch
from gpuguard.rawbatch import FramedRun
from gpuguard.v1 import events_pb2 as pb


@pytest.fixture(scope="module")
def c_wire():
    if wire.library() is None:
        pytest.fail("agent/wire.c could not be built or loaded (setup installs cc)")
    return wire


INT64 = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
connect_rows = st.lists(st.tuples(INT64, st.integers(0, 3), st.integers(0, 3), st.integers(0, 3),
                                  st.integers(0, 65535), st.integers(-4095, 1 << 31), st.integers(0, (1 << 32) - 1),
                                  st.booleans()), max_size=40)
pieces_st = st.lists(st.binary(max_size=300), min_size=4, max_size=4)


@settings(max_examples=200, deadline=None)
@given(rows=connect_rows, pieces=pieces_st)
def test_c_connects_are_the_python_ones_byte_for_byte(c_wire, rows, pieces):
    cols = [np.array([r[i] for r in rows], dtype=dt) for i, dt in
            enumerate([np.int64, np.uint32, np.uint32, np.uint32, np.int64, np.int64, np.int64, np.uint8])]
    ts, prefix, address, name, dport, result, repeats, nolink = cols
    args = (ts, prefix, address, name, dport, result, repeats, nolink, pieces)
    c_data, c_ends = wire.encode_connects(*args)
    py_data, py_ends = wire.encode_connects(*args, use_c=False)
    assert c_data == py_data and c_ends.tolist() == py_ends.tolist()
    starts = [0, *c_ends.tolist()][:-1]
    assert [c_data[s:e] for s, e in zip(starts, c_ends.tolist(), strict=True)] == [
        connect_data(int(t), pieces[p], pieces[a], int(d), int(r), pieces[m], int(k), bool(u))
        for t, p, a, m, d, r, k, u in rows]


@settings(max_examples=200, deadline=None)
@given(bodies=st.lists(st.binary(max_size=400), max_size=30), first=st.integers(1, (1 << 62)))
def test_c_frames_are_the_python_ones_and_parse_as_events_with_their_seqs(c_wire, bodies, first):
    data = b"".join(bodies)
    ends = np.cumsum([len(b) for b in bodies], dtype=np.uint64)
    c_frames, c_ends = wire.frame_events(data, ends, first)
    py_frames, py_ends = wire.frame_events(data, ends, first, use_c=False)
    assert c_frames == py_frames and c_ends.tolist() == py_ends.tolist()


def connect_run(n: int, jobs: tuple[str, ...] = ("slurm/7", "k8s/pod-a")) -> tuple[EncodedRun, list[EncodedEvent]]:
    """n connects as a run, and the same connects one EncodedEvent each."""
    proc = pb.Event(boot_id="boot-1", process=pb.Process(pid=4242, comm="python3"), job=pb.Job(id=jobs[0]))
    pieces = [proc.SerializeToString(), connect_address("inet", "tcp", "127.0.0.1"), connect_name("", "")]
    ts = np.arange(n, dtype=np.int64) + 1_700_000_000_000_000_000
    zeros = np.zeros(n, np.uint32)
    data, ends = wire.encode_connects(ts, zeros, zeros + 1, zeros + 2, np.arange(n) % 65536 + 1,
                                      np.where(np.arange(n) % 3, -111, 0), np.arange(n) % 2, np.arange(n) % 5 == 0,
                                      pieces)
    job_of = np.arange(n) % len(jobs)
    run = EncodedRun(data, ends, np.full(n, 4242), job_of, list(jobs))
    return run, run.events()


def test_a_run_reads_back_as_the_same_events_as_one_record_each(tmp_path):
    run, singles = connect_run(300)
    before, after = pb.Event(ts_ns=5, exit=pb.Exit(code=1)), pb.Event(ts_ns=6, exit=pb.Exit(code=2))
    as_run, one_by_one = Spool(tmp_path / "run"), Spool(tmp_path / "single")
    assert as_run.append([before, run, after]) == 302 == one_by_one.append([before, *singles, after])
    assert as_run.last_seq == one_by_one.last_seq == 302
    got, want = as_run.read_after(0, 1000), one_by_one.read_after(0, 1000)
    assert [e.seq for e in got] == list(range(1, 303))
    assert got == want
    assert as_run.read_raw_after(0, 1000)[1].__class__ is FramedRun
    raw_run = rawbatch.build(as_run.read_raw_after(0, 1000))
    raw_single = rawbatch.build(one_by_one.read_raw_after(0, 1000))
    assert raw_run.SerializeToString() == raw_single.SerializeToString()
    as_run.close()
    again = Spool(tmp_path / "run")                       # the run's frame found again at a restart
    assert again.last_seq == 302 and again.read_after(150, 5) == want[150:155]


def test_reads_that_stop_inside_a_run_resume_there(tmp_path):
    run, singles = connect_run(500)
    sp = Spool(tmp_path)
    sp.append([run])
    seen, after = [], 0
    while True:
        chunk = sp.read_raw_after(after, 64)
        if not chunk:
            break
        raw = rawbatch.build(chunk)
        assert len(raw.seqs) <= 64
        seen.extend(raw.seqs)
        after = raw.seqs[-1]
    assert seen == list(range(1, 501))
    assert [e.connect.dport for e in sp.read_after(100, 3)] == [e.event().connect.dport for e in singles[100:103]]


def test_a_run_larger_than_a_frame_is_split_and_a_full_spool_counts_every_event(tmp_path, monkeypatch):
    monkeypatch.setattr(spool_module, "BATCH_FRAME_BYTES", 4096)
    run, singles = connect_run(400)
    sp = Spool(tmp_path)
    assert sp.append([run]) == 400
    assert len(list(spool_module.Spool._frames(next(tmp_path.glob("seg-*.log"))))) > 1
    want = [e.event() for e in singles]
    for seq, ev in enumerate(want, 1):
        ev.seq = seq
    assert sp.read_after(0, 1000) == want
    small = Spool(tmp_path / "small", max_bytes=1000)
    assert small.append([run]) == 0 and small.stats.dropped == 400
    assert small.append([pb.Event(ts_ns=1, exit=pb.Exit(code=3))]) == 1     # room again: the gap, then the event
    gap, ev = small.read_after(0, 10)
    assert (gap.gap.from_seq, gap.gap.to_seq, gap.seq, ev.seq) == (1, 400, 401, 402)


def test_the_shipper_cuts_a_run_at_the_batch_limit_and_sends_the_rest_next(tmp_path, monkeypatch):
    monkeypatch.setattr(shipper_module, "MAX_BATCH_BYTES", 5000)
    run, _singles = connect_run(200)
    sp = Spool(tmp_path)
    sp.append([pb.Event(ts_ns=5, exit=pb.Exit(code=1)), run])
    shipper = Shipper.__new__(Shipper)
    after, seen = 0, []
    while records := sp.read_raw_after(after, 1000):
        raw = shipper.build_raw_batch(records)
        assert len(raw.frames) <= 5000
        rawbatch.check(raw, 10_000, 1 << 20)                 # what the collector checks
        seen.extend(raw.seqs)
        after = raw.seqs[-1]
    assert seen == list(range(1, 202))


@settings(max_examples=100, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, 3), st.binary(min_size=16, max_size=16)), max_size=60))
def test_unique_rows_groups_as_np_unique_does(rows):
    arr = np.zeros(len(rows), dtype=[("family", "<u2"), ("daddr", "V16")])
    for i, (family, raw) in enumerate(rows):
        arr[i] = (family, np.void(raw))
    first, inverse = unique_rows(arr["family"], *words(arr["daddr"]))
    firsts = {}
    for i, row in enumerate(rows):
        firsts.setdefault(row, i)
    assert sorted(first.tolist()) == sorted(firsts.values())           # the first row of each group
    same = [[inverse[i] == inverse[j] for j in range(len(rows))] for i in range(len(rows))]
    assert same == [[rows[i] == rows[j] for j in range(len(rows))] for i in range(len(rows))]
    assert all(inverse[f] == g for g, f in enumerate(first.tolist()))

"""RawBatch: the spooled bytes on the wire, checked and partitioned by a log-mode collector without decoding an
event, the per-event checks done by the worker that decodes them (gpuguard/rawbatch.py, collector/ingest.py,
collector/eventlog.py, collector/log_worker.py). Pure logic: an in-memory log and SQLite."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.eventlog import LogSink, partition_of, split_raw
from collector.ingest import AgentSession, Ingestor, StreamProblem
from collector.log_worker import LogWorker
from collector.store import open_store
from gpuguard import rawbatch
from gpuguard.v1 import collector_pb2 as cpb
from gpuguard.v1 import events_pb2 as pb
from tests.test_eventlog import MemoryLog, event


def status(seq: int) -> pb.Event:
    ev = pb.Event(seq=seq, ts_ns=time.time_ns())
    ev.status.events_total = seq
    return ev


def check(raw: cpb.RawBatch) -> rawbatch.RawView:
    return rawbatch.check(raw, max_events=10_000, max_event_bytes=1 << 20)


def test_a_raw_batch_carries_the_spooled_bytes_and_its_columns():
    events = [event(1, "j1"), status(2), event(3), event(4, "j2"), event(5, "j1")]
    raw = rawbatch.from_events(events)
    assert raw.job_ids == ["j1", "", "j2"] and list(raw.jobs) == [0, 1, 1, 2, 0]
    view = check(raw)
    assert list(view.parsed.events) == events                      # the C parse of the frames: the same events
    assert [e.seq for e in view.notable()] == [2]                  # status: what health needs without a decode
    # the frames are what a LogBatch's field 4 holds: a LogBatch header plus frames is a LogBatch
    head = cpb.LogBatch(host_id="h").SerializeToString()
    assert list(cpb.LogBatch.FromString(head + raw.frames).events) == events


def bad(mutate) -> StreamProblem | rawbatch.RawBatchProblem:
    raw = rawbatch.from_events([event(1, "j"), event(2, "j"), event(3)])
    mutate(raw)
    with pytest.raises(rawbatch.RawBatchProblem) as exc:
        check(raw)
    return exc.value


@pytest.mark.parametrize(("mutate", "code", "says"), [
    (lambda r: r.ClearField("seqs"), "INVALID_ARGUMENT", "empty raw batch"),
    (lambda r: r.kinds.pop(), "INVALID_ARGUMENT", "columns disagree"),
    (lambda r: r.seqs.__setitem__(0, 0), "INVALID_ARGUMENT", "seq 0"),
    (lambda r: r.seqs.__setitem__(2, 1), "INVALID_ARGUMENT", "not strictly ascending"),
    (lambda r: r.seqs.__setitem__(2, 1 << 63), "OUT_OF_RANGE", "exceeds the maximum"),
    (lambda r: r.ends.__setitem__(2, r.ends[2] - 1), "INVALID_ARGUMENT", "do not tile"),
    (lambda r: r.ends.__setitem__(0, r.ends[0] + 1), "INVALID_ARGUMENT", "not one Event framed"),
    (lambda r: setattr(r, "frames", b"\x0a" + r.frames[1:]), "INVALID_ARGUMENT", "not one Event framed"),
    (lambda r: r.jobs.__setitem__(1, 7), "INVALID_ARGUMENT", "job index 7"),
    (lambda r: r.job_ids.__setitem__(0, "j\x00"), "INVALID_ARGUMENT", "NUL"),
    (lambda r: r.kinds.__setitem__(0, 3), "INVALID_ARGUMENT", "body kind"),
])
def test_a_malformed_raw_batch_is_refused_whole_with_what_was_wrong(mutate, code, says):
    problem = bad(mutate)
    assert problem.code == code and says in problem.message


def test_frames_that_tile_but_hold_no_event_are_refused():
    raw = rawbatch.from_events([event(1, "j")])
    body = b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"          # field 1 with a length past the end
    raw.frames, raw.ends[0] = rawbatch.frame(body), len(rawbatch.frame(body))
    with pytest.raises(rawbatch.RawBatchProblem, match="not well-formed Events"):
        check(raw)


def test_an_oversized_event_is_refused():
    big = event(1, "j")
    big.exec.argv.append("x" * 5000)
    with pytest.raises(rawbatch.RawBatchProblem, match="exceeds 4000") as exc:
        rawbatch.check(rawbatch.from_events([big]), max_events=10, max_event_bytes=4000)
    assert exc.value.code == "RESOURCE_EXHAUSTED"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["", "a", "b", "c", "d"]), min_size=1, max_size=40), st.integers(0, 45))
def test_split_puts_each_event_in_its_jobs_partition_once_in_order(jobs, resent):
    events = [event(i + 1, job) for i, job in enumerate(jobs)]
    view = check(rawbatch.from_events(events)).drop_through(resent)
    kept = [e for e in events if e.seq > resent]
    assert len(view) == len(kept)
    if not kept:
        return
    seen = []
    for m in split_raw("h1", "h1", "b", view, 4, received_ns=5):
        part = cpb.LogBatch.FromString(m.payload)
        assert part.unchecked and part.received_ns == 5 and part.host_id == "h1"
        assert list(part.seqs) == [e.seq for e in part.events]
        assert {partition_of(f"job:{e.job.id}" if e.job.id else "host:h1", 4) for e in part.events} == {m.partition}
        assert m.msg_id == f"h1:b:{part.events[0].seq}-{part.events[-1].seq}:{m.partition}"
        seen.extend(part.events)
    assert sorted(seen, key=lambda e: e.seq) == kept


def session(stored: int = 0) -> AgentSession:
    return AgentSession("h1", "h1", "b", stored)


def test_a_log_collector_dedupes_fills_holes_and_acks_without_decoding_each_event():
    log = MemoryLog(partitions=4)
    ing = Ingestor(store=None, log_sink=LogSink(log))
    heard: list[list[int]] = []
    ing.listeners.append(lambda s, evs: heard.append([e.seq for e in evs]))
    ing.wants_all_events = lambda: False
    s = session()
    assert ing.raw_batch(s, rawbatch.from_events([event(1, "j"), status(2), event(3, "j")])) == (3, [])
    # a resend overlapping what was taken: the overlap dropped; then a jump: the hole stored as a gap
    assert ing.raw_batch(s, rawbatch.from_events([event(2, "j"), event(3, "j"), event(4, "j")])) == (4, [])
    ack, problems = ing.raw_batch(s, rawbatch.from_events([event(9, "j")]))
    assert ack == 9 and [p.code for p in problems] == ["OUT_OF_RANGE"] and "5..8 never arrived" in problems[0].message
    assert heard == [[2], [], [5]]     # listeners hear every batch: its status, nothing, the gap (nobody follows)
    stored = sorted((e.seq, e.WhichOneof("body")) for _p, payload, _m in log.entries
                    for e in cpb.LogBatch.FromString(payload).events)
    assert stored == [(1, "exec"), (2, "status"), (3, "exec"), (4, "exec"), (5, "gap"), (9, "exec")]
    assert s.stored_through == 9 and s.duplicates == 2
    assert ing.raw_batch(s, rawbatch.from_events([event(9, "j")])) == (9, [])    # all duplicates: acked
    ing.wants_all_events = lambda: True                     # someone follows: every event, as stored
    ing.raw_batch(s, rawbatch.from_events([event(10, "j"), event(11)]))
    assert heard[-1] == [10, 11]
    with pytest.raises(StreamProblem, match="not strictly ascending"):
        ing.raw_batch(s, rawbatch.from_events([event(13, "j"), event(12, "j")]))


def test_a_store_collector_stores_a_raw_batch_as_it_would_the_same_event_batch(tmp_path):
    events = [event(1, "j"), status(2), event(3)]
    bad_value = event(4, "j")
    bad_value.process.comm = "a\x00b"                            # no store keeps a NUL: a gap and a StreamError
    stores = {}
    for kind in ("raw", "batch"):
        store = open_store(str(tmp_path / f"{kind}.db"))
        store.register_agent("h1", "h1", "b", 0)
        ing = Ingestor(store)
        batch = [*events, bad_value]
        if kind == "raw":
            ack, problems = ing.raw_batch(session(), rawbatch.from_events(batch))
        else:
            ack, problems = ing.batch(session(), cpb.EventBatch(events=batch))
        assert ack == 4 and [p.seq for p in problems] == [4]
        stores[kind] = sorted((host, e.SerializeToString(deterministic=True))
                              for host, e in store.recent_events(0, 1000))
        store.close()
    assert stores["raw"] == stores["batch"] and stores["raw"]


def test_the_worker_makes_the_checks_the_collector_left_to_it(tmp_path):
    log = MemoryLog(partitions=1)
    sink = LogSink(log, owner="c1")
    odd = event(2, "j")
    odd.process.comm = "a\x00b"                                   # a value no store keeps
    skewed = event(3, "j")
    skewed.ts_ns -= 3 * 24 * 3600 * 10**9                        # three days before the collector got it
    asyncio.run(sink.ingest_raw_async("h1", "h1", "b", check(rawbatch.from_events([event(1, "j"), odd, skewed]))))
    lying = check(rawbatch.from_events([event(5, "j"), event(6, "j")]))
    lying.seqs[:] = [7, 8]                                       # columns acked as 7, 8; bodies say 5, 6
    asyncio.run(sink.ingest_raw_async("h1", "h1", "b", lying))
    store = open_store(str(tmp_path / "s.db"))
    store.register_agent("h1", "h1", "b", 0)
    seen: list[pb.Event] = []
    worker = LogWorker(log, store, lambda host, evs, emit=True: seen.extend(evs), lambda: 60.0, owner="w1")
    worker.rebalance()
    deadline = time.monotonic() + 10
    while worker.held[0].offset < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    worker.close()
    assert worker.stats.refused == 1 and worker.stats.clock_suspect == 1 and worker.stats.disagreeing == 1
    by_seq = {e.seq: e for e in seen}
    assert by_seq[2].HasField("gap") and "NUL" in by_seq[2].gap.reason
    assert by_seq[3].clock_suspect and not by_seq[1].clock_suspect
    assert (by_seq[7].gap.from_seq, by_seq[7].gap.to_seq) == (7, 8) and 5 not in by_seq
    store.close()


def test_the_async_path_forwards_the_same_and_a_dead_log_says_keep_the_spool():
    from collector.ingest import StoreUnavailable  # noqa: PLC0415

    sync_log, async_log = MemoryLog(partitions=4), MemoryLog(partitions=4)
    sync_ing = Ingestor(store=None, log_sink=LogSink(sync_log))
    async_ing = Ingestor(store=None, log_sink=LogSink(async_log))
    batches = [[event(1, "j"), status(2), event(3)], [event(3), event(4, "k")], [event(8, "j")]]
    s1, s2 = session(), session()
    for evs in batches:
        assert sync_ing.raw_batch(s1, rawbatch.from_events(evs))[0] == \
            asyncio.run(async_ing.raw_batch_async(s2, rawbatch.from_events(evs)))[0]
    assert [(p, m) for p, _b, m in sync_log.entries] == [(p, m) for p, _b, m in async_log.entries]
    assert (s1.stored_through, s1.duplicates, s1.events) == (s2.stored_through, s2.duplicates, s2.events)
    async_log.down = True
    with pytest.raises(StoreUnavailable, match="event log unavailable"):
        asyncio.run(async_ing.raw_batch_async(s2, rawbatch.from_events([event(9, "j")])))
    assert s2.stored_through == 8                                  # nothing taken: nothing acked


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6),
       st.lists(st.integers(-3, 3), min_size=3, max_size=3))
def test_whatever_bytes_an_agent_sends_check_refuses_them_or_every_frame_is_one_event(flips, shifts):
    raw = rawbatch.from_events([event(1, "j"), status(2), event(3)])
    frames = bytearray(raw.frames)
    for at, value in flips:
        frames[at % len(frames)] = value
    raw.frames = bytes(frames)
    for i, d in enumerate(shifts):
        raw.ends[i] = max(0, raw.ends[i] + d)
    try:
        view = check(raw)
    except rawbatch.RawBatchProblem as exc:
        assert exc.code in ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "OUT_OF_RANGE") and exc.message
        return
    assert len(view.parsed.events) == 3
    for s, e in zip(view.starts.tolist(), view.ends.tolist(), strict=True):
        assert len(cpb.LogBatch.FromString(view.frames[s:e]).events) == 1


def test_frames_use_protobufs_own_length_encoding():
    from google.protobuf.internal.encoder import _VarintBytes  # noqa: PLC0415

    for n in [*range(300), 0x3FFF, 0x4000, 0x1FFFFF, 0x200000, (1 << 28) - 1, 1 << 28, 1 << 35]:
        assert rawbatch.varint(n) == _VarintBytes(n), n

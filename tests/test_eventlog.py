"""The event log's contract: partitioning by job, message ids, resume marks, leases and the worker's replay - as
pure logic against an in-memory log, and against a real 3-node NATS JetStream cluster (lab/nats.py)."""

from __future__ import annotations

import time

import pytest

from collector.eventlog import LogEntry, LogSink, LogUnavailable, partition_of, split_batch
from collector.log_worker import LogWorker, assigned
from collector.store import open_store
from gpuguard.v1 import collector_pb2 as cpb
from gpuguard.v1 import events_pb2 as pb


def event(seq: int, job: str = "", kind: str = "exec") -> pb.Event:
    ev = pb.Event(seq=seq, ts_ns=time.time_ns())
    if job:
        ev.job.kind, ev.job.id = "slurm", job
    ev.process.pid, ev.process.key, ev.process.comm = 100 + seq, f"k{seq}", "python3"
    if kind == "exec":
        ev.exec.CopyFrom(pb.Exec(filename="/usr/bin/python3", argv=["python3", str(seq)]))
    else:
        ev.exit.CopyFrom(pb.Exit(code=0))
    return ev


class MemoryLog:
    """EventLog in memory: one list of entries, offsets from 1, partitions as a field."""

    def __init__(self, partitions: int = 8) -> None:
        self.partitions = partitions
        self.entries: list[tuple[int, bytes, str]] = []     # (partition, payload, msg id)
        self.times: list[int] = []                          # when the log took each entry
        self.saved: dict[str, dict[str, int]] = {}
        self.leases: dict[int, str] = {}
        self.down = False
        self.reads = 0

    def publish(self, messages) -> int:
        if self.down:
            raise LogUnavailable("down")
        ids = {m for _p, _b, m in self.entries}
        dup = 0
        for m in messages:
            if m.msg_id in ids:
                dup += 1
                continue
            self.entries.append((m.partition, m.payload, m.msg_id))
            self.times.append(time.time_ns())
        return dup

    def mark(self, host_id: str) -> int:
        return max((marks.get(host_id, 0) for marks in self.saved.values()), default=0)

    def save_marks(self, owner: str, marks: dict[str, int]) -> None:
        self.saved[owner] = dict(marks)

    def read(self, partition: int, after: int, limit: int, wait_s: float) -> list[LogEntry]:
        self.reads += 1
        out = [LogEntry(i + 1, b, self.times[i] if i < len(self.times) else 0)
               for i, (p, b, _m) in enumerate(self.entries) if p == partition and i + 1 > after]
        return out[:limit]

    def tail(self, partition: int) -> int:
        return max((i + 1 for i, (p, _b, _m) in enumerate(self.entries) if p == partition), default=0)

    def read_since(self, partition: int, since_ns: int, through: int, limit: int) -> list[LogEntry]:
        return [e for e in self.read(partition, 0, limit, 0) if e.offset <= through and e.ts_ns >= since_ns]

    def claim(self, partition: int, owner: str) -> bool:
        return self.leases.setdefault(partition, owner) == owner

    def release(self, partition: int, owner: str, timeout_s: float | None = None) -> None:
        if self.leases.get(partition) == owner:
            del self.leases[partition]

    def members(self, owner: str) -> list[str]:
        return [owner]

    def close(self) -> None:
        pass


def test_a_job_lands_in_one_partition_whatever_host_sends_it():
    a = split_batch("node-a", "a", "b", [event(1, "777"), event(2, "777"), event(3)], 16)
    b = split_batch("node-b", "b", "b", [event(1, "777")], 16)
    job_part = partition_of("job:777", 16)
    assert {m.partition for m in b} == {job_part}
    assert job_part in {m.partition for m in a}
    by_part = {m.partition: cpb.LogBatch.FromString(m.payload) for m in a}
    assert [e.seq for e in by_part[job_part].events] == [1, 2]                 # seq order kept
    assert [e.seq for e in by_part[partition_of("host:node-a", 16)].events] == [3]   # job-less: by host
    for m in a:
        evs = cpb.LogBatch.FromString(m.payload).events
        assert m.msg_id == f"node-a:b:{evs[0].seq}-{evs[-1].seq}:{m.partition}"


def test_partitions_split_evenly_and_the_same_on_every_worker():
    members = ["w1", "w2", "w3"]
    shares = [assigned(16, members, w) for w in members]
    assert set().union(*shares) == set(range(16)) and sum(len(s) for s in shares) == 16
    assert max(len(s) for s in shares) - min(len(s) for s in shares) <= 1
    assert assigned(16, members, "gone") == set()


def test_log_sink_publishes_and_saves_marks_once_a_second():
    log = MemoryLog()
    sink = LogSink(log, owner="c1")
    assert sink.register_agent("h1", "h1", "b", 0) == 0
    sink.ingest("h1", "h1", "b", [event(1, "j"), event(2, "j")])
    sink.ingest("h1", "h1", "b", [event(3, "j")])
    assert log.saved == {}                                   # not a write per batch
    assert sink.register_agent("h1", "h1", "b", 0) == 3      # this collector knows
    assert sink.flush_marks() == 1 and log.saved == {"c1": {"h1": 3}}
    assert sink.flush_marks() == 0                           # nothing new: no write
    other = LogSink(log, owner="c2")
    assert other.register_agent("h1", "h1", "b", 0) == 3     # another collector resumes from the saved mark
    sink.ingest("h1", "h1", "b", [event(1, "j"), event(2, "j")])
    assert len(log.entries) == 2                             # the retried batch: the log kept one copy


def test_the_worker_stores_and_evaluates_each_event_once_across_a_replay(tmp_path):
    log = MemoryLog(partitions=1)
    sink = LogSink(log, owner="c1")
    sink.ingest("h1", "h1", "b", [event(1, "j"), event(2, "j")])
    sink.ingest("h1", "h1", "b", [event(1, "j"), event(2, "j"), event(3, "j")])   # overlap, other boundaries
    store = open_store(str(tmp_path / "s.db"))
    store.register_agent("h1", "h1", "b", 0)
    seen: list[int] = []
    worker = LogWorker(log, store, lambda host, evs, emit=True: seen.extend(e.seq for e in evs if emit),
                       lambda: 60.0, owner="w1")
    worker.rebalance()
    deadline = time.monotonic() + 10
    while worker.held[0].offset < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    worker.close()
    assert seen == [1, 2, 3]                                  # evaluated once each, in order
    assert store.register_agent("h1", "h1", "b", 0) == 3 and worker.stats.events_stored == 3
    assert store.get_cursor("log:0") == (2,)
    # a new owner replays the partition from the committed offset: nothing again
    again: list[int] = []
    second = LogWorker(log, store, lambda host, evs, emit=True: again.extend(e.seq for e in evs if emit),
                       lambda: 60.0, owner="w2")
    reads = log.reads
    second.rebalance()
    assert second.held[0].offset == 2 and second.held[0].evaluated == {"h1": 3}   # warmed, not re-alerted
    deadline = time.monotonic() + 10
    while log.reads < reads + 2 and time.monotonic() < deadline:                   # it read past the offset
        time.sleep(0.02)
    second.close()
    assert log.reads >= reads + 2
    assert again == []
    store.close()


def test_a_malformed_log_entry_is_counted_and_skipped(tmp_path):
    log = MemoryLog(partitions=1)
    log.entries.append((0, b"\xff\xff not a LogBatch", "x"))
    LogSink(log).ingest("h1", "h1", "b", [event(1, "j")])
    store = open_store(str(tmp_path / "s.db"))
    worker = LogWorker(log, store, lambda *a, **k: None, lambda: 60.0, owner="w1")
    worker.rebalance()
    deadline = time.monotonic() + 10
    while worker.held[0].offset < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    worker.close()
    assert worker.stats.malformed == 1 and worker.stats.events_stored == 1
    store.close()


# -- the same contract on a real NATS JetStream cluster ------------------------------------------------------------
@pytest.fixture
def nats_log(nats_cluster):
    from collector.nats_log import NatsLog  # noqa: PLC0415

    try:
        log = NatsLog(nats_cluster.urls, partitions=4, lease_s=2, leases=True)
    except LogUnavailable as exc:                       # say what the servers said, not only what the client saw
        raise AssertionError(f"{exc}\n{nats_cluster.log_tails()}") from exc
    yield log
    log.close()


def test_nats_dedupes_a_retried_batch_and_reads_by_partition(nats_log):
    msgs = split_batch("h1", "h1", "b", [event(1, "j1"), event(2, "j2"), event(3, "j1")], 4)
    assert nats_log.publish(msgs) == 0
    assert nats_log.publish(msgs) == len(msgs)               # same ids: the log kept one copy each
    got = {p: nats_log.read(p, 0, 100, 0.2) for p in range(4)}
    seqs = sorted(e.seq for entries in got.values() for entry in entries
                  for e in cpb.LogBatch.FromString(entry.payload).events)
    assert seqs == [1, 2, 3]
    part = partition_of("job:j1", 4)
    first = got[part][0]
    assert nats_log.read(part, first.offset, 100, 0.2) == got[part][1:]       # after an offset: the rest
    assert [e.offset for e in nats_log.read_since(part, time.time_ns() - 60 * 10**9, first.offset, 100)] == \
        [first.offset]


def test_nats_marks_and_leases(nats_log):
    nats_log.save_marks("c1", {"h1": 7, "h2": 3})
    nats_log.save_marks("c2", {"h1": 9})
    time.sleep(1.1)                                          # past the marks' read cache
    assert (nats_log.mark("h1"), nats_log.mark("h2"), nats_log.mark("h3")) == (9, 3, 0)
    assert nats_log.claim(0, "w1") and not nats_log.claim(0, "w2") and nats_log.claim(0, "w1")
    assert nats_log.lease_owner(0) == "w1"
    assert nats_log.members("w1") == ["w1"] and nats_log.members("w2") == ["w1", "w2"]
    nats_log.release(0, "w1")
    assert nats_log.claim(0, "w2")                           # released: taken at once
    deadline = time.monotonic() + 15                          # w2 stops renewing: the lease expires (2 s TTL)
    while not nats_log.claim(0, "w3") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert nats_log.lease_owner(0) == "w3"


def test_nats_keeps_taking_batches_when_a_node_dies(nats_cluster, nats_log):
    nats_log.publish(split_batch("h1", "h1", "b", [event(1, "j")], 4))
    nats_cluster.nodes[0].kill()                             # SIGKILL: the stream keeps a quorum of 2
    assert nats_log.publish(split_batch("h1", "h1", "b", [event(2, "j")], 4)) == 0
    part = partition_of("job:j", 4)
    entries, deadline = [], time.monotonic() + 60
    while len(entries) < 2 and time.monotonic() < deadline:    # as a worker does: retry while the cluster
        try:                                                  # re-places consumers off the dead node
            entries = nats_log.read(part, 0, 100, 1.0)
        except LogUnavailable:
            time.sleep(0.5)
    assert [e.seq for entry in entries for e in cpb.LogBatch.FromString(entry.payload).events] == [1, 2]


def test_a_batch_detection_blows_up_on_is_stored_logged_and_passed(tmp_path):
    log = MemoryLog(partitions=1)
    sink = LogSink(log)
    sink.ingest("h1", "h1", "b", [event(1, "j")])
    sink.ingest("h1", "h1", "b", [event(2, "j")])
    store = open_store(str(tmp_path / "s.db"))
    seen: list[int] = []

    def evaluate(host, evs, emit=True):
        if evs[0].seq == 1:
            raise ValueError("a rule blew up")
        seen.extend(e.seq for e in evs)

    worker = LogWorker(log, store, evaluate, lambda: 60.0, owner="w1")
    worker.rebalance()
    deadline = time.monotonic() + 10
    while worker.held[0].offset < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    worker.close()
    assert seen == [2] and worker.stats.detect_failures == 1 and worker.stats.events_stored == 2
    store.close()


def test_a_log_off_this_host_needs_credentials_and_each_kind_is_understood(tmp_path):
    from collector.nats_log import connect_auth  # noqa: PLC0415

    assert connect_auth(["nats://127.0.0.1:4222"], "", "") == {}          # loopback: a lab, no credential needed
    with pytest.raises(ValueError, match="credentials"):
        connect_auth(["nats://10.0.0.5:4222"], "", "")                     # never connected: refused before
    assert connect_auth(["nats://u:p@10.0.0.5:4222"], "", "") == {}       # user and password in the URL
    pw = tmp_path / "pw"
    pw.write_text("gpuguard:s3cret\n")
    assert connect_auth(["nats://10.0.0.5:4222"], str(pw), "") == {"user": "gpuguard", "password": "s3cret"}
    tok = tmp_path / "tok"
    tok.write_text("t0ken\n")
    assert connect_auth(["nats://10.0.0.5:4222"], str(tok), "") == {"token": "t0ken"}
    creds = tmp_path / "c.creds"
    creds.write_text("-----BEGIN NATS USER JWT-----\nxyz\n------END NATS USER JWT------\n")
    assert connect_auth(["nats://10.0.0.5:4222"], str(creds), "") == {"user_credentials": str(creds)}
    assert "tls" in connect_auth(["tls://10.0.0.5:4222"], str(pw), "")


def test_a_log_with_users_refuses_a_client_without_them(tmp_path):
    from lab.nats import ThrowawayNats, nats_server_bin  # noqa: PLC0415

    if nats_server_bin() is None:
        pytest.skip("no nats-server here")
    from collector.nats_log import NatsLog  # noqa: PLC0415

    cluster = ThrowawayNats(3, user="gpuguard", password="s3cret")
    try:
        with pytest.raises(LogUnavailable):                             # refused at connect
            NatsLog(cluster.urls, partitions=2, timeout_s=2)
        pw = tmp_path / "pw"
        pw.write_text("gpuguard:s3cret")
        log = NatsLog(cluster.urls, partitions=2, creds=str(pw))
        try:
            assert log.publish(split_batch("h1", "h1", "b", [event(1, "j")], 2)) == 0
        finally:
            log.close()
    finally:
        cluster.stop()


def test_collectors_and_workers_starting_together_on_a_fresh_cluster_all_come_up(nats_cluster):
    """They race to create the stream and the buckets; the losers wait for the winner's, none fails to start."""
    import threading  # noqa: PLC0415

    from collector.nats_log import NatsLog  # noqa: PLC0415

    started: list[NatsLog] = []
    failed: list[Exception] = []

    def start(leases: bool) -> None:
        try:
            started.append(NatsLog(nats_cluster.urls, partitions=4, lease_s=2, leases=leases))
        except Exception as exc:   # noqa: BLE001 - what the test counts
            failed.append(exc)

    threads = [threading.Thread(target=start, args=(i % 2 == 0,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert failed == [] and len(started) == 6
        assert started[0].publish([]) == 0 and all(log.tail(0) == 0 for log in started)
    finally:
        for log in started:
            log.close()


def test_a_publish_retried_while_its_first_attempt_is_stored_is_retried_not_failed():
    """After an election a retried publish can meet its own first attempt still being stored (JetStream 409,
    err_code 10158): that is retried until the first is in (then it answers as a duplicate); other API errors
    are not retried. Pure logic: the retry loop, no server."""
    import asyncio  # noqa: PLC0415

    from nats.js.errors import APIError  # noqa: PLC0415

    from collector.nats_log import NatsLog  # noqa: PLC0415

    log = NatsLog.__new__(NatsLog)
    log._loop, log.timeout_s = asyncio.new_event_loop(), 5.0
    attempts = []

    async def publish_once_in_process():
        attempts.append(1)
        if len(attempts) == 1:
            raise APIError(code=409, err_code=10158, description="duplicate message id is in process")
        return "stored"

    async def refused():
        raise APIError(code=400, err_code=10071, description="wrong last sequence")

    try:
        assert log._loop.run_until_complete(log._retrying(publish_once_in_process, "a batch")) == "stored"
        assert len(attempts) == 2
        with pytest.raises(APIError):
            log._loop.run_until_complete(log._retrying(refused, "a batch"))
    finally:
        log._loop.close()


def test_a_slow_setup_step_says_what_it_waits_on(monkeypatch, caplog):
    """A collector or worker whose stream setup waits on an election logs what it waits on and how long is left,
    as it waits (a CI run once saw only silence for 60 s). Pure logic: the retry loop, no server."""
    import asyncio  # noqa: PLC0415
    import logging  # noqa: PLC0415

    from nats.errors import NoRespondersError  # noqa: PLC0415

    from collector import nats_log  # noqa: PLC0415

    monkeypatch.setattr(nats_log, "SETUP_PROGRESS_S", 0.0)
    log = nats_log.NatsLog.__new__(nats_log.NatsLog)
    log._loop, log.timeout_s, log._setting_up = asyncio.new_event_loop(), 5.0, True
    attempts = []

    async def elected_on_the_third_try():
        attempts.append(1)
        if len(attempts) < 3:
            raise NoRespondersError
        return "made"

    try:
        with caplog.at_level(logging.INFO, logger="collector.nats_log"):
            assert log._loop.run_until_complete(log._retrying(elected_on_the_third_try, "the stream's creation")) \
                == "made"
        waits = [r.getMessage() for r in caplog.records if "still waiting for the stream's creation" in r.getMessage()]
        assert len(waits) == 2 and "NoRespondersError" in waits[0] and "s left" in waits[0]
    finally:
        log._loop.close()


def test_a_throwaway_cluster_whose_node_loses_its_port_starts_again_on_fresh_ports(monkeypatch):
    """The first node's client port is taken by another process before the node binds it: the node exits, and the
    cluster starts every node again on fresh ports instead of handing a test a cluster of two."""
    import socket  # noqa: PLC0415

    import lab.nats as lab_nats  # noqa: PLC0415

    if lab_nats.nats_server_bin() is None:
        pytest.skip("no nats-server here")
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    real, handed = lab_nats.free_port, []

    def free_port_first_taken() -> int:
        handed.append(taken if not handed else real())
        return handed[-1]

    monkeypatch.setattr(lab_nats, "free_port", free_port_first_taken)
    try:
        cluster = lab_nats.ThrowawayNats(3)
    finally:
        squatter.close()
    try:
        assert cluster.nodes[0].port != taken
        assert all(n.alive() for n in cluster.nodes)
        assert any(n.meta_current() for n in cluster.nodes)
        assert len(handed) == 18                                    # 3 nodes x 3 ports, twice
    finally:
        cluster.stop()

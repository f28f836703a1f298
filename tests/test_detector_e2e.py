"""Detection as a durable consumer, across collectors: two collector processes on one PostgreSQL database,
two hosts of one job streaming to different collectors. A correlation spanning both hosts fires once and its
kill orders reach the right hosts through the outbox; SIGKILL the collector that holds the detector lease:
the other takes over from the cursor and raises the next alert exactly once."""

from __future__ import annotations

import time
import uuid

import psycopg

from gpuguard.v1 import events_pb2 as pb
from lab import wait_until
from tests.conftest import fresh_job_id
from tests.services import FakeAgent, cli_json, collector, free_port


def ev(job: str, kind: str, pid: int, exe: str, argv: list[str] | None = None, key: str = "") -> pb.Event:
    e = pb.Event(ts_ns=time.time_ns())
    e.job.kind, e.job.id = "slurm", job
    e.process.pid, e.process.key, e.process.exe = pid, key or f"p{pid}", exe
    e.process.comm = exe.rsplit("/", 1)[-1][:15]
    if kind == "exec":
        e.exec.CopyFrom(pb.Exec(filename=exe, argv=argv or [exe]))
        e.process.argv.extend(argv or [exe])
    else:
        e.gpu_open.CopyFrom(pb.GpuOpen(path="/dev/nvidia0"))
    return e


def rows(url: str, sql: str, *params) -> list[tuple]:
    with psycopg.connect(url) as con:
        return con.execute(sql, params).fetchall()


def ship_tunnel_then_new_gpu_binary(n1: FakeAgent, n2: FakeAgent, job: str) -> str:
    """Two hosts of one job: on n1 the trainer opens a reverse tunnel (ssh -R, pid 102), on n2 a binary new to
    the job's GPU (pid 202). Returns the correlation that must fire across them."""
    n1.ship([ev(job, "exec", 101, "/usr/bin/python3", ["python3", "train.py"]),
             ev(job, "exec", 102, "/usr/bin/ssh", ["ssh", "-NfR", "2222:localhost:22", "gw"], key="ssh-1")])
    n2.ship([ev(job, "exec", 201, "/usr/bin/python3", ["python3", "train.py"]),
             ev(job, "gpu_open", 201, "/usr/bin/python3"),
             ev(job, "exec", 202, "/var/tmp/kworker", ["/var/tmp/kworker"], key="kw-2"),
             ev(job, "gpu_open", 202, "/var/tmp/kworker", key="kw-2")])
    return "tunnel-then-new-gpu-binary"


def test_cross_host_correlation_outbox_and_detector_failover(tmp_path, postgres):
    url = postgres.new_database()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    port_a, port_b = free_port(), free_port()
    lease = ["--detector-lease", "2"]
    col_a = collector(tmp_path / "a", port_a, "--store", url, *lease).start()
    assert wait_until(lambda: rows(url, "SELECT owner FROM leases WHERE name = 'detector'"))   # A detects
    col_b = collector(tmp_path / "b", port_b, "--store", url, *lease).start()
    job, tag = fresh_job_id(), uuid.uuid4().hex[:6]
    n1, n2 = FakeAgent(port_a, f"node1-{tag}"), FakeAgent(port_b, f"node2-{tag}")
    try:
        corr = ship_tunnel_then_new_gpu_binary(n1, n2, job)   # neither collector alone saw both
        assert wait_until(lambda: rows(url, "SELECT id FROM alerts WHERE rule_id = %s AND job_id = %s", corr, job))
        assert wait_until(lambda: n2.orders and any(o.rule_id == corr for o in n1.orders))   # each host's own stream
        assert [(o.pid, o.tree, o.rule_id) for o in n1.orders if o.rule_id == corr] == [(102, True, corr)]
        assert [(o.pid, o.tree, o.rule_id) for o in n2.orders] == [(202, True, corr)]
        # ssh -R is killed at exec by the kernel's argv scan; the collector's order backs it up (a fake agent here)
        assert [(o.pid, o.rule_id) for o in n1.orders if o.rule_id != corr] == [(102, "ssh-reverse-tunnel")]
        assert wait_until(lambda: rows(url, "SELECT COUNT(*) FROM orders WHERE done_ns > 0")[0][0] == 3)
        # the detector dies with the collector that holds its lease; node 1 loses its stream with it
        col_a.kill()
        n2.ship([ev(job, "exec", 203, "/tmp/sysupd", ["/tmp/sysupd", "-o", "stratum+tcp://p.example:3333"],
                    key="x-3")])                                  # an argv rule: only a kill order stops it
        assert wait_until(lambda: any(o.pid == 203 for o in n2.orders), timeout=40)   # B took over, then ordered
        assert [o.pid for o in n2.orders].count(203) == 1
        alerts = rows(url, "SELECT rule_id, COUNT(*) FROM alerts WHERE job_id = %s GROUP BY rule_id", job)
        assert dict(alerts)[corr] == 1 and dict(alerts)["miner-stratum-url"] == 1      # once each, no repeats
        assert len(n2.orders) == len({o.order_id for o in n2.orders})              # no order delivered twice
        assert cli_json(port_b, "alerts", "--job", job)["alerts"]
    finally:
        n1.close()
        n2.close()
        col_a.stop()
        col_b.stop()

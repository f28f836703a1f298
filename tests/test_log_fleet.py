"""The fleet on a replicated log: a real 3-node NATS JetStream cluster, a throwaway PostgreSQL, two collectors with
``--log`` and two ``gpuguard worker`` processes. Two hosts of one job stream to different collectors; SIGKILL a
NATS node, the collector one host streams to, and the worker holding the job's partition, mid-stream: every
event is stored exactly once, every alert raised once, every kill order delivered once, and the cross-host
correlation fires once."""

from __future__ import annotations

import subprocess
import threading
import uuid

import pytest

from collector.eventlog import LogUnavailable, partition_of
from collector.nats_log import SETUP_S, NatsLog
from lab import CLI, Service, wait_until
from lab.nats import ThrowawayNats
from tests.conftest import fresh_job_id
from tests.services import FakeAgent, cli_json, collector, free_port
from tests.test_detector_e2e import ev, rows, ship_tunnel_then_new_gpu_binary

PARTITIONS = 8


# A collector or worker on the log may spend up to SETUP_S making the stream and buckets on a fresh cluster (a loaded
# machine, an election): the test waits longer than that, and says what the cluster logged if it still fails.
READY_WITHIN_S = SETUP_S + 30


def log_collector(tmp, port: int, url: str, cluster: ThrowawayNats) -> Service:
    tmp.mkdir(exist_ok=True)
    service = collector(tmp, port, "--store", url, "--log", cluster.urls, "--log-partitions", str(PARTITIONS))
    service.ready_within_s, service.explain = READY_WITHIN_S, cluster.log_tails
    return service


def worker(tmp, url: str, cluster: ThrowawayNats, name: str) -> Service:
    return Service([*CLI, "worker", "--log", cluster.urls, "--store", url, "--partitions", str(PARTITIONS),
                    "--lease", "3", "--name", name], tmp / f"{name}.log", f"worker {name} started",
                   ready_within_s=READY_WITHIN_S, explain=cluster.log_tails)


@pytest.fixture
def services():
    """Services a test started, stopped at its end whatever failed (one that never became ready stops itself)."""
    started: list[Service] = []
    yield started
    for service in reversed(started):
        service.stop()


def up(services: list[Service], service: Service) -> Service:
    services.append(service)
    return service.start()


def stored_once(url: str, host: str) -> tuple[int, int]:
    """(events stored for host, seqs stored more than once)."""
    n = rows(url, "SELECT COUNT(*) FROM events WHERE host_id = %s", host)[0][0]
    dup = rows(url, "SELECT COUNT(*) FROM (SELECT seq FROM events WHERE host_id = %s GROUP BY seq "
                    "HAVING COUNT(*) > 1) d", host)[0][0]
    return n, dup


def test_fleet_on_the_log_survives_a_dead_log_node_collector_and_worker(tmp_path, postgres, nats_cluster, services):
    url = postgres.new_database()
    port_a, port_b = free_port(), free_port()
    col_a = up(services, log_collector(tmp_path / "a", port_a, url, nats_cluster))
    up(services, log_collector(tmp_path / "b", port_b, url, nats_cluster))
    workers = {name: up(services, worker(tmp_path, url, nats_cluster, name)) for name in ("w1", "w2")}
    probe = NatsLog(nats_cluster.urls, partitions=PARTITIONS, lease_s=3, leases=True)
    job, tag = fresh_job_id(), uuid.uuid4().hex[:6]
    part = partition_of(f"job:{job}", PARTITIONS)

    def owner(p: int) -> str:
        """Who holds partition p ("" while the log elects leaders after a node died)."""
        try:
            return probe.lease_owner(p)
        except LogUnavailable:
            return ""
    n1, n2 = FakeAgent(port_a, f"node1-{tag}", raw=True), FakeAgent(port_b, f"node2-{tag}")   # new and old agents
    try:
        # both workers share the partitions (4 each) before anything is shipped
        wait_until(lambda: {owner(p) for p in range(PARTITIONS)} == {"w1", "w2"}, 30, "an even split")
        # node 1 on collector A, node 2 on collector B; one partition holds the job, so one worker sees both hosts
        corr = ship_tunnel_then_new_gpu_binary(n1, n2, job)
        wait_until(lambda: rows(url, "SELECT id FROM alerts WHERE rule_id = %s AND job_id = %s", corr, job),
                   30, "the cross-host correlation")
        wait_until(lambda: any(o.rule_id == corr for o in n1.orders) and n2.orders, 30, "kill orders on both hosts")
        assert [(o.pid, o.tree) for o in n2.orders] == [(202, True)]

        # a log node dies: the stream keeps a quorum, ingest goes on
        nats_cluster.nodes[0].kill()
        n2.ship([ev(job, "exec", 210 + i, "/usr/bin/true", ["true", str(i)], key=f"t{i}") for i in range(50)],
                timeout=30)
        # the collector node 1 streams to dies; node 1 reconnects to B and resumes after what the log took
        col_a.kill()
        wait_until(n1.ended.is_set, 10, "node 1's stream to end")
        n1b = FakeAgent(port_b, n1.host, first_unacked=n1.acked + 1, raw=True)
        n1b.seq = n1.seq
        n1b.ship([ev(job, "exec", 110 + i, "/usr/bin/true", ["true", str(i)], key=f"u{i}") for i in range(50)],
                 timeout=30)
        # the worker holding the job's partition dies mid-stream: the other takes it over after the lease
        wait_until(lambda: owner(part) in workers, 20, "an owner of the job's partition")
        holder = owner(part)     # (a lease may move while the log elects leaders after the node died)
        survivor = "w2" if holder == "w1" else "w1"
        workers[holder].kill()
        follow = subprocess.Popen([*CLI, "alerts", "--job", job, "--collector", f"127.0.0.1:{port_b}", "--json",
                                   "--interval", "60", "--follow"], stdout=subprocess.PIPE, text=True)
        followed: list[str] = []
        threading.Thread(target=lambda: followed.extend(iter(follow.stdout.readline, "")), daemon=True).start()
        n2.ship([ev(job, "exec", 203, "/tmp/sysupd", ["/tmp/sysupd", "-o", "stratum+tcp://p.example:3333"],
                    key="x-3")])                                      # an argv rule: only a kill order stops it
        n1b.ship([ev(job, "exec", 160 + i, "/usr/bin/true", ["true", str(i)], key=f"v{i}") for i in range(50)])
        wait_until(lambda: any(o.pid == 203 for o in n2.orders), 40, "the kill order after the worker failover")
        wait_until(lambda: owner(part) == survivor, 20, "the survivor to hold the job's partition")
        wait_until(lambda: stored_once(url, n1.host)[0] == n1b.seq and stored_once(url, n2.host)[0] == n2.seq, 30,
                   "every event stored")
        assert stored_once(url, n1.host) == (n1b.seq, 0) and stored_once(url, n2.host) == (n2.seq, 0)
        assert rows(url, "SELECT COUNT(*) FROM gaps WHERE host_id IN (%s, %s)", n1.host, n2.host)[0][0] == 0
        assert [o.pid for o in n2.orders].count(203) == 1                  # delivered once
        assert len(n2.orders) == len({o.order_id for o in n2.orders})
        alerts = dict(rows(url, "SELECT rule_id, COUNT(*) FROM alerts WHERE job_id = %s GROUP BY rule_id", job))
        assert alerts[corr] == 1 and alerts["miner-stratum-url"] == 1      # once each
        assert cli_json(port_b, "alerts", "--job", job)["alerts"]           # B answers from the store
        # a worker raised it; the collector's follower was pushed it (pushed: the poll interval is a minute)
        wait_until(lambda: any("miner-stratum-url" in line for line in followed), 20, "the followed alert")
        # a third collector no host streams to: a follower of the job there sees each host's new events (from
        # the log), the second shipped only after the first was shown, so it can only have been pushed
        port_c = free_port()
        up(services, log_collector(tmp_path / "c", port_c, url, nats_cluster))
        timeline = subprocess.Popen([*CLI, "timeline", job, "--collector", f"127.0.0.1:{port_c}", "--json",
                                     "--interval", "60", "--follow"], stdout=subprocess.PIPE, text=True)
        shown: list[str] = []
        threading.Thread(target=lambda: shown.extend(iter(timeline.stdout.readline, "")), daemon=True).start()
        n2.ship([ev(job, "exec", 401, "/usr/bin/true", ["true", "marker-n2"], key="m2")])
        wait_until(lambda: any("marker-n2" in line for line in shown), 30, "node 2's event on the third collector")
        n1b.ship([ev(job, "exec", 402, "/usr/bin/true", ["true", "marker-n1"], key="m1")])
        wait_until(lambda: any("marker-n1" in line for line in shown), 30, "node 1's event on the third collector")
    finally:
        for proc in (locals().get("follow"), locals().get("timeline")):
            if proc is not None:
                proc.kill()
                proc.wait(10)
        probe.close()
        for a in (n1, n2, locals().get("n1b")):
            if a is not None:
                a.close()


def test_collector_refuses_a_bad_log_url(tmp_path):
    out = collector(tmp_path, free_port(), "--log", "http://example:4222")
    res = subprocess.run(out.argv, capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "nats://HOST:PORT" in res.stderr


@pytest.mark.parametrize("args", [["--store", "postgresql://x@127.0.0.1/x"], ["--log", "nats://127.0.0.1:1"]])
def test_worker_needs_log_and_store(args):
    res = subprocess.run([*CLI, "worker", *args], capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "needs --log" in res.stderr


@pytest.mark.kernel
def test_a_real_agent_on_the_log_loses_nothing_when_its_collector_and_a_log_node_die(tmp_path, postgres, nats_cluster,
                                                                                   services):
    """The real agent (this kernel) with two log collectors in its list: tagged execs; SIGKILL a NATS node and the
    collector the agent streams to mid-stream; the agent fails over and every exec is stored exactly once."""
    from tests.conftest import require_bpf  # noqa: PLC0415
    from tests.services import agent  # noqa: PLC0415
    from tests.test_fleet_e2e import run_tagged, tagged_execs  # noqa: PLC0415

    require_bpf()
    url = postgres.new_database()
    port_a, port_b, host = free_port(), free_port(), f"logfleet-{uuid.uuid4().hex[:8]}"
    col_a = up(services, log_collector(tmp_path / "a", port_a, url, nats_cluster))
    up(services, log_collector(tmp_path / "b", port_b, url, nats_cluster))
    up(services, worker(tmp_path, url, nats_cluster, "w1"))
    up(services, agent(tmp_path, port_a, host, "--collector", f"127.0.0.1:{port_a},127.0.0.1:{port_b}"))
    from lab import wait_for_text, wait_policy_acked  # noqa: PLC0415

    wait_policy_acked(port_a, host)
    tag = f"logfleet-{uuid.uuid4().hex}"
    run_tagged(tag, 0, 100)
    wait_until(lambda: tagged_execs(url, host, tag)[0] == 100, 60, "100 execs stored through the log")
    nats_cluster.nodes[1].kill()                                  # a log node
    run_tagged(tag, 100, 50)
    col_a.kill()                                                  # the agent's collector, mid-stream
    run_tagged(tag, 150, 50)
    wait_for_text(tmp_path / "agent.log", f"failing over to collector 127.0.0.1:{port_b}", timeout=60)
    wait_until(lambda: tagged_execs(url, host, tag)[0] >= 200, 90, "every exec stored")
    assert tagged_execs(url, host, tag) == (200, 0)               # every event, exactly once
    assert rows(url, "SELECT COUNT(*) FROM gaps WHERE host_id = %s", host)[0][0] == 0   # and no false gap


def test_a_worker_stops_promptly_when_the_log_is_dead(tmp_path, nats_cluster):
    """SIGTERM with every log node gone: the worker gives up on releasing its leases (they expire) and exits."""
    import signal  # noqa: PLC0415

    w = Service([*CLI, "worker", "--log", nats_cluster.urls, "--store", str(tmp_path / "w.db"), "--partitions", "4",
                 "--name", "lonely"], tmp_path / "lonely.log", "took partition 3").start()
    for node in nats_cluster.nodes:
        node.kill()
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(60) == 0                                       # (it used to retry each lease for minutes)
    assert "worker lonely stopped" in (tmp_path / "lonely.log").read_text()


def test_worker_metrics_need_a_reader_token_and_show_partitions(tmp_path, nats_cluster):
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    from tests.services import issue  # noqa: PLC0415

    port = free_port()
    w = Service([*CLI, "worker", "--log", nats_cluster.urls, "--store", str(tmp_path / "w.db"), "--partitions", "4",
                 "--name", "scraped", "--metrics", f"127.0.0.1:{port}"], tmp_path / "scraped.log",
                "took partition 3").start()
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=10)
        assert refused.value.code == 401
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {issue('reader', 'scraper')}"})
        body = urllib.request.urlopen(req, timeout=10).read().decode()
        held = [line for line in body.splitlines() if line.startswith("gpuguard_worker_partition_held{")]
        assert len(held) == 4 and "gpuguard_worker_lag_seconds" in body and "gpuguard_worker_phase_cpu_seconds" in body
    finally:
        w.stop()

"""Both /metrics endpoints scraped while a real agent (this kernel) ships to a real collector: the
counters move with this test's own events (execs in a job, a fake miner killed at exec)."""

from __future__ import annotations

import time
import urllib.request
import uuid

import pytest

from lab import install_miner, run_in_cgroup, wait_policy_acked
from tests.conftest import fresh_job_id, require_bpf
from tests.services import agent, collector, free_port, issue, wait_for_text
from tests.test_operators import metric

pytestmark = pytest.mark.kernel


def scrape(url: str, token: str = "") -> str:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read().decode()


def test_metrics_move_with_the_tests_own_events(tmp_path, test_cgroup):
    require_bpf()
    port, host = free_port(), f"test-{uuid.uuid4().hex[:8]}"
    agent_metrics, collector_metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    col = collector(tmp_path, port, "--metrics", collector_metrics).start()
    ag = agent(tmp_path, port, host, "--metrics", agent_metrics).start()
    try:
        wait_policy_acked(port, host)
        slurm = test_cgroup("slurm/uid_0")
        wait_for_text(tmp_path / "agent.log", f"payload_egress to {slurm.parent}", timeout=15)
        reader = issue("reader", f"scraper-{host}")
        a_url, c_url = f"http://{agent_metrics}/metrics", f"http://{collector_metrics}/metrics"
        a0, c0 = scrape(a_url), scrape(c_url, reader)
        job = fresh_job_id()
        cg = slurm / f"job_{job}"
        cg.mkdir()
        tag = uuid.uuid4().hex[:8]
        for _ in range(20):
            assert run_in_cgroup(cg, ["/bin/echo", tag], capture_output=True).returncode == 0
        miner = install_miner(tmp_path, "xmrig")
        assert run_in_cgroup(cg, [miner, "-o", "stratum+tcp://127.0.0.1:1"], timeout=30).returncode == -9
        stored0 = metric(c0, "gpuguard_collector_events_stored_total")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:                    # positive signal: the collector stored them
            c1 = scrape(c_url, reader)
            if metric(c1, "gpuguard_collector_alerts_total", 'rule="miner-binary",severity="critical"') >= 1 \
                    and metric(c1, "gpuguard_collector_events_stored_total") - stored0 >= 21:
                break
            time.sleep(0.3)
        a1 = scrape(a_url)
        assert metric(a1, "gpuguard_agent_events_total", 'kind="exec"') - \
            metric(a0, "gpuguard_agent_events_total", 'kind="exec"') >= 21
        assert metric(a1, "gpuguard_agent_enforcement_actions_total", 'action="kill_exec"') >= 1
        assert metric(a1, "gpuguard_agent_connected") == 1
        assert metric(a1, "gpuguard_agent_policy_version") >= 1
        assert metric(a1, "gpuguard_agent_enforcement_programs", 'program="kill_exec"') == 1
        assert metric(c1, "gpuguard_collector_events_stored_total") - stored0 >= 21
        assert metric(c1, "gpuguard_collector_alerts_total", 'rule="miner-binary",severity="critical"') >= 1
        assert metric(c1, "gpuguard_collector_agent_connected", f'host="{host}"') == 1
        commits = "gpuguard_collector_commit_seconds_count"
        assert metric(c1, commits) > metric(c0, commits)
    finally:
        ag.stop()
        col.stop()

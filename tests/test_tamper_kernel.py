"""On a real kernel with a real agent: what an observed process does cannot stop or blind the agent,
and an agent that goes quiet (stopped, killed) or restarts raises an alert."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid

import pytest

from agent.text import clean
from gpuguard.tls import open_channel
from gpuguard.v1 import collector_pb2 as cpb
from gpuguard.v1 import collector_pb2_grpc as cgrpc
from gpuguard.v1 import events_pb2 as pb
from lab import popen_in_cgroup, wait_until
from tests.conftest import require_bpf
from tests.services import admin, agent, collector, free_port, stored_events

pytestmark = pytest.mark.kernel


def query(port: int, method: str, request):
    with open_channel(f"127.0.0.1:{port}") as ch:
        return getattr(cgrpc.QueryStub(ch), method)(request, timeout=10, metadata=admin())


def host_state(port: int, host: str) -> str:
    return next((h.state for h in query(port, "ListHosts", cpb.HostsRequest()).hosts if h.host_id == host), "")


def alerts(port: int, rule: str, host: str) -> list:
    return [a for a in query(port, "ListAlerts", cpb.AlertsRequest()).alerts if a.rule_id == rule and a.host_id == host]


def test_stopped_killed_and_restarted_agents_raise_alerts(tmp_path, test_cgroup):
    require_bpf()
    port, host = free_port(), f"tamper-{uuid.uuid4().hex[:6]}"
    col = collector(tmp_path, port).start()
    ag = agent(tmp_path, port, host)
    try:
        ag.start()
        wait_until(lambda: host_state(port, host) == "ok")
        job = test_cgroup("slurm/uid_0/job_5150")                   # a job runs on the host
        popen_in_cgroup(job, ["/bin/true"]).wait(10)
        wait_until(lambda: any(j.job.id == "5150" for j in query(port, "ListJobs", cpb.ListJobsRequest()).jobs))

        os.kill(ag.proc.pid, signal.SIGSTOP)                        # frozen: the stream stays open, nothing comes
        stopped = time.monotonic()
        # the host's alert and its jobs' are stored one after the other: wait for the job's too (one query a look:
        # two could disagree when the job's alert lands between them)
        def silent_for_host_and_job() -> list:
            found = alerts(port, "agent-silent", host)
            return found if {a.job.id for a in found} >= {"host", "5150"} else []

        silent = wait_until(silent_for_host_and_job, timeout=30)
        print(f"\nSIGSTOP -> agent-silent alert: {time.monotonic() - stopped:.1f}s (heartbeat 1s, grace 2)")
        assert {a.job.id for a in silent} >= {"host", "5150"}     # for the host and for the job running there
        assert host_state(port, host) == "silent"
        os.kill(ag.proc.pid, signal.SIGCONT)
        wait_until(lambda: host_state(port, host) == "ok")

        # a loaded machine may have seen another silence while the agent caught up after SIGCONT: the kill's alert
        # is the one raised after it, whatever came before
        before = {a.id for a in alerts(port, "agent-silent", host) if a.job.id == "host"}
        ag.kill(signal.SIGKILL)
        killed = time.monotonic()
        wait_until(lambda: {a.id for a in alerts(port, "agent-silent", host) if a.job.id == "host"} - before)
        print(f"SIGKILL -> agent-silent alert: {time.monotonic() - killed:.1f}s")
        assert wait_until(lambda: host_state(port, host) == "silent")  # "disconnected" until the grace has passed

        ag.start()
        restarted = wait_until(lambda: alerts(port, "agent-restarted", host))
        assert restarted[0].matched["previous_start_ns"] != restarted[0].matched["new_start_ns"]
        assert wait_until(lambda: host_state(port, host) == "ok")
    finally:
        ag.stop()
        col.stop()


def test_hostile_names_cgroups_and_a_huge_parent_command_line(tmp_path, test_cgroup):
    """Started before the agent: a binary and a cgroup named with invalid UTF-8 and terminal escapes, and a
    parent with a ~840 KB command line whose children keep exec'ing. The agent starts, ships and keeps going."""
    require_bpf()
    port, host = free_port(), f"names-{uuid.uuid4().hex[:6]}"
    bad_name = b"\xff\xfe\x1b[31mevil\nname"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    bad_sh = os.fsencode(bindir) + b"/" + bad_name
    shutil.copy("/bin/sh", os.fsdecode(bad_sh))
    bad_cg = test_cgroup("slurm/uid_0/job_6160") / os.fsdecode(b"step_\xff\x1b]0;title\x07")
    bad_cg.mkdir()
    marker = uuid.uuid4().hex[:8]
    loop = f"while :; do /bin/true {marker}; sleep 0.2; done"
    odd = popen_in_cgroup(bad_cg, [os.fsdecode(bad_sh), "-c", loop, "x\xff"])
    huge_args = ["A" * (120 << 10)] * 7                               # ~840 KB of argv (each under 128 KiB)
    big = popen_in_cgroup(test_cgroup("bigparent"), ["/bin/sh", "-c", f"while :; do /bin/true big{marker}; "
                                                     "sleep 0.2; done", *huge_args])
    col = collector(tmp_path, port).start()
    ag = agent(tmp_path, port, host)
    try:
        ag.start()
        db = tmp_path / "collector.db"

        def tagged(tag: str) -> list[pb.Event]:
            out = []
            for _seq, kind, body in stored_events(db, host) if db.exists() else []:
                if kind == "exec":
                    ev = pb.Event.FromString(body)
                    if tag in ev.exec.argv:
                        out.append((ev, len(body)))
            return out

        odd_execs = wait_until(lambda: tagged(marker))
        big_execs = wait_until(lambda: tagged(f"big{marker}"))
        ev, _size = odd_execs[0]
        parent = ev.process.ancestors[0]
        assert parent.exe == clean(bad_sh) and "\\xff\\xfe" in parent.exe
        assert parent.comm == clean(bad_name[:15])
        assert "\\xff" in ev.process.cgroup and ev.job.id == "6160"
        ev, size = big_execs[0]
        assert size < 64 << 10                                        # the parent's 840 KB did not come along
        assert sum(len(a) for a in ev.process.ancestors[0].argv) <= 1024
        assert ag.proc.poll() is None
        assert "Traceback" not in (tmp_path / "agent.log").read_text(errors="replace")
    finally:
        ag.stop()
        col.stop()
        for p in (odd, big):
            p.kill()
            p.wait(10)


def test_a_clean_stop_leaves_the_host_stopped_not_silent(tmp_path):
    require_bpf()
    port, host = free_port(), f"bye-{uuid.uuid4().hex[:6]}"
    col = collector(tmp_path, port).start()
    ag = agent(tmp_path, port, host)
    try:
        ag.start()
        wait_until(lambda: host_state(port, host) == "ok")
        assert not alerts(port, "agent-silent", host)               # its heartbeats kept time while it ran
        ag.kill(signal.SIGTERM)                                     # systemctl stop: a clean stop
        assert wait_until(lambda: alerts(port, "agent-stopped", host))
        assert wait_until(lambda: host_state(port, host) == "stopped")
        assert not alerts(port, "agent-silent", host)
    finally:
        ag.stop()
        col.stop()


def test_gpuguard_try_shows_a_block_and_its_alerts(tmp_path):
    """The first-run command: a harmless miner-shaped process in a scratch job, killed at exec, alerts printed."""
    require_bpf()
    from tests.services import CLI, ROOT  # noqa: PLC0415

    port, host = free_port(), f"try-{uuid.uuid4().hex[:6]}"
    col = collector(tmp_path, port).start()
    ag = agent(tmp_path, port, host)
    try:
        ag.start()
        wait_until(lambda: host_state(port, host) == "ok")
        out = subprocess.run([*CLI, "try", "--collector", f"127.0.0.1:{port}"], capture_output=True, text=True,
                             cwd=ROOT, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "killed at exec" in out.stdout and "alert: [" in out.stdout and " miner-" in out.stdout, out.stdout
        from agent.jobs import ensure_cgroup2_mount  # noqa: PLC0415
        assert not list(ensure_cgroup2_mount().glob("gpuguard-try-*"))        # its scratch cgroups are gone
    finally:
        ag.stop()
        col.stop()

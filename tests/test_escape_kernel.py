"""A process that leaves its job's cgroup (root in a job can write its pid anywhere): seen in the kernel at the
move, the job's own mover killed before its write() returns, every move out reported; moves inside the job are not."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest

from gpuguard.v1 import policy_pb2 as ppb
from lab import popen_in_cgroup
from tests.conftest import PYTHON, fresh_job_id, wait_for

pytestmark = pytest.mark.kernel

MOVE_SELF = """
import os, sys
open(sys.argv[1] + "/cgroup.procs", "w").write(str(os.getpid()))
print("outside", flush=True)
"""

FORK_THEN_CHILD_MOVES = """
import os, sys
print("ready", flush=True)
sys.stdin.readline()
pid = os.fork()
if pid == 0:
    open(sys.argv[1] + "/cgroup.procs", "w").write(str(os.getpid()))
    os._exit(0)
print(os.waitpid(pid, 0)[1], flush=True)
"""


def watch(enforcer, rule: str, job: str, kill: bool = True) -> None:
    enforcer.apply(ppb.Policy(version=1, escape=[ppb.EscapeWatch(rule_id=rule, scope=ppb.Scope(job_ids=[job]),
                                                                 kill=kill)]), persist=False)


def escapes(capture, rule: str, pid: int, timeout: float = 5.0) -> list[dict]:
    return wait_for(capture, lambda r: r["kind"] == "enforcement" and r["enforcement"]["rule_id"] == rule
                    and r["proc"]["pid"] == pid, timeout=timeout)


def test_a_job_process_that_moves_itself_out_is_killed_at_the_move(capture, enforcer, test_cgroup):
    job, rule = fresh_job_id(), f"t-escape-{uuid.uuid4().hex[:6]}"
    cg, outside = test_cgroup(f"slurm/job_{job}"), test_cgroup("elsewhere")
    watch(enforcer, rule, job)
    proc = popen_in_cgroup(cg, [PYTHON, "-c", MOVE_SELF, str(outside)], stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == -9 and "outside" not in out, (proc.returncode, out)
    hits = escapes(capture, rule, proc.pid)
    assert hits, "no record of the escape"
    e = hits[0]["enforcement"]
    assert e["action"] == "kill_escape" and hits[0]["job"]["id"] == job
    assert "elsewhere" in e["detail"] and "moved by itself" in e["detail"], e["detail"]


def test_a_move_inside_the_job_is_quiet_and_a_move_out_by_another_process_is_reported(capture, enforcer,
                                                                                      test_cgroup):
    job, rule = fresh_job_id(), f"t-escape-{uuid.uuid4().hex[:6]}"
    cg, outside = test_cgroup(f"slurm/job_{job}"), test_cgroup("elsewhere")
    step = test_cgroup(f"slurm/job_{job}/step_1")
    watch(enforcer, rule, job)
    proc = popen_in_cgroup(cg, [PYTHON, "-c", "import sys; print('ready', flush=True); sys.stdin.readline()"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"         # exec'd in the job
        (step / "cgroup.procs").write_text(str(proc.pid))        # a new step of the same job: not an escape
        (outside / "cgroup.procs").write_text(str(proc.pid))     # moved out by a process outside the job
        hits = escapes(capture, rule, proc.pid)
        assert len(hits) == 1, hits                             # the step move, earlier on the ring, made none
        assert hits[0]["enforcement"]["action"] == "seen_escape"
        assert proc.poll() is None                              # the mover was not in the job: nothing killed
    finally:
        proc.kill()
        proc.wait(10)


def test_children_and_processes_older_than_the_policy_are_watched_too(capture, enforcer, test_cgroup):
    job, rule = fresh_job_id(), f"t-escape-{uuid.uuid4().hex[:6]}"
    cg, outside = test_cgroup(f"slurm/job_{job}"), test_cgroup("elsewhere")
    proc = popen_in_cgroup(cg, [PYTHON, "-c", FORK_THEN_CHILD_MOVES, str(outside)], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"            # running in the job before the watch exists
    watch(enforcer, rule, job)
    out, _ = proc.communicate("go\n", timeout=20)
    assert out.strip() == "9", out                              # the forked child: SIGKILL at its move
    # the job's own records: a record of an earlier test still on the ring names its rule by index, which the
    # decoder resolves against the policy of now (this test's)
    hits = wait_for(capture, lambda r: r["kind"] == "enforcement" and r["enforcement"]["rule_id"] == rule
                    and r["job"]["id"] == job)
    assert hits and hits[0]["enforcement"]["action"] == "kill_escape"


def test_without_kill_the_job_process_is_only_reported(capture, enforcer, test_cgroup):
    job, rule = fresh_job_id(), f"t-escape-{uuid.uuid4().hex[:6]}"
    cg, outside = test_cgroup(f"slurm/job_{job}"), test_cgroup("elsewhere")
    watch(enforcer, rule, job, kill=False)
    proc = popen_in_cgroup(cg, [PYTHON, "-c", MOVE_SELF, str(outside)], stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "outside" in out
    hits = escapes(capture, rule, proc.pid)
    assert hits and hits[0]["enforcement"]["action"] == "seen_escape"


def test_the_builtin_rule_kills_a_job_process_leaving_for_the_root_side_and_alerts(tmp_path, test_cgroup):
    """The reported attack, end to end: root in a Slurm job moves itself out to connect from outside its job's
    hooks. With the built-in job-escape rule a job created after the agent started is watched from its first
    exec (the entry sits on the kind's parent), the mover dies at the move, and the collector confirms it."""
    from lab import free_port, wait_policy_acked  # noqa: PLC0415
    from tests.services import agent, cli_json, collector  # noqa: PLC0415
    from tests.test_tamper_kernel import wait_until  # noqa: PLC0415

    port, host = free_port(), f"escape-{uuid.uuid4().hex[:6]}"
    test_cgroup("slurm/uid_0")
    col = collector(tmp_path, port).start()
    ag = agent(tmp_path, port, host)
    try:
        ag.start()
        wait_policy_acked(port, host)        # the agent acks a policy once its kernel maps hold it
        job = fresh_job_id()
        cg, outside = test_cgroup(f"slurm/uid_0/job_{job}"), test_cgroup("elsewhere")
        proc = popen_in_cgroup(cg, [PYTHON, "-c", MOVE_SELF, str(outside)], stdout=subprocess.PIPE, text=True)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == -9 and "outside" not in out, (proc.returncode, out)
        alert = wait_until(lambda: [a for a in cli_json(port, "alerts")["alerts"]
                                    if a["rule_id"] == "job-escape" and a["job"]["id"] == job])[0]
        assert alert["state"] == "ALERT_CONFIRMED", alert
        assert "elsewhere" in json.dumps(alert)
    finally:
        ag.stop()
        col.stop()


def test_moving_into_a_sibling_job_is_leaving_ones_own(capture, enforcer, test_cgroup):
    """A kind-wide watch: the entry on the jobs' parent names the jobs' level, so job A -> job B is an escape
    (both under the same /slurm/uid_0) and a job made after the policy is watched from its first exec."""
    rule = f"t-escape-{uuid.uuid4().hex[:6]}"
    test_cgroup("slurm/uid_0")
    first = test_cgroup(f"slurm/uid_0/job_{fresh_job_id()}")           # a job exists when the policy comes
    enforcer.apply(ppb.Policy(version=1, escape=[ppb.EscapeWatch(rule_id=rule, kill=True,
                                                                 scope=ppb.Scope(job_kinds=["slurm"]))]),
                   persist=False)
    job_a = fresh_job_id()
    cg_a, cg_b = test_cgroup(f"slurm/uid_0/job_{job_a}"), first          # A is made after the policy
    proc = popen_in_cgroup(cg_a, [PYTHON, "-c", MOVE_SELF, str(cg_b)], stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == -9 and "outside" not in out, (proc.returncode, out)
    hits = escapes(capture, rule, proc.pid)
    assert hits and hits[0]["enforcement"]["action"] == "kill_escape" and hits[0]["job"]["id"] == job_a

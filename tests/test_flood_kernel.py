"""A connect flood from one job costs that job fidelity, never another job's execs: repeated connects are folded in
the kernel (one record a second, with a count), and exec/fork/exit/enforcement records ride a ring of their own."""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest

from lab import popen_in_cgroup
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

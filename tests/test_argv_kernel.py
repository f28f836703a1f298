"""Arguments placed behind a long one, behind many short ones or behind 60 KiB of padding still reach the rules
(the exec probe steps over long arguments; the agent reads /proc/PID/cmdline for what its buffer cannot hold)."""

from __future__ import annotations

import subprocess
import time

import pytest

from collector.rules.engine import Engine
from collector.rules.loader import load_ruleset, rule_texts
from tests.conftest import PYTHON, wait_for

pytestmark = pytest.mark.kernel

URL = "stratum+tcp://pool.gg-argv.example:3333"
PADDINGS = {
    "after a 3,000-byte argument": ["x" * 3000],
    "after 40 short arguments": ["a"] * 40,
    "after 60 KiB of arguments": ["y" * 6000] * 10,
}


@pytest.mark.parametrize("label", list(PADDINGS))
def test_argv_behind_padding_reaches_the_rules(capture, label):
    from google.protobuf.json_format import ParseDict  # noqa: PLC0415

    from gpuguard.v1 import events_pb2 as pb  # noqa: PLC0415

    argv = [PYTHON, "-c", "import time; time.sleep(2)", *PADDINGS[label], "-o", URL]
    proc = subprocess.Popen(argv)          # alive while the agent enriches its exec (a miner runs for hours)
    try:
        hits = wait_for(capture, lambda r: r["kind"] == "exec" and r["proc"]["pid"] == proc.pid, timeout=10)
    finally:
        proc.kill()
        proc.wait(10)
    assert hits, "exec not seen"
    rec = hits[0]["exec"]
    assert rec["argv"][-2:] == ["-o", URL], (label, len(rec["argv"]), rec["argv_truncated"])
    ev = ParseDict({"exec": {"filename": rec["filename"], "argv": rec["argv"]}}, pb.Event())
    ev.job.kind, ev.job.id = "slurm", "1"
    fired = {m.rule.id for m in Engine(load_ruleset(rule_texts())).evaluate("h", ev, None)}
    assert "miner-stratum-url" in fired


def test_the_kernel_steps_over_a_long_argument(capture):
    """A process gone before the agent looks (/proc cannot help): the probe itself read past the long argument."""
    proc = subprocess.run(["/bin/true", "x" * 3000, "z" * 20000, "-o", URL])
    assert proc.returncode == 0
    hits = wait_for(capture, lambda r: r["kind"] == "exec" and r["exec"]["argv"][-1:] == [URL]
                    and r["exec"]["filename"] == "/bin/true")
    assert hits and hits[0]["exec"]["argv"][1] == "x" * 255 and hits[0]["exec"]["argv_truncated"]


# ---- kill at exec by the whole argv, in the kernel (probes/enforce_argv.c) ---------------------------------------
WHOLE_ARGV_RULES = ("miner-stratum-url", "ssh-reverse-tunnel", "reverse-shell-oneliner", "argv-uninspectable")
# (label, argv tail placed after the padding, rule that kills it)
ATTACKS = {
    "stratum URL": ([PYTHON, "-c", "import sys"], ["-o", URL], "miner-stratum-url"),
    "ssh -R": (["/usr/bin/ssh", "-o", "BatchMode=yes"], ["-R", "9000:localhost:22", "127.0.0.1"], "ssh-reverse-tunnel"),
    "reverse-shell one-liner": ([PYTHON, "-c", "import sys"],
                                ["import socket,os;s=socket.socket();os.dup2(s.fileno(),0)"], "reverse-shell-oneliner"),
    # the family, not the example: another scheme inside an option, mixed case; another language's one-liner
    "stratum2+ssl inside an option": ([PYTHON, "-c", "import sys"], ["--url=Stratum2+SSL://pool.example:443"],
                                      "miner-stratum-url"),
    "perl Socket one-liner": (["/usr/bin/perl", "-e", "1"], ["use Socket;socket(S,2,1,6);exec('/bin/sh -i')"],
                              "reverse-shell-oneliner"),
    # only the built-in policy's last entry matches it (io::socket::inet + system): beyond the 12 entries per
    # scope the kernel once held
    "perl IO::Socket::INET one-liner": (["/usr/bin/perl", "-e", "1"],
                                        ["$c=IO::Socket::INET->new(PeerAddr,'127.0.0.1:9');system('/bin/bash')"],
                                        "reverse-shell-oneliner"),
}


def apply_whole_argv_rules(enforcer, job: str, version: int = 31) -> None:
    """The built-in rules' whole-argv entries, scoped to the test's job only."""
    from gpuguard.v1 import policy_pb2 as ppb  # noqa: PLC0415
    from lab import builtin_argv_kill  # noqa: PLC0415

    entries = [e for e in builtin_argv_kill(job, version) if e.rule_id in WHOLE_ARGV_RULES]
    assert {e.rule_id for e in entries} == {"miner-stratum-url", "ssh-reverse-tunnel", "reverse-shell-oneliner"}
    enforcer.apply(ppb.Policy(version=version, argv_kill=entries), persist=False)


def kills(capture, job: str, rule: str, pid: int) -> list[dict]:
    return wait_for(capture, lambda r: r["kind"] == "enforcement" and r["enforcement"]["rule_id"] == rule
                    and r["job"]["id"] == job and r["proc"]["pid"] == pid)


@pytest.mark.parametrize("attack", list(ATTACKS))
@pytest.mark.parametrize("label", list(PADDINGS))
def test_whole_argv_kills_at_exec_behind_padding(capture, enforcer, test_cgroup, attack, label):
    from lab import popen_in_cgroup  # noqa: PLC0415
    from tests.conftest import fresh_job_id  # noqa: PLC0415

    job = fresh_job_id()
    cg = test_cgroup(f"slurm/job_{job}")
    apply_whole_argv_rules(enforcer, job)
    head, tail, rule = ATTACKS[attack]
    quiet = popen_in_cgroup(cg, [PYTHON, "-c", "import sys", *PADDINGS[label], "plain", "arguments"])
    assert quiet.wait(20) == 0                          # the same padding without the tail runs
    proc = popen_in_cgroup(cg, [*head, *PADDINGS[label], *tail], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    assert proc.wait(20) == -9, f"{attack} {label}: not killed at exec"
    hits = kills(capture, job, rule, proc.pid)
    assert hits and hits[0]["enforcement"]["action"] == "kill_exec", (attack, label)


def test_whole_argv_kill_outlives_the_agent(capture, enforcer, test_cgroup):
    """The scan's link and prog array are pinned: with the enforcer gone (maps left as they were), a stratum URL
    behind 60 KiB of padding is still killed at exec."""
    from lab import popen_in_cgroup  # noqa: PLC0415
    from tests.conftest import fresh_job_id  # noqa: PLC0415

    job = fresh_job_id()
    cg = test_cgroup(f"slurm/job_{job}")
    apply_whole_argv_rules(enforcer, job)
    pins = sorted(p.name.split("-")[0] for p in enforcer.pins.path.iterdir()
                  if p.name.startswith(("kill_argv-", "argv_progs-")))
    assert pins == ["argv_progs", "kill_argv"]
    argv_kill, enforcer.argv_kill = enforcer.argv_kill, None
    argv_kill.close(unpin=False)                         # the agent's fds are gone; only the pins hold it
    try:
        proc = popen_in_cgroup(cg, [PYTHON, "-c", "import sys", *PADDINGS["after 60 KiB of arguments"], "-o", URL])
        assert proc.wait(20) == -9
    finally:
        for path in (argv_kill.path, *argv_kill.map_pins):
            path.unlink(missing_ok=True)
    # unpinned: detached. The kernel frees a link whose last reference went after an RCU grace period, so a
    # loaded machine may still run it for a moment: wait for an exec that survives (the positive signal)
    deadline = time.monotonic() + 15
    while (rc := popen_in_cgroup(cg, [PYTHON, "-c", "import sys", "-o", URL]).wait(20)) != 0 \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rc == 0


def test_anchor_stuffing_is_reported_not_a_way_past(capture, enforcer, test_cgroup):
    """More anchor hits in one 4 KiB piece than the kernel verifies: the exec is uninspectable, and a rule on
    that (here: kill) acts, so stuffing is no way past the scan."""
    from gpuguard.v1 import policy_pb2 as ppb  # noqa: PLC0415
    from lab import popen_in_cgroup  # noqa: PLC0415
    from tests.conftest import fresh_job_id  # noqa: PLC0415

    job = fresh_job_id()
    cg = test_cgroup(f"slurm/job_{job}")
    scope = ppb.Scope(job_ids=[job])
    enforcer.apply(ppb.Policy(version=32, argv_kill=[
        ppb.ArgvKill(rule_id="stratum", scope=scope, any=["stratum+"]),
        ppb.ArgvKill(rule_id="uninspectable", scope=scope, uninspectable=True)]), persist=False)
    stuffed = popen_in_cgroup(cg, [PYTHON, "-c", "import sys", "tum+" * 100])
    assert stuffed.wait(20) == -9
    assert kills(capture, job, "uninspectable", stuffed.pid)
    fine = popen_in_cgroup(cg, [PYTHON, "-c", "import sys", "tum+" * 8])   # a few hits: verified, not stratum
    assert fine.wait(20) == 0

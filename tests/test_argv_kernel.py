"""Arguments placed behind a long one, behind many short ones or behind 60 KiB of padding still reach the rules
(the exec probe steps over long arguments; the agent reads /proc/PID/cmdline for what its buffer cannot hold)."""

from __future__ import annotations

import subprocess

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

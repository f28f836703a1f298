"""Prove the BTF offsets on ourselves before trusting a single event.

The probes read a few kernel-struct fields at offsets from BTF (agent/btf.py).
Right after loading, the agent starts a child with a known argv, environment,
parent and exit code, and checks that the kernel reported exactly those. A
mismatch means the offsets are wrong for this kernel: the agent refuses to
start rather than report plausible garbage (a wrong offset reads silently).
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import time

from agent.encoded import CONNECT_FIELD, ENCODED, EncodedEvent
from agent.loader import LoaderError
from gpuguard.vocab import JOB_SLURM

log = logging.getLogger(__name__)
SHELL = "/bin/sh"


def run_selfcheck(capture, attempts: int = 3) -> None:
    """Up to ``attempts`` check processes: one whose events were lost in a busy ring buffer is retried."""
    for attempt in range(1, attempts + 1):
        lost_before = sum(capture.kernel_lost().values())
        try:
            _check_once(capture)
            return
        except _NotSeen as exc:
            lost = sum(capture.kernel_lost().values()) - lost_before
            if attempt == attempts:
                raise LoaderError(f"{exc} in {attempts} attempts ({lost} events lost in the kernel meanwhile: "
                                  "raise ringbuf_pages if this node is that busy)") from None


class _NotSeen(Exception):
    pass


def _image_problem(proc) -> str | None:
    """The exec record's image must be the shell's file as stat sees it: the hash cache and the kill by hash key
    on it (agent/exe_hash.py). A ctime of 0 means this kernel's layout gave none (checked by stat instead). A
    mismatch is logged, not fatal: a filesystem that reports another inode to stat (some overlay setups) costs
    hashes, and capture and the in-kernel rules are worth more running than stopped."""
    image = proc.exe_inode if proc is not None else None
    try:
        st = os.stat(SHELL)
    except OSError:
        return None
    if image is None or image[1] != st.st_ino:
        return f"image inode read as {image}, expected inode {st.st_ino} (mm exe_file/inode offsets)"
    if image[2] and image[2] != st.st_ctime_ns:
        return f"image ctime read as {image[2]}, expected {st.st_ctime_ns} (inode ctime offsets)"
    return None


def _check_once(capture, timeout: float = 10.0) -> None:
    nonce = str(secrets.randbelow(10**9) + 10**9)
    argv = [SHELL, "-c", "exit 7", f"gpuguard-selfcheck-{nonce}"]
    child = subprocess.Popen(argv, env={"SLURM_JOB_ID": nonce, "PATH": "/usr/bin:/bin"})
    child.wait()
    deadline = time.monotonic() + timeout
    exec_rec = exit_rec = None
    while time.monotonic() < deadline and (exec_rec is None or exit_rec is None):
        for record in capture.poll_once(50):
            rec = record
            if type(record) is EncodedEvent and record.pid == child.pid and record.kind != CONNECT_FIELD:
                rec = record.event()              # the check's exec or exit, as bytes (agent/encoded.py)
            elif type(record) in ENCODED or record.process.pid != child.pid:   # a connect is never the check's
                capture.held.append(record)       # not ours: handed to the sinks once they exist
                continue
            if rec.HasField("exec"):
                exec_rec = rec
            elif rec.HasField("exit"):
                exit_rec = rec
    if exec_rec is None or exit_rec is None:
        raise _NotSeen(f"no {'exec' if exec_rec is None else 'exit'} event for the offset check process")
    problems = []
    if list(exec_rec.exec.argv) != argv:
        problems.append(f"argv read as {list(exec_rec.exec.argv)[:6]!r}, expected {argv!r} (mm arg offsets)")
    if (exec_rec.job.kind, exec_rec.job.id) != (JOB_SLURM, nonce):
        problems.append(f"SLURM_JOB_ID read as {exec_rec.job.kind}:{exec_rec.job.id}, expected {nonce} "
                        "(mm env offsets)")
    if list(exec_rec.exec.traits):
        problems.append(f"a plain {SHELL} with a clean environment read as {list(exec_rec.exec.traits)} "
                        "(exe_file/inode/dentry offsets: kill-by-trait would kill ordinary programs)")
    if exec_rec.process.ppid != os.getpid():
        problems.append(f"parent read as {exec_rec.process.ppid}, expected {os.getpid()} (real_parent/tgid)")
    problem = _image_problem(capture.table.get(child.pid))
    if problem:
        log.warning("offset check: %s - executable hashes (and kills by hash) may be missing on this node", problem)
    if (exit_rec.exit.code, exit_rec.exit.signal) != (7, 0):
        problems.append(f"exit read as code {exit_rec.exit.code} signal {exit_rec.exit.signal}, expected code 7 "
                        "(exit_code offset)")
    if problems:
        raise LoaderError("kernel struct offsets from BTF do not match what this kernel does: " + "; ".join(problems)
                          + f" (offsets used: {capture.probes.offsets})")

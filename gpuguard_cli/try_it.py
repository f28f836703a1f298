"""`gpuguard try`: a first run that shows a detection. A harmless miner-shaped process (a copy of /bin/sleep
named xmrig, with a stratum URL to a closed local port: nothing is mined, nothing leaves the host) starts in a
scratch Slurm-like job cgroup on this host; the agent kills it at exec and the collector's alerts for the job
are printed as they arrive. Needs root and a running agent + collector (`gpuguard up` or `make run`)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_in(cg: Path, argv: list[str]) -> subprocess.Popen:
    script = f'echo $$ > "{cg}/cgroup.procs" && exec "$@"'
    return subprocess.Popen(["/bin/sh", "-c", script, "sh", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _remove(base: Path) -> None:
    for path in sorted((p for p in base.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            path.rmdir()
    with contextlib.suppress(OSError):
        base.rmdir()


def run_try(alerts, timeout: float = 30.0, out=print) -> int:
    """alerts(job_id) -> list of alerts (the CLI's ListAlerts); 0 when the miner was killed and alerted."""
    from agent.jobs import ensure_cgroup2_mount  # noqa: PLC0415

    job = str(900_000_000 + uuid.uuid4().int % 99_999_999)
    base = ensure_cgroup2_mount() / f"gpuguard-try-{job}"
    cg = base / "slurm" / "uid_0" / f"job_{job}"
    tmp = Path(tempfile.mkdtemp(prefix="gpuguard-try-"))
    miner = tmp / "xmrig"
    shutil.copy("/bin/sleep", miner)
    argv = [str(miner), "30", "-o", f"stratum+tcp://127.0.0.1:{_closed_port()}", "-u", "4" + "A" * 94,
            "--donate-level", "1"]
    killed, seen, started = False, set(), time.monotonic()
    try:
        cg.mkdir(parents=True)
        out(f"try: job slurm:{job} (cgroup {cg}); starting a harmless miner-shaped process in it:\n  "
            f"{' '.join(argv[:3])} ... (a copy of /bin/sleep: nothing is mined, nothing leaves this host)")
        while time.monotonic() - started < timeout and not killed:
            proc = _start_in(cg, argv)
            try:
                rc = proc.wait(3)
            except subprocess.TimeoutExpired:     # the agent has not covered the new job yet: again
                proc.kill()
                rc = proc.wait(10)
                out("try: still running after 3 s (the agent is picking the new job up); again")
                continue
            killed = rc == -9
            fate = "killed at exec (SIGKILL before its first instruction)" if killed else f"ended with {rc}"
            out(f"try: the process was {fate}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for a in alerts(job):
                if a.id not in seen:
                    seen.add(a.id)
                    out(f"alert: [{a.severity}] {a.rule_id}: {a.description[:100]} -> {a.outcome}")
                    if killed and a.rule_id.startswith("miner"):
                        deadline = min(deadline, time.monotonic() + 3)   # its companions, then done
            time.sleep(0.5)
    finally:
        _remove(base)
        shutil.rmtree(tmp, ignore_errors=True)
    if killed and seen:
        out(f"try: done. The whole story: gpuguard timeline slurm:{job}")
        return 0
    out("try: no block or no alert: is an agent running on this host, shipping to this collector? "
        "(gpuguard up, or make run)")
    return 1

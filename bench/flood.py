#!/usr/bin/env python3
"""The flood of the capture issue, at full size, against a real agent and collector on this host.

One job floods for --seconds: two exec storms, a fork storm, a connect loop to one closed port (folded in the
kernel) and a spray of connects to distinct ports (over the job's budget). Five seconds in, a stratum-argv
process starts inside the flooding job. Beside it a quiet job makes one exec and one connect every 100 ms.
Prints: the stratum process's fate, the flooding job's execs made vs stored (the priority ring), the kernel's
losses by kind, time from the flood's start to `capture-degraded` for the flooding job (and whether the quiet job
got one), the quiet job's execs and connects made vs stored, the agent's CPU per 1,000 stored events and RSS.
A benchmark: nothing is asserted. Runs as root; its cgroups and processes are its own, removed at the end.

    .venv/bin/python bench/flood.py [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.jobs import ensure_cgroup2_mount  # noqa: E402
from lab import (  # noqa: E402
    CLI,
    free_port,
    lab_credentials,
    local_agent,
    local_collector,
    popen_in_cgroup,
    process_cpu_seconds,
    remove_cgroup_tree,
    rss_mb,
    wait_policy_acked,
)

EXEC_STORM = ("end=$(( $(date +%s) + {s} )); n=0; while [ $(date +%s) -lt $end ]; do /bin/true storm; "
              "n=$((n+1)); done; echo $n")
FORK_STORM = """
import os, time
end, n = time.time() + {s}, 0
while time.time() < end:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0); n += 1
print(n)
"""
CONNECT_LOOP = """
import socket, time
end, n = time.time() + {s}, 0
while time.time() < end:
    s = socket.socket()
    try:
        s.connect(('127.0.0.1', {port}))
    except OSError:
        pass
    s.close(); n += 1
print(n)
"""
QUIET = """
import socket, subprocess, time
end, n = time.time() + {s}, 0
while time.time() < end:
    subprocess.run(['/bin/true', 'quiet-step'])
    s = socket.socket()
    try:
        s.connect(('127.0.0.1', 40000 + n))
    except OSError:
        pass
    s.close(); n += 1
    time.sleep(0.1)
print(n)
"""


def cli(port: int, *args: str) -> dict:
    out = subprocess.run([*CLI, *args, "--collector", f"127.0.0.1:{port}", "--json"], capture_output=True,
                         text=True, cwd=ROOT, timeout=300)
    return json.loads(out.stdout) if out.stdout.strip() else {}


def stored(port: int, job: str, kind: str) -> list[dict]:
    return [e["event"] for e in cli(port, "timeline", job, "--kind", kind, "--limit", "1000000").get("events", [])]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    s = args.seconds
    base = ensure_cgroup2_mount() / f"gpuguard-bench-{uuid.uuid4().hex[:8]}"   # the cgroup2 tree, wherever it is
    noisy_job, quiet_job = "91001", "91002"
    noisy, quiet = base / "slurm/uid_0" / f"job_{noisy_job}", base / "slurm/uid_0" / f"job_{quiet_job}"
    with tempfile.TemporaryDirectory(prefix="gpuguard-flood-") as d:
        tmp = Path(d)
        lab_credentials("flood-bench")
        port = free_port()
        col = local_collector(tmp, port).start()
        ag = local_agent(tmp, port, "flood-bench", "--status-interval", "1").start()
        procs = []
        try:
            noisy.mkdir(parents=True)
            quiet.mkdir(parents=True)
            wait_policy_acked(port, "flood-bench")               # the built-in policy in force: start-up is over
            cpu0 = process_cpu_seconds(ag.proc.pid)
            start = time.monotonic()
            closed = free_port()
            procs = [popen_in_cgroup(noisy, ["/bin/sh", "-c", EXEC_STORM.format(s=int(s))], stdout=subprocess.PIPE,
                                     text=True) for _ in range(2)]
            procs.append(popen_in_cgroup(noisy, [sys.executable, "-c", FORK_STORM.format(s=s)],
                                         stdout=subprocess.PIPE, text=True))
            procs.append(popen_in_cgroup(noisy, [sys.executable, "-c", CONNECT_LOOP.format(s=s, port=closed)],
                                         stdout=subprocess.PIPE, text=True))
            spray = popen_in_cgroup(noisy, [sys.executable, "-c", CONNECT_LOOP.format(s=s, port="20000 + n % 20000")],
                                    stdout=subprocess.PIPE, text=True)
            calm = popen_in_cgroup(quiet, [sys.executable, "-c", QUIET.format(s=s)], stdout=subprocess.PIPE, text=True)
            degraded: list[float] = []

            def watch_alerts() -> None:                      # from the flood's start: when is it raised?
                while not degraded and time.monotonic() - start < s + 30:
                    if any(a["rule_id"] == "capture-degraded"
                           for a in cli(port, "alerts", "--job", noisy_job).get("alerts", [])):
                        degraded.append(time.monotonic() - start)
                    time.sleep(0.25)
            watcher = threading.Thread(target=watch_alerts, daemon=True)
            watcher.start()
            time.sleep(min(5, s / 4))
            miner = popen_in_cgroup(noisy, [sys.executable, "-c", "import time; time.sleep(30)", "-o",
                                            "stratum+tcp://pool.example:3333"])
            try:
                miner_rc = miner.wait(30)
            except subprocess.TimeoutExpired:
                miner.kill()
                miner_rc = "still running after 30 s"
            quiet_degraded = None
            counts = [int(p.communicate(s + 120)[0].split()[-1]) for p in procs]
            sprayed = int(spray.communicate(s + 120)[0].split()[-1])
            quiet_steps = int(calm.communicate(s + 120)[0].split()[-1])
            watcher.join(60)
            degraded_after = degraded[0] if degraded else None
            time.sleep(5)                                    # the spool drains to the collector
            cpu = process_cpu_seconds(ag.proc.pid) - cpu0
            rss = rss_mb(ag.proc.pid)
            storm_execs = sum(1 for e in stored(port, noisy_job, "exec") if e["exec"].get("argv", [])[-1:] == ["storm"])
            quiet_execs = sum(1 for e in stored(port, quiet_job, "exec") if "quiet-step" in e["exec"].get("argv", []))
            quiet_connects = len({e["connect"]["dport"] for e in stored(port, quiet_job, "connect")})
            quiet_degraded = any(a["rule_id"] == "capture-degraded"
                                 for a in cli(port, "alerts", "--job", quiet_job).get("alerts", []))
            hosts = cli(port, "hosts").get("hosts", [])
            lost = next((h.get("kernel_lost", {}) for h in hosts if h["host_id"] == "flood-bench"), {})
            total = cli(port, "jobs").get("jobs", [])
            events = sum(int(j.get("events", 0)) for j in total)
            losses = stored(port, noisy_job, "capture_loss")
            suppressed: dict[str, int] = {}
            for loss in losses:
                for kind, n in loss["capture_loss"].get("suppressed", {}).items():
                    suppressed[kind] = suppressed.get(kind, 0) + int(n)
            print(f"flood of {s:.0f} s in job {noisy_job}: exec storms {counts[0] + counts[1]} execs, fork storm "
                  f"{counts[2]} forks, one-port connect loop {counts[3]} connects, distinct-port spray {sprayed}")
            print(f"stratum-argv process started inside the flood: exit {miner_rc} "
                  f"({'killed at exec' if miner_rc == -9 else 'NOT killed'})")
            print(f"flooding job's storm execs stored: {storm_execs} of {counts[0] + counts[1]}")
            print(f"kernel losses (ring full) by kind: {lost or 'none'}; over the job's budget (suppressed, "
                  f"reported in {len(losses)} capture_loss records): {suppressed or 'none'}")
            print(f"capture-degraded for the flooding job: "
                  f"{f'after {degraded_after:.1f} s' if degraded_after is not None else 'NOT raised'}; "
                  f"for the quiet job: {'raised' if quiet_degraded else 'none'}")
            print(f"quiet job: {quiet_execs} of {quiet_steps} execs and {quiet_connects} of {quiet_steps} connects "
                  "stored")
            applied = [line.split("INFO", 1)[-1].strip() for line in ag.log.read_text().splitlines()
                       if "applied" in line]
            print(f"policy applications in the agent's log: {applied[-2:]}")
            print(f"agent: {cpu:.1f} CPU-s for {events} stored events ({cpu * 1e6 / max(events, 1):.0f} ms per "
                  f"1,000), RSS {rss:.0f} MB")
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            ag.stop()
            col.stop()
            remove_cgroup_tree(base)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The agent's CPU per 1,000 stored events with a live collector, for a connect mix and an exec mix (the capture
issue's goal: <= 10 ms per 1,000 for each), and its RSS.

A real collector (SQLite) and a real agent (probes, spool, RawBatch shipping) run on this host. Each mix runs in a
job cgroup of its own for --seconds: the connect mix is connects to distinct closed loopback ports at --rate per
second (each a connect event with its outcome joined in), the exec mix a shell running /bin/true as fast as it can
(an exec, a fork and an exit each). The agent's budget per job is raised so nothing is suppressed: what is
measured is the cost of events, not of counting them away. After each mix the bench waits until the collector's
event count stops growing (the spool drained), then prints the agent's CPU over the mix and the drain, the same
span of an idle agent (heartbeats, GPU and loss reports), and ms per 1,000 stored events with and without the
idle share. A benchmark: nothing is asserted. Runs as root; its cgroups and processes are its own.

    .venv/bin/python bench/agent_cpu.py [--seconds 10] [--rate 5000] [--mix connect|exec]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
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
    wait_for_text,
    wait_policy_acked,
)

CONNECTS = """
import socket, time
rate, seconds = {rate}, {seconds}
start, n = time.monotonic(), 0
while time.monotonic() - start < seconds:
    due = start + n / rate
    now = time.monotonic()
    if due > now:
        time.sleep(due - now)
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", 20000 + n % 20000))
    except OSError:
        pass
    s.close()
    n += 1
print(n)
"""
EXECS = ("end=$(( $(date +%s) + {seconds} )); n=0; while [ $(date +%s) -lt $end ]; do /bin/true x; n=$((n+1)); "
         "done; echo $n")


def stored_events(port: int, job: str) -> int:
    out = subprocess.run([*CLI, "jobs", "--collector", f"127.0.0.1:{port}", "--json"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    jobs = json.loads(out.stdout or "{}").get("jobs", [])
    return sum(int(j.get("events", 0)) for j in jobs if j.get("job", {}).get("id") == job)


def settle(port: int, job: str) -> int:
    """Wait until the job's stored count stops growing (two equal readings a second apart)."""
    last = -1
    while True:
        now = stored_events(port, job)
        if now == last:
            return now
        last = now
        time.sleep(1.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="how long each mix runs")
    ap.add_argument("--rate", type=int, default=5000, help="connects per second in the connect mix")
    ap.add_argument("--mix", choices=("connect", "exec"), action="append",
                    help="run only this mix (repeatable; default both)")
    args = ap.parse_args()
    mixes = set(args.mix or ("connect", "exec"))
    base = ensure_cgroup2_mount() / f"gpuguard-bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="gpuguard-agent-cpu-") as d:
        tmp = Path(d)
        lab_credentials("agent-cpu-bench")
        port = free_port()
        col = local_collector(tmp, port).start()
        ag = local_agent(tmp, port, "agent-cpu-bench", "--capture-budget", "1000000").start()
        try:
            wait_policy_acked(port, "agent-cpu-bench")           # the built-in policy in force: start-up is over
            # Slurm's per-user parent exists before any job on a real node. Here it appears with the first mix, and
            # the agent's first cgroup attachments load and verify its cgroup programs (~0.7 CPU-s, once per agent
            # lifetime): a start-up cost, not a cost of events
            (base / "slurm/uid_0").mkdir(parents=True)
            wait_for_text(tmp / "agent.log", f"payload_egress to {base / 'slurm'}")
            print(f"agent pid {ag.proc.pid}", flush=True)
            print(f"agent CPU per 1,000 stored events, live collector on this host ({args.seconds:.0f} s per mix)")
            rows = []
            for job_id, name, script in (("93001", "connect", [sys.executable, "-c", CONNECTS.format(rate=args.rate,
                                                                                     seconds=args.seconds)]),
                                 ("93002", "exec", ["/bin/sh", "-c", EXECS.format(seconds=int(args.seconds))])):
                if name not in mixes:
                    continue
                job = base / "slurm/uid_0" / f"job_{job_id}"
                job.mkdir(parents=True)
                cpu0, t0 = process_cpu_seconds(ag.proc.pid), time.monotonic()
                made = int(popen_in_cgroup(job, script, stdout=subprocess.PIPE, text=True).communicate(
                    args.seconds + 120)[0].split()[-1])
                events = settle(port, job_id)
                cpu, span = process_cpu_seconds(ag.proc.pid) - cpu0, time.monotonic() - t0
                rows.append((name, made, events, cpu, span))
            idle0, t0 = process_cpu_seconds(ag.proc.pid), time.monotonic()
            time.sleep(10)
            idle_per_s = (process_cpu_seconds(ag.proc.pid) - idle0) / (time.monotonic() - t0)
            for name, made, events, cpu, span in rows:
                busy = cpu - idle_per_s * span
                print(f"  {name:8} {made:>8,} made, {events:>8,} events stored in {span:5.1f} s: agent "
                      f"{cpu:5.2f} CPU-s "
                      f"= {1e6 * cpu / max(events, 1):5.1f} ms per 1,000 ({1e6 * busy / max(events, 1):5.1f} ms "
                      f"without the idle agent's {1000 * idle_per_s:.0f} ms/s)")
            print(f"  agent RSS {rss_mb(ag.proc.pid):.0f} MB")
        finally:
            ag.stop()
            col.stop()
            remove_cgroup_tree(base)
    return 0


if __name__ == "__main__":
    sys.exit(main())

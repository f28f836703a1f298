#!/usr/bin/env python3
"""The agent's CPU per 1,000 kernel records, by ring consumer: BCC's Python callback vs the C callback into
per-kind arenas with numpy decode (agent/ringcb.c, agent/batch.py).

A storm of connects to distinct closed ports (nothing to fold) and an exec storm run in a child process; this
process is the agent's capture loop (probe -> decode -> enrich, no spool or shipping), and its CPU time while it
drains the storm is what the consumer costs. Prints ms of CPU per 1,000 records for each stage. A benchmark:
nothing is asserted.

    .venv/bin/python bench/consumer.py [--connects 30000] [--execs 2000] [--reps 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.capture_loss import set_budget  # noqa: E402
from agent.runtime import Capture  # noqa: E402

SPRAY = """
import socket, sys
n = int(sys.argv[1])
for i in range(n):
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", 20000 + i % 20000))
    except OSError:
        pass
    s.close()
"""
EXECS = "for i in $(seq 1 {n}); do /bin/true gpuguard-bench; done"


def measure(consumer: str, argv: list[str], reps: int) -> tuple[float, float, int]:
    """(ms CPU per 1k records in decode, ms in decode+enrich, records) for one consumer, best of reps."""
    cap = Capture(hash_executables=False, verify_offsets=False, consumer=consumer)
    cap.start()
    set_budget(cap.probes.bpf, 0)                     # measure the consumer, not the budget
    best = None
    try:
        for _ in range(reps):
            cap.probes.drain()
            decode_cpu = total_cpu = 0.0
            records = 0
            child = subprocess.Popen(argv)
            while True:
                done = child.poll() is not None
                t0 = time.process_time()
                drained = cap.probes.poll(20)
                events = drained.events(cap.stats.decode)
                t1 = time.process_time()
                for ev in events:
                    try:
                        cap.enricher.enrich(ev)
                    except Exception:   # noqa: BLE001 - a benchmark counts, it does not stop
                        pass
                cap.enricher.connects.expired()
                t2 = time.process_time()
                decode_cpu += t1 - t0
                total_cpu += t2 - t0
                records += len(events)
                if done and not len(drained):
                    break
            per_k = (decode_cpu * 1e6 / records, total_cpu * 1e6 / records, records) if records else None
            if per_k and (best is None or per_k[1] < best[1]):          # us per record = ms per 1k records
                best = per_k
    finally:
        cap.close()
    return best or (0.0, 0.0, 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connects", type=int, default=30_000)
    ap.add_argument("--execs", type=int, default=2_000)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    workloads = {"connect mix": [sys.executable, "-c", SPRAY, str(args.connects)],
                 "exec mix": ["/bin/sh", "-c", EXECS.format(n=args.execs)]}
    print(f"{'workload':<12} {'consumer':<8} {'records':>8} {'decode ms/1k':>13} {'decode+enrich ms/1k':>20}")
    for name, argv in workloads.items():
        for consumer in ("python", "c"):
            decode_ms, total_ms, n = measure(consumer, argv, args.reps)
            print(f"{name:<12} {consumer:<8} {n:>8} {decode_ms:>13.1f} {total_ms:>20.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Collector benchmarks: ingest throughput, end-to-end latency, timeline query latency.

Prints figures and ratios to the targets; asserts nothing. Runs as root for the
end-to-end part (it starts a real agent); the rest runs anywhere.

    .venv/bin/python bench/ingest.py [--events 200000] [--store-events 1000000] [--e2e-seconds 10]
"""

from __future__ import annotations

import argparse
import os
import queue
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from collector.store.base import TimelineFilter  # noqa: E402
from collector.store.sqlite import SqliteStore  # noqa: E402
from collector.timeline import build_timeline  # noqa: E402
from gpuguard.credentials import CredentialStore, bearer  # noqa: E402
from gpuguard.v1 import collector_pb2 as cpb  # noqa: E402
from gpuguard.v1 import events_pb2 as pb  # noqa: E402
from lab import CLI, Service, free_port, lab_credentials, process_cpu_seconds  # noqa: E402


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))]


def synthetic(seq: int, job: str, ts: int) -> pb.Event:
    ev = pb.Event(seq=seq, ts_ns=ts, boot_id="bench")
    ev.job.kind, ev.job.id = "slurm", job
    p = ev.process
    proc = (seq // 40) % 5000          # a process emits bursts of events, not one each
    p.key, p.pid, p.ppid, p.comm, p.exe = f"b:{proc}:1", proc, 1, "python3", "/usr/bin/python3"
    p.argv.extend(["python3", "train.py", "--epochs", "3"])
    p.ancestors.add(pid=1, key="b:1:1", comm="slurmstepd", exe="/usr/sbin/slurmstepd")
    r = seq % 10
    if r < 6:
        ev.connect.CopyFrom(pb.Connect(family="inet", proto="tcp", daddr="10.0.0.7", dport=29500, result=0))
    elif r < 8:
        ev.exec.CopyFrom(pb.Exec(filename="/usr/bin/python3", argv=["python3", "-c", "pass"]))
    else:
        ev.gpu_open.CopyFrom(pb.GpuOpen(path="/dev/nvidia0", flags=2, result=3))
    return ev


START_NS = time.time_ns() - 3600 * 10**9   # recent: events far from the collector's clock get flagged


def bench_store_ingest(n: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        store = SqliteStore(Path(d) / "s.db")
        store.register_agent("h1", "h1", "b", 0)
        events = [synthetic(i + 1, f"{i % 100}", START_NS + i) for i in range(n)]
        start = time.process_time()
        wall = time.perf_counter()
        for i in range(0, n, 512):
            store.ingest("h1", events[i:i + 512])
        wall = time.perf_counter() - wall
        cpu = time.process_time() - start
        store.close()
    print(f"store.ingest (SQLite WAL, synchronous=FULL, 512/batch): {n / wall:,.0f} events/s wall, "
          f"{n / cpu:,.0f} events per CPU-second")
    return n / cpu


def bench_grpc_ingest(n: int) -> float:
    lab_credentials()
    with tempfile.TemporaryDirectory() as d:
        port = free_port()
        col = Service([*CLI, "collector", "--listen", f"127.0.0.1:{port}", "--store", f"{d}/c.db"],
                      Path(d) / "c.log", "collector listening on").start()
        try:
            batches = []
            for i in range(0, n, 512):
                evs = [synthetic(s + 1, f"{s % 100}", START_NS + s) for s in range(i, min(n, i + 512))]
                batches.append(cpb.AgentMessage(batch=cpb.EventBatch(events=evs)))
            out: queue.Queue = queue.Queue()
            hello = cpb.Hello(host=pb.Host(host_id="bench", hostname="bench", boot_id="b"))
            out.put(cpb.AgentMessage(hello=hello))
            channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)])
            from gpuguard.v1 import collector_pb2_grpc as cgrpc  # noqa: PLC0415

            token = CredentialStore().issue("agent", "agent-bench", "bench")
            responses = cgrpc.CollectorStub(channel).Stream(iter(out.get, None),
                                                            metadata=bearer(token))
            next(responses)
            cpu0 = process_cpu_seconds(col.proc.pid)
            start = time.perf_counter()
            window, sent, acked = 8, 0, 0
            while acked < len(batches):
                while sent < len(batches) and sent - acked < window:
                    out.put(batches[sent])
                    sent += 1
                msg = next(responses)
                if msg.HasField("ack"):
                    acked += 1
            wall = time.perf_counter() - start
            cpu = process_cpu_seconds(col.proc.pid) - cpu0
            out.put(None)
            channel.close()
        finally:
            col.stop()
    print(f"gRPC stream ingest (acked after commit, window 8 x 512): {n / wall:,.0f} events/s wall; collector "
          f"used {cpu:.2f} CPU-s -> {n / cpu:,.0f} events per collector CPU-second "
          f"(target >= 50,000: {n / cpu / 50_000:.2f}x)")
    return n / cpu


def bench_e2e_latency(seconds: float, rate: int) -> None:
    if os.geteuid() != 0:
        print("end-to-end latency: skipped (needs root for the agent)")
        return
    with tempfile.TemporaryDirectory() as d:
        port = free_port()
        host = f"bench-{uuid.uuid4().hex[:6]}"
        lab_credentials(host)
        col = Service([*CLI, "collector", "--listen", f"127.0.0.1:{port}", "--store", f"{d}/c.db"],
                      Path(d) / "c.log", "collector listening on").start()
        ag = Service([*CLI, "agent", "--collector", f"127.0.0.1:{port}", "--spool-dir", f"{d}/spool", "--state-dir",
                      f"{d}/state", "--host-id", host, "--quiet"], Path(d) / "a.log", "process table seeded").start()
        try:
            time.sleep(1.0)
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                closed = s.getsockname()[1]
            gen = (f"import socket, time\nn = {int(seconds * rate)}\nstart = time.perf_counter()\n"
                   f"for i in range(n):\n    s = socket.socket()\n    try: s.connect(('127.0.0.1', {closed}))\n"
                   f"    except OSError: pass\n    s.close()\n"
                   f"    delay = start + (i + 1) / {rate} - time.perf_counter()\n"
                   f"    if delay > 0: time.sleep(delay)\n")
            proc = subprocess.run([sys.executable, "-c", gen], check=True)
            del proc
            time.sleep(2.0)
            import sqlite3  # noqa: PLC0415

            con = sqlite3.connect(f"{d}/c.db")
            rows = con.execute("SELECT body, ingested_ns, ts_ns FROM events WHERE host_id=? AND kind='connect'",
                               (host,)).fetchall()
            lat = [(ing - ts) / 1e6 for body, ing, ts in rows if pb.Event.FromString(body).connect.dport == closed]
            con.close()
        finally:
            ag.stop()
            col.stop()
    want = int(seconds * rate)
    print(f"end-to-end latency, syscall -> stored (agent + collector on this host, {rate} connects/s for "
          f"{seconds:.0f}s): {len(lat)}/{want} events stored; p50 {pct(lat, 50):.1f} ms, p99 {pct(lat, 99):.1f} ms, "
          f"max {max(lat):.1f} ms (target p99 <= 250 ms: {pct(lat, 99) / 250:.2f} of budget)")


def bench_timeline(total: int, jobs: int = 10_000, hosts: int = 3) -> None:
    with tempfile.TemporaryDirectory() as d:
        store = SqliteStore(Path(d) / "t.db")
        template = {k: synthetic(k, "0", 0) for k in range(10)}
        bodies = {k: ev.SerializeToString() for k, ev in template.items()}
        kinds = {k: ev.WhichOneof("body") for k, ev in template.items()}
        t0 = time.perf_counter()
        base = 1_700_000_000_000_000_000
        chunk = 200_000
        store.db.execute("PRAGMA synchronous=OFF")
        for start in range(0, total, chunk):
            rows = []
            for i in range(start, min(total, start + chunk)):
                k = i % 10
                job = str(i % jobs)
                rows.append((f"h{i % hosts}", i, base + i * 1000, kinds[k], "slurm", job, i % 5000, f"b:{i % 5000}:1",
                             bodies[k], base))
            store.db.execute("BEGIN")
            store.db.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
            store.db.execute("COMMIT")
            print(f"  loading synthetic store: {min(total, start + chunk):,}/{total:,} events", file=sys.stderr,
                  end="\r", flush=True)
        load = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in Path(d).iterdir()) / 1e9
        lat = []
        for _ in range(30):
            job = str(random.randrange(jobs))
            t = time.perf_counter()
            reply = build_timeline(store, TimelineFilter(job_id=job))
            lat.append((time.perf_counter() - t) * 1000)
            assert len(reply.events) == total // jobs
        store.close()
    print(f"\ntimeline query, one job ({total // jobs} events) out of {total:,} stored events, {jobs:,} jobs, {hosts} "
          f"hosts ({size:.2f} GB, loaded in {load:.0f}s): p50 {pct(lat, 50):.1f} ms, p99 {pct(lat, 99):.1f} ms "
          f"(target <= 100 ms: {pct(lat, 99) / 100:.2f} of budget)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000, help="events for the ingest benchmarks")
    ap.add_argument("--store-events", type=int, nargs="+", default=[1_000_000],
                    help="store sizes for the timeline benchmark (e.g. 1000000 10000000)")
    ap.add_argument("--e2e-seconds", type=float, default=10)
    ap.add_argument("--e2e-rate", type=int, default=1000)
    args = ap.parse_args()
    print(f"{os.cpu_count()} CPUs; python {sys.version.split()[0]}\n")
    bench_store_ingest(args.events)
    bench_grpc_ingest(args.events)
    bench_e2e_latency(args.e2e_seconds, args.e2e_rate)
    for n in args.store_events:
        bench_timeline(n)
    return 0


if __name__ == "__main__":
    sys.exit(main())

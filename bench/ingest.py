#!/usr/bin/env python3
"""Collector benchmarks: ingest throughput, end-to-end latency, timeline query latency.

Prints figures and ratios to the targets; asserts nothing. Runs as root for the
end-to-end part (it starts a real agent); the rest runs anywhere.

    .venv/bin/python bench/ingest.py [--events 200000] [--store-events 1000000] [--e2e-seconds 10]
    .venv/bin/python bench/ingest.py --postgres [--pg-store-events 1000000]   # the PostgreSQL store
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


def bench_e2e_latency(seconds: float, rate: int, store_url: str = "") -> None:
    """syscall -> stored with a real agent and collector; store_url: a PostgreSQL store instead of SQLite."""
    if os.geteuid() != 0:
        print("end-to-end latency: skipped (needs root for the agent)")
        return
    with tempfile.TemporaryDirectory() as d:
        port = free_port()
        host = f"bench-{uuid.uuid4().hex[:6]}"
        lab_credentials(host)
        col = Service([*CLI, "collector", "--listen", f"127.0.0.1:{port}", "--store", store_url or f"{d}/c.db"],
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
            sql = "SELECT body, ingested_ns, ts_ns FROM events WHERE host_id = {m} AND kind = 'connect'"
            if store_url:
                import psycopg  # noqa: PLC0415

                with psycopg.connect(store_url) as con:
                    rows = con.execute(sql.format(m="%s"), (host,)).fetchall()
            else:
                import sqlite3  # noqa: PLC0415

                con = sqlite3.connect(f"{d}/c.db")
                rows = con.execute(sql.format(m="?"), (host,)).fetchall()
                con.close()
            lat = [(ing - ts) / 1e6 for body, ing, ts in rows
                   if pb.Event.FromString(bytes(body)).connect.dport == closed]
        finally:
            ag.stop()
            col.stop()
    want = int(seconds * rate)
    print(f"end-to-end latency, syscall -> stored ({'PostgreSQL' if store_url else 'SQLite'}; agent + collector on "
          f"this host, {rate} connects/s for "
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
            store.db.executemany("INSERT INTO events (host_id, seq, ts_ns, kind, job_kind, job_id, pid, proc_key, "
                                 "body, ingested_ns) VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
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


def postgres_cpu_seconds() -> float:
    """CPU of every postgres server process (user + system), from /proc."""
    total = 0.0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() != "postgres":
                continue
            total += process_cpu_seconds(int(pid))
        except OSError:
            continue
    return total


def bench_pg_grpc_ingest(pg, n: int, collectors: int) -> None:
    """n events per collector, one agent stream per collector, all collectors on one database."""
    lab_credentials()
    url = pg.new_database()
    with tempfile.TemporaryDirectory() as d:
        cols = []
        for c in range(collectors):
            port = free_port()
            cols.append((port, Service([*CLI, "collector", "--listen", f"127.0.0.1:{port}", "--store", url],
                                       Path(d) / f"c{c}.log", "collector listening on").start()))
        try:
            from gpuguard.v1 import collector_pb2_grpc as cgrpc  # noqa: PLC0415

            streams = []
            for c, (port, _svc) in enumerate(cols):
                host = f"bench-pg-{c}"
                batches = []
                for i in range(0, n, 512):
                    evs = [synthetic(s + 1, f"{c}-{s % 100}", START_NS + s) for s in range(i, min(n, i + 512))]
                    batches.append(cpb.AgentMessage(batch=cpb.EventBatch(events=evs)))
                out: queue.Queue = queue.Queue()
                out.put(cpb.AgentMessage(hello=cpb.Hello(host=pb.Host(host_id=host, hostname=host, boot_id="b"))))
                channel = grpc.insecure_channel(f"127.0.0.1:{port}",
                                                options=[("grpc.max_send_message_length", 64 << 20)])
                token = CredentialStore().issue("agent", f"agent-{host}", host)
                responses = cgrpc.CollectorStub(channel).Stream(iter(out.get, None), metadata=bearer(token))
                next(responses)
                streams.append({"out": out, "responses": responses, "batches": batches, "sent": 0, "acked": 0,
                                "channel": channel})
            import threading  # noqa: PLC0415

            def pump(st):
                while st["acked"] < len(st["batches"]):
                    while st["sent"] < len(st["batches"]) and st["sent"] - st["acked"] < 8:
                        st["out"].put(st["batches"][st["sent"]])
                        st["sent"] += 1
                    if next(st["responses"]).HasField("ack"):
                        st["acked"] += 1

            cpu0 = [process_cpu_seconds(svc.proc.pid) for _p, svc in cols]
            pg0 = postgres_cpu_seconds()
            start = time.perf_counter()
            threads = [threading.Thread(target=pump, args=(st,)) for st in streams]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - start
            cpu = sum(process_cpu_seconds(svc.proc.pid) - c0 for (_p, svc), c0 in zip(cols, cpu0, strict=True))
            pg_cpu = postgres_cpu_seconds() - pg0
            for st in streams:
                st["out"].put(None)
                st["channel"].close()
        finally:
            for _p, svc in cols:
                svc.stop()
    total = n * collectors
    print(f"PostgreSQL, {collectors} collector(s), one agent stream each, acked after COMMIT: "
          f"{total / wall:,.0f} events/s wall; {total / cpu:,.0f} events per collector CPU-second "
          f"(target >= 50,000: {total / cpu / 50_000:.2f}x); "
          f"{total / max(pg_cpu, 1e-9):,.0f} events per PostgreSQL CPU-second")


def bench_pg_queries(pg, total: int, jobs: int = 10_000, hosts: int = 20) -> None:
    """A store of `total` events loaded with COPY (the ingest path's own staging + partitions), then one job's
    timeline and the fleet questions, p50/p99 over 30 runs each; disk bytes per million events."""
    from collector.store.postgres import EVENT_COLUMNS, PostgresStore  # noqa: PLC0415

    store = PostgresStore(pg.new_database())
    try:
        t0 = time.perf_counter()
        now = time.time_ns()
        base = now - 3600 * 10**9
        template = {k: synthetic(k, "0", 0) for k in range(10)}
        bodies = {k: ev.SerializeToString() for k, ev in template.items()}
        kinds = {k: ev.WhichOneof("body") for k, ev in template.items()}
        with store.pool.connection() as con, con.cursor() as cur:
            with cur.copy(f"COPY events ({', '.join(EVENT_COLUMNS)}) FROM STDIN") as copy:
                for i in range(total):
                    k = i % 10
                    daddr = f"10.{(i // 10) % 200}.{(i // 2000) % 250}.{i % 7}" if kinds[k] == "connect" else None
                    exe = f"/usr/bin/tool{(i // 10) % 500}" if kinds[k] == "exec" else None
                    copy.write_row((f"h{i % hosts}", i, base + i * 1000, kinds[k], "slurm", str(i % jobs),
                                    i % 5000, f"b:{i % 5000}:1", bodies[k], now, daddr,
                                    29500 if daddr else None, exe, None))
                    if i % 200_000 == 0:
                        print(f"  loading PostgreSQL store: {i:,}/{total:,} events", file=sys.stderr, end="\r",
                              flush=True)
            con.commit()
            cur.execute("ANALYZE events")
            con.commit()
            size = int(cur.execute("SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits "
                                   "WHERE inhparent = 'events'::regclass").fetchone()[0])
        load = time.perf_counter() - t0
        print(f"\nPostgreSQL store: {total:,} events, {jobs:,} jobs, {hosts} hosts, loaded by COPY in {load:.0f}s; "
              f"{size / 1e6:,.0f} MB on disk = {size / (total / 1e6) / 1e6:,.0f} MB per million events (with indexes)")

        def timed(label, fn, check):
            lat = []
            for _ in range(30):
                t = time.perf_counter()
                out = fn()
                lat.append((time.perf_counter() - t) * 1000)
                assert check(out), label
            print(f"  {label}: p50 {pct(lat, 50):.1f} ms, p99 {pct(lat, 99):.1f} ms "
                  f"(target <= 100 ms: {pct(lat, 99) / 100:.2f} of budget)")

        timed(f"one job's timeline ({total // jobs} events)",
              lambda: build_timeline(store, TimelineFilter(job_id=str(random.randrange(jobs)))),
              lambda r: len(r.events) == total // jobs)
        timed("who connected to 10.N.0.0/16 in the last hour (limit 1000)",
              lambda: store.connections(f"10.{random.randrange(200)}.0.0/16", since_ns=base, limit=1000),
              lambda r: len(r) > 0)
        timed("which hosts ran /usr/bin/toolN (limit 1000)",
              lambda: store.executions(exe=f"/usr/bin/tool{random.randrange(500)}", limit=1000), lambda r: len(r) > 0)
        timed("alerts by rule in a window", lambda: store.alerts(rule_id="miner-binary", since_ns=base), lambda r: True)
    finally:
        store.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000, help="events for the ingest benchmarks")
    ap.add_argument("--store-events", type=int, nargs="+", default=[1_000_000],
                    help="store sizes for the timeline benchmark (e.g. 1000000 10000000)")
    ap.add_argument("--e2e-seconds", type=float, default=10)
    ap.add_argument("--e2e-rate", type=int, default=1000)
    ap.add_argument("--postgres", action="store_true",
                    help="benchmark the PostgreSQL store instead (a throwaway cluster; needs postgresql-15 and root)")
    ap.add_argument("--pg-store-events", type=int, default=1_000_000, help="events for the PostgreSQL query bench")
    args = ap.parse_args()
    print(f"{os.cpu_count()} CPUs; python {sys.version.split()[0]}\n")
    if args.postgres:
        from lab.postgres import ThrowawayPostgres  # noqa: PLC0415

        pg = ThrowawayPostgres()
        try:
            for collectors in (1, 2):
                bench_pg_grpc_ingest(pg, args.events, collectors)
            bench_e2e_latency(args.e2e_seconds, args.e2e_rate, pg.new_database())
            bench_pg_queries(pg, args.pg_store_events)
        finally:
            pg.stop()
        return 0
    bench_store_ingest(args.events)
    bench_grpc_ingest(args.events)
    bench_e2e_latency(args.e2e_seconds, args.e2e_rate)
    for n in args.store_events:
        bench_timeline(n)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The fleet on a replicated log, measured: simulated agents -> 2 collectors (--log) -> a 3-node NATS JetStream
cluster -> 1 and then 2 workers -> PostgreSQL, all on this machine.

Each simulated agent is a real stream identity (its own agent credential, its own gRPC stream, hello, acks); the
agents are multiplexed over a few simulator processes (asyncio gRPC). Each sends a realistic mix at a per-node
rate with bursts: connects of a training job (mostly to its peers), execs, exits, GPU opens, and now and then a
miner-shaped exec whose alert and kill order time the whole path. Prints, for each worker count: sustained
events/s, CPU per event of each component (collectors, NATS nodes, workers, PostgreSQL), p50/p99 exec->stored,
exec->alert and exec->kill-order (delivered on the agent's stream), and the projection to 1 M events/s.
Asserts nothing.

    .venv/bin/python bench/fleet.py [--agents 10000] [--rate 20000] [--seconds 30] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab import CLI, Service, free_port, process_cpu_seconds  # noqa: E402

MINER_ARGV = ["/tmp/.x/kworker", "-o", "stratum+tcp://pool.example:3333", "-u", "wallet"]


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))]


# -- the simulator (a child process: --sim) ---------------------------------------------------------------------
def make_event(pb, rnd: random.Random, host_i: int, job: str, seq_pid: int, miner: bool):
    ev = pb.Event(ts_ns=time.time_ns(), boot_id="sim")
    ev.job.kind, ev.job.id = "slurm", job
    p = ev.process
    if miner:
        p.pid, p.key, p.comm, p.exe = 90000 + seq_pid % 9999, f"m{host_i}:{seq_pid}", "kworker", MINER_ARGV[0]
        p.argv.extend(MINER_ARGV)
        ev.exec.CopyFrom(pb.Exec(filename=MINER_ARGV[0], argv=MINER_ARGV))
        return ev
    worker = rnd.randrange(8)                                   # 8 dataloader/trainer processes per node
    p.pid, p.key, p.comm, p.exe = 1000 + worker, f"s{host_i}:{worker}", "python3", "/usr/bin/python3"
    p.argv.extend(["python3", "train.py", "--rank", str(worker)])
    r = rnd.random()
    if r < 0.70:
        peer = f"10.{(host_i >> 8) & 255}.{host_i & 255}.{rnd.randrange(1, 9)}"
        ev.connect.CopyFrom(pb.Connect(family="inet", proto="tcp", daddr=peer, dport=29500, result=0))
    elif r < 0.85:
        tool = rnd.choice((["nvidia-smi", "-q"], ["python3", "-c", "import torch"], ["sh", "-c", "date"]))
        p.comm, p.exe = tool[0][:15], f"/usr/bin/{tool[0]}"
        del p.argv[:]
        p.argv.extend(tool)
        ev.exec.CopyFrom(pb.Exec(filename=p.exe, argv=tool))
    elif r < 0.95:
        ev.exit.CopyFrom(pb.Exit(code=0))
    else:
        ev.gpu_open.CopyFrom(pb.GpuOpen(path=f"/dev/nvidia{worker}", flags=2, result=3))
    return ev


async def simulate(spec: dict) -> dict:
    import grpc  # noqa: PLC0415

    from gpuguard import rawbatch  # noqa: PLC0415
    from gpuguard.v1 import collector_pb2 as cpb  # noqa: PLC0415
    from gpuguard.v1 import events_pb2 as pb  # noqa: PLC0415

    hosts: list[tuple[int, str, str]] = spec["hosts"]           # (index, host id, token)
    ports: list[int] = spec["ports"]
    per_node = spec["rate"] / spec["agents"]                     # events/s of an average node
    end = spec["start"] + spec["seconds"]
    channels: dict[tuple[int, int], grpc.aio.Channel] = {}
    sent = acked = miners = connected = never = 0
    kill_latency: list[float] = []
    miner_sent: dict[int, int] = {}                               # pid -> ts_ns of its exec

    def channel(i: int) -> grpc.aio.Channel:
        port = ports[(i // spec["procs"]) % len(ports)]           # a job's nodes spread over the collectors
        key = (port, i // (50 * spec["procs"]))                  # 50 streams a connection (the server allows 64)
        if key not in channels:                                  # own subchannel: one TCP connection each
            channels[key] = grpc.aio.insecure_channel(f"127.0.0.1:{port}",
                                                      options=[("grpc.use_local_subchannel_pool", 1)])
        return channels[key]

    async def agent(i: int, host: str, token: str) -> None:
        nonlocal sent, acked, miners
        out: asyncio.Queue = asyncio.Queue()

        async def requests():
            while True:
                msg = await out.get()
                if msg is None:
                    return
                yield msg

        call = channel(i).stream_stream("/gpuguard.v1.Collector/Stream",
                                        request_serializer=cpb.AgentMessage.SerializeToString,
                                        response_deserializer=cpb.CollectorMessage.FromString)(
            requests(), metadata=[("authorization", f"Bearer {token}")])
        await out.put(cpb.AgentMessage(hello=cpb.Hello(host=pb.Host(host_id=host, hostname=host, boot_id="sim"))))
        job = f"sim-{i // 8}"                                      # jobs of 8 nodes
        local = random.Random(i)
        seq, last_acked = 0, 0

        hello = asyncio.Event()

        async def read():
            nonlocal acked, last_acked
            async for msg in call:
                kind = msg.WhichOneof("msg")
                if kind == "hello":
                    hello.set()
                elif kind == "ack":
                    acked += msg.ack.seq - last_acked if msg.ack.seq > last_acked else 0
                    last_acked = max(last_acked, msg.ack.seq)
                elif kind == "kill":
                    ts = miner_sent.pop(msg.kill.pid, None)
                    if ts:
                        kill_latency.append((time.time_ns() - ts) / 1e9)
                    await out.put(cpb.AgentMessage(kill_ack=cpb.KillAck(order_id=msg.kill.order_id, executed=True)))

        reader = asyncio.create_task(read())
        nonlocal connected, never
        try:                                                       # connected: the stream is open and greeted
            await asyncio.wait_for(hello.wait(), timeout=max(1.0, end - time.time()))
        except TimeoutError:
            never += 1                                             # not greeted before the run ended
            await out.put(None)
            reader.cancel()
            return
        connected += 1
        await asyncio.sleep(max(0.0, spec["start"] - time.time()) + local.random() * spec["interval"])
        burst_until = 0.0
        while time.time() < end:
            now = time.time()
            if now > burst_until and local.random() < 0.002:       # now and then a node bursts 10x for 3 s
                burst_until = now + 3
            rate = per_node * (10 if now < burst_until else 1)
            n = int(rate * spec["interval"]) + (1 if local.random() < (rate * spec["interval"]) % 1 else 0)
            events = []
            for _ in range(n):
                seq += 1
                ev = make_event(pb, local, i, job, seq, miner=False)
                ev.seq = seq
                events.append(ev)
            if local.random() < spec["miner_p"]:
                seq += 1
                ev = make_event(pb, local, i, job, seq, miner=True)
                ev.seq = seq
                miner_sent[ev.process.pid] = ev.ts_ns
                events.append(ev)
                miners += 1
            if events:
                sent += len(events)
                if spec.get("legacy"):                             # an older agent: EventBatch
                    await out.put(cpb.AgentMessage(batch=cpb.EventBatch(events=events)))
                else:                                              # today's agent: its spooled bytes as they are
                    await out.put(cpb.AgentMessage(raw=rawbatch.from_events(events)))
            await asyncio.sleep(spec["interval"])
        deadline = time.time() + 20
        while last_acked < seq and time.time() < deadline:
            await asyncio.sleep(0.1)
        await out.put(None)
        reader.cancel()

    async def count_connected_at_start() -> None:
        await asyncio.sleep(max(0.0, spec["start"] - time.time()))
        result["connected_at_start"] = connected

    result: dict = {}
    counter = asyncio.create_task(count_connected_at_start())
    done = await asyncio.gather(*(agent(i, h, t) for i, h, t in hosts), return_exceptions=True)
    await counter
    failed = [repr(x)[:300] for x in done if isinstance(x, BaseException)]
    for ch in channels.values():
        await ch.close()
    return {"sent": sent, "acked": acked, "miners": miners, "kill_latency": kill_latency, "failed": len(failed),
            "first_failure": failed[0] if failed else "", "connected_at_start": result.get("connected_at_start", 0),
            "never_connected": never}


# -- the orchestra -----------------------------------------------------------------------------------------------
def start_fleet(tmp: Path, workers: int, pg_url: str, nats_urls: str, partitions: int) -> dict:
    cfg = tmp / "collector.toml"
    cfg.write_text("[collector]\nmax_streams = 20000\n")
    cols, ports = [], []
    for name in ("c1", "c2"):
        (tmp / name).mkdir(exist_ok=True)
        port = free_port()
        cols.append(Service([*CLI, "collector", "--config", str(cfg), "--listen", f"127.0.0.1:{port}", "--store",
                             pg_url, "--log", nats_urls, "--log-partitions", str(partitions)],
                            tmp / name / "collector.log", "collector listening on").start())
        ports.append(port)
    ws = []
    for i in range(workers):
        name = f"w{i + 1}"
        ws.append(Service([*CLI, "worker", "--log", nats_urls, "--store", pg_url, "--partitions", str(partitions),
                           "--name", name, "--alert-jsonl", str(tmp / f"alerts-{name}.jsonl")],
                          tmp / f"{name}.log", f"worker {name} started").start())
    return {"collectors": cols, "ports": ports, "workers": ws}


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += process_cpu_seconds(pid)
        except OSError:
            pass
    return total


def postgres_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-u", "postgres", "postgres"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def run_round(args, workers: int, tmp: Path) -> dict:
    from gpuguard.credentials import CredentialStore  # noqa: PLC0415
    from lab.nats import ThrowawayNats  # noqa: PLC0415

    nats = ThrowawayNats(3)
    pg_url = args.pg.new_database()
    fleet = start_fleet(tmp, workers, pg_url, nats.urls, args.partitions)
    try:
        hosts = [f"sim-{workers}w-{i:05d}" for i in range(args.agents)]
        print(f"  issuing {len(hosts):,} agent credentials ...", flush=True)
        tokens = CredentialStore().issue_agents(hosts)
        start = time.time() + 3 + args.agents / args.hello_rate    # the streams open and are greeted first
        specs = []
        for k in range(args.sim_procs):
            mine = [(i, h, tokens[h]) for i, h in enumerate(hosts) if i % args.sim_procs == k]
            specs.append({"hosts": mine, "ports": fleet["ports"], "rate": args.rate, "agents": args.agents,
                          "seconds": args.seconds, "start": start, "interval": args.interval, "seed": k,
                          "procs": args.sim_procs, "miner_p": args.miners_per_s * args.interval / args.agents,
                          "legacy": args.legacy_batches})
        sims = []
        for spec in specs:
            f = tmp / f"sim-{len(sims)}.json"
            f.write_text(json.dumps(spec))
            sims.append(subprocess.Popen([sys.executable, __file__, "--sim", str(f)], stdout=subprocess.PIPE,
                                         text=True, cwd=ROOT))
        components = {"collectors": [s.proc.pid for s in fleet["collectors"]],
                      "nats": [n.proc.pid for n in nats.nodes], "workers": [s.proc.pid for s in fleet["workers"]]}
        time.sleep(max(0.0, start - time.time()))
        cpu0 = {k: cpu_of(v) for k, v in components.items()}
        pg0 = {pid: cpu_of([pid]) for pid in postgres_pids()}
        t0 = time.time()
        print(f"  {args.agents:,} agents streaming for {args.seconds} s ...", flush=True)
        results = []
        try:
            for p in sims:
                out, _ = p.communicate(timeout=args.seconds + 120)
                results.append(json.loads(out.strip().splitlines()[-1]))
        finally:
            for p in sims:                                   # ours, by PID
                if p.poll() is None:
                    p.kill()
                    p.wait(10)
        sent = sum(r["sent"] for r in results)
        print(f"  {sum(r['connected_at_start'] for r in results):,} of {args.agents:,} agents connected when the "
              f"clock started, {sum(r['never_connected'] for r in results):,} never greeted before the run ended")
        failed = sum(r["failed"] for r in results)
        if failed:
            first = next(r["first_failure"] for r in results if r["failed"])
            print(f"  {failed} simulated agents failed; first: {first}")
        # stored: wait for the workers to catch up (bounded), then read the latencies
        import psycopg  # noqa: PLC0415

        deadline = time.time() + 120
        stored = 0
        with psycopg.connect(pg_url) as con:
            while time.time() < deadline:
                stored = con.execute("SELECT COUNT(*) FROM events WHERE host_id LIKE 'sim-%'").fetchone()[0]
                if stored >= sent:
                    break
                time.sleep(0.5)
            drained = time.time()
            cpu1 = {k: cpu_of(v) for k, v in components.items()}
            pg1 = {pid: cpu_of([pid]) for pid in postgres_pids()}     # backends started meanwhile count whole
            cpu0["postgres"], cpu1["postgres"] = sum(pg0.get(p, 0.0) for p in pg1), sum(pg1.values())
            lat = [r[0] / 1e9 for r in con.execute(
                "SELECT ingested_ns - ts_ns FROM events WHERE host_id LIKE 'sim-%' AND kind = 'exec' "
                "ORDER BY random() LIMIT 20000").fetchall()]
            alert_rows = con.execute("SELECT COUNT(*) FROM alerts WHERE rule_id = 'miner-stratum-url'").fetchone()[0]
        alert_lat = []
        for f in tmp.glob("alerts-w*.jsonl"):
            for line in f.read_text().splitlines():
                a = json.loads(line)
                if a.get("rule_id") == "miner-stratum-url" and a.get("published_ns"):
                    alert_lat.append((int(a["published_ns"]) - int(a["ts_ns"])) / 1e9)
        kill_lat = [x for r in results for x in r["kill_latency"]]
        wall = drained - t0
        cpu = {k: cpu1[k] - cpu0[k] for k in cpu1}
        for s in fleet["workers"]:
            s.stop()                                   # its last line says the CPU of each phase
        phases = [line.split("CPU: ", 1)[1] for s in fleet["workers"]
                  for line in s.log.read_text(errors="replace").splitlines() if "CPU: decode" in line]
        return {"phases": phases, "workers": workers, "sent": sent, "acked": sum(r["acked"] for r in results),
                "stored": stored,
                "wall": wall, "offered_s": args.seconds, "cpu": cpu, "stored_lat": lat, "alert_lat": alert_lat,
                "kill_lat": kill_lat, "miners": sum(r["miners"] for r in results), "alerts": alert_rows}
    finally:
        for s in (*fleet["collectors"], *fleet["workers"]):
            s.stop()
        nats.stop()


def report(r: dict) -> None:
    ev_s = r["stored"] / r["wall"]
    print(f"\n== {r['workers']} worker(s): {r['sent']:,} events sent, {r['acked']:,} acked, {r['stored']:,} stored "
          f"in {r['wall']:.1f} s (offered over {r['offered_s']} s) = {ev_s:,.0f} events/s sustained")
    for name, secs in r["cpu"].items():
        per = secs / max(1, r["stored"]) * 1e6
        rate = r["stored"] / secs if secs else float("inf")
        print(f"   {name:10s} {secs:7.1f} CPU-s  {per:6.1f} us/event  {rate:>10,.0f} events per CPU-second")
    def line(what: str, values: list[float], note: str) -> None:
        print(f"   {what:17s} p50 {pct(values, 50) * 1e3:7.0f} ms  p99 {pct(values, 99) * 1e3:7.0f} ms  ({note})")

    line("exec->stored", r["stored_lat"], f"{len(r['stored_lat']):,} execs")
    line("exec->alert", r["alert_lat"], f"{len(r['alert_lat'])} miner execs alerted of {r['miners']}; "
         f"{r['alerts']} alert rows")
    line("exec->kill order", r["kill_lat"], f"{len(r['kill_lat'])} delivered on the agents' streams")
    for phase in r["phases"]:
        print(f"   worker phases: {phase}")
    target = 1_000_000
    print("   projection to 1 M events/s at these per-event costs (cores, rounded up):")
    for name, secs in r["cpu"].items():
        cores = target * secs / max(1, r["stored"])
        print(f"     {name:10s} {cores:6.1f} cores")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=20_000, help="events/s offered by the whole fleet (default 20k)")
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--interval", type=float, default=1.0, help="each agent ships a batch this often (s)")
    ap.add_argument("--workers", default="1,2", help="worker counts to run, one round each")
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--sim-procs", type=int, default=4)
    ap.add_argument("--legacy-batches", action="store_true",
                    help="agents send EventBatch (older agents) instead of RawBatch (the collector decodes each event)")
    ap.add_argument("--miners-per-s", type=float, default=2.0, help="miner-shaped execs per second, fleet-wide")
    ap.add_argument("--hello-rate", type=float, default=150.0,
                    help="streams the collectors greet per second: the connect phase before the clock starts")
    ap.add_argument("--keep", metavar="DIR", help="keep the components' logs under DIR")
    ap.add_argument("--sim", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.sim:
        spec = json.loads(Path(args.sim).read_text())
        print(json.dumps(asyncio.run(simulate(spec))))
        return 0
    from lab import lab_credentials  # noqa: PLC0415
    from lab.postgres import ThrowawayPostgres  # noqa: PLC0415

    lab_credentials()
    args.pg = ThrowawayPostgres()
    print(f"fleet bench: {args.agents:,} agents, {args.rate:,.0f} events/s offered, {args.seconds} s, 2 collectors, "
          f"3 NATS nodes (R3), {args.partitions} partitions, workers {args.workers}, agents send "
          f"{'EventBatch (older agents)' if args.legacy_batches else 'RawBatch'}; {os.cpu_count()} CPUs here")
    try:
        rounds = []
        for w in [int(x) for x in args.workers.split(",")]:
            with tempfile.TemporaryDirectory(prefix="gpuguard-fleet-") as d:
                where = Path(args.keep) / f"{w}-workers" if args.keep else Path(d)
                where.mkdir(parents=True, exist_ok=True)
                print(f"- round with {w} worker(s)", flush=True)
                rounds.append(run_round(args, w, where))
                report(rounds[-1])
        if len(rounds) > 1:
            a, b = rounds[0], rounds[-1]
            print(f"\nworkers {a['workers']} -> {b['workers']}: worker CPU per event "
                  f"{a['cpu']['workers'] / max(1, a['stored']) * 1e6:.1f} -> "
                  f"{b['cpu']['workers'] / max(1, b['stored']) * 1e6:.1f} us; sustained "
                  f"{a['stored'] / a['wall']:,.0f} -> {b['stored'] / b['wall']:,.0f} events/s")
    finally:
        args.pg.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

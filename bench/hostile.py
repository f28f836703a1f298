#!/usr/bin/env python3
"""The collector under hostile load: what each attack from the trust-boundary review costs it now.

For each attack, prints the collector process's resident memory before and after, how long it took,
and whether a good agent was still acked promptly afterwards. Asserts nothing.

    .venv/bin/python bench/hostile.py
"""

from __future__ import annotations

import os
import queue
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from gpuguard.credentials import CredentialStore, bearer, find_token  # noqa: E402
from gpuguard.v1 import collector_pb2 as cpb  # noqa: E402
from gpuguard.v1 import collector_pb2_grpc as cgrpc  # noqa: E402
from gpuguard.v1 import events_pb2 as pb  # noqa: E402
from lab import CLI, Service, free_port, lab_credentials, rss_mb  # noqa: E402

STREAM = "/gpuguard.v1.Collector/Stream"


def open_stream(ch, token: str):
    out: queue.Queue = queue.Queue()
    call = ch.stream_stream(STREAM, request_serializer=None, response_deserializer=cpb.CollectorMessage.FromString)
    responses = call(iter(out.get, None), metadata=bearer(token))
    return out, responses


def good_agent_ack_ms(port: int, host: str) -> float:
    token = CredentialStore().issue("agent", f"agent-{host}", host)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        out, responses = open_stream(ch, token)
        start = time.perf_counter()
        out.put(cpb.AgentMessage(hello=cpb.Hello(host=pb.Host(host_id=host))).SerializeToString())
        seq = next(responses).hello.stored_through_seq + 1
        out.put(cpb.AgentMessage(batch=cpb.EventBatch(events=[pb.Event(seq=seq, ts_ns=time.time_ns(),
                                                                           exit=pb.Exit())])).SerializeToString())
        for msg in responses:
            if msg.HasField("ack"):
                break
        out.put(None)
        return (time.perf_counter() - start) * 1000


def attack_unauthenticated_streams(port: int, n: int = 500) -> str:
    """Streams with no credential that send and never read: refused before anything is read."""
    channels, refused = [], 0
    for _ in range(n):
        ch = grpc.insecure_channel(f"127.0.0.1:{port}")
        out, responses = open_stream(ch, "")
        for _ in range(20):
            out.put(b"\x0a\x00" * 5000)
        channels.append((ch, out, responses))
    for _ch, _out, responses in channels:
        try:
            next(responses)
        except grpc.RpcError as exc:
            refused += exc.code() == grpc.StatusCode.UNAUTHENTICATED
    for ch, out, _r in channels:
        out.put(None)
        ch.close()
    return f"{refused}/{n} refused UNAUTHENTICATED"


def ship_batches(port: int, host: str, batches: list[list[pb.Event]]) -> int:
    """As an agent of host (its own credential): hello, send every batch without waiting, count the acks."""
    token = CredentialStore().issue("agent", f"agent-{host}", host)
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        out, responses = open_stream(ch, token)
        out.put(cpb.AgentMessage(hello=cpb.Hello(host=pb.Host(host_id=host))).SerializeToString())
        next(responses)
        for events in batches:
            out.put(cpb.AgentMessage(batch=cpb.EventBatch(events=events)).SerializeToString())
        acks = 0
        for msg in responses:
            acks += msg.HasField("ack")
            if acks == len(batches):
                break
        out.put(None)
    return acks


def attack_huge_argv(port: int, n: int = 100) -> str:
    """An agent (valid credential) sends 112 KB argv crafted against backtracking regexes."""
    argv = ["bash", "-c", "socket " * 16_000 + "x"]
    batches = []
    for i in range(n):
        ev = pb.Event(seq=i + 1, ts_ns=time.time_ns(), exec=pb.Exec(filename="/bin/bash", argv=argv))
        ev.job.kind, ev.job.id = "slurm", "1"
        batches.append([ev])
    return f"{ship_batches(port, 'argv', batches)}/{n} batches acked"


def attack_connect_storm(port: int, n: int = 100_000) -> str:
    """100k connects to a port on the pool list from 50 processes of 20 jobs."""
    batches = []
    for start in range(0, n, 1000):
        evs = []
        for i in range(start, start + 1000):
            ev = pb.Event(seq=i + 1, ts_ns=time.time_ns(), connect=pb.Connect(daddr="203.0.113.9", dport=3333,
                                                                               proto="tcp"))
            ev.process.pid, ev.process.key, ev.job.kind, ev.job.id = i % 50, f"k{i % 50}", "slurm", str(i % 20)
            evs.append(ev)
        batches.append(evs)
    return f"{ship_batches(port, 'storm', batches)}/{len(batches)} batches acked"


def attack_alias_bomb(port: int) -> str:
    bomb = "lists:\n  a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"  {chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(9))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        reply = cgrpc.QueryStub(ch).ApplyPolicy(cpb.ApplyPolicyRequest(rules_yaml=bomb), timeout=30,
                                                metadata=bearer(find_token(role="admin")))
    return f"{len(bomb)}-byte bomb -> {len(reply.error)}-byte error: {reply.error[:80]!r}"


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def attack_long_argv_job(port: int, http_port: int, n: int = 2_000) -> str:
    """A job of 2,000 execs with 16 KiB command lines (32 MB of argv), then the worst single request for it: the
    page API asking for every event, and gRPC Timeline with the largest budget. Both come back in bounded pages."""
    import urllib.request  # noqa: PLC0415

    arg = "A" * 16_384
    batches, evs = [], []
    for i in range(1, n + 1):
        ev = pb.Event(seq=i, ts_ns=time.time_ns(), exec=pb.Exec(filename="/bin/x", argv=["/bin/x", arg, str(i)]))
        ev.process.argv.extend(ev.exec.argv)
        ev.process.key, ev.job.kind, ev.job.id = f"k{i}", "slurm", "longargv"
        evs.append(ev)
        if len(evs) == 200:
            batches.append(evs)
            evs = []
    ship_batches(port, "longargv", batches)
    token = find_token(role="admin")
    req = urllib.request.Request(f"http://127.0.0.1:{http_port}/api/timeline?job=longargv&limit=20000",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=120) as resp:        # noqa: S310 - our own collector
        page = len(resp.read())
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 16 << 20)]) as ch:
        reply = cgrpc.QueryStub(ch).Timeline(cpb.TimelineRequest(job_id="longargv", limit=100_000,
                                                                  max_bytes=1 << 30), timeout=120,
                                             metadata=bearer(token))
    return (f"page API {page / 1e6:.1f} MB, gRPC {reply.ByteSize() / 1e6:.1f} MB ({len(reply.events)} of {n} "
            f"events, truncated={reply.truncated})")


def attack_idle_http(http_port: int, pid: int, n: int = 1_000) -> str:
    import socket  # noqa: PLC0415

    before = threads_of(pid)
    socks = []
    for _ in range(n):
        try:
            socks.append(socket.create_connection(("127.0.0.1", http_port), timeout=5))
        except OSError:
            break
    time.sleep(1)                                                 # a measurement, not an assertion
    during = threads_of(pid)
    for sk in socks:
        sk.close()
    return f"{len(socks)} idle connections open: collector threads {before} -> {during}"


def stalled_receivers():
    """A TCP syslog receiver and a webhook that accept and never read."""
    import socket  # noqa: PLC0415

    held = []
    servers = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    for srv in servers:
        import threading  # noqa: PLC0415

        def accept(srv=srv):
            while True:
                try:
                    held.append(srv.accept())
                except OSError:
                    return
        threading.Thread(target=accept, daemon=True).start()
    return servers, held


def attack_alert_flood(port: int, jsonl: Path, n: int = 3_000) -> str:
    """3,000 kill-worthy execs (a miner's argv shape: a kill ordered from the collector) while the syslog and
    webhook receivers never read: alerts per second into the live JSONL output and kill orders received."""
    token = CredentialStore().issue("agent", "agent-flood", "flood")
    orders = 0
    start = time.perf_counter()
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        out, responses = open_stream(ch, token)
        out.put(cpb.AgentMessage(hello=cpb.Hello(host=pb.Host(host_id="flood"))).SerializeToString())
        next(responses)
        evs = []
        for i in range(1, n + 1):
            ev = pb.Event(seq=i, ts_ns=time.time_ns(), exec=pb.Exec(filename="/opt/k", argv=[
                "/opt/k", "--donate-level", "1", "-a", "rx/0"]))
            ev.process.pid, ev.process.key, ev.process.comm = 1000 + i, f"f{i}", "k"
            ev.job.kind, ev.job.id = "slurm", f"flood{i % 50}"
            evs.append(ev)
        for k in range(0, n, 500):
            out.put(cpb.AgentMessage(batch=cpb.EventBatch(events=evs[k:k + 500])).SerializeToString())
        deadline = time.monotonic() + 120
        for msg in responses:
            orders += msg.HasField("kill")
            if orders >= n or time.monotonic() > deadline:
                break
        orders_s = time.perf_counter() - start
        out.put(None)
    while time.monotonic() < deadline:
        lines = jsonl.read_text().count("\n") if jsonl.exists() else 0
        if lines >= n:
            break
        time.sleep(0.1)
    took = time.perf_counter() - start
    return (f"{orders} kill orders in {orders_s:.1f}s ({orders / orders_s:.0f}/s); JSONL {lines} alerts "
            f"({lines / took:.0f}/s) beside stalled syslog + webhook")


def revoke_to_close_ms(port: int) -> float:
    token = CredentialStore().issue("agent", "agent-revokee", "revokee")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        out, responses = open_stream(ch, token)
        out.put(cpb.AgentMessage(hello=cpb.Hello(host=pb.Host(host_id="revokee"))).SerializeToString())
        next(responses)
        start = time.perf_counter()
        CredentialStore().revoke("agent-revokee")
        try:
            for _msg in responses:
                pass
        except grpc.RpcError:
            pass
        out.put(None)
        return (time.perf_counter() - start) * 1000


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="gpuguard-hostile-") as d:
        os.environ["GPUGUARD_AUTH_DIR"] = str(Path(d) / "auth")
        lab_credentials()
        port, http_port = free_port(), free_port()
        receivers, _held = stalled_receivers()
        syslog, webhook = (r.getsockname()[1] for r in receivers)
        jsonl = Path(d) / "alerts.jsonl"
        col = Service([*CLI, "collector", "--listen", f"127.0.0.1:{port}", "--store", f"{d}/c.db",
                       "--http", f"127.0.0.1:{http_port}", "--alert-jsonl", str(jsonl),
                       "--alert-syslog", f"tcp://127.0.0.1:{syslog}", "--alert-webhook", f"http://127.0.0.1:{webhook}/"],
                      Path(d) / "c.log", "collector listening on").start()
        try:
            print(f"{'attack':<40} {'RSS before':>10} {'RSS after':>10} {'took':>8}  good agent acked in  result")
            for name, attack in (("500 unauthenticated, never reading", attack_unauthenticated_streams),
                                 ("100 x 112 KB hostile argv", attack_huge_argv),
                                 ("100k pool-port connects", attack_connect_storm),
                                 ("YAML alias bomb (admin)", attack_alias_bomb),
                                 ("2,000 x 16 KiB argv job, worst read", lambda p: attack_long_argv_job(p, http_port)),
                                 ("1,000 idle HTTP connections", lambda _p: attack_idle_http(http_port, col.proc.pid)),
                                 ("3,000 kill execs, 2 stalled outputs", lambda p: attack_alert_flood(p, jsonl))):
                before = rss_mb(col.proc.pid)
                start = time.perf_counter()
                result = attack(port)
                took = time.perf_counter() - start
                after = rss_mb(col.proc.pid)
                ack_ms = good_agent_ack_ms(port, f"good-{len(name)}-{int(took * 1000)}")
                print(f"{name:<40} {before:>8.0f}MB {after:>8.0f}MB {took:>7.2f}s  {ack_ms:>8.1f} ms          {result}")
            print(f"revoke -> open stream closed: {revoke_to_close_ms(port):.0f} ms")
            log_text = (Path(d) / "c.log").read_text(errors="replace")
            print(f"alert-output-stalled raised: {'alert output' in log_text and 'delivered nothing' in log_text}")
            tracebacks = log_text.count("Traceback")
            print(f"collector log: {tracebacks} tracebacks; collector alive: {col.proc.poll() is None}")
        finally:
            col.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

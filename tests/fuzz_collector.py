"""Fuzz the collector's stream and query services, per role, and check it survives.

Runs a real collector process, then sends random and mutated messages: random
bytes, bit-flipped and truncated valid messages, huge and deeply nested
fields, edge sequence numbers, every query with hostile arguments, each under
no credential and under the agent, reader and admin roles. Afterwards it
checks: the process is alive, its log has no traceback, its memory stayed
bounded, a good agent and a good reader are still served, and the store
passes SQLite's integrity check.

    python -m tests.fuzz_collector --cases 2000 --seed 7      (``make fuzz``)
"""

from __future__ import annotations

import argparse
import os
import queue
import random
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from gpuguard import rawbatch
from gpuguard.credentials import CredentialStore, bearer, find_token
from gpuguard.v1 import collector_pb2 as cpb
from gpuguard.v1 import collector_pb2_grpc as cgrpc
from gpuguard.v1 import events_pb2 as pb
from lab import CLI, Service, free_port, rss_mb

STREAM = "/gpuguard.v1.Collector/Stream"
EDGE_SEQS = [0, 1, 2, (1 << 31) - 1, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]
QUERIES = {
    "ListJobs": cpb.ListJobsRequest, "Timeline": cpb.TimelineRequest, "ProcessTree": cpb.TreeRequest,
    "ListAlerts": cpb.AlertsRequest, "GetPolicy": cpb.PolicyRequest, "ApplyPolicy": cpb.ApplyPolicyRequest,
    "ListHosts": cpb.HostsRequest, "ListAudit": cpb.AuditRequest,
}


@dataclass
class FuzzReport:
    cases: int = 0
    stream_cases: int = 0
    query_cases: int = 0
    codes: dict = field(default_factory=dict)
    rss_before_mb: float = 0.0
    rss_after_mb: float = 0.0
    crashes: int = 0
    tracebacks: int = 0
    integrity: str = ""


def hostile_text(rng: random.Random) -> str:
    return rng.choice([
        "", "\x1b[31m\n\r", "A" * rng.randint(1, 300_000), "(" * 5000 + "a" + ")" * 5000, "\ufffd\u202e" * 100,
        "*" * 1000, "rules:\n  - &a [*a]\n", "lists: {a: &a [1,2], b: [*a, *a, *a]}\n", "%" * 100,
        "".join(chr(rng.randint(1, 0xD7FF)) for _ in range(rng.randint(1, 200))),
    ])


def valid_event(rng: random.Random, seq: int) -> pb.Event:
    ev = pb.Event(seq=seq, ts_ns=rng.choice([0, time.time_ns(), (1 << 63) - 1, -(1 << 63)]))
    kind = rng.choice(["exec", "connect", "gpu_open", "exit", "status", "gap", "enforcement"])
    text = hostile_text(rng)[:20_000]
    if kind == "exec":
        ev.exec.filename, ev.exec.argv[:] = text, [text] * rng.randint(0, 50)
    elif kind == "connect":
        ev.connect.daddr, ev.connect.dport = rng.choice(["10.0.0.1", "::1", text, "999.1.1.1"]), rng.randint(0, 70000)
    elif kind == "gpu_open":
        ev.gpu_open.path = text
    elif kind == "exit":
        ev.exit.code = rng.randint(-(1 << 31), (1 << 31) - 1)
    elif kind == "status":
        ev.status.policy_version = rng.randint(0, 1 << 63)
        ev.status.kernel_lost[text[:100]] = rng.randint(0, 1 << 63)
    elif kind == "gap":
        ev.gap.from_seq, ev.gap.to_seq = rng.choice(EDGE_SEQS), rng.choice(EDGE_SEQS)
    else:
        ev.enforcement.rule_id, ev.enforcement.action = text[:1000], rng.choice(["kill_exec", "kill", text[:50]])
    ev.process.comm, ev.process.key, ev.process.pid = text[:64], text[:200], rng.randint(-5, 1 << 30)
    ev.process.ancestors.add(comm=text[:50], argv=[text[:1000]] * rng.randint(0, 20))
    ev.job.kind, ev.job.id = rng.choice(["slurm", "k8s", text[:20]]), rng.choice(["1", text[:500]])
    return ev


def mutate(rng: random.Random, raw: bytes) -> bytes:
    data = bytearray(raw)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(4)
        if op == 0 and data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif op == 1 and data:
            del data[rng.randrange(len(data)):]
        elif op == 2:
            data[rng.randrange(len(data) + 1):0] = rng.randbytes(rng.randint(1, 64))
        else:
            data += b"\x0a" * rng.randint(1, 200) + b"\x80" * rng.randint(1, 20)   # nested lengths
    return bytes(data)


def raw_batch_message(rng: random.Random) -> bytes:
    start = rng.choice(EDGE_SEQS[1:5])
    raw = rawbatch.from_events([valid_event(rng, min(start + i, (1 << 64) - 1)) for i in range(rng.randint(1, 20))])
    bend = rng.random()
    if bend < 0.15:
        column = rng.choice([raw.seqs, raw.ends, raw.kinds, raw.jobs])
        column[rng.randrange(len(column))] = rng.choice([0, 1, 255, (1 << 32) - 1])
    elif bend < 0.25:
        rng.choice([raw.seqs, raw.ends, raw.kinds, raw.jobs]).pop()
    elif bend < 0.35:
        raw.frames = mutate(rng, raw.frames)
    elif bend < 0.4:
        raw.job_ids.append(hostile_text(rng)[:5000])
        raw.jobs[0] = len(raw.job_ids) - 1
    message = cpb.AgentMessage(raw=raw).SerializeToString()
    return message if rng.random() < 0.9 else mutate(rng, message)


def stream_messages(rng: random.Random, host: str) -> list[bytes]:
    host_id = rng.choice([host, host, "other", hostile_text(rng)[:300]])
    hello = cpb.AgentMessage(hello=cpb.Hello(host=pb.Host(host_id=host_id, hostname=hostile_text(rng)[:200]),
                                             heartbeat_s=rng.choice([0, 1e308, -1, 5]),
                                             agent_started_ns=rng.randint(-(1 << 63), (1 << 63) - 1)))
    msgs = [hello.SerializeToString()] if rng.random() < 0.8 else []
    for _ in range(rng.randint(1, 6)):
        choice = rng.random()
        if choice < 0.25:
            start = rng.choice(EDGE_SEQS[1:5])
            n = rng.randint(1, 20)
            batch = cpb.EventBatch(events=[valid_event(rng, min(start + i, (1 << 64) - 1)) for i in range(n)])
            raw = cpb.AgentMessage(batch=batch).SerializeToString()
            msgs.append(raw if rng.random() < 0.6 else mutate(rng, raw))
        elif choice < 0.4:                                   # today's agents: RawBatch, its columns or bytes bent
            msgs.append(raw_batch_message(rng))
        elif choice < 0.6:
            msgs.append(rng.randbytes(rng.randint(0, 2000)))
        elif choice < 0.7:
            msgs.append(cpb.AgentMessage(policy_ack=cpb.PolicyAck(version=rng.choice(EDGE_SEQS),
                                                                  error=hostile_text(rng)[:5000])).SerializeToString())
        elif choice < 0.8:
            msgs.append(b"\x12" + b"\xff" * 9 + b"\x01")                    # a length that cannot be
        else:
            msgs.append(mutate(rng, hello.SerializeToString()))
    return msgs


def run_stream_case(port: int, rng: random.Random, token: str, host: str, report: FuzzReport) -> None:
    out: queue.Queue = queue.Queue()
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 32 << 20)]) as ch:
        call = ch.stream_stream(STREAM, request_serializer=None, response_deserializer=None)
        responses = call(iter(out.get, None), metadata=bearer(token),
                         timeout=5)
        for raw in stream_messages(rng, host):
            out.put(raw)
        out.put(None)
        try:
            for _ in responses:
                pass
            code = "OK"
        except grpc.RpcError as exc:
            code = exc.code().name
    report.codes[code] = report.codes.get(code, 0) + 1


def run_query_case(port: int, rng: random.Random, token: str, report: FuzzReport) -> None:
    name = rng.choice(list(QUERIES))
    request = QUERIES[name]()
    for f in request.DESCRIPTOR.fields:
        if f.type == f.TYPE_STRING:
            value = hostile_text(rng)[:100_000]
            if f.is_repeated:
                getattr(request, f.name).extend([value[:100]] * rng.randint(0, 50))
            else:
                setattr(request, f.name, value)
        elif f.type in (f.TYPE_INT64, f.TYPE_UINT32) and not f.is_repeated:
            lo, hi = (-(1 << 63), (1 << 63) - 1) if f.type == f.TYPE_INT64 else (0, (1 << 32) - 1)
            setattr(request, f.name, rng.choice([lo, hi, 0, 1]))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = cgrpc.QueryStub(ch)
        try:
            getattr(stub, name)(request, timeout=10, metadata=bearer(token))
            code = "OK"
        except grpc.RpcError as exc:
            code = exc.code().name
    report.codes[f"{name}:{code}"] = report.codes.get(f"{name}:{code}", 0) + 1


def good_agent_and_reader_served(port: int, host: str, token: str, reader: str) -> bool:
    out: queue.Queue = queue.Queue()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        call = ch.stream_stream(STREAM, request_serializer=None, response_deserializer=cpb.CollectorMessage.FromString)
        responses = call(iter(out.get, None), metadata=bearer(token), timeout=20)
        out.put(cpb.AgentMessage(hello=cpb.Hello(host=pb.Host(host_id=host))).SerializeToString())
        first = next(responses)
        seq = first.hello.stored_through_seq + 1
        out.put(cpb.AgentMessage(batch=cpb.EventBatch(events=[pb.Event(seq=seq, ts_ns=time.time_ns(),
                                                                           exit=pb.Exit())])).SerializeToString())
        acked = False
        for m in responses:
            if m.HasField("ack") and m.ack.seq == seq:
                acked = True
                break
        out.put(None)
        stub = cgrpc.QueryStub(ch)
        jobs = stub.ListJobs(cpb.ListJobsRequest(), timeout=10, metadata=bearer(reader))
    return acked and jobs is not None


def fuzz(cases: int, seed: int, workdir: Path) -> FuzzReport:
    rng = random.Random(seed)
    os.environ["GPUGUARD_AUTH_DIR"] = str(workdir / "auth")
    port = free_port()
    col = Service([*CLI, "collector", "--listen", f"127.0.0.1:{port}", "--store", str(workdir / "c.db")],
                  workdir / "collector.log", "collector listening on").start()
    report = FuzzReport()
    try:
        creds = CredentialStore()
        tokens = {"none": "", "bogus": "x" * 40, "agent": creds.issue("agent", "agent-fuzz", "fuzz"),
                  "reader": creds.issue("reader", "fuzz-reader"), "admin": find_token(role="admin")}
        report.rss_before_mb = rss_mb(col.proc.pid)
        for i in range(cases):
            role = rng.choice(list(tokens))
            if rng.random() < 0.6:
                run_stream_case(port, rng, tokens[role], "fuzz", report)
                report.stream_cases += 1
            else:
                run_query_case(port, rng, tokens[role], report)
                report.query_cases += 1
            report.cases += 1
            if col.proc.poll() is not None:
                report.crashes += 1
                break
            if (i + 1) % 500 == 0:
                print(f"fuzz: {i + 1}/{cases} cases, collector RSS {rss_mb(col.proc.pid):.0f} MB", file=sys.stderr)
        report.rss_after_mb = rss_mb(col.proc.pid) if col.proc.poll() is None else 0.0
        good = creds.issue("agent", "agent-fuzz-good", "fuzz-good")    # a host the fuzzer never touched
        if col.proc.poll() is None and not good_agent_and_reader_served(port, "fuzz-good", good, tokens["reader"]):
            report.crashes += 1
    finally:
        col.stop()
    log = (workdir / "collector.log").read_text(errors="replace")
    report.tracebacks = log.count("Traceback")
    con = sqlite3.connect(workdir / "c.db")
    report.integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
    con.close()
    return report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=2000)
    p.add_argument("--seed", type=int, default=int(time.time()))
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="gpuguard-fuzz-") as tmp:
        r = fuzz(args.cases, args.seed, Path(tmp))
    print(f"fuzz seed {args.seed}: {r.cases} cases ({r.stream_cases} stream, {r.query_cases} query), crashes "
          f"{r.crashes}, tracebacks {r.tracebacks}, RSS {r.rss_before_mb:.0f} -> {r.rss_after_mb:.0f} MB, "
          f"store {r.integrity}")
    for code, n in sorted(r.codes.items()):
        print(f"  {code:<28} {n}")
    return 0 if (r.crashes == 0 and r.tracebacks == 0 and r.integrity == "ok") else 1


if __name__ == "__main__":
    sys.exit(main())

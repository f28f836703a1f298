#!/usr/bin/env python3
"""Enforcement benchmarks: syscall-to-block time, userspace kill latency, payload-hook and rule costs.

Prints figures; asserts nothing. Needs root (it loads the probes). Everything it
attaches is scoped to cgroups it creates and removes, and is detached at the end.

    .venv/bin/python bench/enforce.py [--n 200]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.bpf_links import INET4_CONNECT, INET_EGRESS  # noqa: E402
from agent.enforce import Enforcer  # noqa: E402
from agent.jobs import ensure_cgroup2_mount  # noqa: E402
from agent.runtime import Capture  # noqa: E402
from collector.correlate import Correlator  # noqa: E402
from collector.rules.engine import Engine  # noqa: E402
from collector.rules.loader import load_ruleset, rule_texts  # noqa: E402
from gpuguard.v1 import events_pb2 as pb  # noqa: E402
from gpuguard.v1 import policy_pb2 as ppb  # noqa: E402
from lab import (  # noqa: E402
    FakePool,
    builtin_argv_kill,
    free_port,
    lab_credentials,
    local_agent,
    local_collector,
    popen_in_cgroup,
    remove_cgroup_tree,
    wait_policy_acked,
)

PYTHON = "/usr/bin/python3"


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))]


def summary(values: list[float], unit: str) -> str:
    return f"p50 {pct(values, 50):.1f} {unit}, p99 {pct(values, 99):.1f} {unit} (n={len(values)})"


CONNECT_TIMER = """
import socket, sys, time
addr, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = []
for _ in range(n):
    s = socket.socket()
    t = time.perf_counter_ns()
    try:
        s.connect((addr, port))
    except OSError as e:
        err = e.errno
    out.append((time.perf_counter_ns() - t) / 1000)
    s.close()
print(err, " ".join(f"{x:.2f}" for x in out))
"""


def connect_times(cg: Path, addr: str, port: int, n: int) -> tuple[int, list[float]]:
    proc = popen_in_cgroup(cg, [PYTHON, "-c", CONNECT_TIMER, addr, str(port), str(n)], stdout=subprocess.PIPE,
                           text=True)
    out, _ = proc.communicate(60)
    err, *times = out.split()
    return int(err), [float(t) for t in times]


def spawn_times(cg: Path, binary: str, n: int) -> tuple[list[int], list[float]]:
    codes, times = [], []
    for _ in range(n):
        t = time.perf_counter()
        p = popen_in_cgroup(cg, [binary])
        codes.append(p.wait())
        times.append((time.perf_counter() - t) * 1000)
    return codes, times


def bench_kernel_blocks(n: int, tmp: Path) -> None:
    cap = Capture(hash_executables=False)
    cap.start()
    base = ensure_cgroup2_mount() / f"gpuguard-bench-{uuid.uuid4().hex[:6]}"
    cg = base / "slurm" / "job_777"
    cg.mkdir(parents=True)
    enf = Enforcer(cap, tmp / "state")
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        miner = tmp / "gg-bench-miner"
        shutil.copy("/bin/true", miner)
        # baselines, nothing attached
        err0, refused = connect_times(cg, "127.0.0.1", port, n)
        codes0, spawn_ok = spawn_times(cg, str(miner), max(20, n // 5))
        enf.apply(ppb.Policy(version=1, deny=[ppb.DenyDestination(rule_id="b-deny", cidr="127.0.0.0/8", port=port,
                                                                  scope=ppb.Scope(job_ids=["777"]))],
                             kill=[ppb.KillBinary(rule_id="b-kill", comm="gg-bench-miner",
                                                  scope=ppb.Scope(job_ids=["777"])),
                                   ppb.KillBinary(rule_id="b-revsh", comm="sh", stdio_socket=True,
                                                  stdio_pipe_network=True, scope=ppb.Scope(job_ids=["777"]))],
                             payload=builtin_fingerprints(ppb.Scope(job_ids=["777"]))), persist=False)
        err1, denied = connect_times(cg, "127.0.0.1", port, n)
        codes1, spawn_killed = spawn_times(cg, str(miner), max(20, n // 5))
        deny_fn = next(fn for (c, t), (fn, _fd) in enf.attached.items() if t == INET4_CONNECT)
        before = prog_stats(deny_fn.fd)
        with bpf_stats():
            err2, other = connect_times(cg, "127.0.0.1", port + 1 if port < 65535 else port - 1, n)
            after = prog_stats(deny_fn.fd)
        hook_ns = (after[0] - before[0]) / max(after[1] - before[1], 1)
        print(f"connect() to a denied destination: returns errno {err1} (EPERM) in {summary(denied, 'us')}; "
              f"the same connect with no policy (errno {err0}, refused): {summary(refused, 'us')}; "
              f"a non-denied port through the deny hook: {summary(other, 'us')}; the connect hook itself "
              f"(identity, destination and pipe checks; the caller's stdout is a pipe, so its ends are "
              f"remembered): {hook_ns:.0f} ns per connect")
        print(f"kill at exec: spawn -> reaped (status {set(codes1)}) {summary(spawn_killed, 'ms')}; "
              f"the same binary unblocked (status {set(codes0)}): {summary(spawn_ok, 'ms')} — the blocked "
              "process dies before its first instruction")
        bench_payload_hook(cg, enf)
    finally:
        enf.apply(ppb.Policy(version=2), persist=False)
        enf.close()
        cap.close()
        remove_cgroup_tree(base)


BULK = """
import socket, sys, time
port, mb = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port))
buf = b"x" * 65536
t = time.perf_counter()
for _ in range(mb * 16):
    s.sendall(buf)
s.close()
print(f"{mb / (time.perf_counter() - t):.0f}")
"""


SHORT_FLOWS = """
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
req = (b"GET /simple/torch/ HTTP/1.1\\r\\nHost: mirror.internal\\r\\nUser-Agent: pip/24.0\\r\\n"
       + b"X-Pad: " + b"a" * 300 + b"\\r\\n\\r\\n")
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(req)
    s.close()
"""


@contextlib.contextmanager
def bpf_stats():
    """Per-program run time and count in fdinfo while inside (kernel.bpf_stats_enabled)."""
    stats = Path("/proc/sys/kernel/bpf_stats_enabled")
    old = stats.read_text().strip()
    stats.write_text("1")
    try:
        yield
    finally:
        stats.write_text(old)


def builtin_fingerprints(scope: ppb.Scope) -> list[ppb.PayloadWatch]:
    """Every payload rule of the built-in rules, in force on scope (what a job gets by default)."""
    from collector.policy import kernel_enforceable, payload_watch  # noqa: PLC0415

    rs = load_ruleset(rule_texts())
    return [payload_watch(r, scope, r.action in ("block", "kill") and kernel_enforceable(r))
            for r in rs.rules.values() if r.event == "payload"]


def bench_short_flows(cg: Path, fn_fd: int, n: int = 2000) -> None:
    """The hook's worst case: every packet is a flow's first payload packet, matched against every fingerprint."""
    pool = FakePool()
    try:
        before = prog_stats(fn_fd)
        proc = popen_in_cgroup(cg, [PYTHON, "-c", SHORT_FLOWS, str(pool.port), str(n)])
        proc.wait(120)
        after = prog_stats(fn_fd)
    finally:
        pool.close()
    runs = after[1] - before[1]
    rules = len(builtin_fingerprints(ppb.Scope()))
    print(f"payload hook, short flows ({n} connections, one 380-byte request each, {rules} built-in payload rules): "
          f"{(after[0] - before[0]) / max(runs, 1):.0f} ns per packet over {runs} packets "
          "(SYN/ACK/FIN included: they cost a header parse)")


def bulk_transfer(cg: Path, fds: list[int], mb: int = 512) -> tuple[float, list[tuple[int, int]]]:
    """BULK from a process in cg to a loopback sink: (MB/s, per program fd (run_time_ns, run_cnt) during it)."""
    sink = socket.create_server(("127.0.0.1", 0))

    def drain():
        conn, _ = sink.accept()
        while conn.recv(1 << 20):
            pass
        conn.close()

    before = [prog_stats(fd) for fd in fds]
    t = threading.Thread(target=drain)
    t.start()
    proc = popen_in_cgroup(cg, [PYTHON, "-c", BULK, str(sink.getsockname()[1]), str(mb)], stdout=subprocess.PIPE,
                           text=True)
    out, _ = proc.communicate(120)
    t.join()
    sink.close()
    after = [prog_stats(fd) for fd in fds]
    return float(out.strip()), [(a[0] - b[0], a[1] - b[1]) for a, b in zip(after, before, strict=True)]


def bench_payload_hook(cg: Path, enf: Enforcer) -> None:
    """Bulk TCP from a cgroup with the payload hook attached: throughput and the hook's ns per packet."""
    with bpf_stats():
        prog_fn = next(fn for (c, t), (fn, _fd) in enf.attached.items() if t == INET_EGRESS)
        bench_short_flows(cg, prog_fn.fd)
        mbps_on, [(ns, cnt)] = bulk_transfer(cg, [prog_fn.fd])
        enf.apply(ppb.Policy(version=3), persist=False)
        mbps_off, _ = bulk_transfer(cg, [prog_fn.fd])
        print(f"payload hook on a 512 MB loopback bulk transfer: {mbps_on:.0f} MB/s with the hook, {mbps_off:.0f} MB/s "
              f"without ({mbps_on / mbps_off:.2f}x); hook ran on {cnt} packets, {ns / max(cnt, 1):.0f} ns per packet "
              "(after the first 4 payload packets a flow costs one map lookup)")


def prog_stats(fd: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of a program, from /proc/self/fdinfo."""
    info = dict(line.split(":", 1) for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines()
                if ":" in line)
    return int(info.get("run_time_ns", "0").strip()), int(info.get("run_cnt", "0").strip())


def bench_userspace_kill(n: int, tmp: Path) -> None:
    """A rule only user space can evaluate (argv regex): exec -> collector alert -> KillProcess -> dead."""
    port, host = free_port(), f"bench-{uuid.uuid4().hex[:6]}"
    lab_credentials(host)
    col = local_collector(tmp, port).start()
    ag = local_agent(tmp, port, host).start()
    base = ensure_cgroup2_mount() / f"gpuguard-bench-{uuid.uuid4().hex[:6]}"
    pool = FakePool()
    try:
        wait_policy_acked(port, host)                  # the built-in policy in force: start-up is over
        cg = base / "slurm" / "job_778"
        cg.mkdir(parents=True)
        time.sleep(0.5)
        times = []
        for _ in range(n):
            t = time.perf_counter()
            # miner-argv-shape stays an argv regex (user space); stratum URLs are killed by the kernel's argv scan
            p = popen_in_cgroup(cg, [PYTHON, "-c", "import time; time.sleep(20)", "--donate-level", "1",
                                     f"127.0.0.1:{pool.port}"])
            code = p.wait(30)
            if code == -9:
                times.append((time.perf_counter() - t) * 1000)
        print(f"userspace kill (argv regex rule miner-argv-shape, ordered by the collector): {len(times)}/{n} killed; "
              f"exec -> dead {summary(times, 'ms')} (agent drains every 50 ms, ships in <= 200 ms batches)")
    finally:
        pool.close()
        ag.stop()
        col.stop()
        remove_cgroup_tree(base)


def bench_rules(n: int) -> None:
    rs = load_ruleset(rule_texts())
    engine, corr = Engine(rs), Correlator(rs)
    events = []
    for i in range(n):
        ev = pb.Event(seq=i, ts_ns=i)
        ev.job.kind, ev.job.id = "slurm", str(i % 50)
        ev.process.key, ev.process.comm, ev.process.exe = f"k{i % 300}", "python3", "/usr/bin/python3"
        if i % 10 < 6:
            ev.connect.CopyFrom(pb.Connect(daddr="10.0.0.7", dport=29500, proto="tcp"))
        elif i % 10 < 8:
            ev.exec.CopyFrom(pb.Exec(filename="/usr/bin/python3", argv=["python3", "train.py", "--lr", "1e-3"]))
        else:
            ev.gpu_open.CopyFrom(pb.GpuOpen(path="/dev/nvidia0"))
        events.append(ev)
    t = time.process_time()
    for ev in events:
        ms = engine.evaluate("h", ev, corr.context("h", ev))
        corr.observe("h", ev)
        if ms:
            corr.record("h", ev, ms)
    cpu = time.process_time() - t
    print(f"rule evaluation: {len(rs.rules)} rules + {len(rs.correlations)} correlations, 60/20/20 connect/exec/"
          f"gpu_open mix: {n / cpu:,.0f} events per CPU-second ({cpu / n * 1e6:.1f} us/event)")


HELLO_STORM = """
import socket, sys
port, n, hello = int(sys.argv[1]), int(sys.argv[2]), bytes.fromhex(sys.argv[3])
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port)); s.sendall(hello); s.close()
"""


RESOLVE_CONNECT_LOOP = """
import socket, sys, time
name, server, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
q = (0x4242).to_bytes(2, "big") + bytes([1, 0, 0, 1, 0, 0, 0, 0, 0, 0])
q += b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + bytes([0, 0, 1, 0, 1])
ok = 0
for _ in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3); s.sendto(q, (server, 53))
    address = socket.inet_ntoa(s.recv(512)[-4:]); s.close()
    c = socket.socket(); c.settimeout(3)
    try:
        c.connect((address, port)); ok += 1
    except OSError:
        pass
    c.close()
print(ok)
"""


def bench_names(cap: Capture, enf: Enforcer, cg: Path, n: int = 300) -> None:
    """Egress by name: the DNS-ingress learning and the connect hook's name check, per run."""
    from lab import FakeResolver  # noqa: PLC0415

    job_cg = cg / "slurm" / "job_424242"
    job_cg.mkdir(parents=True)
    resolver = FakeResolver({"files.bench-allowed.example": "127.0.0.9"}, "127.77.77.53")
    server = socket.create_server(("127.0.0.9", 0))
    port = server.getsockname()[1]

    def accept_all():
        while True:
            try:
                server.accept()[0].close()
            except OSError:
                return

    threading.Thread(target=accept_all, daemon=True).start()
    try:
        enf.apply(ppb.Policy(version=2, rules=["b-names"], allow=[ppb.EgressAllowlist(
            rule_id="b-names", scope=ppb.Scope(job_ids=["424242"]), names=["bench-allowed.example"],
            resolvers=[resolver.address])]), persist=False)
        connect_fn = next(fn for (c, t), (fn, _fd) in enf.attached.items() if t == INET4_CONNECT)
        ingress = cap.probes.bpf.funcs[b"flow_ingress"]
        before = prog_stats(connect_fn.fd), prog_stats(ingress.fd)
        out = popen_in_cgroup(job_cg, [PYTHON, "-c", RESOLVE_CONNECT_LOOP, "files.bench-allowed.example",
                                       resolver.address, str(port), str(n)], stdout=subprocess.PIPE, text=True)
        ok = int(out.communicate(120)[0].strip() or 0)
        after = prog_stats(connect_fn.fd), prog_stats(ingress.fd)
        (c_ns, c_n), (i_ns, i_n) = ((a[0] - b[0], a[1] - b[1]) for a, b in zip(after, before, strict=True))
        print(f"egress by name: {ok}/{n} resolve-then-connect allowed; connect hook (allowlist + name lookup) "
              f"{c_ns / max(c_n, 1):.0f} ns per call (n={c_n}); flow_ingress incl. learning from the answer "
              f"{i_ns / max(i_n, 1):.0f} ns per packet (n={i_n})")
    finally:
        enf.apply(ppb.Policy(version=3), persist=False)
        resolver.close()
        server.close()
        job_cg.rmdir()
        job_cg.parent.rmdir()


def bench_argv_scan(cap: Capture, enf: Enforcer) -> None:
    """The whole-argv scan (enforce_argv.c) with the built-in argv rules in force for a bench job: its cost per
    exec (the entry program's run time covers its tail calls) for a short argv and for 60 KiB."""
    base = ensure_cgroup2_mount() / f"gpuguard-bench-{uuid.uuid4().hex[:6]}"
    cg = base / "slurm" / "job_779"
    cg.mkdir(parents=True)
    try:
        entries = builtin_argv_kill("779")
        enf.apply(ppb.Policy(version=3, argv_kill=entries), persist=False)
        fd = enf.bpf.funcs[b"kill_by_argv"].fd
        for label, argv in (("a 3-argument exec", ["/bin/true", "--lr", "1e-3"]),
                            ("an exec with 60 KiB of arguments", ["/bin/true", *["y" * 6000] * 10])):
            before = prog_stats(fd)
            times = []
            for _ in range(200 if len(argv) < 5 else 50):
                t = time.perf_counter()
                popen_in_cgroup(cg, argv).wait()
                times.append((time.perf_counter() - t) * 1000)
            after = prog_stats(fd)
            print(f"whole-argv scan ({len(entries)} built-in entries, kill_by_argv + its tail calls), {label}: "
                  f"{(after[0] - before[0]) / max(after[1] - before[1], 1) / 1000:.1f} us per exec "
                  f"(n={after[1] - before[1]}: each run is the launcher's exec outside the scope plus the scoped "
                  f"exec); exec+wait {summary(times, 'ms')}")
    finally:
        enf.apply(ppb.Policy(version=4), persist=False)
        remove_cgroup_tree(base)


def bench_flow_observers(tmp: Path) -> None:
    """The root cgroup_skb observers (flow.c) run on every packet of the host: their ns per packet on bulk
    traffic and on flows that open with a ClientHello; kill-at-exec with exec traits on; load time."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_flows import client_hello  # noqa: PLC0415 - a real ClientHello from Python's ssl, no network

    t0 = time.monotonic()
    cap = Capture(hash_executables=False)
    cap.start()
    load_s = time.monotonic() - t0
    fns = {name: cap.probes.bpf.funcs[name.encode()] for name in ("flow_egress", "flow_ingress")}
    cg = ensure_cgroup2_mount() / f"gpuguard-bench-{uuid.uuid4().hex[:8]}"
    cg.mkdir()
    enf = Enforcer(cap, tmp / "state")
    try:
        with bpf_stats():
            mbps, deltas = bulk_transfer(cg, [f.fd for f in fns.values()])
            for k, (ns, cnt) in zip(fns, deltas, strict=True):
                print(f"{k} on a 512 MB loopback bulk transfer ({mbps:.0f} MB/s): "
                      f"{ns / max(cnt, 1):.0f} ns per packet over {cnt} packets")
            pool = FakePool()
            hello = client_hello("bench.gg-pool.example", ["h2", "http/1.1"])
            before = prog_stats(fns["flow_egress"].fd)
            popen_in_cgroup(cg, [PYTHON, "-c", HELLO_STORM, str(pool.port), "1000", hello.hex()]).wait(120)
            after = prog_stats(fns["flow_egress"].fd)
            pool.close()
            tls = [r for r in cap.poll_once(200) if r.HasField("tls")]
            print(f"flow_egress, 1000 connections each opening with a {len(hello)}-byte ClientHello (copied to the "
                  f"ring, parsed by the agent: {len(tls)} tls records this poll): "
                  f"{(after[0] - before[0]) / max(after[1] - before[1], 1):.0f} ns per packet over "
                  f"{after[1] - before[1]} packets (SYN/ACK/FIN included)")
            traits = sum(1 << i for i in range(6))
            enf.apply(ppb.Policy(version=1, rules=["b-trait"], kill_traits=[ppb.KillTrait(
                rule_id="b-trait", scope=ppb.Scope(job_ids=["no-such-job"]), traits=traits)]), persist=False)
            kill_fd = enf.bpf.funcs[b"kill_at_exec"].fd
            before = prog_stats(kill_fd)
            _, spawn = spawn_times(cg, "/bin/true", 300)
            after = prog_stats(kill_fd)
            print(f"kill_at_exec with exec traits computed (memfd/loader/environment scan): "
                  f"{(after[0] - before[0]) / max(after[1] - before[1], 1) / 1000:.1f} us per exec "
                  f"(n={after[1] - before[1]}); exec+wait {summary(spawn, 'ms')}")
            bench_names(cap, enf, cg)
            bench_argv_scan(cap, enf)
        print(f"capture probes compiled, verified and attached in {load_s:.2f} s (incl. the BTF offset self-check)")
    finally:
        enf.apply(ppb.Policy(version=0), persist=False)
        enf.close()
        cap.close()
        cg.rmdir()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="repetitions per measurement")
    ap.add_argument("--kills", type=int, default=20, help="userspace kills to time")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/enforce.py needs root", file=sys.stderr)
        return 3
    print(f"{os.cpu_count()} CPUs\n")
    with tempfile.TemporaryDirectory() as d:
        bench_kernel_blocks(args.n, Path(d))
    with tempfile.TemporaryDirectory() as d:
        bench_userspace_kill(args.kills, Path(d))
    bench_rules(100_000)
    with tempfile.TemporaryDirectory() as d:
        bench_flow_observers(Path(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())

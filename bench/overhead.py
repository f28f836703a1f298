#!/usr/bin/env python3
"""Capture overhead on five workloads, untraced vs gpuguard vs a floor vs bpftrace vs auditd.

Workloads: an exec storm, a connect storm (what the tracers trace), a syscall
storm (1M one-byte read/write pairs, nothing traced: what a probe on a syscall
tracepoint costs everyone else), a data-loader storm (open/read/close of
small files) and a socket storm (one-byte send/recv pairs on a socketpair: what
the packet-socket probes on every send and receive cost everyone else).
Prints, per tracer: wall time of each workload and its ratio to the untraced
run, events captured and lost, and gpuguard's own CPU seconds.
The floor is one empty program on sched:sched_process_exec. A benchmark, not a
test: nothing here asserts a time. Runs as root; every tracer it starts is
stopped by PID and every audit rule it adds is removed.

    .venv/bin/python bench/overhead.py [--execs 2000] [--connects 300000] [--syscalls 1000000]
                                       [--files 100000] [--sends 500000] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab import process_cpu_seconds  # noqa: E402

TAG = "gpuguard-bench"


def exec_storm(n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        pid = os.posix_spawn("/bin/true", ["/bin/true", TAG], {})
        os.waitpid(pid, 0)
    return time.perf_counter() - start


def connect_storm(n: int) -> float:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]          # closed again: every connect is refused
    start = time.perf_counter()
    for _ in range(n):
        s = socket.socket()
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            pass
        s.close()
    return time.perf_counter() - start


def syscall_storm(n: int) -> float:
    """n one-byte read/write pairs in a child (dd): none of them is traced by anyone."""
    start = time.perf_counter()
    subprocess.run(["dd", "if=/dev/zero", "of=/dev/null", "bs=1", f"count={n}"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


LOADER = ("import os, sys\nd = sys.argv[1]; names = [os.path.join(d, f) for f in os.listdir(d)]\n"
          "n = int(sys.argv[2])\nfor i in range(n):\n    fd = os.open(names[i % len(names)], os.O_RDONLY)\n"
          "    os.read(fd, 4096)\n    os.close(fd)\n")


def loader_storm(n: int, directory: str) -> float:
    """A data loader: open/read/close of small files, in a child process."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", LOADER, directory, str(n)], check=True)
    return time.perf_counter() - start


SOCKIO = ("import socket, sys\na, b = socket.socketpair()\nfor _ in range(int(sys.argv[1])):\n"
          "    a.send(b'x')\n    b.recv(1)\n")


def socket_storm(n: int) -> float:
    """n one-byte send/recv pairs on an AF_UNIX socketpair, in a child: sockets nobody traces."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", SOCKIO, str(n)], check=True)
    return time.perf_counter() - start


WORKLOADS = ("exec", "connect", "syscall", "loader", "socket")

SUSTAINED = """
import os, socket, sys, time
rate, seconds = int(sys.argv[1]), float(sys.argv[2])
with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0)); port = probe.getsockname()[1]
start = time.monotonic(); sent = 0; spawned = 0
while (now := time.monotonic()) - start < seconds:
    due = int((now - start) * rate)
    while sent < due:
        if sent % 50 == 0:                      # 1 in 50 events is a process (exec + exit + its fork)
            pid = os.posix_spawn("/bin/true", ["/bin/true", "gpuguard-sustained"], {}); os.waitpid(pid, 0)
            spawned += 1; sent += 3
        else:
            s = socket.socket()
            try: s.connect(("127.0.0.1", port))
            except OSError: pass
            s.close(); sent += 1
    time.sleep(0.001)
print(sent, spawned, flush=True)
"""


def sustained_load(rate: int, seconds: float) -> tuple[int, float]:
    """A mixed load held at ``rate`` events/s for ``seconds``: (events generated, wall seconds)."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", SUSTAINED, str(rate), str(seconds)], capture_output=True,
                         text=True, check=True)
    return int(out.stdout.split()[0]), time.perf_counter() - start


def bpf_programs() -> dict[int, dict]:
    """Every loaded program's counters (bpftool; run_cnt/run_time_ns while kernel.bpf_stats_enabled is 1)."""
    out = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True, check=True).stdout
    return {p["id"]: p for p in json.loads(out)}


def bpf_cost(args, mode: str) -> None:
    """The kernel's own account of what each gpuguard program costs per workload operation (bpf_stats), which a
    wall-clock ratio on a noisy VM cannot resolve: runs per operation and ns per run, per program. What it leaves
    out is the hooks' dispatch (a few ns per hook) and the agent competing for the CPUs."""
    stats = Path("/proc/sys/kernel/bpf_stats_enabled")
    storms = (("exec", args.execs, lambda: exec_storm(args.execs)),
              ("connect", args.connects, lambda: connect_storm(args.connects)),
              ("syscall", args.syscalls, lambda: syscall_storm(args.syscalls)),
              ("loader", args.files, lambda: loader_storm(args.files, args.files_dir)),
              ("socket", args.sends, lambda: socket_storm(args.sends)))
    untraced = {name: run() / n for name, n, run in storms}
    agent = GpuguardAgent(mode)
    others = set(bpf_programs())
    agent.start()
    previous = stats.read_text().strip()
    print("\nin-kernel cost per operation (bpf_stats, gpuguard's programs only):")
    try:
        stats.write_text("1")
        for name, n, run in storms:
            before = bpf_programs()
            run()
            after = bpf_programs()
            rows = []
            for pid, prog in after.items():
                runs = prog.get("run_cnt", 0) - before.get(pid, {}).get("run_cnt", 0)
                if pid not in others and pid in before and runs:   # the agent's, not the host's
                    rows.append((prog.get("name", "?"), runs / n,
                                 (prog.get("run_time_ns", 0) - before[pid].get("run_time_ns", 0)) / runs))
            total = sum(per_op * ns for _n, per_op, ns in rows)
            share = 100 * total / (untraced[name] * 1e9)
            print(f"  {name:<8} {total:8.0f} ns of BPF per operation = {share:5.1f} % of the untraced "
                  f"{untraced[name] * 1e9:,.0f} ns")
            for prog_name, per_op, ns in sorted(rows, key=lambda r: -r[1] * r[2]):
                if per_op * ns >= 1:
                    print(f"      {prog_name:<34} {per_op:6.2f} runs x {ns:7.1f} ns")
    finally:
        stats.write_text(previous)
        agent.stop()


def run_storms(args) -> tuple[float, ...]:
    return (exec_storm(args.execs), connect_storm(args.connects), syscall_storm(args.syscalls),
            loader_storm(args.files, args.files_dir), socket_storm(args.sends))


class Tracer:
    name = "untraced"

    def start(self) -> None: ...

    def stop(self) -> tuple[int | None, int | None]:
        return None, None


class GpuguardAgent(Tracer):
    """The agent as deployed: decode, enrich, spool to disk for a collector (here an unreachable one,
    so shipping costs nothing on this host); ``--agent-mode json`` prints JSON lines instead."""

    name = "gpuguard"

    def __init__(self, mode: str = "spool") -> None:
        self.mode = mode

    def start(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="gg-bench-")
        self.log = Path(self.tmp) / "agent.log"
        self.out = open(os.devnull, "wb")  # noqa: SIM115
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            nowhere = f"127.0.0.1:{s.getsockname()[1]}"
        output = ["--json"] if self.mode == "json" else ["--quiet", "--collector", nowhere]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gpuguard_cli.main", "agent", *output, "--spool-dir", f"{self.tmp}/spool",
             "--state-dir", f"{self.tmp}/state", "--status-interval", "3600"], stdout=self.out,
            stderr=open(self.log, "wb"), cwd=ROOT)  # noqa: SIM115
        wait_text(self.log, "agent running", self.proc)        # probes and enforcement in place
        self.cpu_at_start = process_cpu_seconds(self.proc.pid)     # compile and start-up are not per-event cost

    def stop(self):
        self.cpu_s = process_cpu_seconds(self.proc.pid) - self.cpu_at_start
        os.kill(self.proc.pid, signal.SIGINT)
        self.proc.wait(60)
        text = self.log.read_text()
        m = re.search(r"agent stopped: (\d+) events captured, kernel lost (.*)", text)
        captured = int(m.group(1)) if m else None
        lost = sum(int(x) for x in re.findall(r"(\d+)", m.group(2))) if m else None
        shutil.rmtree(self.tmp, ignore_errors=True)
        return captured, lost


class Floor(Tracer):
    """The least any exec tracer pays: one empty program on sched:sched_process_exec."""

    name = "floor"
    PROG = "TRACEPOINT_PROBE(sched, sched_process_exec) { return 0; }"

    def start(self) -> None:
        code = ("import sys, time\nfrom agent.headers import resolve_kernel_headers\nresolve_kernel_headers()\n"
                "from bcc import BPF\nb = BPF(text=sys.argv[1])\nprint('ready', flush=True)\ntime.sleep(86400)\n")
        self.proc = subprocess.Popen([sys.executable, "-c", code, self.PROG], stdout=subprocess.PIPE, text=True,
                                     cwd=ROOT)
        assert self.proc.stdout.readline().strip() == "ready"

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)
        return None, None


class Bpftrace(Tracer):
    name = "bpftrace"
    PROG = ('tracepoint:syscalls:sys_enter_execve { printf("E %d %s %s\\n", pid, comm, str(args->filename)); }\n'
            'tracepoint:syscalls:sys_exit_execve { printf("X %d %d\\n", pid, args->ret); }\n'
            'tracepoint:syscalls:sys_enter_connect { printf("C %d %s\\n", pid, comm); }\n'
            'tracepoint:syscalls:sys_exit_connect { printf("R %d %d\\n", pid, args->ret); }\n'
            'tracepoint:sched:sched_process_fork { printf("F %d\\n", args->child_pid); }\n'
            'tracepoint:sched:sched_process_exit { printf("Q %d\\n", pid); }\n')

    def start(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="gg-bench-")
        self.outp = Path(self.tmp) / "out"
        self.proc = subprocess.Popen(["bpftrace", "-o", str(self.outp), "-e", self.PROG],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_text(self.outp, "Attaching", self.proc)

    def stop(self):
        os.kill(self.proc.pid, signal.SIGINT)
        self.proc.wait(60)
        text = self.outp.read_text(errors="replace")
        captured = sum(1 for line in text.splitlines() if line[:2] in ("E ", "X ", "C ", "R ", "F ", "Q "))
        lost = sum(int(x) for x in re.findall(r"Lost (\d+) events", text))
        shutil.rmtree(self.tmp, ignore_errors=True)
        return captured, lost


class Auditd(Tracer):
    name = "auditd"
    RULE = ["always,exit", "-F", "arch=b64", "-S", "execve", "-S", "connect", "-k", TAG]

    def start(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="gg-bench-")
        self.logf = Path(self.tmp) / "audit.log"
        conf = Path(self.tmp) / "auditd.conf"
        conf.write_text(f"log_file = {self.logf}\nlog_format = RAW\nflush = INCREMENTAL_ASYNC\nfreq = 50\n"
                        "max_log_file = 1024\nmax_log_file_action = IGNORE\nspace_left = 2\n"
                        "admin_space_left = 1\ndisk_full_action = IGNORE\ndisk_error_action = IGNORE\n")
        self.proc = subprocess.Popen(["auditd", "-n", "-c", self.tmp], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while self._daemon_pid() == 0 and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("auditd exited at start (see auditd -f -c DIR)")
            time.sleep(0.1)
        subprocess.run(["auditctl", "-b", str(self.BACKLOG)], capture_output=True)
        self.lost_at_start = self._status("lost") or 0
        subprocess.run(["auditctl", "-a", *self.RULE], check=True, capture_output=True)
        subprocess.run(["auditctl", "-e", "1"], check=True, capture_output=True)

    BACKLOG = 8192

    def stop(self):
        """Count what auditd wrote, after it wrote everything the kernel queued: the rule is removed first (no new
        records), then the kernel's backlog must reach 0 and the log stop growing (a positive signal, not a sleep);
        the kernel's own count of records it dropped (``auditctl -s`` lost) is the why of any shortfall."""
        subprocess.run(["auditctl", "-d", *self.RULE], capture_output=True)
        deadline, last, stable_since = time.monotonic() + 120, -1, time.monotonic()
        while time.monotonic() < deadline:
            size = self.logf.stat().st_size if self.logf.exists() else 0
            if size != last:
                last, stable_since = size, time.monotonic()
            elif (self._status("backlog") or 0) == 0 and time.monotonic() - stable_since >= 1.0:
                break
            time.sleep(0.1)
        lost = (self._status("lost") or 0) - self.lost_at_start
        subprocess.run(["auditctl", "-e", "0"], capture_output=True)
        os.kill(self.proc.pid, signal.SIGTERM)
        self.proc.wait(30)
        text = self.logf.read_text(errors="replace") if self.logf.exists() else ""
        captured = sum(1 for line in text.splitlines() if "type=SYSCALL" in line and TAG in line)
        shutil.rmtree(self.tmp, ignore_errors=True)
        return captured, lost

    @staticmethod
    def _daemon_pid() -> int:
        out = subprocess.run(["auditctl", "-s"], capture_output=True, text=True).stdout
        m = re.search(r"^pid (\d+)", out, re.M)
        return int(m.group(1)) if m else 0

    @staticmethod
    def _status(field: str) -> int | None:
        out = subprocess.run(["auditctl", "-s"], capture_output=True, text=True).stdout
        m = re.search(rf"^{field} (\d+)", out, re.M)
        return int(m.group(1)) if m else None


def wait_text(path: Path, text: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"tracer exited early: {path.read_text() if path.exists() else ''}")
        time.sleep(0.05)
    raise TimeoutError(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--execs", type=int, default=2000)
    ap.add_argument("--connects", type=int, default=300_000,
                    help="refused connects (300k: a storm of ~2 s here, long enough to resolve 2 %%)")
    ap.add_argument("--syscalls", type=int, default=1_000_000, help="one-byte read/write pairs (dd)")
    ap.add_argument("--files", type=int, default=100_000, help="open/read/close in the data-loader storm")
    ap.add_argument("--sends", type=int, default=500_000, help="one-byte send/recv pairs on a socketpair")
    ap.add_argument("--reps", type=int, default=3, help="runs per tracer; the median is reported")
    ap.add_argument("--sustained-rate", type=int, default=20_000, help="events/s of the mixed sustained load")
    ap.add_argument("--sustained-seconds", type=float, default=60.0, help="0 skips the sustained load")
    ap.add_argument("--only", nargs="*", help="subset of: untraced gpuguard floor bpftrace auditd")
    ap.add_argument("--agent-mode", choices=["spool", "json"], default="spool",
                    help="gpuguard as deployed (spool for a collector) or printing JSON lines")
    ap.add_argument("--bpf-stats", action="store_true",
                    help="also print what each gpuguard program costs per operation, from the kernel's bpf_stats")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/overhead.py needs root", file=sys.stderr)
        return 3
    files = tempfile.mkdtemp(prefix="gg-bench-files-")
    for i in range(1000):
        Path(files, f"sample-{i:04d}.bin").write_bytes(os.urandom(2048))
    args.files_dir = files
    tracers = [Tracer(), GpuguardAgent(args.agent_mode), Floor(), Bpftrace(), Auditd()]
    tracers = [t for t in tracers if not args.only or t.name in args.only]
    results: dict[str, list] = {}
    exec_storm(50)
    connect_storm(500)   # warm-up
    for rep in range(args.reps):
        for t in tracers:
            if t.name in ("bpftrace", "auditd") and not shutil.which(t.name if t.name != "auditd" else "auditctl"):
                continue
            print(f"[rep {rep + 1}/{args.reps}] {t.name}: {args.execs} execs, {args.connects} connects, "
                  f"{args.syscalls} read/write pairs, {args.files} file reads, {args.sends} send/recv pairs",
                  file=sys.stderr, flush=True)
            t.start()
            try:
                times = run_storms(args)
            finally:
                captured, lost = t.stop()
            results.setdefault(t.name, []).append((times, captured, lost, getattr(t, "cpu_s", None)))

    def median(values):
        values = sorted(values)
        return values[len(values) // 2]

    base = [median(r[0][i] for r in results["untraced"]) for i in range(len(WORKLOADS))]
    print(f"\nworkloads: exec = {args.execs} posix_spawn(/bin/true); connect = {args.connects} refused TCP connects; "
          f"syscall = {args.syscalls} one-byte read/write pairs (dd); loader = {args.files} open/read/close of 2 KB "
          f"files; socket = {args.sends} one-byte send/recv pairs on a socketpair; median of {args.reps}; "
          f"{os.cpu_count()} CPUs\n")
    head = " ".join(f"{w + ' s':>10} {w + ' x':>9}" for w in WORKLOADS)
    print(f"{'tracer':<10} {head} {'captured':>9} {'lost':>6} {'cpu s':>6}")
    for name, runs in results.items():
        cols = []
        for i in range(len(WORKLOADS)):
            t = median(r[0][i] for r in runs)
            cols.append(f"{t:10.3f} {t / base[i]:9.3f}")
        cap = [r[1] for r in runs if r[1] is not None]
        lost = [r[2] for r in runs if r[2] is not None]
        cpu = [r[3] for r in runs if r[3] is not None]
        print(f"{name:<10} {' '.join(cols)} {(str(int(sum(cap) / len(cap))) if cap else '-'):>9} "
              f"{(str(max(lost)) if lost else '-'):>6} {(f'{median(cpu):.2f}') if cpu else '-':>6}")
    if "auditd" in results:
        runs = results["auditd"]
        wanted = args.execs + args.connects
        got, lost = min(r[1] for r in runs), max(r[2] for r in runs)
        why = ("all of them" if got >= wanted else
               f"the kernel dropped {lost:,} records: its audit backlog ({Auditd.BACKLOG:,}) overflows while auditd "
               "writes them out slower than the storm makes them" if lost else
               "short with no kernel loss reported: see auditd's own log")
        print(f"\nauditd: recorded at least {got:,} SYSCALL records per run for the storms' {wanted:,} execve and "
              f"connect calls ({why})")
    if "gpuguard" in results:
        runs = results["gpuguard"]
        events = median(r[1] for r in runs if r[1] is not None)
        cpu = median(r[3] for r in runs)
        print(f"\ngpuguard: {cpu:.2f} CPU-s for {events} events = {1000 * cpu / max(events, 1):.3f} CPU-s per 1,000 "
              f"events -> at 5k events/s: {5 * 100 * cpu / max(events, 1) * 1000:.1f} % of a core "
              f"(agent process only; the in-kernel cost shows in the ratios)")
    if args.sustained_seconds > 0 and (not args.only or "gpuguard" in args.only):
        agent = GpuguardAgent(args.agent_mode)
        print(f"sustained: {args.sustained_rate} events/s for {args.sustained_seconds:.0f}s under gpuguard",
              file=sys.stderr, flush=True)
        agent.start()
        try:
            made, wall = sustained_load(args.sustained_rate, args.sustained_seconds)
        finally:
            captured, lost = agent.stop()
        print(f"\nsustained mixed load (connects + 1 process in 50 events): {made} events made in {wall:.1f}s "
              f"({made / wall:,.0f}/s); gpuguard captured {captured}, lost {lost}; agent CPU {agent.cpu_s:.2f}s = "
              f"{100 * agent.cpu_s / wall:.1f} % of a core at {(captured or 0) / wall:,.0f} events/s")
    if args.bpf_stats:
        bpf_cost(args, args.agent_mode)
    shutil.rmtree(files, ignore_errors=True)
    print("\n'x' = wall time / untraced wall time. captured = events the tracer delivered (gpuguard: records after "
          "in-kernel filtering; bpftrace: printed lines; auditd: SYSCALL records).")
    return 0


if __name__ == "__main__":
    sys.exit(main())

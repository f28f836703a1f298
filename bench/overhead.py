#!/usr/bin/env python3
"""Capture overhead: an exec storm and a connect storm, untraced vs gpuguard vs bpftrace vs auditd.

Prints, per tracer: wall time of each storm, the overhead as a ratio to the
untraced run, events captured and events lost. A benchmark, not a test: the
figures go into notes, nothing here asserts a time. Runs as root; every
tracer it starts is stopped by PID and every audit rule it adds is removed.

    .venv/bin/python bench/overhead.py [--execs 2000] [--connects 20000] [--reps 3]
"""

from __future__ import annotations

import argparse
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


def run_storms(args) -> tuple[float, float]:
    return exec_storm(args.execs), connect_storm(args.connects)


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
            [sys.executable, "-m", "gpuguard.cli", "agent", *output, "--spool-dir", f"{self.tmp}/spool",
             "--state-dir", f"{self.tmp}/state", "--status-interval", "3600"], stdout=self.out,
            stderr=open(self.log, "wb"), cwd=ROOT)  # noqa: SIM115
        wait_text(self.log, "process table seeded", self.proc)

    def stop(self):
        os.kill(self.proc.pid, signal.SIGINT)
        self.proc.wait(60)
        text = self.log.read_text()
        m = re.search(r"agent stopped: (\d+) events captured, kernel lost (.*)", text)
        captured = int(m.group(1)) if m else None
        lost = sum(int(x) for x in re.findall(r"(\d+)", m.group(2))) if m else None
        shutil.rmtree(self.tmp, ignore_errors=True)
        return captured, lost


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
        subprocess.run(["auditctl", "-b", "8192"], capture_output=True)
        subprocess.run(["auditctl", "-a", *self.RULE], check=True, capture_output=True)
        subprocess.run(["auditctl", "-e", "1"], check=True, capture_output=True)

    def stop(self):
        lost_before = self._lost()
        subprocess.run(["auditctl", "-d", *self.RULE], capture_output=True)
        subprocess.run(["auditctl", "-e", "0"], capture_output=True)
        time.sleep(0.5)
        os.kill(self.proc.pid, signal.SIGTERM)
        self.proc.wait(30)
        text = self.logf.read_text(errors="replace") if self.logf.exists() else ""
        captured = sum(1 for line in text.splitlines() if "type=SYSCALL" in line and TAG in line)
        shutil.rmtree(self.tmp, ignore_errors=True)
        return captured, lost_before

    @staticmethod
    def _daemon_pid() -> int:
        out = subprocess.run(["auditctl", "-s"], capture_output=True, text=True).stdout
        m = re.search(r"^pid (\d+)", out, re.M)
        return int(m.group(1)) if m else 0

    @staticmethod
    def _lost() -> int | None:
        out = subprocess.run(["auditctl", "-s"], capture_output=True, text=True).stdout
        m = re.search(r"^lost (\d+)", out, re.M)
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
    ap.add_argument("--connects", type=int, default=20000)
    ap.add_argument("--reps", type=int, default=3, help="runs per tracer; the median is reported")
    ap.add_argument("--only", nargs="*", help="subset of: untraced gpuguard bpftrace auditd")
    ap.add_argument("--agent-mode", choices=["spool", "json"], default="spool",
                    help="gpuguard as deployed (spool for a collector) or printing JSON lines")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/overhead.py needs root", file=sys.stderr)
        return 3
    tracers = [Tracer(), GpuguardAgent(args.agent_mode), Bpftrace(), Auditd()]
    tracers = [t for t in tracers if not args.only or t.name in args.only]
    results = {}
    exec_storm(50)
    connect_storm(500)   # warm-up
    for rep in range(args.reps):
        for t in tracers:
            if t.name in ("bpftrace", "auditd") and not shutil.which(t.name if t.name != "auditd" else "auditctl"):
                continue
            print(f"[rep {rep + 1}/{args.reps}] {t.name}: running {args.execs} execs + {args.connects} connects",
                  file=sys.stderr, flush=True)
            t.start()
            try:
                ex, co = run_storms(args)
            finally:
                captured, lost = t.stop()
            results.setdefault(t.name, []).append((ex, co, captured, lost))
    base = sorted(r[0] for r in results["untraced"])[len(results["untraced"]) // 2], \
        sorted(r[1] for r in results["untraced"])[len(results["untraced"]) // 2]
    expected = args.execs * 4 + args.connects   # exec+fork+exit(+exec-exit for bpftrace) per spawn; 1 per connect
    print(f"\nexec storm: {args.execs} posix_spawn(/bin/true); connect storm: {args.connects} refused TCP connects;"
          f" median of {args.reps}; {os.cpu_count()} CPUs\n")
    print(f"{'tracer':<10} {'exec s':>8} {'exec x':>7} {'conn s':>8} {'conn x':>7} {'captured':>9} {'lost':>6}")
    for name, runs in results.items():
        ex = sorted(r[0] for r in runs)[len(runs) // 2]
        co = sorted(r[1] for r in runs)[len(runs) // 2]
        cap = [r[2] for r in runs if r[2] is not None]
        lost = [r[3] for r in runs if r[3] is not None]
        print(f"{name:<10} {ex:8.3f} {ex / base[0]:7.3f} {co:8.3f} {co / base[1]:7.3f} "
              f"{(str(int(sum(cap) / len(cap))) if cap else '-'):>9} {(str(max(lost)) if lost else '-'):>6}")
    print(f"\n'x' = wall time / untraced wall time. captured = events the tracer delivered (gpuguard: exec, exit and "
          f"connect records after in-kernel filtering; bpftrace: printed lines for the same tracepoints; auditd: "
          f"SYSCALL records). Reference volume ~{expected} tracepoint hits per run.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

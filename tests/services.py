"""Start real collector and agent processes for end-to-end tests, and stop them by PID."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "gpuguard.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_text(path: Path, text: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}) before logging {text!r}:\n{path.read_text()}")
        time.sleep(0.05)
    raise TimeoutError(f"{text!r} not in {path} after {timeout}s:\n{path.read_text() if path.exists() else ''}")


class Service:
    def __init__(self, argv: list[str], log: Path, ready: str) -> None:
        self.argv, self.log, self.ready = argv, log, ready
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> Service:
        start_mark = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=out, cwd=ROOT)
        if wait:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if self.ready in self.log.read_text(errors="replace")[start_mark:]:
                    return self
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.argv[3]} exited {self.proc.returncode}:\n{self.log.read_text()}")
                time.sleep(0.05)
            raise TimeoutError(f"{self.argv[3]} not ready:\n{self.log.read_text()}")
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(30)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.kill(signal.SIGTERM)
        with contextlib.suppress(Exception):
            self.kill(signal.SIGKILL)


def collector(tmp: Path, port: int, *extra: str) -> Service:
    return Service([*CLI, "collector", "--listen", f"127.0.0.1:{port}", "--store", str(tmp / "collector.db"),
                    *extra], tmp / "collector.log", "collector listening on")


def agent(tmp: Path, port: int, host_id: str, *extra: str) -> Service:
    return Service([*CLI, "agent", "--collector", f"127.0.0.1:{port}", "--spool-dir", str(tmp / "spool"),
                    "--state-dir", str(tmp / "agent-state"),
                    "--host-id", host_id, "--quiet", "--status-interval", "1", *extra],
                   tmp / "agent.log", "capture probes attached")


def stored_events(db: Path, host_id: str) -> list[tuple[int, str, bytes]]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT seq, kind, body FROM events WHERE host_id=? ORDER BY seq", (host_id,)).fetchall()
    finally:
        con.close()


def cli_json(port: int, *args: str) -> dict:
    out = subprocess.run([*CLI, *args, "--collector", f"127.0.0.1:{port}", "--json"], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert out.returncode in (0, 5), out.stderr
    return json.loads(out.stdout)

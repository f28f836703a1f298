"""``gpuguard agent``: capture on this host, print and/or ship to a collector."""

from __future__ import annotations

import gc
import hmac
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from agent.config import AgentConfig
from agent.encoded import EncodedEvent, expand
from agent.identity import HostIdentity
from agent.loader import LoaderError
from agent.output import HEADER_LINE, format_json, format_line
from agent.pacing import DrainPacer
from agent.runtime import Capture
from gpuguard.credentials import CredentialStore
from gpuguard.private import check_private
from gpuguard.v1 import events_pb2 as pb

log = logging.getLogger("gpuguard.agent")

BUSY_DRAIN_S = 0.05      # while records flow: at least this long between drains (a burst is one batch)
BULK_PACE_MS = 250       # while only bulk records (connects, flows) come: this long between drains
IDLE_WAIT_MS = 500       # after an empty drain: how long to wait for the priority ring to wake the loop

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG, EXIT_PREREQ = 0, 1, 2, 3
GC_THRESHOLDS = (20_000, 20, 20)     # Python's default is (700, 10, 10)


def tune_gc() -> None:
    """The agent holds tens of thousands of long-lived objects (the process table, its caches) and makes a few
    short-lived ones per event. With the default thresholds the collector walked the long-lived ones again and
    again: ~10 % of the agent's CPU in an exec storm (bench/agent_cpu.py). What start-up made is frozen out of
    collection, and collections come after more allocations (the agent makes few reference cycles)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def printer(mode: str):
    fmt = format_json if mode == "json" else format_line
    if mode == "human":
        print(HEADER_LINE, flush=True)

    def sink(records: list) -> None:
        events = (r.event() if type(r) is EncodedEvent else r for r in expand(records))
        out = "\n".join(fmt(r) for r in events if r.WhichOneof("body") != "status")
        if out:
            try:
                sys.stdout.write(out + "\n")
                sys.stdout.flush()
            except BrokenPipeError:
                pass
    return sink


class Agent:
    """Capture + (spool -> shipper) + (enforcer), with periodic status."""

    def __init__(self, cfg: AgentConfig, print_mode: str = "") -> None:
        self.cfg = cfg
        self.identity = HostIdentity.current(cfg.host_id or None)
        self.capture = Capture(self.identity, cfg.patterns(), cfg.ringbuf_pages, cfg.hash_executables,
                               budget_per_s=cfg.capture_budget_per_s, packet_sockets=cfg.packet_sockets)
        self.spool = None
        self.shipper = None
        self.enforcer = None
        self.print_mode = print_mode
        self._last_status = time.monotonic()
        self._said_goodbye = False
        self._last_records = 0
        self.metrics_server = None
        self.enforcement_unavailable = ""      # why enforcement could not be loaded, for the heartbeat

    def start(self) -> None:
        self.capture.ignore_pids.add(os.getpid())
        self.capture.enricher.encode_events = True       # every sink below takes encoded events
        self.capture.start()
        if self.cfg.gpu_sample_s > 0:
            from agent.gpu_usage import GpuUsageReporter, NvmlSampler  # noqa: PLC0415

            self.capture.gpu = GpuUsageReporter(NvmlSampler(self.cfg.nvml_library), self.capture.enricher,
                                                self.cfg.gpu_sample_s)
        headers = self.capture.probes.headers
        log.info("kernel headers: %s — %s", headers.path, headers.reason)
        if self.print_mode:
            self.capture.sinks.append(printer(self.print_mode))
        if self.cfg.enforce:
            self._start_enforcement()
        if self.cfg.collector:
            from agent.enroll import Credential  # noqa: PLC0415
            from agent.shipper import Shipper  # noqa: PLC0415
            from agent.spool import Spool  # noqa: PLC0415

            tls = (self.cfg.tls_ca, self.cfg.tls_cert, self.cfg.tls_key)
            token = Credential(self.identity, self.cfg.collector, self.cfg.token_file, self.cfg.auth_dir,
                               self.cfg.state_dir, self.cfg.join_token_file, tls)
            if not token():
                log.warning("no agent credential found (--token-file, --join-token-file, or %s): the collector "
                            "will refuse the stream unless it authenticates this agent by its TLS certificate",
                            CredentialStore(self.cfg.auth_dir or None).token_path("agent"))
            self.spool = Spool(self.cfg.spool_dir, self.cfg.spool_max_bytes,
                               fsync_interval_s=max(self.cfg.spool_fsync_ms, 0) / 1000)
            check_private(self.cfg.spool_dir, "the spool directory")
            self.capture.sinks.append(self.spool.append)
            self.shipper = Shipper(
                self.cfg.collector, self.spool, self.identity, token, self.cfg.batch_max_events,
                self.cfg.batch_max_delay_ms / 1000,
                on_command=self.enforcer.on_command if self.enforcer else None,
                policy_version=(lambda: self.enforcer.policy_version) if self.enforcer else (lambda: 0),
                tls=tls, heartbeat_s=self.cfg.status_interval_s,
            )
            self.capture.sinks.append(self.shipper.notify)
            threading.Thread(target=self.shipper.run, name="shipper", daemon=True).start()
            log.info("shipping to %s (spool %s, %d events waiting)", self.cfg.collector, self.cfg.spool_dir,
                     self.spool.depth())
        if self.cfg.metrics:
            self.metrics_server = serve_metrics(self)
            log.info("metrics on %s/metrics", self.metrics_server.url)
        tune_gc()
        pins = self.enforcer.pins if self.enforcer else None
        log.info("agent running: capture%s%s", f", enforcement (pinned: {', '.join(pins.listed()) or 'none'})"
                 if pins else ", enforcement" if self.enforcer else "",
                 f", shipping to {self.cfg.collector}" if self.cfg.collector else "")

    def _start_enforcement(self) -> None:
        """The enforcement programs are their own BPF object (agent/loader.py): when it cannot be built or verified,
        the agent goes on observing and says so - its heartbeat then carries no policy, which the collector raises
        as enforcement drift for this host - rather than leaving the node blind as well as unenforced."""
        from agent.enforce import Enforcer  # noqa: PLC0415

        try:
            self.capture.probes.enforcement()
        except LoaderError as exc:
            log.error("enforcement unavailable, this agent only observes (the collector shows this host's "
                      "enforcement drift): %s", exc)
            self.enforcement_unavailable = str(exc)[:500]
            return
        self.enforcer = Enforcer(self.capture, state_dir=self.cfg.state_dir)
        check_private(self.cfg.state_dir, "the agent's state directory")
        self.enforcer.start()
        self.capture.sinks.append(self.enforcer.on_records)
        self.capture.injected.append(self.enforcer.injected)

    def status(self) -> dict:
        now = time.monotonic()
        rate = (self.capture.stats.records - self._last_records) / max(now - self._last_status, 1e-9)
        lost = dict(self.capture.kernel_lost())
        if self.capture.stats.enrich_failed:
            lost["agent_enrich_failed"] = self.capture.stats.enrich_failed
        self._last_status, self._last_records = now, self.capture.stats.records
        return {
            "events_per_sec": round(rate, 1), "events_total": self.capture.stats.records,
            "kernel_lost": lost,
            "spool_depth": self.spool.depth() if self.spool else 0,
            "spool_bytes": self.spool.size_bytes() if self.spool else 0,
            "dropped": self.spool.stats.dropped if self.spool else 0,
            "policy_version": self.enforcer.policy_version if self.enforcer else 0,
            "agent_started_ns": self.shipper.started_ns if self.shipper else 0,
            "heartbeat_s": self.cfg.status_interval_s,
            "programs": self.enforcer.programs() if self.enforcer else [],
            "quarantined": self.shipper.quarantine.count if self.shipper else 0,
            "enforcing": self.enforcer is not None,
            "enforcement_unavailable": self.enforcement_unavailable,
        }

    def emit_status(self, stopping: bool = False) -> None:
        st = self.status()
        st["stopping"] = stopping
        log.info("status: %.0f ev/s, %d total, kernel lost %s, spool depth %d, dropped %d, connected %s",
                 st["events_per_sec"], st["events_total"], st["kernel_lost"] or 0, st["spool_depth"],
                 st["dropped"], self.shipper.connected.is_set() if self.shipper else "-")
        if self.spool:
            status = pb.AgentStatus(**{k: v for k, v in st.items() if k != "kernel_lost"})
            status.kernel_lost.update(st["kernel_lost"])
            self.spool.append([pb.Event(ts_ns=time.time_ns(), boot_id=self.identity.boot_id, status=status)])
            self.shipper.notify()

    def run(self) -> None:
        """The capture loop, paced by the priority ring: after a drain that found records, a wait that
        agent/pacing.py sets from what drains cost (50 ms on a node where they are cheap, up to --drain-max-ms
        where they are dear, shorter whenever the priority ring fills fast: a burst is handled as one batch, which
        is what makes a record cheap), then a wait that the priority ring's first record (exec, exit, fork,
        enforcement) cuts short - probes/gpuguard.h: adaptive wakeup - or that ends BULK_PACE_MS after the last
        drain, so a flood of connects alone is drained in batches of a quarter second (most of what a drain costs
        is the same for 100 records or 2,000: bench/agent_cpu.py). After an empty drain the wait is IDLE_WAIT_MS,
        so an idle agent wakes a few times a second. Every wait ends when a heartbeat is due: the collector calls
        an agent silent after a few missed heartbeats, so they must keep their interval, not drift by a wait."""
        stop = self.capture.stop_event
        pacer = DrainPacer(ring_bytes=self.capture.probes.priority_pages * os.sysconf("SC_PAGE_SIZE"),
                           max_s=max(self.cfg.drain_max_ms, 1000 * BUSY_DRAIN_S) / 1000, min_s=BUSY_DRAIN_S)
        busy, pace_s, last_drain = True, BUSY_DRAIN_S, time.monotonic()
        while not stop.is_set():
            if busy:
                stop.wait(pace_s)
            wait_ms = max(BULK_PACE_MS - 1000 * pace_s, 0) if busy else IDLE_WAIT_MS
            status_due_ms = (self._last_status + self.cfg.status_interval_s - time.monotonic()) * 1000
            drained = self.capture.probes.poll(int(min(wait_ms, max(1.0, status_due_ms))))
            cpu_before = time.thread_time()      # after the poll's wait: what the drain costs, not how long it waited
            self.capture.process(drained)
            if self.spool:
                self.spool.sync_due()               # a deferred fsync (agent/spool.py), once its interval is over
            now = time.monotonic()
            busy = len(drained) > 0
            if busy:
                pace_s = pacer.wait_s(time.thread_time() - cpu_before, drained.priority_bytes(), now - last_drain)
            last_drain = now
            if now - self._last_status >= self.cfg.status_interval_s:
                self.emit_status()
        self.say_goodbye()                   # first: what follows (the last drain, detaching) may take seconds
        self.capture.process(self.capture.probes.drain())

    def say_goodbye(self) -> None:
        """Tell the collector this is a clean stop, once, before anything slow: its silence then is expected, and
        a stop that takes longer than the collector's patience is not reported as an agent gone silent."""
        if self.shipper and not self._said_goodbye:
            self._said_goodbye = True
            self.emit_status(stopping=True)

    def close(self) -> None:
        self.say_goodbye()                      # if the loop did not (a failed start)
        if self.metrics_server:
            self.metrics_server.close()
        if self.shipper:
            deadline = time.monotonic() + 3
            while self.spool.depth() and self.shipper.connected.is_set() and time.monotonic() < deadline:
                time.sleep(0.05)
            self.shipper.stop()
        if self.enforcer:
            self.enforcer.close()
        self.capture.close()
        if self.spool:
            self.spool.close()


def serve_metrics(agent: Agent):
    """/metrics for Prometheus: loopback only, unless scrapers must present metrics_token_file's token."""
    from prometheus_client import make_wsgi_app  # noqa: PLC0415

    from agent.metrics import agent_registry  # noqa: PLC0415
    from gpuguard.httpd import HttpServer, bearer_guard, require_token_or_loopback  # noqa: PLC0415

    cfg = agent.cfg
    token = Path(cfg.metrics_token_file).read_text().strip() if cfg.metrics_token_file else ""
    require_token_or_loopback(cfg.metrics, bool(token), "the agent's metrics")
    app = make_wsgi_app(agent_registry(agent))
    if token:
        app = bearer_guard(app, lambda presented: hmac.compare_digest(presented, token))
    return HttpServer(cfg.metrics, app)


def run_agent(cfg: AgentConfig, print_mode: str) -> int:
    try:
        agent = Agent(cfg, print_mode)
    except (OSError, RuntimeError) as exc:     # no cgroup2 mount and none could be made, ...
        log.error("cannot start agent: %s", exc)
        return EXIT_PREREQ
    try:
        agent.start()
    except LoaderError as exc:
        log.error("cannot start capture: %s", exc)
        agent.close()
        return EXIT_PREREQ
    except ValueError as exc:                   # e.g. metrics off loopback without a token
        log.error("cannot start agent: %s", exc)
        agent.close()
        return EXIT_CONFIG
    except OSError as exc:
        log.error("cannot start agent: %s", exc)
        agent.close()                           # detach whatever was attached before the failure
        return EXIT_FAILURE

    def on_signal(signum, _frame):
        log.info("received %s, detaching probes", signal.Signals(signum).name)
        agent.capture.stop_event.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        agent.run()
    finally:
        lost = agent.capture.kernel_lost()
        agent.close()
        log.info("agent stopped: %d events captured, kernel lost %s", agent.capture.stats.records, lost or 0)
    return EXIT_OK

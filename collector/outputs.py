"""Where alerts go besides the store: JSON lines (a file or stdout), syslog, a webhook.

Each new alert, and each change of an alert's state (expected -> confirmed, ...), is published once to
every configured output. Publishing never blocks detection: the webhook has its own thread, a bounded
queue (the oldest alert is dropped, and counted, when a receiver stays down) and retries with backoff.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from google.protobuf.json_format import MessageToDict

from gpuguard.v1 import policy_pb2 as ppb

log = logging.getLogger(__name__)

SEVERITY_TO_SYSLOG = {"info": "info", "low": "notice", "medium": "warning", "high": "error", "critical": "critical"}


def alert_json(alert: ppb.Alert) -> dict:
    """The alert as JSON, with when it was published (``published_ns``: detection latency, seen by the SIEM)."""
    out = MessageToDict(alert, preserving_proto_field_name=True)
    out["published_ns"] = str(time.time_ns())
    return out


class JsonLinesOutput:
    """One JSON object per line, flushed per alert: a file path (appended) or "-" for stdout."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._lock = threading.Lock()
        self._file = sys.stdout if target == "-" else open(Path(target), "a", buffering=1)  # noqa: SIM115

    def __call__(self, alert: ppb.Alert) -> None:
        line = json.dumps(alert_json(alert), sort_keys=True)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not sys.stdout:
            self._file.close()


class _SysLogHandler(logging.handlers.SysLogHandler):
    """Send failures raise to the caller (the output's thread counts them) instead of printing a traceback."""

    def handleError(self, record) -> None:  # noqa: N802 - logging's name
        raise  # noqa: PLE0704 - re-raises the send error handleError was called for

    def createSocket(self) -> None:  # noqa: N802 - logging's name; also runs on every reconnect
        super().createSocket()
        if self.socktype == socket.SOCK_STREAM and self.socket is not None:
            self.socket.settimeout(SYSLOG_SEND_TIMEOUT_S)   # a receiver that never reads: fail, never hang


class SyslogOutput:
    """RFC 3164 messages through the standard library: "udp://HOST:PORT", "tcp://HOST:PORT" or a socket path."""

    def __init__(self, target: str) -> None:
        url = urlparse(target)
        if url.scheme in ("udp", "tcp"):
            address = (url.hostname or "127.0.0.1", url.port or 514)
            kind = socket.SOCK_DGRAM if url.scheme == "udp" else socket.SOCK_STREAM
            self.handler = _SysLogHandler(address=address, socktype=kind)
        else:
            self.handler = _SysLogHandler(address=target or "/dev/log")
        self.handler.ident = "gpuguard: "
        self.handler.append_nul = False          # plain RFC 3164 lines: most receivers do not expect a NUL
        self.handler.setFormatter(logging.Formatter("%(message)s"))

    def __call__(self, alert: ppb.Alert) -> None:
        record = logging.LogRecord("gpuguard.alert", logging.WARNING, __file__, 0, json.dumps(alert_json(alert),
                                   sort_keys=True), None, None)
        level = SEVERITY_TO_SYSLOG.get(alert.severity, "warning")
        self.handler.mapPriority = lambda _name, level=level: level      # the alert's severity, not the logger's
        self.handler.emit(record)

    def close(self) -> None:
        self.handler.close()


class Detached:
    """Any synchronous output behind a bounded queue and a thread of its own: a receiver that accepts and never
    reads (a TCP syslog), or a stalled disk, costs that output alerts (oldest first, counted), never detection.
    Without it one slow syslog receiver halted detection fleet-wide (it sent under the policy lock)."""

    def __init__(self, inner: Callable[[ppb.Alert], None], max_queue: int = 10_000,
                 retry_backoff_s: float = 0.0) -> None:
        self.inner = inner
        self.max_backoff_s = retry_backoff_s       # > 0: a failed alert is retried (backoff up to this) until sent
        self.q: queue.Queue = queue.Queue(max_queue)
        self.delivered = self.dropped = self.failures = 0
        self.name = type(inner).__name__ if type(self) is Detached else type(self).__name__
        self._progress = time.monotonic()          # last delivery, or last time the queue was empty
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"alert-{type(inner).__name__}", daemon=True)
        self._thread.start()

    def __call__(self, alert: ppb.Alert) -> None:
        copy = ppb.Alert()
        copy.CopyFrom(alert)              # the caller keeps changing its alert; the queue keeps this state
        while True:
            try:
                self.q.put_nowait(copy)
                return
            except queue.Full:
                try:
                    self.q.get_nowait()
                    self.dropped += 1
                    if self.dropped & (self.dropped - 1) == 0:
                        log.error("alert output %s: queue full, dropped %d alerts so far (oldest first)",
                                  type(self.inner).__name__, self.dropped)
                except queue.Empty:
                    pass

    def stalled_s(self, now: float | None = None) -> float:
        """Seconds alerts have waited with none delivered (0 while it keeps up)."""
        if self.q.empty() and not self._busy:
            return 0.0
        return (now or time.monotonic()) - self._progress

    _busy = False

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                alert = self.q.get(timeout=0.5)
            except queue.Empty:
                self._progress = time.monotonic()
                continue
            self._busy = True
            backoff = 0.2
            while not self._stop.is_set():
                try:
                    self.inner(alert)
                    self.delivered += 1
                    self._progress = time.monotonic()
                    break
                except Exception as exc:
                    self.failures += 1
                    if self.failures & (self.failures - 1) == 0:
                        log.error("alert output %s failed (%d so far, %d alerts waiting): %s",
                                  type(self.inner).__name__, self.failures, self.q.qsize() + 1, exc)
                    if self.max_backoff_s <= 0:
                        break                      # not retried: the next alert
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self.max_backoff_s)
            self._busy = False

    def close(self, drain_s: float = 2.0) -> None:
        deadline = time.monotonic() + drain_s
        while not self.q.empty() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        self._thread.join(drain_s + 1)
        close = getattr(self.inner, "close", None)
        if close:
            close()


class WebhookOutput(Detached):
    """HTTP POST of the alert JSON. A slow or dead receiver never blocks: a bounded queue, one sender thread,
    retries with exponential backoff (up to max_backoff_s) while the receiver is down; when the queue is full
    the oldest alert is dropped and counted."""

    def __init__(self, url: str, max_queue: int = 10_000, timeout_s: float = 5.0, max_backoff_s: float = 30.0,
                 headers: dict[str, str] | None = None) -> None:
        if urlparse(url).scheme not in ("http", "https"):
            raise ValueError(f"webhook URL must be http(s)://..., got {url!r}")
        self.url, self.timeout_s = url, timeout_s
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        super().__init__(self._post, max_queue, retry_backoff_s=max_backoff_s)

    def _post(self, alert: ppb.Alert) -> None:
        body = json.dumps(alert_json(alert), sort_keys=True).encode()
        req = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # noqa: S310 - operator's own URL
            if resp.status >= 300:
                raise urllib.error.HTTPError(self.url, resp.status, "not accepted", resp.headers, None)


SYSLOG_SEND_TIMEOUT_S = 5.0
OUTPUT_STALL_S = 10.0             # an output that delivers nothing this long while alerts wait is alerted


def build_outputs(jsonl: str = "", syslog: str = "", webhook: str = "") -> list[Callable[[ppb.Alert], None]]:
    outputs: list = []
    if jsonl:
        outputs.append(Detached(JsonLinesOutput(jsonl)))
    if syslog:
        outputs.append(Detached(SyslogOutput(syslog)))
    if webhook:
        outputs.append(WebhookOutput(webhook))
    return outputs


class AlertPublisher:
    """The one place an alert is recorded: stored, then published to the outputs when it is new or its
    state/outcome changed (detection and host health both come through here)."""

    def __init__(self, store, outputs: list[Callable[[ppb.Alert], None]] | None = None,
                 remember: int = 50_000) -> None:
        self.store = store
        self.outputs = outputs or []
        self.remember = remember
        self._published: dict[str, tuple[int, str]] = {}
        self._stalled: set[str] = set()
        self.watchers: list[Callable[[ppb.Alert], None]] = []   # in-process followers (collector/follow.py)
        self.published = self.failed = 0

    def record(self, alert: ppb.Alert) -> None:
        self.store.add_alert(alert)
        seen = (alert.state, alert.outcome)
        if self._published.get(alert.id) == seen:
            return                                   # nothing new about it: stored, not published again
        self._published.pop(alert.id, None)
        self._published[alert.id] = seen
        while len(self._published) > self.remember:
            self._published.pop(next(iter(self._published)))
        for watch in self.watchers:                  # followers (server push): a queue put each, never blocks
            watch(alert)
        for out in self.outputs:
            try:
                out(alert)
                self.published += 1
            except Exception as exc:   # an output must never stop detection
                self.failed += 1
                log.error("alert output %s failed: %s", type(out).__name__, exc)

    def check_outputs(self, stall_s: float = OUTPUT_STALL_S) -> list[str]:
        """An output that has delivered nothing for stall_s while alerts wait raises `alert-output-stalled`,
        once per episode (logged once); it clears when the output delivers again. Returns the stalled names."""
        stalled = []
        now = time.monotonic()
        for out in self.outputs:
            waited = out.stalled_s(now) if hasattr(out, "stalled_s") else 0.0
            name = getattr(out, "name", type(out).__name__)
            if waited < stall_s:
                self._stalled.discard(name)
                continue
            stalled.append(name)
            if name in self._stalled:
                continue
            self._stalled.add(name)
            log.error("alert output %s delivered nothing for %.0f s (%d waiting, %d dropped): alerts go to the "
                      "other outputs and the store", name, waited, out.q.qsize(), out.dropped)
            alert = ppb.Alert(id=f"output-stalled-{name}-{time.time_ns()}", rule_id="alert-output-stalled",
                              description=f"the {name} alert output delivers nothing (receiver stalled or down)",
                              severity="high", state=ppb.ALERT_ALERTED, outcome="alerted", host_id="collector",
                              ts_ns=time.time_ns())
            alert.matched.update({"output": name, "stalled_s": f"{waited:.0f}", "waiting": str(out.q.qsize()),
                                  "dropped": str(out.dropped)})
            self.record(alert)
        return stalled

    def close(self) -> None:
        for out in self.outputs:
            close = getattr(out, "close", None)
            if close:
                close()

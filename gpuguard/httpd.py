"""A small threaded WSGI server for the read-only HTTP endpoints (metrics, the timeline page).

Secure by default: an endpoint is served either with a bearer-token check, or, when it has no
way to check a token, on a loopback address only (``require_token_or_loopback``).
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

log = logging.getLogger(__name__)

WsgiApp = Callable[[dict, Callable], Iterable[bytes]]


MAX_CONNECTIONS = 64          # connections served at once; more are closed at accept (and counted)
IDLE_TIMEOUT_S = 10.0         # a connection that sends nothing (or stalls) for this long is closed


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    """A thread per connection, but at most MAX_CONNECTIONS of them: idle connections cannot pile up threads
    (1,500 idle connections made 1,514 threads before)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256      # the listen backlog (socketserver's default of 5 stalls clients in SYN_RECV)
    accepted = rejected = 0

    def process_request(self, request, client_address) -> None:
        self.accepted += 1
        slots = self.__dict__.setdefault("_slots", threading.BoundedSemaphore(MAX_CONNECTIONS))
        if not slots.acquire(blocking=False):
            self.rejected += 1
            if self.rejected & (self.rejected - 1) == 0:
                log.warning("http: %d connections refused so far (more than %d at once)", self.rejected,
                            MAX_CONNECTIONS)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        """A client that timed out or went away is not worth a traceback on stderr."""
        log.debug("http: request from %s ended with an error", client_address, exc_info=True)


class _QuietHandler(WSGIRequestHandler):
    timeout = IDLE_TIMEOUT_S      # the socket's timeout: a silent client does not keep its thread

    def log_message(self, fmt, *args) -> None:   # access logs at debug level, not on stderr
        log.debug("%s %s", self.address_string(), fmt % args)


def parse_addr(addr: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """'HOST:PORT', ':PORT' or 'PORT' -> (host, port); IPv6 as [::1]:PORT."""
    host, _, port = addr.rpartition(":")
    host = host.strip("[]") or default_host
    try:
        number = int(port)
    except ValueError as exc:
        raise ValueError(f"bad address {addr!r}: expected HOST:PORT") from exc
    if not 0 <= number < 65536:
        raise ValueError(f"bad port in {addr!r}")
    return host, number


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_token_or_loopback(addr: str, has_token: bool, what: str) -> None:
    host, _port = parse_addr(addr)
    if not has_token and not is_loopback(host):
        raise ValueError(f"{what} on {addr} would be readable by anyone who reaches it: bind it to 127.0.0.1, "
                         "or give it a token to require")


def bearer_guard(app: WsgiApp, allowed: Callable[[str], bool], open_paths: tuple[str, ...] = ()) -> WsgiApp:
    """401 unless the request carries ``Authorization: Bearer T`` and allowed(T); open_paths skip the check."""
    def guarded(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path in open_paths:
            return app(environ, start_response)
        header = environ.get("HTTP_AUTHORIZATION", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if not token or not allowed(token):
            start_response("401 Unauthorized", [("Content-Type", "text/plain"),
                                                ("WWW-Authenticate", 'Bearer realm="gpuguard"')])
            return [b"a bearer token with the reader role is required\n"]
        return app(environ, start_response)
    return guarded


class HttpServer:
    """Serves a WSGI app on a daemon thread until close()."""

    def __init__(self, addr: str, app: WsgiApp, tls: tuple[str, str] | None = None) -> None:
        host, port = parse_addr(addr)
        self.server = make_server(host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler)
        if tls and tls[0]:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(tls[0], tls[1])
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.host, self.port = host, self.server.server_address[1]
        self.scheme = "https" if tls and tls[0] else "http"
        self.thread = threading.Thread(target=self.server.serve_forever, name=f"http-{port}", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

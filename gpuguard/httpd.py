"""The read-only HTTP endpoints (metrics, the timeline page): one asyncio server, no thread per connection.

Secure by default: an endpoint is served either with a bearer-token check, or, when it has no
way to check a token, on a loopback address only (``require_token_or_loopback``).

Connections live on an event loop (the collector's own, or one thread of the agent's); only a request being
answered takes a thread, from a small pool that runs the WSGI app (the page's queries, prometheus_client). A
request's head must arrive within HEADER_TIMEOUT_S and fit in MAX_HEAD_BYTES; a keep-alive connection idle for
IDLE_TIMEOUT_S is closed; beyond MAX_CONNECTIONS open at once, new ones get a 503 and are closed (counted).
Hand-written on asyncio streams (~150 lines) rather than aiohttp: aiohttp has neither a head-read timeout nor a
connection cap, so the parts this server exists for would be hand-written around it anyway, and the apps here
are WSGI.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import ipaddress
import logging
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from urllib.parse import unquote

log = logging.getLogger(__name__)

WsgiApp = Callable[[dict, Callable], Iterable[bytes]]


MAX_CONNECTIONS = 64          # connections open at once; more get a 503 at accept (and are counted)
HEADER_TIMEOUT_S = 10.0       # a request's head must arrive within this (slow-header clients are cut)
IDLE_TIMEOUT_S = 10.0         # a keep-alive connection that sends nothing for this long is closed
WRITE_TIMEOUT_S = 30.0        # a client that does not read its answer is cut
MAX_HEAD_BYTES = 16 << 10     # request line + headers
MAX_BODY_BYTES = 64 << 10     # these endpoints are read-only: small bodies at most
WORKERS = 4                   # threads that run the app (requests answered at once)
BACKLOG = 256


class _Request(ValueError):
    """A request this server will not pass on (the status to answer with)."""

    def __init__(self, status: HTTPStatus, why: str) -> None:
        super().__init__(why)
        self.status = status


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
    """Serves a WSGI app on an asyncio loop: the caller's (the collector's) or one thread of its own."""

    def __init__(self, addr: str, app: WsgiApp, tls: tuple[str, str] | None = None,
                 loop: asyncio.AbstractEventLoop | None = None, streams: dict | None = None) -> None:
        host, port = parse_addr(addr)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.create_server((host, port), family=family, backlog=BACKLOG)   # errors surface here
        self.sock.setblocking(False)
        self.app = app
        self.streams = streams or {}          # path -> async handler(environ, send): a response streamed on the loop
        self.ssl = None
        if tls and tls[0]:
            self.ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ssl.load_cert_chain(tls[0], tls[1])
        self.host, self.port = host, self.sock.getsockname()[1]
        self.scheme = "https" if self.ssl else "http"
        self.pool = ThreadPoolExecutor(WORKERS, thread_name_prefix=f"http-{self.port}")
        self.accepted = self.rejected = self.timed_out = self.active = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.base_events.Server | None = None
        self._thread = None
        if loop is None:                          # the agent: a loop of its own, in one daemon thread
            self.loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self.loop.run_forever, name=f"http-{self.port}", daemon=True)
            self._thread.start()
            asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result(10)
        else:                                     # the collector: its own loop, started from within it
            self.loop = loop
            self._listening = loop.create_task(self._listen())

    async def started(self) -> None:
        """On the caller's loop: wait until it listens (and raise what stopped it)."""
        if self._thread is None:
            await self._listening

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    async def _listen(self) -> None:
        tls = {"ssl": self.ssl, "ssl_handshake_timeout": HEADER_TIMEOUT_S} if self.ssl else {}
        self._server = await asyncio.start_server(self._connection, sock=self.sock, limit=MAX_HEAD_BYTES, **tls)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.active >= MAX_CONNECTIONS:
            self.rejected += 1
            if self.rejected & (self.rejected - 1) == 0:
                log.warning("http: %d connections refused so far (more than %d at once)", self.rejected,
                            MAX_CONNECTIONS)
            writer.write(_response(HTTPStatus.SERVICE_UNAVAILABLE, [("Content-Type", "text/plain")],
                                   b"too many connections\n", keep=False))
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                await asyncio.wait_for(writer.drain(), 1)
            writer.close()
            return
        self.active += 1
        self._writers.add(writer)
        try:
            first = True
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"),
                                                  HEADER_TIMEOUT_S if first else IDLE_TIMEOUT_S)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    self.timed_out += 1
                    return
                except asyncio.LimitOverrunError:
                    writer.write(_response(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, [], b"", keep=False))
                    return
                first = False
                try:
                    environ, keep = _environ(head, self)
                    length = int(environ.get("CONTENT_LENGTH") or 0)
                    if not 0 <= length <= MAX_BODY_BYTES:
                        raise _Request(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large")
                    body = await asyncio.wait_for(reader.readexactly(length), HEADER_TIMEOUT_S) if length else b""
                except _Request as bad:
                    writer.write(_response(bad.status, [("Content-Type", "text/plain")], f"{bad}\n".encode(),
                                           keep=False))
                    return
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    return
                environ["wsgi.input"] = io.BytesIO(body)
                stream = self.streams.get(environ["PATH_INFO"])
                if stream is not None:                 # pushed, chunk by chunk, until either side stops
                    await self._stream(stream, environ, writer)
                    return
                status, headers, payload = await self.loop.run_in_executor(self.pool, self._answer, environ)
                writer.write(_response(status, headers, payload, keep))
                await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
                if not keep:
                    return
        except (TimeoutError, ConnectionError, OSError):
            return
        finally:
            self.active -= 1
            self._writers.discard(writer)
            writer.close()

    async def _stream(self, handler, environ: dict, writer: asyncio.StreamWriter) -> None:
        """A streamed answer (server push): chunked NDJSON until the handler returns or the client leaves. The
        handler answers an error itself by returning (status, body) before its first send."""
        started = False

        async def send(data: bytes) -> None:
            nonlocal started
            if not started:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nCache-Control: no-store\r\n"
                             b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
                started = True
            writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)

        refused = await handler(environ, send)
        if refused and not started:
            status, body = refused
            writer.write(_response(status, [("Content-Type", "application/json")], body, keep=False))
        elif started:
            writer.write(b"0\r\n\r\n")
        await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)

    def _answer(self, environ: dict) -> tuple[str, list, bytes]:
        """Run the WSGI app (in a pool thread): (status line, headers, body)."""
        started: list = []

        def start_response(status, headers, exc_info=None):
            started[:] = [status, headers]

        try:
            result = self.app(environ, start_response)
            try:
                payload = b"".join(result)
            finally:
                if hasattr(result, "close"):
                    result.close()
            return started[0], started[1], payload
        except Exception:
            log.exception("http: %s %s failed", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"))
            return "500 Internal Server Error", [("Content-Type", "text/plain")], b"internal error\n"

    def close(self) -> None:
        if self._thread is not None:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()
        else:                                     # on the caller's loop, from within it
            if self._server is not None:
                self._server.close()
            else:
                self._listening.cancel()
                self.sock.close()
            for w in list(self._writers):
                w.close()
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()


def _environ(head: bytes, server: HttpServer) -> tuple[dict, bool]:
    """A request head -> (WSGI environ, keep the connection open after the answer)."""
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
    except ValueError:
        raise _Request(HTTPStatus.BAD_REQUEST, "malformed request line") from None
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise _Request(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, "HTTP/1.0 or 1.1 only")
    path, _, query = target.partition("?")
    environ = {"REQUEST_METHOD": method, "PATH_INFO": unquote(path), "QUERY_STRING": query,
               "SERVER_PROTOCOL": version, "SERVER_NAME": server.host, "SERVER_PORT": str(server.port),
               "SCRIPT_NAME": "", "wsgi.version": (1, 0), "wsgi.url_scheme": server.scheme,
               "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": False,
               "wsgi.run_once": False}
    connection = ""
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise _Request(HTTPStatus.BAD_REQUEST, "malformed header")
        name, value = name.strip().upper().replace("-", "_"), value.strip()
        if name == "CONNECTION":
            connection = value.lower()
        if name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            environ[name] = value
        else:
            environ[f"HTTP_{name}"] = value
    keep = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    return environ, keep


def _response(status, headers: list, body: bytes, keep: bool) -> bytes:
    line = status if isinstance(status, str) else f"{status.value} {status.phrase}"
    fixed = [(k, v) for k, v in headers if k.lower() not in ("content-length", "connection")]
    fixed += [("Content-Length", str(len(body))), ("Connection", "keep-alive" if keep else "close")]
    return (f"HTTP/1.1 {line}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fixed) + "\r\n").encode("latin-1") + body

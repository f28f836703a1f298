"""gRPC servicers (grpc.aio), kept thin: authenticate, parse, hand to the core, answer.

Every call is authenticated first (collector/auth.py): the agent stream needs the
``agent`` role and is bound to that identity's host; queries need ``reader``;
policy changes need ``admin``. The agent stream takes raw bytes and parses them
itself, so a malformed message gets a StreamError reply instead of killing the
stream. Messages over the hard gRPC limit are refused by gRPC with
RESOURCE_EXHAUSTED. Each stream is bounded: a hello within ``hello_timeout_s``,
at most ``outbox`` replies queued (an agent that does not read stops being
read), and at most ``max_streams`` streams at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError

from collector.auth import STAMP_MAX_AGE_S, Authenticator, metadata_token, peer_of, require
from collector.hub import AgentHub
from collector.ingest import Ingestor, StoreUnavailable, StreamProblem, Unauthenticated
from collector.query import QUERY_ROLES, QueryService
from gpuguard import __version__
from gpuguard.credentials import JOIN_ROLE, CredentialError
from gpuguard.v1 import collector_pb2 as cpb
from gpuguard.v1 import collector_pb2_grpc as cgrpc

log = logging.getLogger(__name__)

HARD_MESSAGE_LIMIT = 16 << 20      # gRPC refuses anything larger
REVALIDATE_S = 0.5                 # an open stream's credential is checked this often
SOFT_MESSAGE_LIMIT = 8 << 20       # we answer with a StreamError above this


@dataclass(frozen=True)
class StreamLimits:
    soft_message_bytes: int = SOFT_MESSAGE_LIMIT
    max_streams: int = 4096
    outbox: int = 256
    hello_timeout_s: float = 10.0


def _error(code: str, message: str, retry_after_ms: int = 0, seq: int = 0) -> cpb.CollectorMessage:
    return cpb.CollectorMessage(error=cpb.StreamError(code=code, message=message[:2000],
                                                      retry_after_ms=retry_after_ms, seq=seq))


class _End(Exception):
    """Ends a stream with a gRPC status (after the replies queued before it)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class CollectorServicer:
    def __init__(self, ingestor: Ingestor, hub: AgentHub, auth: Authenticator, on_connect=None,
                 on_policy_ack=None, on_disconnect=None, limits: StreamLimits | None = None,
                 on_kill_ack=None) -> None:
        self.ingestor = ingestor
        self.hub = hub
        self.auth = auth
        self.on_connect = on_connect
        self.on_policy_ack = on_policy_ack
        self.on_kill_ack = on_kill_ack
        self.on_disconnect = on_disconnect
        self.limits = limits or StreamLimits()
        self.active_streams = 0
        self._open: dict[asyncio.Queue, tuple] = {}     # outq -> (identity, peer, still_valid): watched together
        self._watcher: asyncio.Task | None = None

    async def Stream(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext):  # noqa: N802
        who = self.auth.identify(context)
        peer = peer_of(context)
        if who is None:
            self.auth.warn_once(f"{peer}|stream", "refused agent stream from %s: no valid credential", peer)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no valid agent credential")
        if not who.can("agent"):
            self.auth.warn_once(f"{who.name}|stream", "refused agent stream for %s (role %s)", who.name, who.role)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"identity {who.name!r} has role {who.role}; streaming events needs role agent")
        if self.active_streams >= self.limits.max_streams:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"collector already serves {self.active_streams} agent streams; retry later")
        self.active_streams += 1
        outq: asyncio.Queue = asyncio.Queue(maxsize=self.limits.outbox)
        session = None
        still_valid = self.auth.revalidator(context)
        reader = asyncio.create_task(self._read(requests, who, outq, still_valid))
        self._open[outq] = (who, peer, still_valid)
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch_credentials())
        try:
            while True:
                msg = await outq.get()
                if msg is None:
                    break
                if isinstance(msg, tuple):
                    session = msg[1]
                    self.hub.attach(session.host_id, outq)
                    continue
                if isinstance(msg, _End):
                    await context.abort(msg.code, msg.message)
                yield msg
        finally:
            self.active_streams -= 1
            reader.cancel()
            self._open.pop(outq, None)
            if session is not None:
                self.hub.detach(session.host_id, outq)
                if self.on_disconnect:
                    self.on_disconnect(session)
                try:
                    await asyncio.to_thread(self.ingestor.store.set_agent_state, session.host_id, connected=0)
                except Exception as exc:   # the store may be the reason the stream ended
                    log.warning("agent %s: could not record the disconnect: %s", session.host_id, exc)
                log.info("agent %s disconnected (%d events stored, %d duplicates this stream)",
                         session.host_id, session.events, session.duplicates)

    async def _watch_credentials(self) -> None:
        """One task for every open stream: a silent stream whose credential is revoked (or re-roled) ends within
        half a second; it receives no kill order or policy after that, and the ending is audited. A tick costs one
        stat() while the credentials file is unchanged, however many streams are open."""
        while self._open:
            await asyncio.sleep(REVALIDATE_S)
            for outq, (who, peer, still_valid) in list(self._open.items()):
                if still_valid(STAMP_MAX_AGE_S):
                    continue
                self._open.pop(outq, None)
                log.warning("credential %r revoked or changed: closing its stream from %s", who.name, peer)
                if self.auth.audit is not None:
                    await asyncio.to_thread(self.auth.audit, who.name, who.role, peer, "credentials.stream-closed",
                                            "the credential was revoked or changed while its stream was open", True)
                await outq.put(_End(grpc.StatusCode.UNAUTHENTICATED,
                                    f"credential {who.name!r} was revoked: the stream ends"))

    async def Enroll(self, request: cpb.EnrollRequest, context: grpc.aio.ServicerContext):  # noqa: N802
        """A new node with a live join token gets its own agent credential (host-bound); audited either way."""
        peer = peer_of(context)
        token = metadata_token(context.invocation_metadata())
        who = self.auth.verifier.verify(token) if token else None
        host = request.host.host_id[:128]
        if who is None or who.role != JOIN_ROLE:
            self.auth.warn_once(f"{peer}|enroll", "refused enrollment from %s: no live join token", peer)
            await self._audit(who, peer, f"refused: host {host!r}: no live join token", False)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "enrollment needs a live join token")
        try:
            name, new_token = await asyncio.to_thread(self.auth.verifier.store.enroll, token, host)
        except CredentialError as exc:
            await self._audit(who, peer, f"refused: host {host!r}: {exc}", False)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        log.info("enrolled host %s (%s) from %s with %s", host, request.host.hostname[:128], peer, who.name)
        await self._audit(who, peer, f"{name} for host {host} ({request.host.hostname[:128]})", True)
        return cpb.EnrollReply(name=name, token=new_token)

    async def _audit(self, who, peer: str, detail: str, ok: bool) -> None:
        if self.auth.audit is not None:
            await asyncio.to_thread(self.auth.audit, who.name if who else "?", who.role if who else "none", peer,
                                    "credentials.enroll", detail, ok)

    async def _read(self, requests, who, outq: asyncio.Queue, still_valid=lambda: True) -> None:
        session = None
        it = requests.__aiter__()
        try:
            while True:
                try:
                    if session is None:                  # the hello has a deadline
                        raw = await asyncio.wait_for(it.__anext__(), self.limits.hello_timeout_s)
                    else:                                # then no timer per message (a task and a timer each)
                        raw = await it.__anext__()
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise _End(grpc.StatusCode.DEADLINE_EXCEEDED,
                               f"no hello within {self.limits.hello_timeout_s:.0f}s") from None
                if not still_valid():        # revoked since the stream opened: nothing more from it counts
                    raise _End(grpc.StatusCode.UNAUTHENTICATED,
                               f"credential {who.name!r} was revoked: the stream ends, nothing more is stored")
                session = await self._handle(raw, who, session, outq)
        except asyncio.CancelledError:
            raise
        except _End as end:
            log.warning("agent stream %s ended: %s", who.name, end.message)
            await outq.put(end)
        except Exception as exc:
            log.warning("agent stream %s: read ended: %s", who.name, exc)
        finally:
            try:
                outq.put_nowait(None)
            except asyncio.QueueFull:       # the writer is stuck on a peer that does not read
                pass

    async def _handle(self, raw: bytes, who, session, outq: asyncio.Queue):
        if len(raw) > self.limits.soft_message_bytes:
            await outq.put(_error("RESOURCE_EXHAUSTED", f"message of {len(raw)} bytes exceeds "
                                  f"{self.limits.soft_message_bytes}; split the batch"))
            return session
        try:
            msg = cpb.AgentMessage.FromString(raw)
        except DecodeError as exc:
            await outq.put(_error("INVALID_ARGUMENT", f"malformed AgentMessage ({len(raw)} bytes): {exc}"))
            return session
        kind = msg.WhichOneof("msg")
        try:
            if kind == "hello":
                if session is not None:
                    raise StreamProblem("FAILED_PRECONDITION", "second hello on one stream")
                session = await asyncio.to_thread(self.ingestor.hello, msg.hello, who)
                await outq.put(("session", session))
                await outq.put(cpb.CollectorMessage(hello=cpb.HelloReply(
                    stored_through_seq=session.stored_through, collector_version=__version__, raw_batches=True)))
                if self.on_connect:
                    for m in self.on_connect(session, msg.hello):
                        await outq.put(m)
            elif session is None:
                raise StreamProblem("FAILED_PRECONDITION", f"{kind or 'empty message'} before hello")
            elif kind in ("batch", "raw"):
                if kind == "raw" and self.ingestor.log_sink is not None:     # forwarded on this loop, no decode
                    ack, problems = await self.ingestor.raw_batch_async(session, msg.raw)
                else:
                    ingest = self.ingestor.batch if kind == "batch" else self.ingestor.raw_batch
                    ack, problems = await asyncio.to_thread(ingest, session, getattr(msg, kind))
                for p in problems:
                    await outq.put(_error(p.code, p.message, seq=p.seq))
                await outq.put(cpb.CollectorMessage(ack=cpb.Ack(seq=ack)))
            elif kind == "policy_ack":
                session.policy_version = msg.policy_ack.version
                if self.on_policy_ack:
                    await asyncio.to_thread(self.on_policy_ack, session, msg.policy_ack)
            elif kind == "kill_ack":
                if self.on_kill_ack:
                    await asyncio.to_thread(self.on_kill_ack, session, msg.kill_ack)
            else:
                raise StreamProblem("INVALID_ARGUMENT", "AgentMessage with no body")
        except Unauthenticated as exc:
            raise _End(grpc.StatusCode.PERMISSION_DENIED, exc.message) from None
        except StoreUnavailable as exc:
            await outq.put(_error(exc.code, exc.message, exc.retry_after_ms))
            raise _End(grpc.StatusCode.UNAVAILABLE, exc.message) from None
        except StreamProblem as exc:
            self.auth.warn_once(f"{who.name}|{exc.code}", "agent %s: %s: %s",
                                session.host_id if session else who.name, exc.code, exc.message)
            await outq.put(_error(exc.code, exc.message))
        return session


def guarded_query(query: QueryService, auth: Authenticator) -> cgrpc.QueryServicer:
    """The Query servicer with every method behind its role check (QUERY_ROLES)."""
    guarded = cgrpc.QueryServicer()
    for name, role in QUERY_ROLES.items():
        setattr(guarded, name, require(role, auth, getattr(query, name)))
    return guarded


def build_server(ingestor: Ingestor, query: QueryService, hub: AgentHub, auth: Authenticator, address: str,
                 credentials: grpc.ServerCredentials | None = None, **servicer_kw) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", HARD_MESSAGE_LIMIT),
        ("grpc.max_send_message_length", HARD_MESSAGE_LIMIT),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.max_concurrent_streams", 64),          # per connection
        ("grpc.so_reuseport", 0),     # a second collector on a busy address fails instead of sharing it silently
    ])
    servicer = CollectorServicer(ingestor, hub, auth, **servicer_kw)
    handler = grpc.method_handlers_generic_handler("gpuguard.v1.Collector", {
        "Stream": grpc.stream_stream_rpc_method_handler(
            servicer.Stream, request_deserializer=None,
            response_serializer=cpb.CollectorMessage.SerializeToString),
        "Enroll": grpc.unary_unary_rpc_method_handler(
            servicer.Enroll, request_deserializer=cpb.EnrollRequest.FromString,
            response_serializer=cpb.EnrollReply.SerializeToString),
    })
    server.add_generic_rpc_handlers((handler,))
    cgrpc.add_QueryServicer_to_server(guarded_query(query, auth), server)
    try:
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError as exc:        # grpc's "Failed to bind": the address is in use or not ours
        raise OSError(f"cannot listen on {address}: it is in use or not an address of this host") from exc
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    return server, port

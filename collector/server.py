"""gRPC servicers (grpc.aio), kept thin: parse, hand to the core, answer.

The agent stream takes raw bytes and parses them itself, so a malformed
message gets a StreamError reply instead of killing the stream. Messages over
the hard gRPC limit are refused by gRPC with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
from google.protobuf.message import DecodeError

from collector.ingest import Ingestor, StreamProblem, Unauthenticated
from collector.query import QueryService
from gpuguard import __version__
from gpuguard.v1 import collector_pb2 as cpb
from gpuguard.v1 import collector_pb2_grpc as cgrpc

log = logging.getLogger(__name__)

HARD_MESSAGE_LIMIT = 16 << 20      # gRPC refuses anything larger
SOFT_MESSAGE_LIMIT = 8 << 20       # we answer with a StreamError above this


def _error(code: str, message: str) -> cpb.CollectorMessage:
    return cpb.CollectorMessage(error=cpb.StreamError(code=code, message=message))


class AgentHub:
    """Connected agents' outgoing queues, so policy and kill commands can be pushed."""

    def __init__(self) -> None:
        self.queues: dict[str, asyncio.Queue] = {}

    def push(self, host_id: str | None, msg: cpb.CollectorMessage) -> int:
        targets = [host_id] if host_id else list(self.queues)
        n = 0
        for h in targets:
            q = self.queues.get(h)
            if q is not None:
                q.put_nowait(msg)
                n += 1
        return n


class CollectorServicer:
    def __init__(self, ingestor: Ingestor, hub: AgentHub, on_connect=None, on_policy_ack=None,
                 soft_limit: int = SOFT_MESSAGE_LIMIT) -> None:
        self.ingestor = ingestor
        self.hub = hub
        self.on_connect = on_connect
        self.on_policy_ack = on_policy_ack
        self.soft_limit = soft_limit

    async def Stream(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext):  # noqa: N802
        outq: asyncio.Queue = asyncio.Queue()
        session = None
        reader = asyncio.create_task(self._read(requests, context, outq))
        try:
            while True:
                msg = await outq.get()
                if msg is None:
                    break
                if isinstance(msg, tuple) and msg[0] == "session":
                    session = msg[1]
                    self.hub.queues[session.host_id] = outq
                    continue
                if isinstance(msg, tuple) and msg[0] == "abort":
                    await context.abort(msg[1], msg[2])
                yield msg
        finally:
            reader.cancel()
            if session is not None:
                if self.hub.queues.get(session.host_id) is outq:
                    del self.hub.queues[session.host_id]
                await asyncio.to_thread(self.ingestor.store.set_agent_state, session.host_id, connected=0)
                log.info("agent %s disconnected (%d events stored, %d duplicates this stream)",
                         session.host_id, session.events, session.duplicates)

    async def _read(self, requests, context, outq: asyncio.Queue) -> None:
        session = None
        try:
            async for raw in requests:
                if len(raw) > self.soft_limit:
                    outq.put_nowait(_error("RESOURCE_EXHAUSTED",
                                           f"message of {len(raw)} bytes exceeds {self.soft_limit}; split the batch"))
                    continue
                try:
                    msg = cpb.AgentMessage.FromString(raw)
                except DecodeError as exc:
                    outq.put_nowait(_error("INVALID_ARGUMENT", f"malformed AgentMessage ({len(raw)} bytes): {exc}"))
                    continue
                kind = msg.WhichOneof("msg")
                try:
                    if kind == "hello":
                        if session is not None:
                            raise StreamProblem("FAILED_PRECONDITION", "second hello on one stream")
                        session = await asyncio.to_thread(self.ingestor.hello, msg.hello)
                        outq.put_nowait(("session", session))
                        outq.put_nowait(cpb.CollectorMessage(hello=cpb.HelloReply(
                            stored_through_seq=session.stored_through, collector_version=__version__)))
                        if self.on_connect:
                            for m in self.on_connect(session):
                                outq.put_nowait(m)
                    elif session is None:
                        raise StreamProblem("FAILED_PRECONDITION", f"{kind or 'empty message'} before hello")
                    elif kind == "batch":
                        ack, problems = await asyncio.to_thread(self.ingestor.batch, session, msg.batch)
                        for p in problems:
                            outq.put_nowait(_error(p.code, p.message))
                        outq.put_nowait(cpb.CollectorMessage(ack=cpb.Ack(seq=ack)))
                    elif kind == "policy_ack":
                        session.policy_version = msg.policy_ack.version
                        if self.on_policy_ack:
                            await asyncio.to_thread(self.on_policy_ack, session, msg.policy_ack)
                    else:
                        raise StreamProblem("INVALID_ARGUMENT", "AgentMessage with no body")
                except Unauthenticated as exc:
                    log.warning("refused agent: %s", exc.message)
                    outq.put_nowait(("abort", grpc.StatusCode.UNAUTHENTICATED, exc.message))
                    return
                except StreamProblem as exc:
                    log.warning("agent %s: %s: %s", session.host_id if session else "?", exc.code, exc.message)
                    outq.put_nowait(_error(exc.code, exc.message))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("agent stream read ended: %s", exc)
        finally:
            outq.put_nowait(None)


def build_server(ingestor: Ingestor, query: QueryService, hub: AgentHub, address: str,
                 credentials: grpc.ServerCredentials | None = None, **servicer_kw) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", HARD_MESSAGE_LIMIT),
        ("grpc.max_send_message_length", HARD_MESSAGE_LIMIT),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ])
    servicer = CollectorServicer(ingestor, hub, **servicer_kw)
    handler = grpc.method_handlers_generic_handler("gpuguard.v1.Collector", {
        "Stream": grpc.stream_stream_rpc_method_handler(
            servicer.Stream, request_deserializer=None,
            response_serializer=cpb.CollectorMessage.SerializeToString),
    })
    server.add_generic_rpc_handlers((handler,))
    cgrpc.add_QueryServicer_to_server(query, server)
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    return server, port

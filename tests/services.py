"""Start real collector and agent processes for end-to-end tests, and stop them by PID."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import threading
from pathlib import Path

from collector.app import CollectorApp, CollectorConfig
from gpuguard.credentials import CredentialStore, bearer, find_token  # noqa: F401 - bearer used by tests
from lab import CLI, ROOT, Service, free_port, local_agent, local_collector, wait_for_text  # noqa: F401 - used by tests


def collector(tmp: Path, port: int, *extra: str) -> Service:
    return local_collector(tmp, port, *extra)


def issue(role: str, name: str, host: str = "") -> str:
    """A credential in the session's auth dir (tests/conftest.py sets GPUGUARD_AUTH_DIR)."""
    return CredentialStore().issue(role, name, host)


def agent_credential(host_id: str) -> str:
    """The agent's token for host_id, where a local agent finds it (credentials/agent-HOST.token)."""
    return issue("agent", f"agent-{host_id}", host_id)


def admin() -> list[tuple[str, str]]:
    """Metadata with the admin credential the collector made on its first start."""
    return bearer(find_token(role="admin"))


def agent(tmp: Path, port: int, host_id: str, *extra: str) -> Service:
    agent_credential(host_id)
    return local_agent(tmp, port, host_id, "--status-interval", "1", *extra)


def stored_events(db: Path, host_id: str) -> list[tuple[int, str, bytes]]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT seq, kind, body FROM events WHERE host_id=? ORDER BY seq", (host_id,)).fetchall()
    finally:
        con.close()


def cli_json(port: int, *args: str) -> dict:
    out = subprocess.run([*CLI, *args, "--collector", f"127.0.0.1:{port}", "--json"], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert out.returncode in (0, 5), out.stderr
    return json.loads(out.stdout)


@contextlib.contextmanager
def collector_in_thread(cfg: CollectorConfig):
    """A collector on its own event loop in this process, for tests that talk to it directly."""
    app = CollectorApp(cfg)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    ready = threading.Event()

    async def main():
        await app.start()
        ready.set()
        await stop.wait()
        await app.stop(0)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    if not ready.wait(10):
        raise TimeoutError("collector did not start")
    try:
        yield app
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)


def stream_events(port: int, host: str, events: list, batch_size: int = 500, timeout: float = 30) -> int:
    """Ship events as agent `host` over a real gRPC stream; return once the last seq is acked."""
    import queue  # noqa: PLC0415

    import grpc  # noqa: PLC0415

    from gpuguard.v1 import collector_pb2 as cpb  # noqa: PLC0415
    from gpuguard.v1 import collector_pb2_grpc  # noqa: PLC0415
    from gpuguard.v1 import events_pb2 as pb  # noqa: PLC0415

    out: queue.Queue = queue.Queue()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        replies = collector_pb2_grpc.CollectorStub(ch).Stream(iter(out.get, None), metadata=bearer(
            agent_credential(host)), timeout=timeout)
        out.put(cpb.AgentMessage(hello=cpb.Hello(host=pb.Host(host_id=host, hostname=host, boot_id="b"))))
        first = next(replies)
        assert first.WhichOneof("msg") == "hello", first
        for i in range(0, len(events), batch_size):
            out.put(cpb.AgentMessage(batch=cpb.EventBatch(events=events[i:i + batch_size])))
        last = events[-1].seq
        acked = 0
        for msg in replies:
            if msg.WhichOneof("msg") == "ack":
                acked = msg.ack.seq
                if acked >= last:
                    break
        out.put(None)
        return acked


class FakeAgent:
    """A stream that stays open like an agent's: ships events on demand, records the kill orders it gets and
    acks each (executed), as the real agent does. For multi-collector tests that need more hosts than kernels."""

    def __init__(self, port: int, host: str, first_unacked: int = 0, raw: bool = False) -> None:
        """first_unacked: where its spool starts, as a real agent says in its hello (after a failover); raw: ship
        RawBatches (today's agents) rather than EventBatches (older ones)."""
        import queue  # noqa: PLC0415

        import grpc  # noqa: PLC0415

        from gpuguard.v1 import collector_pb2 as cpb  # noqa: PLC0415
        from gpuguard.v1 import collector_pb2_grpc  # noqa: PLC0415
        from gpuguard.v1 import events_pb2 as pb  # noqa: PLC0415

        self.cpb, self.host, self.seq, self.raw = cpb, host, 0, raw
        self.out: queue.Queue = queue.Queue()
        self.acked = 0
        self.orders: list = []
        self.ended = threading.Event()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.replies = collector_pb2_grpc.CollectorStub(self.channel).Stream(
            iter(self.out.get, None), metadata=bearer(agent_credential(host)))
        self.out.put(cpb.AgentMessage(hello=cpb.Hello(host=pb.Host(host_id=host, hostname=host, boot_id="b"),
                                                      first_unacked_seq=first_unacked)))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for msg in self.replies:
                kind = msg.WhichOneof("msg")
                if kind == "ack":
                    self.acked = max(self.acked, msg.ack.seq)
                elif kind == "kill":
                    self.orders.append(msg.kill)
                    self.out.put(self.cpb.AgentMessage(kill_ack=self.cpb.KillAck(order_id=msg.kill.order_id,
                                                                                  executed=True)))
        except Exception:   # the collector went away
            pass
        finally:
            self.ended.set()

    def ship(self, events: list, timeout: float = 15) -> None:
        """Number the events after the last ones and send them; return once acked."""
        import time  # noqa: PLC0415

        for ev in events:
            self.seq += 1
            ev.seq = self.seq
        if self.raw:
            from gpuguard import rawbatch  # noqa: PLC0415

            self.out.put(self.cpb.AgentMessage(raw=rawbatch.from_events(events)))
        else:
            self.out.put(self.cpb.AgentMessage(batch=self.cpb.EventBatch(events=events)))
        deadline = time.monotonic() + timeout
        while self.acked < self.seq and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.acked >= self.seq, f"{self.host}: events not acked"

    def close(self) -> None:
        self.out.put(None)
        self.channel.close()

"""Kill orders as an outbox in the store: written by detection (whichever collector holds the detector
lease), delivered by whichever collector holds that host's stream, acked by the agent (KillAck), resent when
unacked, and executed at most once (the agent remembers the order ids it executed)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

from collector.hub import AgentHub
from gpuguard.v1 import collector_pb2 as cpb

log = logging.getLogger(__name__)


def order_id(host: str, kill: cpb.KillProcess) -> str:
    """The same order for the same process and rule, however often detection re-evaluates the events."""
    what = f"{host}|{kill.rule_id}|{kill.process_key}|{kill.pid}|{int(kill.tree)}"
    return hashlib.sha1(what.encode()).hexdigest()[:20]


class Outbox:
    def __init__(self, store, hub: AgentHub, resend_after_s: float = 10.0, poll_s: float = 0.2) -> None:
        self.store, self.hub = store, hub
        self.resend_after_s, self.poll_s = resend_after_s, poll_s
        self.loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self.delivered = self.acked = 0

    def order(self, host: str, kill: cpb.KillProcess) -> bool:
        """Write the order (detection thread); False if that order exists already (never twice)."""
        kill.order_id = order_id(host, kill)
        new = self.store.add_order(kill.order_id, host, kill.SerializeToString())
        if new and self.loop is not None and self._wake is not None:
            self.loop.call_soon_threadsafe(self._wake.set)
        return new

    def on_ack(self, session, ack: cpb.KillAck) -> None:
        self.store.order_done(ack.order_id[:64], session.host_id, ack.executed, ack.detail)
        self.acked += 1
        log.info("agent %s: kill order %s %s%s", session.host_id, ack.order_id,
                 "executed" if ack.executed else "not executed", f" ({ack.detail})" if ack.detail else "")

    async def deliver_forever(self) -> None:
        """Push due orders for the hosts whose streams this collector holds."""
        self.loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        while True:
            try:
                hosts = list(self.hub.queues)
                cutoff = time.time_ns() - int(self.resend_after_s * 1e9)
                due = await asyncio.to_thread(self.store.due_orders, hosts, cutoff) if hosts else []
                for oid, host, body in due:
                    if self.hub.push(host, cpb.CollectorMessage(kill=cpb.KillProcess.FromString(body))):
                        await asyncio.to_thread(self.store.order_sent, oid)
                        self.delivered += 1
            except Exception as exc:      # the store is down: orders wait in it
                log.warning("kill order delivery: %s", exc)
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            except TimeoutError:
                pass
            self._wake.clear()

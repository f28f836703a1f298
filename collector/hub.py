"""Outgoing messages to connected agents (policy, kill orders), one bounded queue per stream.

Detection and policy push through this; they never import the transport. A
queue that is full means the agent is not reading its replies: the push is
dropped and counted (policy is re-sent at the agent's next hello).
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)


class AgentHub:
    def __init__(self) -> None:
        self.queues: dict[str, asyncio.Queue] = {}
        self.dropped = 0

    def attach(self, host_id: str, queue: asyncio.Queue) -> None:
        self.queues[host_id] = queue

    def detach(self, host_id: str, queue: asyncio.Queue) -> None:
        if self.queues.get(host_id) is queue:
            del self.queues[host_id]

    def push(self, host_id: str | None, msg) -> int:
        """Queue msg for one host (or all when host_id is None); returns how many queues took it."""
        targets = [host_id] if host_id else list(self.queues)
        n = 0
        for h in targets:
            q = self.queues.get(h)
            if q is None:
                continue
            try:
                q.put_nowait(msg)
                n += 1
            except asyncio.QueueFull:
                self.dropped += 1
                log.warning("agent %s is not reading its stream: dropped a %s push", h, msg.WhichOneof("msg"))
        return n

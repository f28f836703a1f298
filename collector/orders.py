"""Kill orders: detection decides, this sends - audited first, then as an outbox row (delivered by the host's
collector, executed once by the agent) or straight down the host's stream; and it remembers which processes
the agents already reported killed, so a later match says so instead of ordering again."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from gpuguard.v1 import collector_pb2 as cpb
from gpuguard.v1 import events_pb2 as pb

MAX_KILLED = 20_000


class KillOrders:
    def __init__(self, store, outbox=None, push: Callable[[str, cpb.CollectorMessage], None] | None = None) -> None:
        self.store = store
        self.outbox = outbox                 # collector.outbox.Outbox: kill orders as rows
        self.push = push or (lambda _host, _msg: None)
        self.killed: OrderedDict[tuple[str, str], str] = OrderedDict()   # (host, process key) -> by what

    def order(self, host: str, ev: pb.Event, rule_id: str, tree: bool) -> None:
        """A kill order to one agent, written to the audit log first (who: detection, why: the rule)."""
        p = ev.process
        self.store.add_audit("detection", "system", "", "kill.order",
                             f"host {host} pid {p.pid} key {p.key} comm {p.comm[:64]!r} rule {rule_id}"
                             f"{' (tree)' if tree else ''}", True)
        kill = cpb.KillProcess(pid=p.pid, process_key=p.key, rule_id=rule_id, tree=tree)
        if self.outbox is not None:
            self.outbox.order(host, kill)    # a row in the store, delivered by the host's collector
        else:
            self.push(host, cpb.CollectorMessage(kill=kill))

    def killed_by(self, host: str, key: str, why: str) -> None:
        self.killed[(host, key)] = why
        while len(self.killed) > MAX_KILLED:
            self.killed.popitem(last=False)

    def already(self, host: str, key: str) -> str | None:
        return self.killed.get((host, key))

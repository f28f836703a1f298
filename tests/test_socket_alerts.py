"""A socket the kernel refused (raw, ICMP) or whose user it killed (packet) is its own confirmation: the alert says
so instead of waiting for an enforcement record that never comes (pure logic, no kernel)."""

from __future__ import annotations

import errno

from collector.alerts import AlertBook
from collector.orders import KillOrders
from collector.policy import Detection
from collector.resolve import DomainResolver
from collector.rules.loader import load_ruleset, rule_texts
from gpuguard.v1 import events_pb2 as pb
from gpuguard.v1 import policy_pb2 as ppb


class Published:
    def __init__(self) -> None:
        self.alerts: list[ppb.Alert] = []

    def record(self, alert: ppb.Alert) -> None:
        self.alerts.append(alert)


def socket_event(seq: int, what: str, result: int) -> pb.Event:
    family, kind = ("packet", "raw") if what == "packet" else ("inet", "raw")
    ev = pb.Event(seq=seq, socket=pb.Socket(family=family, type=kind, protocol=3, what=what, result=result))
    ev.job.kind, ev.job.id = "slurm", f"7{seq}"
    ev.process.pid, ev.process.key, ev.process.comm = 100 + seq, f"b:{100 + seq}:1", "python3"
    return ev


def test_refused_and_killed_sockets_are_confirmed_allowed_ones_await_the_kernel():
    published = Published()
    detection = Detection(AlertBook(published), KillOrders(store=None), DomainResolver())
    detection.install(load_ruleset(rule_texts()))
    detection.on_events("node-1", [socket_event(1, "packet", -errno.EPERM), socket_event(2, "raw-ip", -errno.EPERM),
                                   socket_event(3, "packet", 0)])
    by_job = {a.job.id: a for a in published.alerts}
    assert by_job["71"].rule_id == "packet-socket" and by_job["71"].state == ppb.ALERT_CONFIRMED
    assert "first send or receive" in by_job["71"].outcome
    assert by_job["72"].rule_id == "raw-socket" and by_job["72"].state == ppb.ALERT_CONFIRMED
    assert "EPERM" in by_job["72"].outcome
    assert by_job["73"].state == ppb.ALERT_BLOCK_EXPECTED          # not refused: a job the policy did not reach

"""The storage interface. Ingest, queries and detection only talk to this.

A second backend (PostgreSQL, for several collectors sharing one store)
implements the same methods; nothing above this layer changes.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Protocol

from gpuguard.v1 import events_pb2 as pb
from gpuguard.v1 import policy_pb2 as ppb


@dataclass
class IngestResult:
    stored: int = 0
    duplicates: int = 0
    stored_through: int = 0      # highest seq now stored for the host
    holes: list[tuple[int, int]] = field(default_factory=list)   # seq ranges skipped without a gap event


@dataclass
class StoredRow:
    host_id: str
    event: pb.Event


@dataclass
class TimelineFilter:
    job_id: str
    host: str = ""
    since_ns: int = 0
    until_ns: int = 0
    kinds: tuple[str, ...] = ()
    process_keys: tuple[str, ...] = ()
    limit: int = 10_000
    after: tuple[int, str, int] | None = None   # (ts_ns, host_id, seq) of the last event already returned


def fleet_destination(ev: pb.Event, kind: str) -> tuple[str | None, int | None]:
    """The destination an event names, for the fleet "who reached X" question (connects and blocks)."""
    if kind == "connect":
        return ev.connect.daddr or None, ev.connect.dport
    if kind == "enforcement" and ev.enforcement.daddr:
        return ev.enforcement.daddr, ev.enforcement.dport
    if kind == "tls":
        return ev.tls.daddr or None, ev.tls.dport
    if kind == "datagram":
        return ev.datagram.daddr or None, ev.datagram.dport
    if kind == "inbound":                     # who reached the node: the peer, and the port it reached
        return ev.inbound.peer or None, ev.inbound.local_port
    return None, None


def in_network(addr: str, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return ip.version == net.version and ip in net


PROCESS_COLUMNS = ("host_id", "key", "parent_key", "pid", "comm", "exe", "argv", "first_ts_ns", "used_gpu")


def process_item(row: tuple) -> dict:
    """A processes row (PROCESS_COLUMNS order) as the dict queries use."""
    item = dict(zip(PROCESS_COLUMNS, row, strict=True))
    item["argv"] = json.loads(item["argv"] or "[]")
    item["used_gpu"] = bool(item["used_gpu"])
    return item


def job_summary(row: tuple) -> dict:
    """A jobs aggregate row (id, kind, hosts joined by commas, first, last, events, alerts) as a dict."""
    return {"job_id": row[0], "job_kind": row[1], "hosts": sorted(set(row[2].split(","))), "first_ts_ns": row[3],
            "last_ts_ns": row[4], "events": int(row[5]), "alerts": row[6]}


def timeline_where(flt: TimelineFilter) -> tuple[str, list]:
    """The WHERE clause of a timeline query ('?' placeholders), one for every store: the same answers."""
    sql, params = ["job_id = ?"], [flt.job_id]
    for cond, value in (("host_id = ?", flt.host), ("ts_ns >= ?", flt.since_ns), ("ts_ns <= ?", flt.until_ns)):
        if value:
            sql.append(cond)
            params.append(value)
    for column, values in (("kind", flt.kinds), ("proc_key", flt.process_keys)):
        if values:
            sql.append(f"{column} IN ({','.join('?' * len(values))})")
            params.extend(values)
    if flt.after:
        sql.append(AFTER_SQL)
        params.extend(flt.after)
    return " AND ".join(sql), params


# Paging in the one order every event list uses (ts_ns, host_id, seq): continue strictly after the last row sent.
AFTER_SQL = "(ts_ns, host_id, seq) > (?, ?, ?)"


def encode_cursor(ts_ns: int, host_id: str, seq: int) -> str:
    return f"{ts_ns}:{seq}:{host_id}"


def decode_cursor(text: str) -> tuple[int, str, int] | None:
    """A reply's next_cursor back into (ts_ns, host_id, seq); ValueError when it is not one."""
    if not text:
        return None
    ts, seq, host = text.split(":", 2)
    value = (int(ts), host, int(seq))
    if not (-(1 << 63) <= value[0] < (1 << 63) and 0 <= value[2] < (1 << 63)) or len(host) > 256:
        raise ValueError("cursor out of range")
    return value


def event_bytes(ev: pb.Event) -> bytes:
    """What a store keeps of an event: an exec's argv once (process.argv repeats exec.argv; load_event puts it
    back), so a job of long command lines costs its argv once on disk and in every answer built from it."""
    if ev.WhichOneof("body") == "exec" and ev.process.argv and list(ev.process.argv) == list(ev.exec.argv):
        slim = pb.Event()
        slim.CopyFrom(ev)
        del slim.process.argv[:]
        return slim.SerializeToString()
    return ev.SerializeToString()


def load_event(body: bytes) -> pb.Event:
    ev = pb.Event.FromString(body)
    if ev.WhichOneof("body") == "exec" and not ev.process.argv and ev.exec.argv:
        ev.process.argv.extend(ev.exec.argv)
    return ev


def alerts_where(job_id: str, since_ns: int, rule_id: str, host: str, until_ns: int,
                 after: tuple[int, str] | None = None) -> tuple[str, list]:
    """The WHERE clause of an alerts query ('?' placeholders), one for every store."""
    sql, params = ["ts_ns >= ?"], [since_ns]
    for column, value in (("job_id", job_id), ("rule_id", rule_id), ("host_id", host)):
        if value:
            sql.append(f"{column} = ?")
            params.append(value)
    if until_ns:
        sql.append("ts_ns <= ?")
        params.append(until_ns)
    if after:
        sql.append("(ts_ns, id) > (?, ?)")             # alerts page in (ts_ns, id) order
        params.extend(after)
    return " AND ".join(sql), params


class Store(Protocol):
    def register_agent(self, host_id: str, hostname: str, boot_id: str, policy_version: int) -> int:
        """Record a connecting agent; return the highest seq stored for it."""

    def ingest(self, host_id: str, events: list[pb.Event]) -> IngestResult:
        """Store a batch atomically and durably; duplicates (host, seq) are ignored."""

    def ingest_many(self, parts: list[tuple[str, list[pb.Event]]]) -> IngestResult:
        """Batches of many hosts at once (a log worker's read), atomically; duplicates ignored."""

    def set_agent_state(self, host_id: str, **fields) -> None: ...

    def agents(self) -> list[dict]: ...

    def forget_agent(self, host_id: str) -> bool:
        """Drop a host from the agents table (a decommissioned node); its events stay. False if unknown."""

    def jobs(self, since_ns: int = 0, limit: int = 1000) -> list[dict]: ...

    def timeline(self, flt: TimelineFilter) -> list[StoredRow]: ...

    def processes(self, job_id: str, host: str = "") -> list[dict]: ...

    def add_alert(self, alert: ppb.Alert) -> None: ...

    def alerts(self, job_id: str = "", since_ns: int = 0, limit: int = 1000, rule_id: str = "", host: str = "",
               until_ns: int = 0, after: tuple[int, str] | None = None) -> list[ppb.Alert]: ...

    def connections(self, cidr: str, since_ns: int = 0, until_ns: int = 0, limit: int = 10_000,
                    after: tuple[int, str, int] | None = None) -> list[StoredRow]:
        """Connect and denied-connect events to an address in cidr, in time order."""

    def executions(self, sha256: str = "", exe: str = "", name: str = "", since_ns: int = 0, until_ns: int = 0,
                   limit: int = 10_000, after: tuple[int, str, int] | None = None) -> list[StoredRow]:
        """Exec events of one executable (sha256, path or basename), in time order."""

    def jobs_on_host(self, host_id: str, since_ns: int) -> list[tuple[str, str]]:
        """(job kind, job id) with events on this host since the given time."""

    def add_audit(self, who: str, role: str, peer: str, action: str, detail: str, ok: bool) -> None:
        """Append to the audit log (never updated or deleted)."""

    def audit(self, since_ns: int = 0, limit: int = 1000) -> list[dict]: ...

    def save_policy(self, version: int, rules_yaml: str) -> None:
        """Keep the user rules layer of each policy version."""

    def load_policy(self) -> tuple[int, str]:
        """(latest version, its user rules YAML), or (0, "")."""

    def purge_before(self, ts_ns: int) -> int: ...

    # -- detection as a durable consumer (collector/detector.py) --------------------------------
    def read_committed(self, cursor: tuple, limit: int) -> list[tuple[tuple, str, int, pb.Event]]:
        """(cursor, host, ingested_ns, event) of committed events after cursor, in commit order: a cursor
        only moves forward and no event can later appear behind it."""

    def get_cursor(self, name: str) -> tuple: ...

    def set_cursor(self, name: str, cursor: tuple) -> None: ...

    def take_lease(self, name: str, owner: str, ttl_s: float, now_ns: int | None = None) -> bool:
        """Take or renew a lease; False while another owner holds an unexpired one (now_ns: the clock, for tests)."""

    def recent_events(self, since_ts_ns: int, limit: int) -> list[tuple[str, pb.Event]]:
        """(host, event) since a time, in time order (a detector warms its correlation state on them)."""

    def add_order(self, order_id: str, host_id: str, body: bytes) -> bool:
        """An outbox row (a serialised KillProcess); False when that order id exists already."""

    def due_orders(self, hosts: list[str], sent_before_ns: int, limit: int = 100) -> list[tuple[str, str, bytes]]:
        """(order id, host, body) not acked yet, for these hosts, never sent or sent before the given time."""

    def order_sent(self, order_id: str) -> None: ...

    def order_done(self, order_id: str, host_id: str, executed: bool, detail: str) -> None:
        """The agent of host_id acked its order (an agent cannot ack another host's order)."""

    def close(self) -> None: ...

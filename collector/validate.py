"""What a store cannot take, found before it is asked to: an event with such a value is replaced by a gap that
names it (and the agent keeps the original in its quarantine), never a store error that would make the agent
retry the same batch for ever.

PostgreSQL refuses a NUL byte in text and a destination that is not an address (the inet index); SQLite would take
both, but a value one store refuses is refused by every store, so a fleet behaves the same whatever it runs on.
"""

from __future__ import annotations

import functools
import ipaddress

from gpuguard.v1 import events_pb2 as pb

CLOCK_SKEW_NS = 24 * 3600 * 10**9  # events stamped further than this from when they were received are flagged

ADDRESS_FIELDS = {"connect": "daddr", "tls": "daddr", "datagram": "daddr", "enforcement": "daddr", "dns": "server",
                  "inbound": "peer", "listen": "addr"}


@functools.lru_cache(maxsize=65_536)        # a fleet talks to few addresses: parse each once
def _address_problem(value: str) -> str | None:
    if not value:
        return None
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return "is not an IP address"
    return None


def invalid_value(ev: pb.Event) -> str | None:
    """Why a store cannot keep this event as sent ("field value: reason"), or None."""
    kind = ev.WhichOneof("body")
    if kind in ADDRESS_FIELDS:
        field = ADDRESS_FIELDS[kind]
        value = getattr(getattr(ev, kind), field)
        why = _address_problem(value)
        if why:
            return f"{kind}.{field} {value[:80]!r} {why}"
    p, job = ev.process, ev.job
    joined = "".join((p.key, p.parent_key, p.comm, p.exe, p.exe_sha256, p.cgroup, job.kind, job.id, job.name,
                      ev.boot_id, *p.argv, ev.gap.reason if kind == "gap" else ""))
    if "\x00" not in joined:
        return None                     # the common case: one scan, no per-field work
    texts = {"process.key": p.key, "process.parent_key": p.parent_key, "process.comm": p.comm,
             "process.exe": p.exe, "process.exe_sha256": p.exe_sha256, "process.cgroup": p.cgroup,
             "job.kind": job.kind, "job.id": job.id, "job.name": job.name, "boot_id": ev.boot_id}
    texts.update({f"process.argv[{i}]": a for i, a in enumerate(p.argv)})
    if kind == "gap":
        texts["gap.reason"] = ev.gap.reason
    for name, value in texts.items():
        if "\x00" in value:
            return f"{name} {value[:80]!r} holds a NUL byte"
    return None


def refused_gap(ev: pb.Event, why: str, by: str) -> pb.Event:
    """The gap stored in place of an event no store can keep (``by``: the collector or the worker), naming why."""
    return pb.Event(seq=ev.seq, ts_ns=ev.ts_ns, boot_id=ev.boot_id.replace("\x00", ""),
                    gap=pb.Gap(from_seq=ev.seq, to_seq=ev.seq, reason=f"refused by the {by}: {why}"[:300]))


def clock_suspect(ts_ns: int, received_ns: int) -> bool:
    """Stamped more than a day from when it was received: a clock the timeline should not trust blindly."""
    return abs(ts_ns - received_ns) > CLOCK_SKEW_NS

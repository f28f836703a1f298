"""One job's behaviour across hosts: ordered events, process tree, first GPU use, destinations."""

from __future__ import annotations

from collections import defaultdict

from collector.store.base import StoredRow, TimelineFilter
from gpuguard.v1 import collector_pb2 as cpb

MAX_NAMES = 8      # names listed per destination


def subtree_keys(processes: list[dict], root_key: str) -> tuple[str, ...]:
    """root_key and all its descendants among the job's processes."""
    children: dict[str, list[str]] = defaultdict(list)
    for p in processes:
        children[p["parent_key"]].append(p["key"])
    out, stack = [], [root_key]
    while stack:
        key = stack.pop()
        out.append(key)
        stack.extend(children.get(key, ()))
    return tuple(out)


def build_timeline(store, flt: TimelineFilter, subtree_root: str = "") -> cpb.TimelineReply:
    if subtree_root:
        flt.process_keys = subtree_keys(store.processes(flt.job_id, flt.host), subtree_root)
    rows: list[StoredRow] = store.timeline(flt)
    reply = cpb.TimelineReply(truncated=len(rows) >= flt.limit)
    first_gpu: dict[tuple[str, str], cpb.FirstGpuUse] = {}
    dests: dict[tuple[str, int, str], cpb.Destination] = {}
    for row in rows:
        ev = row.event
        reply.events.add(host_id=row.host_id, event=ev)
        kind = ev.WhichOneof("body")
        if kind == "gpu_open":
            key = (row.host_id, ev.process.key)
            if key not in first_gpu:
                first_gpu[key] = cpb.FirstGpuUse(process_key=ev.process.key, host_id=row.host_id,
                                                 ts_ns=ev.ts_ns, path=ev.gpu_open.path)
        elif kind == "connect":
            c = ev.connect
            d = dests.setdefault((c.daddr, c.dport, c.proto), cpb.Destination(daddr=c.daddr, dport=c.dport,
                                                                              proto=c.proto))
            d.count += 1
            d.last_result = c.result
            if c.name and c.name not in d.names and len(d.names) < MAX_NAMES:
                d.names.append(c.name)
        elif kind == "tls" and ev.tls.sni:
            d = dests.get((ev.tls.daddr, ev.tls.dport, "tcp"))
            if d is not None and ev.tls.sni not in d.names and len(d.names) < MAX_NAMES:
                d.names.append(ev.tls.sni)
    reply.first_gpu_use.extend(first_gpu.values())
    reply.destinations.extend(sorted(dests.values(), key=lambda d: -d.count))
    reply.alerts.extend(a for a in store.alerts(job_id=flt.job_id)
                        if (not flt.host or a.host_id == flt.host))
    return reply


def build_tree(store, job_id: str, host: str = "") -> cpb.TreeReply:
    reply = cpb.TreeReply()
    for p in store.processes(job_id, host):
        reply.nodes.add(key=p["key"], parent_key=p["parent_key"] or "", host_id=p["host_id"], pid=p["pid"],
                        comm=p["comm"] or "", exe=p["exe"] or "", argv=p["argv"], first_ts_ns=p["first_ts_ns"] or 0,
                        used_gpu=p["used_gpu"])
    return reply

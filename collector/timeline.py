"""One job's behaviour across hosts: ordered events, process tree, first GPU use, destinations."""

from __future__ import annotations

from collections import defaultdict

from collector.paging import DEFAULT_REPLY_BYTES, page_events, parse_cursor
from collector.store.base import TimelineFilter
from gpuguard.v1 import collector_pb2 as cpb

MAX_NAMES = 8      # names listed per destination
TREE_ARGV_BYTES = 4096    # of each process's command line in the tree


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


def build_timeline(store, flt: TimelineFilter, subtree_root: str = "", cursor: str = "",
                   budget: int = DEFAULT_REPLY_BYTES) -> cpb.TimelineReply:
    """One page of a job's events (flt.limit rows, about budget bytes) with what they say: first GPU use,
    destinations; the job's alerts on the first page. truncated + next_cursor when more events match."""
    if subtree_root:
        flt.process_keys = subtree_keys(store.processes(flt.job_id, flt.host), subtree_root)
    first_page = not cursor

    def fetch(after, n):
        flt.after, flt.limit = after, n
        return store.timeline(flt)

    limit = flt.limit
    rows, next_cursor = page_events(fetch, limit, budget, parse_cursor(cursor))
    reply = cpb.TimelineReply(truncated=bool(next_cursor), next_cursor=next_cursor)
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
    if first_page:
        room = budget // 4                       # alerts carry evidence: a quarter of the page at most
        for a in store.alerts(job_id=flt.job_id):
            if flt.host and a.host_id != flt.host:
                continue
            room -= a.ByteSize()
            if room < 0:
                break
            reply.alerts.append(a)
    return reply


def clipped_argv(argv: list[str], limit: int = TREE_ARGV_BYTES) -> list[str]:
    """A tree node's command line within limit bytes, the cut said in a last element (the exec event in the
    timeline holds it whole)."""
    out, used = [], 0
    for i, arg in enumerate(argv):
        if used + len(arg) > limit:
            rest = sum(len(a) + 1 for a in argv[i:])
            out.append(arg[:max(limit - used, 0)])
            out.append(f"…[{rest} more bytes in the exec event]")
            return out
        out.append(arg)
        used += len(arg) + 1
    return out


def build_tree(store, job_id: str, host: str = "", budget: int = DEFAULT_REPLY_BYTES) -> cpb.TreeReply:
    reply = cpb.TreeReply()
    size = 0
    for p in store.processes(job_id, host):
        node = reply.nodes.add(key=p["key"], parent_key=p["parent_key"] or "", host_id=p["host_id"], pid=p["pid"],
                               comm=p["comm"] or "", exe=p["exe"] or "", argv=clipped_argv(p["argv"]),
                               first_ts_ns=p["first_ts_ns"] or 0, used_gpu=p["used_gpu"])
        size += node.ByteSize() + 8
        if size > budget:
            del reply.nodes[-1]
            reply.truncated = True
            break
    return reply

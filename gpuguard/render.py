"""Human rendering of query replies: aligned tables, trees and timelines (greppable).

Every string that came from an observed process (names, paths, argv, cgroups)
is passed through ``safe`` before it reaches a terminal: control characters,
escape sequences and newlines are shown as escapes, never interpreted.
"""

from __future__ import annotations

import errno
import re
import time

from google.protobuf.json_format import MessageToDict

from gpuguard.v1 import collector_pb2 as cpb
from gpuguard.v1 import events_pb2 as pb

_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\x1b": "\\e"}


def safe(text) -> str:
    """Terminal-safe: C0/C1 controls (ESC sequences included), bidi overrides and line breaks escaped."""
    text = str(text)
    if not _UNSAFE.search(text):
        return text
    return _UNSAFE.sub(lambda m: _NAMED.get(m.group(0)) or (f"\\x{ord(m.group(0)):02x}" if ord(m.group(0)) < 0x100
                                                            else f"\\u{ord(m.group(0)):04x}"), text)


def printable(data: bytes) -> str:
    """Payload bytes for a log line or a table: ASCII as is, the rest as \\xNN (never a control character)."""
    return "".join(chr(b) if 32 <= b < 127 and b != 92 else f"\\x{b:02x}" for b in data)


def ts(ns: int) -> str:
    if not ns:
        return "-"
    s = ns / 1e9
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s)) + f".{int(s * 1000) % 1000:03d}"


def result(code: int) -> str:
    return "ok" if code >= 0 else errno.errorcode.get(-code, str(code))


def access(flags: int) -> str:
    """Device access asked at the cgroup/dev hook: 2 read, 4 write."""
    return "+".join(n for bit, n in ((2, "read"), (4, "write")) if flags & bit) or "open"


def to_json(msg) -> dict:
    return MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def table(rows: list[list[str]], headers: list[str]) -> str:
    rows = [[safe(c) for c in r] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def jobs_table(reply: cpb.ListJobsReply) -> str:
    rows = [[f"{j.job.kind}", j.job.id, ",".join(j.hosts), ts(j.first_ts_ns), ts(j.last_ts_ns), j.events, j.alerts]
            for j in reply.jobs]
    return table(rows, ["KIND", "JOB", "HOSTS", "FIRST", "LAST", "EVENTS", "ALERTS"])


def argv_text(argv, limit: int = 160) -> str:
    """One line, whatever the argv holds: newlines shown as \\n, long text cut with …."""
    text = safe(" ".join(argv))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def hostport(address: str, port: int) -> str:
    """203.0.113.7:443, [2001:db8::1]:443."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def describe_event(ev: pb.Event) -> str:
    kind = ev.WhichOneof("body")
    if kind == "exec":
        argv = argv_text(ev.exec.argv) + (" …" if ev.exec.argv_truncated else "")
        return f"exec     {ev.exec.filename} [{argv}] {result(ev.exec.result)}"
    if kind == "connect":
        c = ev.connect
        named = f" ({c.name})" if c.name else " (unnamed)" if c.name_scope == "none" else ""
        deleted = " (its program deleted or in memory)" if c.image_nolink else ""
        return f"connect  {c.proto} {hostport(c.daddr, c.dport)}{named} {result(c.result)}{deleted}"
    if kind == "tls":
        t = ev.tls
        alpn = f" alpn={','.join(t.alpn)}" if t.alpn else ""
        return f"tls      {hostport(t.daddr, t.dport)} sni={t.sni or '(none)'}{alpn} TLS {t.version or '?'} " \
               f"ja4={t.ja4 or '?'}"
    if kind == "dns":
        d = ev.dns
        return f"dns      {d.qtype} {d.name} via {d.server}:{d.server_port}/{d.transport}"
    if kind == "datagram":
        g = ev.datagram
        return f"udp      {g.shape} to {g.daddr}:{g.dport} ({g.length} bytes)"
    if kind == "socket":
        so = ev.socket
        return f"socket   {so.what} ({so.family}/{so.type}, protocol {so.protocol}) {result(so.result)}"
    if kind == "inbound":
        i = ev.inbound
        again = f" (+{i.repeats} more within 1 s)" if i.repeats else ""
        return f"inbound  {i.proto or 'tcp'} from {hostport(i.peer, i.peer_port)} to port {i.local_port}{again}"
    if kind == "listen":
        return f"listen   tcp {hostport(ev.listen.addr, ev.listen.port)}"
    if kind == "gpu_open":
        g = ev.gpu_open
        return f"gpu_open {g.path} ({g.major}:{g.minor} {access(g.flags)}; outcome not observed)"
    if kind == "exit":
        return f"exit     {'signal=' + str(ev.exit.signal) if ev.exit.signal else 'code=' + str(ev.exit.code)}"
    if kind == "gap":
        return f"GAP      seq {ev.gap.from_seq}..{ev.gap.to_seq} lost ({ev.gap.reason})"
    if kind == "gpu_usage":
        g = ev.gpu_usage
        return (f"GPU      {g.gpu} SM {g.sm_util}% mem {g.memory_bytes >> 20} MiB "
                f"(device {g.device_util}%, {g.power_mw / 1000:.0f} W)")
    if kind == "capture_loss":
        c = ev.capture_loss
        parts = [f"{n} {k} over the job's budget" for k, n in sorted(c.suppressed.items())]
        parts += [f"{n} {k} lost (ring full)" for k, n in sorted(c.lost.items())]
        return f"INCOMPLETE {ts(c.from_ts_ns)} .. {ts(c.to_ts_ns)}: {', '.join(parts)}"
    if kind == "enforcement":
        return f"BLOCKED  {ev.enforcement.action} by {ev.enforcement.rule_id}: {ev.enforcement.detail}"
    return kind or "?"


def timeline_view(job_id: str, reply: cpb.TimelineReply) -> str:
    hosts = sorted({e.host_id for e in reply.events})
    out = [safe(f"Job {job_id}: {len(reply.events)} events on {len(hosts)} host(s): {', '.join(hosts) or '-'}")]
    if reply.truncated:
        out.append("(truncated: narrow with --since/--until/--kind or raise --limit)")
    items: list[tuple[int, str]] = []
    for se in reply.events:
        ev = se.event
        p = ev.process
        items.append((ev.ts_ns, safe(f"{ts(ev.ts_ns)}  {se.host_id[:12]:<12}  {p.pid:>7}  {p.comm[:16]:<16}  "
                                     f"{describe_event(ev)}")))
    for a in reply.alerts:
        items.append((a.ts_ns, safe(f"{ts(a.ts_ns)}  {a.host_id[:12]:<12}  {a.process.pid:>7}  "
                                    f"{a.process.comm[:16]:<16}  "
                                    f"ALERT    [{a.severity}] {a.rule_id}: {a.description} -> {a.outcome}")))
    out.append("")
    out.append(f"{'TIME':<23}  {'HOST':<12}  {'PID':>7}  {'COMM':<16}  EVENT")
    out += [line for _, line in sorted(items, key=lambda x: x[0])]
    if reply.first_gpu_use:
        out.append("")
        out.append("First GPU use per process:")
        out += [safe(f"  {ts(g.ts_ns)}  {g.host_id[:12]}  {g.process_key}  {g.path}") for g in reply.first_gpu_use]
    if reply.destinations:
        out.append("")
        out.append("Network destinations:")
        out += [safe(f"  {d.proto:<4} {d.daddr}:{d.dport}  x{d.count}  last={result(d.last_result)}"
                     + (f"  for {', '.join(d.names)}" if d.names else ""))
                for d in reply.destinations]
    return "\n".join(out)


def tree_view(reply: cpb.TreeReply) -> str:
    nodes = {n.key: n for n in reply.nodes}
    children: dict[str, list] = {}
    roots = []
    for n in reply.nodes:
        if n.parent_key in nodes:
            children.setdefault(n.parent_key, []).append(n)
        else:
            roots.append(n)
    lines: list[str] = []

    def walk(n, prefix: str, last: bool, top: bool) -> None:
        branch = "" if top else ("└─ " if last else "├─ ")
        gpu = "  [GPU]" if n.used_gpu else ""
        argv = argv_text(n.argv, 100)
        lines.append(prefix + branch + safe(f"{n.pid} {n.comm} ({n.host_id[:12]}) {argv}{gpu}"))
        kids = sorted(children.get(n.key, []), key=lambda c: c.first_ts_ns)
        for i, c in enumerate(kids):
            walk(c, prefix + ("" if top else ("   " if last else "│  ")), i == len(kids) - 1, False)

    for r in sorted(roots, key=lambda c: c.first_ts_ns):
        walk(r, "", True, True)
    return "\n".join(lines) or "(no processes)"


def alerts_table(alerts) -> str:
    rows = [[ts(a.ts_ns), a.severity, a.rule_id, f"{a.job.kind}:{a.job.id}", a.host_id[:12], a.process.pid,
             a.process.comm, a.outcome] for a in alerts]
    return table(rows, ["TIME", "SEVERITY", "RULE", "JOB", "HOST", "PID", "COMM", "OUTCOME"])


EXPLAIN_WIDTH = 100


def alerts_explained(alerts) -> str:
    """Each alert with the evidence in full: every matched field and value, the process's whole argv (wrapped,
    never cut), its executable and ancestry, and the evidence events' sequence numbers."""
    import textwrap  # noqa: PLC0415

    out = []
    for a in alerts:
        p = a.process
        out.append(safe(f"{ts(a.ts_ns)}  [{a.severity}] {a.rule_id}  job {a.job.kind}:{a.job.id}  host {a.host_id}"))
        out.append(safe(f"  {a.description}"))
        out.append(safe(f"  outcome: {a.outcome}"))
        for field_name, value in sorted(a.matched.items()):
            out.append(safe(f"  matched {field_name}: {value}"))
        out.append(safe(f"  process: pid {p.pid} {p.comm} exe {p.exe or '?'}"))
        argv = safe(" ".join(p.argv)) or "(unknown)"
        out += textwrap.wrap(argv, EXPLAIN_WIDTH, initial_indent="  argv: ", subsequent_indent="        ",
                             break_long_words=True, break_on_hyphens=False)
        if p.ancestors:
            chain = " <- ".join(f"{x.comm}({x.pid})" for x in p.ancestors[:8])
            out.append(safe(f"  ancestors: {chain}"))
        if a.evidence_seqs:
            out.append(f"  evidence: seq {', '.join(str(s) for s in a.evidence_seqs[:20])}"
                       f"{' …' if len(a.evidence_seqs) > 20 else ''}")
        out.append("")
    return "\n".join(out) or "(no alerts)"


def hosts_table(reply: cpb.HostsReply) -> str:
    rows = [[h.host_id[:24], h.hostname[:24], h.state.upper() if h.state != "ok" else "ok", ts(h.last_seen_ns),
             f"{h.policy_version}/{h.policy_current}", ",".join(h.programs) or "-",
             sum(h.kernel_lost.values()), ",".join(h.incomplete_jobs)[:48] or "-", h.drift or "-"]
            for h in reply.hosts]
    return table(rows, ["HOST", "HOSTNAME", "STATE", "LAST SEEN", "POLICY", "PROGRAMS", "LOST", "INCOMPLETE JOBS",
                        "DRIFT"])


def audit_table(reply: cpb.AuditReply) -> str:
    rows = [[ts(e.ts_ns), e.who, e.role, e.peer or "-", e.action, "ok" if e.ok else "REFUSED", e.detail[:120]]
            for e in reply.entries]
    return table(rows, ["TIME", "WHO", "ROLE", "FROM", "ACTION", "RESULT", "DETAIL"])


def fleet_table(reply: cpb.FleetReply) -> str:
    """Fleet answers: one row per matching event, in time order (host, job, process, what)."""
    rows = [[ts(se.event.ts_ns), se.host_id[:16], f"{se.event.job.kind}:{se.event.job.id}", se.event.process.pid,
             se.event.process.comm, describe_event(se.event)] for se in reply.events]
    out = table(rows, ["TIME", "HOST", "JOB", "PID", "COMM", "EVENT"])
    return out + ("\n(truncated: narrow with --since/--until or raise --limit)" if reply.truncated else "")


def gpu_processes_view(reply: cpb.GpuProcessesReply) -> str:
    out = []
    for item in reply.processes:
        p = item.process
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(item.events_by_kind.items()))
        out.append(safe(f"{p.host_id[:16]}  {p.pid:>7}  {p.comm:<16} {p.exe}  [{kinds}]"))
        out += [safe(f"    -> {d.proto} {d.daddr}:{d.dport} x{d.count} last={result(d.last_result)}")
                for d in item.destinations]
    return "\n".join(out) or "no process opened a GPU in this job"

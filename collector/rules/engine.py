"""Evaluate rules against stored events: which rules an event satisfies, and why.

Every match carries the field values that satisfied the rule, so an alert can
say exactly what it saw. Per-job state needed by stateful fields
(``gpu_new_binary``) lives in ``JobContext``, owned by the correlator.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from collector.rules.loader import Rule, RuleSet
from gpuguard.v1 import events_pb2 as pb

Matcher = Callable[[pb.Event, "JobContext"], str | None]
STRATUM_ACTIONS = ("drop_stratum", "seen_stratum")


@dataclass
class JobContext:
    """What the engine remembers about one job."""

    gpu_exes: set[str] = field(default_factory=set)
    main_keys: dict[str, str] = field(default_factory=dict)   # host -> process key of the job's first exec
    host: str = ""                                           # host of the event being evaluated


def short_options(argv: list[str]) -> set[str]:
    """Option letters as probes/exec.c counts them (first letter of a cluster; all if <= 4 letters)."""
    letters: set[str] = set()
    for arg in argv[1:]:
        if len(arg) < 2 or arg[0] != "-" or arg[1] == "-":
            continue
        cluster = arg[1:]
        if cluster[0].isascii() and cluster[0].isalpha():
            letters.add(cluster[0])
        if len(cluster) <= 4 and all(c.isascii() and c.isalpha() for c in cluster):
            letters.update(cluster)
    return letters


def _names(ev: pb.Event) -> list[str]:
    names = [ev.process.comm]
    if ev.HasField("exec"):
        names.append(os.path.basename(ev.exec.filename))
    if ev.process.exe:
        names.append(os.path.basename(ev.process.exe))
    return [n for n in names if n]


def _argv(ev: pb.Event) -> list[str]:
    return list(ev.exec.argv) if ev.HasField("exec") else list(ev.process.argv)


def compile_matcher(key: str, value, rule: Rule) -> Matcher:
    if key == "exe_name_in":
        wanted = {str(v).lower() for v in value}
        return lambda ev, _c: next((n for n in _names(ev) if n.lower() in wanted), None)
    if key == "argv_regex":
        rx = re.compile(value)

        def argv_regex(ev, _c):
            m = rx.search(" ".join(_argv(ev)))
            return m.group(0).strip() or m.group(0) if m else None
        return argv_regex
    if key == "argv_short_option_in":
        wanted = set(value)

        def short_opts(ev, _c):
            hit = sorted(short_options(_argv(ev)) & wanted)
            return "-" + "".join(hit) if hit else None
        return short_opts
    if key == "exe_prefix_in":
        prefixes = tuple(str(v) for v in value)

        def exe_prefix(ev, _c):
            path = ev.exec.filename if ev.HasField("exec") else ev.process.exe
            return path if path.startswith(prefixes) or ev.process.exe.startswith(prefixes) else None
        return exe_prefix
    if key == "sha256_in":
        hashes = {v.lower() for v in value}
        return lambda ev, _c: ev.process.exe_sha256 if ev.process.exe_sha256 in hashes else None
    if key == "dport_in":
        ports = set(value)
        return lambda ev, _c: str(ev.connect.dport) if ev.connect.dport in ports else None
    if key in ("daddr_cidr_in", "daddr_not_in"):
        nets = [ipaddress.ip_network(v, strict=False) for v in value]
        inside = key == "daddr_cidr_in"

        def daddr(ev, _c):
            try:
                addr = ipaddress.ip_address(ev.connect.daddr)
            except ValueError:
                return None
            hit = any(addr in n for n in nets if n.version == addr.version)
            return ev.connect.daddr if hit == inside else None
        return daddr
    if key == "proto_in":
        protos = set(value)
        return lambda ev, _c: ev.connect.proto if ev.connect.proto in protos else None
    if key == "path_regex":
        rx = re.compile(value)
        return lambda ev, _c: ev.gpu_open.path if rx.search(ev.gpu_open.path) else None
    if key == "gpu_new_binary":
        return gpu_new_binary
    if key == "stratum":
        return lambda ev, _c: ev.enforcement.action if ev.enforcement.action in STRATUM_ACTIONS else None
    raise ValueError(f"{rule.source}:{rule.line}: no matcher for {key}")


def gpu_new_binary(ev: pb.Event, ctx: JobContext) -> str | None:
    """The job's GPU was first used by other binaries, or this process is outside the job's main tree."""
    exe = ev.process.exe or ev.process.comm
    first_use = not ctx.gpu_exes
    new = exe not in ctx.gpu_exes
    main = ctx.main_keys.get(ctx.host)
    outside = bool(main) and main != ev.process.key and main not in {a.key for a in ev.process.ancestors}
    if first_use and not outside:
        return None
    if new:
        return f"{exe} (job GPU binaries so far: {', '.join(sorted(ctx.gpu_exes)) or 'none'})"
    if outside:
        return f"{exe} pid {ev.process.pid} is not descended from the job's main program"
    return None


@dataclass
class CompiledRule:
    rule: Rule
    match: list[tuple[str, Matcher]]
    unless: list[tuple[str, Matcher]]

    def in_scope(self, host: str, ev: pb.Event) -> bool:
        sc = self.rule.scope
        if not sc:
            return True
        if "hosts" in sc and host not in sc["hosts"]:
            return False
        if "job_ids" in sc or "job_kinds" in sc:
            return ev.job.id in sc.get("job_ids", ()) or ev.job.kind in sc.get("job_kinds", ())
        return True


@dataclass
class RuleMatch:
    rule: Rule
    matched: dict[str, str]


def event_class(ev: pb.Event) -> str | None:
    kind = ev.WhichOneof("body")
    if kind == "enforcement":
        return "payload" if ev.enforcement.action in STRATUM_ACTIONS else None
    return kind if kind in ("exec", "connect", "gpu_open") else None


class Engine:
    def __init__(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset
        self.by_event: dict[str, list[CompiledRule]] = {}
        for rule in ruleset.rules.values():
            cr = CompiledRule(rule, [(k, compile_matcher(k, v, rule)) for k, v in rule.match.items()],
                              [(k, compile_matcher(k, v, rule)) for k, v in rule.unless.items()])
            self.by_event.setdefault(rule.event, []).append(cr)

    def evaluate(self, host: str, ev: pb.Event, ctx: JobContext) -> list[RuleMatch]:
        cls = event_class(ev)
        if cls is None:
            return []
        if cls == "exec" and ev.exec.result != 0:
            return []          # a failed exec ran nothing
        out = []
        for cr in self.by_event.get(cls, ()):
            if not cr.in_scope(host, ev):
                continue
            matched = {}
            for key, fn in cr.match:
                value = fn(ev, ctx)
                if value is None:
                    break
                matched[key] = value
            else:
                if not any(fn(ev, ctx) is not None for _k, fn in cr.unless):
                    out.append(RuleMatch(cr.rule, matched))
        return out

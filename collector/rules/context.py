"""What rules look at: one event's derived fields (EventView), what is remembered per job (JobContext), and the
helpers several match keys share (destinations, DNS zones, the DNS-tunnel shape, first GPU use)."""

from __future__ import annotations

import errno
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from collector.rules.deobfuscate import assignments, readable
from gpuguard.argv_scan import argv_scan_text
from gpuguard.scripts import HERE_DOCUMENT, script_name, script_of
from gpuguard.v1 import events_pb2 as pb

LINE_BREAKS = re.compile(r"[ \t]*(\r\n|\r|\n)+[ \t]*")   # one or more, with the blanks around them
SCRIPT_LINE = re.compile(r"([^:]{1,64}):\d+: (.*)", re.S)      # NAME:LINE: text (agent/config_peek.py)

Matcher = Callable[["EventView", "JobContext"], str | None]


@dataclass
class JobContext:
    """What the engine remembers about one job."""

    gpu_exes: set[str] = field(default_factory=set)
    main_keys: dict[str, str] = field(default_factory=dict)   # host -> process key of the job's first exec
    host: str = ""                                           # host of the event being evaluated
    encoded_names: dict[str, set[str]] = field(default_factory=dict)   # base domain -> encoded-looking names
    failed_destinations: OrderedDict[str, dict[tuple[str, int], int]] = field(default_factory=OrderedDict)
    service_hosts: OrderedDict[tuple[str, int], dict[str, int]] = field(default_factory=OrderedDict)
    # (process key, port) -> outside host -> when (ns) it was last reached there: a spread, by what it does
    node_listeners: dict[int, str] = field(default_factory=dict)   # this host's loopback-reachable ports -> the job
                                                                   # listening there (shared by the host's jobs)
    # process key -> (address, port) -> when (ns) a connect there last failed: a scan, by what it does
    discovery: dict[str, int] = field(default_factory=dict)   # kind of discovery command -> when (ns) last run
    discovery_burst_ns: int | None = None                     # when the last burst was reported (once a window)
    downloads: OrderedDict[str, tuple[int, str]] = field(default_factory=OrderedDict)   # file a downloader wrote ->
                                                              # (when, its argv): collector/rules/downloads.py


class EventView:
    """One event with the derived fields rules look at, each computed at most once."""

    __slots__ = ("ev", "_names", "_argv", "_argv_text", "_argv_texts", "_argv_scan_text")

    def __init__(self, ev: pb.Event) -> None:
        self.ev = ev
        self._names: list[str] | None = None
        self._argv: list[str] | None = None
        self._argv_text: str | None = None
        self._argv_texts: tuple[str, ...] | None = None
        self._argv_scan_text: str | None = None

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
        """argv joined by spaces, each line break read as a command separator: a script passed as one argument
        (`sh -c $'id\\ncurl ...'`, a multi-line `python -c`) is matched line by line like one written with `;`, and
        no rule has to allow for a newline where it allows `;` (or have `.` stop at one)."""
        if self._argv_text is None:
            text = " ".join(self.argv)
            self._argv_text = LINE_BREAKS.sub(" ; ", text) if "\n" in text or "\r" in text else text
        return self._argv_text

    @property
    def argv_texts(self) -> tuple[str, ...]:
        """argv_text; each line of the shell script it runs as ``sh -c LINE`` (``script_lines``); and each with its
        disguises undone when it has any (``c''url``, ``${IFS}``, ``$'\\x63...'``, ``echo B64 | base64 -d``:
        collector/rules/deobfuscate.py). The argv keys search each, so a rule written for the plain spelling of a
        typed line holds for every disguise of it and for the same line in a script."""
        if self._argv_texts is None:
            text = self.argv_text
            texts = [text]
            undone = readable(text)
            if undone:
                texts.append(undone)
            lines = self.script_lines
            variables = assignments(" ; ".join(lines)) if lines else {}  # set on one line, used on another
            for line in lines:                       # each line alone: a rule's pattern never spans two lines
                typed = f"{self.argv[0]} -c {line}"
                texts.append(typed)
                undone = readable(typed, variables)
                if undone:
                    texts.append(undone)
            self._argv_texts = tuple(texts)
        return self._argv_texts

    @property
    def script_lines(self) -> list[str]:
        """The command lines of the shell script this exec runs, as the agent read them (gpuguard/scripts.py): a
        script's builtins, pipes and redirections, which no exec record of their own shows, each judged like the
        same line typed (``sh -c LINE``). [] when it runs none."""
        ev = self.ev
        if not ev.HasField("exec") or not ev.exec.config_lines:
            return []
        path = script_of(self.argv)
        if not path:
            return []
        name = script_name(path)
        return with_here_documents(
            [m.group(2) for m in map(SCRIPT_LINE.fullmatch, ev.exec.config_lines) if m and m.group(1) == name])

    @property
    def argv_scan_text(self) -> str:
        """argv as the kernel's whole-argv scan reads it (gpuguard/argv_scan.py): every argv_has rule shares it."""
        if self._argv_scan_text is None:
            self._argv_scan_text = argv_scan_text(self.argv)
        return self._argv_scan_text


def with_here_documents(lines: list[str]) -> list[str]:
    """A here-document's body put back on the line that reads it (``python3 - <<'PY'`` then the code): one command,
    as ``sh -c`` would be given it, its lines joined by `` ; `` like a typed line's breaks."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        m = HERE_DOCUMENT.search(line)
        if m:
            body = []
            while i < len(lines) and lines[i].strip() != m.group(2):
                body.append(lines[i])
                i += 1
            i += 1                                     # the terminator
            line = " ; ".join([line, *body, m.group(2)])
        out.append(line)
    return out


def destination(ev: pb.Event) -> tuple[str, int]:
    """(address, port) a flow went to, whichever kind of flow record this is (a DNS question: its server)."""
    kind = ev.WhichOneof("body")
    if kind == "tls":
        return ev.tls.daddr, ev.tls.dport
    if kind == "datagram":
        return ev.datagram.daddr, ev.datagram.dport
    if kind == "dns":
        return ev.dns.server, ev.dns.server_port
    return ev.connect.daddr, ev.connect.dport


def normal_name(name) -> str:
    """A rule's domain pattern as a plain suffix: "*.nanopool.org", ".nanopool.org." -> "nanopool.org"."""
    return str(name).lower().strip().removeprefix("*").strip(".")


MAX_DNS_NAME = 253           # a zone or host in a rule list is a DNS name: never longer


def under_any(name: str, suffixes: set[str]) -> bool:
    """name is one of the suffixes or a subdomain of one (at a label boundary: evilnanopool.org is not). Only the
    tails a DNS name can be are tried: an observed process's 60 KB of labels costs a slice, not a join per label."""
    name = name.lower().rstrip(".")
    if len(name) > MAX_DNS_NAME:                   # a tail that long is no suffix; cut at a label boundary
        cut = name[-(MAX_DNS_NAME + 1):]
        name = cut[cut.find(".") + 1:] if "." in cut else ""
    labels = name.split(".")
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


HEX_DIGITS = frozenset("0123456789abcdef")


def data_label(name: str, at_least: int) -> str | None:
    """One question carrying data: a label of at least ``at_least`` characters that looks encoded (letters and digits
    mixed) and is not a plain hex id (object-store account ids, content hashes are hex: base32/64 data is not)."""
    for label in name.split(".")[:-2]:
        if len(label) >= at_least and looks_encoded(label) and not set(label.lower()) <= HEX_DIGITS:
            return f"a {len(label)}-character encoded label in {name[:120]}"
    return None


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


FANOUT_WINDOW_NS = 60 * 10**9   # failed destinations count for a minute
MAX_FANOUT_PROCESSES = 256       # processes tracked per job (least recently failing dropped first)
# a connect that got no answer: refused, timed out, unreachable, or no outcome within the agent's wait (EINPROGRESS)
FAILED_RESULTS = frozenset(-e for e in (errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH,
                                        errno.EINPROGRESS))


def recent_in_window(table: OrderedDict, key, item, now: int, at_least: int) -> list:
    """Note ``item`` at ``now`` under ``key`` (a process's, bounded: least recently active dropped first) and
    return the items seen under it within the last FANOUT_WINDOW_NS (bounded too: what fell out is forgotten)."""
    seen = table.get(key)
    if seen is None:
        if len(table) >= MAX_FANOUT_PROCESSES:
            table.popitem(last=False)
        seen = table[key] = {}
    else:
        table.move_to_end(key)
    seen[item] = now
    if len(seen) > 4 * at_least:
        for old in [d for d, t in seen.items() if now - t > FANOUT_WINDOW_NS]:
            del seen[old]
        while len(seen) > 4 * at_least:
            del seen[next(iter(seen))]
    return [d for d, t in seen.items() if now - t <= FANOUT_WINDOW_NS]


def failed_fanout(ev: pb.Event, ctx: JobContext, at_least: int) -> str | None:
    """One process whose connects failed at many distinct destinations within a minute: a port or host scan
    (nmap -sT, a Python sweep, an agent probing for a way out), whatever the program is. Distributed training
    reaches many peers, but they answer; a rendezvous retry loop fails at one destination, not at dozens."""
    c = ev.connect
    if c.result not in FAILED_RESULTS or not ev.process.key:
        return None
    recent = recent_in_window(ctx.failed_destinations, ev.process.key, (c.daddr, c.dport), ev.ts_ns, at_least)
    if len(recent) < at_least:
        return None
    hosts = {d[0] for d in recent}
    return f"{len(recent)} distinct destinations failed within a minute ({len(hosts)} hosts, e.g. {c.daddr}:{c.dport})"


def host_fanout(ev: pb.Event, ctx: JobContext, at_least: int) -> str | None:
    """One process reaching many distinct hosts on one port within a minute, whatever they answer: a brute-forcer
    or a worm spreading over SSH, RDP, Redis or a container API. Which ports and which hosts count is the rule's
    other keys' to say (the engine evaluates this key after them, so it counts only what they let through)."""
    c = ev.connect
    if not ev.process.key:
        return None
    recent = recent_in_window(ctx.service_hosts, (ev.process.key, c.dport), c.daddr, ev.ts_ns, at_least)
    if len(recent) < at_least:
        return None
    return f"{len(recent)} distinct hosts on port {c.dport} within a minute (e.g. {c.daddr})"


DISCOVERY_WINDOW_NS = 60 * 10**9
# What an intruder runs in its first minute to learn where it landed (ATT&CK's discovery tactic): who am I, what
# is this host, who else is here, what can I reach, what can I raise. Each is ordinary alone; a training job does
# not run six kinds of them within a minute. Hardware and GPU queries (lscpu, nvidia-smi, df, free, hostname) are
# left out: job scripts print those.
DISCOVERY_PROGRAMS = {
    "whoami": "user", "id": "user", "groups": "groups", "w": "sessions", "who": "sessions", "users": "sessions",
    "last": "logins", "lastlog": "logins", "uname": "kernel", "hostnamectl": "kernel", "netstat": "sockets",
    "ss": "sockets", "lsof": "sockets", "arp": "neighbours", "ifconfig": "interfaces", "route": "routes",
    "getent": "accounts", "ps": "processes", "pstree": "processes", "getcap": "capabilities", "crontab": "cron",
    "dpkg": "packages", "rpm": "packages", "capsh": "capabilities", "systemctl": "services", "iptables": "firewall",
    "nft": "firewall", "mount": "mounts", "findmnt": "mounts", "printenv": "environment", "env": "environment",
    "sudo": "sudo", "find": "find", "cat": "read", "head": "read", "tail": "read", "less": "read", "more": "read",
    "ip": "ip", "squeue": "scheduler queue", "sinfo": "scheduler nodes", "scontrol": "scheduler",
    "sacctmgr": "scheduler accounts", "kubectl": "orchestrator", "oc": "orchestrator", "nvidia-smi": "gpu processes",
}
DISCOVERY_FILES = {
    "/etc/passwd": "accounts", "/etc/group": "groups", "/etc/os-release": "kernel", "/etc/issue": "kernel",
    "/proc/version": "kernel", "/etc/hosts": "hosts", "/etc/resolv.conf": "hosts", "/proc/net/tcp": "sockets",
    "/proc/net/arp": "neighbours", "/proc/net/route": "routes", "/etc/crontab": "cron", "/etc/sudoers": "sudo",
    "/etc/pam.d/": "auth policy", "/etc/login.defs": "auth policy",
    "/proc/1/cgroup": "container", "/.dockerenv": "container", "/proc/self/status": "capabilities",
    "/etc/exports": "mounts", "/etc/fstab": "mounts",
}


def _file_kind(path: str) -> str | None:
    """The discovery kind of a file read: by its exact path, or by the directory (a key ending in /) it is in."""
    kind = DISCOVERY_FILES.get(path)
    if kind is None and "/" in path[1:]:
        kind = DISCOVERY_FILES.get(path[:path.rindex("/") + 1])
    return kind


def discovery_kind(ev: pb.Event) -> str | None:
    """What a discovery command asks about, or None: the program's name, with what it reads for cat and kin, the
    option for the programs that also do other things (sudo -l, crontab -l, dpkg -l, find -perm, ip addr)."""
    argv = list(ev.exec.argv)
    name = (ev.exec.filename or (argv[0] if argv else "")).rsplit("/", 1)[-1]
    kind = DISCOVERY_PROGRAMS.get(name)
    args = argv[1:]
    if kind == "read":
        return next((found for a in args if (found := _file_kind(a))), None)
    if kind == "sudo":
        return "sudo" if args[:1] == ["-l"] or args[:1] == ["-ll"] else None
    if kind in ("cron", "packages"):
        return kind if any(a in ("-l", "-qa", "--list") for a in args) else None
    if kind == "find":
        return "setuid files" if "-perm" in args else None
    if kind == "ip":
        return {"a": "interfaces", "addr": "interfaces", "address": "interfaces", "r": "routes", "route": "routes",
                "n": "neighbours", "neigh": "neighbours", "link": "interfaces"}.get(next(
                    (a for a in args if not a.startswith("-")), ""))
    if kind == "services":
        return kind if any(a in ("list-units", "list-unit-files", "list-timers") for a in args) else None
    if kind == "firewall":
        return kind if any(a in ("-L", "-S", "list", "--list") for a in args) else None
    if kind == "gpu processes":                      # who else computes on these GPUs (plain nvidia-smi is not asked)
        return kind if any(a.startswith("--query-compute-apps") or a in ("pmon", "--query-accounted-apps")
                           for a in args) else None
    if kind == "scheduler queue":                    # the job's own: squeue --me, -u $USER, -j $SLURM_JOB_ID
        return None if any(a in ("--me", "-u", "--user", "-j", "--jobs") or a.startswith(("--user=", "--jobs="))
                           for a in args) else kind
    if kind == "scheduler":                          # scontrol show nodes|partition|config|assoc...; not show job
        shown = args[1:2] if args[:1] == ["show"] else []
        return f"scheduler {shown[0]}" if shown and shown[0] not in ("job", "jobid", "step", "hostnames") else None
    if kind == "scheduler accounts":
        return kind if any(a in ("show", "list") for a in args[:2]) else None
    if kind == "orchestrator":                       # what else runs here and what this identity may do
        verbs = [a for a in args if not a.startswith("-")][:3]
        if verbs[:2] == ["auth", "can-i"]:
            return "permissions"
        return "orchestrator" if verbs[:1] in (["get"], ["describe"]) and any(
            a in ("-A", "--all-namespaces") or a.startswith("--all-namespaces") for a in args) else None
    if kind in ("mounts", "environment"):
        return kind if not args else None            # the listing, not a mount or a command under env
    return kind


def discovery_burst(ev: pb.Event, ctx: JobContext, at_least: int) -> str | None:
    """A job that ran at least ``at_least`` kinds of discovery command within a minute (whoami, id, uname -a,
    cat /etc/passwd, netstat, sudo -l, find -perm -4000, ...): someone learning where they landed, by hand or by
    a script (linpeas-style), whatever the tool is called."""
    kind = discovery_kind(ev)
    if kind is None:
        return None
    now = ev.ts_ns
    ctx.discovery[kind] = now                    # bounded by the vocabulary above
    recent = sorted(k for k, t in ctx.discovery.items() if now - t <= DISCOVERY_WINDOW_NS)
    last = ctx.discovery_burst_ns
    if len(recent) < at_least or (last is not None and now - last <= DISCOVERY_WINDOW_NS):
        return None                              # each command is its own process: one report per burst, not per
    ctx.discovery_burst_ns = now                 # command that follows it
    return f"{len(recent)} kinds of discovery within a minute: {', '.join(recent)}"


LOOPBACK_PREFIXES = ("127.", "::ffff:127.")


def other_jobs_listener(ev: pb.Event, ctx: JobContext) -> str | None:
    """A connect over loopback to a port another job on this node listens on: one job reaching into another
    (its notebook, its Ray dashboard, its debug port) - jobs of a node share the host's loopback."""
    c = ev.connect
    if not (c.daddr.startswith(LOOPBACK_PREFIXES) or c.daddr == "::1"):
        return None
    owner = ctx.node_listeners.get(c.dport)
    if owner is None or owner == ev.job.id:
        return None
    return f"{c.daddr}:{c.dport}, where job {owner} listens"


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

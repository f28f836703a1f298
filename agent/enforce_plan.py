"""Policy -> what the kernel should hold: BPF map entries, switches, cgroup attachments. Pure: no BPF, no
kernel, so it is unit-tested without either (tests/test_enforce_plan.py); agent/enforce.py writes the plan.

Input: the policy, the host's cgroups (id -> path), and two lookups a test can replace (which binaries a name
resolves to, the host's resolvers). The planner keeps what must stay stable while records are in flight: rule
indexes, argv literal ids and payload fingerprint slots are append-only.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from agent.bpf_links import INET4_CONNECT, INET6_CONNECT, INET_EGRESS, UDP4_SENDMSG, UDP6_SENDMSG
from agent.exe_hash import kernel_dev
from agent.jobs import KIND_JOB_PARENTS, KIND_ROOTS, Job
from gpuguard.argv_scan import ARGV_FP_MAX, ARGV_RULES, ARGV_UNINSPECTABLE, FingerprintSet, literal_bytes
from gpuguard.v1 import events_pb2 as pb
from gpuguard.v1 import policy_pb2 as ppb
from gpuguard.vocab import JOB_HOST, option_mask

log = logging.getLogger(__name__)

DENY_PROGRAMS = ((b"deny_connect4", INET4_CONNECT), (b"deny_connect6", INET6_CONNECT),
                 (b"deny_sendmsg4", UDP4_SENDMSG), (b"deny_sendmsg6", UDP6_SENDMSG))
PAYLOAD_PROGRAM = (b"payload_egress", INET_EGRESS)
MODE_MONITOR, MODE_ENFORCE = 1, 2
# mirror of probes/gpuguard.h SOCKET_KIND_*; a kind's rule sits at struct socket_deny's rule[bit_length - 1]
SOCKET_KINDS = {"raw-ip": 1, "icmp": 2, "packet": 4}
TRAIT_BITS = 7                   # mirror of probes/enforce_exec.c: ExecTrait bits a kill_traits entry can name
# mirror of probes/enforce_payload.c
FP_MAX, FP_LEN, FP_NEAR, FP_WINDOW_MAX, FP_STRATUM, ANCHOR_FOLD = 16, 16, 8, 496, 1, 0xDFDFDFDF
FINGERPRINT = "<16s16sIIII"      # struct fingerprint: pattern, mask, offset_min, offset_max, min_len, flags
ARGV_RULE = struct.Struct("<IIQQQQ")   # struct argv_rule (probes/enforce_argv.c): rule, pad, all, any, opts, comms
PROGRAM_NAMES = {INET_EGRESS: "payload_egress", INET4_CONNECT: "deny_connect4",
                 INET6_CONNECT: "deny_connect6", UDP4_SENDMSG: "deny_sendmsg4", UDP6_SENDMSG: "deny_sendmsg6"}
V4_MAPPED = bytes(10) + b"\xff\xff"


FNV_PRIME, U64 = 0x100000001B3, (1 << 64) - 1


def name_hash(key: int, name: str) -> int:
    """The kernel's keyed hash of a DNS name suffix (probes/flow.c question_allowed): FNV-1a from the secret
    key over the name's wire form (length-prefixed labels), lower case, read backwards."""
    labels = [lb.encode("idna") if not lb.isascii() else lb.encode() for lb in name.strip().strip(".").lower()
              .removeprefix("*.").split(".") if lb]
    wire = b"".join(bytes([len(lb)]) + lb for lb in labels)
    h = key
    for c in reversed(wire):
        h = ((h ^ c) * FNV_PRIME) & U64
    return h


def address_key(address: str) -> bytes:
    """16 bytes, IPv4 as v4-mapped: the kernel's address keys."""
    ip = ipaddress.ip_address(address)
    return V4_MAPPED + ip.packed if ip.version == 4 else ip.packed


def host_resolvers(path: str = "/etc/resolv.conf") -> list[str]:
    """The nameservers this host's stub resolver asks: their answers teach the allowed addresses."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    try:
                        out.append(str(ipaddress.ip_address(parts[1].split("%")[0])))
                    except ValueError:
                        continue
    except OSError:
        pass
    return out


def kill_key(scope: int, comm: str) -> bytes:
    return struct.pack("<Q16s", scope, comm.encode()[:15])


EXEC_DIRS = ("/bin", "/usr/bin", "/usr/local/bin", "/sbin", "/usr/sbin")


def executables_named(name: str) -> set[tuple[int, int]]:
    """(kernel dev, inode) of the binaries a name resolves to on this host (through links: a renamed
    hard link or symlink to bash is still bash)."""
    out = set()
    for d in EXEC_DIRS:
        try:
            st = os.stat(os.path.join(d, name))
        except OSError:
            continue
        out.add((kernel_dev(st.st_dev), st.st_ino))
    return out


def deny_key(scope: int, cidr: str, port: int) -> bytes:
    net = ipaddress.ip_network(cidr, strict=False)
    if net.version == 4:
        addr, bits = V4_MAPPED + net.network_address.packed, 96 + net.prefixlen
    else:
        addr, bits = net.network_address.packed, net.prefixlen
    data = struct.pack("<Q", scope) + struct.pack("!H", port) + addr + b"\0\0"
    return struct.pack("<I", 64 + 16 + bits) + data


def fingerprint_struct(pw: ppb.PayloadWatch) -> bytes:
    """struct fingerprint of probes/enforce_payload.c: the pattern stored already masked."""
    if pw.stratum:
        return struct.pack(FINGERPRINT, b"", b"", 0, 0, 0, FP_STRATUM)
    pattern = bytes(pw.pattern)
    mask = bytes(pw.mask) or b"\xff" * len(pattern)
    if not 1 <= len(pattern) <= FP_LEN or len(mask) != len(pattern):
        raise ValueError(f"{pw.rule_id}: a payload pattern is 1..{FP_LEN} bytes with a mask of the same length")
    if pw.offset_max > FP_WINDOW_MAX or pw.offset_min > pw.offset_max:
        raise ValueError(f"{pw.rule_id}: payload offsets must satisfy min <= max <= {FP_WINDOW_MAX}")
    masked = bytes(p & m for p, m in zip(pattern, mask, strict=True))
    if pw.offset_max - pw.offset_min >= FP_NEAR and len(pattern) < 7:
        raise ValueError(f"{pw.rule_id}: a pattern searched over a wide window needs at least 7 bytes")
    return struct.pack(FINGERPRINT, masked, mask, pw.offset_min, pw.offset_max,
                       max(pw.min_len, pw.offset_min + len(pattern)), 0)


def cgroup_level(path: str) -> int:
    """A cgroup's depth below the cgroup2 root (the root: 0), as bpf_get_current_ancestor_cgroup_id counts."""
    return len([part for part in path.split("/") if part])


def scope_matches(scope: ppb.Scope, job: Job) -> bool:
    if scope.host_wide:
        return True
    if job.kind == JOB_HOST or job.id in scope.exclude_job_ids:
        return False
    return job.id in scope.job_ids or job.kind in scope.job_kinds


def policy_scopes(policy: ppb.Policy) -> list[ppb.Scope]:
    """Every scope the policy's kernel entries name (a new job cgroup in one of them means a re-plan)."""
    return [k.scope for k in policy.kill] + [d.scope for d in policy.deny] + [a.scope for a in policy.allow] + \
        [s.scope for s in policy.payload] + [n.scope for n in policy.no_connect] + \
        [t.scope for t in policy.kill_traits] + [d.scope for d in policy.deny_sockets] + \
        [a.scope for a in policy.argv_kill] + [e.scope for e in policy.escape]


def same_job(a: Job, b: Job) -> bool:
    """One job: a step or container cgroup (another name) is part of its job."""
    return (a.kind, a.id) == (b.kind, b.id)


@dataclass
class Plan:
    policy: ppb.Policy                       # as given, its rule list completed with every id an entry names
    maps: dict[str, dict[bytes, bytes]]      # BPF hash map -> its entries (the applier adds, then removes stale)
    switches: dict[str, int]                 # BPF array map -> its value at key 0
    attachments: set[tuple[str, int]]        # (cgroup path, attach type)
    fingerprints: dict[bytes, int]           # payload fingerprint -> slot
    origins: dict[int, bytes]                # watched job cgroup -> the task origin its processes get


class Planner:
    def __init__(self, job_of_path: Callable[[str], Job], name_key: int,
                 executables: Callable[[str], set[tuple[int, int]]] = None,
                 resolvers: Callable[[], list[str]] = None) -> None:
        self.job_of_path = job_of_path
        self.name_key = name_key
        self.executables_named = executables or executables_named
        self.host_resolvers = resolvers or host_resolvers
        self.rule_ids: list[str] = []            # append-only: an index in flight never changes meaning
        self.argv_literals = FingerprintSet()     # literal -> bit, stable across policies (append-only)
        self.fp_slots: dict[bytes, int] = {}     # fingerprint -> slot in the fingerprints array
        self.paths: dict[int, str] = {}          # the cgroups of the last plan

    def rule_name(self, index: int) -> str:
        return self.rule_ids[index] if 0 <= index < len(self.rule_ids) else f"rule#{index}"

    def rule_index(self, rule_id: str, rules: list[str]) -> int:
        if rule_id not in rules:
            rules.append(rule_id)
        if rule_id not in self.rule_ids:
            self.rule_ids.append(rule_id)
        return self.rule_ids.index(rule_id)

    def plan(self, policy: ppb.Policy, paths: dict[int, str]) -> Plan:
        """What the kernel should hold for this policy on a host with these cgroups (id -> path)."""
        self.paths = paths
        rules = list(policy.rules)
        roots = self._job_roots(paths)
        kill, deny = {}, {}
        attach: set[tuple[str, int]] = set()
        for kb in policy.kill:
            if not kb.comm:
                continue
            flags = (pb.KILL_IF_STDIO_SOCKET if kb.stdio_socket else 0) | \
                (pb.KILL_IF_PIPE_NETWORK if kb.stdio_pipe_network else 0) | \
                (pb.KILL_IF_PTY_NETWORK if kb.stdio_pty_network else 0)
            val = struct.pack("<IIQ", self.rule_index(kb.rule_id, rules), flags, option_mask(kb.options))
            for cgid in self._scope_ids(kb.scope, paths, roots):
                kill[kill_key(cgid, kb.comm)] = val
                if kb.stdio_pipe_network or kb.stdio_pty_network:   # the connect hooks see the other end
                    attach.update((paths[cgid], t) for _n, t in DENY_PROGRAMS)
        trait_rules: dict[int, list[int]] = {}        # scope -> rule index per trait bit (-1: none)
        trait_exempt, trait_bits = {}, 0
        for kt in policy.kill_traits:
            idx = self.rule_index(kt.rule_id, rules)
            trait_bits |= kt.traits
            for cgid in self._scope_ids(kt.scope, paths, roots):
                slots = trait_rules.setdefault(cgid, [-1] * TRAIT_BITS)
                for i in range(TRAIT_BITS):
                    if kt.traits & (1 << i) and slots[i] < 0:
                        slots[i] = idx
            for name in kt.exempt:
                trait_exempt[struct.pack("<I16s", idx, name.encode()[:15])] = struct.pack("<I", 1)
        kill_traits = {struct.pack("<Q", cgid): struct.pack(f"<I{TRAIT_BITS}I",
                                                            sum(1 << i for i, r in enumerate(slots) if r >= 0),
                                                            *(max(r, 0) for r in slots))
                       for cgid, slots in trait_rules.items()}
        deny_sockets: dict[bytes, list[int]] = {}       # scope -> [kinds, rule of each kind]
        for sd in policy.deny_sockets:
            idx = self.rule_index(sd.rule_id, rules)
            for cgid in self._scope_ids(sd.scope, paths, roots):
                entry = deny_sockets.setdefault(struct.pack("<Q", cgid), [0, 0, 0, 0])
                for kind in set(sd.kinds) & set(SOCKET_KINDS):
                    bit = SOCKET_KINDS[kind]
                    if not entry[0] & bit:              # the first rule naming a kind speaks for it
                        entry[0] |= bit
                        entry[bit.bit_length()] = idx
        for d in policy.deny:
            val = struct.pack("<I", self.rule_index(d.rule_id, rules))
            for cgid in self._scope_ids(d.scope, paths, roots):
                deny[deny_key(cgid, d.cidr, d.port)] = val
                attach.update((paths[cgid], t) for _n, t in DENY_PROGRAMS)
        allow_scopes, allow = {}, {}
        name_scopes, allowed_names, resolvers = {}, {}, {}
        host_dns = self.host_resolvers() if any(al.names for al in policy.allow) else []   # read once per apply
        for al in policy.allow:
            idx = struct.pack("<I", self.rule_index(al.rule_id, rules))
            trusted = sorted(set(host_dns) | set(al.resolvers)) if al.names else []
            for address in trusted:
                resolvers[address_key(address)] = struct.pack("<I", 1)
            for cgid in self._scope_ids(al.scope, paths, roots):
                allow_scopes[struct.pack("<Q", cgid)] = idx
                for cidr in al.cidrs:
                    for port in al.ports or [0]:
                        allow[deny_key(cgid, cidr, port)] = idx
                if al.names:                 # names: their resolvers on port 53, and the names' addresses
                    name_scopes[struct.pack("<Q", cgid)] = idx
                    for address in trusted:
                        allow[deny_key(cgid, address, 53)] = idx
                    for name in al.names:
                        allowed_names[struct.pack("<QQ", cgid, name_hash(self.name_key, name))] = \
                            struct.pack("<I", 1)
                attach.update((paths[cgid], t) for _n, t in DENY_PROGRAMS)
        no_comms, no_exes = {}, {}
        for nc in policy.no_connect:
            idx = struct.pack("<I", self.rule_index(nc.rule_id, rules))
            exes = self.executables_named(nc.comm)
            for cgid in self._scope_ids(nc.scope, paths, roots):
                no_comms[kill_key(cgid, nc.comm)] = idx
                for dev, ino in exes:
                    no_exes[struct.pack("<QIIQ", cgid, dev, 0, ino)] = idx
                attach.update((paths[cgid], t) for _n, t in DENY_PROGRAMS)
        argv_rules, argv_comms = self._argv_rules(policy.argv_kill, rules, paths, roots)
        escape, origins = self._escape_scopes(policy.escape, rules, paths, roots)
        fingerprints = self._fingerprint_slots(policy.payload)
        payload_scopes, fp_comms, fp_exes = {}, {}, {}
        for pw in policy.payload:
            slot = fingerprints[fingerprint_struct(pw)]
            val = struct.pack("<II", MODE_ENFORCE if pw.drop else MODE_MONITOR,
                              self.rule_index(pw.rule_id, rules))
            for cgid in self._scope_ids(pw.scope, paths, roots):
                key = struct.pack("<QII", cgid, slot, 0)
                if not pw.drop and key in payload_scopes:
                    continue          # two rules, one fingerprint, one scope: the dropping one reports
                payload_scopes[key] = val
                attach.add((paths[cgid], PAYLOAD_PROGRAM[1]))
            for name in pw.exempt:
                fp_comms[struct.pack("<I16s", slot, name.encode()[:15])] = struct.pack("<I", 1)
                for dev, ino in self.executables_named(name):
                    fp_exes[struct.pack("<IIQ", slot, dev, ino)] = struct.pack("<I", 1)
        excluded = {j for sc in policy_scopes(policy) for j in sc.exclude_job_ids}
        exempt = {struct.pack("<Q", cgid): struct.pack("<I", 1)
                  for cgid, (_p, job) in roots.items() if job.id in excluded}
        lowered = ppb.Policy()
        lowered.CopyFrom(policy)
        del lowered.rules[:]
        lowered.rules.extend(rules)
        maps = {"exempt_scopes": exempt, "kill_comms": kill, "kill_trait_exempt": trait_exempt,
                "kill_traits": kill_traits,
                "deny_socket_scopes": {k: struct.pack("<IIII", *v) for k, v in deny_sockets.items()},
                "deny_dest": deny, "allow_dest": allow, "trusted_resolvers": resolvers,
                "allowed_names": allowed_names, "name_scopes": name_scopes, "allow_scopes": allow_scopes,
                "argv_comms": argv_comms, "argv_kill": argv_rules, "fp_exempt_comms": fp_comms,
                "fp_exempt_exes": fp_exes, "payload_scopes": payload_scopes, "no_connect_comms": no_comms,
                "no_connect_exes": no_exes, "escape_scopes": escape}
        switches = {"kill_opts_config": int(any(kb.options for kb in policy.kill if kb.comm)),
                    "pty_watch": int(any(kb.stdio_pty_network for kb in policy.kill)),
                    "kill_trait_config": trait_bits, "argv_config": int(bool(argv_rules)),
                    "escape_config": int(bool(escape))}
        return Plan(lowered, maps, switches, attach, fingerprints, origins)

    def _argv_rules(self, entries, rules: list[str], paths, roots) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
        """ArgvKill entries -> (argv_kill: scope -> up to ARGV_RULES (rule, literal bits, option letters, name sets),
        argv_comms: comm -> the name sets holding it)."""
        if len({literal_bytes(lit) for e in entries for lit in (*e.all, *e.any)} | set(self.argv_literals.ids)) \
                >= ARGV_FP_MAX:
            self.argv_literals = FingerprintSet()      # full: start over (ids change only on this rare path)
        per_scope: dict[int, list[bytes]] = {}
        name_sets: dict[frozenset[str], int] = {}
        for e in entries:
            all_bits = ARGV_UNINSPECTABLE if e.uninspectable else 0
            for lit in e.all:
                all_bits |= 1 << self.argv_literals.add(lit)
            any_bits = 0
            for lit in e.any:
                any_bits |= 1 << self.argv_literals.add(lit)
            names = frozenset(n[:15] for n in e.comms)
            if names and names not in name_sets and len(name_sets) == 64:
                raise ValueError("more than 64 distinct program-name sets in argv kill entries")
            sets = 1 << name_sets.setdefault(names, len(name_sets)) if names else 0
            rule = ARGV_RULE.pack(self.rule_index(e.rule_id, rules), 0, all_bits, any_bits, option_mask(e.options),
                                  sets)
            for cgid in self._scope_ids(e.scope, paths, roots):
                per_scope.setdefault(cgid, []).append(rule)
        comms: dict[bytes, int] = {}
        for names, bit in name_sets.items():
            for name in names:
                key = name.encode()[:15].ljust(16, b"\0")
                comms[key] = comms.get(key, 0) | 1 << bit
        out = {}
        for cgid, entries_here in per_scope.items():
            if len(entries_here) > ARGV_RULES:
                log.error("scope %d: %d argv kill entries, the kernel holds %d; the rest are judged in user space",
                          cgid, len(entries_here), ARGV_RULES)
            kept = entries_here[:ARGV_RULES]
            out[struct.pack("<Q", cgid)] = struct.pack("<II", len(kept), 0) + b"".join(kept) + \
                bytes(ARGV_RULE.size * (ARGV_RULES - len(kept)))
        return out, {k: struct.pack("<Q", v) for k, v in comms.items()}

    def _fingerprint_slots(self, watches) -> dict[bytes, int]:
        """A slot per distinct fingerprint, stable across policies (an event in flight keeps its meaning)."""
        wanted = {fingerprint_struct(pw) for pw in watches}
        if len(wanted) > FP_MAX:
            raise ValueError(f"{len(wanted)} payload fingerprints; the egress hook holds at most {FP_MAX}")
        self.fp_slots = {fp: slot for fp, slot in self.fp_slots.items() if fp in wanted}
        free = sorted(set(range(FP_MAX)) - set(self.fp_slots.values()))
        for fp in sorted(wanted - set(self.fp_slots)):
            self.fp_slots[fp] = free.pop(0)
        return dict(self.fp_slots)

    def _escape_scopes(self, watches, rules: list[str], paths: dict[int, str],
                       roots: dict) -> tuple[dict[bytes, bytes], dict[int, bytes]]:
        """(escape_scopes entries, job cgroup -> task origin for the processes already there).

        A job here is (kind, id): its steps are inside it. Each watched job's own cgroup gets an entry saying
        its level; for a kind-wide watch, the job's parent (/slurm/uid_0, a QoS slice) gets one too, naming the
        same level, so a job created there later is watched from its first exec with no race against the agent.
        Moving from one job to a sibling job is leaving it."""
        by_path = {path: cgid for cgid, path in paths.items()}
        entries: dict[bytes, bytes] = {}
        origins: dict[int, bytes] = {}
        for ew in watches:
            idx = self.rule_index(ew.rule_id, rules)
            sc = ew.scope
            for cgid, (path, job) in roots.items():
                watched = sc.host_wide or job.id in sc.job_ids or job.kind in sc.job_kinds
                if job.id in sc.exclude_job_ids or not watched:
                    continue
                level = cgroup_level(path)
                value = struct.pack("<IIII", idx, level, int(ew.kill), 0)
                places = [cgid]
                parent = path.rsplit("/", 1)[0]
                if job.kind in sc.job_kinds and parent in by_path and cgroup_level(parent) > 0:
                    places.append(by_path[parent])
                for place in places:
                    key = struct.pack("<Q", place)
                    if key not in entries or ew.kill:
                        entries[key] = value
                if cgid not in origins or ew.kill:
                    origins[cgid] = struct.pack("<QIIII", cgid, level, idx, int(ew.kill), 0)
            for place, path in paths.items():        # where jobs of these kinds will be made, none there yet
                if any(KIND_JOB_PARENTS[k].search(path) for k in sc.job_kinds if k in KIND_JOB_PARENTS):
                    key = struct.pack("<Q", place)
                    if key not in entries or ew.kill:
                        entries[key] = struct.pack("<IIII", idx, cgroup_level(path) + 1, int(ew.kill), 0)
        return entries, origins

    def _job_roots(self, paths: dict[int, str]) -> dict[int, tuple[str, Job]]:
        """The shallowest cgroup of every job (kind, id): its parent belongs to another job, or to none. A job's
        steps and containers (its name differs) are inside it, not jobs of their own."""
        by_path = {path: cgid for cgid, path in paths.items()}
        roots = {}
        for cgid, path in paths.items():
            job = self.job_of_path(path)
            if job.kind == JOB_HOST:
                continue
            parent = path.rsplit("/", 1)[0] or "/"
            if parent == "/" or parent not in by_path or not same_job(self.job_of_path(parent), job):
                roots[cgid] = (path, job)
        return roots

    def _scope_ids(self, scope: ppb.Scope, paths: dict[int, str], roots: dict) -> set[int]:
        """Cgroups where a scope's entries live.

        host-wide: the cgroup2 root. job ids: each job's shallowest cgroup.
        job kinds: the *parent* of those cgroups (/slurm/uid_0, kubepods-besteffort.slice, ...),
        so a job created later is covered from its first instruction, with no race against
        the agent; jobs in monitor mode are exempted by exempt_scopes instead. A kind whose
        jobs sit right under the root falls back to per-job cgroups (never the whole host).
        """
        if scope.host_wide:
            return {min(paths, key=lambda i: len(paths[i]))} if paths else set()
        by_path = {path: cgid for cgid, path in paths.items()}
        out: set[int] = set()
        kind_roots: set[str] = {path for path in paths.values()
                                for kind in scope.job_kinds if kind in KIND_ROOTS and KIND_ROOTS[kind].search(path)}
        for cgid, (path, job) in roots.items():
            if job.id in scope.job_ids:
                out.add(cgid)
            elif job.kind in scope.job_kinds:
                parent = path.rsplit("/", 1)[0]
                if parent:
                    kind_roots.add(parent)
                else:
                    out.add(cgid)
        for path in kind_roots:   # the outermost of nested candidates only
            if path in by_path and not any(path.startswith(other + "/") for other in kind_roots):
                out.add(by_path[path])
        return out


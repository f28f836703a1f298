"""Policy from the collector -> BPF maps and cgroup attachments; userspace kills where the kernel cannot.

In the kernel (probes/enforce_*.c):
- kill at exec: ``kill_comms`` (scope cgroup, comm) -> (rule, option letters), and ``kill_traits``
  (scope cgroup, ExecTrait bit) -> rule: by what the image is (memfd, ld.so PATH, staging preload), any name;
- deny connect / UDP sendmsg: ``deny_dest`` LPM trie, programs attached to the scope cgroups;
- payload fingerprints (stratum, SSH banners, SOCKS, tunnel hellos): ``fingerprints`` + ``payload_scopes``,
  cgroup_skb egress attached to the scope cgroups;
- reverse shells through pipes: kill-at-exec entries with KILL_IF_PIPE_NETWORK, and the connect
  programs attached to their scopes (a process feeding a watched shell is refused its connect).
In user space: kill by executable sha256 after exec, kill the sender of a
dropped payload, and KillProcess commands (correlations).

A scope (host-wide, job ids, job kinds) resolves to the shallowest cgroups of
the matching jobs; new cgroups (cgroup_mkdir) are resolved as they appear.
Updates are differential — new entries and attachments first, stale ones
removed after — so applying a policy never opens a window. The last policy is
saved and re-applied at start, before the collector is reachable.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import secrets
import signal
import struct
import threading
import time
from collections import deque
from pathlib import Path

from agent.bpf_links import (
    BPF_F_ALLOW_MULTI,
    INET4_CONNECT,
    INET6_CONNECT,
    INET_EGRESS,
    UDP4_SENDMSG,
    UDP6_SENDMSG,
    Attachment,
    AttachmentLedger,
    detach_by_id,
    prog_id,
)
from agent.exe_hash import ExeHasher
from agent.jobs import KIND_ROOTS, Job
from agent.pinned_exec import PinnedExecKill, pin_dir_for
from agent.worker import Worker
from gpuguard.argv_scan import (
    ARGV_FP_MAX,
    ARGV_RULES,
    ARGV_UNINSPECTABLE,
    FingerprintSet,
    grammar_table,
    literal_bytes,
)
from gpuguard.v1 import collector_pb2 as cpb
from gpuguard.v1 import events_pb2 as pb
from gpuguard.v1 import policy_pb2 as ppb
from gpuguard.vocab import DROP_PAYLOAD, DROP_STRATUM, JOB_HOST, KILL, KILL_EXEC, KILL_TREE, option_mask

log = logging.getLogger(__name__)

DENY_PROGRAMS = ((b"deny_connect4", INET4_CONNECT), (b"deny_connect6", INET6_CONNECT),
                 (b"deny_sendmsg4", UDP4_SENDMSG), (b"deny_sendmsg6", UDP6_SENDMSG))
PAYLOAD_PROGRAM = (b"payload_egress", INET_EGRESS)
MODE_MONITOR, MODE_ENFORCE = 1, 2
SOCKET_KINDS = {"raw-ip": 1, "icmp": 2}    # mirror of probes/flow.c SOCKET_KIND_*
TRAIT_BITS = 6                   # mirror of probes/enforce_exec.c: ExecTrait bits a kill_traits entry can name
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
        out.add(((os.major(st.st_dev) << 20) | os.minor(st.st_dev), st.st_ino))
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


class ExecutedOrders:
    """Kill order ids this agent executed, kept on disk (bounded): a resent order is acked, not re-run."""

    def __init__(self, path: Path, keep: int = 10_000) -> None:
        self.path, self.keep = path, keep
        try:
            self.ids: list[str] = json.loads(path.read_text())[-keep:]
        except (OSError, ValueError):
            self.ids = []
        self._set = set(self.ids)

    def seen(self, order_id: str) -> bool:
        return order_id in self._set

    def remember(self, order_id: str) -> None:
        self.ids.append(order_id)
        self._set.add(order_id)
        if len(self.ids) > self.keep:
            self._set.discard(self.ids.pop(0))
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.ids))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("could not save executed kill orders in %s: %s", self.path, exc)


class Enforcer:
    def __init__(self, capture, state_dir: str | Path) -> None:
        self.capture = capture
        self.bpf = capture.probes.bpf
        self.jobs = capture.jobs
        self.state_dir = Path(state_dir)
        self.policy = ppb.Policy()
        self.lock = threading.RLock()
        self.ledger = AttachmentLedger(self.state_dir / "attachments.json")
        self.attached: dict[tuple[str, int], tuple[object, int]] = {}   # (cgroup, type) -> (fn, fd)
        self._entries: dict[str, dict[bytes, bytes]] = {
            name: {} for name in ("kill_comms", "kill_traits", "kill_trait_exempt", "deny_socket_scopes",
                                  "trusted_resolvers", "allowed_names", "name_scopes", "deny_dest", "allow_dest",
                                  "allow_scopes", "payload_scopes", "exempt_scopes",
                                  "no_connect_comms", "no_connect_exes", "fp_exempt_comms", "fp_exempt_exes",
                                  "fp_anchors", "argv_kill", "argv_fps", "argv_anchors", "argv_comms",
                                  "escape_scopes")}
        self.argv_literals = FingerprintSet()     # literal -> bit, stable across policies (append-only)
        self.fp_slots: dict[bytes, int] = {}     # fingerprint -> slot in the fingerprints array
        self.injected: deque = deque()
        capture.enricher.rule_name = self.rule_name
        capture.enricher.cgroup_listeners.append(self.on_cgroup)
        self.hasher = capture.hasher or ExeHasher()
        self.kills = 0
        self.rule_ids: list[str] = []   # append-only: an index in flight never changes meaning
        self.exec_kill = self._attach_kill_at_exec()
        self.argv_kill = self._attach_kill_by_argv()
        self.name_key = secrets.randbits(64)      # keys the name hashes: a job cannot forge an allowed name's hash
        table = self.bpf[b"name_hash_key"]
        table[table.Key(0)] = table.Leaf(self.name_key)
        self.orders = ExecutedOrders(self.state_dir / "orders.json")
        self.worker = Worker("enforcer")        # cgroup walks, hashing and kills, off the poll thread
        self._reapply_lock = threading.Lock()
        self._reapply_pending = False
        self.reapplied = 0

    def _attach_kill_at_exec(self):
        """Kill-at-exec through a pinned bpf_link (survives the agent); BCC's own attach if that fails."""
        bpf_type = type(self.bpf)
        fn = self.bpf.load_func(b"kill_at_exec", bpf_type.TRACEPOINT)
        try:
            return PinnedExecKill(fn.fd, pin_dir_for(self.state_dir))
        except OSError as exc:
            log.warning("kill-at-exec: no pinned link (%s); attached for this process's lifetime only", exc)
            self.bpf.attach_tracepoint(tp=b"sched:sched_process_exec", fn_name=b"kill_at_exec")
            return None

    def _attach_kill_by_argv(self):
        """The whole-argv scan: two tail-called programs in a prog array (pinned with the link, so a dead agent's
        node keeps scanning), the grammar table, and kill_by_argv on sched_process_exec."""
        import ctypes as ct  # noqa: PLC0415

        bpf_type = type(self.bpf)
        progs = self.bpf[b"argv_scan_next"]
        for slot, name in ((0, b"argv_scan_piece"), (1, b"argv_check_piece")):
            progs[ct.c_int(slot)] = ct.c_int(self.bpf.load_func(name, bpf_type.TRACEPOINT).fd)
        table = self.bpf[b"argv_table"]
        table[table.Key(0)] = table.Leaf.from_buffer_copy(grammar_table())
        fn = self.bpf.load_func(b"kill_by_argv", bpf_type.TRACEPOINT)
        try:
            return PinnedExecKill(fn.fd, pin_dir_for(self.state_dir), prefix="kill_argv-",
                                  maps={"argv_progs-": progs.map_fd})
        except OSError as exc:
            log.warning("kill-by-argv: no pinned link (%s); attached for this process's lifetime only", exc)
            self.bpf.attach_tracepoint(tp=b"sched:sched_process_exec", fn_name=b"kill_by_argv")
            return None

    # -- lifecycle ------------------------------------------------------------------
    @property
    def policy_version(self) -> int:
        return self.policy.version

    def programs(self) -> list[str]:
        """Enforcement programs in force now, for the heartbeat (the collector checks them against policy)."""
        with self.lock:
            types = {t for (_c, t) in self.attached}
        names = {KILL_EXEC} if self.exec_kill is None or self.exec_kill.attached else set()
        names.update(PROGRAM_NAMES.get(t, f"attach_type_{t}") for t in types)
        return sorted(names)

    def start(self) -> None:
        """Re-apply the saved policy, then detach what a previous (killed) agent left attached."""
        leftovers = self.ledger.load()
        saved = self.state_dir / "policy.pb"
        if saved.exists():
            try:
                policy = ppb.Policy.FromString(saved.read_bytes())
                self.apply(policy, persist=False)
                log.info("re-applied saved policy version %d before contacting the collector", policy.version)
            except Exception as exc:  # a bad state file must not stop the agent
                log.error("saved policy %s unusable: %s", saved, exc)
        self._detach_leftovers(leftovers)

    def _detach_leftovers(self, leftovers: list[Attachment]) -> None:
        ours = {prog_id(fn.fd) for fn, _cfd in self.attached.values()}
        for att in leftovers:
            if att.prog_id not in ours and detach_by_id(att):
                log.info("detached program %d left on %s by a previous agent", att.prog_id, att.cgroup)
        self._save_ledger()

    def _save_ledger(self) -> None:
        self.ledger.save([Attachment(self._full_path(c), t, prog_id(fn.fd))
                          for (c, t), (fn, _cfd) in self.attached.items()])

    def _full_path(self, cgroup: str) -> str:
        return str(self.jobs.root / cgroup.lstrip("/"))

    def close(self, detach: bool = True) -> None:
        """Detach everything (a clean stop); detach=False leaves enforcement running in the kernel."""
        self.worker.drain(10)
        self.worker.close()
        with self.lock:
            if self.on_cgroup in self.capture.enricher.cgroup_listeners:
                self.capture.enricher.cgroup_listeners.remove(self.on_cgroup)
            if detach:
                for (cgroup, attach_type), (fn, cfd) in list(self.attached.items()):
                    self._detach(cgroup, attach_type, fn, cfd)
                self.attached.clear()
                self.ledger.save([])
            for pinned in (self.exec_kill, self.argv_kill):
                if pinned is not None:
                    pinned.close(unpin=detach)

    # -- policy ---------------------------------------------------------------------
    def rule_name(self, index: int) -> str:
        return self.rule_ids[index] if 0 <= index < len(self.rule_ids) else f"rule#{index}"

    def _rule_index(self, rule_id: str, rules: list[str]) -> int:
        if rule_id not in rules:
            rules.append(rule_id)
        if rule_id not in self.rule_ids:
            self.rule_ids.append(rule_id)
        return self.rule_ids.index(rule_id)

    def apply(self, policy: ppb.Policy, persist: bool = True) -> None:
        with self.lock:
            rules = list(policy.rules)
            paths = self.jobs.job_paths()
            roots = self._job_roots(paths)
            kill, deny = {}, {}
            attach: set[tuple[str, int]] = set()
            for kb in policy.kill:
                if not kb.comm:
                    continue
                flags = (pb.KILL_IF_STDIO_SOCKET if kb.stdio_socket else 0) | \
                    (pb.KILL_IF_PIPE_NETWORK if kb.stdio_pipe_network else 0) | \
                    (pb.KILL_IF_PTY_NETWORK if kb.stdio_pty_network else 0)
                val = struct.pack("<IIQ", self._rule_index(kb.rule_id, rules), flags, option_mask(kb.options))
                for cgid in self._scope_ids(kb.scope, paths, roots):
                    kill[kill_key(cgid, kb.comm)] = val
                    if kb.stdio_pipe_network or kb.stdio_pty_network:   # the connect hooks see the other end
                        attach.update((paths[cgid], t) for _n, t in DENY_PROGRAMS)
            trait_rules: dict[int, list[int]] = {}        # scope -> rule index per trait bit (-1: none)
            trait_exempt, trait_bits = {}, 0
            for kt in policy.kill_traits:
                idx = self._rule_index(kt.rule_id, rules)
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
            deny_sockets: dict[bytes, tuple[int, int]] = {}
            for sd in policy.deny_sockets:
                idx = self._rule_index(sd.rule_id, rules)
                kinds = sum(SOCKET_KINDS.get(k, 0) for k in set(sd.kinds))
                for cgid in self._scope_ids(sd.scope, paths, roots):
                    rule_idx, have = deny_sockets.get(struct.pack("<Q", cgid), (idx, 0))
                    deny_sockets[struct.pack("<Q", cgid)] = (rule_idx, have | kinds)
            for d in policy.deny:
                val = struct.pack("<I", self._rule_index(d.rule_id, rules))
                for cgid in self._scope_ids(d.scope, paths, roots):
                    deny[deny_key(cgid, d.cidr, d.port)] = val
                    attach.update((paths[cgid], t) for _n, t in DENY_PROGRAMS)
            allow_scopes, allow = {}, {}
            name_scopes, allowed_names, resolvers = {}, {}, {}
            host_dns = host_resolvers() if any(al.names for al in policy.allow) else []   # read once per apply
            for al in policy.allow:
                idx = struct.pack("<I", self._rule_index(al.rule_id, rules))
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
                idx = struct.pack("<I", self._rule_index(nc.rule_id, rules))
                exes = executables_named(nc.comm)
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
                                  self._rule_index(pw.rule_id, rules))
                for cgid in self._scope_ids(pw.scope, paths, roots):
                    key = struct.pack("<QII", cgid, slot, 0)
                    if not pw.drop and key in payload_scopes:
                        continue          # two rules, one fingerprint, one scope: the dropping one reports
                    payload_scopes[key] = val
                    attach.add((paths[cgid], PAYLOAD_PROGRAM[1]))
                for name in pw.exempt:
                    fp_comms[struct.pack("<I16s", slot, name.encode()[:15])] = struct.pack("<I", 1)
                    for dev, ino in executables_named(name):
                        fp_exes[struct.pack("<IIQ", slot, dev, ino)] = struct.pack("<I", 1)
            excluded = {j for sc in self._scopes(policy) for j in sc.exclude_job_ids}
            exempt = {struct.pack("<Q", cgid): struct.pack("<I", 1)
                      for cgid, (_p, job) in roots.items() if job.id in excluded}
            del policy.rules[:]
            policy.rules.extend(rules)
            self.policy = policy
            # Maps first, attachments last: a program attached to a new scope finds its entries already there,
            # and once the (logged) attachments are done, every entry is in force.
            self._sync_map("exempt_scopes", exempt)    # exemptions before the entries they qualify
            opts = self.bpf[b"kill_opts_config"]        # argv is read before entries that need it exist
            opts[opts.Key(0)] = opts.Leaf(int(any(kb.options for kb in policy.kill if kb.comm)))
            watch = self.bpf[b"pty_watch"]              # connect hooks record pty masters for such entries
            watch[watch.Key(0)] = watch.Leaf(int(any(kb.stdio_pty_network for kb in policy.kill)))
            self._sync_map("kill_comms", kill)
            self._sync_map("kill_trait_exempt", trait_exempt)     # exemptions before the entries they qualify
            self._sync_map("kill_traits", kill_traits)
            config = self.bpf[b"kill_trait_config"]
            config[config.Key(0)] = config.Leaf(trait_bits)
            self._sync_map("deny_socket_scopes", {k: struct.pack("<II", *v) for k, v in deny_sockets.items()})
            self._sync_map("deny_dest", deny)
            self._sync_map("allow_dest", allow)          # the allowed set before the scope that needs it
            self._sync_map("trusted_resolvers", resolvers)
            self._sync_map("allowed_names", allowed_names)
            self._sync_map("name_scopes", name_scopes)
            self._sync_map("allow_scopes", allow_scopes)
            self._write_argv_literals()             # literals and names before the entries that use them
            self._sync_map("argv_comms", argv_comms)
            self._sync_map("argv_kill", argv_rules)
            argv_on = self.bpf[b"argv_config"]
            argv_on[argv_on.Key(0)] = argv_on.Leaf(int(bool(argv_rules)))
            self._write_fingerprints(fingerprints)
            self._sync_map("fp_exempt_comms", fp_comms)     # exemptions before the scopes that use them
            self._sync_map("fp_exempt_exes", fp_exes)
            self._sync_map("payload_scopes", payload_scopes)
            self._sync_map("no_connect_comms", no_comms)
            self._sync_map("no_connect_exes", no_exes)
            self._sync_map("escape_scopes", escape)
            self._seed_task_origins(origins, paths)
            escape_on = self.bpf[b"escape_config"]
            escape_on[escape_on.Key(0)] = escape_on.Leaf(int(bool(escape)))
            self._sync_attachments(attach)
            if persist:
                self.state_dir.mkdir(parents=True, exist_ok=True)
                tmp = self.state_dir / "policy.pb.tmp"
                tmp.write_bytes(policy.SerializeToString())
                os.replace(tmp, self.state_dir / "policy.pb")
            log.info("policy %d applied: %d kill-at-exec entries (%d by trait, %d scopes by argv), %d deny entries, "
                     "%d egress allowlists, %d payload fingerprints in %d scopes, %d cgroup attachments",
                     policy.version, len(kill), len(kill_traits), len(argv_rules), len(deny), len(allow_scopes),
                     len(fingerprints), len(payload_scopes), len(self.attached))

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
            rule = ARGV_RULE.pack(self._rule_index(e.rule_id, rules), 0, all_bits, any_bits, option_mask(e.options),
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

    def _write_argv_literals(self) -> None:
        """Literal slots and anchors (add before use), then the prefilter bitmap."""
        fps = {struct.pack("<I", i): self.argv_literals.fp_struct(lit) for lit, i in self.argv_literals.ids.items()}
        self._sync_map("argv_fps", fps)
        anchors = {struct.pack("<I", window): struct.pack("<I4B", len(ids), *(ids + [0] * (4 - len(ids))))
                   for window, ids in self.argv_literals.anchors().items()}
        self._sync_map("argv_anchors", anchors)
        bits = self.bpf[b"argv_anchor_bits"]
        bits[bits.Key(0)] = bits.Leaf.from_buffer_copy(self.argv_literals.bitmap())

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

    def _write_fingerprints(self, slots: dict[bytes, int]) -> None:
        """Slots, then the anchors of wide windows, then the config that makes them visible.

        Unused slots are zeroed with min_len beyond any packet, so a stale slot never matches."""
        table, config = self.bpf[b"fingerprints"], self.bpf[b"fingerprint_config"]
        by_slot = {slot: fp for fp, slot in slots.items()}
        never = struct.pack(FINGERPRINT, b"", b"", 0, 0, 0xFFFFFFFF, 0)
        for slot in range(FP_MAX):
            table[table.Key(slot)] = table.Leaf.from_buffer_copy(by_slot.get(slot, never))
        wanted = {}
        stratum_slot = 0
        for fp, slot in slots.items():
            pattern, _mask, lo, hi, _min, flags = struct.unpack(FINGERPRINT, fp)
            if flags & FP_STRATUM:
                stratum_slot = slot + 1
            elif hi - lo >= FP_NEAR:
                for shift in range(4):
                    word = struct.unpack_from("<I", pattern, shift)[0] & ANCHOR_FOLD
                    wanted[struct.pack("<I", word)] = struct.pack("<I", slot | shift << 8)
        self._sync_map("fp_anchors", wanted)
        used = max(by_slot, default=-1) + 1
        config[config.Key(0)] = config.Leaf.from_buffer_copy(
            struct.pack("<III", used, 1 if wanted else 0, stratum_slot))

    def _escape_scopes(self, watches, rules: list[str], paths: dict[int, str],
                       roots: dict) -> tuple[dict[bytes, bytes], dict[int, bytes]]:
        """(escape_scopes entries, job cgroup -> task origin for the processes already there).

        Entries sit where the other entries of the scope do (_scope_ids: a kind's parent cgroup, so later jobs
        are covered from their first exec), each saying at which level its jobs' own cgroups are: moving from
        one job to a sibling job is leaving it too."""
        entries: dict[bytes, bytes] = {}
        origins: dict[int, bytes] = {}
        for ew in watches:
            idx = self._rule_index(ew.rule_id, rules)
            job_roots = {cgid for cgid, (_p, job) in roots.items()
                         if job.id not in ew.scope.exclude_job_ids
                         and (ew.scope.host_wide or job.id in ew.scope.job_ids or job.kind in ew.scope.job_kinds)}
            for cgid in self._scope_ids(ew.scope, paths, roots) | job_roots:
                level = cgroup_level(paths[cgid])
                job_level = level if cgid in job_roots else level + 1
                if level == 0 or (cgid not in job_roots and ew.scope.host_wide):
                    continue                     # the root: a host-wide watch means every job, by its own cgroup
                key = struct.pack("<Q", cgid)
                if key not in entries or ew.kill:
                    entries[key] = struct.pack("<IIII", idx, job_level, int(ew.kill), 0)
            for cgid in job_roots:
                if cgid not in origins or ew.kill:
                    origins[cgid] = struct.pack("<QIIII", cgid, cgroup_level(paths[cgid]), idx, int(ew.kill), 0)
        return entries, origins

    def _seed_task_origins(self, origins: dict[int, bytes], paths: dict[int, str]) -> None:
        """Processes already running in a watched job (the kernel learns the others at exec and fork); entries
        of jobs no longer watched are dropped, so a lifted watch stops reporting at once."""
        table = self.bpf[b"task_origins"]
        for key, origin in list(table.items()):
            if origin.scope not in origins:
                with contextlib.suppress(KeyError):
                    del table[key]
        for cgid, origin in origins.items():
            for procs in Path(self._full_path(paths[cgid])).glob("**/cgroup.procs"):
                try:
                    pids = procs.read_text().split()
                except OSError:
                    continue
                for pid in pids:
                    table[table.Key(int(pid))] = table.Leaf.from_buffer_copy(origin)

    def _job_roots(self, paths: dict[int, str]) -> dict[int, tuple[str, Job]]:
        """The shallowest cgroup of every job: its parent belongs to another job, or to none."""
        by_path = {path: cgid for cgid, path in paths.items()}
        roots = {}
        for cgid, path in paths.items():
            job = self.jobs.job_of_path(path)
            if job.kind == JOB_HOST:
                continue
            parent = path.rsplit("/", 1)[0] or "/"
            if parent == "/" or self.jobs.job_of_path(parent) != job or parent not in by_path:
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

    def _sync_map(self, name: str, desired: dict[bytes, bytes]) -> None:
        table = self.bpf[name.encode()]
        current = self._entries[name]
        for key, val in desired.items():
            if current.get(key) != val:
                table[table.Key.from_buffer_copy(key)] = table.Leaf.from_buffer_copy(val)
        for key in set(current) - set(desired):
            try:
                del table[table.Key.from_buffer_copy(key)]
            except KeyError:
                pass
        self._entries[name] = desired

    def _sync_attachments(self, desired: set[tuple[str, int]]) -> None:
        from bcc import BPF  # noqa: PLC0415

        names = dict((t, n) for n, t in DENY_PROGRAMS)
        names[PAYLOAD_PROGRAM[1]] = PAYLOAD_PROGRAM[0]
        prog_types = {INET_EGRESS: BPF.CGROUP_SKB}
        for cgroup, attach_type in sorted(desired - set(self.attached)):
            prog_type = prog_types.get(attach_type, BPF.CGROUP_SOCK_ADDR)
            fn = self.bpf.load_func(names[attach_type], prog_type, attach_type=attach_type)
            full = self._full_path(cgroup)
            try:
                cfd = os.open(full, os.O_RDONLY | os.O_DIRECTORY)
            except OSError as exc:
                log.warning("cannot attach to %s: %s", full, exc)
                continue
            self.bpf.attach_func(fn, cfd, attach_type, BPF_F_ALLOW_MULTI)
            self.attached[(cgroup, attach_type)] = (fn, cfd)
            log.info("attached %s to %s", names[attach_type].decode(), full)
        for cgroup, attach_type in set(self.attached) - desired:
            fn, cfd = self.attached.pop((cgroup, attach_type))
            self._detach(cgroup, attach_type, fn, cfd)
        self._save_ledger()

    def _detach(self, cgroup: str, attach_type: int, fn, cfd: int) -> None:
        try:
            self.bpf.detach_func(fn, cfd, attach_type)
        except Exception as exc:  # cgroup already removed: the kernel dropped the program
            log.debug("detach %s from %s: %s", attach_type, cgroup, exc)
        os.close(cfd)

    def on_cgroup(self, cgroup_id: int, path: str) -> None:
        """A new cgroup (poll thread): if a scope covers its job, have the worker extend the policy to it."""
        job = self.jobs.job_of_path(path)
        scopes = self._scopes(self.policy)
        if job.kind == JOB_HOST:
            if any(KIND_ROOTS[k].search(path) for sc in scopes for k in sc.job_kinds if k in KIND_ROOTS):
                self._reapply_soon()                     # a new place where jobs will be created
            return
        if any(scope_matches(s, job) or job.id in s.exclude_job_ids for s in scopes):
            self._reapply_soon()

    def _reapply_soon(self) -> None:
        """One re-apply covers every cgroup created before it starts: a burst of new jobs costs a few walks."""
        with self._reapply_lock:
            if self._reapply_pending:
                return
            self._reapply_pending = True
        self.worker.submit(self._reapply)

    def _reapply(self) -> None:
        with self._reapply_lock:
            self._reapply_pending = False
        self.reapplied += 1
        self.apply(self.policy, persist=False)

    @staticmethod
    def _scopes(policy: ppb.Policy) -> list[ppb.Scope]:
        return [k.scope for k in policy.kill] + [d.scope for d in policy.deny] + [a.scope for a in policy.allow] + \
            [s.scope for s in policy.payload] + [n.scope for n in policy.no_connect] + \
            [t.scope for t in policy.kill_traits] + [d.scope for d in policy.deny_sockets]

    # -- userspace enforcement ----------------------------------------------------------
    def on_records(self, records: list[pb.Event]) -> None:
        """Poll thread: pick out what needs userspace enforcement; the worker hashes and kills."""
        hashing = any(k.sha256 for k in self.policy.kill)
        for ev in records:
            kind = ev.WhichOneof("body")
            if kind == "exec" and hashing:
                self.worker.submit(self._check_hash, ev)
            elif kind == "enforcement" and ev.enforcement.action in (DROP_STRATUM, DROP_PAYLOAD):
                self.worker.submit(self._kill_payload_sender, ev)

    def _check_hash(self, ev: pb.Event) -> None:
        hashed = [k for k in self.policy.kill if k.sha256]
        if not hashed or not ev.process.exe:
            return
        job = Job(ev.job.kind, ev.job.id, ev.job.name)
        digest = self.hasher.hash_now(ev.process.exe)
        for kb in hashed:
            if kb.sha256 == digest and scope_matches(kb.scope, job):
                self.kill(ev.process.pid, ev.process.key, kb.rule_id, tree=False,
                          why=f"executable sha256 {digest[:12]}… is known bad")

    def _kill_payload_sender(self, ev: pb.Event) -> None:
        if ev.process.pid:
            what = "a stratum handshake" if ev.enforcement.action == DROP_STRATUM else "a fingerprinted payload"
            self.kill(ev.process.pid, ev.process.key, ev.enforcement.rule_id, tree=False, why=f"sent {what}")

    def on_command(self, msg: cpb.CollectorMessage) -> cpb.AgentMessage | None:
        kind = msg.WhichOneof("msg")
        if kind == "policy":
            try:
                self.apply(msg.policy)
                return cpb.AgentMessage(policy_ack=cpb.PolicyAck(version=msg.policy.version))
            except Exception as exc:
                log.exception("policy %d failed", msg.policy.version)
                return cpb.AgentMessage(policy_ack=cpb.PolicyAck(version=self.policy.version, error=str(exc)))
        if kind == "kill":
            k = msg.kill
            if not k.order_id:
                self.kill(k.pid, k.process_key, k.rule_id, tree=k.tree, why="ordered by the collector")
                return None
            if self.orders.seen(k.order_id):     # a resent order (its ack was lost): never executed twice
                return cpb.AgentMessage(kill_ack=cpb.KillAck(order_id=k.order_id, executed=False,
                                                             detail="already executed"))
            killed = self.kill(k.pid, k.process_key, k.rule_id, tree=k.tree, why="ordered by the collector")
            self.orders.remember(k.order_id)
            return cpb.AgentMessage(kill_ack=cpb.KillAck(
                order_id=k.order_id, executed=killed > 0,
                detail=f"{killed} process(es) killed" if killed else "the process was gone or is another one now"))
        return None

    def kill(self, pid: int, key: str, rule_id: str, tree: bool, why: str) -> int:
        """SIGKILL pid (and its descendants) if it is still the process we mean."""
        table = self.capture.table
        p = table.get(pid)
        if p is None or (key and p.key != key):
            log.info("not killing pid %d: it is gone or is another process now", pid)
            return 0
        victims = [pid]
        if tree:
            victims += [c.pid for c in list(table.live.values()) if pid in
                        [a.pid for a in table.ancestors(c.pid)]]
        killed = 0
        for victim in victims:
            try:
                os.kill(victim, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        self.kills += killed
        if not killed:
            log.info("rule %s: %s (pid %d) already gone", rule_id, p.comm, pid)
            return 0
        log.warning("rule %s: killed %s (pid %d%s): %s", rule_id, p.comm, pid,
                    f" and {killed - 1} descendants" if tree else "", why)
        job = p.job or Job(JOB_HOST, JOB_HOST)
        ev = pb.Event(ts_ns=time.time_ns(), boot_id=self.capture.identity.boot_id,
                      enforcement=pb.Enforcement(rule_id=rule_id, action=KILL_TREE if tree else KILL,
                                                 detail=f"{p.comm} (pid {pid}) killed by the agent: {why}"))
        ev.process.CopyFrom(pb.Process(key=p.key, pid=pid, tid=pid, ppid=p.ppid, parent_key=table.parent_key(p),
                                       comm=p.comm, exe=p.exe, argv=p.argv, uid=p.uid, cgroup_id=p.cgroup_id,
                                       cgroup=self.jobs.path_of(p.cgroup_id)))
        ev.job.kind, ev.job.id, ev.job.name = job.kind, job.id, job.name
        self.injected.append(ev)
        return killed

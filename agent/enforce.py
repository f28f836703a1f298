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

from agent.bpf_links import INET_EGRESS, cgroup_link, detach_legacy, tracepoint_link
from agent.encoded import EXEC_FIELD, EncodedEvent, EncodedRun
from agent.enforce_plan import (
    ANCHOR_FOLD,
    DENY_PROGRAMS,
    FINGERPRINT,
    FP_MAX,
    FP_NEAR,
    FP_STRATUM,
    PAYLOAD_PROGRAM,
    PROGRAM_NAMES,
    Planner,
    policy_scopes,
    scope_matches,
)
from agent.exe_hash import ExeHasher
from agent.jobs import KIND_ROOTS, Job
from agent.pins import PinDir, PinnedLink
from agent.worker import Worker
from gpuguard.argv_scan import (
    grammar_table,
)
from gpuguard.v1 import collector_pb2 as cpb
from gpuguard.v1 import events_pb2 as pb
from gpuguard.v1 import policy_pb2 as ppb
from gpuguard.vocab import DROP_PAYLOAD, DROP_STRATUM, JOB_HOST, KILL, KILL_EXEC, KILL_TREE

log = logging.getLogger(__name__)

LEGACY_LEDGER = "attachments.json"   # what agents before the pins attached (cgroup, attach type, program id)

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
        self.bpf = capture.probes.enforcement()   # the enforcement programs' own object, on the shared maps
        self.jobs = capture.jobs
        self.state_dir = Path(state_dir)
        self.policy = ppb.Policy()
        self.hashing = False                 # a kill rule names an executable's hash: execs go to the hash worker
        self.lock = threading.RLock()
        self._types_seen: frozenset[int] = frozenset()   # attach types in force when programs() last looked
        self.pins = self._pin_dir()
        self.attached: dict[tuple[str, int], PinnedLink] = {}   # (cgroup, attach type) -> its link
        self._entries: dict[str, dict[bytes, bytes]] = {
            name: {} for name in ("kill_comms", "kill_traits", "kill_trait_exempt", "deny_socket_scopes",
                                  "trusted_resolvers", "allowed_names", "name_scopes", "deny_dest", "allow_dest",
                                  "allow_scopes", "payload_scopes", "exempt_scopes",
                                  "no_connect_comms", "no_connect_exes", "fp_exempt_comms", "fp_exempt_exes",
                                  "fp_anchors", "argv_kill", "argv_fps", "argv_anchors", "argv_comms",
                                  "escape_scopes")}
        self.injected: deque = deque()
        capture.enricher.rule_name = self.rule_name
        capture.enricher.cgroup_listeners.append(self.on_cgroup)
        self.hasher = capture.hasher or ExeHasher()
        self.kills = 0
        self.exec_kill = self._attach_kill_at_exec()
        self.argv_kill = self._attach_kill_by_argv()
        self.name_key = secrets.randbits(64)      # keys the name hashes: a job cannot forge an allowed name's hash
        table = self.bpf[b"name_hash_key"]
        table[table.Key(0)] = table.Leaf(self.name_key)
        self.planner = Planner(self.jobs.job_of_path, self.name_key)
        self.orders = ExecutedOrders(self.state_dir / "orders.json")
        self.worker = Worker("enforcer")        # cgroup walks, hashing and kills, off the poll thread
        self._reapply_lock = threading.Lock()
        self._reapply_pending = False
        self.reapplied = 0

    def _pin_dir(self) -> PinDir | None:
        try:
            return PinDir(self.state_dir)
        except OSError as exc:
            log.warning("no bpffs pin directory (%s): enforcement ends with this agent's process", exc)
            return None

    def _keep(self, what: str, link_fd: int, maps: dict[str, int] | None = None) -> PinnedLink:
        """Pinned (it outlives the agent) where bpffs allows; else held by this process only."""
        if self.pins is None:
            return PinnedLink(link_fd, None)
        return self.pins.keep(what, link_fd, maps)

    def _attach_kill_at_exec(self) -> PinnedLink | None:
        """Kill-at-exec through a pinned bpf_link (survives the agent); BCC's own attach if that fails."""
        fn = self.bpf.load_func(b"kill_at_exec", type(self.bpf).TRACEPOINT)
        try:
            return self._keep("kill_exec", tracepoint_link(fn.fd, "sched", "sched_process_exec"))
        except OSError as exc:
            log.warning("kill-at-exec: no bpf_link (%s); attached for this process's lifetime only", exc)
            self.bpf.attach_tracepoint(tp=b"sched:sched_process_exec", fn_name=b"kill_at_exec")
            return None

    def _attach_kill_by_argv(self) -> PinnedLink | None:
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
            return self._keep("kill_argv", tracepoint_link(fn.fd, "sched", "sched_process_exec"),
                              maps={"argv_progs": progs.map_fd})
        except OSError as exc:
            log.warning("kill-by-argv: no bpf_link (%s); attached for this process's lifetime only", exc)
            self.bpf.attach_tracepoint(tp=b"sched:sched_process_exec", fn_name=b"kill_by_argv")
            return None

    # -- lifecycle ------------------------------------------------------------------
    @property
    def policy_version(self) -> int:
        return self.policy.version

    def programs(self) -> list[str]:
        """Enforcement programs in force now, for the heartbeat (the collector checks them against policy). Never
        waits for a policy being applied (seconds on a node with many job cgroups): the heartbeat must keep its
        time, or the collector calls the agent silent; it then says what was in force before that apply."""
        if self.lock.acquire(blocking=False):
            try:
                self._types_seen = frozenset(t for (_c, t) in self.attached)
            finally:
                self.lock.release()
        names = {KILL_EXEC} if self.exec_kill is None or self.exec_kill.attached else set()
        names.update(PROGRAM_NAMES.get(t, f"attach_type_{t}") for t in self._types_seen)
        return sorted(names)

    def start(self) -> None:
        """Re-apply the saved policy, then unpin what a previous (killed) agent left: no window between."""
        saved = self.state_dir / "policy.pb"
        if saved.exists():
            try:
                policy = ppb.Policy.FromString(saved.read_bytes())
                self.apply(policy, persist=False)
                log.info("re-applied saved policy version %d before contacting the collector", policy.version)
            except Exception as exc:  # a bad state file must not stop the agent
                log.error("saved policy %s unusable: %s", saved, exc)
        if self.pins is not None:
            self.pins.drop_previous()
        self._detach_legacy()

    def _detach_legacy(self) -> None:
        """An agent from before the pins attached with BPF_PROG_ATTACH and listed them in attachments.json: once
        this agent's own links are in place, detach those (they would enforce an old policy forever) and drop the
        file."""
        legacy = self.state_dir / LEGACY_LEDGER
        try:
            entries = json.loads(legacy.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("%s unreadable (%s): programs it listed may still be attached", legacy, exc)
            return
        entries = entries if isinstance(entries, list) else []
        detached = 0
        for entry in entries:
            try:
                detached += detach_legacy(str(entry["cgroup"]), int(entry["attach_type"]), int(entry["prog_id"]))
            except (KeyError, TypeError, ValueError):
                log.error("%s: entry %r is not a cgroup/attach_type/prog_id: skipped", legacy, entry)
        legacy.unlink(missing_ok=True)
        log.info("detached %d of %d program(s) an earlier agent attached without a pin (%s, now removed)",
                 detached, len(entries), legacy)

    def _full_path(self, cgroup: str) -> str:
        return str(self.jobs.root / cgroup.lstrip("/"))

    def close(self, detach: bool = True) -> None:
        """Detach everything (a clean stop); detach=False leaves enforcement running in the kernel."""
        self.worker.drain(10)
        self.worker.close()
        with self.lock:
            if self.on_cgroup in self.capture.enricher.cgroup_listeners:
                self.capture.enricher.cgroup_listeners.remove(self.on_cgroup)
            for link in list(self.attached.values()):
                link.close(unpin=detach)
            if detach:
                self.attached.clear()
            for pinned in (self.exec_kill, self.argv_kill):
                if pinned is not None:
                    pinned.close(unpin=detach)
            if self.pins is not None and detach:
                self.pins.close()

    # -- policy ---------------------------------------------------------------------
    def rule_name(self, index: int) -> str:
        return self.planner.rule_name(index)

    def apply(self, policy: ppb.Policy, persist: bool = True) -> None:
        """Plan (pure: agent/enforce_plan.py), then write the plan: maps first, attachments last, so a program
        attached to a new scope finds its entries there, and exemptions before the entries they qualify."""
        with self.lock:
            plan = self.planner.plan(policy, self.jobs.job_paths())
            self.policy = plan.policy
            self.hashing = any(k.sha256 for k in plan.policy.kill)
            maps, on = plan.maps, plan.switches
            self._sync_map("exempt_scopes", maps["exempt_scopes"])
            self._switch("kill_opts_config", on["kill_opts_config"])   # argv is read before entries that need it
            self._switch("pty_watch", on["pty_watch"])          # connect hooks record pty masters for such entries
            for name in ("kill_comms", "kill_trait_exempt", "kill_traits"):
                self._sync_map(name, maps[name])
            self._switch("kill_trait_config", on["kill_trait_config"])
            for name in ("deny_socket_scopes", "deny_dest", "allow_dest", "trusted_resolvers", "allowed_names",
                         "name_scopes", "allow_scopes"):           # the allowed set before the scope that needs it
                self._sync_map(name, maps[name])
            self._write_argv_literals()             # literals and names before the entries that use them
            self._sync_map("argv_comms", maps["argv_comms"])
            self._sync_map("argv_kill", maps["argv_kill"])
            self._switch("argv_config", on["argv_config"])
            self._write_fingerprints(plan.fingerprints)
            for name in ("fp_exempt_comms", "fp_exempt_exes", "payload_scopes", "no_connect_comms",
                         "no_connect_exes", "escape_scopes"):
                self._sync_map(name, maps[name])
            self._seed_task_origins(plan.origins, self.planner.paths)
            self._switch("escape_config", on["escape_config"])
            self._sync_attachments(plan.attachments)
            if persist:
                self.state_dir.mkdir(parents=True, exist_ok=True)
                tmp = self.state_dir / "policy.pb.tmp"
                tmp.write_bytes(plan.policy.SerializeToString())
                os.replace(tmp, self.state_dir / "policy.pb")
            log.info("policy %d applied: %d kill-at-exec entries (%d by trait, %d scopes by argv), %d deny entries, "
                     "%d egress allowlists, %d payload fingerprints in %d scopes, %d cgroup attachments",
                     plan.policy.version, len(maps["kill_comms"]), len(maps["kill_traits"]), len(maps["argv_kill"]),
                     len(maps["deny_dest"]), len(maps["allow_scopes"]), len(plan.fingerprints),
                     len(maps["payload_scopes"]), len(self.attached))

    def _switch(self, name: str, value: int) -> None:
        table = self.bpf[name.encode()]
        table[table.Key(0)] = table.Leaf(value)

    def _write_argv_literals(self) -> None:
        """Literal slots and anchors (add before use), then the prefilter bitmap."""
        literals = self.planner.argv_literals
        fps = {struct.pack("<I", i): literals.fp_struct(lit) for lit, i in literals.ids.items()}
        self._sync_map("argv_fps", fps)
        anchors = {struct.pack("<I", window): struct.pack("<I4B", len(ids), *(ids + [0] * (4 - len(ids))))
                   for window, ids in self.planner.argv_literals.anchors().items()}
        self._sync_map("argv_anchors", anchors)
        bits = self.bpf[b"argv_anchor_bits"]
        bits[bits.Key(0)] = bits.Leaf.from_buffer_copy(literals.bitmap())

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
        """A pinned cgroup bpf_link per (scope cgroup, attach type): new ones first, stale ones unpinned after."""
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
                try:
                    what = f"cg{attach_type}_{os.fstat(cfd).st_ino}"     # the cgroup id is its inode
                    self.attached[(cgroup, attach_type)] = self._keep(what, cgroup_link(fn.fd, cfd, attach_type))
                finally:
                    os.close(cfd)
            except OSError as exc:
                log.warning("cannot attach %s to %s: %s", names[attach_type].decode(), full, exc)
                continue
            log.info("attached %s to %s", names[attach_type].decode(), full)
        for key in set(self.attached) - desired:
            self.attached.pop(key).close()

    def on_cgroup(self, cgroup_id: int, path: str) -> None:
        """A new cgroup (poll thread): if a scope covers its job, have the worker extend the policy to it."""
        job = self.jobs.job_of_path(path)
        scopes = policy_scopes(self.policy)
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

    # -- userspace enforcement ----------------------------------------------------------
    def on_records(self, records: list) -> None:
        """Poll thread: pick out what needs userspace enforcement; the worker hashes and kills."""
        hashing = self.hashing
        for ev in records:
            if type(ev) is EncodedRun:           # connects, or short lives' execs and exits (agent/lifecycle_batch.py)
                if hashing and ev.kinds is not None:
                    for one in ev.events():
                        if one.kind == EXEC_FIELD:
                            self.worker.submit(self._check_hash, one)
                continue
            if type(ev) is EncodedEvent:         # connects, execs and exits as bytes (agent/encoded.py)
                if hashing and ev.kind == EXEC_FIELD:
                    self.worker.submit(self._check_hash, ev)     # decoded there, off the capture thread
                continue
            kind = ev.WhichOneof("body")
            if kind == "exec" and hashing:
                self.worker.submit(self._check_hash, ev)
            elif kind == "enforcement" and ev.enforcement.action in (DROP_STRATUM, DROP_PAYLOAD):
                self.worker.submit(self._kill_payload_sender, ev)

    def _check_hash(self, record: pb.Event | EncodedEvent) -> None:
        hashed = [k for k in self.policy.kill if k.sha256]
        if not hashed:
            return
        ev = record.event() if type(record) is EncodedEvent else record
        if not ev.process.exe:
            return
        job = Job(ev.job.kind, ev.job.id, ev.job.name)
        p = self.capture.table.get(ev.process.pid)
        if p is None or p.key != ev.process.key:
            return                        # the process is gone (or its pid is another's): nothing of it to kill
        digest = self.hasher.hash_now(ev.process.exe, ev.process.pid, p.exe_inode)   # what ran, whatever its path is
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

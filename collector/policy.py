"""Rules -> alerts and kill orders (as events arrive) and -> the Policy agents enforce.

Layers of rules, later ones overriding earlier ones: the built-in file, the
collector's rules_dir (hot-reloaded), and the file applied with
``gpuguard policy apply`` (kept in the store with its version). Each change
makes a new policy version, pushed to every connected agent; agents ack the
version they run, and ``gpuguard policy show`` lists who is behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path

from collector.correlate import Correlator, Hit
from collector.hub import AgentHub
from collector.ingest import AgentSession
from collector.outputs import AlertPublisher
from collector.resolve import DomainResolver
from collector.rules.engine import Engine, RuleMatch
from collector.rules.keys import kernel_keys
from collector.rules.loader import Correlation, Rule, RuleError, RuleSet, load_ruleset, rule_texts
from gpuguard.v1 import collector_pb2 as cpb
from gpuguard.v1 import events_pb2 as pb
from gpuguard.v1 import policy_pb2 as ppb
from gpuguard.vocab import (
    DENY_CONNECT,
    DENY_PIPE_CONNECT,
    DROP_PAYLOAD,
    DROP_STRATUM,
    EXEC_TRAIT_BITS,
    KILL,
    KILL_ACTIONS,
    KILL_EXEC,
    KILL_TREE,
    SEEN_ACTIONS,
    SEEN_PAYLOAD,
    SEEN_REVERSE_SHELL,
    SEEN_STRATUM,
)

log = logging.getLogger(__name__)

# what the kernel programs can take, per event, from the key registry (each key says which lowering knows it)
KERNEL_EXEC_KEYS = kernel_keys("exec") - {"exec_trait_in"}           # kill_comms entries (by name)
KERNEL_PAYLOAD_KEYS = kernel_keys("payload")
KERNEL_CONNECT_KEYS = kernel_keys("connect") - {"exe_name_in", "daddr_not_in", "dns_name_not_in"}   # deny entries
ACTION_NAMES = {KILL_EXEC: "killed at exec in the kernel", DENY_CONNECT: "connect denied in the kernel",
                DROP_STRATUM: "stratum handshake dropped in the kernel", KILL: "killed by the agent",
                KILL_TREE: "process tree killed by the agent", SEEN_STRATUM: "stratum seen (monitor mode)",
                DROP_PAYLOAD: "payload dropped in the kernel", SEEN_PAYLOAD: "payload seen (reported only)",
                DENY_PIPE_CONNECT: "connect denied in the kernel (pipe to a shell)",
                SEEN_REVERSE_SHELL: "reverse shell seen (monitor mode)"}
MAX_EVIDENCE = 100


def denies_by_identity(rule: Rule) -> bool:
    """A connect rule matching only program names: "these programs never connect" (Policy.no_connect)."""
    return rule.event == "connect" and set(rule.match) == {"exe_name_in"}


def kills_by_trait(rule: Rule) -> bool:
    """An exec rule judging only what the image is (exec_trait_in): killed at exec in the kernel, any name;
    an ``unless: exe_name_in`` becomes the entry's exempt comms."""
    return rule.event == "exec" and set(rule.match) == {"exec_trait_in"} and set(rule.unless) <= {"exe_name_in"}


def denies_socket(rule: Rule) -> bool:
    """A socket rule naming only kinds (raw-ip, icmp): refused at socket() in the kernel."""
    return rule.event == "socket" and set(rule.match) == {"socket_kind_in"} and not rule.unless


def is_allowlist(rule: Rule) -> bool:
    """"Anything outside these networks and these names" (daddr_not_in, dns_name_not_in): an egress allowlist,
    enforced in the kernel (names through the addresses the job's trusted DNS answers gave for them)."""
    keys = set(rule.match)
    return rule.event == "connect" and bool(keys) and keys <= {"daddr_not_in", "dns_name_not_in"}


def kernel_enforceable(rule: Rule) -> bool:
    keys = set(rule.match)
    if kills_by_trait(rule) or denies_socket(rule):
        return True
    if rule.event == "exec":
        return "exe_name_in" in keys and keys <= KERNEL_EXEC_KEYS and not rule.unless
    if rule.event == "connect":
        allowlist = is_allowlist(rule)
        return bool(keys) and (keys <= KERNEL_CONNECT_KEYS or allowlist or denies_by_identity(rule)) \
            and not rule.unless
    return rule.event == "payload" and keys <= KERNEL_PAYLOAD_KEYS and set(rule.unless) <= {"exe_name_in"}


def payload_watch(rule: Rule, scope: ppb.Scope, drop: bool) -> ppb.PayloadWatch:
    """The fingerprint of a payload rule, for the agents' egress hook (dropping only if drop)."""
    pw = ppb.PayloadWatch(rule_id=rule.id, scope=scope, drop=drop, stratum="stratum" in rule.match,
                          exempt=[str(n)[:15] for n in rule.unless.get("exe_name_in", [])])
    spec = rule.match.get("payload")
    if spec is not None:
        pw.pattern, pw.mask, pw.min_len = spec.pattern, spec.mask, spec.min_len
        pw.offset_min, pw.offset_max = spec.offset_min, spec.offset_max
    return pw


def _scopes(rs: RuleSet, rule: Rule) -> tuple[ppb.Scope | None, ppb.Scope | None]:
    """(scope where the rule enforces, scope where it only monitors)."""
    default = rule.mode or rs.default_mode
    other = [j for j, m in rs.job_modes.items() if m != default]
    main = ppb.Scope(job_kinds=rule.scope.get("job_kinds", []), job_ids=rule.scope.get("job_ids", []),
                     host_wide=not rule.scope, exclude_job_ids=other)
    flipped = ppb.Scope(job_ids=other) if other else None
    if default == "enforce":
        return main, flipped
    return flipped, main


def compile_policy(rs: RuleSet, version: int) -> ppb.Policy:
    policy = ppb.Policy(version=version, rules=sorted(rs.rules))
    for rule in rs.rules.values():
        if rule.event == "payload":       # only the kernel sees payloads: every payload rule is a fingerprint
            enforce, monitor = _scopes(rs, rule)
            drop = rule.action in ("block", "kill") and kernel_enforceable(rule)
            for scope, may_drop in ((enforce, drop), (monitor, False)):
                if scope is not None:
                    policy.payload.append(payload_watch(rule, scope, may_drop))
            continue
        if rule.action not in ("block", "kill") or not kernel_enforceable(rule):
            continue
        enforce, monitor = _scopes(rs, rule)
        if enforce is None:
            continue
        if denies_socket(rule):
            policy.deny_sockets.add(rule_id=rule.id, scope=enforce, kinds=rule.match["socket_kind_in"])
        elif kills_by_trait(rule):
            bits = 0
            for trait in rule.match["exec_trait_in"]:
                bits |= EXEC_TRAIT_BITS[trait]
            policy.kill_traits.add(rule_id=rule.id, scope=enforce, traits=bits,
                                   exempt=[str(n)[:15] for n in rule.unless.get("exe_name_in", [])])
        elif rule.event == "exec":
            for name in rule.match["exe_name_in"]:
                network = bool(rule.match.get("stdio_network"))
                policy.kill.add(rule_id=rule.id, comm=str(name)[:15], scope=enforce,
                                options=rule.match.get("argv_short_option_in", ""),
                                stdio_socket=network or bool(rule.match.get("stdio_socket")),
                                stdio_pipe_network=network,
                                stdio_pty_network=bool(rule.match.get("stdio_pty_network")))
        elif denies_by_identity(rule):
            for name in rule.match["exe_name_in"]:
                policy.no_connect.add(rule_id=rule.id, comm=str(name)[:15], scope=enforce)
        elif is_allowlist(rule):
            policy.allow.add(rule_id=rule.id, cidrs=rule.match.get("daddr_not_in", []), scope=enforce,
                             names=rule.match.get("dns_name_not_in", []))
        elif rule.event == "connect":
            ports = rule.match.get("dport_in", [0])
            cidrs = rule.match.get("daddr_cidr_in", ["0.0.0.0/0", "::/0"])
            for cidr in cidrs:
                for port in ports:
                    policy.deny.add(rule_id=rule.id, cidr=cidr, port=port, scope=enforce)
    for rule in rs.rules.values():
        if rule.event == "exec" and rule.action == "kill" and "sha256_in" in rule.match:
            enforce, _ = _scopes(rs, rule)
            if enforce:
                for digest in rule.match["sha256_in"]:
                    policy.kill.add(rule_id=rule.id, sha256=digest, scope=enforce)
    return policy


class PolicyManager:
    def __init__(self, store, hub: AgentHub, rules_dir: str = "", resolver: DomainResolver | None = None,
                 alerts: AlertPublisher | None = None, outbox=None) -> None:
        self.store = store
        self.outbox = outbox                                 # collector.outbox.Outbox: kill orders as rows
        self.publisher = alerts or AlertPublisher(store)     # stores and publishes every alert
        self.resolver = resolver or DomainResolver(enabled=False)
        self.hub = hub
        self.rules_dir = rules_dir
        self.loop: asyncio.AbstractEventLoop | None = None
        self.lock = threading.RLock()
        self.version, self.user_yaml = store.load_policy()
        self._dir_stamp = self._stamp()
        self.rejected_reloads = 0
        self.alerts: OrderedDict[str, ppb.Alert] = OrderedDict()
        self.killed: OrderedDict[tuple[str, str], str] = OrderedDict()   # (host, process key) -> by which rule
        self.ruleset = self._load(self.user_yaml)
        self._install(self.ruleset, bump=self.version == 0)

    # -- rules ------------------------------------------------------------------------
    def _load(self, user_yaml: str) -> RuleSet:
        extra = (("applied policy", user_yaml),) if user_yaml else ()
        return load_ruleset(rule_texts(self.rules_dir, extra))

    def _install(self, rs: RuleSet, bump: bool = True) -> None:
        with self.lock:
            if bump:
                self.version += 1
                self.store.save_policy(self.version, self.user_yaml)
            self.ruleset = rs
            self.engine = Engine(rs, self.resolver)
            self.correlator = Correlator(rs)
            self.policy = compile_policy(rs, self.version)
        log.info("policy version %d: %d rules, %d correlations (%s); kernel: %d kill-at-exec, %d deny, "
                 "%d payload fingerprints", self.version, len(rs.rules), len(rs.correlations), ", ".join(rs.sources),
                 len(self.policy.kill), len(self.policy.deny), len(self.policy.payload))

    def _push_policy(self) -> None:
        msg = cpb.CollectorMessage(policy=self.policy)
        self._push(None, msg)

    def _push(self, host: str | None, msg: cpb.CollectorMessage) -> None:
        if self.loop is None:
            return
        self.loop.call_soon_threadsafe(self.hub.push, host, msg)

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        if self.rules_dir:
            loop.create_task(self._watch_rules_dir())
        loop.create_task(self._follow_store())

    async def _follow_store(self) -> None:
        """Another collector on the same store applied a policy: take it and push it to this one's agents."""
        while True:
            await asyncio.sleep(2)
            try:
                version, user_yaml = await asyncio.to_thread(self.store.load_policy)
            except Exception as exc:
                log.debug("policy check against the store failed: %s", exc)
                continue
            if version <= self.version:
                continue
            try:
                rs = await asyncio.to_thread(self._load, user_yaml)
            except RuleError as exc:
                log.error("policy version %d in the store is invalid here, keeping %d: %s", version, self.version,
                          exc)
                continue
            await asyncio.to_thread(self._take, version, user_yaml, rs)
            log.info("policy version %d taken from the store (applied by another collector)", version)
            self._push_policy()

    def apply_yaml(self, text: str) -> cpb.ApplyPolicyReply:
        try:
            rs = self._load(text)
        except RuleError as exc:
            return cpb.ApplyPolicyReply(error=str(exc))
        with self.lock:
            self.user_yaml = text
            self._install(rs)
        self._push_policy()
        return cpb.ApplyPolicyReply(policy=self.policy)

    def _stamp(self) -> tuple:
        if not self.rules_dir:
            return ()
        return tuple((p.name, p.stat().st_mtime_ns) for p in sorted(Path(self.rules_dir).glob("*.y*ml")))

    async def _watch_rules_dir(self) -> None:
        while True:
            await asyncio.sleep(2)
            stamp = await asyncio.to_thread(self._stamp)
            if stamp == self._dir_stamp:
                continue
            self._dir_stamp = stamp
            try:
                rs = await asyncio.to_thread(self._load, self.user_yaml)
            except RuleError as exc:
                log.error("rules_dir changed but the rules are invalid, keeping version %d: %s", self.version, exc)
                self.rejected_reloads += 1
                continue
            await asyncio.to_thread(self._install, rs)
            await asyncio.to_thread(self.store.add_audit, "rules_dir", "system", self.rules_dir, "policy.reload",
                                    f"version {self.version}, {len(rs.rules)} rules", True)
            self._push_policy()

    def _take(self, version: int, user_yaml: str, rs: RuleSet) -> None:
        with self.lock:
            self.version, self.user_yaml = version, user_yaml
            self._install(rs, bump=False)

    def describe(self) -> cpb.PolicyReply:
        reply = cpb.PolicyReply(policy=self.policy)
        for a in self.store.agents():
            reply.agents.add(host_id=a["host_id"], version=a["policy_version"] or 0, connected=bool(a["connected"]),
                             error=a["policy_error"] or "", last_seen_ns=a["last_seen_ns"] or 0)
        return reply

    # -- agents ---------------------------------------------------------------------------
    def on_connect(self, session: AgentSession) -> list[cpb.CollectorMessage]:
        if session.policy_version == self.policy.version:
            return []
        return [cpb.CollectorMessage(policy=self.policy)]

    def on_policy_ack(self, session: AgentSession, ack: cpb.PolicyAck) -> None:
        self.store.set_agent_state(session.host_id, policy_version=ack.version, policy_error=ack.error)
        if ack.error:
            log.error("agent %s failed to apply policy %d: %s", session.host_id, self.policy.version, ack.error)

    # -- detection -------------------------------------------------------------------------
    def on_events(self, host: str, events: list[pb.Event], emit: bool = True) -> None:
        """Evaluate events in order. emit=False only builds the correlation state (a new detector's warm-up)."""
        with self.lock:
            for ev in events:
                kind = ev.WhichOneof("body")
                if kind == "enforcement" and emit:
                    self._confirm(host, ev)
                matches = self.engine.evaluate(host, ev, self.correlator.context(host, ev))
                self.correlator.observe(host, ev)
                if not matches:
                    continue
                if emit:
                    for m in matches:
                        if m.rule.action != "signal":
                            self._alert_for_rule(host, ev, m)
                fired = self.correlator.record(host, ev, matches)
                for corr, evidence in fired if emit else ():
                    self._alert_for_correlation(host, ev, corr, evidence)

    def warm_window_s(self) -> float:
        """The longest correlation window in force: how far back a new detector replays."""
        return max((c.within_s for c in self.ruleset.correlations.values()), default=0.0)

    def _mode(self, rule_mode: str, job_id: str) -> str:
        return self.ruleset.mode_for(rule_mode, job_id)

    def _alert_for_rule(self, host: str, ev: pb.Event, m: RuleMatch) -> None:
        rule = m.rule
        mode = self._mode(rule.mode, ev.job.id)
        if mode == "monitor":
            seen = ev.enforcement.detail if ev.WhichOneof("body") == "enforcement" else ""
            state, outcome = ppb.ALERT_MONITORED, f"alerted (monitor mode){': ' + seen if seen else ''}"
        elif rule.action == "alert":
            state, outcome = ppb.ALERT_ALERTED, "alerted"
        elif ev.WhichOneof("body") == "enforcement" and ev.enforcement.action not in SEEN_ACTIONS:
            state, outcome = ppb.ALERT_CONFIRMED, ACTION_NAMES.get(ev.enforcement.action, ev.enforcement.action)
        elif kernel_enforceable(rule) and "stdio_pty_network" in rule.match:
            # the kernel judges the shell's parent only; the agent found the holder among all its ancestors
            state = ppb.ALERT_KILL_ORDERED
            outcome = "killed at exec in the kernel if its parent holds the pty; kill also ordered from the agent"
            self._order_kill(host, ev, rule.id, tree=False)
        elif kernel_enforceable(rule):
            state = ppb.ALERT_BLOCK_EXPECTED
            outcome = "block expected in the kernel (awaiting the agent's confirmation)"
        elif (host, ev.process.key) in self.killed:
            state = ppb.ALERT_ALREADY_KILLED
            outcome = f"process already killed ({self.killed[(host, ev.process.key)]})"
        else:
            state, outcome = ppb.ALERT_KILL_ORDERED, "kill ordered from the agent"
            self._order_kill(host, ev, rule.id, tree=False)
        self._upsert(self._alert(host, ev, rule.id, rule.description, rule.severity, rule.action, state, outcome,
                                 m.matched, [ev.seq]))

    def _alert_for_correlation(self, host: str, ev: pb.Event, corr: Correlation, evidence: list[Hit]) -> None:
        mode = self._mode(corr.mode, ev.job.id)
        kill = mode != "monitor" and corr.action != "alert"
        if kill:
            state, outcome = ppb.ALERT_KILL_ORDERED, "process trees killed by order of the collector"
            for hit in evidence:
                self._order_kill(hit.host, hit.event, corr.id, tree=True)
        elif mode == "monitor":
            state, outcome = ppb.ALERT_MONITORED, "alerted (monitor mode)"
        else:
            state, outcome = ppb.ALERT_ALERTED, "alerted"
        matched = {f"step{i + 1}": f"{h.rule_id} @ {h.host} pid {h.event.process.pid} {h.event.process.comm}"
                   for i, h in enumerate(evidence)}
        self._upsert(self._alert(host, ev, corr.id, corr.description, corr.severity, corr.action, state, outcome,
                                 matched, [h.event.seq for h in evidence]))

    def _order_kill(self, host: str, ev: pb.Event, rule_id: str, tree: bool) -> None:
        """A kill order to one agent, written to the audit log first (who: detection, why: the rule)."""
        p = ev.process
        self.store.add_audit("detection", "system", "", "kill.order",
                             f"host {host} pid {p.pid} key {p.key} comm {p.comm[:64]!r} rule {rule_id}"
                             f"{' (tree)' if tree else ''}", True)
        kill = cpb.KillProcess(pid=p.pid, process_key=p.key, rule_id=rule_id, tree=tree)
        if self.outbox is not None:
            self.outbox.order(host, kill)            # a row in the store, delivered by the host's collector
        else:
            self._push(host, cpb.CollectorMessage(kill=kill))

    def _confirm(self, host: str, ev: pb.Event) -> None:
        """An enforcement event from an agent: the alert it belongs to now says what was done."""
        e = ev.enforcement
        if e.action in (SEEN_STRATUM, SEEN_PAYLOAD):
            return       # only seen: the rules (payload event class) decide whether that is an alert
        if e.action in KILL_ACTIONS:
            self.killed[(host, ev.process.key)] = f"{e.rule_id}: {ACTION_NAMES.get(e.action, e.action)}"
            while len(self.killed) > 20_000:
                self.killed.popitem(last=False)
        meta = self.ruleset.rules.get(e.rule_id) or self.ruleset.correlations.get(e.rule_id)
        alert = self._alert(host, ev, e.rule_id, meta.description if meta else f"enforcement by {e.rule_id}",
                            meta.severity if meta else "high", meta.action if meta else "kill",
                            ppb.ALERT_MONITORED if e.action == SEEN_REVERSE_SHELL else ppb.ALERT_CONFIRMED,
                            f"{'seen' if e.action == SEEN_REVERSE_SHELL else 'confirmed'}: {e.detail}",
                            {"action": e.action}, [ev.seq])
        self._upsert(alert, detail=e.detail)

    @staticmethod
    def _alert(host, ev, rule_id, description, severity, action, state, outcome, matched, seqs) -> ppb.Alert:
        aid = hashlib.sha1(f"{host}|{rule_id}|{ev.process.key}".encode()).hexdigest()[:16]
        a = ppb.Alert(id=aid, rule_id=rule_id, description=description, severity=severity, action=action,
                      state=state, outcome=outcome, host_id=host, evidence_seqs=seqs,
                      ts_ns=ev.ts_ns or time.time_ns())
        a.job.CopyFrom(ev.job)
        a.process.CopyFrom(ev.process)
        a.matched.update({k: str(v) for k, v in matched.items()})
        return a

    def _upsert(self, alert: ppb.Alert, detail: str = "") -> None:
        """Merge into the alert with the same id. A confirmation from the agent is never downgraded by a later
        expectation; a second confirmation appends what else was done (e.g. dropped, then killed)."""
        old = self.alerts.get(alert.id)
        if old is not None:
            merged = ppb.Alert()
            merged.CopyFrom(old)
            room = MAX_EVIDENCE - len(old.evidence_seqs)     # bounded: a storm of hits is one alert
            if room > 0:
                seen = set(old.evidence_seqs)
                merged.evidence_seqs.extend([s for s in alert.evidence_seqs if s not in seen][:room])
            merged.matched.update({k: v for k, v in alert.matched.items() if k not in old.matched})
            confirmed = ppb.ALERT_CONFIRMED
            if alert.state == confirmed and old.state == confirmed:
                if detail and detail not in old.outcome:
                    merged.outcome = f"{old.outcome}; then {detail}"
            elif alert.state == confirmed or old.state != confirmed:
                merged.outcome, merged.state = alert.outcome, alert.state
            merged.ts_ns = min(old.ts_ns, alert.ts_ns)
            alert = merged
        else:
            log.warning("ALERT [%s] %s job %s:%s host %s pid %d %s: %s -> %s", alert.severity, alert.rule_id,
                        alert.job.kind, alert.job.id, alert.host_id, alert.process.pid, alert.process.comm,
                        dict(alert.matched), alert.outcome)
        self.alerts[alert.id] = alert
        self.alerts.move_to_end(alert.id)
        while len(self.alerts) > 20_000:
            self.alerts.popitem(last=False)
        self.publisher.record(alert)

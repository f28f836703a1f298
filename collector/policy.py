"""Rules -> alerts and kill orders (as events arrive) and -> the Policy agents enforce.

Four parts, composed by ``PolicyManager`` under one lock:
- ``PolicySource``: layers of rules, later ones overriding earlier ones - the built-in file, the collector's
  rules_dir (hot-reloaded) and the file applied with ``gpuguard policy apply`` (kept in the store with its
  version). Each change makes a new policy version (collector/rules/lowering.py), pushed to every connected
  agent; agents ack the version they run, and ``gpuguard policy show`` lists who is behind.
- ``Detection``: events in order -> rule and correlation matches -> alerts and kill orders.
- ``AlertBook`` (collector/alerts.py): alerts merged by id, published on each change.
- ``KillOrders`` (collector/orders.py): audited kill orders through the outbox or the host's stream.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from collector.alerts import MAX_EVIDENCE, AlertBook, make_alert  # noqa: F401 - MAX_EVIDENCE: tests read it here
from collector.correlate import OBSERVED_KINDS, Correlator, Hit
from collector.hub import AgentHub
from collector.ingest import AgentSession
from collector.orders import KillOrders
from collector.outputs import AlertPublisher
from collector.resolve import DomainResolver
from collector.rules.engine import Engine, RuleMatch, event_class
from collector.rules.loader import Correlation, RuleError, RuleSet, load_ruleset, rule_texts
from collector.rules.lowering import (  # noqa: F401 - the lowering's API, long imported from here
    KERNEL_CONNECT_KEYS,
    KERNEL_EXEC_KEYS,
    KERNEL_PAYLOAD_KEYS,
    compile_policy,
    denies_by_identity,
    denies_socket,
    is_allowlist,
    kernel_enforceable,
    kills_by_argv,
    kills_by_trait,
    payload_watch,
    watches_escape,
)
from gpuguard.v1 import collector_pb2 as cpb
from gpuguard.v1 import events_pb2 as pb
from gpuguard.v1 import policy_pb2 as ppb
from gpuguard.vocab import (
    DENY_CONNECT,
    DENY_PIPE_CONNECT,
    DROP_PAYLOAD,
    DROP_STRATUM,
    ESCAPE_ACTIONS,
    KILL,
    KILL_ACTIONS,
    KILL_BIND_SHELL,
    KILL_ESCAPE,
    KILL_EXEC,
    KILL_TREE,
    SEEN_ACTIONS,
    SEEN_PAYLOAD,
    SEEN_REVERSE_SHELL,
    SEEN_STRATUM,
    TAMPER_ACTIONS,
)

log = logging.getLogger(__name__)

ACTION_NAMES = {KILL_EXEC: "killed at exec in the kernel", DENY_CONNECT: "connect denied in the kernel",
                DROP_STRATUM: "stratum handshake dropped in the kernel", KILL: "killed by the agent",
                KILL_TREE: "process tree killed by the agent", SEEN_STRATUM: "stratum seen (monitor mode)",
                DROP_PAYLOAD: "payload dropped in the kernel", SEEN_PAYLOAD: "payload seen (reported only)",
                DENY_PIPE_CONNECT: "connect denied in the kernel (pipe to a shell)",
                SEEN_REVERSE_SHELL: "reverse shell seen (monitor mode)",
                KILL_BIND_SHELL: "killed at listen() in the kernel (pipe to a shell: a bind shell)"}




class PolicySource:
    """The rules in force and their version; pushes each new policy to the agents."""

    def __init__(self, store, hub: AgentHub, rules_dir: str, lock: threading.RLock,
                 on_install: Callable[[RuleSet], None]) -> None:
        self.store = store
        self.hub = hub
        self.rules_dir = rules_dir
        self.lock = lock
        self.on_install = on_install          # detection rebuilds its engine and correlator from the rules
        self.loop: asyncio.AbstractEventLoop | None = None
        self.version, self.user_yaml = store.load_policy()
        self._dir_stamp = self._stamp()
        self.rejected_reloads = 0
        self.ruleset = self._load(self.user_yaml)
        self._install(self.ruleset, bump=self.version == 0)

    def _load(self, user_yaml: str, source: str = "applied policy") -> RuleSet:
        extra = ((source, user_yaml),) if user_yaml else ()
        return load_ruleset(rule_texts(self.rules_dir, extra))

    def _install(self, rs: RuleSet, bump: bool = True) -> None:
        with self.lock:
            if bump:
                self.version += 1
                self.store.save_policy(self.version, self.user_yaml)
            self.ruleset = rs
            self.on_install(rs)
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

    def apply_yaml(self, text: str, source: str = "") -> cpb.ApplyPolicyReply:
        """source: the file the text came from, named in errors (its basename: a path says nothing here)."""
        name = Path(source).name[:128] if source else "applied policy"
        try:
            rs = self._load(text, name)
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

    def on_connect(self, session: AgentSession) -> list[cpb.CollectorMessage]:
        if session.policy_version == self.policy.version:
            return []
        return [cpb.CollectorMessage(policy=self.policy)]

    def on_policy_ack(self, session: AgentSession, ack: cpb.PolicyAck) -> None:
        self.store.set_agent_state(session.host_id, policy_version=ack.version, policy_error=ack.error)
        if ack.error:
            log.error("agent %s failed to apply policy %d: %s", session.host_id, self.policy.version, ack.error)


class Detection:
    """Events in order -> matches -> alerts (the book) and kill orders; per-job state in the correlator."""

    def __init__(self, book: AlertBook, orders: KillOrders, resolver: DomainResolver) -> None:
        self.book = book
        self.orders = orders
        self.resolver = resolver
        self.ruleset = RuleSet()
        self.engine = Engine(self.ruleset, resolver)
        self.correlator = Correlator(self.ruleset)

    def install(self, rs: RuleSet) -> None:
        self.ruleset = rs
        self.engine = Engine(rs, self.resolver)
        self.correlator = Correlator(rs)

    def on_events(self, host: str, events: list[pb.Event], emit: bool = True) -> None:
        """Evaluate events in order. emit=False only builds the correlation state (a new detector's warm-up)."""
        # the caller (PolicyManager) holds the policy lock
        engine, correlator = self.engine, self.correlator
        ruled, context_classes, jobs = engine.classes, engine.context_classes, correlator.jobs
        for ev in events:
            kind = ev.WhichOneof("body")
            if kind == "enforcement":
                if emit:
                    self._confirm(host, ev)
                cls = event_class(ev, kind)
            else:
                cls = kind
            if cls in ruled:
                ctx = correlator.context(host, ev) if cls in context_classes else None
                matches = engine.evaluate(host, ev, ctx, cls)
            else:
                matches = ()
            if kind in OBSERVED_KINDS:
                correlator.observe(host, ev, kind)
            else:
                job_id = ev.job.id            # correlator.touch, inlined: this loop runs once per event
                if job_id in jobs:
                    jobs.move_to_end(job_id)
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
        elif watches_escape(rule):
            e = ev.enforcement
            if e.action == KILL_ESCAPE and e.peer_pid == ev.process.pid:
                state, outcome = ppb.ALERT_CONFIRMED, "killed in the kernel as it moved itself out of its job"
            else:   # moved by another process: the one now outside its job is killed by order
                state, outcome = ppb.ALERT_KILL_ORDERED, "kill ordered from the agent: the process left its job"
                self.orders.order(host, ev, rule.id, tree=False)
        elif ev.WhichOneof("body") == "enforcement" and ev.enforcement.action not in SEEN_ACTIONS:
            state, outcome = ppb.ALERT_CONFIRMED, ACTION_NAMES.get(ev.enforcement.action, ev.enforcement.action)
        elif kills_by_argv(rule):
            # the kernel's whole-argv scan kills at exec; an agent without it (older, or a scope over its entry
            # limit) does not: the order is the backstop, and a no-op for a process already dead
            state = ppb.ALERT_KILL_ORDERED
            outcome = "killed at exec in the kernel by the whole-argv scan; kill also ordered from the agent"
            self.orders.order(host, ev, rule.id, tree=False)
        elif ev.WhichOneof("body") == "socket" and ev.socket.result == -errno.EPERM:
            # the socket record is the kernel's own answer (no enforcement record follows it)
            state = ppb.ALERT_CONFIRMED
            outcome = ("killed in the kernel at the socket's first send or receive" if ev.socket.what == "packet"
                       else "refused in the kernel (EPERM)")
        elif kernel_enforceable(rule) and "stdio_pty_network" in rule.match:
            # the kernel judges the shell's parent only; the agent found the holder among all its ancestors
            state = ppb.ALERT_KILL_ORDERED
            outcome = "killed at exec in the kernel if its parent holds the pty; kill also ordered from the agent"
            self.orders.order(host, ev, rule.id, tree=False)
        elif kernel_enforceable(rule):
            state = ppb.ALERT_BLOCK_EXPECTED
            outcome = "block expected in the kernel (awaiting the agent's confirmation)"
        elif self.orders.already(host, ev.process.key):
            state = ppb.ALERT_ALREADY_KILLED
            outcome = f"process already killed ({self.orders.already(host, ev.process.key)})"
        else:
            state, outcome = ppb.ALERT_KILL_ORDERED, "kill ordered from the agent"
            self.orders.order(host, ev, rule.id, tree=False)
        self.book.upsert(make_alert(host, ev, rule.id, rule.description, rule.severity, rule.action, state, outcome,
                                 m.matched, [ev.seq]))

    def _alert_for_correlation(self, host: str, ev: pb.Event, corr: Correlation, evidence: list[Hit]) -> None:
        mode = self._mode(corr.mode, ev.job.id)
        kill = mode != "monitor" and corr.action != "alert"
        if kill:
            state, outcome = ppb.ALERT_KILL_ORDERED, "process trees killed by order of the collector"
            for hit in evidence:
                self.orders.order(hit.host, hit.event, corr.id, tree=True)
        elif mode == "monitor":
            state, outcome = ppb.ALERT_MONITORED, "alerted (monitor mode)"
        else:
            state, outcome = ppb.ALERT_ALERTED, "alerted"
        matched = {f"step{i + 1}": f"{h.rule_id} @ {h.host} pid {h.event.process.pid} {h.event.process.comm}"
                   for i, h in enumerate(evidence)}
        self.book.upsert(make_alert(host, ev, corr.id, corr.description, corr.severity, corr.action, state, outcome,
                                 matched, [h.event.seq for h in evidence]))

    def _confirm(self, host: str, ev: pb.Event) -> None:
        """An enforcement event from an agent: the alert it belongs to now says what was done."""
        e = ev.enforcement
        if e.action in (SEEN_STRATUM, SEEN_PAYLOAD) or e.action in ESCAPE_ACTIONS or e.action in TAMPER_ACTIONS:
            return       # the rules (payload, escape and tamper event classes) decide whether that is an alert
        if e.action in KILL_ACTIONS:
            self.orders.killed_by(host, ev.process.key, f"{e.rule_id}: {ACTION_NAMES.get(e.action, e.action)}")
        meta = self.ruleset.rules.get(e.rule_id) or self.ruleset.correlations.get(e.rule_id)
        alert = make_alert(host, ev, e.rule_id, meta.description if meta else f"enforcement by {e.rule_id}",
                            meta.severity if meta else "high", meta.action if meta else "kill",
                            ppb.ALERT_MONITORED if e.action == SEEN_REVERSE_SHELL else ppb.ALERT_CONFIRMED,
                            f"{'seen' if e.action == SEEN_REVERSE_SHELL else 'confirmed'}: {e.detail}",
                            {"action": e.action}, [ev.seq])
        self.book.upsert(alert, detail=e.detail)


class PolicyManager:
    """The collector's policy and detection: a rules source, detection, the alert book and kill orders, under one
    lock (detection reads the rules the source installs; the source's installs take the same lock)."""

    def __init__(self, store, hub: AgentHub, rules_dir: str = "", resolver: DomainResolver | None = None,
                 alerts: AlertPublisher | None = None, outbox=None) -> None:
        self.store = store
        self.lock = threading.RLock()
        self.publisher = alerts or AlertPublisher(store)     # stores and publishes every alert
        self.book = AlertBook(self.publisher)
        # late-bound: the source (and its event loop) is made after the orders
        self.orders = KillOrders(store, outbox, push=lambda host, msg: self.source._push(host, msg))  # noqa: PLW0108
        self.detection = Detection(self.book, self.orders, resolver or DomainResolver(enabled=False))
        self.source = PolicySource(store, hub, rules_dir, self.lock, self.detection.install)

    # the parts, as the rest of the collector (and its tests) reach them
    @property
    def version(self) -> int:
        return self.source.version

    @property
    def policy(self) -> ppb.Policy:
        return self.source.policy

    @property
    def ruleset(self) -> RuleSet:
        return self.source.ruleset

    @property
    def rejected_reloads(self) -> int:
        return self.source.rejected_reloads

    @property
    def alerts(self):
        return self.book.alerts

    @property
    def killed(self):
        return self.orders.killed

    @property
    def correlator(self) -> Correlator:
        return self.detection.correlator

    @property
    def engine(self) -> Engine:
        return self.detection.engine

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self.source.bind_loop(loop)

    def apply_yaml(self, text: str, source: str = "") -> cpb.ApplyPolicyReply:
        return self.source.apply_yaml(text, source)

    def describe(self) -> cpb.PolicyReply:
        return self.source.describe()

    def on_connect(self, session: AgentSession) -> list[cpb.CollectorMessage]:
        return self.source.on_connect(session)

    def on_policy_ack(self, session: AgentSession, ack: cpb.PolicyAck) -> None:
        self.source.on_policy_ack(session, ack)

    def on_events(self, host: str, events: list[pb.Event], emit: bool = True) -> None:
        """Evaluate events in order. emit=False only builds the correlation state (a new detector's warm-up)."""
        with self.lock:
            self.detection.on_events(host, events, emit)

    def warm_window_s(self) -> float:
        return self.detection.warm_window_s()

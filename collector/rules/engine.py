"""Evaluate rules against stored events: which rules an event satisfies, and why.

Every match carries the field values that satisfied the rule, so an alert can
say exactly what it saw. What each key means lives in the key registry
(collector/rules/keys.py); per-job state needed by stateful keys
(``gpu_new_binary``, ``dns_tunnel_shape``) lives in ``JobContext``, owned by the correlator.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace

import re2

from collector.resolve import DomainResolver
from collector.rules.context import (  # noqa: F401 - JobContext and base_domain are this module's API too
    EventView,
    JobContext,
    Matcher,
    base_domain,
    destination,
)
from collector.rules.keys import ALL_EVENTS, KERNEL_REPORTED, REGISTRY, compile_matcher
from collector.rules.loader import OUTSIDE_SUFFIX, Rule, RuleSet
from collector.rules.regex import _OPTIONS, MAX_TEXT
from gpuguard.v1 import events_pb2 as pb
from gpuguard.vocab import ESCAPE_ACTIONS, PAYLOAD_ACTIONS, TAMPER_ACTIONS


@dataclass(eq=False)          # one per rule: compared by identity (a field-by-field == made candidates() quadratic)
class CompiledRule:
    rule: Rule
    match: list[tuple[str, Matcher]]
    unless: list[tuple[str, Matcher]]

    def __post_init__(self) -> None:
        sc = self.rule.scope
        self.hosts = frozenset(sc["hosts"]) if "hosts" in sc else None
        self.jobs = frozenset(sc.get("job_ids", ())) | frozenset(sc.get("job_kinds", ()))
        self.any_job = "job_ids" not in sc and "job_kinds" not in sc
        # outside its scope (a host service, an ssh session, systemd-run, a job kind not covered) a rule that asks
        # for it alerts under an id of its own: never a block, a kill or a correlation's evidence
        self.outside = replace(self.rule, id=self.rule.id + OUTSIDE_SUFFIX, action=self.rule.outside_scope,
                               description=f"{self.rule.description} (outside any job the rule covers: alerted, "
                                           "not enforced)") if self.rule.outside_scope else None

    def in_scope(self, host: str, job: pb.Job) -> bool:
        if self.hosts is not None and host not in self.hosts:
            return False
        return self.any_job or job.id in self.jobs or job.kind in self.jobs


@dataclass
class RuleMatch:
    rule: Rule
    matched: dict[str, str]


RULE_EVENTS = frozenset(e for e in ALL_EVENTS if e not in KERNEL_REPORTED)   # the others meet enforcement records


def event_class(ev: pb.Event, kind: str | None = None) -> str | None:
    kind = kind or ev.WhichOneof("body")
    if kind == "enforcement":
        if ev.enforcement.action in PAYLOAD_ACTIONS:
            return "payload"
        if ev.enforcement.action in TAMPER_ACTIONS:
            return "tamper"
        return "escape" if ev.enforcement.action in ESCAPE_ACTIONS else None
    return kind if kind in RULE_EVENTS else None


@functools.lru_cache(maxsize=8)
def _filter_of(patterns: tuple[str, ...]) -> re2.Filter:
    """One compiled FilteredRE2 per set of patterns (~0.1 s to build): engines of one ruleset share it (RE2 objects
    are read-only once compiled, safe from any thread)."""
    f = re2.Filter()
    for pattern in patterns:
        f.Add(pattern, _OPTIONS)
    f.Compile()
    return f


class ArgvGate:
    """Every ``argv_regex`` of one rule index as one RE2 FilteredRE2: an exec's argv is searched once for all of them
    (the patterns' literals first, then only the patterns whose literals occur, in C), and a rule whose pattern does
    not match is passed over before any of its matchers run. A hundred Python-side searches per exec became one
    (tests/test_rules.py checks the verdicts are the same; the README gives the figures)."""

    def __init__(self, rules: list[CompiledRule]) -> None:
        patterns = sorted({cr.rule.match["argv_regex"] for cr in rules if "argv_regex" in cr.rule.match})
        where = {pattern: i for i, pattern in enumerate(patterns)}
        self.slot: dict[int, int] = {id(cr): where[cr.rule.match["argv_regex"]] for cr in rules
                                     if "argv_regex" in cr.rule.match}
        self.filter = _filter_of(tuple(patterns))

    def matching(self, text: str) -> frozenset[int]:
        """The slots of the patterns that match this argv (searched as keys.argv_regex searches it)."""
        return frozenset(self.filter.Match(text[:MAX_TEXT]) or ())


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
    gate: ArgvGate | None = None      # exec rules: their argv_regex patterns searched at once

    def rules(self) -> list[CompiledRule]:
        every = [*self.always, *self.by_domain, *(cr for crs in self.by_name.values() for cr in crs),
                 *(cr for crs in self.by_port.values() for cr in crs)]
        return list({id(cr): cr for cr in every}.values())

    def add(self, cr: CompiledRule) -> None:
        """Under the most selective index any of its keys offers (the registry says which key indexes how)."""
        indexed = {REGISTRY[k].index: k for k in cr.rule.match if REGISTRY[k].index}
        if "domain" in indexed:
            self.by_domain.append(cr)
        elif "name" in indexed:
            for name in cr.rule.match[indexed["name"]]:
                self.by_name.setdefault(str(name).lower(), []).append(cr)
        elif "port" in indexed:
            for port in cr.rule.match[indexed["port"]]:
                self.by_port.setdefault(port, []).append(cr)
        else:
            self.always.append(cr)

    def idle(self) -> bool:
        """No rule here can meet any event: only domain rules, and no resolver to name an address."""
        return not (self.always or self.by_name or self.by_port) and \
            (not self.by_domain or self.resolver is None or not self.resolver.enabled)

    def candidates(self, view: EventView) -> list[CompiledRule]:
        out = list(self.always)
        if self.by_name:
            seen: set[int] = set()             # a rule listed under several of the names (or twice) comes once
            for name in {n.lower() for n in view.names}:
                for cr in self.by_name.get(name, ()):
                    if id(cr) not in seen:
                        seen.add(id(cr))
                        out.append(cr)
        if self.by_port:
            out.extend(self.by_port.get(destination(view.ev)[1], ()))
        if self.by_domain and self.resolver and view.ev.HasField("connect") and \
                self.resolver.name_of(view.ev.connect.daddr):
            out.extend(self.by_domain)
        return out


MEMO_MAX = 200_000          # verdicts remembered (cleared when full: a fleet's events repeat within minutes)


def is_stateful(rule: Rule) -> bool:
    return any(REGISTRY[k].stateful for part in (rule.match, rule.unless) for k in part)


class Engine:
    """Rules by event class; each class split into the rules that read only the event (``by_event``: their verdict
    on an event is remembered by the event's content, so the thousandth identical connect of a process costs a
    dict lookup) and those that read the job's context (``stateful``: evaluated on every event)."""

    def __init__(self, ruleset: RuleSet, resolver: DomainResolver | None = None) -> None:
        self.ruleset = ruleset
        self.by_event: dict[str, RuleIndex] = {}
        self.stateful: dict[str, RuleIndex] = {}
        self.memo: dict[tuple, list[RuleMatch]] = {}
        self.memo_hits = self.memo_misses = 0
        self.context_classes: set[str] = set()      # classes with a rule that reads the job's context
        for rule in ruleset.rules.values():
            # keys that remember (the job's context) last: they count only what the rule's other keys let through
            keys = sorted(rule.match.items(), key=lambda kv: REGISTRY[kv[0]].context)
            cr = CompiledRule(rule, [(k, compile_matcher(k, v, rule, resolver)) for k, v in keys],
                              [(k, compile_matcher(k, v, rule, resolver)) for k, v in rule.unless.items()])
            table = self.stateful if is_stateful(rule) else self.by_event
            if any(REGISTRY[k].context for part in (rule.match, rule.unless) for k in part):
                self.context_classes.add(rule.event)
            table.setdefault(rule.event, RuleIndex(resolver=resolver)).add(cr)
        for cls in [c for c, index in self.stateful.items() if index.idle()]:
            del self.stateful[cls]                   # domain rules without DNS resolution: never a candidate
        for index in (self.by_event.get("exec"), self.stateful.get("exec")):
            rules = index.rules() if index is not None else []
            if any("argv_regex" in cr.rule.match for cr in rules):
                index.gate = ArgvGate(rules)
        self.classes = frozenset(self.by_event) | frozenset(self.stateful)   # event classes some rule can meet
        if resolver is not None:
            resolver.watch({str(n) for r in ruleset.rules.values() for part in ("match", "unless")
                            for k, values in getattr(r, part).items() if REGISTRY[k].index == "domain"
                            for n in values})

    def evaluate(self, host: str, ev: pb.Event, ctx: JobContext | None, cls: str | None = None) -> list[RuleMatch]:
        """ctx: the job's context, needed only when ``cls in self.context_classes`` (else the caller may skip it)."""
        cls = cls or event_class(ev)
        if cls is None:
            return []
        if cls == "exec" and ev.exec.result != 0:
            return []          # a failed exec ran nothing
        index, stateful = self.by_event.get(cls), self.stateful.get(cls)
        out: list[RuleMatch] = []
        if index is not None:
            out = self._remembered(host, cls, ev, index)
        if stateful is not None:
            out = out + self._run(host, ev, ctx, stateful, EventView(ev))
        return out

    def _remembered(self, host: str, cls: str, ev: pb.Event, index: RuleIndex) -> list[RuleMatch]:
        """The verdict of the rules that read only the event, by what they read (keys.STATELESS_READS): the same
        host, job, program (comm, exe, hash, argv) and body give the same matches, whatever the pid, time or seq."""
        if cls in KERNEL_REPORTED:
            return self._run(host, ev, None, index, EventView(ev))
        p, job = ev.process, ev.job
        argv = p.argv if cls == "exec" else ()        # only exec rules read the argv (keys.STATELESS_READS)
        key = (host, cls, job.id, job.kind, p.comm, p.exe, p.exe_sha256, *argv, "\x00",
               getattr(ev, cls).SerializeToString())
        got = self.memo.get(key)
        if got is not None:
            self.memo_hits += 1
            return got
        self.memo_misses += 1
        got = self._run(host, ev, None, index, EventView(ev))
        if len(self.memo) >= MEMO_MAX:
            self.memo.clear()
        self.memo[key] = got
        return got

    def _run(self, host: str, ev: pb.Event, ctx: JobContext | None, index: RuleIndex, view: EventView
             ) -> list[RuleMatch]:
        out = []
        job = ev.job
        gate, hits = index.gate, None
        for cr in index.candidates(view):
            rule = cr.rule if cr.in_scope(host, job) else cr.outside
            if rule is None:
                continue
            if gate is not None and (slot := gate.slot.get(id(cr))) is not None:
                if hits is None:
                    hits = frozenset().union(*(gate.matching(text) for text in view.argv_texts))
                if slot not in hits:           # its argv_regex cannot hold: every key must
                    continue
            matched = {}
            for key, fn in cr.match:
                value = fn(view, ctx)
                if value is None:
                    break
                matched[key] = value
            else:
                if not any(fn(view, ctx) is not None for _k, fn in cr.unless):
                    out.append(RuleMatch(rule, matched))
        return out

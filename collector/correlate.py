"""Per-job state across hosts: rule hits in a time window, and correlations over them."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from collector.rules.engine import JobContext, RuleMatch
from collector.rules.loader import Correlation, RuleSet
from gpuguard.v1 import events_pb2 as pb

WINDOW_KEEP = 4096


@dataclass
class Hit:
    ts_ns: int
    rule_id: str
    host: str
    event: pb.Event


@dataclass
class JobState:
    ctx: JobContext = field(default_factory=JobContext)
    hits: deque = field(default_factory=lambda: deque(maxlen=WINDOW_KEEP))
    fired: set[str] = field(default_factory=set)


class Correlator:
    def __init__(self, ruleset: RuleSet, max_jobs: int = 10_000) -> None:
        self.ruleset = ruleset
        self.jobs: dict[str, JobState] = {}
        self.max_jobs = max_jobs
        self.by_rule: dict[str, list[Correlation]] = {}
        for c in ruleset.correlations.values():
            for rid in c.requires:
                self.by_rule.setdefault(rid, []).append(c)

    def state(self, job_id: str) -> JobState:
        st = self.jobs.get(job_id)
        if st is None:
            if len(self.jobs) >= self.max_jobs:
                self.jobs.pop(next(iter(self.jobs)))
            st = self.jobs[job_id] = JobState()
        return st

    def context(self, host: str, ev: pb.Event) -> JobContext:
        ctx = self.state(ev.job.id).ctx
        ctx.host = host
        return ctx

    def observe(self, host: str, ev: pb.Event) -> None:
        """Update job facts after the rules saw the event (first exec, GPU binaries)."""
        ctx = self.state(ev.job.id).ctx
        kind = ev.WhichOneof("body")
        if kind == "exec" and ev.exec.result == 0 and host not in ctx.main_keys:
            ctx.main_keys[host] = ev.process.key
        elif kind == "gpu_open":
            ctx.gpu_exes.add(ev.process.exe or ev.process.comm)

    def record(self, host: str, ev: pb.Event, matches: list[RuleMatch]) -> list[tuple[Correlation, list[Hit]]]:
        """Remember the hits; return correlations that this event completes (once per job)."""
        st = self.state(ev.job.id)
        fired = []
        for m in matches:
            st.hits.append(Hit(ev.ts_ns, m.rule.id, host, ev))
        for m in matches:
            for corr in self.by_rule.get(m.rule.id, ()):
                if corr.id in st.fired:
                    continue
                evidence = self._satisfied(corr, st, ev)
                if evidence:
                    st.fired.add(corr.id)
                    fired.append((corr, evidence))
        return fired

    @staticmethod
    def _satisfied(corr: Correlation, st: JobState, ev: pb.Event) -> list[Hit] | None:
        since = ev.ts_ns - int(corr.within_s * 1e9)
        evidence = []
        for rid in corr.requires:
            found = None
            for hit in reversed(st.hits):
                if hit.rule_id != rid or hit.ts_ns < since:
                    continue
                if corr.same_process and hit.event.process.key != ev.process.key:
                    continue
                found = hit
                break
            if found is None:
                return None
            evidence.append(found)
        return evidence

"""Per-job state across hosts: rule hits in a time window, and correlations over them.

Bounded under hostile load: a hit keeps only what a correlation needs (a slim
copy of the event), repeated hits of one rule by one process refresh a single
entry, each job keeps at most ``per_job`` hits and a few facts, and the whole
correlator at most ``max_hits`` hits and ``max_jobs`` jobs; evictions are counted.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from collector.rules.downloads import remember as remember_downloads
from collector.rules.engine import JobContext, RuleMatch
from collector.rules.loader import Correlation, RuleSet
from gpuguard.addresses import unmapped
from gpuguard.v1 import events_pb2 as pb
from gpuguard.vocab import JOB_HOST, JOB_SYSTEMD

PER_JOB_HITS = 256
MAX_FACTS = 1024          # GPU binaries / hosts remembered per job


OBSERVED_KINDS = frozenset(("exec", "gpu_open", "gpu_usage", "listen"))   # the kinds that teach a job fact
NOT_JOBS = (JOB_HOST, JOB_SYSTEMD)       # the node's own services: reaching them is not reaching another job
MAX_NODE_LISTENERS = 4096             # loopback-reachable listening ports remembered per host


@dataclass
class Hit:
    ts_ns: int
    rule_id: str
    host: str
    event: pb.Event       # slim: seq, ts, job, process pid/key/comm/exe


def reachable_over_loopback(listen_addr: str) -> bool:
    """A listener bound to the loopback or to every address (v4-mapped read as v4): what any job can reach."""
    ip = unmapped(listen_addr)
    return ip is not None and (ip.is_loopback or ip.is_unspecified)


@dataclass
class JobState:
    ctx: JobContext = field(default_factory=JobContext)
    hits: OrderedDict = field(default_factory=OrderedDict)   # (rule, host, process key) -> Hit, oldest first
    by_rule: dict = field(default_factory=dict)   # rule -> {(rule, host, process key): Hit}, oldest first
    fired: set[str] = field(default_factory=set)


SLIM_ANCESTORS = 8      # ancestor keys a remembered hit keeps (same_tree correlations)


def slim(ev: pb.Event) -> pb.Event:
    """What a remembered hit keeps of its event: its time, job and process (with its parent's and ancestors' keys,
    for correlations of one process tree)."""
    out = pb.Event(seq=ev.seq, ts_ns=ev.ts_ns)
    out.job.CopyFrom(ev.job)
    p = ev.process
    out.process.pid, out.process.key, out.process.comm, out.process.exe = p.pid, p.key, p.comm, p.exe[:4096]
    out.process.parent_key = p.parent_key
    for a in p.ancestors[:SLIM_ANCESTORS]:
        out.process.ancestors.add(key=a.key)
    return out


def lineage(p: pb.Process) -> set[str]:
    """A process's own key, its parent's and its ancestors' (as far as its event carries them)."""
    return {p.key, p.parent_key, *(a.key for a in p.ancestors)} - {""}


def same_tree(a: pb.Process, b: pb.Process) -> bool:
    """One process, or one is the other's parent or ancestor: rsync and the ssh it starts, a shell line and the
    programs of its pipe."""
    return a.key == b.key or a.key in lineage(b) or b.key in lineage(a)


class Correlator:
    def __init__(self, ruleset: RuleSet, max_jobs: int = 10_000, max_hits: int = 200_000,
                 per_job: int = PER_JOB_HITS) -> None:
        self.ruleset = ruleset
        self.jobs: OrderedDict[str, JobState] = OrderedDict()
        self.node_listeners: dict[str, dict[int, str]] = {}   # host -> loopback-reachable port -> listening job
        self.max_jobs = max_jobs
        self.max_hits = max_hits
        self.per_job = per_job
        self.total_hits = 0
        self.evicted_hits = 0
        self.evicted_jobs = 0
        self.by_rule: dict[str, list[Correlation]] = {}
        for c in ruleset.correlations.values():
            for rid in c.requires:
                self.by_rule.setdefault(rid, []).append(c)

    def state(self, job_id: str) -> JobState:
        st = self.jobs.get(job_id)
        if st is None:
            if len(self.jobs) >= self.max_jobs:
                self._evict_job()
            st = self.jobs[job_id] = JobState()
        else:
            self.jobs.move_to_end(job_id)
        return st

    def _evict_job(self) -> None:
        _job, old = self.jobs.popitem(last=False)
        self.total_hits -= len(old.hits)
        self.evicted_hits += len(old.hits)
        self.evicted_jobs += 1

    def context(self, host: str, ev: pb.Event) -> JobContext:
        ctx = self.state(ev.job.id).ctx
        ctx.host = host
        ctx.node_listeners = self.node_listeners.setdefault(host, {})
        return ctx

    def touch(self, job_id: str) -> None:
        """A busy job stays: its hits are not the first evicted."""
        if job_id in self.jobs:
            self.jobs.move_to_end(job_id)

    def observe(self, host: str, ev: pb.Event, kind: str | None = None) -> None:
        """Update job facts after the rules saw the event (first exec, GPU binaries)."""
        kind = kind or ev.WhichOneof("body")
        if kind not in OBSERVED_KINDS:
            self.touch(ev.job.id)
            return
        ctx = self.state(ev.job.id).ctx
        if kind == "exec" and ev.exec.result == 0:
            if host not in ctx.main_keys and len(ctx.main_keys) < MAX_FACTS:
                ctx.main_keys[host] = ev.process.key
            remember_downloads(ctx.downloads, ev.exec.argv, ev.ts_ns)
        elif kind == "gpu_open" and len(ctx.gpu_exes) < MAX_FACTS:
            ctx.gpu_exes.add(ev.process.exe or ev.process.comm)
        elif kind == "listen" and ev.job.kind not in NOT_JOBS and reachable_over_loopback(ev.listen.addr):
            listeners = self.node_listeners.setdefault(host, {})
            if ev.listen.port in listeners or len(listeners) < MAX_NODE_LISTENERS:
                listeners[ev.listen.port] = ev.job.id           # the latest listener of a port owns it
        elif kind == "gpu_usage" and not ctx.gpu_exes:
            # the driver's first report names the job's GPU binary when no open was seen (it started before the
            # agent); later reports teach nothing, or a miner idling first would be "known" once it got busy
            ctx.gpu_exes.add(ev.process.exe or ev.process.comm)

    def _remember(self, st: JobState, hit: Hit) -> None:
        key = (hit.rule_id, hit.host, hit.event.process.key)
        of_rule = st.by_rule.setdefault(hit.rule_id, {})
        if key in st.hits:
            st.hits.pop(key)
            of_rule.pop(key)
        else:
            self.total_hits += 1
        st.hits[key] = of_rule[key] = hit
        if len(st.hits) > self.per_job:
            old_key, _old = st.hits.popitem(last=False)
            st.by_rule[old_key[0]].pop(old_key)
            self.total_hits -= 1
            self.evicted_hits += 1
        while self.total_hits > self.max_hits and len(self.jobs) > 1:
            self._evict_job()

    def record(self, host: str, ev: pb.Event, matches: list[RuleMatch]) -> list[tuple[Correlation, list[Hit]]]:
        """Remember the hits; return correlations that this event completes (once per job)."""
        if not matches:
            return []
        st = self.state(ev.job.id)
        small = slim(ev)
        for m in matches:
            self._remember(st, Hit(ev.ts_ns, m.rule.id, host, small))
        fired = []
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
        for alternatives in corr.needs:          # each need: the newest fitting hit of any one of its rules
            found = next((hit for rid in alternatives for hit in reversed(st.by_rule.get(rid, {}).values())
                          if hit.ts_ns >= since and (not corr.same_process or hit.event.process.key == ev.process.key)
                          and (not corr.same_tree or same_tree(hit.event.process, ev.process))),
                         None)
            if found is None:
                return None
            evidence.append(found)
        return evidence

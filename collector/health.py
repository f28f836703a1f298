"""Silence and tamper are alerts: agent heartbeats, restarts and enforcement drift per host.

Each agent promises a status at least every ``heartbeat_s`` (its hello says
so). Anything heard on its stream counts as a sign of life. When a host has
been silent for ``grace`` intervals (a stopped, killed or cut-off agent), an
``agent-silent`` alert is raised for the host and for every job seen running
there in the last hour; a new agent start time raises ``agent-restarted``; a
status whose enforcement does not match the policy raises ``enforcement-drift``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field

from collector.outputs import AlertPublisher
from gpuguard.v1 import collector_pb2 as cpb
from gpuguard.v1 import events_pb2 as pb
from gpuguard.v1 import policy_pb2 as ppb
from gpuguard.vocab import JOB_HOST, KILL_EXEC, KIND_NAMES

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_S = 10.0
JOB_RECOVERED_S = 10.0             # a job's capture episode ends after this long without a capture_loss record
JOB_LOOKBACK_NS = 3600 * 10**9


@dataclass
class HostRecord:
    host_id: str
    hostname: str = ""
    connected: bool = False
    last_heard: float = 0.0            # monotonic
    last_seen_ns: int = 0              # wall clock, for display
    heartbeat_s: float = DEFAULT_HEARTBEAT_S
    agent_started_ns: int = 0
    status: dict = field(default_factory=dict)
    silent_since_ns: int = 0           # 0 = not silent
    drift: str = ""
    behind_since: float = 0.0          # monotonic time the status first showed an older policy
    lost_seen: dict = field(default_factory=dict)   # kernel losses per kind in the last status (since agent start)
    degraded: bool = False             # the last status showed new kernel losses
    loss_episodes: int = 0
    job_losses: dict = field(default_factory=dict)  # (job kind, job id) -> [episode start ns, last loss (mono)]
    stopped: bool = False              # said goodbye (a clean stop): its silence is not an alarm


# the kinds the kernel puts on its priority ring (probes/gpuguard.h priority_kind), as the agent names them
PRIORITY_KINDS = frozenset(KIND_NAMES[k] for k in (pb.KIND_EXEC, pb.KIND_FORK, pb.KIND_EXIT, pb.KIND_CGROUP,
                                                   pb.KIND_ENFORCE))


class HostHealth:
    def __init__(self, store, grace: float = 2.0, kill_programs_expected=lambda: False, alerts=None,
                 clock=time.monotonic) -> None:
        self.store = store
        self.clock = clock                                 # monotonic seconds; tests pass their own
        self.alerts = alerts or AlertPublisher(store)     # stores and publishes
        self.grace = grace
        self.kill_programs_expected = kill_programs_expected   # does the policy in force need kill-at-exec?
        self.hosts: dict[str, HostRecord] = {}
        self.lock = threading.Lock()
        self.alerts_raised = 0

    # -- what the stream tells us --------------------------------------------------
    def on_connect(self, session, hello) -> None:
        with self.lock:
            rec = self.hosts.setdefault(session.host_id, HostRecord(session.host_id))
            previous = rec.agent_started_ns
            rec.hostname, rec.connected = session.hostname, True
            rec.heartbeat_s = hello.heartbeat_s if 0 < hello.heartbeat_s <= 3600 else DEFAULT_HEARTBEAT_S
            rec.agent_started_ns = hello.agent_started_ns
            rec.stopped = False
            if previous != hello.agent_started_ns:
                rec.lost_seen, rec.degraded = {}, False       # a new agent counts its losses from zero
            self._heard(rec)
        if previous and hello.agent_started_ns and previous != hello.agent_started_ns:
            self._alert(session.host_id, "agent-restarted", "medium",
                        "the gpuguard agent on this host restarted (crash, kill or upgrade): check what ran "
                        "while it was down", {"previous_start_ns": str(previous),
                                              "new_start_ns": str(hello.agent_started_ns)},
                        episode=str(hello.agent_started_ns))

    def on_events(self, session, events: list[pb.Event]) -> None:
        degraded: list[tuple[dict, int]] = []
        job_episodes: list[tuple[pb.Event, int]] = []
        goodbye = False
        with self.lock:
            rec = self.hosts.setdefault(session.host_id, HostRecord(session.host_id))
            self._heard(rec)
            for ev in events:
                if ev.HasField("capture_loss"):
                    key = (ev.job.kind, ev.job.id)
                    episode = rec.job_losses.get(key)
                    if episode is None:                 # a new episode: named by when the collector saw it
                        rec.job_losses[key] = [time.time_ns(), self.clock()]
                        job_episodes.append((ev, rec.job_losses[key][0]))
                    else:
                        episode[1] = self.clock()
                    continue
                if ev.HasField("status"):
                    st = ev.status
                    if st.stopping and not rec.stopped:
                        rec.stopped = goodbye = True
                    rec.status = {"policy_version": st.policy_version, "programs": list(st.programs),
                                  "enforcing": st.enforcing, "kernel_lost": dict(st.kernel_lost),
                                  "enforcement_unavailable": st.enforcement_unavailable,
                                  "quarantined": st.quarantined}
                    grown = {k: n - rec.lost_seen.get(k, 0) for k, n in st.kernel_lost.items()
                             if n > rec.lost_seen.get(k, 0)}
                    rec.lost_seen = dict(st.kernel_lost)
                    if grown and not rec.degraded:
                        rec.loss_episodes += 1
                        degraded.append((grown, rec.loss_episodes))
                    elif not grown and rec.degraded:
                        log.info("capture on %s recovered: no new kernel losses", session.host_id)
                    rec.degraded = bool(grown)
        if goodbye:
            log.info("agent %s stopped cleanly (goodbye received): its silence is expected", session.host_id)
            self._alert(session.host_id, "agent-stopped", "low",
                        "the gpuguard agent on this host was stopped cleanly (service stop or upgrade); this host "
                        "records nothing until it starts again", {"agent_started_ns": str(rec.agent_started_ns)},
                        episode=f"stopped:{rec.agent_started_ns}")
        for ev, started in job_episodes:
            self._job_capture_alert(session.host_id, ev, started)
        for grown, episode in degraded:
            priority = sorted(set(grown) & PRIORITY_KINDS)
            self._alert(session.host_id, "capture-degraded", "high" if priority else "medium",
                        "the agent's kernel probes lost records on this host: the timelines of its jobs are "
                        "incomplete for this window" + (f" (lost {', '.join(priority)} records: decisions made "
                                                        "from them in user space were missed)" if priority else ""),
                        {f"lost_{kind}": str(n) for kind, n in sorted(grown.items())},
                        episode=f"{rec.agent_started_ns}:{episode}", per_job=True)

    def on_disconnect(self, session) -> None:
        with self.lock:
            rec = self.hosts.get(session.host_id)
            if rec:
                rec.connected = False

    def _heard(self, rec: HostRecord) -> None:
        rec.last_heard = self.clock()
        rec.last_seen_ns = time.time_ns()
        if rec.silent_since_ns:
            log.info("agent %s is heard again after %.1fs of silence", rec.host_id,
                     (rec.last_seen_ns - rec.silent_since_ns) / 1e9)
            rec.silent_since_ns = 0

    # -- periodic check ---------------------------------------------------------------
    def tick(self, policy_version: int) -> None:
        self._end_job_episodes()
        now = self.clock()
        silent, drifted = [], []
        with self.lock:
            for rec in self.hosts.values():
                limit = self.grace * rec.heartbeat_s
                if not rec.silent_since_ns and not rec.stopped and rec.last_heard and now - rec.last_heard > limit:
                    rec.silent_since_ns = time.time_ns()
                    silent.append((rec.host_id, now - rec.last_heard, rec.connected))
                drift = self._drift(rec, policy_version)
                if drift and drift != rec.drift:
                    drifted.append((rec.host_id, drift))
                rec.drift = drift
        for host, quiet_s, connected in silent:
            how = "stream still open but nothing sent" if connected else "stream closed"
            self._alert(host, "agent-silent", "high",
                        "the gpuguard agent on this host stopped reporting (stopped, killed or cut off): events "
                        "and enforcement on it are not confirmed", {"silent_s": f"{quiet_s:.1f}", "stream": how},
                        episode=str(time.time_ns() // 10**9), per_job=True)
        for host, drift in drifted:
            self._alert(host, "enforcement-drift", "high", "the agent's enforcement does not match the policy",
                        {"drift": drift}, episode=drift, per_job=True)

    def _drift(self, rec: HostRecord, policy_version: int) -> str:
        st = rec.status
        if not st or rec.silent_since_ns or rec.stopped:
            return ""
        if not st.get("enforcing", True):
            if st.get("enforcement_unavailable"):
                return f"enforcement could not be loaded on the agent: {st['enforcement_unavailable']}"
            return "enforcement switched off on the agent (--no-enforce)"
        if st.get("policy_version", 0) != policy_version:
            rec.behind_since = rec.behind_since or self.clock()
            if self.clock() - rec.behind_since > self.grace * rec.heartbeat_s:
                return f"agent enforces policy {st.get('policy_version', 0)}, collector's is {policy_version}"
        else:
            rec.behind_since = 0.0
        if self.kill_programs_expected() and KILL_EXEC not in st.get("programs", []):
            return "kill-at-exec program not attached"
        return ""

    def _job_capture_alert(self, host: str, ev: pb.Event, started_ns: int) -> None:
        """One job lost fidelity (over its budget on the shared ring, or the ring was full): one alert per
        episode, for that job on that host; other jobs' capture is whole."""
        loss = ev.capture_loss
        priority = sorted(set(loss.lost) & PRIORITY_KINDS)
        matched = {f"suppressed_{k}": str(n) for k, n in sorted(loss.suppressed.items())}
        matched.update({f"lost_{k}": str(n) for k, n in sorted(loss.lost.items())})
        matched["cgroup"] = loss.cgroup[:256]
        why = ("it sent more records than its budget (a flood): the excess is counted, not recorded"
               if loss.suppressed else "the kernel's ring was full")
        self._alert(host, "capture-degraded", "high" if priority else "medium",
                    f"capture of this job is incomplete from this time on: {why}; its timeline has a gap here",
                    matched, episode=f"job:{ev.job.kind}:{ev.job.id}:{started_ns}",
                    jobs=[(ev.job.kind or JOB_HOST, ev.job.id or JOB_HOST)])

    def _end_job_episodes(self) -> None:
        now = self.clock()
        with self.lock:
            for rec in self.hosts.values():
                for key, (_start, last) in list(rec.job_losses.items()):
                    if now - last > JOB_RECOVERED_S:
                        del rec.job_losses[key]
                        log.info("capture of job %s:%s on %s is whole again", key[0], key[1], rec.host_id)

    def connected(self, host: str) -> bool:
        with self.lock:
            rec = self.hosts.get(host)
            return bool(rec and rec.connected)

    def forget(self, host: str) -> None:
        with self.lock:
            self.hosts.pop(host, None)

    def _alert(self, host: str, rule_id: str, severity: str, description: str, matched: dict, episode: str,
               per_job: bool = False, jobs: list[tuple[str, str]] | None = None) -> None:
        if jobs is None:
            jobs = [(JOB_HOST, JOB_HOST)]
        if per_job:
            try:
                jobs += [j for j in self.store.jobs_on_host(host, time.time_ns() - JOB_LOOKBACK_NS)
                         if j != (JOB_HOST, JOB_HOST)]
            except Exception as exc:
                log.warning("could not list jobs on %s for a %s alert: %s", host, rule_id, exc)
        log.warning("ALERT [%s] %s host %s: %s %s (jobs: %s)", severity, rule_id, host, description, matched,
                    ", ".join(f"{k}:{j}" for k, j in jobs))
        for kind, job_id in jobs:
            aid = hashlib.sha1(f"{host}|{rule_id}|{job_id}|{episode}".encode()).hexdigest()[:16]
            alert = ppb.Alert(id=aid, rule_id=rule_id, description=description, severity=severity, action="alert",
                              state=ppb.ALERT_ALERTED, outcome="alerted", host_id=host, ts_ns=time.time_ns())
            alert.job.kind, alert.job.id = kind, job_id
            alert.matched.update(matched)
            try:
                self.alerts.record(alert)
                self.alerts_raised += 1
            except Exception as exc:
                log.error("could not store %s alert for %s: %s", rule_id, host, exc)

    # -- gpuguard hosts -------------------------------------------------------------------
    def describe(self, policy_version: int) -> cpb.HostsReply:
        reply = cpb.HostsReply()
        known = {a["host_id"]: a for a in self.store.agents()}
        with self.lock:
            records = {h: r for h, r in self.hosts.items()}
        for host in sorted(set(known) | set(records)):
            rec = records.get(host)
            row = known.get(host, {})
            st = rec.status if rec else {}
            state = "disconnected"
            if rec and rec.stopped and not rec.silent_since_ns:
                state = "stopped"
            elif rec and rec.silent_since_ns:
                state = "silent"
            elif rec and rec.connected:
                state = "ok"
            h = reply.hosts.add(host_id=host, hostname=(rec.hostname if rec else row.get("hostname")) or "",
                                state=state, connected=bool(rec and rec.connected),
                                last_seen_ns=(rec.last_seen_ns if rec else row.get("last_seen_ns")) or 0,
                                policy_version=st.get("policy_version", row.get("policy_version") or 0),
                                policy_current=policy_version, drift=rec.drift if rec else "",
                                agent_started_ns=rec.agent_started_ns if rec else 0,
                                programs=st.get("programs", []))
            h.kernel_lost.update(st.get("kernel_lost", {}))
            if rec:
                h.incomplete_jobs.extend(f"{k}:{j}" for k, j in sorted(list(rec.job_losses)))
        return reply

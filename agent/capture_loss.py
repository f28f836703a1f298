"""Losses are evidence: what the kernel could not report, per job and kind, as records in the job's timeline.

probes/gpuguard.h counts, per cgroup, the shared ring's records a job sent over its budget (suppressed) and the
records a full ring refused (lost). Each second the agent reads those counters and turns what grew into a
capture_loss record for that job: the kinds, the counts and the window. The collector raises capture-degraded
for the job and host (once per episode) and the timeline shows the window as incomplete.
"""

from __future__ import annotations

import logging

from agent.identity import BootClock, HostIdentity
from agent.jobs import JobResolver
from gpuguard.v1 import events_pb2 as pb
from gpuguard.vocab import KIND_NAMES

log = logging.getLogger(__name__)

DEFAULT_BUDGET_PER_S = 4000      # shared-ring records per cgroup per second (connects are already folded)


def set_budget(bpf, per_window: int, window_ns: int = 1_000_000_000) -> None:
    """The kernel's per-cgroup budget on the shared ring (0: none)."""
    table = bpf[b"capture_budget"]
    table[table.Key(1)] = table.Leaf(window_ns)
    table[table.Key(0)] = table.Leaf(per_window)


class CaptureLossReporter:
    def __init__(self, bpf, jobs: JobResolver, identity: HostIdentity, clock: BootClock | None = None) -> None:
        self.table = bpf[b"job_capture"]
        self.jobs = jobs
        self.identity = identity
        self.clock = clock or BootClock()
        self._seen: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        self._last_ns: dict[int, int] = {}       # the end of the window last reported, per cgroup
        self.reported = 0

    def report(self) -> list[pb.Event]:
        """capture_loss records for every cgroup whose counters grew since the last call."""
        out = []
        for key, val in self.table.items():
            cgroup = key.value
            suppressed, lost = tuple(val.suppressed), tuple(val.lost)
            before = self._seen.get(cgroup)
            if before == (suppressed, lost):
                continue
            self._seen[cgroup] = (suppressed, lost)
            old_s, old_l = before or ((0,) * len(suppressed), (0,) * len(lost))
            grown_s = {KIND_NAMES.get(k, str(k)): n - o for k, (n, o) in enumerate(zip(suppressed, old_s, strict=True))
                       if n > o}
            grown_l = {KIND_NAMES.get(k, str(k)): n - o for k, (n, o) in enumerate(zip(lost, old_l, strict=True))
                       if n > o}
            if not grown_s and not grown_l:
                continue
            job = self.jobs.job_of(cgroup)
            ev = pb.Event(ts_ns=self.clock.to_wall(val.last_ns), boot_id=self.identity.boot_id)
            ev.job.kind, ev.job.id, ev.job.name = job.kind, job.id, job.name
            loss = ev.capture_loss
            loss.suppressed.update(grown_s)
            loss.lost.update(grown_l)
            start = max(val.first_ns, self._last_ns.get(cgroup, 0))    # this record's window: since the last one
            self._last_ns[cgroup] = val.last_ns
            loss.from_ts_ns, loss.to_ts_ns = self.clock.to_wall(start), self.clock.to_wall(val.last_ns)
            loss.cgroup_id, loss.cgroup = cgroup, self.jobs.path_of(cgroup)[:4096]
            ev.process.cgroup_id, ev.process.cgroup = cgroup, loss.cgroup
            out.append(ev)
            self.reported += 1
            if self.reported & (self.reported - 1) == 0:
                log.warning("capture incomplete for job %s:%s: %s suppressed over its budget, %s lost (ring full); "
                            "%d such records so far", job.kind, job.id, grown_s or "nothing", grown_l or "nothing",
                            self.reported)
        if len(self._seen) > 32_768:              # the kernel map is an LRU of 16k: forget what it forgot
            self._seen.clear()
            self._last_ns.clear()
        return out

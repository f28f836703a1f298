"""How long the capture loop waits after a drain that found records.

Most of what a drain costs is the same for 50 records or 500 (the ring poll, finding the drain's short lives, the
spool write: a few dozen numpy and system calls). Drained every 50 ms, a steady trickle of execs - a shell loop,
a job's launcher - paid that fixed cost twenty times a second, ~3 ms a time on a slow VM: most of the agent's
CPU on the exec mix (bench/agent_cpu.py). The wait is therefore set by what the last drains cost: long enough that
the fixed part stays near ``cpu_share`` of a core, never shorter than ``min_s`` (a burst is one batch), never
longer than ``max_s`` (the bound on how late user space sees a record under sustained load), and never longer
than it would take the priority ring to fill ``fill_fraction`` at the rate it filled since the last drain, so a
storm is drained as often as it needs: spacing drains must never cost a record. The first record after a quiet
spell is not paced at all: it wakes the loop at once (probes/gpuguard.h: adaptive wakeup).
"""

from __future__ import annotations

from dataclasses import dataclass

SMOOTHING = 0.3          # weight of the newest drain in the running cost (one odd drain does not swing the wait)


@dataclass
class DrainPacer:
    ring_bytes: int                  # the priority ring's size: exec, fork, exit, cgroup, enforcement
    min_s: float = 0.05
    max_s: float = 0.25
    cpu_share: float = 0.02          # of one core, for the drains' cost
    fill_fraction: float = 0.25      # of the priority ring, at most, between two drains
    cost_s: float = 0.0              # running cost of a drain, CPU seconds

    def wait_s(self, drain_cpu_s: float, priority_bytes: int, since_last_drain_s: float) -> float:
        """The wait before the next drain, after one that cost ``drain_cpu_s`` and brought ``priority_bytes``
        of priority records gathered over ``since_last_drain_s``."""
        self.cost_s += SMOOTHING * (drain_cpu_s - self.cost_s)
        wait = min(max(self.cost_s / self.cpu_share, self.min_s), self.max_s)
        if priority_bytes > 0 and since_last_drain_s > 0:
            fill_rate = priority_bytes / since_last_drain_s
            wait = min(wait, self.fill_fraction * self.ring_bytes / fill_rate)
        return wait

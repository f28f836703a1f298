"""cgroup id -> cgroup path -> job identity (Slurm job, Kubernetes pod, container, systemd unit).

The kernel gives a cgroup v2 id, which is the inode number of the cgroup's
directory. The resolver maps ids back to paths with a cached walk of the
cgroup2 tree (refreshed on a miss), then matches the path against a small
table of patterns that users extend in config (``job_patterns``).
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from agent.text import clean
from gpuguard.vocab import JOB_CONTAINER, JOB_HOST, JOB_K8S, JOB_SLURM, JOB_SYSTEMD

log = logging.getLogger(__name__)

UUID_RE = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"


@dataclass(frozen=True, slots=True)
class Job:
    kind: str          # slurm | k8s | container | systemd | host
    id: str
    name: str = ""     # step, container id, unit name...


HOST_JOB = Job(JOB_HOST, JOB_HOST)


@dataclass(frozen=True)
class JobPattern:
    """A regex over the cgroup path; group ``id`` is the job id, ``name`` an optional detail."""

    kind: str
    regex: re.Pattern

    @classmethod
    def of(cls, kind: str, regex: str) -> JobPattern:
        compiled = re.compile(regex)
        if "id" not in compiled.groupindex:
            raise ValueError(f"job pattern for {kind!r} needs a named group 'id': {regex!r}")
        return cls(kind, compiled)

    def match(self, path: str) -> Job | None:
        m = self.regex.search(path)
        if not m:
            return None
        job_id = m.group("id").replace("_", "-") if self.kind == JOB_K8S else m.group("id")
        name = m.groupdict().get("name") or ""
        return Job(self.kind, job_id, name)


DEFAULT_PATTERNS = (
    JobPattern.of(JOB_SLURM, r"/job_(?P<id>\d+)(?:/(?P<name>step_[^/]+))?"),
    JobPattern.of(
        JOB_K8S,
        rf"kubepods.*?pod(?P<id>{UUID_RE})(?:\.slice)?(?:/(?:cri-containerd-|docker-|crio-)?(?P<name>[0-9a-f]{{64}}))?",
    ),
    JobPattern.of(JOB_CONTAINER, r"(?:docker[-/]|cri-containerd-|containerd/|libpod-|crio-)(?P<id>[0-9a-f]{64})"),
    JobPattern.of(JOB_SYSTEMD, r"/(?P<id>[^/]+\.(?:service|scope))(?:/|$)"),
)

# Where a workload manager creates its jobs' cgroups. Enforcement scoped to a
# job kind lives on these parents, so a job created later is covered from its
# first instruction (agent/enforce.py).
# The cgroups a workload manager creates its jobs in *directly* (a job is the next level down): a job made
# there later is watched for leaving it from its first exec (agent/enforce_plan.py escape entries).
KIND_JOB_PARENTS = {
    JOB_SLURM: re.compile(r"(^|/)(slurm/uid_\d+|slurmstepd\.scope)$"),
    JOB_K8S: re.compile(r"(^|/)kubepods(\.slice)?(/kubepods-(besteffort|burstable)\.slice|/(besteffort|burstable))?$"),
}
KIND_ROOTS = {
    JOB_SLURM: re.compile(r"(^|/)(slurm|slurmstepd\.scope)(/uid_\d+)?$"),
    JOB_K8S: re.compile(r"(^|/)kubepods(\.slice)?(/kubepods-(besteffort|burstable)\.slice|/(besteffort|burstable))?$"),
}

# Environment variables that name a job when the cgroup says nothing.
ENV_JOB_VARS = (("SLURM_JOB_ID", JOB_SLURM), ("KUBERNETES_POD_UID", JOB_K8S))


def match_job(path: str, patterns: tuple[JobPattern, ...] = DEFAULT_PATTERNS) -> Job:
    """The first pattern that matches the cgroup path names the job; else the host."""
    for pattern in patterns:
        job = pattern.match(path)
        if job:
            return job
    return HOST_JOB


def find_cgroup2_mount(mountinfo: Path = Path("/proc/self/mountinfo")) -> Path | None:
    """The cgroup2 mount point (``/sys/fs/cgroup`` or, on hybrid hosts, ``.../unified``)."""
    for line in mountinfo.read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "cgroup2":
            return Path(left.split()[4])
    return None


def ensure_cgroup2_mount(fallback: Path = Path("/sys/fs/cgroup/unified")) -> Path:
    """Find the cgroup2 mount, mounting one at ``fallback`` when the host has none."""
    found = find_cgroup2_mount()
    if found:
        return found
    fallback.mkdir(parents=True, exist_ok=True)
    if os.system(f"mount -t cgroup2 none {fallback}") != 0:
        raise RuntimeError(f"no cgroup2 mount and mounting one at {fallback} failed")
    return fallback


class JobResolver:
    """cgroup id -> (path, Job), cached.

    A new id triggers one tree walk right away; an id still unknown after that
    walk (a cgroup already removed) is retried at most once per walk_interval.
    """

    def __init__(self, root: Path | None = None, patterns: tuple[JobPattern, ...] = (), walk_interval: float = 1.0):
        self.root = root or find_cgroup2_mount()
        self.patterns = tuple(patterns) + DEFAULT_PATTERNS
        self.walk_interval = walk_interval
        self._paths: dict[int, str] = {}
        self._jobs: dict[int, Job] = {}
        self._last_walk = 0.0
        self._missing: dict[int, float] = {}
        if self.root:
            self._walk()

    def _walk(self) -> None:
        self._last_walk = time.monotonic()
        paths = {}
        for dirpath, _dirs, _files in os.walk(self.root):
            try:
                rel = os.path.relpath(dirpath, self.root)
                paths[os.stat(dirpath).st_ino] = clean("/" + ("" if rel == "." else rel))   # keep ".hidden" names
            except OSError:
                continue
        paths.setdefault(1, "/")
        self._paths = paths

    def path_of(self, cgroup_id: int) -> str:
        path = self._paths.get(cgroup_id)
        if path is None and self.root:
            now = time.monotonic()
            if now - self._missing.get(cgroup_id, -self.walk_interval) >= self.walk_interval:
                self._walk()
                path = self._paths.get(cgroup_id)
                if path is None:
                    self._missing[cgroup_id] = now
        return path or f"cgroup:{cgroup_id}"

    def learn(self, cgroup_id: int, path: str) -> bool:
        """A cgroup just created (cgroup_mkdir): cache it if it is in our cgroup2 tree."""
        if not self.root:
            return False
        try:
            if os.stat(self.root / path.lstrip("/")).st_ino != cgroup_id:
                return False
        except OSError:
            return False
        self._paths[cgroup_id] = "/" + path.strip("/")
        self._missing.pop(cgroup_id, None)
        return True

    def cgroup_of_pid(self, pid: int) -> int:
        """The cgroup2 id a process is in now (its /proc/PID/cgroup path under our mount), 0 if unknown."""
        try:
            for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
                if line.startswith("0::") and self.root:
                    path = line[3:].strip()
                    ino = os.stat(self.root / path.lstrip("/")).st_ino
                    self._paths.setdefault(ino, "/" + path.strip("/"))
                    return ino
        except OSError:
            pass
        return 0

    def job_paths(self) -> dict[int, str]:
        """Every known cgroup id -> path (refreshed by a walk)."""
        if self.root:
            self._walk()
        return dict(self._paths)

    def job_of_path(self, path: str) -> Job:
        return match_job(path, self.patterns)

    def job_of(self, cgroup_id: int) -> Job:
        job = self._jobs.get(cgroup_id)
        if job is None:
            path = self.path_of(cgroup_id)
            job = self.job_of_path(path)
            if not path.startswith("cgroup:"):
                self._jobs[cgroup_id] = job
        return job


def job_from_environ(pid: int) -> Job | None:
    """Fallback for processes whose cgroup names no job (may be gone for short-lived ones)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    env = dict(item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    for var, kind in ENV_JOB_VARS:
        value = env.get(var.encode())
        if value:
            return Job(kind, clean(value[:128]))
    return None

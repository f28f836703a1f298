"""Typed events, as decoded from the kernel (before enrichment)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Header:
    ts_boot_ns: int   # CLOCK_BOOTTIME nanoseconds
    cgroup_id: int
    tid: int
    pid: int          # the process (thread-group) id
    uid: int
    gid: int
    result: int
    comm: str


@dataclass(slots=True)
class ExecEvent:
    hdr: Header
    filename: str
    argv: list[str]
    argv_truncated: bool
    argv_fault: bool
    slurm_job_env: str


@dataclass(slots=True)
class ForkEvent:
    hdr: Header       # the parent
    child_pid: int


@dataclass(slots=True)
class ExitEvent:
    hdr: Header       # result: exit_group() code, -1 when killed


@dataclass(slots=True)
class ConnectEvent:
    hdr: Header
    family: int       # 2 = AF_INET, 10 = AF_INET6
    sock_type: int    # 1 = TCP, 2 = UDP, 0 = unknown
    daddr: str
    dport: int


@dataclass(slots=True)
class GpuOpenEvent:
    hdr: Header
    path: str         # "" when only the device number matched (cgroup/dev hook)
    flags: int
    major: int = 0
    minor: int = 0


@dataclass(slots=True)
class EnforceEvent:
    hdr: Header
    action: str       # kill_exec | deny_connect | drop_stratum | seen_stratum
    rule_index: int
    daddr: str
    dport: int


@dataclass(slots=True)
class CgroupEvent:
    hdr: Header
    cgroup_id: int
    level: int
    path: str         # relative to its hierarchy's root


KernelEvent = ExecEvent | ForkEvent | ExitEvent | ConnectEvent | GpuOpenEvent | EnforceEvent | CgroupEvent


@dataclass(slots=True)
class DecodeStats:
    decoded: int = 0
    malformed: int = 0

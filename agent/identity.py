"""Who and when: host id, boot id and boot-time -> wall-clock conversion."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

from gpuguard.host import local_host_id, read_first


@dataclass(frozen=True)
class HostIdentity:
    host_id: str
    hostname: str
    boot_id: str

    @classmethod
    def current(cls, host_id: str | None = None) -> HostIdentity:
        hostname = socket.gethostname()
        return cls(
            host_id=host_id or local_host_id(),
            hostname=hostname,
            boot_id=read_first("/proc/sys/kernel/random/boot_id", "unknown-boot"),
        )


class BootClock:
    """Converts CLOCK_BOOTTIME ns (what BPF stamps) to wall-clock ns."""

    def __init__(self) -> None:
        self.offset_ns = time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)

    def to_wall(self, boot_ns: int) -> int:
        return boot_ns + self.offset_ns

"""One lifecycle for programs that outlive the agent: bpf_links pinned in one bpffs directory, the only ledger.

Capture programs are bpf_links held by the agent's process: they detach when it ends (agent/loader.py).
Enforcement must go on when the agent is killed, so every enforcement program - kill-at-exec, the whole-argv
scan, each cgroup attachment of the deny, allowlist and payload programs - is a bpf_link pinned at
``/sys/fs/bpf/gpuguard/<installation>/<what>-<agent pid>`` (Tetragon keeps one pin directory the same way).
Nothing else records what is attached: a starting agent lists the directory (what a previous agent left
enforcing), attaches and pins its own, then unpins the rest - no window without enforcement and nothing stale
left behind. A clean stop unpins its own; a killed agent's pins keep enforcing the policy of that moment.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from agent.bpf_links import libbpf

log = logging.getLogger(__name__)

BPFFS = Path("/sys/fs/bpf")


def ensure_bpffs(path: Path = BPFFS) -> None:
    with open("/proc/self/mounts") as mounts:
        if any(line.split()[1] == str(path) and line.split()[2] == "bpf" for line in mounts):
            return
    path.mkdir(parents=True, exist_ok=True)
    if os.system(f"mount -t bpf bpf {path} 2>/dev/null") != 0:
        raise OSError(f"bpffs is not mounted at {path} and mounting it failed")


def pin_dir_for(state_dir: Path) -> Path:
    """One pin directory per agent installation (its state dir), so test agents never adopt each other."""
    return BPFFS / "gpuguard" / hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:16]


@dataclass
class PinnedLink:
    """A link this agent made: its fd, its pin (None when unpinned: it lives as long as this process) and the
    maps pinned beside it (a prog array's entries are cleared when its last user reference goes)."""

    fd: int
    path: Path | None
    map_pins: list[Path] = field(default_factory=list)

    @property
    def attached(self) -> bool:
        return self.fd >= 0

    def close(self, unpin: bool = True) -> None:
        """unpin=False leaves the program enforcing after this process (what a crash would do, on purpose)."""
        if unpin:
            for path in (self.path, *self.map_pins):
                if path is not None:
                    path.unlink(missing_ok=True)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class PinDir:
    """The installation's pin directory. ``previous`` is what was there when this agent started."""

    def __init__(self, state_dir: Path) -> None:
        self.path = pin_dir_for(state_dir)
        ensure_bpffs()
        self.path.mkdir(parents=True, exist_ok=True)
        self.pid = os.getpid()
        self.mine: set[Path] = set()
        self.previous = sorted(self.path.iterdir())
        if self.previous:
            log.info("%d pinned program(s) left by a previous agent, still enforcing until this one takes over: %s",
                     len(self.previous), ", ".join(p.name for p in self.previous))

    def _pin(self, what: str, fd: int) -> Path:
        path = self.path / f"{what}-{self.pid}"
        if path.exists():           # a previous agent with our pid (a container's pid 1): ours is attached already
            path.unlink()
        self.path.mkdir(parents=True, exist_ok=True)   # an empty directory may have been cleaned away meanwhile
        if libbpf().bpf_obj_pin(fd, str(path).encode()) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"pinning {path}: {os.strerror(err)}")
        self.mine.add(path)
        return path

    def keep(self, what: str, link_fd: int, maps: dict[str, int] | None = None) -> PinnedLink:
        """Pin a link (and the maps it needs, before it); on failure the link is closed and the error raised."""
        try:
            map_pins = [self._pin(name, fd) for name, fd in (maps or {}).items()]
            return PinnedLink(link_fd, self._pin(what, link_fd), map_pins)
        except OSError:
            os.close(link_fd)
            raise

    def drop_previous(self) -> list[str]:
        """Unpin what earlier agents left (call once this agent's own links are in place)."""
        dropped = []
        for pin in self.previous:
            if pin not in self.mine and pin.exists():
                pin.unlink()
                dropped.append(pin.name)
        self.previous = []
        if dropped:
            log.info("took over from a previous agent: unpinned %s", ", ".join(dropped))
        return dropped

    def listed(self) -> list[str]:
        try:
            return sorted(p.name for p in self.path.iterdir())
        except FileNotFoundError:                # removed while empty (a cleanup of bpffs): nothing is pinned
            return []

    def close(self) -> None:
        try:
            self.path.rmdir()                    # only when no pin is left in it
        except OSError:
            pass

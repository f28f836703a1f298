"""Kill-at-exec that outlives the agent: a bpf_link on the sched_process_exec tracepoint, pinned in bpffs.

BCC attaches tracepoint programs through a perf event owned by the agent's
process, so they vanish with it. Here the program is attached with a
``bpf_link`` (libbpf's ``bpf_link_create`` on a tracepoint perf event) and the
link is pinned at ``/sys/fs/bpf/gpuguard/<agent>/kill_exec-<pid>``: a killed
agent leaves it enforcing with the maps it had (the policy of that moment).
A starting agent attaches its own link first, then unpins the ones a previous
agent left (adoption without a window); a clean stop unpins its own.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import logging
import os
import struct
from pathlib import Path

log = logging.getLogger(__name__)

BPFFS = Path("/sys/fs/bpf")
TRACEFS_EVENTS = Path("/sys/kernel/tracing/events")
BPF_PERF_EVENT = 41                  # enum bpf_attach_type
PERF_TYPE_TRACEPOINT = 2
PERF_FLAG_FD_CLOEXEC = 8
NR_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}
PIN_PREFIX = "kill_exec-"


def _libbpf():
    lib = ctypes.CDLL(ctypes.util.find_library("bpf") or "libbpf.so.1", use_errno=True)
    lib.bpf_link_create.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    lib.bpf_obj_pin.argtypes = [ctypes.c_int, ctypes.c_char_p]
    return lib


def cgroup_link(prog_fd: int, cgroup_fd: int, attach_type: int) -> int:
    """A bpf_link attaching a cgroup program (multi-attach): detached when its last fd is closed."""
    link = _libbpf().bpf_link_create(prog_fd, cgroup_fd, attach_type, None)
    if link < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf_link_create(attach type {attach_type}): {os.strerror(err)}")
    return link


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


def tracepoint_perf_fd(category: str, name: str) -> int:
    tp_id = int((TRACEFS_EVENTS / category / name / "id").read_text())
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<IIQQ", attr, 0, PERF_TYPE_TRACEPOINT, 128, tp_id, 1)
    struct.pack_into("<I", attr, 48, 1)                  # wakeup_events
    libc = ctypes.CDLL(None, use_errno=True)
    nr = NR_PERF_EVENT_OPEN[os.uname().machine]
    # pid -1, cpu 0: a tracepoint's BPF programs run on every CPU whichever event carries them
    fd = libc.syscall(nr, attr, -1, 0, -1, PERF_FLAG_FD_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"perf_event_open({category}:{name}): {os.strerror(err)}")
    return fd


class PinnedExecKill:
    """The kill-at-exec program's lifetime, decoupled from the agent's."""

    def __init__(self, prog_fd: int, pin_dir: Path, prefix: str = PIN_PREFIX,
                 maps: dict[str, int] | None = None) -> None:
        """maps: name prefix -> fd of a map pinned next to the link (a prog array: its entries are cleared when
        its last user reference goes, so a pin keeps a dead agent's tail calls working)."""
        self.pin_dir = pin_dir
        self.prefix = prefix
        self.pin_path = pin_dir / f"{prefix}{os.getpid()}"
        self.prefixes = (prefix, *(maps or {}))
        self.map_pins = {pin_dir / f"{name}{os.getpid()}": fd for name, fd in (maps or {}).items()}
        self.link_fd = -1
        ensure_bpffs()
        pin_dir.mkdir(parents=True, exist_ok=True)
        lib = _libbpf()
        perf_fd = tracepoint_perf_fd("sched", "sched_process_exec")
        try:
            link = lib.bpf_link_create(prog_fd, perf_fd, BPF_PERF_EVENT, None)
            if link < 0:
                err = ctypes.get_errno()
                raise OSError(err, f"bpf_link_create({prefix.rstrip('-')}): {os.strerror(err)}")
        finally:
            os.close(perf_fd)                           # the link keeps the perf event alive
        self.link_fd = link
        for path, fd in [*self.map_pins.items(), (self.pin_path, self.link_fd)]:   # the maps before the link
            if path.exists():
                path.unlink()
            if lib.bpf_obj_pin(fd, str(path).encode()) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"pinning {path}: {os.strerror(err)}")
        self.adopted = self._drop_previous()

    def _drop_previous(self) -> list[str]:
        """Unpin what earlier agents of this installation left: ours is attached, so no window."""
        dropped = []
        ours = {self.pin_path, *self.map_pins}
        for prefix in self.prefixes:
            for pin in self.pin_dir.glob(f"{prefix}*"):
                if pin not in ours and pin.name.removeprefix(prefix).isdigit():
                    pin.unlink()
                    dropped.append(pin.name)
        if dropped:
            log.info("%s: took over from the link(s) a previous agent left pinned: %s", self.prefix.rstrip("-"),
                     ", ".join(dropped))
        return dropped

    @property
    def attached(self) -> bool:
        return self.link_fd >= 0

    def close(self, unpin: bool = True) -> None:
        """A clean stop unpins (the program detaches); unpin=False leaves it enforcing on purpose."""
        if unpin:
            for path in (self.pin_path, *self.map_pins):
                if path.exists():
                    path.unlink()
            try:
                self.pin_dir.rmdir()                    # only when no other pin is left in it
            except OSError:
                pass
        if self.link_fd >= 0:
            os.close(self.link_fd)
            self.link_fd = -1

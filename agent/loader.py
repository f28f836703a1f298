"""Compile, attach and poll the capture probes (probes/*.c) with BCC.

Two BPF objects: the capture probes, and the enforcement programs compiled apart
(``enforcement()``, on the first Enforcer), which use the capture object's rings
and shared maps (probes/gpuguard.h: GG_SHARED_TABLE) - so enforcement is built,
verified and replaced on its own, and an agent without it carries none of it.
Records go through two ring buffers (the priority ring for exec, fork, exit,
cgroup and enforcement records), drained in batches: the ring callback only
copies bytes, decoding happens after each poll (agent/batch.py, agent/decode.py).

No syscall tracepoint is used (each one puts every syscall of every task on
the kernel's slow path): exec/fork/exit come from sched tracepoints, connects
and GPU device opens from cgroup hooks attached observe-only at the cgroup2
root through bpf_links (they detach when the agent's process ends). Kernel
struct offsets come from BTF (agent/btf.py) and are proven at start
(agent/selfcheck.py).
"""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from agent.bpf_links import (
    CGROUP_DEVICE,
    INET4_CONNECT,
    INET6_CONNECT,
    INET_EGRESS,
    INET_INGRESS,
    INET_SOCK_CREATE,
    UDP4_SENDMSG,
    UDP6_SENDMSG,
    cgroup_link,
    map_id,
)
from agent.btf import BtfError, kernel_offsets, offset_cflags
from agent.decode import KIND_NAMES
from agent.events import DecodeStats
from agent.headers import HeadersError, KernelHeaders, resolve_kernel_headers

log = logging.getLogger(__name__)

PROBES_DIR = Path(__file__).resolve().parent.parent / "probes"
CAPTURE_PROBES = ("exec.c", "fork_exit.c", "connect.c", "gpu_dev.c", "cgroup.c", "flow.c", "agent_guard.c")
ENFORCE_PROBES = ("enforce_exec.c", "enforce_argv.c", "enforce_connect.c", "enforce_payload.c",
                  "enforce_escape.c")
ALL_PROBES = CAPTURE_PROBES + ENFORCE_PROBES
SHARED_CHECK = (b"priority_events", b"events", b"task_origins", b"exempt_scopes")   # same kernel map in both objects
TRACEFS = Path("/sys/kernel/tracing")
# (tracepoint, program): packet sockets seen at use (probes/flow.c), attached where the kernel has them
PACKET_USE_TRACEPOINTS = ((b"sock_send_length", b"packet_send"), (b"sock_recv_length", b"packet_recv"))
# (program, prog type name in bcc.BPF, attach type): observe-only hooks at the cgroup2 root
ROOT_HOOKS = ((b"gpu_device_watch", "CGROUP_DEVICE", CGROUP_DEVICE),
              (b"observe_connect4", "CGROUP_SOCK_ADDR", INET4_CONNECT),
              (b"observe_connect6", "CGROUP_SOCK_ADDR", INET6_CONNECT),
              (b"observe_sendmsg4", "CGROUP_SOCK_ADDR", UDP4_SENDMSG),
              (b"observe_sendmsg6", "CGROUP_SOCK_ADDR", UDP6_SENDMSG),
              (b"flow_egress", "CGROUP_SKB", INET_EGRESS),
              (b"flow_ingress", "CGROUP_SKB", INET_INGRESS),
              (b"observe_sock_create", "CGROUP_SOCK", INET_SOCK_CREATE))
FIXED_GPU_MAJORS = {195: "nvidia-frontend", 226: "drm"}   # the rest are dynamic (see gpu_majors())
GPU_DEVICE_NAMES = ("nvidia", "drm", "kfd", "accel")


def gpu_majors(proc_devices: Path = Path("/proc/devices")) -> dict[int, str]:
    """Character-device majors of GPUs and accelerators -> driver name: 195, 226 and the dynamic ones."""
    majors = dict(FIXED_GPU_MAJORS)
    in_char = False
    try:
        lines = proc_devices.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        if line.startswith("Character devices"):
            in_char = True
        elif line.startswith("Block devices"):
            in_char = False
        elif in_char and line.strip():
            number, _, name = line.strip().partition(" ")
            if name.startswith(GPU_DEVICE_NAMES):
                majors[int(number)] = name
    return majors


class LoaderError(RuntimeError):
    """A missing piece (root, bcc, tracefs, headers, BPF): the message says which."""


def _is_mounted(path: Path) -> bool:
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == str(path) for line in mounts)


def ensure_tracefs(path: Path = TRACEFS) -> None:
    """BCC resolves tracepoints through tracefs; fresh machines may not mount it."""
    if _is_mounted(path):
        return
    rc = os.system(f"mount -t tracefs tracefs {path} 2>/dev/null")
    if rc != 0 or not _is_mounted(path):
        raise LoaderError(f"tracefs is not mounted at {path} and mounting it failed")


def import_bcc():
    try:
        import bcc  # noqa: PLC0415 - Debian's python3-bpfcc, only importable on the agent host
    except ImportError as exc:
        raise LoaderError(
            "python module 'bcc' not found: apt-get install python3-bpfcc and run from a "
            "virtualenv made with '/usr/bin/python3 -m venv --system-site-packages' "
            "(never 'pip install bcc': that is an unrelated package)"
        ) from exc
    return bcc


def check_privileges() -> None:
    if os.geteuid() != 0:
        raise LoaderError("the agent must run as root (loading BPF programs needs CAP_BPF/CAP_SYS_ADMIN)")


SHARED_HEADER = "gpuguard.h"
VOCAB_HEADER = "vocab.h"          # generated from the proto enums (scripts/gen_vocab.py)
INCLUDE_LINE = f'#include "{SHARED_HEADER}"'
VOCAB_INCLUDE = f'#include "{VOCAB_HEADER}"'


def probe_source(names: tuple[str, ...] = ALL_PROBES, probes_dir: Path = PROBES_DIR) -> str:
    """One C text: the vocabulary, the shared header, then each probe without its #include.

    BCC rewrites map calls (``events.ringbuf_output``) only in the main text,
    never inside included headers, so the header is inlined rather than included.
    """
    parts = [(probes_dir / VOCAB_HEADER).read_text(),
             (probes_dir / SHARED_HEADER).read_text().replace(VOCAB_INCLUDE, "")]
    for name in names:
        text = (probes_dir / name).read_text()
        parts.append(f'#line 1 "{name}"\n' + text.replace(INCLUDE_LINE, ""))
    return "\n".join(parts)


@dataclass
class Drained:
    """One drain of both rings: arena batches from the C callback, or raw records from BCC's callback."""

    batches: list = field(default_factory=list)
    raw: list[bytes] | None = None

    def __len__(self) -> int:
        return len(self.raw) if self.raw is not None else sum(len(b) for b in self.batches)

    def priority_bytes(self) -> int:
        """About how many bytes of the priority ring this drain emptied (exec records counted at their whole
        size, so never fewer): what paces the next drain (agent/pacing.py)."""
        from agent.batch import PRIORITY_KINDS, record_kind  # noqa: PLC0415

        if self.raw is not None:
            return sum(len(r) for r in self.raw if record_kind(r) in PRIORITY_KINDS)
        return sum(arr.nbytes for b in self.batches for kind, arr in b.arrays.items() if kind in PRIORITY_KINDS)

    def records(self) -> list[bytes]:
        """Each record's bytes (tests)."""
        return list(self.raw) if self.raw is not None else [r for b in self.batches for r in b.raw()]

    def events(self, stats: DecodeStats) -> list:
        from agent.batch import python_order  # noqa: PLC0415
        from agent.decode import decode_batch  # noqa: PLC0415

        if self.raw is not None:
            return decode_batch(python_order(self.raw), stats)
        return [ev for b in self.batches for ev in b.events(stats)]


@dataclass
class CaptureProbes:
    """The loaded capture programs and their ring buffer."""

    ringbuf_pages: int = 4096
    priority_pages: int = 2048          # exec, fork, exit, cgroup, enforcement: a ring no flood can fill
    headers: KernelHeaders | None = None
    bpf: object = None
    offsets: dict = field(default_factory=dict)
    majors: dict = field(default_factory=dict)
    consumer: str = "auto"              # "c": the C callback (agent/ringcb.c); "python": BCC's; "auto": C if it builds
    watch_packet_sockets: bool = True   # attach the packet-socket probes (every socket send/receive pays a read)
    packet_sockets_seen: bool = False   # the sock_send/recv_length tracepoints are attached (Linux 6.3+)
    _pending: list[bytes] = field(default_factory=list)
    _pending_priority: list[bytes] = field(default_factory=list)
    _links: list[int] = field(default_factory=list)
    _arenas: object = None
    _enforce_bpf: object = None

    def load(self, cgroup_root: Path | None = None) -> None:
        check_privileges()
        bcc = import_bcc()
        ensure_tracefs()
        try:
            self.headers = resolve_kernel_headers()
        except HeadersError as exc:
            raise LoaderError(str(exc)) from exc
        log.info("kernel headers: %s (%s)", self.headers.path, self.headers.reason)
        try:
            self.offsets = kernel_offsets()
        except BtfError as exc:
            raise LoaderError(f"kernel struct offsets: {exc}") from exc
        try:
            self.bpf = bcc.BPF(text=probe_source(CAPTURE_PROBES).encode(), cflags=self._cflags())
        except Exception as exc:  # BCC raises bare Exception on compile/load failure
            raise LoaderError(f"loading the capture probes failed: {exc}") from exc
        self._open_rings()
        self.majors = gpu_majors()
        table = self.bpf[b"gpu_majors"]
        for major in self.majors:
            table[table.Key(major)] = table.Leaf(1)
        if cgroup_root is not None:
            self.attach_root_hooks(cgroup_root)
        self.attach_packet_use()
        self.guard(os.getpid())
        log.info("capture probes attached: %d tracepoints, %d raw tracepoints, %d root cgroup hooks",
                 self.bpf.num_open_tracepoints(), len(self.bpf.raw_tracepoint_fds), len(self._links))

    def guard(self, tgid: int) -> None:
        """Report every signal another process sends this process that would stop or end it
        (probes/agent_guard.c): the agent guards itself at load."""
        table = self.bpf[b"guarded_tgids"]
        table[table.Key(tgid)] = table.Leaf(1)

    def unguard(self, tgid: int) -> None:
        table = self.bpf[b"guarded_tgids"]
        table.pop(table.Key(tgid), None)

    def _cflags(self) -> list[str]:
        """Both objects' compiler flags: the same ring sizes and kernel struct offsets."""
        return [f"-DRINGBUF_PAGES={self.ringbuf_pages}", f"-DPRIORITY_PAGES={self.priority_pages}", "-Wno-comment",
                *offset_cflags(self.offsets)]

    def enforcement(self):
        """The enforcement programs' own BPF object, compiled once on first use in this process after the capture
        object, whose rings and shared maps it uses (probes/gpuguard.h). Checked: its shared maps must be this
        capture object's kernel maps (BCC's shared namespace is per process: with two capture objects alive, an
        enforcement object could otherwise bind to the other one's)."""
        if self._enforce_bpf is None:
            if self.bpf is None:
                raise LoaderError("the enforcement programs need the capture probes loaded first (their rings and "
                                  "shared maps)")
            bcc = import_bcc()
            try:
                bpf = bcc.BPF(text=probe_source(ENFORCE_PROBES).encode(),
                              cflags=[*self._cflags(), "-DGG_ENFORCE_OBJECT"])
            except Exception as exc:  # BCC raises bare Exception on compile/load failure
                raise LoaderError(f"loading the enforcement programs failed: {exc}") from exc
            try:
                strangers = [name.decode() for name in SHARED_CHECK
                             if map_id(bpf[name].map_fd) != map_id(self.bpf[name].map_fd)]
            except OSError as exc:
                bpf.cleanup()
                raise LoaderError(f"cannot check the enforcement object's shared maps: {exc}") from exc
            if strangers:
                bpf.cleanup()
                raise LoaderError(f"the enforcement object's {', '.join(strangers)} are not this capture object's: "
                                  "another capture object is loaded in this process")
            self._enforce_bpf = bpf
            log.info("enforcement programs compiled as their own BPF object (%d shared maps checked)",
                     len(SHARED_CHECK))
        return self._enforce_bpf

    def attach_packet_use(self) -> None:
        """Packet sockets at their sends and receives (probes/flow.c packet_use): tracepoints of Linux 6.3+. An
        older kernel runs without them and says so, as does a node configured without them (packet_sockets =
        false: small-message socket traffic pays ~130 ns per send or receive here); nothing else depends on them."""
        if not self.watch_packet_sockets:
            log.warning("packet sockets are not watched (packet_sockets = false): a job's AF_PACKET frames pass "
                        "every connect hook unseen and packet-socket rules cannot be enforced")
            return
        self.packet_sockets_seen = True
        for tracepoint, fn in PACKET_USE_TRACEPOINTS:
            try:
                self.bpf.attach_raw_tracepoint(tp=tracepoint, fn_name=fn)
            except Exception as exc:  # BCC raises bare Exception when the tracepoint is missing
                self.packet_sockets_seen = False
                log.warning("packet sockets are not seen on this kernel (no sock:%s tracepoint: %s)",
                            tracepoint.decode(), exc)
                return

    def attach_root_hooks(self, cgroup_root: Path) -> None:
        """Observe-only cgroup programs at the root: every connect and GPU device open on the host."""
        bpf_type = type(self.bpf)
        fd = os.open(cgroup_root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name, prog_type, attach_type in ROOT_HOOKS:
                fn = self.bpf.load_func(name, getattr(bpf_type, prog_type), attach_type=attach_type)
                self._links.append(cgroup_link(fn.fd, fd, attach_type))
        except OSError as exc:
            raise LoaderError(f"attaching {name.decode()} at {cgroup_root}: {exc}") from exc
        finally:
            os.close(fd)

    def _open_rings(self) -> None:
        """Both rings to the C callback when it is there (one arena per kind, no Python per record), else to
        BCC's Python callback; the same events either way (tests/test_record_layout.py)."""
        lib = None
        if self.consumer in ("auto", "c"):
            from agent.ringcb import library  # noqa: PLC0415

            lib = library()
            if lib is None and self.consumer == "c":
                raise LoaderError("the C ring callback was asked for but cannot be built or loaded")
        if lib is not None:
            from agent.ringcb import ArenaSet  # noqa: PLC0415

            self._arenas = ArenaSet(lib)
            for name in (b"events", b"priority_events"):
                self.bpf._open_ring_buffer(self.bpf[name].map_fd, self._arenas.callback, self._arenas.ctx)
            self.consumer = "c"
        else:
            self.bpf[b"events"].open_ring_buffer(self._on_event)
            self.bpf[b"priority_events"].open_ring_buffer(self._on_priority_event)
            self.consumer = "python"
        log.info("ring consumer: %s", "C callback into per-kind arenas, numpy decode" if self.consumer == "c"
                 else "BCC's Python callback")

    def _on_event(self, _ctx, data, size) -> None:
        self._pending.append(ctypes.string_at(data, size))

    def _on_priority_event(self, _ctx, data, size) -> None:
        self._pending_priority.append(ctypes.string_at(data, size))

    def poll(self, timeout_ms: int = 50) -> Drained:
        """Wait up to timeout_ms, then return every raw event available.

        Most probes submit with BPF_RB_NO_WAKEUP (no wakeup per event), so this
        normally drains on the timer; rare urgent events (new cgroups) force a
        wakeup and are handled at once.
        """
        self.bpf.ring_buffer_poll(timeout_ms)
        return self.drain()   # libbpf's poll only reads rings that signalled; NO_WAKEUP records never do

    def drain(self) -> Drained:
        """Both rings' records, in kernel time order (a process's exec before its connects, a denial before the
        connect it denied). With the C callback: consumed until the rings are empty, an arena's worth at a time
        (a full arena leaves the record in the ring: nothing is lost between the kernel and here)."""
        if self._arenas is not None:
            from bcc.libbcc import lib as libbcc  # noqa: PLC0415

            batches = []
            while True:
                rc = libbcc.bpf_consume_ringbuf(self.bpf._ringbuf_manager)
                batches.append(self._arenas.take())
                if rc >= 0:
                    return Drained(batches=batches)
        self.bpf.ring_buffer_consume()
        raw = self._pending_priority + self._pending
        self._pending, self._pending_priority = [], []
        return Drained(raw=raw)

    def lost_counts(self) -> dict[str, int]:
        """Events the kernel could not hand over (ring buffer or pending map full)."""
        table = self.bpf[b"lost"]
        counts = {}
        for key, per_cpu in table.items():
            total = sum(per_cpu)
            if total:
                counts[KIND_NAMES.get(key.value, str(key.value))] = total
        return counts

    def close(self) -> None:
        for link in self._links:
            os.close(link)                    # a cgroup bpf_link detaches when its last fd closes
        self._links.clear()
        if self._enforce_bpf is not None:
            self._enforce_bpf.cleanup()       # pinned enforcement links keep their programs (agent/pins.py)
            self._enforce_bpf = None
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None

    def __enter__(self) -> CaptureProbes:
        self.load()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

"""bpf_links through libbpf (ctypes): the one way gpuguard attaches a program it did not leave to BCC.

A bpf_link detaches when its last reference goes: the agent's fd (capture: it ends with the agent) or a pin in
bpffs (enforcement: agent/pins.py). Cgroup links attach in multi mode, beside any other program on the cgroup.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import struct
from pathlib import Path

# attach types (uapi enum bpf_attach_type) of the programs the agent uses
INET_INGRESS, INET_EGRESS, INET_SOCK_CREATE, CGROUP_DEVICE = 0, 1, 2, 6
INET4_CONNECT, INET6_CONNECT, UDP4_SENDMSG, UDP6_SENDMSG = 10, 11, 14, 15
BPF_PERF_EVENT = 41

TRACEFS_EVENTS = Path("/sys/kernel/tracing/events")
PERF_TYPE_TRACEPOINT = 2
PERF_FLAG_FD_CLOEXEC = 8
NR_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}


@functools.cache
def libbpf():
    lib = ctypes.CDLL(ctypes.util.find_library("bpf") or "libbpf.so.1", use_errno=True)
    lib.bpf_link_create.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    lib.bpf_obj_pin.argtypes = [ctypes.c_int, ctypes.c_char_p]
    lib.bpf_prog_get_fd_by_id.argtypes = [ctypes.c_uint32]
    lib.bpf_prog_detach2.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.bpf_obj_get_info_by_fd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    return lib


def map_id(map_fd: int) -> int:
    """The kernel's id of the map behind an fd (struct bpf_map_info: type, then id): two fds, one map?"""
    info = ctypes.create_string_buffer(64)
    size = ctypes.c_uint32(len(info))
    if libbpf().bpf_obj_get_info_by_fd(map_fd, info, ctypes.byref(size)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf_obj_get_info_by_fd({map_fd}): {os.strerror(err)}")
    return struct.unpack_from("<II", info.raw)[1]


def _link(prog_fd: int, target_fd: int, attach_type: int, what: str) -> int:
    link = libbpf().bpf_link_create(prog_fd, target_fd, attach_type, None)
    if link < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf_link_create({what}): {os.strerror(err)}")
    return link


def cgroup_link(prog_fd: int, cgroup_fd: int, attach_type: int) -> int:
    """A bpf_link attaching a cgroup program (multi-attach): detached when its last reference goes."""
    return _link(prog_fd, cgroup_fd, attach_type, f"cgroup, attach type {attach_type}")


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


def tracepoint_link(prog_fd: int, category: str, name: str) -> int:
    """A bpf_link of a tracepoint program (BCC's own attach is a perf event that dies with the process)."""
    perf_fd = tracepoint_perf_fd(category, name)
    try:
        return _link(prog_fd, perf_fd, BPF_PERF_EVENT, f"{category}:{name}")
    finally:
        os.close(perf_fd)                                # the link keeps the perf event alive


def detach_legacy(cgroup: str, attach_type: int, prog_id: int) -> bool:
    """Detach a program attached with BPF_PROG_ATTACH by an agent before the pins were the ledger (its JSON file
    named cgroup, attach type and program id). False when it is gone already (cgroup removed, or detached)."""
    lib = libbpf()
    pfd = lib.bpf_prog_get_fd_by_id(prog_id)
    if pfd < 0:
        return False
    try:
        cfd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        os.close(pfd)
        return False
    try:
        return lib.bpf_prog_detach2(pfd, cfd, attach_type) == 0
    finally:
        os.close(cfd)
        os.close(pfd)

"""Attach and detach cgroup BPF programs, and find leftovers from a killed agent.

BCC's ``attach_func`` uses BPF_PROG_ATTACH: an attachment outlives the agent
on purpose (enforcement keeps going if the agent dies). The agent records each
attachment (cgroup, attach type, program id) in a state file; a restarted agent
attaches its new programs first, then detaches the recorded old ones through
libbpf (``bpf_prog_get_fd_by_id`` + ``bpf_prog_detach2``): no window without
enforcement, and no stale program left behind.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

BPF_F_ALLOW_MULTI = 2
# attach types (uapi enum bpf_attach_type) of the cgroup programs the agent uses
INET_INGRESS, INET_EGRESS, INET_SOCK_CREATE, CGROUP_DEVICE = 0, 1, 2, 6
INET4_CONNECT, INET6_CONNECT, UDP4_SENDMSG, UDP6_SENDMSG = 10, 11, 14, 15


@dataclass(frozen=True)
class Attachment:
    cgroup: str          # absolute path of the cgroup directory
    attach_type: int
    prog_id: int


def _libbpf():
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    lib = ctypes.CDLL(name, use_errno=True)
    lib.bpf_prog_get_fd_by_id.argtypes = [ctypes.c_uint32]
    lib.bpf_prog_detach2.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.bpf_obj_get_info_by_fd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]
    return lib


def prog_id(fd: int) -> int:
    """The kernel's id of a loaded program (struct bpf_prog_info: u32 type, u32 id, ...)."""
    info = (ctypes.c_uint32 * 2)()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    if _libbpf().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)) != 0:
        raise OSError(ctypes.get_errno(), "bpf_obj_get_info_by_fd failed")
    return info[1]


def detach_by_id(att: Attachment) -> bool:
    lib = _libbpf()
    pfd = lib.bpf_prog_get_fd_by_id(att.prog_id)
    if pfd < 0:
        return False     # program already gone (cgroup removed, or detached)
    try:
        cfd = os.open(att.cgroup, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        os.close(pfd)
        return False
    try:
        return lib.bpf_prog_detach2(pfd, cfd, att.attach_type) == 0
    finally:
        os.close(cfd)
        os.close(pfd)


class AttachmentLedger:
    """The on-disk list of what this agent attached."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> list[Attachment]:
        try:
            return [Attachment(**a) for a in json.loads(self.path.read_text())]
        except (OSError, ValueError, TypeError):
            return []

    def save(self, attachments: list[Attachment]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps([asdict(a) for a in attachments]))
        os.replace(tmp, self.path)

"""Member offsets of kernel structs, read from the running kernel's BTF (/sys/kernel/btf/vmlinux).

The probes need a few fields of kernel structs (the new image's argv/env bounds,
the real parent, the exit code, a socket's error). Header layouts are wrong on
kernels whose headers are not installed (6.1 headers put ``real_parent`` at
2432, 6.18 at 1280), so the offsets come from BTF at start-up and reach the
compiler as ``-DOFF_...`` constants; the agent then proves them on itself
(agent/selfcheck.py) before it trusts them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")
BTF_MAGIC = 0xEB9F
KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM = 1, 2, 3, 4, 5, 6
KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT = 8, 9, 10, 11
KIND_FUNC_PROTO, KIND_VAR, KIND_DATASEC, KIND_DECL_TAG, KIND_TYPE_TAG, KIND_ENUM64 = 13, 14, 15, 17, 18, 19
MODIFIERS = (KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG)


class BtfError(RuntimeError):
    """No BTF, or a struct/member the probes need is not in it."""


@dataclass
class _Type:
    kind: int
    name: str
    size_or_type: int
    members: list[tuple[str, int, int]]   # (name, type id, bit offset) for struct/union


def _extra_size(kind: int, vlen: int) -> int:
    if kind == KIND_INT:
        return 4
    if kind == KIND_ARRAY:
        return 12
    if kind in (KIND_STRUCT, KIND_UNION, KIND_DATASEC, KIND_ENUM64):
        return 12 * vlen
    if kind in (KIND_ENUM, KIND_FUNC_PROTO):
        return 8 * vlen
    if kind in (KIND_VAR, KIND_DECL_TAG):
        return 4
    return 0


class Btf:
    def __init__(self, path: Path = VMLINUX) -> None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise BtfError(f"cannot read kernel BTF at {path}: {exc.strerror} (CONFIG_DEBUG_INFO_BTF needed)") from exc
        magic, _ver, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<HBBIIIII", data)
        if magic != BTF_MAGIC:
            raise BtfError(f"{path} is not BTF (magic {magic:#x})")
        types_at, strings_at = hdr_len + type_off, hdr_len + str_off
        self._strings = data[strings_at:strings_at + str_len]
        self.types: list[_Type | None] = [None]          # type id 0 is void
        self._structs: dict[str, int] = {}
        pos, end = types_at, types_at + type_len
        while pos < end:
            name_off, info, size_or_type = struct.unpack_from("<III", data, pos)
            pos += 12
            kind, vlen, kind_flag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
            members = []
            if kind in (KIND_STRUCT, KIND_UNION):
                for i in range(vlen):
                    m_name, m_type, m_off = struct.unpack_from("<III", data, pos + 12 * i)
                    members.append((self._name(m_name), m_type, m_off & 0xFFFFFF if kind_flag else m_off))
            name = self._name(name_off)
            self.types.append(_Type(kind, name, size_or_type, members))
            if kind == KIND_STRUCT and name and name not in self._structs:
                self._structs[name] = len(self.types) - 1
            pos += _extra_size(kind, vlen)

    def _name(self, off: int) -> str:
        return self._strings[off:self._strings.index(b"\0", off)].decode()

    def _resolve(self, type_id: int) -> _Type:
        t = self.types[type_id]
        while t is not None and t.kind in MODIFIERS:
            t = self.types[t.size_or_type]
        if t is None:
            raise BtfError(f"type {type_id} resolves to void")
        return t

    def _find(self, t: _Type, member: str) -> int | None:
        """Byte offset of member in t, looking into anonymous struct/union members too."""
        for name, type_id, bits in t.members:
            if name == member:
                return bits // 8
            if not name:
                inner = self._resolve(type_id)
                if inner.kind in (KIND_STRUCT, KIND_UNION):
                    found = self._find(inner, member)
                    if found is not None:
                        return bits // 8 + found
        return None

    def offset(self, struct_name: str, member: str) -> int:
        type_id = self._structs.get(struct_name)
        if type_id is None:
            raise BtfError(f"struct {struct_name} not in kernel BTF")
        off = self._find(self.types[type_id], member)
        if off is None:
            raise BtfError(f"struct {struct_name} has no member {member} in kernel BTF")
        return off


# What the probes read from kernel structs: -DOFF_<NAME>=<byte offset>.
NEEDED = {
    "TASK_MM": ("task_struct", "mm"),
    "TASK_REAL_PARENT": ("task_struct", "real_parent"),
    "TASK_TGID": ("task_struct", "tgid"),
    "TASK_PID": ("task_struct", "pid"),
    "TASK_EXIT_CODE": ("task_struct", "exit_code"),
    "MM_ARG_START": ("mm_struct", "arg_start"),
    "MM_ARG_END": ("mm_struct", "arg_end"),
    "MM_ENV_START": ("mm_struct", "env_start"),
    "MM_ENV_END": ("mm_struct", "env_end"),
    "SK_ERR": ("sock", "sk_err"),
    "MM_EXE_FILE": ("mm_struct", "exe_file"),
    "FILE_INODE": ("file", "f_inode"),
    "INODE_INO": ("inode", "i_ino"),
    "INODE_SB": ("inode", "i_sb"),
    "SB_DEV": ("super_block", "s_dev"),
    "TASK_FILES": ("task_struct", "files"),
    "FILES_FDT": ("files_struct", "fdt"),
    "FDTABLE_FD": ("fdtable", "fd"),
    "INODE_MODE": ("inode", "i_mode"),
    "SOCKALLOC_SOCKET": ("socket_alloc", "socket"),
    "SOCKALLOC_INODE": ("socket_alloc", "vfs_inode"),
    "SOCKET_SK": ("socket", "sk"),
    "SK_FAMILY": ("sock_common", "skc_family"),    # sock starts with its sock_common
    "INODE_NLINK": ("inode", "i_nlink"),           # in an anonymous union with __i_nlink
    "INODE_RDEV": ("inode", "i_rdev"),
    "FILE_PRIVATE": ("file", "private_data"),      # a tty file: its tty_file_private
    "TTYFP_TTY": ("tty_file_private", "tty"),
    "TTY_LINK": ("tty_struct", "link"),            # a pty master's slave
    "FILE_PATH": ("file", "f_path"),
    "PATH_DENTRY": ("path", "dentry"),
    "DENTRY_NAME": ("dentry", "d_name"),
    "QSTR_NAME": ("qstr", "name"),
    "TASK_COMM": ("task_struct", "comm"),
    "CGROUP_LEVEL": ("cgroup", "level"),
    "CGROUP_KN": ("cgroup", "kn"),
    "KERNFS_ID": ("kernfs_node", "id"),
    "SK_CGRP_DATA": ("sock", "sk_cgrp_data"),     # the socket's cgroup (an accepted one: its listener's)
    "SKCD_CGROUP": ("sock_cgroup_data", "cgroup"),
    "SK_PROTOCOL": ("sock", "sk_protocol"),       # a u16 of its own since 5.6 (ring buffers need 5.8)
    "SK_TYPE": ("sock", "sk_type"),               # a u16 as well
    "SKC_DPORT": ("sock_common", "skc_dport"),    # network order
    "SKC_NUM": ("sock_common", "skc_num"),        # the local port, host order
    "SKC_DADDR": ("sock_common", "skc_daddr"),
    "SKC_RCV_SADDR": ("sock_common", "skc_rcv_saddr"),
    "SIGINFO_CODE": ("kernel_siginfo", "si_code"),   # in an anonymous struct (__SIGINFO)
}
# Fields of some kernels only: the first (struct, member) this kernel has, else -1, and the probe takes its
# fallback (#if OFF_X >= 0).
OPTIONAL = {
    "CGROUP_ANCESTORS": (("cgroup", "ancestors"),),   # Linux 6.2+ (struct cgroup *ancestors[]); before: ancestor_ids
    "INODE_CTIME_SEC": (("inode", "i_ctime_sec"),),   # Linux 6.11+: seconds and ns apart
    "INODE_CTIME_NSEC": (("inode", "i_ctime_nsec"),),
    "INODE_CTIME_TS": (("inode", "__i_ctime"), ("inode", "i_ctime")),   # before: a timespec64 (6.6-6.10; older)
    "SKC_V6_DADDR": (("sock_common", "skc_v6_daddr"),),                   # CONFIG_IPV6 kernels
    "SKC_V6_RCV_SADDR": (("sock_common", "skc_v6_rcv_saddr"),),
    "PACKET_SOCK_NUM": (("packet_sock", "num"),),   # a packet socket's Ethertype (absent: af_packet a module)
}


def kernel_offsets(path: Path = VMLINUX) -> dict[str, int]:
    btf = Btf(path)
    offsets = {name: btf.offset(s, m) for name, (s, m) in NEEDED.items()}
    for name, candidates in OPTIONAL.items():
        offsets[name] = -1
        for s, m in candidates:
            try:
                offsets[name] = btf.offset(s, m)
                break
            except BtfError:
                continue
    return offsets


def offset_cflags(offsets: dict[str, int]) -> list[str]:
    return [f"-DOFF_{name}={value}" for name, value in sorted(offsets.items())]

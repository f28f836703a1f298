"""Raw ring-buffer bytes -> typed events (agent/events.py).

The struct formats are built from agent/record_layout.py, generated from probes/gpuguard.h
(tests/test_record_layout.py checks it is fresh and that every offset is the host compiler's).
"""

from __future__ import annotations

import functools
import logging
import socket
import struct

from agent.events import (
    CgroupEvent,
    ConnectEvent,
    ConnectResultEvent,
    DecodeStats,
    EnforceEvent,
    ExecEvent,
    ExitEvent,
    FlowEvent,
    ForkEvent,
    GpuOpenEvent,
    Header,
    InboundEvent,
    KernelEvent,
    ListenEvent,
    SocketEvent,
)
from agent.record_layout import LAYOUTS
from agent.text import clean
from gpuguard.v1 import events_pb2 as pb
from gpuguard.vocab import ACTION_NAMES, KIND_NAMES, trait_names

log = logging.getLogger(__name__)

EV_EXEC, EV_FORK, EV_EXIT, EV_CONNECT = pb.KIND_EXEC, pb.KIND_FORK, pb.KIND_EXIT, pb.KIND_CONNECT
EV_GPU_OPEN, EV_ENFORCE, EV_CGROUP, EV_CONNECT_RESULT = pb.KIND_GPU_OPEN, pb.KIND_ENFORCE, pb.KIND_CGROUP, \
    pb.KIND_CONNECT_RESULT

_CODES = {"<u8": "Q", "<i8": "q", "<u4": "I", "<i4": "i", "<u2": "H", "<i2": "h", "u1": "B", "|u1": "B", "i1": "b"}


def _code(np_format: str) -> str:
    """numpy format of the generated layout -> struct code ('S16'/'V16' byte arrays -> '16s')."""
    if np_format[0] in "SV":
        return f"{np_format[1:]}s"
    return _CODES[np_format]


def _struct(fields: list[tuple[str, str, int]], start: int) -> struct.Struct:
    """The fields as one struct, in layout order (explicit padding where C leaves a hole)."""
    fmt, pos = "<", start
    for _name, np_format, offset in fields:
        if offset > pos:
            fmt += f"{offset - pos}x"
        code = _code(np_format)
        fmt += code
        pos = offset + struct.calcsize("<" + code)
    return struct.Struct(fmt)


def _layout(kind: int) -> tuple[struct.Struct, struct.Struct, int]:
    """(header struct, tail struct, record size) of a kind, from agent/record_layout.py: generated from
    probes/gpuguard.h (scripts/gen_layout.py), so the C header is the one place a record is laid out."""
    _name, size, fields = LAYOUTS[kind]
    head = [f for f in fields if f[0].startswith("hdr_")]
    tail = [f for f in fields if not f[0].startswith("hdr_")]
    header = _struct(head, 0)
    return header, _struct(tail, header.size), size


HEADER = _layout(EV_EXEC)[0]
EXEC_TAIL = _layout(EV_EXEC)[1]
FORK_TAIL = _layout(EV_FORK)[1]
EXIT_TAIL = _layout(EV_EXIT)[1]
CONNECT_TAIL = _layout(EV_CONNECT)[1]              # ... protocol, flags, repeats, pad
CONNECT_RESULT_TAIL = _layout(EV_CONNECT_RESULT)[1]
GPU_OPEN_TAIL = _layout(EV_GPU_OPEN)[1]
ENFORCE_TAIL = _layout(EV_ENFORCE)[1]              # ... peer_tgid, daddr, payload_len, repeats, payload
CGROUP_TAIL = _layout(EV_CGROUP)[1]
EV_FLOW, EV_SOCKET = pb.KIND_FLOW, pb.KIND_SOCKET
FLOW_TAIL = _layout(EV_FLOW)[1]                    # what, len, family, rport, lport, proto, pad, raddr, cookie, data
SOCKET_TAIL = _layout(EV_SOCKET)[1]
EV_INBOUND = pb.KIND_INBOUND
INBOUND_TAIL = _layout(EV_INBOUND)[1]              # family, lport, rport, pad, raddr, repeats, pad
EV_LISTEN = pb.KIND_LISTEN
LISTEN_TAIL = _layout(EV_LISTEN)[1]                # family, port, pad, addr

SIZES = {kind: size for kind, (_name, size, _fields) in LAYOUTS.items()}

EXEC_ARGS_TRUNCATED, EXEC_ARG_CLIPPED, EXEC_ARGV_FAULT = 1, 2, 4
CONNECT_SENDMSG = 1
CONNECT_IMAGE_NOLINK = 2
GPU_OPEN_IMAGE_NOLINK = 0x100
AF_INET, AF_INET6 = 2, 10
V4_MAPPED_PREFIX = bytes(10) + b"\xff\xff"


class MalformedEvent(ValueError):
    """Bytes that do not match any event layout."""


def _cstr(raw: bytes) -> str:
    return clean(raw.split(b"\0", 1)[0])


def _header(raw: bytes) -> tuple[int, Header]:
    ts, cgid, kind, tid, tgid, uid, gid, result, comm = HEADER.unpack_from(raw)
    return kind, Header(ts, cgid, tid, tgid, uid, gid, result, _cstr(comm))


def _exec(hdr: Header, raw: bytes) -> ExecEvent:
    argc, args_len, flags, args_total, filename, job_env, _optmask, ppid, stdio, traits, tty, exe_ino, exe_dev, \
        _pad, exe_ctime_ns, args = EXEC_TAIL.unpack_from(raw, HEADER.size)
    return exec_event(hdr, argc, args[:args_len], flags, args_total, filename, job_env, ppid, stdio, traits, tty,
                      exe_ino, exe_dev, exe_ctime_ns)


def exec_event(hdr: Header, argc: int, args: bytes, flags: int, args_total: int, filename: bytes, job_env: bytes,
               ppid: int, stdio: int, traits: int, tty: int, exe_ino: int, exe_dev: int,
               exe_ctime_ns: int) -> ExecEvent:
    """An exec record's fields as an event: shared by this decoder and the batch consumer (agent/batch.py), so the
    two cannot differ. ``args`` is the NUL-separated argv as far as the probe read it (``args_len`` bytes)."""
    return ExecEvent(
        hdr,
        _cstr(filename),
        [clean(a) for a in args.split(b"\0")[:argc]],
        argv_truncated=bool(flags & (EXEC_ARGS_TRUNCATED | EXEC_ARG_CLIPPED)),
        argv_fault=bool(flags & EXEC_ARGV_FAULT),
        slurm_job_env=_cstr(job_env),
        ppid=ppid,
        stdio=stdio_names(stdio),
        traits=trait_names(traits),
        tty=tty - 1 if tty else -1,
        argv_bytes=args_total,
        exe_inode=(exe_dev, exe_ino, exe_ctime_ns) if exe_ino else None,
    )


def stdio_names(bits: int) -> list[str]:
    """fds 0-2 at exec: socket (inet/inet6), unix (another socket), fifo (pipe or FIFO), pty (a pty slave) or
    other (file, console, none), from the probe's bits."""
    return list(_stdio_names(bits))


@functools.lru_cache(maxsize=1024)          # a few distinct bit patterns: each made once
def _stdio_names(bits: int) -> tuple[str, ...]:
    return tuple("socket" if bits & (1 << fd) else "unix" if bits & (1 << (fd + 8)) else
                 "fifo" if bits & (1 << (fd + 4)) else "pty" if bits & (1 << (fd + 12)) else "other"
                 for fd in range(3))


def _addr(family: int, addr: bytes) -> str:
    if family == AF_INET and addr[:12] != V4_MAPPED_PREFIX:
        return socket.inet_ntop(socket.AF_INET, addr[:4])
    if addr[:12] == V4_MAPPED_PREFIX:
        return socket.inet_ntop(socket.AF_INET, addr[12:])
    return socket.inet_ntop(socket.AF_INET6, addr)


def _connect(hdr: Header, raw: bytes) -> ConnectEvent:
    family, dport, sock_type, addr, sk, protocol, flags, repeats, _ = CONNECT_TAIL.unpack_from(raw, HEADER.size)
    return ConnectEvent(hdr, family, sock_type, _addr(family, addr), dport, sk, protocol,
                        bool(flags & CONNECT_SENDMSG), repeats, bool(flags & CONNECT_IMAGE_NOLINK))


def _enforce(hdr: Header, raw: bytes) -> EnforceEvent:
    action, rule, family, dport, peer, addr, plen, repeats, payload = ENFORCE_TAIL.unpack_from(raw, HEADER.size)
    daddr = _addr(family, addr) if family else ""
    return EnforceEvent(hdr, ACTION_NAMES.get(action, str(action)), rule, daddr, dport, peer,
                        payload[:min(plen, len(payload))], repeats)


def decode(raw: bytes) -> KernelEvent:
    if len(raw) < HEADER.size:
        raise MalformedEvent(f"{len(raw)} bytes is shorter than an event header")
    kind, hdr = _header(raw)
    expected = SIZES.get(kind)
    if expected is None:
        raise MalformedEvent(f"unknown event kind {kind}")
    if len(raw) < expected:
        raise MalformedEvent(f"{KIND_NAMES[kind]} event of {len(raw)} bytes, expected {expected}")
    if kind == EV_EXEC:
        return _exec(hdr, raw)
    if kind == EV_FORK:
        return ForkEvent(hdr, *FORK_TAIL.unpack_from(raw, HEADER.size))
    if kind == EV_EXIT:
        return ExitEvent(hdr, *EXIT_TAIL.unpack_from(raw, HEADER.size))
    if kind == EV_CONNECT_RESULT:
        return ConnectResultEvent(hdr, CONNECT_RESULT_TAIL.unpack_from(raw, HEADER.size)[0])
    if kind == EV_CONNECT:
        return _connect(hdr, raw)
    if kind == EV_ENFORCE:
        return _enforce(hdr, raw)
    if kind == EV_FLOW:
        what, length, family, rport, lport, proto, _, raddr, cookie, data = FLOW_TAIL.unpack_from(raw, HEADER.size)
        return FlowEvent(hdr, what, _addr(family, raddr), rport, lport, proto, length, cookie,
                         data[:min(length, len(data))])
    if kind == EV_SOCKET:
        return SocketEvent(hdr, *SOCKET_TAIL.unpack_from(raw, HEADER.size))
    if kind == EV_INBOUND:
        family, lport, rport, _, raddr, repeats, _ = INBOUND_TAIL.unpack_from(raw, HEADER.size)
        return InboundEvent(hdr, family, lport, rport, _addr(family, raddr), repeats)
    if kind == EV_LISTEN:
        family, port, _, addr = LISTEN_TAIL.unpack_from(raw, HEADER.size)
        return ListenEvent(hdr, family, port, _addr(family, addr))
    if kind == EV_CGROUP:
        cg_id, level, _root, path = CGROUP_TAIL.unpack_from(raw, HEADER.size)
        return CgroupEvent(hdr, cg_id, level, _cstr(path))
    flags, major, minor, _ = GPU_OPEN_TAIL.unpack_from(raw, HEADER.size)
    return GpuOpenEvent(hdr, "", flags & ~GPU_OPEN_IMAGE_NOLINK, major, minor, bool(flags & GPU_OPEN_IMAGE_NOLINK))


def decode_batch(batch: list[bytes], stats: DecodeStats) -> list[KernelEvent]:
    """Decode a poll's worth of events; malformed ones are counted and logged, never raised."""
    out: list[KernelEvent] = []
    for raw in batch:
        try:
            ev = decode(raw)
        except MalformedEvent as exc:
            stats.malformed += 1
            log.warning("dropped malformed kernel event: %s", exc)
            continue
        out.append(ev)
    stats.decoded += len(out)
    return out

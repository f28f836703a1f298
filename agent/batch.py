"""A drain's worth of kernel records, decoded a batch at a time.

The C callback (agent/ringcb.c) leaves the records in one arena per kind; numpy reads each arena in place with a
dtype built from agent/record_layout.py (generated from probes/gpuguard.h), and the hot kinds (connects and their
outcomes, execs, forks, exits, GPU opens, sockets) become events from whole columns, with each distinct comm and
address turned into a string once per batch (an exec's argv is cut from one copy of its arena). The rare kinds
(cgroup, enforcement, flow) go through agent/decode.py record by record. The result is exactly what the Python
consumer makes of the same ring bytes (tests/test_record_layout.py checks it), in the same order: by kernel time,
the priority ring first on a tie, then arrival.
"""

from __future__ import annotations

import numpy as np

from agent.decode import CONNECT_IMAGE_NOLINK, CONNECT_SENDMSG, GPU_OPEN_IMAGE_NOLINK, _addr, _cstr, decode, exec_event
from agent.events import (
    ConnectEvent,
    ConnectResultEvent,
    DecodeStats,
    ExecEvent,
    ExecShape,
    ExitEvent,
    ForkEvent,
    GpuOpenEvent,
    Header,
    KernelEvent,
    SocketEvent,
)
from agent.record_layout import LAYOUTS
from gpuguard.v1 import events_pb2 as pb

PRIORITY_KINDS = frozenset((pb.KIND_EXEC, pb.KIND_FORK, pb.KIND_EXIT, pb.KIND_CGROUP, pb.KIND_ENFORCE))
CONNECT_KINDS = frozenset((pb.KIND_CONNECT, pb.KIND_CONNECT_RESULT))
MAX_EXEC_SHAPES = 4096          # distinct exec shapes remembered across batches (cleared when exceeded)
_EXEC_SHAPES: dict[tuple, ExecEvent] = {}     # shape key -> the first record of that shape (its hdr unset)


def dtype_of(kind: int) -> np.dtype:
    _name, size, fields = LAYOUTS[kind]
    return np.dtype({"names": [f for f, _fmt, _o in fields], "formats": [fmt for _f, fmt, _o in fields],
                     "offsets": [o for _f, _fmt, o in fields], "itemsize": size})


DTYPES = {kind: dtype_of(kind) for kind in LAYOUTS}
SIZES = {kind: size for kind, (_n, size, _f) in LAYOUTS.items()}


NOT_PRIORITY = np.ones(256, dtype=np.int8)           # by kind: 0 for the priority ring's kinds (sorts first)
NOT_PRIORITY[list(PRIORITY_KINDS)] = 0


def record_order(ts: np.ndarray, kinds: np.ndarray, arrival: np.ndarray) -> np.ndarray:
    """The one order both consumers give: kernel time, then the priority ring's kinds, then arrival."""
    return np.lexsort((arrival, NOT_PRIORITY[np.clip(kinds, 0, 255)], ts))


class ArenaBatch:
    """Per-kind record arrays and the order they arrived in (kind per record)."""

    def __init__(self, arrays: dict[int, np.ndarray], order: np.ndarray, malformed: int = 0) -> None:
        self.arrays = arrays
        self.order = order
        self.malformed = malformed

    def __len__(self) -> int:
        return int(self.order.size)

    def raw(self) -> list[bytes]:
        """Each record's bytes, in arrival order (tests, and the fallback decoder)."""
        seen = {k: 0 for k in self.arrays}
        out = []
        for k in self.order.tolist():
            out.append(self.arrays[k][seen[k]].tobytes())
            seen[k] += 1
        return out

    def without(self, drop: dict[int, np.ndarray]) -> ArenaBatch:
        """The batch less some rows (per kind, a mask of the rows to leave out), in the same order: what is left for
        the ordered loop when some records are handled as columns (agent/lifecycle_batch.py)."""
        arrays, keep = dict(self.arrays), np.ones(self.order.size, bool)
        for kind, mask in drop.items():
            keep[np.flatnonzero(self.order == kind)[mask]] = False
            arrays[kind] = self.arrays[kind][~mask]
        return ArenaBatch(arrays, self.order[keep], self.malformed)

    def events(self, stats: DecodeStats, skip: frozenset[int] = frozenset()) -> list[KernelEvent]:
        """The records as events, in order; the kinds in ``skip`` are left out (handled as columns elsewhere:
        agent/connect_batch.py)."""
        stats.malformed += self.malformed
        if not len(self):
            return []
        decoded: dict[int, list[KernelEvent]] = {}
        comms: dict[bytes, str] = {}
        for kind, arr in self.arrays.items():
            if arr.size and kind not in skip:
                decoded[kind] = _BUILDERS.get(kind, _per_record)(arr, comms)
        kinds = self.order.astype(np.int64)
        if skip:
            kinds = kinds[~np.isin(kinds, list(skip))]
        ts = np.empty(kinds.size, dtype=np.uint64)
        index = np.empty(kinds.size, dtype=np.int64)
        for kind, arr in self.arrays.items():
            if kind in skip:
                continue
            where = np.flatnonzero(kinds == kind)
            ts[where] = arr["hdr_ts_ns"]
            index[where] = np.arange(where.size)
        order = record_order(ts, kinds, np.arange(kinds.size))
        out = [decoded[k][i] for k, i in zip(kinds[order].tolist(), index[order].tolist(), strict=True)]
        stats.decoded += len(out)
        return out


def _headers(arr: np.ndarray, comms: dict[bytes, str]) -> list[Header]:
    names = []
    for raw in arr["hdr_comm"].tolist():
        name = comms.get(raw)
        if name is None:
            name = comms[raw] = _cstr(raw)
        names.append(name)
    return [Header(*row) for row in zip(arr["hdr_ts_ns"].tolist(), arr["hdr_cgroup_id"].tolist(),
                                        arr["hdr_tid"].tolist(), arr["hdr_tgid"].tolist(), arr["hdr_uid"].tolist(),
                                        arr["hdr_gid"].tolist(), arr["hdr_result"].tolist(), names, strict=True)]


def _addresses(families: list[int], raws: list[bytes]) -> list[str]:
    cache: dict[tuple[int, bytes], str] = {}
    out = []
    for family, raw in zip(families, raws, strict=True):
        key = (family, raw)
        text = cache.get(key)
        if text is None:
            text = cache[key] = _addr(family, raw)
        out.append(text)
    return out


def _connects(arr: np.ndarray, comms) -> list[KernelEvent]:
    families = arr["family"].tolist()
    addrs = _addresses(families, [bytes(b) for b in arr["daddr"].tolist()])
    return [ConnectEvent(h, fam, st, addr, dport, sk, proto, bool(flags & CONNECT_SENDMSG), rep,
                         bool(flags & CONNECT_IMAGE_NOLINK))
            for h, fam, st, addr, dport, sk, proto, flags, rep in zip(
                _headers(arr, comms), families, arr["sock_type"].tolist(), addrs, arr["dport"].tolist(),
                arr["sk"].tolist(), arr["protocol"].tolist(), arr["flags"].tolist(), arr["repeats"].tolist(),
                strict=True)]


def exec_shapes(arr: np.ndarray) -> list[ExecEvent]:
    """Each exec record's shape: the record decoded once per distinct shape (everything but its process, its parent
    and its time; the header left unset), a storm of identical execs sharing one, with its ExecShape
    (agent/events.py)."""
    size, args_at = arr.dtype.itemsize, arr.dtype.fields["args"][1]
    args_cap = arr.dtype.fields["args"][0].itemsize
    buf = arr.tobytes()
    shapes = _EXEC_SHAPES
    if len(shapes) > MAX_EXEC_SHAPES:
        shapes.clear()
    out = []
    for at, argc, n, flags, total, fname, jenv, stdio, traits, tty, ino, dev, ctime in zip(
            range(args_at, args_at + size * arr.size, size), arr["argc"].tolist(), arr["args_len"].tolist(),
            arr["flags"].tolist(), arr["args_total"].tolist(), arr["filename"].tolist(), arr["job_env"].tolist(),
            arr["stdio"].tolist(), arr["traits"].tolist(), arr["tty"].tolist(), arr["exe_ino"].tolist(),
            arr["exe_dev"].tolist(), arr["exe_ctime_ns"].tolist(), strict=True):
        key = (buf[at:at + min(n, args_cap)], fname, argc, flags, total, jenv, stdio, traits, tty, ino, dev, ctime)
        like = shapes.get(key)
        if like is None:
            like = shapes[key] = exec_event(None, argc, key[0], flags, total, fname, jenv, 0, stdio, traits, tty, ino,
                                            dev, ctime)
            like.shape = ExecShape()
        out.append(like)
    return out


def _execs(arr: np.ndarray, comms) -> list[KernelEvent]:
    """Execs, each record's fields decoded once per distinct shape: a storm of identical execs shares the argv, the
    names and an ExecShape."""
    return [ExecEvent(h, like.filename, like.argv, like.argv_truncated, like.argv_fault, like.slurm_job_env, ppid,
                      like.stdio, like.traits, like.tty, like.argv_bytes, like.exe_inode, like.shape)
            for h, like, ppid in zip(_headers(arr, comms), exec_shapes(arr), arr["ppid"].tolist(), strict=True)]


def _connect_results(arr, comms) -> list[KernelEvent]:
    return [ConnectResultEvent(h, sk) for h, sk in zip(_headers(arr, comms), arr["sk"].tolist(), strict=True)]


def _forks(arr, comms) -> list[KernelEvent]:
    return [ForkEvent(h, c, p) for h, c, p in zip(_headers(arr, comms), arr["child_tgid"].tolist(),
                                                   arr["parent_tgid"].tolist(), strict=True)]


def _exits(arr, comms) -> list[KernelEvent]:
    return [ExitEvent(h, c, s) for h, c, s in zip(_headers(arr, comms), arr["code"].tolist(),
                                                   arr["signal"].tolist(), strict=True)]


def _gpu_opens(arr, comms) -> list[KernelEvent]:
    return [GpuOpenEvent(h, "", f & ~GPU_OPEN_IMAGE_NOLINK, ma, mi, bool(f & GPU_OPEN_IMAGE_NOLINK)) for h, f, ma, mi
            in zip(_headers(arr, comms), arr["flags"].tolist(), arr["major"].tolist(), arr["minor"].tolist(),
                   strict=True)]


def _sockets(arr, comms) -> list[KernelEvent]:
    return [SocketEvent(h, f, t, p, r) for h, f, t, p, r in zip(
        _headers(arr, comms), arr["family"].tolist(), arr["type"].tolist(), arr["protocol"].tolist(),
        arr["rule"].tolist(), strict=True)]


def _per_record(arr, _comms) -> list[KernelEvent]:
    return [decode(arr[i].tobytes()) for i in range(arr.size)]


_BUILDERS = {pb.KIND_CONNECT: _connects, pb.KIND_CONNECT_RESULT: _connect_results, pb.KIND_EXEC: _execs,
             pb.KIND_FORK: _forks, pb.KIND_EXIT: _exits, pb.KIND_GPU_OPEN: _gpu_opens, pb.KIND_SOCKET: _sockets}


def record_kind(raw: bytes) -> int:
    """A raw record's kind: the header's u32 at byte 16 (probes/gpuguard.h); 0, no kind, for a record too short."""
    return int.from_bytes(raw[16:20], "little") if len(raw) >= 20 else 0


def python_order(raw: list[bytes]) -> list[bytes]:
    """The Python consumer's records (BCC's callback, one bytes object each, rings concatenated in arrival order)
    in the order the batch consumer gives: kernel time, the priority ring first on a tie, then arrival."""
    if len(raw) < 2:
        return raw
    ts = np.array([int.from_bytes(r[0:8], "little") if len(r) >= 8 else 0 for r in raw], dtype=np.uint64)
    kinds = np.array([record_kind(r) for r in raw], dtype=np.int64)
    return [raw[i] for i in record_order(ts, kinds, np.arange(len(raw))).tolist()]

"""Events' bytes a batch at a time: agent/wire.c through ctypes, or the same bytes in Python without a compiler
(the fallback, and the oracle of tests/test_wire.py)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from agent import native
from agent.encoded import (
    BODY_TAGS,
    EXEC_FIELD,
    EXIT_FIELD,
    TEXT_TAGS,
    connect_data,
    event_data,
    event_prefix,
    int_field,
    length_delimited,
    with_seq,
)
from gpuguard.rawbatch import frame

SOURCE = Path(__file__).with_name("wire.c")
CONNECT_ROW_BOUND = 11 + 1 + 10 + 11 + 11 + 11 + 2     # a connect's bytes besides its pieces, at most
FRAME_BOUND = 1 + 5 + 1 + 10                           # a frame's tag, length and seq, at most

_P = ctypes.c_void_p
_U64 = ctypes.c_uint64


def _declare(lib: ctypes.CDLL) -> None:
    lib.gg_encode_connects.restype = _U64
    lib.gg_encode_connects.argtypes = [_U64] + [_P] * 12
    lib.gg_encode_lives.restype = _U64
    lib.gg_encode_lives.argtypes = [_U64, _P, _P, _P, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint8, ctypes.c_uint8,
                                    _P, _P, _P, _P]
    lib.gg_frame_events.restype = _U64
    lib.gg_frame_events.argtypes = [_U64, _P, _P, _U64, _P, _P]


def library() -> ctypes.CDLL | None:
    return native.load(SOURCE, _declare, "events' bytes are assembled in Python (slower)")


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


def encode_connects(ts: np.ndarray, prefix: np.ndarray, address: np.ndarray, name: np.ndarray, dport: np.ndarray,
                    result: np.ndarray, repeats: np.ndarray, nolink: np.ndarray, pieces: list[bytes],
                    use_c: bool = True) -> tuple[bytes, np.ndarray]:
    """One connect event per row (agent/encoded.py connect_data), from its columns and the indexes of its three
    shared parts in ``pieces``: (the events back to back, where each ends)."""
    n = int(ts.size)
    lib = library() if use_c else None
    if lib is None or n == 0:
        out = _connect_rows_py(ts, prefix, address, name, dport, result, repeats, nolink, pieces)
        return b"".join(out), np.cumsum([len(b) for b in out], dtype=np.uint64)
    blob = b"".join(pieces)
    off = np.zeros(len(pieces) + 1, np.uint64)
    np.cumsum([len(b) for b in pieces], out=off[1:])
    lens = np.diff(off)
    columns = [np.ascontiguousarray(ts, np.int64), np.ascontiguousarray(prefix, np.uint32),
               np.ascontiguousarray(address, np.uint32), np.ascontiguousarray(name, np.uint32),
               np.ascontiguousarray(dport, np.int64), np.ascontiguousarray(result, np.int64),
               np.ascontiguousarray(repeats, np.int64), np.ascontiguousarray(nolink, np.uint8)]
    bound = int(lens[columns[1]].sum() + lens[columns[2]].sum() + lens[columns[3]].sum()) + CONNECT_ROW_BOUND * n
    out = np.empty(bound, np.uint8)
    ends = np.empty(n, np.uint64)
    pieces_buf = np.frombuffer(blob, np.uint8) if blob else np.zeros(1, np.uint8)
    written = lib.gg_encode_connects(n, *(_ptr(c) for c in columns), _ptr(pieces_buf), _ptr(off), _ptr(out),
                                     _ptr(ends))
    return out[:written].tobytes(), ends


def _connect_rows_py(ts, prefix, address, name, dport, result, repeats, nolink, pieces) -> list[bytes]:
    return [connect_data(t, pieces[p], pieces[a], d, r, pieces[m], k, bool(u))
            for t, p, a, m, d, r, k, u in zip(ts.tolist(), prefix.tolist(), address.tolist(), name.tolist(),
                                              dport.tolist(), result.tolist(), repeats.tolist(), nolink.tolist(),
                                              strict=True)]


LIFE_NUMS = 9          # per life: exec time, exit time, pid, start ticks, exec tid, exit tid, ppid, code, signal
LIFE_REFS = 8          # per life, pieces: parent key, comm, exit comm, tail, exit tail, ancestry, job, exec body
LIFE_EVENT_BOUND = 11 + 1 + 5 + 1 + 1 + 20 + 1 + 20 + 3 * 11 + 1 + 5 + 1 + 5 + 2 * 11   # an event besides its pieces


def encode_lives(order: np.ndarray, nums: np.ndarray, refs: np.ndarray, key_prefix: int, boot: int,
                 pieces: list[bytes], use_c: bool = True) -> tuple[bytes, np.ndarray]:
    """Short lives' exec and exit events (agent/lifecycle_batch.py), in ``order`` (2n entries: i < n is life i's
    exec, n + i its exit), from each life's numbers (n x LIFE_NUMS) and the indexes of its pieces (n x LIFE_REFS):
    (the events back to back, where each ends)."""
    n = int(nums.shape[0])
    lib = library() if use_c else None
    if lib is None or n == 0:
        out = _lives_py(order, nums, refs, key_prefix, boot, pieces)
        return b"".join(out), np.cumsum([len(b) for b in out], dtype=np.uint64)
    blob = b"".join(pieces)
    off = np.zeros(len(pieces) + 1, np.uint64)
    np.cumsum([len(b) for b in pieces], out=off[1:])
    lens = np.diff(off)
    bound = int(lens[refs].sum() + 2 * n * (LIFE_EVENT_BOUND + lens[key_prefix] + lens[boot]))
    out = np.empty(bound, np.uint8)
    ends = np.empty(2 * n, np.uint64)
    nums, refs = np.ascontiguousarray(nums, np.int64), np.ascontiguousarray(refs, np.uint32)
    order = np.ascontiguousarray(order, np.uint64)
    written = lib.gg_encode_lives(n, _ptr(order), _ptr(nums), _ptr(refs), key_prefix, boot, BODY_TAGS[EXEC_FIELD][0],
                                  BODY_TAGS[EXIT_FIELD][0], _ptr(np.frombuffer(blob, np.uint8)), _ptr(off), _ptr(out),
                                  _ptr(ends))
    return out[:written].tobytes(), ends


def _lives_py(order, nums, refs, key_prefix, boot, pieces) -> list[bytes]:
    n = int(nums.shape[0])
    out = []
    for e in order.tolist():
        is_exit = e >= n
        exec_ts, exit_ts, pid, start, tid, xtid, ppid, code, signal = nums[e - n if is_exit else e].tolist()
        parent_key, comm, xcomm, tail, xtail, ancestry, job, body = refs[e - n if is_exit else e].tolist()
        key = pieces[key_prefix] + f"{pid}:{start}".encode()
        process = (length_delimited(TEXT_TAGS[1], key) + pieces[parent_key] + int_field(3, pid)
                   + int_field(4, xtid if is_exit else tid) + int_field(5, ppid) + pieces[xcomm if is_exit else comm]
                   + (pieces[xtail] if is_exit else pieces[tail] + pieces[ancestry]))
        prefix = event_prefix(pieces[boot], process, pieces[job])
        if is_exit:
            out.append(event_data(exit_ts, prefix, EXIT_FIELD, int_field(1, code) + int_field(2, signal)))
        else:
            out.append(event_data(exec_ts, prefix, EXEC_FIELD, pieces[body]))
    return out


def frame_events(data: bytes, ends: np.ndarray, first_seq: int, use_c: bool = True) -> tuple[bytes, np.ndarray]:
    """Events (every field but seq) -> RawBatch frames with seqs first_seq, first_seq + 1, ...: (the frames back
    to back, where each ends)."""
    n = int(ends.size)
    lib = library() if use_c else None
    if lib is None or n == 0:
        starts = [0, *ends.tolist()][:-1]
        frames = [frame(with_seq(first_seq + i, data[s:e]))
                  for i, (s, e) in enumerate(zip(starts, ends.tolist(), strict=True))]
        return b"".join(frames), np.cumsum([len(f) for f in frames], dtype=np.uint64)
    ends = np.ascontiguousarray(ends, np.uint64)
    out = np.empty(len(data) + FRAME_BOUND * n, np.uint8)
    out_ends = np.empty(n, np.uint64)
    src = np.frombuffer(data, np.uint8) if data else np.zeros(1, np.uint8)
    written = lib.gg_frame_events(n, _ptr(src), _ptr(ends), first_seq, _ptr(out), _ptr(out_ends))
    return out[:written].tobytes(), out_ends

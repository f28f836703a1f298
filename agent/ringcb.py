"""The C ring-buffer callback (agent/ringcb.c): found, or built, and loaded with ctypes; None without a compiler.

ArenaSet owns the memory the callback writes (one arena per record kind, an arrival list) and turns what it
holds into an ArenaBatch (agent/batch.py), after which the arenas are empty again.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from agent import native
from agent.batch import DTYPES, SIZES, ArenaBatch

SOURCE = Path(__file__).with_name("ringcb.c")
KINDS = 16
ENOSPC = 28
RINGBUF_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)   # BCC's type


class _Arena(ctypes.Structure):
    _fields_ = [("buf", ctypes.c_void_p), ("cap", ctypes.c_uint64), ("used", ctypes.c_uint64),
                ("count", ctypes.c_uint64), ("size", ctypes.c_uint64)]


class _Arenas(ctypes.Structure):
    _fields_ = [("a", _Arena * KINDS), ("order", ctypes.c_void_p), ("order_cap", ctypes.c_uint64),
                ("order_used", ctypes.c_uint64), ("full", ctypes.c_uint64), ("malformed", ctypes.c_uint64)]


def _declare(lib: ctypes.CDLL) -> None:
    lib.gg_ring_record.restype = ctypes.c_int
    lib.gg_ring_record.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]


def library() -> ctypes.CDLL | None:
    """The callback's library (agent/native.py): prebuilt by setup, else built now; None if neither."""
    return native.load(SOURCE, _declare, "records cross into Python one by one (slower)")


class ArenaSet:
    """Arenas for `records` records of each kind (exec: a quarter of that) and an arrival list as long."""

    def __init__(self, lib: ctypes.CDLL, records: int = 8192) -> None:
        self.lib = lib
        self.s = _Arenas()
        self._buffers = []
        for kind, size in SIZES.items():
            cap = size * (records // 4 if size > 1024 else records)
            buf = ctypes.create_string_buffer(cap)
            self._buffers.append(buf)
            self.s.a[kind].buf, self.s.a[kind].cap, self.s.a[kind].size = ctypes.addressof(buf), cap, size
        self._order = ctypes.create_string_buffer(records * 2)
        self.s.order, self.s.order_cap = ctypes.addressof(self._order), records * 2
        self.callback = RINGBUF_CB(ctypes.cast(lib.gg_ring_record, ctypes.c_void_p).value)
        self._malformed_taken = 0

    @property
    def ctx(self) -> int:
        return ctypes.addressof(self.s)

    @property
    def full(self) -> int:
        return self.s.full

    def feed(self, record: bytes) -> int:
        """Hand one record to the callback as libbpf would (tests): 0, or -ENOSPC when it must wait."""
        return self.lib.gg_ring_record(self.ctx, record, len(record))

    def take(self) -> ArenaBatch:
        """What the arenas hold, copied out (only the kinds that have records: a poll of a few kinds does not pay
        for the other ten); the arenas are empty afterwards."""
        arrays = {}
        for kind in SIZES:
            arena = self.s.a[kind]
            n = arena.count
            if n:                                   # the callback moves used and count together
                arrays[kind] = np.frombuffer(ctypes.string_at(arena.buf, arena.used), dtype=DTYPES[kind], count=n)
                arena.used = arena.count = 0
        order = np.frombuffer(ctypes.string_at(self.s.order, self.s.order_used), dtype=np.uint8).copy()
        self.s.order_used = 0
        malformed, self._malformed_taken = self.s.malformed - self._malformed_taken, self.s.malformed
        return ArenaBatch(arrays, order, malformed)

"""The capture loop's pacing (agent/pacing.py) and what it reads of a drain: pure logic, no kernel."""

from __future__ import annotations

import numpy as np
import pytest

from agent.batch import DTYPES, SIZES, ArenaBatch
from agent.loader import Drained
from agent.pacing import DrainPacer
from gpuguard.v1 import events_pb2 as pb

RING = 8 << 20


def steady(pacer: DrainPacer, cost_s: float, priority_bytes: int = 0, since_s: float = 0.05, turns: int = 30) -> float:
    wait = 0.0
    for _ in range(turns):
        wait = pacer.wait_s(cost_s, priority_bytes, since_s)
    return wait


def test_cheap_drains_are_paced_at_the_minimum():
    assert steady(DrainPacer(RING), 0.0002) == pytest.approx(0.05)


def test_dear_drains_are_spaced_so_their_cost_stays_near_the_share():
    pacer = DrainPacer(RING, cpu_share=0.02)
    assert steady(pacer, 0.003) == pytest.approx(0.15, rel=0.01)      # 3 ms a drain -> 2 % of a core
    assert steady(DrainPacer(RING, max_s=0.25), 0.02) == pytest.approx(0.25)   # never past the bound


def test_one_odd_drain_does_not_swing_the_wait():
    pacer = DrainPacer(RING)
    steady(pacer, 0.0005)
    assert pacer.wait_s(0.005, 0, 0.05) < 0.1          # ten times the usual cost: 0.25 s if taken alone
    assert steady(pacer, 0.0005) == pytest.approx(0.05, rel=0.01)


def test_a_fast_filling_priority_ring_is_drained_before_a_quarter_fills():
    pacer = DrainPacer(RING, fill_fraction=0.25)
    # 4 MiB of execs in 0.1 s: 40 MiB/s, a quarter of the ring in 50 ms... then 20 MiB in 0.1 s: 10 ms
    assert steady(pacer, 0.01, priority_bytes=4 << 20, since_s=0.1) == pytest.approx(0.05)
    assert pacer.wait_s(0.01, 20 << 20, 0.1) == pytest.approx(0.25 * RING / (200 << 20))
    assert pacer.wait_s(0.01, 20 << 20, 0.1) < pacer.min_s                # the ring's safety comes before the minimum


def records(kind: int, n: int) -> np.ndarray:
    arr = np.zeros(n, DTYPES[kind])
    arr["hdr_kind"] = kind
    return arr


def test_priority_bytes_count_the_priority_kinds_only():
    arrays = {pb.KIND_EXEC: records(pb.KIND_EXEC, 2), pb.KIND_EXIT: records(pb.KIND_EXIT, 3),
              pb.KIND_CONNECT: records(pb.KIND_CONNECT, 1000)}
    order = np.array([pb.KIND_EXEC] * 2 + [pb.KIND_EXIT] * 3 + [pb.KIND_CONNECT] * 1000, np.uint8)
    want = 2 * SIZES[pb.KIND_EXEC] + 3 * SIZES[pb.KIND_EXIT]
    assert Drained(batches=[ArenaBatch(arrays, order)]).priority_bytes() == want
    raw = [r.tobytes() for arr in arrays.values() for r in arr]           # BCC's callback: each record's bytes
    assert Drained(raw=raw).priority_bytes() == want
    assert Drained().priority_bytes() == 0

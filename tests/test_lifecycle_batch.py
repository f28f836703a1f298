"""Short lives made from the columns (agent/lifecycle_batch.py) are the ordered loop's events: the same drains
through both give the same events, byte for byte, and leave the same process table; lives that something else in
the drain could change or read are left to the ordered loop (pure logic: this process stands in for the parent, a
plain directory for the cgroup tree)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent import wire
from agent.batch import ArenaBatch
from agent.encoded import expand
from agent.enrich import Enricher
from agent.events import DecodeStats
from agent.identity import BootClock, HostIdentity
from agent.jobs import JobResolver
from agent.lifecycle_batch import LIVES_MIN, ShortLives
from agent.process_table import ProcessTable
from gpuguard.v1 import events_pb2 as pb
from tests.conftest import arena

PARENT = os.getpid()
TRUE = b"/usr/bin/true"


class DigestOnSecondLook:
    """An executable hasher whose digest is known from a pid's second lookup (computed between its exec and exit)."""

    def __init__(self, pids: set[int]) -> None:
        self.pids, self.seen = pids, set()

    def lookup(self, exe: str, pid: int, inode) -> str:
        if pid not in self.pids:
            return ""
        if pid in self.seen:
            return "cd" * 32
        self.seen.add(pid)
        return ""


def enricher(root: Path, hashed: set[int]) -> Enricher:
    clock = BootClock()
    clock.offset_ns = 1_700_000_000 * 10**9
    e = Enricher(HostIdentity("h", "node-1", "boot-1"), ProcessTable("boot-1"), JobResolver(root), clock=clock)
    e.encode_events = True
    e.hasher = DigestOnSecondLook(hashed)
    return e


def row(kind: int, ts: int, pid: int, cg: int, *, comm: bytes = b"true", tid: int = 0, **fields) -> tuple:
    return kind, {"hdr_ts_ns": ts, "hdr_tgid": pid, "hdr_tid": tid or pid, "hdr_cgroup_id": cg, "hdr_uid": 1000,
                  "hdr_gid": 1000, "hdr_comm": comm, **fields}


def life(ts: int, pid: int, cg: int, *, argv: tuple[bytes, ...] = (TRUE, b"x"), filename: bytes = TRUE,
         parent: int = PARENT, code: int = 0, signal: int = 0, exit_comm: bytes = b"true", exit_tid: int = 0,
         exit_cg: int = 0, tty: int = 0, job_env: bytes = b"") -> list[tuple]:
    """A fork, an exec and an exit of one child, as the probes write them."""
    args = b"\0".join(argv) + b"\0"
    return [row(pb.KIND_FORK, ts, parent, cg, comm=b"sh", child_tgid=pid, parent_tgid=parent),
            row(pb.KIND_EXEC, ts + 1, pid, cg, argc=len(argv), args_len=len(args), args_total=len(args),
                filename=filename, ppid=parent, exe_ino=777, exe_dev=8, exe_ctime_ns=5, args=args, tty=tty,
                job_env=job_env),
            row(pb.KIND_EXIT, ts + 2, pid, exit_cg or cg, comm=exit_comm, tid=exit_tid, code=code, signal=signal)]


def ordered(e: Enricher, batch: ArenaBatch) -> list[bytes]:
    return [r.data for ev in batch.events(DecodeStats()) if (r := e.enrich(ev)) is not None]


def as_columns(e: Enricher, batch: ArenaBatch) -> tuple[list[bytes], int]:
    """What agent/runtime.py does with a drain: the rest through the ordered loop, then the lives."""
    lives, rest = ShortLives.split(batch, e, set())
    out = ordered(e, rest)
    if lives is None:
        return out, 0
    stats = DecodeStats()
    made = lives.events(stats)
    assert stats.decoded == 3 * len(lives)
    return out + [r.data for r in expand(made)], len(lives)


def table_state(e: Enricher, pids: list[int]) -> list[tuple]:
    out = []
    for pid in pids:
        p = e.table.get(pid)
        out.append((p.key, p.ppid, p.comm, p.exe, p.argv, p.uid, p.cgroup_id, p.job, p.exited, p.ancestry_sent,
                    p.exe_inode, pid in e.table.exited, pid in e.table.live))
    return out


@pytest.fixture
def job_root(tmp_path):
    root = tmp_path / "cgroup"
    (root / "slurm" / "uid_0" / "job_4242").mkdir(parents=True)
    (root / "system.slice" / "cron.service").mkdir(parents=True)
    return root


@pytest.mark.parametrize("c_library", [True, False], ids=["wire.c", "python"])
def test_a_shell_loops_lives_are_the_ordered_loops_events(job_root, monkeypatch, c_library):
    """Two drains of a loop's children: the first teaches the ordered loop each exec's shape, the second is made
    from the columns - exit codes and signals, a comm changed before the exit, an exit reported by another thread,
    a hash learnt between exec and exit, a SLURM_JOB_ID from a unit's cgroup - and lives that are left to the
    ordered loop: one that forks, one that connects, a relative exec, a pty, an exit in another cgroup, a child of
    a parent that execs in the drain. Their bytes assembled by agent/wire.c or, without it, in Python."""
    if c_library:
        assert wire.library() is not None, "agent/wire.c could not be built or loaded"
    else:
        monkeypatch.setattr(wire, "library", lambda: None)
    cg = os.stat(job_root / "slurm" / "uid_0" / "job_4242").st_ino
    unit = os.stat(job_root / "system.slice" / "cron.service").st_ino
    base = 4_100_000
    first = [r for i in range(3) for r in life(100 + 10 * i, base + i, cg)]
    first += life(200, base + 5, unit, job_env=b"777") + life(210, base + 6, cg, argv=(TRUE, b"y"))
    second = []
    for i in range(12):
        second += life(1000 + 10 * i, base + 100 + i, cg, code=i % 3, signal=9 if i == 4 else 0,
                       exit_comm=b"renamed" if i == 5 else b"true", exit_tid=base + 900 if i == 6 else 0)
    second += life(1200, base + 200, unit, job_env=b"777")                # SLURM_JOB_ID names its job
    second += life(1210, base + 201, cg, argv=(TRUE, b"y"))
    left = life(1300, base + 300, cg) + [row(pb.KIND_FORK, 1301, base + 300, cg, child_tgid=base + 301,
                                             parent_tgid=base + 300)]       # forks: a parent of another
    left += life(1310, base + 302, cg) + [row(pb.KIND_CONNECT, 1311, base + 302, cg, family=2, dport=80,
                                              sock_type=2)]                 # connects in the drain
    left += life(1320, base + 303, cg, argv=(b"./w",), filename=b"./w")     # relative: the ordered loop names it
    left += life(1330, base + 304, cg, tty=3)                               # on a pty
    left += life(1340, base + 305, cg, exit_cg=unit)                        # exits in another cgroup
    left += [row(pb.KIND_FORK, 1350, PARENT, cg, child_tgid=base + 400, parent_tgid=PARENT),
             row(pb.KIND_EXEC, 1351, base + 400, cg, argc=1, args_len=3, args=b"sh\0", filename=b"/bin/sh",
                 ppid=PARENT)]                                               # lives on: a parent for the next
    left += life(1360, base + 401, cg, parent=base + 400)
    left += [row(pb.KIND_EXEC, 1370, base + 400, cg, argc=1, args_len=5, args=b"env\0", filename=b"/usr/bin/env",
                 ppid=PARENT)]                                              # ... and its parent execs after
    second += left
    second.sort(key=lambda r: r[1]["hdr_ts_ns"])
    hashed = {base + 201}       # its shape is its own: no other image learns the hash
    loop, columns = enricher(job_root, hashed), enricher(job_root, hashed)
    expected = ordered(loop, arena(first)) + ordered(loop, arena(second))
    got_first, lives_first = as_columns(columns, arena(first))
    got_second, lives = as_columns(columns, arena(second))
    assert lives_first == 0 and lives == 14                       # none before their shapes are known; then 14
    assert sorted(got_first + got_second) == sorted(expected)
    events = [pb.Event.FromString(d) for d in got_second]
    by_pid = {(ev.process.pid, ev.WhichOneof("body")): ev for ev in events}
    assert by_pid[(base + 104, "exit")].exit.signal == 9 and by_pid[(base + 102, "exit")].exit.code == 2
    assert by_pid[(base + 105, "exit")].process.comm == "renamed" and by_pid[(base + 106, "exit")].process.tid \
        == base + 900
    assert by_pid[(base + 201, "exit")].process.exe_sha256 and not by_pid[(base + 201, "exec")].process.exe_sha256
    assert by_pid[(base + 200, "exec")].job.id == "777" and by_pid[(base + 100, "exec")].job.id == "4242"
    assert by_pid[(base + 100, "exec")].process.ancestors and not by_pid[(base + 100, "exit")].process.ancestors
    pids = sorted({ev.process.pid for ev in events} | {base + 301})
    assert table_state(columns, pids) == table_state(loop, pids)


def test_too_few_lives_or_no_exits_leave_the_drain_whole(job_root):
    cg = os.stat(job_root / "slurm" / "uid_0" / "job_4242").st_ino
    e = enricher(job_root, set())
    teach = [r for i in range(LIVES_MIN) for r in life(10 * i + 1, 4_200_000 + i, cg)]
    ordered(e, arena(teach))
    few = [r for i in range(LIVES_MIN - 1) for r in life(1000 + 10 * i, 4_210_000 + i, cg)]
    lives, rest = ShortLives.split(arena(few), e, set())
    assert lives is None and len(rest) == len(few)
    running = [r for i in range(LIVES_MIN * 2) for r in life(2000 + 10 * i, 4_220_000 + i, cg)[:2]]
    lives, rest = ShortLives.split(arena(running), e, set())
    assert lives is None                                          # forks and execs, no exits: nothing ends here
    enough = [r for i in range(LIVES_MIN) for r in life(3000 + 10 * i, 4_230_000 + i, cg)]
    lives, rest = ShortLives.split(arena(enough), e, {4_230_000})
    assert lives is None                                          # one is the agent's own: one too few
    lives, rest = ShortLives.split(arena(enough), e, set())
    assert lives is not None and len(lives) == LIVES_MIN and len(rest) == 0

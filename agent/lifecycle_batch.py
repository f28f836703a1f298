"""A drain's short lives - a process forked, exec'd and gone within the drain - made into their exec and exit
events from the columns, without a decoded record, a header or a pass through the ordered event loop each.

A shell loop, a build or a job's launcher runs thousands of short programs a second; each is a fork, an exec and an
exit, and through the ordered loop (agent/enrich.py) each record costs a decoded object and its enrichment: most of
the agent's CPU on an exec mix (bench/agent_cpu.py). Here a life is found by joining the drain's fork, exec and exit
records on the child's pid, and its two events are assembled in one call of agent/wire.c from the pieces it shares
with its siblings (the exec's shape and body, the image's tail, the comm, the job, the parent's key and lineage:
each made once per drain, by the methods the ordered loop uses) and its own numbers (pid, start, threads, times,
exit status). Python's work per life is its entry in the process table.

Only lives nothing else in the drain can change or read: exactly one fork, exec and exit of the pid, in that order;
no other record of the process, nor one that forks from it or names it as a parent; its parent neither exec'd nor
exited nor did anything but fork in the drain (its lineage and job are what the child inherits); an exec whose
shape needs nothing of the process's own (an absolute path, a whole argv, no pty, no configuration file, script or
ssh configuration to read - the first exec of each shape goes through the ordered loop, which learns that); one
cgroup and user for the exec and the exit; and a job the cgroup, the kernel's SLURM_JOB_ID or the parent names
(not one read from /proc). The rest of the drain goes through the ordered loop, which gives the same events and
leaves the same process table (tests/test_lifecycle_batch.py runs both on the same arrays).
"""

from __future__ import annotations

import numpy as np

from agent import wire
from agent.batch import ArenaBatch, exec_shapes
from agent.decode import _cstr
from agent.encoded import EXEC_FIELD, EXIT_FIELD, EncodedRun, text_field
from agent.enrich import Enricher
from agent.events import DecodeStats, ExecEvent
from agent.jobs import Job
from agent.process_table import EXITED_KEEP, NS_PER_TICK, Process
from gpuguard.v1 import events_pb2 as pb
from gpuguard.vocab import JOB_HOST, JOB_SLURM, JOB_SYSTEMD

LIVES_MIN = 8                   # fewer short lives in a drain: the ordered loop is as cheap
LIFE_KINDS = (pb.KIND_FORK, pb.KIND_EXEC, pb.KIND_EXIT)
HOST_KINDS = (JOB_HOST, JOB_SYSTEMD)


def _rows_once(pids: list[int]) -> dict[int, int]:
    """pid -> its row, for the pids that occur in one row only."""
    rows: dict[int, int] = {}
    twice = set()
    for i, pid in enumerate(pids):
        if pid in rows:
            twice.add(pid)
        rows[pid] = i
    for pid in twice:
        del rows[pid]
    return rows


class Pieces:
    """Byte strings a drain's events share, each stored once: an index per distinct value."""

    def __init__(self) -> None:
        self.items: list[bytes] = []
        self._at: dict = {}

    def add(self, key, make) -> int:
        at = self._at.get(key)
        if at is None:
            at = self._at[key] = len(self.items)
            self.items.append(make())
        return at


class ShortLives:
    """The short lives of one drain (``split`` finds them) and their events (``events``, after the ordered loop has
    handled the rest of the drain)."""

    def __init__(self, enricher: Enricher, arrays: tuple[np.ndarray, np.ndarray, np.ndarray],
                 rows: tuple[np.ndarray, np.ndarray, np.ndarray], parents: list[int], shapes: list[ExecEvent],
                 jobs: list[Job]) -> None:
        self.enricher = enricher
        self.arrays, self.rows = arrays, rows      # the drain's fork, exec and exit records; each life's row in each
        self.parents, self.shapes, self.jobs = parents, shapes, jobs

    def __len__(self) -> int:
        return int(self.rows[1].size)

    def _column(self, which: int, name: str) -> np.ndarray:
        return self.arrays[which][name][self.rows[which]]

    @classmethod
    def split(cls, batch: ArenaBatch, enricher: Enricher, ignore_pids: set[int]) -> tuple[ShortLives | None,
                                                                                            ArenaBatch]:
        """(the drain's short lives or None, the rest of the drain for the ordered loop)."""
        arrays = batch.arrays
        forks, execs, exits = (arrays.get(k) for k in LIFE_KINDS)
        if forks is None or execs is None or exits is None or min(forks.size, execs.size, exits.size) < LIVES_MIN:
            return None, batch
        forker = forks["hdr_tgid"].tolist()
        parent = [p or f for p, f in zip(forks["parent_tgid"].tolist(), forker, strict=True)]
        fork_row = _rows_once(forks["child_tgid"].tolist())
        exec_pid, exit_pid = execs["hdr_tgid"].tolist(), exits["hdr_tgid"].tolist()
        exec_row, exit_row = _rows_once(exec_pid), _rows_once(exit_pid)
        exec_ppid = execs["ppid"].tolist()
        others = set()                                   # processes with records of other kinds in the drain
        for kind, arr in arrays.items():
            if kind not in LIFE_KINDS and arr.size:
                others.update(np.unique(arr["hdr_tgid"]).tolist())
        busy = others | set(forker) | set(parent) | set(exec_ppid) | ignore_pids   # it forks, is a parent, acts
        unsettled = others | set(exec_pid) | set(exit_pid) | set(fork_row)   # a parent whose state the drain changes
        fork_ts, exec_ts, exit_ts = (a["hdr_ts_ns"].tolist() for a in (forks, execs, exits))
        exec_who = list(zip(*(execs[k].tolist() for k in ("hdr_cgroup_id", "hdr_uid", "hdr_gid")), strict=True))
        exit_who = list(zip(*(exits[k].tolist() for k in ("hdr_cgroup_id", "hdr_uid", "hdr_gid")), strict=True))
        f, e, x = [], [], []
        for pid, er in exec_row.items():
            fr, xr = fork_row.get(pid), exit_row.get(pid)
            if fr is None or xr is None or pid in busy:
                continue
            p = parent[fr]
            if (fork_ts[fr] < exec_ts[er] < exit_ts[xr] and exec_ppid[er] in (0, p) and p not in unsettled
                    and exec_who[er] == exit_who[xr]):          # one cgroup and user for the exec and the exit
                f.append(fr)
                e.append(er)
                x.append(xr)
        if len(e) < LIVES_MIN:
            return None, batch
        shapes = exec_shapes(execs)
        job_of, table = enricher.jobs.job_of, enricher.table
        cgroups = [who[0] for who in exec_who]
        simple: dict[int, bool] = {}                     # per shape: nothing the ordered loop must read for it
        keep, jobs, kept_shapes, kept_parents = [], [], [], []
        for i, (fr, er) in enumerate(zip(f, e, strict=True)):
            like = shapes[er]
            plain = simple.get(id(like))
            if plain is None:
                shape = like.shape
                plain = simple[id(like)] = not (
                    shape.body is None or shape.ssh_client is not False or shape.config_paths or shape.script
                    or like.argv_truncated or like.tty >= 0 or like.exe_inode is None
                    or not like.filename.startswith("/"))   # else the ordered loop reads what it needs (and learns)
            if not plain:
                continue
            job = job_of(cgroups[er])
            p = parent[fr]
            if job.kind in HOST_KINDS:
                if like.slurm_job_env:
                    job = Job(JOB_SLURM, like.slurm_job_env)
                else:
                    known = table.live.get(p) or table.exited.get(p)
                    if known is None or known.job is None:
                        continue            # its job would be read from /proc
                    if known.job.kind not in HOST_KINDS:
                        job = known.job
            keep.append(i)
            jobs.append(job)
            kept_shapes.append(like)
            kept_parents.append(p)
        if len(keep) < LIVES_MIN:
            return None, batch
        rows = tuple(np.array([r[i] for i in keep], np.int64) for r in (f, e, x))
        lives = cls(enricher, (forks, execs, exits), rows, kept_parents, kept_shapes, jobs)
        if all(rows[i].size == a.size for i, a in enumerate((forks, execs, exits))) and not others:
            return lives, ArenaBatch({}, np.zeros(0, np.uint8), batch.malformed)     # the whole drain is lives
        drop = {}
        for kind, r in zip(LIFE_KINDS, rows, strict=True):
            mask = np.zeros(arrays[kind].size, bool)
            mask[r] = True
            drop[kind] = mask
        return lives, batch.without(drop)

    def batch_of_them(self) -> ArenaBatch:
        """The lives' records as a batch of their own (for the ordered loop, should ``events`` fail)."""
        order = np.repeat(np.array(LIFE_KINDS, np.uint8), len(self))
        records = [arr[rows] for arr, rows in zip(self.arrays, self.rows, strict=True)]
        return ArenaBatch(dict(zip(LIFE_KINDS, records, strict=True)), order)

    def events(self, stats: DecodeStats) -> list[EncodedRun]:
        """The lives' exec and exit events, in kernel time order, as one run; each life's process left in the
        table as the ordered loop leaves it (exited, with its lineage)."""
        enricher = self.enricher
        table = enricher.table
        live, exited, prefix = table.live, table.exited, table.boot_prefix
        n = len(self)
        fork_ts = self._column(0, "hdr_ts_ns")
        exec_ts, pids, tids, comms, cgroups, uids, gids = (self._column(1, name) for name in (
            "hdr_ts_ns", "hdr_tgid", "hdr_tid", "hdr_comm", "hdr_cgroup_id", "hdr_uid", "hdr_gid"))
        exit_ts, exit_tids, exit_comms, codes, signals = (self._column(2, name) for name in (
            "hdr_ts_ns", "hdr_tid", "hdr_comm", "code", "signal"))
        made = _Made(enricher)
        starts = (fork_ts // NS_PER_TICK).astype(np.int64)
        families: dict[tuple, tuple] = {}
        refs = []
        for pid, ppid, start, raw_comm, raw_xcomm, cgroup, uid, gid, like, job in zip(
                pids.tolist(), self.parents, starts.tolist(), comms.tolist(), exit_comms.tolist(), cgroups.tolist(),
                uids.tolist(), gids.tolist(), self.shapes, self.jobs, strict=True):
            family = (ppid, id(like), raw_comm, raw_xcomm, cgroup, uid, gid, job)     # siblings alike but for pid
            known = families.get(family)
            p = Process(pid, ppid, start, f"{prefix}:{pid}:{start}", known[2] if known else "", like.filename,
                        like.argv, uid, cgroup, job, exited=True, lineage=known[1] if known else None,
                        ancestry_sent=True, exe_inode=like.exe_inode, shape=like.shape)
            if known is None:
                known = made.family(p, like, raw_comm, raw_xcomm, (cgroup, uid, gid), job)
                if not known[3]:                 # the image's hash still to learn: each life looks, as each exec does
                    families[family] = known
            refs.append(known[0])
            live.pop(pid, None)
            exited[pid] = p
        while len(exited) > EXITED_KEEP:
            exited.popitem(last=False)
        if enricher.connected_out:
            for pid in pids.tolist():
                enricher.connected_out.pop(pid, None)
        offset = np.int64(enricher.clock.offset_ns)
        nums = np.column_stack([exec_ts.astype(np.int64) + offset, exit_ts.astype(np.int64) + offset, pids, starts,
                                tids, exit_tids, self.parents, codes, signals]).astype(np.int64)
        order = np.argsort(np.concatenate([exec_ts, exit_ts]), kind="stable").astype(np.uint64)
        data, ends = wire.encode_lives(order, nums, np.array(refs, np.uint32), made.key_prefix, made.boot,
                                       made.pieces.items)
        kinds = np.where(order < n, EXEC_FIELD, EXIT_FIELD).astype("<u4")
        job_index = {job_id: i for i, job_id in enumerate(dict.fromkeys(j.id for j in self.jobs))}
        jobs = np.array([job_index[j.id] for j in self.jobs], np.int64)
        life = (order % n).astype(np.int64)
        stats.decoded += 3 * n
        return [EncodedRun(data, ends, nums[life, 2], jobs[life], list(job_index), kinds)]


class _Made:
    """What a drain's lives share, made once: the pieces their events are assembled from (agent/wire.c) and, per
    family of siblings, which of them a life's events take."""

    def __init__(self, enricher: Enricher) -> None:
        self.enricher = enricher
        self.pieces = Pieces()
        self.key_prefix = self.pieces.add("key", f"{enricher.table.boot_prefix}:".encode)
        self.boot = self.pieces.add("boot", lambda: enricher._boot_field)
        self._comms: dict[bytes, tuple[str, int]] = {}
        self._lineages: dict[int, tuple] = {}

    def comm(self, raw: bytes) -> tuple[str, int]:
        made = self._comms.get(raw)
        if made is None:
            text = _cstr(raw)
            made = self._comms[raw] = (text, self.pieces.add(("comm", text), lambda: text_field(6, text)))
        return made

    def family(self, p: Process, like: ExecEvent, raw_comm: bytes, raw_xcomm: bytes, ident: tuple[int, int, int],
               job: Job) -> tuple[tuple, list, str, bool]:
        """(the life's piece indexes, its lineage, its comm, whether its image's hash is still to learn), as
        agent/enrich.py makes them for an exec and its exit: the lineage and key of the parent, the tail shared by
        the shape's images (its hash looked up at the exec and again at the exit), the comms, the job."""
        enricher, pieces, table = self.enricher, self.pieces, self.enricher.table
        comm, comm_at = self.comm(raw_comm)
        xcomm, xcomm_at = self.comm(raw_xcomm)
        if not xcomm:                               # an exit with no name is named by its exec (agent/enrich.py)
            xcomm_at = comm_at
        p.comm = comm
        lineage = self._lineages.get(p.ppid)
        if lineage is None:                         # siblings share their parent's lineage, its bytes and its key
            lineage = self._lineages[p.ppid] = (table.lineage(p), pieces.add(("ancestry", p.ppid),
                                                                             lambda: enricher._ancestry_bytes(p)),
                                                pieces.add(("parent", p.ppid),
                                                           lambda: text_field(2, table.parent_key(p))))
        p.lineage = lineage[0]
        tail = enricher._tail(p, ident)
        enricher.learn_hash(tail, p)
        tail_at = pieces.add(id(tail.serialized()), tail.serialized)
        enricher.learn_hash(tail, p)                # the exit looks again, as the ordered loop's does
        xtail_at = pieces.add(id(tail.serialized()), tail.serialized)
        pending = bool(enricher.hasher and p.exe and not tail.message.exe_sha256)
        refs = (lineage[2], comm_at, xcomm_at, tail_at, xtail_at, lineage[1],
                pieces.add(("job", job), lambda: enricher._job_field(job)),
                pieces.add(("body", id(like.shape)), lambda: like.shape.body))
        return refs, lineage[0], comm, pending

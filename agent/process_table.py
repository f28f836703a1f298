"""The host's process tree, kept from fork/exec/exit events and seeded from /proc.

Every event is tied to a Process with a key that survives pid reuse
(``boot:pid:start_ticks``) and to its ancestry up to PID 1.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from agent.jobs import Job
from agent.text import budget_argv, clean, clip

if TYPE_CHECKING:
    from agent.encoded import ImageRecord
    from agent.events import ExecShape

CLK_TCK = os.sysconf("SC_CLK_TCK")
NS_PER_TICK = 1_000_000_000 // CLK_TCK
MAX_DEPTH = 64
EXITED_KEEP = 4096   # exited processes kept for late events and trees
CMDLINE_READ_MAX = 64 << 10
ARGV_CHARS = 16 << 10        # a process's own argv in its records
ARG_CHARS = 4096             # one argument
ANCESTOR_ARGV_CHARS = 1024   # one ancestor's argv in a record's ancestry
LINEAGE_ARGV_CHARS = 8192    # all ancestors' argv together


@dataclass(slots=True)
class Process:
    pid: int
    ppid: int
    start_ticks: int
    key: str
    comm: str = ""
    exe: str = ""
    argv: list[str] = field(default_factory=list)
    uid: int = 0
    cgroup_id: int = 0
    job: Job | None = None
    exited: bool = False
    lineage: list[dict] | None = None   # cached ancestor summaries (snapshot at first use)
    kids_lineage: list[dict] | None = None   # the lineage each child of this image gets (made once per image)
    image: ImageRecord | None = None    # this image's Process parts shared by its events (agent/enrich.py)
    ancestry_sent: bool = False         # this image's ancestry already went out with a record
    connect_prefix: tuple | None = None  # the serialised process + job its connect events share (agent/enrich.py)
    summaries: dict | None = None       # argv budget -> (summary, its argv's size): made once per image
    exe_inode: tuple[int, int, int] | None = None   # (kernel dev, inode, ctime ns) of this image, from its exec
    shape: ExecShape | None = None      # the exec record's shape, shared with identical execs (agent/events.py)

    def summary(self, argv_budget: int = ANCESTOR_ARGV_CHARS) -> dict:
        """What an ancestor contributes to a record: bounded, whatever its command line was."""
        return self.summary_and_size(argv_budget)[0]

    def summary_and_size(self, argv_budget: int) -> tuple[dict, int]:
        """The summary and the characters its argv takes (NUL-separated). Made once per image and budget (a
        shell running a loop is the ancestor of every exec in it); callers do not change it."""
        cache = self.summaries if self.summaries is not None else {}
        made = cache.get(argv_budget)
        if made is None:
            argv = budget_argv(self.argv[:8], argv_budget, 256)[0] if argv_budget > 0 else []
            made = cache[argv_budget] = ({"pid": self.pid, "key": self.key, "comm": self.comm,
                                          "exe": clip(self.exe, 1024)[0], "argv": argv},
                                         sum(len(x) + 1 for x in argv))
            self.summaries = cache
        return made


def read_proc(pid: int, proc: Path = Path("/proc")) -> dict | None:
    """ppid, start time, comm, exe, argv, uid of a live process, or None when it is gone.

    Everything is read as bytes and cleaned (agent/text.py): a process chooses its
    own name and command line, and neither may stop the agent. The command line is
    read up to ``CMDLINE_READ_MAX`` bytes (the rest is flagged by the enricher's budget).
    """
    base = proc / str(pid)
    try:
        stat = (base / "stat").read_bytes()
    except OSError:
        return None
    try:
        comm = clean(stat[stat.index(b"(") + 1 : stat.rindex(b")")])
        fields = stat[stat.rindex(b")") + 2 :].split()
        info = {"ppid": int(fields[1]), "start_ticks": int(fields[19]), "comm": comm, "exe": "", "argv": [],
                "uid": 0}
    except (ValueError, IndexError):
        return None
    try:
        info["exe"] = clean(os.readlink(base / "exe"))
    except OSError:
        pass
    try:
        with open(base / "cmdline", "rb") as f:
            raw = f.read(CMDLINE_READ_MAX)
        info["argv"] = [clean(a) for a in raw.split(b"\0")[:-1]] or ([clean(raw)] if raw else [])
        info["uid"] = (base / "status").stat().st_uid
    except OSError:
        pass
    return info


class ProcessTable:
    def __init__(self, boot_id: str, proc: Path = Path("/proc")) -> None:
        self.boot_prefix = boot_id.replace("-", "")[:8]
        self.proc = proc
        self.live: dict[int, Process] = {}
        self.exited: OrderedDict[int, Process] = OrderedDict()

    def make_key(self, pid: int, start_ticks: int) -> str:
        return f"{self.boot_prefix}:{pid}:{start_ticks}"

    def _from_proc(self, pid: int) -> Process | None:
        info = read_proc(pid, self.proc)
        if info is None:
            return None
        argv = budget_argv(info["argv"], ARGV_CHARS, ARG_CHARS)[0]
        p = Process(pid, info["ppid"], info["start_ticks"], self.make_key(pid, info["start_ticks"]),
                    info["comm"], info["exe"], argv, info["uid"])
        self.live[pid] = p
        return p

    def seed(self) -> int:
        for entry in os.listdir(self.proc):
            if entry.isdigit():
                self._from_proc(int(entry))
        return len(self.live)

    def get(self, pid: int) -> Process | None:
        """A live process, else a recently exited one, else whatever /proc still shows."""
        return self.live.get(pid) or self.exited.get(pid) or self._from_proc(pid)

    def on_fork(self, parent_pid: int, child_pid: int, ts_boot_ns: int) -> Process:
        parent = self.get(parent_pid)
        start = ts_boot_ns // NS_PER_TICK
        child = Process(child_pid, parent_pid, start, self.make_key(child_pid, start))
        if parent:
            child.comm, child.exe, child.argv = parent.comm, parent.exe, parent.argv
            child.uid, child.cgroup_id, child.job = parent.uid, parent.cgroup_id, parent.job
        self.live[child_pid] = child
        return child

    def on_exec(self, pid: int, exe: str, argv: list[str], comm: str, ppid: int = 0,
                exe_inode: tuple[int, int, int] | None = None, shape: ExecShape | None = None) -> Process | None:
        p = self.get(pid)
        if p is None:
            return None
        p.exe, p.argv, p.comm, p.exe_inode, p.shape = exe, argv, comm, exe_inode, shape
        if ppid:
            p.ppid = ppid               # the kernel's real parent (re-parenting happens)
        p.lineage = None
        p.kids_lineage = None
        p.summaries = None
        p.image = None
        p.connect_prefix = None
        p.ancestry_sent = False
        return p

    def on_exit(self, pid: int) -> Process | None:
        p = self.live.pop(pid, None)
        if p is None:
            return None
        p.exited = True
        self.exited[pid] = p
        while len(self.exited) > EXITED_KEEP:
            self.exited.popitem(last=False)
        return p

    def ancestors(self, pid: int) -> list[Process]:
        """Parent, grandparent, ... up to PID 1 (bounded, cycle-safe)."""
        chain: list[Process] = []
        seen = {pid}
        p = self.get(pid)
        while p and p.ppid and p.ppid not in seen and len(chain) < MAX_DEPTH:
            seen.add(p.ppid)
            p = self.get(p.ppid)
            if p:
                chain.append(p)
        return chain

    def lineage(self, p: Process) -> list[dict]:
        """Ancestor summaries, computed once per process: events on a hot path reuse them. Siblings share one
        list (their parent's ``kids_lineage``): a shell's loop of thousands of execs walks its chain once."""
        if p.lineage is None:
            parent = self.get(p.ppid) if p.ppid and p.ppid != p.pid else None
            p.lineage = self._kids_lineage(parent) if parent is not None else []
        return p.lineage

    def _kids_lineage(self, parent: Process) -> list[dict]:
        if parent.kids_lineage is None:
            lineage, budget = [], LINEAGE_ARGV_CHARS
            for a in [parent, *self.ancestors(parent.pid)][:MAX_DEPTH]:
                item, size = a.summary_and_size(min(budget, ANCESTOR_ARGV_CHARS))
                budget -= size
                lineage.append(item)
            parent.kids_lineage = lineage
        return parent.kids_lineage

    def parent_key(self, p: Process) -> str:
        parent = self.get(p.ppid) if p.ppid else None
        return parent.key if parent else ""

"""sha256 of executables, computed off the event path and cached by (dev, inode, mtime).

The exec record carries the new image's (device, inode) from the kernel (probes/exec.c). A hash is read from a
file only if it is that inode: the path when it still names it (a plain stat: the usual case), else
``/proc/PID/exe`` (the image the kernel mapped, even when its name was unlinked or another file was moved over
it). A path can be swapped or deleted between the exec and the hash (run the miner, then move a harmless binary
over its name), and a process can exec again before its first exec is enriched; either way a hash read blindly
would name another file. So a hash is the executed file's or absent ("" - the file is gone), never another
file's. Without an inode (a process found at start, before any exec was seen) ``/proc/PID/exe`` is the image by
definition.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor

FileKey = tuple[int, int, int]        # (st_dev, st_ino, st_mtime_ns)
Inode = tuple[int, int]               # (device in the kernel's encoding, inode number): what the probes report


def kernel_dev(st_dev: int) -> int:
    """A stat() device number in the kernel's internal encoding (MAJOR << 20 | MINOR), as probes read s_dev."""
    return (os.major(st_dev) << 20) | os.minor(st_dev)


def _file_key(st: os.stat_result) -> FileKey:
    return (st.st_dev, st.st_ino, st.st_mtime_ns)


def _is(st: os.stat_result, inode: Inode | None) -> bool:
    return inode is None or (st.st_ino == inode[1] and kernel_dev(st.st_dev) == inode[0])


def sha256_file(path: str, chunk: int = 1 << 20, expect: FileKey | None = None) -> str:
    """The file's sha256, or "" unless it is a regular file (and, with ``expect``, that file). Opened without
    blocking: a path swapped for a FIFO after the check must not stall the hash worker for good."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (expect is not None and _file_key(st) != expect):
            return ""
        h = hashlib.sha256()
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def image_of(pid: int) -> str:
    """The path that opens a process's executable image, whatever became of its name."""
    return f"/proc/{pid}/exe"


class ExeHasher:
    """``lookup`` never blocks: a miss schedules a hash and returns "" this time."""

    def __init__(self, max_entries: int = 16384) -> None:
        self._cache: dict[FileKey, str] = {}
        self._inflight: set[FileKey] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="exe-hash")
        self.max_entries = max_entries

    @staticmethod
    def _source(path: str, pid: int, inode: Inode | None) -> tuple[FileKey, str] | None:
        """(cache key, a path that opens it) of the executed file, or None when none of its names is it now."""
        if inode is None:
            sources = (image_of(pid),) if pid else (path,)   # no inode to check a path against: the mapped image
        else:
            sources = (path, image_of(pid)) if pid else (path,)   # the path first: a plain stat, the usual case
        for source in sources:
            if not source:
                continue
            try:
                st = os.stat(source)
            except OSError:
                continue
            if _is(st, inode):
                return _file_key(st), source
        return None

    def _compute(self, key: FileKey, source: str) -> str:
        try:
            digest = sha256_file(source, expect=key)
        except OSError:
            digest = ""
        with self._lock:
            self._inflight.discard(key)
            if digest:
                if len(self._cache) >= self.max_entries:
                    self._cache.clear()
                self._cache[key] = digest
        return digest

    def lookup(self, path: str, pid: int = 0, inode: Inode | None = None) -> str:
        found = self._source(path, pid, inode)
        if found is None:
            return ""
        key, source = found
        with self._lock:
            digest = self._cache.get(key)
            if digest is not None:
                return digest
            if key in self._inflight:
                return ""
            self._inflight.add(key)
        self._pool.submit(self._compute, key, source)
        return ""

    def hash_now(self, path: str, pid: int = 0, inode: Inode | None = None) -> str:
        """Blocking variant for callers off the event path (enforcement): hashes once, caches it."""
        found = self._source(path, pid, inode)
        if found is None:
            return ""
        key, source = found
        with self._lock:
            digest = self._cache.get(key)
        return digest if digest is not None else self._compute(key, source)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

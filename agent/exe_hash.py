"""sha256 of executables, computed off the event path and cached by the content's identity.

The exec record carries the new image's (device, inode, ctime) from the kernel (probes/exec.c). ctime changes
with every write and no process can set it back (mtime it can: ``touch -d``), so (device, inode, ctime) names
one content of one file: an image hashed before is looked up with no system call on the event path, and a binary
rewritten in place, its mtime put back, is a new image that is hashed anew.

A hash is read from a file only if it is that inode: the path when it still names it (a plain stat: the usual
case), else ``/proc/PID/exe`` (the image the kernel mapped, even when its name was unlinked or another file was
moved over it - both change the inode's ctime, so the inode decides here, not the ctime). A path can be swapped
or deleted between the exec and the hash (run the miner, then move a harmless binary over its name), and a
process can exec again before its first exec is enriched; either way a hash read blindly would name another file.
So a hash is the executed file's or absent ("" - the file is gone), never another file's. Without an image (a
process found at start, before any exec was seen) ``/proc/PID/exe`` is the image by definition; on a kernel whose
inode layout gives no ctime, the image is checked by stat on the event path.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor

FileKey = tuple[int, int, int]        # (device in the kernel's encoding, inode, ctime ns): one content of one file
Image = tuple[int, int, int]          # the same, as the exec record names the image that ran (ctime 0: unknown)
MAX_INFLIGHT = 1024                   # images waiting for the hash worker; past it a lookup schedules nothing


def kernel_dev(st_dev: int) -> int:
    """A stat() device number in the kernel's internal encoding (MAJOR << 20 | MINOR), as probes read s_dev."""
    return (os.major(st_dev) << 20) | os.minor(st_dev)


def file_key(st: os.stat_result) -> FileKey:
    return kernel_dev(st.st_dev), st.st_ino, st.st_ctime_ns


def is_image(st: os.stat_result, image: Image | None) -> bool:
    """Whether a stat is the image's inode. stat's device is not always the superblock's (a btrfs subvolume's
    is its own): an equal inode and ctime then decide."""
    if image is None:
        return True
    return st.st_ino == image[1] and (kernel_dev(st.st_dev) == image[0] or st.st_ctime_ns == image[2] != 0)


def sha256_file(path: str, chunk: int = 1 << 20, expect: FileKey | None = None) -> str:
    """The file's sha256, or "" unless it is a regular file (and, with ``expect``, that file). Opened without
    blocking: a path swapped for a FIFO after the check must not stall the hash worker for good."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (expect is not None and file_key(st) != expect):
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
    def _source(path: str, pid: int, image: Image | None) -> tuple[FileKey, str] | None:
        """(the file's key by stat, a path that opens it) of the executed image, or None when none of its names
        is it now."""
        if image is None:
            sources = (image_of(pid),) if pid else (path,)   # nothing to check a path against: the mapped image
        else:
            sources = (path, image_of(pid)) if pid else (path,)   # the path first: a plain stat, the usual case
        for source in sources:
            if not source:
                continue
            try:
                st = os.stat(source)
            except OSError:
                continue
            if is_image(st, image):
                return file_key(st), source
        return None

    def _compute(self, key: FileKey, source: str, expect: FileKey) -> str:
        """Hash ``source`` if it is still ``expect`` (the stat that found it); cached as both keys."""
        try:
            digest = sha256_file(source, expect=expect)
        except OSError:
            digest = ""
        with self._lock:
            self._inflight.discard(key)
            if digest:
                if len(self._cache) >= self.max_entries:
                    self._cache.clear()
                self._cache[key] = self._cache[expect] = digest
        return digest

    def _find_and_compute(self, image: Image, path: str, pid: int) -> str:
        found = self._source(path, pid, image)
        if found is None:
            with self._lock:
                self._inflight.discard(image)
            return ""
        return self._compute(image, found[1], found[0])

    def _cached(self, key: FileKey) -> str | None:
        with self._lock:
            return self._cache.get(key)

    def _schedule(self, key: FileKey, fn, *args) -> str:
        """The cached digest of ``key``, else "" and (once, while under the bound) ``fn(*args)`` on the worker."""
        with self._lock:
            digest = self._cache.get(key)
            if digest is not None:
                return digest
            if key in self._inflight or len(self._inflight) >= MAX_INFLIGHT:
                return ""
            self._inflight.add(key)
        self._pool.submit(fn, *args)
        return ""

    def lookup(self, path: str, pid: int = 0, image: Image | None = None) -> str:
        if image is not None and image[2]:     # the kernel named the content: no system call on the event path
            return self._schedule(image, self._find_and_compute, image, path, pid)
        found = self._source(path, pid, image)
        if found is None:
            return ""
        key, source = found
        return self._schedule(key, self._compute, key, source, key)

    def hash_now(self, path: str, pid: int = 0, image: Image | None = None) -> str:
        """Blocking variant for callers off the event path (enforcement): hashes once, caches it."""
        if image is not None and image[2]:
            digest = self._cached(image)
            return digest if digest is not None else self._find_and_compute(image, path, pid)
        found = self._source(path, pid, image)
        if found is None:
            return ""
        key, source = found
        digest = self._cached(key)
        return digest if digest is not None else self._compute(key, source, key)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

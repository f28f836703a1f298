"""sha256 of executables, computed off the event path and cached by (dev, inode, mtime)."""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class ExeHasher:
    """``lookup`` never blocks: a miss schedules a hash and returns "" this time."""

    def __init__(self, max_entries: int = 16384) -> None:
        self._cache: dict[tuple[int, int, int], str] = {}
        self._inflight: set[tuple[int, int, int]] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="exe-hash")
        self.max_entries = max_entries

    def _compute(self, key: tuple[int, int, int], path: str) -> str:
        try:
            digest = sha256_file(path)
        except OSError:
            digest = ""
        with self._lock:
            self._inflight.discard(key)
            if digest:
                if len(self._cache) >= self.max_entries:
                    self._cache.clear()
                self._cache[key] = digest
        return digest

    @staticmethod
    def _key(path: str) -> tuple[int, int, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_mtime_ns)

    def lookup(self, path: str) -> str:
        key = self._key(path)
        if key is None:
            return ""
        with self._lock:
            digest = self._cache.get(key)
            if digest is not None:
                return digest
            if key in self._inflight:
                return ""
            self._inflight.add(key)
        self._pool.submit(self._compute, key, path)
        return ""

    def hash_now(self, path: str) -> str:
        """Blocking variant for callers off the event path (enforcement): hashes once, caches it."""
        key = self._key(path)
        if key is None:
            return ""
        with self._lock:
            digest = self._cache.get(key)
        return digest if digest is not None else self._compute(key, path)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

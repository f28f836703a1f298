"""Executable hashes name the file that ran, or nothing: never the file a path names later (agent/exe_hash.py).

Real processes and files, no BPF: the image the kernel would report in the exec record (device, inode, ctime) is
taken with stat() before the path is swapped, as the probe reads it at exec (tests/test_enforce_kernel.py checks
that the kernel's is stat's)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from agent.exe_hash import ExeHasher, kernel_dev, sha256_file


def inode_of(path) -> tuple[int, int, int]:
    st = os.stat(path)
    return kernel_dev(st.st_dev), st.st_ino, st.st_ctime_ns


@pytest.fixture
def running(tmp_path):
    """A copy of sleep running from tmp/x, its inode, its hash, and a different program to put in its place."""
    path = tmp_path / "x"
    shutil.copy("/bin/sleep", path)
    other = tmp_path / "other"
    shutil.copy("/bin/true", other)
    proc = subprocess.Popen([str(path), "30"])
    deadline = time.monotonic() + 30
    while os.readlink(f"/proc/{proc.pid}/exe") != str(path) and time.monotonic() < deadline:
        time.sleep(0.01)                      # until the exec has happened
    yield proc, str(path), inode_of(path), sha256_file(str(path)), str(other)
    proc.kill()
    proc.wait(5)


def test_a_path_swapped_after_exec_still_hashes_what_ran(running):
    proc, path, inode, ran, other = running
    os.replace(other, path)                   # a harmless binary moved over the name
    hasher = ExeHasher()
    try:
        assert sha256_file(path) != ran
        assert hasher.hash_now(path, 0, inode) == ""          # the path alone is another file now: no hash at all
        assert hasher.hash_now(path, proc.pid, inode) == ran
        assert hasher.hash_now(path, 0, inode) == ran         # the image's, known now: never the path's file
    finally:
        hasher.close()


def test_a_deleted_image_still_hashes(running):
    proc, path, inode, ran, _other = running
    os.unlink(path)
    hasher = ExeHasher()
    try:
        assert hasher.hash_now(path, proc.pid, inode) == ran
    finally:
        hasher.close()


def test_a_process_that_exec_d_again_is_not_hashed_as_its_new_image(running, tmp_path):
    proc, path, _inode, ran, other = running
    first = tmp_path / "first"
    shutil.copy("/bin/true", first)            # the image an earlier exec of this pid ran (still on disk)
    hasher = ExeHasher()
    try:
        assert hasher.hash_now(str(first), proc.pid, inode_of(first)) == sha256_file(str(first)) != ran
    finally:
        hasher.close()


def test_lookup_is_background_and_cached_by_the_image(running):
    proc, path, inode, ran, other = running
    hasher = ExeHasher()
    try:
        assert hasher.lookup(path, proc.pid, inode) in ("", ran)   # scheduled, never blocks
        deadline = time.monotonic() + 30
        while hasher.lookup(path, proc.pid, inode) != ran and time.monotonic() < deadline:
            time.sleep(0.01)
        os.replace(other, path)
        assert hasher.lookup(path, proc.pid, inode) == ran         # same image, whatever the path names now
    finally:
        hasher.close()


def test_a_fifo_in_place_of_the_file_neither_blocks_nor_hashes(tmp_path):
    """An observed process controls the path: swapped for a FIFO, opening it for reading would wait for a writer
    forever and stall every later hash. It is refused at once instead."""
    fifo = tmp_path / "x"
    os.mkfifo(fifo)
    assert sha256_file(str(fifo)) == ""
    assert sha256_file(str(fifo), expect=(0, 0, 0)) == ""
    plain = tmp_path / "plain"
    plain.write_bytes(b"abc")
    assert sha256_file(str(plain)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def rewrite_in_place(path, content: bytes) -> None:
    """New content in the same inode, its mtime put back (touch -d): what a stat-and-mtime key cannot see."""
    before = os.stat(path)
    with open(path, "r+b") as f:
        f.write(content)
        f.truncate()
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert after.st_ino == before.st_ino and after.st_mtime_ns == before.st_mtime_ns
    assert after.st_ctime_ns != before.st_ctime_ns          # the one time no process can set back


def test_a_binary_rewritten_in_place_with_its_mtime_put_back_is_hashed_anew(tmp_path):
    path = tmp_path / "tool"
    shutil.copy("/bin/true", path)
    first, was = inode_of(path), sha256_file(str(path))
    hasher = ExeHasher()
    try:
        assert hasher.hash_now(str(path), 0, first) == was
        assert hasher.hash_now(str(path)) == was                    # cached by the file's own key too
        rewrite_in_place(path, open("/bin/sleep", "rb").read())
        now = sha256_file(str(path))
        assert now != was
        assert hasher.hash_now(str(path), 0, inode_of(path)) == now   # the kernel's new image: hashed anew
        assert hasher.hash_now(str(path)) == now                       # a process found at start: the same
        assert hasher.lookup(str(path), 0, first) == was               # what ran before, as it was
    finally:
        hasher.close()


def test_a_known_image_is_looked_up_without_a_system_call(running, monkeypatch):
    """The event path's cost: an image hashed before is one dictionary lookup, whatever its path names."""
    proc, path, inode, ran, _other = running
    hasher = ExeHasher()
    try:
        assert hasher.hash_now(path, proc.pid, inode) == ran

        def no_stat(*_a, **_k):
            raise AssertionError("stat on the event path")

        monkeypatch.setattr(os, "stat", no_stat)
        assert hasher.lookup(path, proc.pid, inode) == ran
    finally:
        monkeypatch.undo()
        hasher.close()

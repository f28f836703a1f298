"""Executable hashes name the file that ran, or nothing: never the file a path names later (agent/exe_hash.py).

Real processes and files, no BPF: the inode the kernel would report in the exec record is taken with stat()
before the path is swapped, as the probe reads it at exec."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from agent.exe_hash import ExeHasher, kernel_dev, sha256_file


def inode_of(path) -> tuple[int, int]:
    st = os.stat(path)
    return kernel_dev(st.st_dev), st.st_ino


@pytest.fixture
def running(tmp_path):
    """A copy of sleep running from tmp/x, its inode, its hash, and a different program to put in its place."""
    path = tmp_path / "x"
    shutil.copy("/bin/sleep", path)
    other = tmp_path / "other"
    shutil.copy("/bin/true", other)
    proc = subprocess.Popen([str(path), "30"])
    deadline = time.monotonic() + 5
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
        assert hasher.hash_now(path, proc.pid, inode) == ran
        assert hasher.hash_now(path, 0, inode) == ""          # the path alone is another file now: no hash at all
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
        deadline = time.monotonic() + 5
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

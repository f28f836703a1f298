"""Which file a downloader exec writes, and an exec of it found again (collector/rules/downloads.py; pure logic)."""

from __future__ import annotations

from collections import OrderedDict

import pytest

from collector.rules.downloads import MAX_DOWNLOADS, REMEMBER_NS, download_targets, downloaded_program, remember

URL = "https://github.com/x/y/releases/download/v1/worker"


@pytest.mark.parametrize("argv, files", [
    (["curl", "-sLo", "w", URL], ["w"]),
    (["curl", "-o", "/home/u/bin/w", URL], ["/home/u/bin/w"]),
    (["curl", "--output=./w", URL], ["w"]),
    (["curl", "-fsSLO", URL], ["worker"]),                          # the URL's own name
    (["curl", "--output-dir", "/tmp/.k", "-O", URL], ["/tmp/.k/worker"]),
    (["/usr/bin/curl", "-s", URL], []),                            # to stdout: nothing written
    (["wget", "-q", URL], ["worker"]),                              # wget names the file itself
    (["wget", "-qO", "k", URL], ["k"]),
    (["wget", "-O-", URL], []),
    (["wget", "--output-document=/dev/null", URL], []),
    (["wget", "-P", "/home/u/.cache/k", URL], ["/home/u/.cache/k/worker"]),
    (["aria2c", "-d", "/scratch", "-o", "m", URL], ["/scratch/m"]),
    (["python3", "-o", "w", URL], []),                              # not a downloader
])
def test_the_file_a_downloader_writes(argv, files):
    assert download_targets(argv) == files


def test_an_exec_of_a_downloaded_file_is_found_by_its_path():
    downloads: OrderedDict = OrderedDict()
    remember(downloads, ["curl", "-sLo", "w", URL], 1_000)
    remember(downloads, ["wget", "-P", "/home/u/.cache", URL], 2_000)
    assert downloaded_program(downloads, "/home/u/run/w", "./w", 5_000)                 # relative to the job's dir
    assert downloaded_program(downloads, "/home/u/.cache/worker", "/home/u/.cache/worker", 5_000)
    assert downloaded_program(downloads, "/usr/bin/python3", "python3", 5_000) is None
    remember(downloads, ["curl", "-LO", "https://example.org/tools/python3"], 3_000)      # a file named as a program
    assert downloaded_program(downloads, "/usr/bin/python3", "python3", 5_000) is None    # is not the system's
    assert downloaded_program(downloads, "/home/u/run/w", "./w", 1_000 + REMEMBER_NS + 1) is None   # long ago


def test_the_memory_is_bounded():
    downloads: OrderedDict = OrderedDict()
    for i in range(MAX_DOWNLOADS + 10):
        remember(downloads, ["curl", "-o", f"f{i}", URL], i)
    assert len(downloads) == MAX_DOWNLOADS and "f0" not in downloads and f"f{MAX_DOWNLOADS + 9}" in downloads

"""Programs a job downloaded and then ran: the dropper's two steps, told apart by what they do, not by any name.

A job's downloader exec (curl, wget, aria2c, axel) says in its argv which file it writes: ``-o FILE``, ``-O`` (the
URL's own name), ``--output-document=FILE``, a directory prefix. The collector remembers those files per job
(``remember``, from the correlator's observe step, bounded) and an exec whose executable is one of them is that
download run (``downloaded_program``) - ``curl -sLo w URL && chmod +x w && ./w``, ``wget -P ~/.cache URL`` then
``~/.cache/w``, whatever the file, the directory or the program are called. Shell scripts run through an
interpreter (``bash Miniconda3.sh``) are not counted: installers arrive that way.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from urllib.parse import urlsplit

DOWNLOADERS = frozenset(("curl", "wget", "wget2", "aria2c", "axel"))
MAX_DOWNLOADS = 256                   # files remembered per job (the oldest forgotten first)
REMEMBER_NS = 6 * 3600 * 10**9         # how long a download stays "just downloaded"
NOT_FILES = frozenset(("-", "/dev/null", "/dev/stdout", "/dev/stderr"))
SYSTEM_DIRS = ("/usr/", "/bin/", "/sbin/", "/lib/", "/lib64/", "/opt/")   # a relative download is not found there
# options whose value is the file written, or the directory it is written to, by downloader
OUTPUT_FILE = {"curl": ("-o", "--output"), "wget": ("-O", "--output-document"), "wget2": ("-O", "--output-document"),
               "aria2c": ("-o", "--out"), "axel": ("-o", "--output")}
OUTPUT_DIR = {"curl": ("--output-dir",), "wget": ("-P", "--directory-prefix"), "wget2": ("-P", "--directory-prefix"),
              "aria2c": ("-d", "--dir"), "axel": ()}
REMOTE_NAME = {"curl": ("-O", "--remote-name", "--remote-name-all")}    # curl writes only when told; wget always


def _url_name(url: str) -> str:
    path = urlsplit(url).path
    return os.path.basename(path) or "index.html"


def _option_value(args: Sequence[str], i: int, names: tuple[str, ...]) -> tuple[str | None, int]:
    """(value, args consumed) when args[i] is one of ``names`` (``-o F``, ``-oF``, ``--output=F``, ``-sLo F``)."""
    arg = args[i]
    for name in names:
        if arg == name:
            return (args[i + 1] if i + 1 < len(args) else None), 2
        if name.startswith("--") and arg.startswith(name + "="):
            return arg[len(name) + 1:], 1
        if not name.startswith("--") and arg.startswith(name):
            return arg[len(name):], 1
        if not name.startswith("--") and len(name) == 2 and arg.startswith("-") and not arg.startswith("--") \
                and arg.endswith(name[1]) and len(arg) > 2:          # a cluster of flags ending in the option
            return (args[i + 1] if i + 1 < len(args) else None), 2
    return None, 0


def download_targets(argv: Sequence[str]) -> list[str]:
    """The files this downloader exec writes, as written in its argv (relative or absolute); [] for other programs
    or output to stdout."""
    if not argv:
        return []
    tool = os.path.basename(argv[0])
    if tool not in DOWNLOADERS:
        return []
    args = argv[1:]
    files: list[str] = []
    directory = ""
    remote_name = tool != "curl"
    urls = [a for a in args if "://" in a]
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in REMOTE_NAME.get(tool, ()) or (tool == "curl" and arg.startswith("-") and not arg.startswith("--")
                                                 and "O" in arg[1:] and "o" not in arg[1:]):
            remote_name = True
            i += 1
            continue
        value, used = _option_value(args, i, OUTPUT_FILE[tool])
        if used:
            if value:
                files.append(value)
            i += used
            continue
        value, used = _option_value(args, i, OUTPUT_DIR[tool])
        if used:
            directory = value or ""
            i += used
            continue
        i += 1
    if not files and remote_name:
        files = [_url_name(u) for u in urls]
    out = []
    for f in files:
        if f in NOT_FILES:
            continue
        path = os.path.join(directory, f) if directory and not f.startswith("/") else f
        out.append(os.path.normpath(path))
    return out


def remember(downloads: OrderedDict[str, tuple[int, str]], argv: Sequence[str], ts_ns: int) -> None:
    """Note the files a downloader exec writes (the job's memory, bounded: the oldest forgotten first). Called for
    every exec the collector stores: the argv is read where it is, not copied, and only a downloader's is looked at."""
    targets = download_targets(argv)
    if not targets:
        return
    what = " ".join(argv)[:160]
    for path in targets:
        downloads[path] = (ts_ns, what)
        downloads.move_to_end(path)
        while len(downloads) > MAX_DOWNLOADS:
            downloads.popitem(last=False)


def downloaded_program(downloads: OrderedDict[str, tuple[int, str]], exe: str, filename: str, ts_ns: int) -> str | None:
    """Evidence that this exec runs a file the job downloaded (matched by the executable's absolute path, or its
    tail for a download written relative to the job's directory), or None."""
    if not downloads or not exe:
        return None
    name = os.path.normpath(filename) if filename else ""
    for path, (when, what) in reversed(downloads.items()):
        if ts_ns - when > REMEMBER_NS:
            break
        if path.startswith("/") or path.startswith("~"):
            hit = exe == path or (path.startswith("~") and exe.endswith(path[1:]))
        else:                                # written in the job's directory, which is no system directory
            hit = (exe.endswith("/" + path) or name == path) and not exe.startswith(SYSTEM_DIRS)
        if hit:
            return f"{exe} was written by {what!r} {max(ts_ns - when, 0) / 1e9:.0f} s before"
    return None

"""What a program is told to do when argv does not say it: the configuration files argv names.

A miner started as ``./x -c config.json`` (or with no arguments at all: XMRig reads ``config.json`` beside
itself) and a tunnel client started as ``frpc -c frpc.toml`` carry their pool, wallet or server in a file, so
argv rules see nothing. At the exec the agent reads those files as the process sees them (through
``/proc/PID/cwd`` and ``/proc/PID/root``, so a container's paths are its own) and reports the lines that name an
endpoint, a pool, a wallet, an algorithm or a token (``Exec.config_lines``); rules match them with the
``config_regex`` key.

The process chooses these paths, so everything is bounded and read like hostile input: regular files only,
opened without blocking (a FIFO cannot stall the capture loop), at most ``MAX_FILES`` files of ``MAX_BYTES``
each, at most ``MAX_LINES`` lines of ``MAX_LINE`` characters, only files the process's own uid could read (the
agent reads as root: it must not become a way to read /etc/shadow's lines), reached without following a symlink
or a ".." (either would be resolved in the agent's view of the filesystem, not the process's: a container's
``config.json -> /etc/shadow`` would name the host's), each file read once per content (cached by device, inode
and ctime), and at most ``READS_PER_DRAIN`` reads per drain of the ring.
"""

from __future__ import annotations

import os
import re
import stat
from collections import OrderedDict

from agent.text import clean
from gpuguard.scripts import MAX_JOINED_LINE, logical_lines, script_name

MAX_FILES = 4
MAX_BYTES = 64 << 10
MAX_LINES = 32
MAX_LINE = 512
MAX_SCRIPT_LINES = 64           # a shell script's command lines (gpuguard/scripts.py): every one can matter
READS_PER_DRAIN = 16
CACHE_ENTRIES = 4096
CONFIG_FLAGS = ("-c", "--config", "--config-file", "-config", "--cfg", "--conf", "-conf")
CONFIG_SUFFIXES = (".json", ".toml", ".yaml", ".yml", ".ini", ".conf", ".cfg", ".config")
DEFAULT_CONFIG = "config.json"        # XMRig and its forks read it beside the binary when given no arguments
# argv[1] "-c" of a shell or an interpreter is code, not a file (python3 -c '...', sh -c '...')
INTERPRETER = re.compile(r"((ba|da|z|k|c|tc|fi|a|r)?sh|python[\d.]*|pypy[\d.]*|perl[\d.]*|ruby[\d.]*|node|php[\d.]*|"
                         r"lua[\d.]*|luajit|tclsh[\d.]*|Rscript|julia|busybox)")
SYSTEM_DIRS = ("/usr/", "/bin/", "/sbin/", "/lib", "/snap/", "/nix/store/")   # no default config looked for there
# A line worth reporting: an endpoint (scheme://, host:port), or a key that names a pool, a wallet, a user, an
# algorithm, a server or a secret, or an INI section's ``type =`` (what an rclone remote is). Rules decide what it
# means; this only keeps the rest of the file out.
TELLING = re.compile(
    r"[a-z0-9+.-]{2,20}://|[\w.-]+:\d{2,5}\b|(?i:\b(pool|url|wallet|user|login|pass|algo|algorithm|coin|donate|"
    r"rig|worker|server|remote|addr|address|host|port|token|authtoken|vkey|secret|tunnel|credentials)[\w-]*[\"']?"
    r"\s*[:=]|^\s*type\s*=)")


def candidate_paths(argv: list[str], exe: str) -> list[str]:
    """The files argv names as configuration, in argv order (at most MAX_FILES)."""
    paths: list[str] = []
    for i, arg in enumerate(argv[1:], start=1):
        if len(paths) >= MAX_FILES:
            break
        flag, eq, value = arg.partition("=")
        if eq and flag in CONFIG_FLAGS and value:
            paths.append(value)
        elif arg in CONFIG_FLAGS and i + 1 < len(argv):
            if not (i == 1 and arg == "-c" and INTERPRETER.fullmatch(os.path.basename(argv[0]))):
                paths.append(argv[i + 1])
        elif not arg.startswith("-") and arg.lower().endswith(CONFIG_SUFFIXES):
            paths.append(arg)
    default = default_config(argv, exe)
    if default:
        paths.append(default)
    return list(dict.fromkeys(paths))[:MAX_FILES]


def default_config(argv: list[str], exe: str) -> str | None:
    """config.json beside a program run with no arguments (``./x``; ``python3 x.py`` for a script), unless the
    program lives in the system's directories."""
    if len(argv) <= 1:
        program = exe or (argv[0] if argv else "")
    elif len(argv) == 2 and INTERPRETER.fullmatch(os.path.basename(argv[0])) and not argv[1].startswith("-"):
        program = argv[1]
    else:
        return None
    if not program or program.startswith(SYSTEM_DIRS):
        return None
    return os.path.join(os.path.dirname(program) or ".", DEFAULT_CONFIG)


def open_beneath(base: str, path: str) -> int:
    """A descriptor of ``path`` under ``base`` (the process's root or working directory), reached one component at
    a time without following a symlink or climbing out by ".."; OSError otherwise."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise OSError(f"not a path beneath the process's view: {path[:80]!r}")
    fd = os.open(base, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            inner = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = inner
        return os.open(parts[-1], os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_NOFOLLOW | os.O_CLOEXEC,
                       dir_fd=fd)
    finally:
        os.close(fd)


def readable_by(st: os.stat_result, uid: int, gid: int) -> bool:
    """Whether a process of that uid/gid could read the file (no capabilities assumed: root reads anything)."""
    if uid == 0:
        return True
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IRUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IRGRP)
    return bool(st.st_mode & stat.S_IROTH)


def telling_lines(name: str, data: bytes) -> list[str]:
    """``name:line: text`` for each telling line; a long line (minified JSON) is looked at piece by piece."""
    out = []
    for number, raw in enumerate(data.splitlines(), start=1):
        line = clean(raw).replace("\x00", "\\x00").strip()    # a NUL is no store's text
        for part in (line,) if len(line) <= MAX_LINE else line.split(","):
            piece = part.strip()
            if piece and TELLING.search(piece):
                out.append(f"{name}:{number}: {piece[:MAX_LINE]}")
                if len(out) >= MAX_LINES:
                    return out
    return out


# lines of a shell script that run nothing: blank, comments, the words that close or open a block, set options
INERT_SCRIPT_LINE = re.compile(r"(#.*|(then|else|fi|do|done|esac|;;|[{}()]|set\s+[-+][a-zA-Z]+|set\s+[-+]o\s+\w+|:)"
                               r"\s*;?\s*)?")


def script_lines(name: str, data: bytes) -> list[str]:
    """``name:line: text`` for each of a shell script's command lines, as the shell reads them (gpuguard/scripts.py
    logical_lines: continuations joined, comments cut off), at most MAX_SCRIPT_LINES; a last line says how many more
    there were."""
    out: list[str] = []
    more = 0
    physical = (clean(raw).replace("\x00", "\\x00") for raw in data.splitlines())
    for number, line in logical_lines(physical):
        if INERT_SCRIPT_LINE.fullmatch(line):
            continue
        if len(out) < MAX_SCRIPT_LINES:
            out.append(f"{name}:{number}: {line[:MAX_JOINED_LINE]}")
        else:
            more += 1
    if more:
        out.append(f"{name}: {more} more command lines not read")
    return out


class ConfigPeek:
    """Reads the configuration files an exec names; bounded per drain and cached per file content."""

    def __init__(self, proc: str = "/proc") -> None:
        self.proc = proc
        self._cache: OrderedDict[tuple[int, int, int, bool], list[str]] = OrderedDict()
        self.budget = READS_PER_DRAIN
        self.skipped = 0            # files not read because the drain's budget was spent (a flood of them)

    def new_drain(self) -> None:
        self.budget = READS_PER_DRAIN

    def lines(self, pid: int, uid: int, gid: int, argv: list[str], exe: str) -> list[str]:
        return self.lines_from(candidate_paths(argv, exe), pid, uid, gid)

    def lines_from(self, paths: list[str], pid: int, uid: int, gid: int) -> list[str]:
        """The telling lines of these files, as the process would open them (``candidate_paths`` of its argv)."""
        out: list[str] = []
        for path in paths:
            out.extend(self._file(pid, uid, gid, path))
            if len(out) >= MAX_LINES:
                break
        return out[:MAX_LINES]

    def script(self, path: str, pid: int, uid: int, gid: int) -> list[str]:
        """The command lines of the shell script this process runs (gpuguard/scripts.py script_of), read as it
        would open it, under the same bounds as a configuration file. Scripts the system's packages installed
        (``/usr/bin/which`` is one) are not read: every host runs them, and a job cannot write there."""
        if path.startswith(SYSTEM_DIRS):
            return []
        return self._file(pid, uid, gid, path, script=True)

    def _file(self, pid: int, uid: int, gid: int, path: str, script: bool = False) -> list[str]:
        base = f"{self.proc}/{pid}/root" if path.startswith("/") else f"{self.proc}/{pid}/cwd"
        try:
            fd = open_beneath(base, path)
        except OSError:
            return []
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or not readable_by(st, uid, gid):
                return []
            key = (st.st_dev, st.st_ino, st.st_ctime_ns, script)
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
            if self.budget <= 0:
                self.skipped += 1
                return []
            self.budget -= 1
            data = os.read(fd, MAX_BYTES)
            found = (script_lines if script else telling_lines)(script_name(path), data)
        except OSError:
            return []
        finally:
            os.close(fd)
        self._cache[key] = found
        if len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return found

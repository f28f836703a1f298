"""Tunnel options that are not in argv: the ssh configuration that applies to an ssh exec.

``ssh -F FILE host``, ``~/.ssh/config`` (and its ``Include``s) and ``/etc/ssh/ssh_config`` can set
``RemoteForward``, ``DynamicForward``, ``Tunnel`` or ``PermitLocalCommand`` while argv looks clean.
At an ssh exec the agent reads what ssh itself would read, as that user (home from the uid), for the
destination in argv, and reports every forward it finds with the file and line that set it. The same
forward rules then apply as for argv (built-in rule ``ssh-config-forward``).

Bounded on purpose (an observed user writes these files): at most ``MAX_FILES`` files of ``MAX_BYTES``,
``MAX_DEPTH`` levels of Include. ``Match`` blocks are taken as applying (their conditions can depend on
things the agent cannot evaluate: counting them is the safe side for a detector).
"""

from __future__ import annotations

import fnmatch
import glob
import os
import pwd
import shlex
from pathlib import Path

MAX_FILES = 32
MAX_BYTES = 256 << 10
MAX_DEPTH = 16
FORWARD_KEYWORDS = {"remoteforward", "dynamicforward"}
# ssh options that take an argument (from ssh(1)); every other letter is a flag
ARG_OPTIONS = set("BbcDEeFIiJLlmOopPQRSWw")


def parse_argv(argv: list[str]) -> tuple[str, str, list[str]]:
    """(config file given with -F or "", destination host or "", -o options) from an ssh argv."""
    config, host, options = "", "", []
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest = argv[i + 1:]
            host = rest[0] if rest else ""
            break
        if arg.startswith("-") and len(arg) > 1:
            j = 1
            while j < len(arg):
                letter = arg[j]
                if letter in ARG_OPTIONS:
                    value = arg[j + 1:] or (argv[i + 1] if i + 1 < len(argv) else "")
                    if not arg[j + 1:]:
                        i += 1
                    if letter == "F":
                        config = value
                    elif letter == "o":
                        options.append(value)
                    break
                j += 1
            i += 1
            continue
        host = arg
        break
    if "@" in host:
        host = host.rsplit("@", 1)[1]
    return config, host, options


def host_matches(patterns: list[str], host: str) -> bool:
    """ssh's Host matching: any positive pattern matches and no negated one does."""
    matched = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if fnmatch.fnmatchcase(host, pattern[1:] if negated else pattern):
            if negated:
                return False
            matched = True
    return matched


class ConfigReader:
    def __init__(self, home: str, root: Path = Path("/")) -> None:
        self.home = home
        self.root = root                     # tests read a private tree
        self.files_read = 0

    def _path(self, name: str, base: str) -> str:
        name = self.home + name[1:] if name.startswith("~") else name
        return name if os.path.isabs(name) else os.path.join(base, name)

    def forwards(self, path: str, host: str, base: str, depth: int = 0) -> list[str]:
        """Forward settings that apply to host in path (and what it includes), as 'Keyword value (file:line)'."""
        if depth > MAX_DEPTH or self.files_read >= MAX_FILES:
            return []
        try:
            with open(self.root / path.lstrip("/"), "rb") as f:
                text = f.read(MAX_BYTES).decode("utf-8", "backslashreplace")
        except OSError:
            return []
        self.files_read += 1
        found: list[str] = []
        applies = True                       # before the first Host/Match line
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            keyword, _, value = line.replace("=", " ", 1).partition(" ")
            keyword, value = keyword.lower(), value.strip()
            if keyword == "host":
                applies = host_matches(value.split(), host)
            elif keyword == "match":
                applies = True               # conditions the agent cannot evaluate: counted (safe side)
            elif not applies:
                continue
            elif keyword == "include":
                for item in shlex.split(value):
                    pattern = self._path(item, base)
                    for inc in sorted(glob.glob(str(self.root / pattern.lstrip("/"))))[:MAX_FILES]:
                        rel = "/" + os.path.relpath(inc, self.root)
                        found += self.forwards(rel, host, base, depth + 1)
            elif setting := forward_setting(keyword, value):
                found.append(f"{setting} ({path}:{lineno})")
        return found


def forward_setting(keyword: str, value: str) -> str:
    """A setting that forwards (or runs commands on connect), spelled as ssh_config does; else ""."""
    if keyword in FORWARD_KEYWORDS:
        return f"{'RemoteForward' if keyword == 'remoteforward' else 'DynamicForward'} {value}"
    if keyword == "tunnel" and value.lower() not in ("no", ""):
        return f"Tunnel {value}"
    if keyword == "permitlocalcommand" and value.lower() == "yes":
        return "PermitLocalCommand yes"
    return ""


def ssh_forwards(argv: list[str], uid: int, cwd: str = "/", root: Path = Path("/")) -> list[str]:
    """Every forward the configuration that applies to this ssh invocation sets (argv -o options included)."""
    config, host, options = parse_argv(argv)
    found = []
    for opt in options:
        keyword, _, value = opt.replace("=", " ", 1).partition(" ")
        if setting := forward_setting(keyword.lower(), value.strip()):
            found.append(f"{setting} (-o)")
    try:
        home = pwd.getpwuid(uid).pw_dir
    except KeyError:
        home = "/root" if uid == 0 else "/nonexistent"
    reader = ConfigReader(home, root)
    if config:                               # -F: ssh reads this file only
        path = config if os.path.isabs(config) else os.path.join(cwd, config)
        return found + reader.forwards(path, host, os.path.join(home, ".ssh"))
    found += reader.forwards(os.path.join(home, ".ssh", "config"), host, os.path.join(home, ".ssh"))
    return found + reader.forwards("/etc/ssh/ssh_config", host, "/etc/ssh")

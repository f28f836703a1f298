"""The shell script an exec runs, shared by the agent (which reads its lines at the exec) and the collector (whose
argv rules read those lines as they read ``sh -c LINE``).

``bash run.sh`` puts nothing of what run.sh does in any argv: its builtins (``exec 3<>/dev/tcp/...``, ``echo ... >
/etc/cron.d/x``), its pipes (``curl ... | sh``) and its redirections never reach an exec record of their own; only
the external programs do, each alone. A script run through its ``#!`` reaches the kernel the same way
(``/bin/sh ./run.sh``). The agent reads the script's command lines (bounded: agent/config_peek.py) into
``Exec.config_lines`` as ``NAME:LINE: text``; the collector judges each line as ``sh -c LINE``
(collector/rules/context.py), so every argv rule judges a script's lines as it judges the same lines typed.

A line is what the shell reads as one (``logical_lines``): a backslash at a line's end joins the next to it, as the
shell does, so a command spread over lines (``curl -s URL \\`` then ``| sh``, or a word cut in two) is judged whole;
a comment is no command, so it is cut off before the rules read the line (a brace list or a URL in a comment is
not a disguise or a download). Here-document bodies are left as written: they are data for the command that reads
them, which the collector puts back together (collector/rules/context.py with_here_documents).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator

SHELLS = frozenset(("sh", "bash", "dash", "zsh", "ksh", "ash", "mksh", "yash", "rbash"))
MULTI_CALL = frozenset(("busybox", "toybox"))
OPTIONS_WITH_VALUE = frozenset(("-o", "+o", "-O", "+O", "--rcfile", "--init-file"))
NOT_A_SCRIPT_LETTERS = frozenset("cs")      # -c: the code is the next argument; -s: commands from stdin


def script_of(argv: list[str]) -> str | None:
    """The script file a shell was started with (``bash -eu run.sh a b``, ``busybox sh x``, ``/bin/sh ./x.sh``
    from a #!), or None: code given inline (``-c``), read from stdin (``-s``) or no shell at all."""
    if not argv:
        return None
    name = os.path.basename(argv[0]).lstrip("-")
    args = argv[1:]
    if name in MULTI_CALL and args:
        name, args = os.path.basename(args[0]), args[1:]
    if name not in SHELLS:
        return None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return args[i + 1] if i + 1 < len(args) and args[i + 1] else None
        if arg in OPTIONS_WITH_VALUE:
            i += 2
            continue
        if arg[:1] in "-+" and len(arg) > 1:
            if not arg.startswith("--") and NOT_A_SCRIPT_LETTERS & set(arg[1:]):
                return None
            i += 1
            continue
        return arg or None
    return None


def script_name(path: str) -> str:
    """The name a file's lines carry in Exec.config_lines (``NAME:LINE: text``), a script's or a configuration
    file's: the collector tells a script's lines by it."""
    return os.path.basename(path)[:64]


MAX_JOINED_LINE = 2048       # a line joined from continuations grows no longer: the rest starts a line of its own
COMMENT_STARTS_AFTER = frozenset(" \t;&|()")
HERE_DOCUMENT = re.compile(r"(?<!<)<<-?\s*(['\"]?)(\w{1,32})\1")       # <<EOF, <<-'PY'; not a here-string (<<<)


def without_comment(line: str) -> str:
    """The line up to its comment: a ``#`` starting a word outside quotes (``$#``, ``${#a}``, ``a#b``, ``'#'`` and
    ``"#"`` are no comments). A quote left open (a string that goes on over lines) leaves the line as it is."""
    quote = ""
    escaped = False
    for i, ch in enumerate(line):
        if escaped:
            escaped = False
        elif ch == "\\" and quote != "'":
            escaped = True
        elif quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in COMMENT_STARTS_AFTER):
            return line[:i].rstrip()
    return line


def _continues(line: str) -> bool:
    """Whether the line ends in a backslash that is not itself escaped (the shell then reads on)."""
    return (len(line) - len(line.rstrip("\\"))) % 2 == 1


def logical_lines(physical: Iterable[str]) -> Iterator[tuple[int, str]]:
    """(number of its first line, text) for each line as the shell reads it: continuations joined (up to
    MAX_JOINED_LINE), comments cut off, here-document bodies and their terminators passed through as written."""
    lines = list(physical)
    i = 0
    here_end = ""
    while i < len(lines):
        number, line = i + 1, lines[i]
        i += 1
        if here_end:
            if line.strip() == here_end:
                here_end = ""
            yield number, line.strip()
            continue
        while _continues(line) and i < len(lines) and len(line) + len(lines[i]) <= MAX_JOINED_LINE:
            line = line[:-1] + lines[i]
            i += 1
        line = without_comment(line.strip())
        found = HERE_DOCUMENT.search(line)
        if found:
            here_end = found.group(2)
        yield number, line

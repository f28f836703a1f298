"""The shell script an exec runs, shared by the agent (which reads its lines at the exec) and the collector (whose
argv rules read those lines as they read ``sh -c LINE``).

``bash run.sh`` puts nothing of what run.sh does in any argv: its builtins (``exec 3<>/dev/tcp/...``, ``echo ... >
/etc/cron.d/x``), its pipes (``curl ... | sh``) and its redirections never reach an exec record of their own; only
the external programs do, each alone. A script run through its ``#!`` reaches the kernel the same way
(``/bin/sh ./run.sh``). The agent reads the script's command lines (bounded: agent/config_peek.py) into
``Exec.config_lines`` as ``NAME:LINE: text``; the collector judges each line as ``sh -c LINE``
(collector/rules/context.py), so every argv rule judges a script's lines as it judges the same lines typed.
"""

from __future__ import annotations

import os

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

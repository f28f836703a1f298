"""Directories that hold what other local users must not read: the event store (every job's argv, tokens other
processes had on their command lines), identities, the agent's spool and state. gpuguard makes them 0700 and its
files 0600 (the services run with umask 077); an operator may have widened one since: say so at start, once."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def check_private(path: str | Path, what: str) -> str:
    """The warning logged when path (a directory, or a file's directory) is open to other users; "" if not."""
    target = Path(path)
    if not target.is_dir():
        target = target.parent
    try:
        mode = target.stat().st_mode & 0o777
    except OSError:
        return ""
    if not mode & 0o077:
        return ""
    message = (f"{what} {target} is mode {mode:04o}: other local users can read it; gpuguard keeps it 0700 "
               f"(chmod 700 {target})")
    log.warning(message)
    return message

"""This host's identity as both sides name it: /etc/machine-id, else the hostname."""

from __future__ import annotations

import socket
from pathlib import Path


def read_first(path: str, default: str = "") -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return default


def local_host_id() -> str:
    return read_first("/etc/machine-id") or socket.gethostname()

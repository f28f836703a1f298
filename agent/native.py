"""The agent's small plain-C libraries (no Python.h): found prebuilt by setup, else built now with ``cc`` into a
private directory, loaded with ctypes; None when neither works (callers then use their pure-Python path)."""

from __future__ import annotations

import ctypes
import logging
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

_LOADED: dict[str, ctypes.CDLL | None] = {}


def build(source: Path, out: Path) -> None:
    """cc -O2 -shared -fPIC: what setup does, also used when no prebuilt library is there."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise FileNotFoundError("no C compiler (cc)")
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(out), str(source)], check=True, capture_output=True,
                   timeout=60)


def load(source: Path, declare: Callable[[ctypes.CDLL], None], without: str) -> ctypes.CDLL | None:
    """``source``'s library (``_<stem>.so`` beside it, made by setup, when not older than the source; else built
    now), with its functions declared; None, logged with ``without`` (what the agent does instead), if neither
    can be had. Loaded once per process."""
    key = str(source)
    if key in _LOADED:
        return _LOADED[key]
    prebuilt = source.with_name(f"_{source.stem}.so")
    candidates = [prebuilt] if prebuilt.exists() and prebuilt.stat().st_mtime >= source.stat().st_mtime else []
    if not candidates:
        try:
            out = Path(tempfile.mkdtemp(prefix=f"gpuguard-{source.stem}-")) / prebuilt.name
            build(source, out)
            candidates.append(out)
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("no %s (%s): %s", prebuilt.name, exc, without)
    lib = None
    for path in candidates:
        try:
            lib = ctypes.CDLL(str(path))
            declare(lib)
            break
        except (OSError, AttributeError) as exc:
            log.warning("cannot load %s: %s", path, exc)
            lib = None
    _LOADED[key] = lib
    return lib

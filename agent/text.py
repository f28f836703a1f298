"""The one place where bytes from the kernel or /proc become text for records and the wire.

Process names, paths, argv and cgroup names are whatever an observed process
chose: any bytes. ``clean`` never raises and always returns valid UTF-8 text:
valid UTF-8 passes unchanged; each byte that is not valid UTF-8 becomes
``\\xNN`` (Python's ``backslashreplace``), and ``unclean`` turns those back into
the original bytes. (A name that itself contains the four characters ``\\xNN``
with NN >= 80 reads back as that byte: the one ambiguity, shown the same way.)
Strings that already went through the OS's ``surrogateescape`` decoding
(os.readlink, os.walk) are handled the same way.
"""

from __future__ import annotations

import re

_ESCAPED = re.compile(r"\\x([89a-f][0-9a-f])")


def clean(value: bytes | str) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        try:
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:     # lone surrogates that no OS call produced
            return value.encode("utf-8", "backslashreplace").decode("ascii")


def unclean(text: str) -> bytes:
    """The bytes ``clean`` was given (for tests and forensic export)."""
    out = bytearray()
    pos = 0
    for m in _ESCAPED.finditer(text):
        out += text[pos:m.start()].encode()
        out.append(int(m.group(1), 16))
        pos = m.end()
    out += text[pos:].encode()
    return bytes(out)


def clip(text: str, limit: int) -> tuple[str, bool]:
    """At most ``limit`` characters; True when something was cut."""
    return (text, False) if len(text) <= limit else (text[:limit], True)


def budget_argv(argv: list[str], max_total: int, max_arg: int) -> tuple[list[str], bool]:
    """argv cut to ``max_arg`` characters per argument and ``max_total`` in all; True when cut."""
    out: list[str] = []
    used = 0
    cut = False
    for arg in argv:
        if used >= max_total:
            return out, True
        piece, clipped = clip(arg, min(max_arg, max_total - used))
        cut |= clipped
        out.append(piece)
        used += len(piece) + 1
    return out, cut

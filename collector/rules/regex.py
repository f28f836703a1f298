"""Rule regexes run on RE2: linear time whatever the input, so no argv can stall detection.

Patterns RE2 cannot run (backreferences, lookaround) are refused when the rule
file is loaded, with the reason. Matched text is also capped (``MAX_TEXT``).
"""

from __future__ import annotations

import functools

import re2

MAX_TEXT = 1 << 20       # characters of argv/path a regex looks at (RE2 is linear: bounded for memory)
MAX_PATTERN = 4096
MAX_COMPILED = 8192      # distinct patterns kept compiled (rule files' regexes, and lists made into one)

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False      # errors come back as exceptions, not as lines on stderr


class RegexError(ValueError):
    pass


@functools.lru_cache(maxsize=MAX_COMPILED)
def _compiled(pattern: str):
    """Compiled once per process: each engine (a rule reload, a test) compiles the same few hundred patterns, more
    than the 128 that re2's own cache keeps - past that every engine compiled them all again (~0.2 s)."""
    return re2.compile(pattern, _OPTIONS)


def compile_regex(pattern: str):
    if not isinstance(pattern, str):
        raise RegexError(f"must be a string, got {type(pattern).__name__}")
    if len(pattern) > MAX_PATTERN:
        raise RegexError(f"pattern of {len(pattern)} characters exceeds {MAX_PATTERN}")
    try:
        return _compiled(pattern)
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise RegexError(f"RE2 cannot run this pattern ({reason}); backreferences and lookaround are not "
                         "supported") from exc


def search(rx, text: str):
    return rx.search(text if len(text) <= MAX_TEXT else text[:MAX_TEXT])

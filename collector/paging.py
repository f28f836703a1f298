"""Answers bounded by bytes as well as rows: a reply stops at its byte budget and says where to continue.

Rows are read from the store a chunk at a time, so neither the collector nor the client ever holds more than one
reply's worth (a job of 5,000 execs with 16 KiB command lines is 80 MB: it comes in pages, never as one message).
Every event list pages in one order, (ts_ns, host_id, seq); the cursor is the last row sent.
"""

from __future__ import annotations

from collections.abc import Callable

from collector.store.base import StoredRow, decode_cursor, encode_cursor

DEFAULT_REPLY_BYTES = 3 << 20     # under gRPC clients' default 4 MiB receive limit
MAX_REPLY_BYTES = 12 << 20        # the server refuses messages over 16 MiB
CHUNK_ROWS = 256                  # rows read from the store at a time
ROW_OVERHEAD = 16                 # StoredEvent framing and the host id's length prefix, roughly


class BadCursor(ValueError):
    """A cursor that no reply of this collector made."""


def reply_budget(requested: int) -> int:
    return min(requested or DEFAULT_REPLY_BYTES, MAX_REPLY_BYTES)


def row_key(row: StoredRow) -> tuple[int, str, int]:
    return row.event.ts_ns, row.host_id, row.event.seq


def parse_cursor(text: str) -> tuple[int, str, int] | None:
    try:
        return decode_cursor(text)
    except ValueError as exc:
        raise BadCursor(f"not a cursor of this collector: {text[:80]!r}") from exc


def page(fetch: Callable[[tuple | None, int], list], limit: int, budget: int, after: tuple | None,
         key: Callable[[object], tuple], size: Callable[[object], int]) -> tuple[list, tuple | None]:
    """Items after `after` in key order, at most limit of them and about budget bytes (never fewer than one),
    read a chunk at a time; and the key of the last one when more match (None when nothing more does)."""
    out: list = []
    used = 0
    while True:
        want = min(CHUNK_ROWS, limit - len(out)) + 1          # one more: is there anything after the page?
        chunk = fetch(after, want)
        for item in chunk:
            n = size(item)
            if len(out) >= limit or (out and used + n > budget):
                return out, key(out[-1])
            out.append(item)
            used += n
        if len(chunk) < want:
            return out, None
        after = key(out[-1])


def page_events(fetch: Callable[[tuple | None, int], list[StoredRow]], limit: int, budget: int,
                after: tuple | None) -> tuple[list[StoredRow], str]:
    """Rows after the cursor, at most limit of them and about budget bytes; the next cursor, or "" when
    nothing more matches."""
    rows, last = page(fetch, limit, budget, after, row_key,
                      lambda row: row.event.ByteSize() + len(row.host_id) + ROW_OVERHEAD)
    return rows, encode_cursor(*last) if last else ""

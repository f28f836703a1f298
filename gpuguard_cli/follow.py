"""`--follow` for `gpuguard alerts` and `gpuguard timeline`: new alerts (and alert changes) and new events as they
are stored, one line each (JSON lines with --json), until interrupted.

The collector is polled (every --interval seconds) over the same authorised queries; a window reaching back
FOLLOW_OVERLAP_S before the newest item seen catches records that are stored late (an agent shipping its spool
after a network cut), and each item is printed once per state (an alert again when its state or outcome changes).
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from google.protobuf.json_format import MessageToDict

FOLLOW_OVERLAP_S = 120.0
MAX_REMEMBERED = 100_000

Item = tuple[tuple, int, str]        # (identity, ts_ns, the line to print)


def follow(fetch: Callable[[int], Iterable[Item]], since_ns: int, interval_s: float,
           out=print, rounds: int | None = None) -> int:
    """Print what fetch(since_ns) returns that was not printed yet, forever (or `rounds` times, for tests)."""
    seen: OrderedDict[tuple, None] = OrderedDict()
    newest = since_ns
    done = 0
    while rounds is None or done < rounds:
        window = max(since_ns, newest - int(FOLLOW_OVERLAP_S * 1e9)) if newest else since_ns
        for key, ts_ns, line in sorted(fetch(window), key=lambda item: item[1]):
            if key in seen:
                continue
            seen[key] = None
            while len(seen) > MAX_REMEMBERED:
                seen.popitem(last=False)
            newest = max(newest, ts_ns)
            out(line)
        done += 1
        if rounds is None or done < rounds:
            time.sleep(interval_s)
    return 0


def as_json_line(message) -> str:
    return json.dumps(MessageToDict(message, preserving_proto_field_name=True), sort_keys=True)

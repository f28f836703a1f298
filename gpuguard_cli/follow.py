"""`--follow` for `gpuguard alerts` and `gpuguard timeline`: new alerts (and alert changes) and new events as they
are stored, one line each (JSON lines with --json), until interrupted.

What was stored before is read once with the ordinary queries; after that the collector pushes each new event
and alert as it stores it (the Follow stream, subscribed before the first read so nothing falls between). Against
a collector without the stream it polls instead (every --interval seconds, over a window reaching back
FOLLOW_OVERLAP_S before the newest item seen, which catches records stored late). Each item is printed once per
state (an alert again when its state or outcome changes).
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from google.protobuf.json_format import MessageToDict

FOLLOW_OVERLAP_S = 120.0
MAX_REMEMBERED = 100_000

Item = tuple[tuple, int, str]        # (identity, ts_ns, the line to print)


class Pushed:
    """Items from a server stream, read by a thread: .queue, and .failed once the stream is gone."""

    def __init__(self, stream: Iterable, item_of: Callable, ready_timeout_s: float = 5.0) -> None:
        self.queue: queue.Queue = queue.Queue()
        self.failed = threading.Event()
        self.subscribed = threading.Event()
        self.error: Exception | None = None

        def read() -> None:
            try:
                for raw in stream:
                    self.subscribed.set()               # the first (empty) item: the collector subscribed us
                    item = item_of(raw)
                    if item is not None:
                        self.queue.put(item)
            except Exception as exc:     # the collector went away, or has no stream: polling takes over
                self.error = exc
            self.failed.set()
            self.subscribed.set()

        threading.Thread(target=read, daemon=True).start()
        self.subscribed.wait(ready_timeout_s)           # then the backlog is read: nothing falls between


def follow(fetch: Callable[[int], Iterable[Item]], since_ns: int, interval_s: float,
           out=print, rounds: int | None = None, pushed: Pushed | None = None) -> int:
    """Print what fetch(since_ns) returns that was not printed yet, then what is pushed (or, with no push,
    what later fetches return), forever (or `rounds` times, for tests)."""
    seen: OrderedDict[tuple, None] = OrderedDict()
    newest = since_ns
    done = 0

    def emit(key: tuple, line: str) -> None:
        if key in seen:
            return
        seen[key] = None
        while len(seen) > MAX_REMEMBERED:
            seen.popitem(last=False)
        out(line)

    while rounds is None or done < rounds:
        if done and pushed is not None and not (pushed.failed.is_set() and pushed.queue.empty()):
            try:                                  # pushed: wait for the next item, no polling
                key, ts_ns, line = pushed.queue.get(timeout=interval_s)
                newest = max(newest, ts_ns)
                emit(key, line)
            except queue.Empty:
                pass
            done += 1
            continue
        window = max(since_ns, newest - int(FOLLOW_OVERLAP_S * 1e9)) if newest else since_ns
        for key, ts_ns, line in sorted(fetch(window), key=lambda item: item[1]):
            newest = max(newest, ts_ns)
            emit(key, line)
        done += 1
        if (rounds is None or done < rounds) and pushed is None:
            time.sleep(interval_s)
    return 0


def as_json_line(message) -> str:
    return json.dumps(MessageToDict(message, preserving_proto_field_name=True), sort_keys=True)

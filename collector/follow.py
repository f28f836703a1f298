"""Server push: new events and alerts to whoever follows them (`gpuguard alerts --follow`, `gpuguard timeline JOB
--follow`, the page's live view), on the collector's own event loop.

Ingest (a worker thread) and the alert publisher (detection's thread) hand what they stored to the hub; the hub
hands it to each subscriber whose filter wants it, through a bounded queue: a follower that does not read loses
its oldest items (counted and told), never slows ingest or detection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from gpuguard.v1 import events_pb2 as pb
from gpuguard.v1 import policy_pb2 as ppb

log = logging.getLogger(__name__)

QUEUE = 2048          # items a follower may fall behind before its oldest are dropped
MAX_FOLLOWERS = 256


@dataclass(eq=False)          # each follower is itself (a set member)
class Follower:
    job_id: str = ""                  # "" = every job
    host: str = ""
    kinds: frozenset = frozenset()    # event kinds; empty = all
    alerts: bool = True
    events: bool = True
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(QUEUE))
    dropped: int = 0

    def wants_event(self, host: str, ev: pb.Event) -> bool:
        return self.events and (not self.job_id or ev.job.id == self.job_id) and (not self.host or host == self.host) \
            and (not self.kinds or ev.WhichOneof("body") in self.kinds)

    def wants_alert(self, alert: ppb.Alert) -> bool:
        return self.alerts and (not self.job_id or alert.job.id == self.job_id) and \
            (not self.host or alert.host_id == self.host)

    def put(self, item) -> None:
        while True:
            try:
                self.queue.put_nowait(item)
                return
            except asyncio.QueueFull:
                self.queue.get_nowait()
                self.dropped += 1


class FollowHub:
    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.followers: set[Follower] = set()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def subscribe(self, follower: Follower) -> Follower:
        if len(self.followers) >= MAX_FOLLOWERS:
            raise OverflowError(f"{MAX_FOLLOWERS} followers already")
        self.followers.add(follower)
        return follower

    def unsubscribe(self, follower: Follower) -> None:
        self.followers.discard(follower)


    # -- from other threads -------------------------------------------------------------------------------------
    def on_events(self, session, events: list[pb.Event]) -> None:
        """An ingest listener: events just stored for session.host_id."""
        if self.followers and self.loop is not None:
            self.loop.call_soon_threadsafe(self._fan_events, session.host_id, list(events))

    def on_alert(self, alert: ppb.Alert) -> None:
        if self.followers and self.loop is not None:
            copy = ppb.Alert()
            copy.CopyFrom(alert)
            self.loop.call_soon_threadsafe(self._fan_alert, copy)

    # -- on the loop ----------------------------------------------------------------------------------------------
    def _fan_events(self, host: str, events: list[pb.Event]) -> None:
        for f in list(self.followers):
            for ev in events:
                if f.wants_event(host, ev):
                    f.put(("event", host, ev))

    def _fan_alert(self, alert: ppb.Alert) -> None:
        for f in list(self.followers):
            if f.wants_alert(alert):
                f.put(("alert", alert.host_id, alert))


async def items(follower: Follower, still_valid: Callable[[], bool], idle_s: float) -> AsyncIterator[tuple | None]:
    """What a follower is sent, (kind, host, record), and None after idle_s without any (a transport's
    keep-alive); it ends as soon as still_valid() says the follower's credential was revoked."""
    while True:
        try:
            item = await asyncio.wait_for(follower.queue.get(), idle_s)
        except TimeoutError:
            item = None
        if not still_valid():
            return
        yield item


class StoreAlertFeed:
    """With ``--log`` the workers raise alerts, not this collector: the store's recent alerts are fed to this
    collector's followers (new ones, and ones whose state or outcome changed), so `gpuguard alerts --follow` and
    the page's live view see every alert of the fleet, whichever worker raised it."""

    WINDOW_NS = 15 * 60 * 10**9          # alerts stamped this far back are watched (workers may trail the clock)

    def __init__(self, store, hub: FollowHub, interval_s: float = 0.5) -> None:
        self.store, self.hub, self.interval_s = store, hub, interval_s
        self.seen: dict[str, tuple[int, str, int]] = {}      # id -> (state, outcome, ts_ns)
        self.primed = False

    def poll(self, now_ns: int | None = None) -> list[ppb.Alert]:
        """What changed since the last poll (the first poll only learns what is there)."""
        now = time.time_ns() if now_ns is None else now_ns
        since, after, changed = now - self.WINDOW_NS, None, []
        while True:
            page = self.store.alerts(since_ns=since, limit=1000, after=after)
            for a in page:
                state = (a.state, a.outcome, a.ts_ns)
                if self.seen.get(a.id) != state:
                    self.seen[a.id] = state
                    changed.append(a)
            if len(page) < 1000:
                break
            after = (page[-1].ts_ns, page[-1].id)
        for aid in [k for k, v in self.seen.items() if v[2] < since]:
            del self.seen[aid]
        if not self.primed:
            self.primed = True
            return []
        return changed

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            if not self.hub.followers and self.primed:
                continue
            try:
                for alert in await asyncio.to_thread(self.poll):
                    self.hub._fan_alert(alert)
            except Exception as exc:   # the store is down: followers wait
                log.debug("alert feed from the store: %s", exc)


class LogEventFeed:
    """With ``--log`` this collector sees only the events of the hosts that stream to it; a follower of a job
    (`gpuguard timeline JOB --follow`, the page's live view) wants every host of it. So with a log, followed events
    come from the log instead: the partition of each followed job (every partition for a follower of all jobs),
    from its last LOOKBACK_S when first wanted (what reached the log between a follower's subscription and its
    first read of the store; followers print each event once), then as it comes, fanned out like ingest's.
    Ingest then feeds followers nothing, so no event arrives twice."""

    LOOKBACK_S = 10.0

    def __init__(self, log, hub: FollowHub, partitions: int, wait_s: float = 0.5) -> None:
        self.log, self.hub, self.partitions, self.wait_s = log, hub, partitions, wait_s
        self.offsets: dict[int, int] = {}        # partition -> last offset fanned out

    def wanted(self) -> set[int]:
        from collector.eventlog import partition_of  # noqa: PLC0415 - the log is optional

        parts: set[int] = set()
        for f in list(self.hub.followers):
            if not f.events:
                continue
            if not f.job_id:
                return set(range(self.partitions))
            parts.add(partition_of(f"job:{f.job_id}", self.partitions))
        return parts

    def poll(self) -> list[tuple[str, list[pb.Event]]]:
        """New events of the wanted partitions, (host, events) per log entry."""
        from collector.eventlog import LogEntry  # noqa: PLC0415
        from gpuguard.v1 import collector_pb2 as cpb  # noqa: PLC0415

        wanted = self.wanted()
        for p in [p for p in self.offsets if p not in wanted]:
            del self.offsets[p]
        out: list[tuple[str, list[pb.Event]]] = []
        for p in sorted(wanted):
            if p not in self.offsets:               # newly wanted: its recent past, then what comes after
                tail = self.offsets[p] = self.log.tail(p)
                since = time.time_ns() - int(self.LOOKBACK_S * 1e9)
                entries: list[LogEntry] = self.log.read_since(p, since, tail, 1000) if tail else []
            else:
                entries = self.log.read(p, self.offsets[p], 1000, self.wait_s / max(len(wanted), 1))
                if entries:
                    self.offsets[p] = entries[-1].offset
            for e in entries:
                try:
                    batch = cpb.LogBatch.FromString(e.payload)
                except Exception:   # noqa: BLE001 - not ours: the workers count it; followers skip it
                    continue
                out.append((batch.host_id, list(batch.events)))
        return out

    async def run(self) -> None:
        while True:
            if not self.hub.followers:
                self.offsets.clear()
                await asyncio.sleep(self.wait_s)
                continue
            try:
                for host, events in await asyncio.to_thread(self.poll):
                    self.hub._fan_events(host, events)
            except Exception as exc:   # the log is down: followers wait, the next poll tries again
                log.debug("event feed from the log: %s", exc)
                await asyncio.sleep(self.wait_s)
            else:
                await asyncio.sleep(0.05 if self.offsets else self.wait_s)

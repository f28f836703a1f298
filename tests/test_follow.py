"""`--follow`: new alerts, alert changes and new events printed once each, as they are stored."""

from __future__ import annotations

import json
import subprocess
import time

from collector.app import CollectorConfig
from gpuguard.v1 import events_pb2 as pb
from gpuguard_cli.follow import follow
from tests.services import CLI, ROOT, collector_in_thread, stream_events


def test_each_item_is_printed_once_per_state_and_late_arrivals_are_caught():
    rounds = [[(("a", "ALERTED"), 10, "a alerted")],
              [(("a", "ALERTED"), 10, "a alerted"), (("b", "ALERTED"), 30, "b alerted")],
              [(("a", "CONFIRMED"), 10, "a confirmed"), (("c", "ALERTED"), 20, "c stored late, older")]]
    asked: list[int] = []

    def fetch(since_ns):
        asked.append(since_ns)
        return rounds[len(asked) - 1]

    printed: list[str] = []
    follow(fetch, since_ns=1, interval_s=0, out=printed.append, rounds=3)
    assert printed == ["a alerted", "b alerted", "a confirmed", "c stored late, older"]
    assert asked == [1, 1, 1]        # the window reaches FOLLOW_OVERLAP_S back from the newest item seen


def test_alerts_and_timeline_follow_a_live_collector(tmp_path):
    with collector_in_thread(CollectorConfig(listen="127.0.0.1:0", store=str(tmp_path / "c.db"))) as app:
        port = str(app.port)
        base = ["--collector", f"127.0.0.1:{port}", "--json", "--interval", "0.2", "--follow"]
        alerts = subprocess.Popen([*CLI, "alerts", *base], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        timeline = subprocess.Popen([*CLI, "timeline", "slurm:5150", *base], stdout=subprocess.PIPE, text=True,
                                    cwd=ROOT)
        try:
            now = time.time_ns()
            evs = []
            for seq, exe in ((1, "/usr/bin/python3"), (2, "/opt/xmrig")):
                e = pb.Event(seq=seq, ts_ns=now + seq, exec=pb.Exec(filename=exe, argv=[exe, "-o", "x"]))
                e.job.kind, e.job.id = "slurm", "5150"
                e.process.pid, e.process.key, e.process.comm, e.process.exe = 100 + seq, f"k{seq}", exe[-7:], exe
                evs.append(e)
            assert stream_events(app.port, "node-f", evs) == 2
            app.detector.drain()
            alert = json.loads(alerts.stdout.readline())
            assert alert["rule_id"] == "miner-binary" and alert["job"]["id"] == "5150"
            lines = [json.loads(timeline.stdout.readline()) for _ in range(2)]
            assert [x["event"]["seq"] for x in lines] == ["1", "2"]           # uint64 is a JSON string
        finally:
            for proc in (alerts, timeline):
                proc.kill()
                proc.wait(10)


def test_follow_is_pushed_not_polled(tmp_path):
    """With a poll interval of a minute, an alert still arrives at once: the collector pushed it."""
    with collector_in_thread(CollectorConfig(listen="127.0.0.1:0", store=str(tmp_path / "c.db"))) as app:
        base = ["--collector", f"127.0.0.1:{app.port}", "--json", "--interval", "60", "--follow"]
        alerts = subprocess.Popen([*CLI, "alerts", "--job", "6160", *base], stdout=subprocess.PIPE, text=True,
                                  cwd=ROOT)
        try:
            deadline = time.monotonic() + 15                         # subscribed: the stream is open
            while not app.follow.followers and time.monotonic() < deadline:
                time.sleep(0.05)
            assert app.follow.followers
            e = pb.Event(seq=1, ts_ns=time.time_ns(), exec=pb.Exec(filename="/opt/xmrig", argv=["xmrig", "-o", "x"]))
            e.job.kind, e.job.id = "slurm", "6160"
            e.process.pid, e.process.key, e.process.comm, e.process.exe = 7, "k7", "xmrig", "/opt/xmrig"
            started = time.monotonic()
            assert stream_events(app.port, "node-push", [e]) == 1
            app.detector.drain()
            alert = json.loads(alerts.stdout.readline())
            assert alert["rule_id"] == "miner-binary" and time.monotonic() - started < 60   # before any poll
        finally:
            alerts.kill()
            alerts.wait(10)


def test_a_follower_revoked_while_items_keep_coming_gets_no_more():
    """The check runs before every item, not only when the stream is idle."""
    import asyncio  # noqa: PLC0415

    from collector.follow import Follower, items  # noqa: PLC0415

    async def run() -> list:
        f = Follower()
        for i in range(5):
            f.put(("event", "h", i))
        allowed = iter([True, True, False, True, True])
        return [got async for got in items(f, lambda: next(allowed), idle_s=0.01)]

    assert [g[2] for g in asyncio.run(run())] == [0, 1]


def test_with_a_log_the_stores_alerts_reach_the_followers(tmp_path):
    """Workers raise the alerts in a fleet on a log: the collector feeds the store's new and changed alerts to its
    followers (the first poll only learns what is there)."""
    import asyncio  # noqa: PLC0415
    import time  # noqa: PLC0415

    from collector.follow import Follower, FollowHub, StoreAlertFeed  # noqa: PLC0415
    from collector.store import open_store  # noqa: PLC0415
    from gpuguard.v1 import policy_pb2 as ppb  # noqa: PLC0415

    store = open_store(str(tmp_path / "s.db"))
    now = time.time_ns()
    store.add_alert(ppb.Alert(id="old", rule_id="r", ts_ns=now - 10**9, state=ppb.ALERT_ALERTED))
    hub = FollowHub()
    feed = StoreAlertFeed(store, hub)
    assert feed.poll(now) == []                                        # primed: what was there is not new
    store.add_alert(ppb.Alert(id="new", rule_id="miner", ts_ns=now - 5 * 10**9, state=ppb.ALERT_KILL_ORDERED))
    assert [a.id for a in feed.poll(now)] == ["new"]
    assert feed.poll(now) == []                                        # nothing changed
    store.add_alert(ppb.Alert(id="new", rule_id="miner", ts_ns=now - 5 * 10**9, state=ppb.ALERT_CONFIRMED,
                              outcome="killed at exec"))
    changed = feed.poll(now)
    assert [(a.id, a.state) for a in changed] == [("new", ppb.ALERT_CONFIRMED)]
    loop = asyncio.new_event_loop()
    try:
        hub.bind(loop)
        follower = Follower(job_id="")
        loop.run_until_complete(asyncio.sleep(0))
        hub.subscribe(follower)
        hub._fan_alert(changed[0])
        kind, host, alert = follower.queue.get_nowait()
        assert kind == "alert" and alert.id == "new"
    finally:
        loop.close()
        store.close()


def test_with_a_log_followed_events_come_from_the_log_for_every_host_of_the_job():
    """A follower of a job on one collector sees the job's events from every host, whichever collector they
    stream to: the feed reads the job's partition of the log from its last LOOKBACK_S when first asked (older
    entries are not replayed), then as it comes, and only the partitions somebody follows."""
    import asyncio  # noqa: PLC0415

    from collector.eventlog import LogSink, partition_of  # noqa: PLC0415
    from collector.follow import Follower, FollowHub, LogEventFeed  # noqa: PLC0415
    from gpuguard import rawbatch  # noqa: PLC0415
    from tests.test_eventlog import MemoryLog, event  # noqa: PLC0415

    log = MemoryLog(partitions=8)
    assert partition_of("job:j1", 8) != partition_of("job:j2", 8)
    sink_a, sink_b = LogSink(log, owner="a"), LogSink(log, owner="b")   # two collectors, one log
    sink_a.ingest("h1", "h1", "b", [event(1, "j1")])                    # before anyone follows
    log.times[0] -= int(60e9)                                           # ... a minute before
    sink_a.ingest("h1", "h1", "b", [event(2, "j1")])                    # ... and just before
    hub = FollowHub()
    feed = LogEventFeed(log, hub, 8, wait_s=0)
    assert feed.poll() == [] and feed.offsets == {}                   # nobody follows: nothing is read
    hub.subscribe(Follower(job_id="j1"))
    got = [(host, e.seq) for host, events in feed.poll() for e in events]
    assert got == [("h1", 2)] and list(feed.offsets) == [partition_of("job:j1", 8)]   # the recent past only
    sink_a.ingest("h1", "h1", "b", [event(3, "j1"), event(4, "j2")])
    asyncio.run(sink_b.ingest_raw_async("h2", "h2", "b",
                                        rawbatch.check(rawbatch.from_events([event(1, "j1")]), 10, 1 << 20)))
    got = [(host, e.seq, e.job.id) for host, events in feed.poll() for e in events]
    assert got == [("h1", 3, "j1"), ("h2", 1, "j1")]                  # both hosts, only the followed job
    assert feed.poll() == []                                           # once each
    hub.subscribe(Follower())                                          # a follower of every job
    assert feed.wanted() == set(range(8))

"""Small, fast checks of the trust-boundary pieces: terminal-safe output, drift, acks that do not wait
for detection, and an agent that believes only acks for what it sent."""

from __future__ import annotations

import queue
import threading
import time
from concurrent import futures

import grpc

from agent.identity import HostIdentity
from agent.shipper import Shipper
from agent.spool import Spool
from collector.app import CollectorConfig
from collector.health import HostHealth
from collector.ingest import AgentSession
from gpuguard.render import alerts_explained, alerts_table, safe, timeline_view, tree_view
from gpuguard.v1 import collector_pb2 as cpb
from gpuguard.v1 import events_pb2 as pb
from tests.services import collector_in_thread
from tests.test_collector_protocol import RawStream, batch, hello

EVIL = "x\x1b[2J\x1b]0;owned\x07\nFAKE LINE\r\u202eevil"


def test_human_output_escapes_control_characters_everywhere():
    assert safe(EVIL) == "x\\e[2J\\e]0;owned\\x07\\nFAKE LINE\\r\\u202eevil"
    ev = pb.Event(seq=1, ts_ns=1, exec=pb.Exec(filename=EVIL, argv=[EVIL]))
    ev.process.comm, ev.process.pid = EVIL[:15], 1
    reply = cpb.TimelineReply(events=[cpb.StoredEvent(host_id=EVIL, event=ev)])
    reply.first_gpu_use.add(path=EVIL, host_id=EVIL, process_key=EVIL)
    tree = cpb.TreeReply(nodes=[cpb.TreeNode(key="k", comm=EVIL, argv=[EVIL], host_id=EVIL, exe=EVIL)])
    alert = cpb.AlertsReply()
    one = alert.alerts.add(rule_id=EVIL, outcome=EVIL, description=EVIL)
    one.process.comm = EVIL
    one.matched[EVIL] = EVIL
    one.process.argv.extend([EVIL, "-o", "stratum+tcp://" + "x" * 300])
    explained = alerts_explained(alert.alerts)
    assert "x" * 90 in explained and explained.count("x") >= 300       # the whole argv, wrapped, never cut
    for text in (timeline_view(EVIL, reply), tree_view(tree), alerts_table(alert.alerts), explained):
        assert "\x1b" not in text and "\r" not in text and "\x07" not in text and "\u202e" not in text
        assert "FAKE LINE" not in "\n".join(line for line in text.splitlines() if line.startswith("FAKE"))


class FakeStore:
    def __init__(self) -> None:
        self.alerts = []

    def add_alert(self, alert) -> None:
        self.alerts.append(alert)

    def jobs_on_host(self, host, since_ns):
        return [("slurm", "77")]

    def agents(self):
        return []


class ManualClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def status_event(version: int, enforcing: bool = True, programs=("kill_exec",), unavailable: str = "") -> pb.Event:
    ev = pb.Event(seq=1, status=pb.AgentStatus(policy_version=version, enforcing=enforcing, programs=programs,
                                               enforcement_unavailable=unavailable))
    return ev


def test_enforcement_drift_is_an_alert_for_the_host_and_its_jobs():
    store = FakeStore()
    clock = ManualClock()
    health = HostHealth(store, grace=2.0, kill_programs_expected=lambda: True, clock=clock)
    session = AgentSession("h1", "h1", "b", 0)
    health.on_connect(session, cpb.Hello(heartbeat_s=0.05, agent_started_ns=1))
    health.on_events(session, [status_event(3)])
    health.tick(3)
    assert store.alerts == []                                       # in step: nothing to say
    health.on_events(session, [status_event(3, enforcing=False)])
    health.tick(3)
    drift = [a for a in store.alerts if a.rule_id == "enforcement-drift"]
    assert {a.job.id for a in drift} == {"host", "77"} and "switched off" in drift[0].matched["drift"]
    store.alerts.clear()
    health.on_events(session, [status_event(0, enforcing=False, programs=(), unavailable="verifier said no")])
    health.tick(3)                                                  # not switched off: it could not load, and why
    assert [a.matched["drift"] for a in store.alerts][:1] == \
        ["enforcement could not be loaded on the agent: verifier said no"]
    store.alerts.clear()
    health.on_events(session, [status_event(3, programs=())])
    health.tick(3)
    assert [a.matched["drift"] for a in store.alerts][:1] == ["kill-at-exec program not attached"]
    store.alerts.clear()
    health.on_events(session, [status_event(2)])
    health.tick(3)                                                  # just pushed: give it time
    assert not [a for a in store.alerts if "policy 2" in a.matched.get("drift", "")]
    clock.now += 0.15
    health.on_events(session, [status_event(2)])
    health.tick(3)
    assert [a for a in store.alerts if "policy 2" in a.matched.get("drift", "")]


def test_kernel_losses_raise_one_capture_degraded_alert_per_episode():
    store = FakeStore()
    health = HostHealth(store)
    session = AgentSession("h1", "h1", "b", 0)
    health.on_connect(session, cpb.Hello(heartbeat_s=5, agent_started_ns=1))

    def lost(**counts) -> pb.Event:
        return pb.Event(seq=1, status=pb.AgentStatus(policy_version=1, kernel_lost=counts))

    health.on_events(session, [lost()])
    assert store.alerts == []
    health.on_events(session, [lost(connect=900)])
    health.on_events(session, [lost(connect=1800, exec=2)])        # the same episode: no second alert
    alerts = [a for a in store.alerts if a.rule_id == "capture-degraded"]
    assert {a.job.id for a in alerts} == {"host", "77"} and alerts[0].matched == {"lost_connect": "900"}
    assert alerts[0].severity == "medium"
    health.on_events(session, [lost(connect=1800, exec=2)])        # recovered
    health.on_events(session, [lost(connect=1800, exec=5)])        # a new episode, and execs were lost
    second = [a for a in store.alerts if a.rule_id == "capture-degraded"][len(alerts):]
    assert second and second[0].severity == "high" and second[0].matched == {"lost_exec": "3"}
    assert "exec" in second[0].description


def test_a_jobs_capture_loss_is_one_alert_per_episode_for_that_job_only():
    from collector.health import JOB_RECOVERED_S  # noqa: PLC0415

    store, clock = FakeStore(), ManualClock()
    health = HostHealth(store, clock=clock)
    session = AgentSession("h1", "h1", "b", 0)
    health.on_connect(session, cpb.Hello(heartbeat_s=5, agent_started_ns=1))

    def loss(job: str, n: int) -> pb.Event:
        ev = pb.Event(seq=1, ts_ns=2_000, capture_loss=pb.CaptureLoss(suppressed={"connect": n}, from_ts_ns=1_000,
                                                                       to_ts_ns=2_000, cgroup=f"/slurm/job_{job}"))
        ev.job.kind, ev.job.id = "slurm", job
        return ev

    health.on_events(session, [loss("9", 500), loss("9", 700)])      # one episode: one alert
    alerts = [a for a in store.alerts if a.rule_id == "capture-degraded"]
    assert [(a.job.kind, a.job.id) for a in alerts] == [("slurm", "9")]   # the flooding job, not job 77
    assert alerts[0].matched["suppressed_connect"] == "500" and "budget" in alerts[0].description
    assert health.describe(0).hosts[0].incomplete_jobs == ["slurm:9"]
    clock.now += JOB_RECOVERED_S / 2
    health.on_events(session, [loss("9", 100)])                      # still the same episode
    clock.now += JOB_RECOVERED_S + 1
    health.tick(0)                                                   # quiet long enough: recovered
    assert health.describe(0).hosts[0].incomplete_jobs == []
    health.on_events(session, [loss("9", 50)])                       # a new flood: a new alert
    again = [a for a in store.alerts if a.rule_id == "capture-degraded"]
    assert len(again) == 2 and again[0].id != again[1].id


def test_a_clean_stop_says_goodbye_and_its_silence_is_no_alarm():
    store, clock = FakeStore(), ManualClock()
    health = HostHealth(store, grace=2.0, clock=clock)
    session = AgentSession("h1", "h1", "b", 0)
    health.on_connect(session, cpb.Hello(heartbeat_s=1, agent_started_ns=7))
    health.on_events(session, [pb.Event(seq=1, status=pb.AgentStatus(policy_version=0, enforcing=True,
                                                                      stopping=True))])
    health.on_disconnect(session)
    clock.now += 60                                                 # far past two heartbeats
    health.tick(0)
    assert [a.rule_id for a in store.alerts] == ["agent-stopped"] and store.alerts[0].severity == "low"
    assert health.describe(0).hosts[0].state == "stopped"
    health.on_connect(session, cpb.Hello(heartbeat_s=1, agent_started_ns=8))   # started again: watched again
    clock.now += 60
    health.tick(0)
    assert "agent-silent" in [a.rule_id for a in store.alerts]


def test_acks_do_not_wait_for_detection(tmp_path):
    cfg = CollectorConfig(listen="127.0.0.1:0", store=str(tmp_path / "c.db"))
    with collector_in_thread(cfg) as app:
        release = threading.Event()
        real = app.policy.on_events
        app.detector.evaluate = lambda host, events, emit=True: (release.wait(30), real(host, events, emit))
        s = RawStream(app.port, host="slowdetect")
        s.send(hello("slowdetect"))
        s.recv()
        while s.recv().WhichOneof("msg") != "policy":               # hello reply, then the current policy
            pass
        s.send(batch(1, 2))
        first = s.recv()
        s.send(batch(3))
        second = s.recv()
        assert (first.ack.seq, second.ack.seq) == (2, 3)            # acked while detection is stuck
        assert app.detector.pending >= 1 and app.detector.evaluated == 0   # detection is stuck on the first read
        release.set()
        assert app.detector.drain(10) and app.detector.evaluated == 3
        s.close()


class LyingCollector:
    """A collector that claims to have stored more than the agent ever sent (an older one: its hello does not say
    raw_batches, so the agent sends it EventBatches)."""

    def __init__(self, stored_through: int, ack_seq: int) -> None:
        self.stored_through, self.ack_seq = stored_through, ack_seq
        self.batches: queue.Queue = queue.Queue()

    def Enroll(self, request, context):  # noqa: N802 - not this fake's subject
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "no enrollment here")

    def Stream(self, requests, context):  # noqa: N802
        first = next(requests)
        assert first.HasField("hello")
        yield cpb.CollectorMessage(hello=cpb.HelloReply(stored_through_seq=self.stored_through))
        for msg in requests:
            if msg.HasField("batch"):
                self.batches.put([e.seq for e in msg.batch.events])
                yield cpb.CollectorMessage(ack=cpb.Ack(seq=self.ack_seq))


def test_agent_deletes_only_what_it_sent_and_was_acked(tmp_path):
    from gpuguard.v1 import collector_pb2_grpc as cgrpc  # noqa: PLC0415

    server = grpc.server(futures.ThreadPoolExecutor(4))
    fake = LyingCollector(stored_through=0, ack_seq=1 << 62)
    cgrpc.add_CollectorServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    spool = Spool(tmp_path / "spool")
    spool.append([pb.Event(ts_ns=1, boot_id="b", exit=pb.Exit(code=i)) for i in range(3)])
    assert [e.exit.code for e in spool.read_after(0, 3)] == [0, 1, 2]      # spooled as events, not as gaps
    shipper = Shipper(f"127.0.0.1:{port}", spool, HostIdentity("h", "h", "b"), batch_max_events=2)
    shipper.window_events = 2                                    # one batch in flight at a time
    threading.Thread(target=shipper.run, daemon=True).start()
    try:
        assert fake.batches.get(timeout=10) == [1, 2]
        assert fake.batches.get(timeout=10) == [3]          # believed "stored" on the first ack, it was dropped
        deadline = time.monotonic() + 10
        while spool.acked < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert spool.acked == 3 and spool.last_seq == 3
    finally:
        shipper.stop()
        server.stop(0)


def test_a_process_that_moves_into_a_job_belongs_to_it_across_batches(tmp_path):
    """sh execs on the host, moves into the job's cgroup and execs again: two batches, one tree node."""
    from collector.store.sqlite import SqliteStore  # noqa: PLC0415

    store = SqliteStore(tmp_path / "s.db")
    store.register_agent("h", "h", "b", 0)

    def exec_in(seq: int, job: str) -> pb.Event:
        ev = pb.Event(seq=seq, ts_ns=1000 + seq, exec=pb.Exec(filename="/bin/sh"))
        ev.process.key, ev.process.pid, ev.process.comm = "b:445:1", 445, "sh"
        ev.job.kind, ev.job.id = ("host", "host") if job == "host" else ("slurm", job)
        return ev

    store.ingest("h", [exec_in(1, "host")])
    store.ingest("h", [exec_in(2, "4242")])
    assert [p["key"] for p in store.processes("4242")] == ["b:445:1"]
    assert store.processes("host") == []


def test_an_event_the_collector_refuses_is_kept_in_the_agents_quarantine(tmp_path):
    """A connect whose destination is not an address (a hostile or buggy agent build): the collector stores a gap
    naming it and acks the batch; the agent keeps the original on disk and goes on, no retry loop."""
    from tests.services import agent_credential  # noqa: PLC0415

    cfg = CollectorConfig(listen="127.0.0.1:0", store=str(tmp_path / "c.db"))
    with collector_in_thread(cfg) as app:
        spool = Spool(tmp_path / "spool")
        now = time.time_ns()
        spool.append([pb.Event(ts_ns=now, boot_id="b", exit=pb.Exit(code=0)),
                      pb.Event(ts_ns=now, boot_id="b", connect=pb.Connect(daddr="pool.example", dport=3333)),
                      pb.Event(ts_ns=now, boot_id="b", exit=pb.Exit(code=1))])
        shipper = Shipper(f"127.0.0.1:{app.port}", spool, HostIdentity("refused", "refused", "b"),
                          token=agent_credential("refused"))
        threading.Thread(target=shipper.run, daemon=True).start()
        try:
            deadline = time.monotonic() + 15
            while spool.acked < 3 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert spool.acked == 3                                   # acked: nothing is resent for ever
            kept = pb.Event.FromString((tmp_path / "spool" / "quarantine" / f"seq-{2:020d}.pb").read_bytes())
            assert kept.connect.daddr == "pool.example"
            stored = {e.seq: e for _h, e in app.store.recent_events(0, 10)}
            assert stored[2].HasField("gap") and "not an IP address" in stored[2].gap.reason
            assert stored[3].exit.code == 1 and app.ingestor.refused == 1
            assert app.ingestor.raw_batches == app.ingestor.batches >= 1      # sent as spooled: RawBatch
        finally:
            shipper.stop()

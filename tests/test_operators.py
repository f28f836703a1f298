"""Operator interfaces without the kernel: alert outputs (JSON lines, syslog, webhook with a receiver that
is down and comes back), /metrics and the page's API behind a reader token, and the HTTP guard rules."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from collector.app import CollectorConfig
from collector.outputs import AlertPublisher, JsonLinesOutput, SyslogOutput, WebhookOutput
from gpuguard.httpd import require_token_or_loopback
from gpuguard.v1 import events_pb2 as pb
from gpuguard.v1 import policy_pb2 as ppb
from lab import free_port, wait_until
from tests.services import collector_in_thread, issue, stream_events


def an_alert(n: int = 1, state=ppb.ALERT_KILL_ORDERED) -> ppb.Alert:
    a = ppb.Alert(id=f"a{n}", rule_id="miner-binary", severity="critical", action="kill", state=state,
                  outcome="kill ordered from the agent", host_id="node-1", ts_ns=time.time_ns())
    a.job.kind, a.job.id = "slurm", "4242"
    return a


class Receiver:
    """A local webhook receiver that can be stopped and started again on the same port."""

    def __init__(self, port: int = 0) -> None:
        self.got: list[dict] = []
        self.port = port or free_port()
        self.server = None

    def start(self) -> None:
        got = self.got

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FakeStore:
    def __init__(self) -> None:
        self.alerts: list[ppb.Alert] = []

    def add_alert(self, alert) -> None:
        self.alerts.append(alert)


def test_jsonl_and_syslog_outputs_publish_each_change_once(tmp_path):
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(5)
    path = tmp_path / "alerts.jsonl"
    store = FakeStore()
    pub = AlertPublisher(store, [JsonLinesOutput(str(path)),
                                 SyslogOutput(f"udp://127.0.0.1:{sink.getsockname()[1]}")])
    pub.record(an_alert())
    pub.record(an_alert())                                    # same state and outcome: stored, not republished
    pub.record(an_alert(state=ppb.ALERT_CONFIRMED))           # a state change is news
    pub.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [x["state"] for x in lines] == ["ALERT_KILL_ORDERED", "ALERT_CONFIRMED"]
    assert lines[0]["rule_id"] == "miner-binary" and lines[0]["job"]["id"] == "4242"
    assert len(store.alerts) == 3                              # the store keeps every version
    first = sink.recv(65536).decode()
    assert first.startswith("<10>gpuguard: ")                 # facility user (1), severity critical (2)
    assert json.loads(first.split("gpuguard: ", 1)[1])["rule_id"] == "miner-binary"
    sink.close()


def test_webhook_survives_a_dead_receiver_and_delivers_when_it_returns():
    receiver = Receiver()
    hook = WebhookOutput(f"http://127.0.0.1:{receiver.port}/alerts", max_backoff_s=0.5, timeout_s=2)
    try:
        started = time.monotonic()
        for n in range(3):
            hook(an_alert(n))                                  # receiver down: queued, never blocks
        assert time.monotonic() - started < 0.5
        assert wait_until(lambda: hook.failures >= 1)          # it tried, and failed
        receiver.start()                                       # the receiver comes back
        assert wait_until(lambda: len(receiver.got) == 3)
        assert [a["id"] for a in receiver.got] == ["a0", "a1", "a2"]   # in order, each once
        assert hook.delivered == 3 and hook.dropped == 0
    finally:
        hook.close()
        if receiver.server:
            receiver.stop()


def test_webhook_queue_is_bounded_and_drops_oldest_first():
    port = free_port()                                        # nobody listens there
    hook = WebhookOutput(f"http://127.0.0.1:{port}/", max_queue=5, max_backoff_s=5, timeout_s=1)
    try:
        for n in range(50):
            hook(an_alert(n))
        assert hook.q.qsize() <= 5 and hook.dropped >= 44
    finally:
        hook._stop.set()


def get(url: str, token: str = "") -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def metric(text: str, name: str, labels: str = "") -> float:
    for line in text.splitlines():
        if line.startswith(name + (("{" + labels + "}") if labels else " ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_collector_metrics_and_page_api_need_a_reader_and_count_what_arrives(tmp_path):
    cfg = CollectorConfig(listen="127.0.0.1:0", store=str(tmp_path / "c.db"), http=f"127.0.0.1:{free_port()}",
                          metrics=f"127.0.0.1:{free_port()}", alert_jsonl=str(tmp_path / "alerts.jsonl"))
    with collector_in_thread(cfg) as app:
        page, metrics = app.http_servers["page"].url, app.http_servers["metrics"].url
        reader, agent_token = issue("reader", "ops-reader"), issue("agent", "agent-x", "x")
        assert get(metrics + "/metrics")[0] == 401
        assert get(metrics + "/metrics", agent_token)[0] == 401              # agents read nothing
        assert get(page + "/api/jobs")[0] == 401
        assert get(page + "/")[0] == 200                                      # the page itself holds no data
        before = get(metrics + "/metrics", reader)[1].decode()
        events = []
        for seq in range(1, 41):
            ev = pb.Event(seq=seq, ts_ns=time.time_ns(), exec=pb.Exec(filename="/opt/xmrig", argv=["/opt/xmrig"]))
            ev.process.pid, ev.process.key = 1000 + seq, f"k{seq}"
            ev.process.comm, ev.process.exe = "xmrig", "/opt/xmrig"
            ev.job.kind, ev.job.id = "slurm", "4242"
            events.append(ev)
        assert stream_events(app.port, "node-7", events) == 40
        app.detector.drain()
        after = get(metrics + "/metrics", reader)[1].decode()
        assert metric(after, "gpuguard_collector_events_stored_total") - \
            metric(before, "gpuguard_collector_events_stored_total") == 40
        assert metric(after, "gpuguard_collector_commit_seconds_count") >= 1
        assert metric(after, "gpuguard_collector_alerts_total", 'rule="miner-binary",severity="critical"') >= 1
        assert metric(after, "gpuguard_collector_agent_connected", 'host="node-7"') in (0.0, 1.0)
        status, body = get(page + "/api/jobs", reader)
        jobs = json.loads(body)["jobs"]
        assert status == 200 and jobs[0]["job"]["id"] == "4242" and int(jobs[0]["alerts"]) >= 1
        status, body = get(page + "/api/timeline?job=4242&kind=exec&limit=10", reader)
        assert status == 200 and len(json.loads(body)["events"]) == 10
        assert json.loads(get(page + "/api/whoami", reader)[1]) == {"name": "ops-reader", "role": "reader"}
        assert (tmp_path / "alerts.jsonl").read_text().count('"miner-binary"') >= 1


def test_an_endpoint_without_a_token_check_stays_on_loopback():
    require_token_or_loopback("127.0.0.1:9101", False, "metrics")
    require_token_or_loopback("0.0.0.0:9101", True, "metrics")
    with pytest.raises(ValueError, match="readable by anyone"):
        require_token_or_loopback("0.0.0.0:9101", False, "metrics")


def test_a_second_collector_on_a_busy_address_refuses_to_start(tmp_path):
    """gRPC's SO_REUSEPORT default let two collectors share one address and split the agents between two stores."""
    import subprocess  # noqa: PLC0415

    from tests.services import CLI, collector  # noqa: PLC0415

    port = free_port()
    first = collector(tmp_path, port).start()
    try:
        (tmp_path / "second").mkdir()
        second = subprocess.run([*CLI, "collector", "--listen", f"127.0.0.1:{port}", "--store",
                                 str(tmp_path / "second" / "c.db")], capture_output=True, text=True, timeout=60)
        assert second.returncode == 1 and "cannot start collector" in second.stderr, second.stderr[-500:]
    finally:
        first.stop()


def test_cli_edges_exit_with_a_message_not_a_traceback(tmp_path):
    import subprocess  # noqa: PLC0415

    from tests.services import CLI  # noqa: PLC0415

    far = subprocess.run([*CLI, "alerts", "--since", "99999999999999999999"], capture_output=True, text=True)
    assert far.returncode == 2 and "out of range" in far.stderr and "Traceback" not in far.stderr
    cidr = subprocess.run([*CLI, "connections", "10.0.0.0/33"], capture_output=True, text=True)
    assert cidr.returncode == 2 and "not an address or a CIDR" in cidr.stderr
    piped = subprocess.run(" ".join([*CLI, "--help"]) + " | head -1", shell=True, capture_output=True, text=True)
    assert piped.returncode == 0 and "Traceback" not in piped.stderr


def test_a_syslog_receiver_that_never_reads_costs_alerts_not_detection():
    """A TCP syslog receiver that accepts and never reads: publishing stays a queue put (the oldest alerts are
    dropped and counted); before, the send blocked detection with the policy lock held."""
    from collector.outputs import Detached  # noqa: PLC0415

    sink = socket.create_server(("127.0.0.1", 0))
    held = []
    threading.Thread(target=lambda: held.append(sink.accept()), daemon=True).start()
    out = Detached(SyslogOutput(f"tcp://127.0.0.1:{sink.getsockname()[1]}"), max_queue=100)
    publisher = AlertPublisher(FakeStore(), [out])
    done = threading.Event()

    def publish():
        for i in range(3000):
            alert = an_alert(i)
            alert.description = "x" * 2000               # 6 MB in all: far beyond the socket buffers
            publisher.record(alert)
        done.set()

    threading.Thread(target=publish, daemon=True).start()
    try:
        assert done.wait(60), "publishing blocked on the receiver"
        assert publisher.published == 3000 and out.dropped > 0 and out.q.qsize() <= 100
        # the stall is itself an alert, once per episode, through the outputs that work and the store: keep
        # alerts coming until the receiver's socket buffers are full and a send hangs
        def stalled() -> bool:
            alert = an_alert(int(time.monotonic() * 1000))
            alert.description = "y" * 60_000
            publisher.record(alert)
            time.sleep(0.01)
            return out.stalled_s() > 0.5
        assert wait_until(stalled, timeout=60)
        assert publisher.check_outputs(stall_s=0.5) == ["SyslogOutput"]
        assert publisher.check_outputs(stall_s=0.5) == ["SyslogOutput"]
        raised = [a for a in publisher.store.alerts if a.rule_id == "alert-output-stalled"]
        assert len(raised) == 1 and raised[0].matched["output"] == "SyslogOutput"
    finally:
        out._stop.set()
        sink.close()


def test_idle_http_connections_cannot_pile_up_threads():
    """1,500 idle unauthenticated connections made 1,514 threads: connections now live on one event loop (no
    thread each), at most MAX_CONNECTIONS at once, the rest get a 503 at accept, and the server still answers."""
    from gpuguard.httpd import MAX_CONNECTIONS, WORKERS, HttpServer  # noqa: PLC0415

    def app(_environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok\n"]

    server = HttpServer("127.0.0.1:0", app)
    before = threading.active_count()
    idle = []
    for _ in range(2 * MAX_CONNECTIONS):
        try:
            idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=2))
        except OSError:
            break                                                           # the listen backlog is full
    try:
        assert len(idle) > MAX_CONNECTIONS                                  # more than it may serve at once
        assert wait_until(lambda: server.accepted >= len(idle))      # every one reached the server
        assert threading.active_count() <= before + WORKERS       # no thread per connection
        assert server.rejected >= len(idle) - MAX_CONNECTIONS
        assert idle[-1].recv(100).startswith(b"HTTP/1.1 503")      # the last ones are told why
    finally:
        for s in idle:
            s.close()
    assert wait_until(lambda: get(server.url + "/")[0] == 200)
    server.close()


def test_a_slow_header_client_is_cut_and_a_keep_alive_connection_serves_many(monkeypatch):
    from gpuguard import httpd  # noqa: PLC0415

    monkeypatch.setattr(httpd, "HEADER_TIMEOUT_S", 0.5)

    def app(_environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok\n"]

    server = httpd.HttpServer("127.0.0.1:0", app)
    try:
        slow = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        slow.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")               # ...and the rest never comes
        assert slow.recv(100) == b""                                    # closed by the server
        assert server.timed_out == 1
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as keep:
            for _ in range(3):                                          # one connection, three answers
                keep.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert keep.recv(200).startswith(b"HTTP/1.1 200 OK")
            keep.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 20_000 + b"\r\n\r\n")
            assert keep.recv(200).startswith(b"HTTP/1.1 431")            # a head over the limit
        slow.close()
    finally:
        server.close()


def test_a_private_directory_an_operator_widened_is_reported(tmp_path, caplog):
    from gpuguard.private import check_private  # noqa: PLC0415

    private, opened = tmp_path / "private", tmp_path / "opened"
    private.mkdir(mode=0o700)
    opened.mkdir()
    opened.chmod(0o755)
    assert check_private(private / "collector.db", "the event store's directory") == ""
    with caplog.at_level(logging.WARNING, logger="gpuguard.private"):
        said = check_private(opened / "collector.db", "the event store's directory")
    assert "mode 0755" in said and f"chmod 700 {opened}" in said and said in caplog.text


def test_every_rules_alert_counter_and_the_process_series_exist_before_anything_happens(tmp_path):
    """A labelled counter that appears only at its first increment has no earlier sample, so the 'critical
    alert' rule (an increase) misses the first alert after a restart: every rule and kind starts at 0."""
    from prometheus_client import generate_latest  # noqa: PLC0415

    from collector.app import CollectorApp, CollectorConfig  # noqa: PLC0415
    from collector.metrics import collector_registry  # noqa: PLC0415
    from gpuguard import __version__  # noqa: PLC0415

    app = CollectorApp(CollectorConfig(store=str(tmp_path / "c.db")))
    text = generate_latest(collector_registry(app)).decode()
    for rule in app.policy.ruleset.rules.values():
        if rule.action != "signal":
            assert f'gpuguard_collector_alerts_total{{rule="{rule.id}",severity="{rule.severity}"}} 0.0' in text
    assert "gpuguard_collector_process_resident_memory_bytes" in text
    assert f'gpuguard_collector_build_info{{version="{__version__}"}} 1.0' in text


def test_agent_counters_by_kind_and_action_start_at_zero():
    from types import SimpleNamespace  # noqa: PLC0415

    from prometheus_client import generate_latest  # noqa: PLC0415

    from agent.metrics import agent_registry  # noqa: PLC0415
    from agent.runtime import CaptureStats  # noqa: PLC0415

    probes = SimpleNamespace(lost_counts=dict)
    agent = SimpleNamespace(capture=SimpleNamespace(stats=CaptureStats(), probes=probes), spool=None, shipper=None,
                            enforcer=None)
    text = generate_latest(agent_registry(agent)).decode()
    for line in ('gpuguard_agent_events_total{kind="exec"} 0.0', 'gpuguard_agent_events_total{kind="capture_loss"} 0.0',
                 'gpuguard_agent_kernel_lost_events_total{kind="connect"} 0.0',
                 'gpuguard_agent_enforcement_actions_total{action="kill_escape"} 0.0'):
        assert line in text, line
    assert "gpuguard_agent_process_cpu_seconds_total" in text

"""The CLI's promises: --help that explains, clear errors, exit codes that mean something."""

from __future__ import annotations

import socket
import subprocess

import pytest

from tests.services import CLI, ROOT


def gg(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=ROOT, timeout=60, **kw)


def test_help_lists_every_command_and_exit_codes():
    out = gg("--help")
    assert out.returncode == 0
    for cmd in ("agent", "collector", "up", "jobs", "timeline", "tree", "alerts", "policy", "demo"):
        assert cmd in out.stdout
    assert "Exit codes" in out.stdout
    assert "--subtree" in gg("timeline", "--help").stdout


def test_bad_config_is_exit_2_and_names_the_key(tmp_path):
    bad = tmp_path / "agent.toml"
    bad.write_text('[agent]\nbatch_max_events = "many"\n')
    out = gg("agent", "--config", str(bad))
    assert out.returncode == 2
    assert "batch_max_events must be a number" in out.stderr
    bad.write_text("[agent]\nno_such_setting = 1\n")
    out = gg("agent", "--config", str(bad))
    assert out.returncode == 2 and "unknown agent setting 'no_such_setting'" in out.stderr


def test_unreachable_collector_is_exit_4():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = gg("jobs", "--collector", f"127.0.0.1:{port}", "--timeout", "2")
    assert out.returncode == 4 and "UNAVAILABLE" in out.stderr


def test_agent_without_root_is_exit_3_with_the_reason(monkeypatch, caplog, tmp_path):
    import agent.loader  # noqa: PLC0415
    from agent.config import AgentConfig  # noqa: PLC0415
    from agent.main import EXIT_PREREQ, run_agent  # noqa: PLC0415

    monkeypatch.setattr(agent.loader.os, "geteuid", lambda: 1000)   # as an unprivileged user would be
    cfg = AgentConfig(spool_dir=str(tmp_path / "spool"), state_dir=str(tmp_path / "state"), enforce=False)
    assert run_agent(cfg, "") == EXIT_PREREQ
    assert "must run as root" in caplog.text


def test_hosts_forget_drops_a_decommissioned_host_admin_only_and_not_while_connected(tmp_path):
    import time  # noqa: PLC0415

    from gpuguard.v1 import events_pb2 as pb  # noqa: PLC0415
    from lab import free_port  # noqa: PLC0415
    from tests.services import FakeAgent, cli_json, collector, issue  # noqa: PLC0415

    port = free_port()
    col = collector(tmp_path, port).start()
    try:
        node = FakeAgent(port, "decommissioned-node")
        node.ship([pb.Event(ts_ns=time.time_ns(), exit=pb.Exit(code=0))])
        addr = ["--collector", f"127.0.0.1:{port}"]
        busy = subprocess.run([*CLI, "hosts", "forget", "decommissioned-node", *addr], capture_output=True,
                              text=True, cwd=ROOT, timeout=60)
        assert busy.returncode == 2 and "connected" in busy.stderr          # its agent is up: refused
        node.close()
        assert node.ended.wait(10)
        reader = tmp_path / "reader.token"
        reader.write_text(issue("reader", "viewer"))
        denied = subprocess.run([*CLI, "hosts", "forget", "decommissioned-node", *addr, "--token-file", str(reader)],
                                capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert denied.returncode == 6                                       # readers cannot forget hosts
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:                                  # the collector saw the stream end
            done = subprocess.run([*CLI, "hosts", "forget", "decommissioned-node", *addr], capture_output=True,
                                  text=True, cwd=ROOT, timeout=60)
            if done.returncode == 0:
                break
            time.sleep(0.2)
        assert done.returncode == 0, done.stderr
        assert "decommissioned-node" not in {h["host_id"] for h in cli_json(port, "hosts").get("hosts", [])}
        again = subprocess.run([*CLI, "hosts", "forget", "decommissioned-node", *addr], capture_output=True,
                               text=True, cwd=ROOT, timeout=60)
        assert again.returncode == 5 and "no such host" in again.stderr
        audit = cli_json(port, "audit")["entries"]
        assert [e["ok"] for e in audit if e["action"] == "hosts.forget"][-2:] == [True, False]
    finally:
        col.stop()


def test_an_agent_collector_that_is_not_an_address_is_exit_2_at_start():
    out = subprocess.run([*CLI, "agent", "--collector", "not an address", "--quiet"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 2 and "HOST:PORT" in out.stderr, out.stderr[-500:]


def test_nothing_found_is_5_and_a_bad_policy_file_is_named_in_the_error(tmp_path):
    from lab import free_port  # noqa: PLC0415
    from tests.services import collector  # noqa: PLC0415

    port = free_port()
    col = collector(tmp_path, port).start()
    try:
        addr = ["--collector", f"127.0.0.1:{port}"]
        none = subprocess.run([*CLI, "alerts", "--rule", "no-such-rule", *addr], capture_output=True, text=True,
                              cwd=ROOT, timeout=60)
        assert none.returncode == 5, none.stderr
        bad = tmp_path / "site-rules.yaml"
        bad.write_text("rules:\n  - id: r\n    description: d\n    event: connect\n"
                       "    match: {dport_in: [70000]}\n    action: alert\n")
        out = subprocess.run([*CLI, "policy", "apply", str(bad), *addr], capture_output=True, text=True, cwd=ROOT,
                             timeout=60)
        assert out.returncode != 0 and "site-rules.yaml:5" in out.stderr + out.stdout, out.stderr
    finally:
        col.stop()


def test_up_can_serve_the_page_and_metrics_too():
    out = subprocess.run([*CLI, "up", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0 and "--http" in out.stdout and "--metrics" in out.stdout


def test_packet_socket_watch_can_be_turned_off_by_file_or_flag(tmp_path, caplog):
    """On by default; `packet_sockets = false` or --no-packet-sockets leaves the send/receive probes unattached and
    says what that gives up (the loader's choice, checked without a kernel: nothing is asked of BPF)."""
    from agent.config import load_config  # noqa: PLC0415
    from agent.loader import CaptureProbes  # noqa: PLC0415

    assert load_config(None, {}).packet_sockets is True
    conf = tmp_path / "agent.toml"
    conf.write_text("[agent]\npacket_sockets = false\n")
    assert load_config(str(conf), {}).packet_sockets is False
    assert "--no-packet-sockets" in gg("agent", "--help").stdout

    class NoBpf:
        def attach_raw_tracepoint(self, **_kw):
            raise AssertionError("attached although turned off")

    probes = CaptureProbes(bpf=NoBpf(), watch_packet_sockets=False)
    with caplog.at_level("WARNING"):
        probes.attach_packet_use()
    assert not probes.packet_sockets_seen and "packet sockets are not watched" in caplog.text


@pytest.mark.parametrize(("key", "flag", "default", "other"), [
    ("spool_fsync_ms", "--spool-fsync-ms", 200, 0),      # agent/spool.py says what it trades
    ("drain_max_ms", "--drain-max-ms", 250, 100),        # agent/pacing.py
])
def test_an_agent_interval_comes_from_file_or_flag(key, flag, default, other):
    """Its default, the value a flag or the file sets, the flag in --help, the deploy file's value; a word is
    refused by the setting's name."""
    from pathlib import Path  # noqa: PLC0415

    from agent.config import ConfigError, load_config  # noqa: PLC0415

    assert getattr(load_config(None, {}), key) == default
    assert getattr(load_config(None, {key: other}), key) == other
    assert flag in gg("agent", "--help").stdout
    deploy = load_config(str(Path(__file__).resolve().parent.parent / "deploy" / "agent.toml"), {})
    assert getattr(deploy, key) == default
    with pytest.raises(ConfigError, match=key):
        load_config(None, {key: "soon"})


def test_the_agent_freezes_start_up_objects_out_of_garbage_collection():
    """After start-up the collector leaves what start-up made alone and runs less often (agent/main.py)."""
    import gc  # noqa: PLC0415

    from agent.main import GC_THRESHOLDS, tune_gc  # noqa: PLC0415

    before = gc.get_threshold()
    try:
        kept = [object() for _ in range(10)]
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS and gc.get_freeze_count() > 0 and kept
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)

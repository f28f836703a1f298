"""The CLI's promises: --help that explains, clear errors, exit codes that mean something."""

from __future__ import annotations

import socket
import subprocess

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

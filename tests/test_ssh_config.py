"""Forwards hidden in the ssh configuration (not in argv) are found as ssh itself would read them."""

from __future__ import annotations

from pathlib import Path

from agent.ssh_config import ConfigReader, host_matches, parse_argv, ssh_forwards
from collector.rules.engine import Engine
from collector.rules.loader import load_ruleset, rule_texts
from gpuguard.v1 import events_pb2 as pb


def test_argv_parsing_finds_config_destination_and_options():
    assert parse_argv(["ssh", "-F", "cfg", "-N", "-p", "22", "user@gw.example"]) == ("cfg", "gw.example", [])
    assert parse_argv(["ssh", "-Fcfg", "-oRemoteForward=1 h:2", "host", "uptime"]) == ("cfg", "host",
                                                                                      ["RemoteForward=1 h:2"])
    assert parse_argv(["ssh", "-NfT", "-i", "key", "host"]) == ("", "host", [])


def test_host_patterns_with_negation():
    assert host_matches(["*.example", "!db.example"], "gw.example")
    assert not host_matches(["*.example", "!db.example"], "db.example")
    assert not host_matches(["other"], "gw.example")


def write(root: Path, path: str, text: str) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


def test_user_config_with_include_and_host_blocks(tmp_path):
    write(tmp_path, "/home/u/.ssh/config", "Include conf.d/*.conf\nHost quiet\n  User x\n")
    write(tmp_path, "/home/u/.ssh/conf.d/tunnel.conf", "Host gw.*\n  RemoteForward 8080 localhost:22\n"
                                                      "Host *\n  ServerAliveInterval 30\n")
    write(tmp_path, "/etc/ssh/ssh_config", "Host *\n  DynamicForward 1080\n")
    reader = ConfigReader("/home/u", tmp_path)
    found = reader.forwards("/home/u/.ssh/config", "gw.example", "/home/u/.ssh")
    assert found == ["RemoteForward 8080 localhost:22 (/home/u/.ssh/conf.d/tunnel.conf:2)"]
    assert reader.forwards("/home/u/.ssh/config", "quiet", "/home/u/.ssh") == []
    system = ConfigReader("/home/u", tmp_path).forwards("/etc/ssh/ssh_config", "any", "/etc/ssh")
    assert system == ["DynamicForward 1080 (/etc/ssh/ssh_config:2)"]


def test_minus_F_replaces_the_default_files_and_o_counts(tmp_path):
    cfg = tmp_path / "cfg"
    cfg.write_text("Tunnel=point-to-point\nPermitLocalCommand yes\n")
    found = ssh_forwards(["ssh", "-F", str(cfg), "-o", "RemoteForward 2222 localhost:22", "h"], uid=0)
    assert found == ["RemoteForward 2222 localhost:22 (-o)", f"Tunnel point-to-point ({cfg}:1)",
                     f"PermitLocalCommand yes ({cfg}:2)"]


def test_include_loops_and_huge_files_are_bounded(tmp_path):
    write(tmp_path, "/home/u/.ssh/config", "Include config\n" + "# x\n" * 100_000)
    assert ConfigReader("/home/u", tmp_path).forwards("/home/u/.ssh/config", "h", "/home/u/.ssh") == []


def test_the_rule_fires_on_a_clean_argv_with_a_config_forward():
    engine = Engine(load_ruleset(rule_texts()))
    ev = pb.Event(seq=1, exec=pb.Exec(filename="/usr/bin/ssh", argv=["ssh", "-N", "gw"],
                                      ssh_forwards=["RemoteForward 8080 localhost:22 (/root/.ssh/config:2)"]))
    ev.process.comm, ev.process.exe, ev.job.kind, ev.job.id = "ssh", "/usr/bin/ssh", "slurm", "1"
    hits = {m.rule.id: m.matched for m in engine.evaluate("h", ev, None)}
    assert "ssh-config-forward" in hits and "RemoteForward 8080" in hits["ssh-config-forward"]["ssh_config_forward"]
    assert "ssh-reverse-tunnel" not in hits                    # argv alone says nothing

"""The configuration files an exec names are read as that process sees them, bounded, and only for what it could
read itself (agent/config_peek.py). Real processes and files; no BPF."""

from __future__ import annotations

import json
import os
import subprocess
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config_peek import MAX_LINE, MAX_LINES, READS_PER_DRAIN, ConfigPeek, candidate_paths, telling_lines

XMRIG = {"autosave": True, "cpu": {"enabled": True}, "donate-level": 1,
         "pools": [{"url": "stratum+tcp://pool.example:3333", "user": "4" + "A" * 94, "pass": "x", "tls": False}]}


@pytest.fixture
def in_dir(tmp_path):
    """A process whose working directory is tmp_path (as a job's would be): /proc/PID/cwd leads there."""
    proc = subprocess.Popen(["sleep", "30"], cwd=tmp_path)
    yield proc.pid, tmp_path
    proc.kill()
    proc.wait(5)


def test_which_arguments_name_configuration_files():
    assert candidate_paths(["./x", "-c", "cfg", "--config=a.ini", "run.yaml", "-v"], "./x") == ["cfg", "a.ini",
                                                                                                "run.yaml"]
    assert candidate_paths(["python3", "-c", "print(1)"], "/usr/bin/python3") == []       # code, not a file
    assert candidate_paths(["python3", "/tmp/m.py", "-c", "cfg"], "/usr/bin/python3") == ["cfg"]   # the script's
    assert candidate_paths(["/tmp/.k/x"], "/tmp/.k/x") == ["/tmp/.k/config.json"]          # XMRig's default
    assert candidate_paths(["ls"], "/usr/bin/ls") == []                                     # not in system dirs
    assert candidate_paths(["python3", "w.py"], "w.py") == ["./config.json"]                # a script, the same
    assert candidate_paths(["python3", "-m", "http.server"], "/usr/bin/python3") == []


def test_a_miner_config_named_in_argv_is_reported(in_dir):
    pid, cwd = in_dir
    (cwd / "config.json").write_text(json.dumps(XMRIG, indent=2))
    lines = ConfigPeek().lines(pid, 0, 0, ["./x", "-c", "config.json"], "./x")
    assert any('"url": "stratum+tcp://pool.example:3333"' in line for line in lines), lines
    assert any('"donate-level": 1' in line for line in lines)
    assert all(line.startswith("config.json:") for line in lines)
    assert not any('"autosave"' in line for line in lines)                  # the rest of the file stays out


def test_an_rclone_remotes_type_is_reported(in_dir):
    """What a remote is lives in the INI section's ``type =``; the JSON key "type" of other files stays out."""
    pid, cwd = in_dir
    (cwd / ".rc.conf").write_text("[r]\ntype = mega\nuser = someone@example.com\n\n[local]\nnote = x\n")
    (cwd / "t.json").write_text('{\n  "type": "module"\n}\n')
    lines = ConfigPeek().lines(pid, 0, 0, ["rclone", "copy", "d", "r:b", "--config", ".rc.conf"], "/usr/bin/rclone")
    assert ".rc.conf:2: type = mega" in lines and not any("note" in line for line in lines), lines
    assert ConfigPeek().lines(pid, 0, 0, ["./x", "-c", "t.json"], "./x") == []


def test_minified_json_is_looked_at_piece_by_piece(in_dir):
    pid, cwd = in_dir
    (cwd / "c.json").write_text(json.dumps({"pad": "p" * 2000, **XMRIG}))     # one line, longer than MAX_LINE
    lines = ConfigPeek().lines(pid, 0, 0, ["./x", "--config", "c.json"], "./x")
    assert any("stratum+tcp://pool.example:3333" in line for line in lines)
    assert all(len(line) <= MAX_LINE + 20 for line in lines)


def test_absolute_paths_are_the_processs_own(in_dir):
    pid, cwd = in_dir
    (cwd / "frpc.toml").write_text('serverAddr = "198.51.100.7"\nserverPort = 7000\n')
    lines = ConfigPeek().lines(pid, 0, 0, ["frpc", "-c", str(cwd / "frpc.toml")], "/tmp/frpc")
    assert lines == ['frpc.toml:1: serverAddr = "198.51.100.7"', "frpc.toml:2: serverPort = 7000"]


def test_a_file_the_process_could_not_read_is_not_read_for_it(in_dir):
    """The agent reads as root; a job must not get lines of /etc/shadow-like files through it."""
    pid, cwd = in_dir
    secret = cwd / "secret.conf"
    secret.write_text("token = abc\n")
    os.chown(secret, 0, 0)
    secret.chmod(0o600)
    assert ConfigPeek().lines(pid, 1000, 1000, ["./x", "-c", "secret.conf"], "./x") == []
    assert ConfigPeek().lines(pid, 0, 0, ["./x", "-c", "secret.conf"], "./x") == ["secret.conf:1: token = abc"]


def test_a_symlink_or_dotdot_never_leads_out_of_the_processs_view(in_dir, tmp_path_factory):
    """Resolved by the agent, a symlink would name the agent's file, not the process's: a container's
    config.json -> /etc/shadow would hand the host's lines to a process running as root in it."""
    pid, cwd = in_dir
    outside = tmp_path_factory.mktemp("outside") / "secret.conf"
    outside.write_text("token = host-secret\n")
    (cwd / "config.json").symlink_to(outside)
    (cwd / "sub").symlink_to(outside.parent)
    (cwd / "plain.conf").write_text("token = mine\n")
    peek = ConfigPeek()
    assert peek.lines(pid, 0, 0, ["./x", "-c", "config.json"], "./x") == []
    assert peek.lines(pid, 0, 0, ["./x", "-c", "sub/secret.conf"], "./x") == []
    assert peek.lines(pid, 0, 0, ["./x", "-c", f"../{outside.parent.name}/secret.conf"], "./x") == []
    assert peek.lines(pid, 0, 0, ["./x", "-c", "./plain.conf"], "./x") == ["plain.conf:1: token = mine"]


def test_a_fifo_neither_blocks_nor_is_read(in_dir):
    pid, cwd = in_dir
    os.mkfifo(cwd / "cfg.json")
    done = threading.Event()
    result = []
    threading.Thread(target=lambda: (result.append(ConfigPeek().lines(pid, 0, 0, ["./x", "-c", "cfg.json"], "./x")),
                                     done.set()), daemon=True).start()
    assert done.wait(5), "the read blocked on a FIFO"
    assert result == [[]]


def test_reads_are_bounded_per_drain_and_cached_per_content(in_dir):
    pid, cwd = in_dir
    peek = ConfigPeek()
    for i in range(READS_PER_DRAIN + 4):
        (cwd / f"c{i}.conf").write_text(f"server = h{i}:3333\n")
    got = [peek.lines(pid, 0, 0, ["./x", "-c", f"c{i}.conf"], "./x") for i in range(READS_PER_DRAIN + 4)]
    assert all(got[:READS_PER_DRAIN]) and not any(got[READS_PER_DRAIN:])
    assert peek.skipped == 4
    assert peek.lines(pid, 0, 0, ["./x", "-c", "c0.conf"], "./x") == got[0]      # cached: no budget needed
    peek.new_drain()
    assert peek.lines(pid, 0, 0, ["./x", "-c", f"c{READS_PER_DRAIN}.conf"], "./x")


@given(st.binary(max_size=4096))
def test_whatever_a_file_holds_the_lines_are_bounded_text(data):
    lines = telling_lines("f", data + b"\nurl = h:3333\x00\n" * 40)
    assert len(lines) <= MAX_LINES
    for line in lines:
        line.encode("utf-8")                                   # valid on the wire
        assert "\x00" not in line and len(line) <= MAX_LINE + 20

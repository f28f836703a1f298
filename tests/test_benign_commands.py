"""Ordinary GPU-node work raises nothing: every built-in rule is checked against the command lines of a training
node (tests/corpus/benign_commands.txt), not only against the attack it was written for (pure logic, no kernel).

A line with shell syntax (pipes, redirections, ;, &&, $, quotes around several words) reaches the kernel as
``sh -c LINE``; a plain command line is exec'd by the job's shell as its own argv - each is evaluated as it would be
seen."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from collector.rules.engine import Engine
from collector.rules.loader import load_ruleset, rule_texts
from tests.test_rule_corpus import exec_event

LINES = [line for line in (Path(__file__).parent / "corpus" / "benign_commands.txt").read_text().splitlines()
         if line.strip() and not line.startswith("#")]
SHELL_SYNTAX = set("|&;<>$`(){}*")
ENGINE = Engine(load_ruleset(rule_texts()))


def as_executed(line: str) -> list[str]:
    if SHELL_SYNTAX & set(line):
        return ["/bin/sh", "-c", line]
    return shlex.split(line)


@pytest.mark.parametrize("line", LINES)
def test_training_node_command_raises_nothing(line):
    fired = {m.rule.id for m in ENGINE.evaluate("node-1", exec_event({"argv": as_executed(line)}), None)}
    assert fired == set(), f"{sorted(fired)} fired on an ordinary command: {line}"


def test_the_list_is_long_enough_to_mean_something():
    assert len(LINES) >= 100

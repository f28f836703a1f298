"""Ordinary GPU-node work raises nothing, and known attack lines raise something: every built-in rule is checked
against the command lines of a training node (tests/corpus/benign_commands.txt), not only against the attack it was
written for, and the attack lines of earlier held-out passes (tests/corpus/attack_commands.txt) stay caught (pure
logic, no kernel).

A line with shell operators outside quotes (pipes, redirections, ;, &&, a subshell) reaches the kernel as
``sh -c LINE``; a simple command is exec'd by the job's shell as its own argv - each is evaluated as it would be
seen."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from collector.rules.engine import Engine
from collector.rules.loader import load_ruleset, rule_texts
from tests.test_rule_corpus import exec_event

CORPUS = Path(__file__).parent / "corpus"


def lines_of(name: str) -> list[str]:
    return [line for line in (CORPUS / name).read_text().splitlines() if line.strip() and not line.startswith("#")]


LINES = lines_of("benign_commands.txt")
ATTACKS = lines_of("attack_commands.txt")
OPERATOR_CHARS = set("|&;<>()")
ENGINE = Engine(load_ruleset(rule_texts()))


def fired(argv: list[str]) -> set[str]:
    return {m.rule.id for m in ENGINE.evaluate("node-1", exec_event({"argv": argv}), None)}


def raised(argv: list[str]) -> set[str]:
    return raised_by(exec_event({"argv": argv}))


def raised_by(ev) -> set[str]:
    """The rules an event fires that raise something: a signal only feeds correlations (an rsync to host:path is
    one), so it is neither a catch nor noise."""
    return {m.rule.id for m in ENGINE.evaluate("node-1", ev, None) if m.rule.action != "signal"}


def as_executed(line: str) -> list[str]:
    lexer = shlex.shlex(line.replace("\\;", "_"), posix=True, punctuation_chars=True)   # find's \; is no operator
    lexer.whitespace_split = True
    tokens = list(lexer)
    if any(t and set(t) <= OPERATOR_CHARS for t in tokens) or "`" in line or "$(" in line:
        return ["/bin/sh", "-c", line]
    return shlex.split(line)


@pytest.mark.parametrize("line", LINES)
def test_training_node_command_raises_nothing(line):
    """As a job script's shell runs it and as an agent's tool runs it (sh -c LINE): quiet both ways."""
    hits = raised(as_executed(line)) | raised(["/bin/sh", "-c", line])
    assert hits == set(), f"{sorted(hits)} fired on an ordinary command: {line}"


@pytest.mark.parametrize("line", ATTACKS)
def test_attack_line_raises_something(line):
    """As an agent's tool runs it (sh -c LINE) or as a job script's shell execs it: either is enough."""
    assert raised(["/bin/sh", "-c", line]) | raised(as_executed(line)), f"nothing raised on: {line}"


def test_the_lists_are_long_enough_to_mean_something():
    assert len(LINES) >= 100 and len(ATTACKS) >= 50

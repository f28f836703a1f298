"""The match-key registry is the one place a key is defined: the loader, the engine and the kernel lowering all
read it, every key checks its value and compiles, and a new key cannot be half-added."""

from __future__ import annotations

import pytest

from collector.policy import KERNEL_CONNECT_KEYS, KERNEL_EXEC_KEYS, KERNEL_PAYLOAD_KEYS
from collector.rules import keys
from collector.rules.context import EventView, JobContext
from collector.rules.loader import EVENTS, MATCH_KEYS, RuleError, load_ruleset, rule_texts
from gpuguard.v1 import events_pb2 as pb

GOOD = {keys._true: True, keys._regex: "x+", keys._letters: "RDw", keys._payload: {"text": "SSH-", "offset": 0},
        keys._strings: ["x"], keys._ports: [3333], keys._cidrs: ["10.0.0.0/8"], keys._hosts: ["pool.example"],
        keys._zones: ["nanopool.org"], keys._traits: ["image_nolink"], keys._qtypes: [None, "txt"],
        keys._argv_literals: ["stratum+", ["socket", "os.dup2"]], keys._percent: 10, keys._count: 24,
        keys._regex_any: ['^kworker', 'x+'], keys._label_length: 32, keys._signals: ["STOP", "SIGKILL", 15]}
BAD = {keys._true: "yes", keys._regex: "(", keys._letters: "-R", keys._payload: {"text": "x", "offset": 9999},
       keys._strings: [], keys._ports: [70000], keys._cidrs: ["10.0.0.0/33"], keys._hosts: ["*.pool"],
       keys._zones: ["a b"], keys._traits: ["teleport"], keys._qtypes: "A", keys._argv_literals: ["abc"],
       keys._percent: 100, keys._count: 1, keys._regex_any: ['('], keys._label_length: 64,
       keys._signals: ["SIGNOPE"]}


class _Rule:
    id, source, line = "t", "test", 1


def test_the_loader_knows_exactly_the_registered_keys():
    assert MATCH_KEYS == {name: k.events for name, k in keys.REGISTRY.items()}
    assert all(set(k.events) <= set(EVENTS) for k in keys.REGISTRY.values())
    builtin = load_ruleset(rule_texts())
    used = {k for r in builtin.rules.values() for part in (r.match, r.unless) for k in part}
    assert used <= set(keys.REGISTRY)


@pytest.mark.parametrize("name", sorted(keys.REGISTRY))
def test_every_key_checks_its_value_and_compiles(name):
    entry = keys.REGISTRY[name]
    assert entry.check in GOOD, f"{name}: its value kind has no sample here"
    value = entry.check(GOOD[entry.check])
    matcher = entry.compile(value, _Rule(), None)
    for event in entry.events:                       # an empty event of each kind: no crash, no match invented
        body = "enforcement" if event in keys.KERNEL_REPORTED else event
        ev = pb.Event()
        getattr(ev, body).SetInParent()
        result = matcher(EventView(ev), JobContext())
        assert result is None or isinstance(result, str)
    with pytest.raises(keys.KeyValueError):
        entry.check(BAD[entry.check])


def test_a_bad_value_names_the_file_line_and_field():
    text = "rules:\n  - id: r\n    description: d\n    severity: low\n    event: connect\n" \
           "    match: {dport_in: [70000]}\n    action: alert\n"
    with pytest.raises(RuleError, match=r"bad\.yaml:6: rule r\.match\.dport_in: ports must be integers"):
        load_ruleset(rule_texts(extra=(("bad.yaml", text),)))


def test_the_kernel_lowering_reads_the_registry():
    assert KERNEL_EXEC_KEYS == {"exe_name_in", "argv_short_option_in", "stdio_socket", "stdio_network",
                                "stdio_pty_network", "argv_has", "argv_uninspectable"}
    assert KERNEL_PAYLOAD_KEYS == set(keys.FINGERPRINT_KEYS) == {"payload", "stratum"}
    assert KERNEL_CONNECT_KEYS == {"dport_in", "daddr_cidr_in", "proto_in"}


def test_argv_addresses_are_hosts_not_versions_and_outside_the_networks_given():
    """argv_address_not_in: a bare address a program is told to reach, in any form, outside the cluster's
    networks; version pins and link-local or multicast addresses are not hosts out there."""
    found = [text for text, _ in keys.argv_addresses(
        "curl http://203.0.113.9:80/x u@198.51.100.7 /dev/tcp/192.0.2.1/4 --host=8.8.8.8 10.0.0.1 "
        "torch==2.3.0.1 v1.2.3.4 1.2.3.4.5 pkg>=1.2.3.4")]
    assert found == ["203.0.113.9", "198.51.100.7", "192.0.2.1", "8.8.8.8", "10.0.0.1"]
    matcher = keys.compile_matcher("argv_address_not_in", ["10.0.0.0/8", "127.0.0.0/8"], _Rule)

    def seen(*argv):
        return matcher(EventView(pb.Event(exec=pb.Exec(argv=list(argv)))), JobContext())
    assert seen("curl", "http://10.0.0.5/x", "http://127.0.0.1:8/") is None
    assert seen("curl", "http://169.254.169.254/", "http://224.0.0.1/") is None
    assert seen("curl", "http://10.0.0.5/x", "http://203.0.113.9/y") == "203.0.113.9"


def test_a_key_that_remembers_counts_only_what_the_rules_other_keys_let_through():
    """hosts_on_port_at_least written first still sees only the outside hosts: the engine evaluates keys that read
    the job's context after the others, whatever order the rule file gives."""
    from collector.correlate import Correlator  # noqa: PLC0415
    from collector.rules.engine import Engine  # noqa: PLC0415

    text = ("rules:\n  - id: t-spread\n    description: t\n    event: connect\n    action: alert\n"
            "    match: {hosts_on_port_at_least: 3, daddr_not_in: [10.0.0.0/8], dport_in: [22]}\n")
    rs = load_ruleset([("t.yaml", text)])
    engine, correlator = Engine(rs), Correlator(rs)

    def connect(i: int, daddr: str) -> list[str]:
        ev = pb.Event(seq=i, ts_ns=i * 10**9, connect=pb.Connect(daddr=daddr, dport=22, proto="tcp"))
        ev.job.kind, ev.job.id, ev.process.key, ev.process.pid = "slurm", "5", "k-1", 1
        return [m.rule.id for m in engine.evaluate("h", ev, correlator.context("h", ev))]

    inside = [connect(i, f"10.0.0.{i}") for i in range(1, 6)]          # five cluster hosts: never counted
    outside = [connect(10 + i, f"198.51.100.{i}") for i in range(1, 4)]
    assert inside == [[]] * 5 and outside == [[], [], ["t-spread"]], (inside, outside)

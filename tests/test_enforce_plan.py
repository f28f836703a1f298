"""The enforcement planner, without a kernel: policy + the host's cgroups -> map entries, switches, attachments."""

from __future__ import annotations

import re
import struct
from pathlib import Path

from agent.enforce_plan import (
    DENY_PROGRAMS,
    PAYLOAD_PROGRAM,
    SOCKET_KINDS,
    TRAIT_BITS,
    Planner,
    cgroup_level,
    deny_key,
    kill_key,
)
from agent.jobs import DEFAULT_PATTERNS, match_job
from collector.rules.loader import load_ruleset, rule_texts
from collector.rules.lowering import compile_policy
from gpuguard.v1 import policy_pb2 as ppb
from gpuguard.vocab import EXEC_TRAIT_BITS

PATHS = {1: "/", 10: "/slurm", 11: "/slurm/uid_0", 12: "/slurm/uid_0/job_7", 13: "/slurm/uid_0/job_7/step_0",
         14: "/slurm/uid_0/job_8", 20: "/system.slice", 21: "/system.slice/sshd.service"}


def planner() -> Planner:
    return Planner(lambda path: match_job(path, DEFAULT_PATTERNS), name_key=0x1234,
                   executables=lambda name: {(8, 100 + len(name))}, resolvers=lambda: ["127.0.0.53"])


def test_job_scoped_entries_sit_on_the_job_and_kind_entries_on_the_kinds_parent():
    policy = ppb.Policy(version=3, kill=[ppb.KillBinary(rule_id="r-kill", comm="xmrig",
                                                        scope=ppb.Scope(job_kinds=["slurm"]))],
                        deny=[ppb.DenyDestination(rule_id="r-deny", cidr="203.0.113.0/24", port=0,
                                                  scope=ppb.Scope(job_ids=["7"]))])
    plan = planner().plan(policy, PATHS)
    assert set(plan.maps["kill_comms"]) == {kill_key(10, "xmrig")}     # /slurm: later jobs covered too
    assert set(plan.maps["deny_dest"]) == {deny_key(12, "203.0.113.0/24", 0)}
    assert plan.attachments == {("/slurm/uid_0/job_7", t) for _n, t in DENY_PROGRAMS}
    assert list(plan.policy.rules) == ["r-kill", "r-deny"] and plan.switches["kill_opts_config"] == 0


def test_rule_indexes_are_stable_across_plans():
    p = planner()
    first = p.plan(ppb.Policy(kill=[ppb.KillBinary(rule_id="a", comm="x", scope=ppb.Scope(job_ids=["7"]))]), PATHS)
    second = p.plan(ppb.Policy(kill=[ppb.KillBinary(rule_id="b", comm="y", scope=ppb.Scope(job_ids=["7"])),
                                     ppb.KillBinary(rule_id="a", comm="x", scope=ppb.Scope(job_ids=["7"]))]), PATHS)
    index_a = struct.unpack("<IIQ", first.maps["kill_comms"][kill_key(12, "x")])[0]
    assert struct.unpack("<IIQ", second.maps["kill_comms"][kill_key(12, "x")])[0] == index_a   # in flight: same
    assert p.rule_name(index_a) == "a" and p.rule_name(1) == "b"


def test_escape_watch_by_kind_sits_on_the_parent_with_the_jobs_level_and_seeds_each_job():
    plan = planner().plan(ppb.Policy(escape=[ppb.EscapeWatch(rule_id="job-escape", kill=True,
                                                             scope=ppb.Scope(job_kinds=["slurm"]))]), PATHS)
    entries = {struct.unpack("<Q", k)[0]: struct.unpack("<IIII", v) for k, v in plan.maps["escape_scopes"].items()}
    job_level = cgroup_level("/slurm/uid_0/job_7")
    assert entries[11][1:3] == (job_level, 1)          # the jobs' parent: a later job is watched at its level
    assert entries[12][1] == entries[14][1] == job_level and 13 not in entries   # a step is inside its job
    assert 10 not in entries                            # not /slurm: its level + 1 would be uid_0, not a job
    assert set(plan.origins) == {12, 14} and plan.switches["escape_config"] == 1
    assert 20 not in entries and 21 not in entries                          # systemd units are not watched


def test_the_builtin_policy_plans_on_a_host_with_jobs():
    rs = load_ruleset(rule_texts())
    plan = planner().plan(compile_policy(rs, 1), PATHS)
    assert plan.maps["kill_comms"] and plan.maps["argv_kill"] and plan.maps["escape_scopes"]
    assert plan.switches["argv_config"] == 1 and plan.fingerprints
    assert all(path.startswith("/slurm") for path, _t in plan.attachments)   # never the host's own services
    assert any(t == PAYLOAD_PROGRAM[1] for _p, t in plan.attachments)


def test_every_exec_trait_has_a_rule_slot_in_the_kernel_and_here():
    """A trait the kernel records but whose bit the kill table has no slot for could never kill (a new ExecTrait must
    widen TRAIT_BITS in probes/enforce_exec.c and here, together)."""
    source = (Path(__file__).resolve().parent.parent / "probes" / "enforce_exec.c").read_text()
    assert int(re.search(r"^#define TRAIT_BITS (\d+)", source, re.M)[1]) == TRAIT_BITS
    assert max(EXEC_TRAIT_BITS.values()) < 1 << TRAIT_BITS


def test_socket_kinds_mirror_the_kernel_and_each_kind_keeps_its_rule():
    """A scope refusing raw IP sockets by one rule and packet sockets by another: both bits, and a refusal of
    either names its own rule (probes/flow.c reads rule[] by kind)."""
    header = (Path(__file__).resolve().parent.parent / "probes" / "gpuguard.h").read_text()
    defined = {m[1]: int(m[2]) for m in re.finditer(r"^#define SOCKET_KIND_(\w+) (\d+)", header, re.M)}
    assert defined == {"RAW": SOCKET_KINDS["raw-ip"], "ICMP": SOCKET_KINDS["icmp"], "PACKET": SOCKET_KINDS["packet"]}
    scope = ppb.Scope(job_ids=["7"])
    p = planner()
    denies = [ppb.SocketDeny(rule_id="r-raw", scope=scope, kinds=["raw-ip"]),
              ppb.SocketDeny(rule_id="r-packet", scope=scope, kinds=["packet", "raw-ip"])]
    plan = p.plan(ppb.Policy(deny_sockets=denies), PATHS)
    kinds, raw, _icmp, packet = struct.unpack("<IIII", plan.maps["deny_socket_scopes"][struct.pack("<Q", 12)])
    assert kinds == SOCKET_KINDS["raw-ip"] | SOCKET_KINDS["packet"] and not kinds & SOCKET_KINDS["icmp"]
    assert (p.rule_name(raw), p.rule_name(packet)) == ("r-raw", "r-packet")     # the first rule naming a kind

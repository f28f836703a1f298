"""The rule corpus (tests/corpus/rules.yaml), table-driven: every built-in rule has a case that fires it
and one that must not; event sequences of normal training raise nothing (pure logic, no kernel)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format

from collector.correlate import Correlator
from collector.policy import kernel_enforceable
from collector.rules.engine import Engine
from collector.rules.loader import load_ruleset, rule_texts
from collector.rules.payload import looks_like_stratum
from gpuguard.v1 import events_pb2 as pb
from gpuguard.vocab import DROP_PAYLOAD, DROP_STRATUM, SEEN_PAYLOAD, SEEN_STRATUM

CORPUS = yaml.safe_load((Path(__file__).parent / "corpus" / "rules.yaml").read_text())
RULESET = load_ruleset(rule_texts())
ENGINE = Engine(RULESET)
HOST = "node-1"


FLOW_KINDS = ("tls", "dns", "datagram", "socket", "inbound", "listen")     # built from their proto fields (json names)
CASE_KINDS = (*FLOW_KINDS, "gpu_open", "gpu_usage")             # ... and, as single cases, the GPU's


def case_id(case: dict) -> str:
    kind = next(k for k in ("exec", "connect", "payload", "enforcement", *CASE_KINDS) if k in case)
    return f"{'+'.join(case['rules'])}-{'fires' if case['fires'] else 'quiet'}-{kind}"


def with_job(ev: pb.Event, pid: int = 100, exe: str = "") -> pb.Event:
    ev.job.kind, ev.job.id = "slurm", "77"
    ev.process.pid, ev.process.key = pid, f"key-{pid}"
    if exe:
        ev.process.exe, ev.process.comm = exe, exe.rsplit("/", 1)[-1][:15]
    return ev


def exec_event(spec: dict, pid: int = 100) -> pb.Event:
    argv = [str(a) for a in spec["argv"]]
    ev = pb.Event(exec=pb.Exec(filename=spec.get("exe", argv[0]), argv=argv, stdio=spec.get("stdio", []),
                               ssh_forwards=spec.get("ssh_forwards", []), traits=spec.get("traits", []),
                               pty_peer=spec.get("pty_peer", ""), argv_bytes=spec.get("argv_bytes", 0),
                               config_lines=spec.get("config_lines", [])))
    return with_job(ev, pid, spec.get("exe", argv[0]))


def connect_event(spec: dict, pid: int = 100, exe: str = "/usr/bin/python3") -> pb.Event:
    ev = pb.Event(connect=pb.Connect(daddr=spec["daddr"], dport=spec["dport"], proto=spec.get("proto", "tcp"),
                                     name=spec.get("name", ""), name_scope=spec.get("name_scope", ""),
                                     result=spec.get("result", 0), image_nolink=spec.get("image_nolink", False)))
    ev = with_job(ev, pid, spec.get("exe", exe))
    if "comm" in spec:                    # the name the process has now (changed after exec)
        ev.process.comm = spec["comm"]
    return ev


def flow_event(kind: str, spec: dict, pid: int = 100, exe: str = "/usr/bin/python3") -> pb.Event:
    fields = {k: v for k, v in spec.items() if k not in ("exe", "job_kind", "comm")}
    ev = with_job(json_format.ParseDict({kind: fields}, pb.Event()), pid, spec.get("exe", exe))
    if "comm" in spec:
        ev.process.comm = spec["comm"]
    if "job_kind" in spec:                # outside every job: a systemd unit, the host
        ev.job.kind, ev.job.id = spec["job_kind"], "run-u7.service" if spec["job_kind"] == "systemd" else "host"
    if kind == "inbound":            # seen before any accept(): no process, only the listener's job
        ev.ClearField("process")
    return ev


def payload_bytes(spec: dict) -> bytes:
    if "hex" in spec:
        return bytes.fromhex(spec["hex"].replace(" ", ""))
    return spec["text"].encode("latin-1")


def kernel_reports(data: bytes, exe: str) -> list[pb.Event]:
    """What the egress hook would report for this payload: one event per fingerprint that matches it
    (the Python twin of the kernel matcher), skipping senders a rule exempts."""
    out = []
    name = exe.rsplit("/", 1)[-1]
    for rule in RULESET.rules.values():
        if rule.event != "payload" or name in rule.unless.get("exe_name_in", []):
            continue
        spec = rule.match.get("payload")
        hit = looks_like_stratum(data) if "stratum" in rule.match else spec.search(data) is not None
        if not hit:
            continue
        drop = rule.action in ("block", "kill") and kernel_enforceable(rule)
        stratum = "stratum" in rule.match
        action = (DROP_STRATUM if drop else SEEN_STRATUM) if stratum else (DROP_PAYLOAD if drop else SEEN_PAYLOAD)
        ev = pb.Event(enforcement=pb.Enforcement(rule_id=rule.id, action=action, payload=data[:64]))
        out.append(with_job(ev, 100, exe))
    return out


def fired(case: dict) -> set[str]:
    if "exec" in case:
        events = [exec_event(case["exec"])]
    elif "connect" in case:
        events = [connect_event(case["connect"])]
    elif "enforcement" in case:           # what the kernel reported (probes/enforce_escape.c, ...)
        events = [with_job(pb.Event(enforcement=pb.Enforcement(**case["enforcement"])), exe="/usr/bin/python3")]
    elif any(k in case for k in CASE_KINDS):
        kind = next(k for k in CASE_KINDS if k in case)
        events = [flow_event(kind, case[kind])]
    else:
        spec = case["payload"]
        events = kernel_reports(payload_bytes(spec), spec.get("exe", "/usr/bin/python3"))
    return {m.rule.id for ev in events for m in ENGINE.evaluate(HOST, ev, None)}


@pytest.mark.parametrize("case", CORPUS["cases"], ids=case_id)
def test_case(case):
    under_test = set(case["rules"])
    assert fired(case) & under_test == set(case["fires"])


def test_every_builtin_rule_has_a_positive_and_a_negative_case():
    positive = {r for c in CORPUS["cases"] for r in c["fires"]}
    negative = {r for c in CORPUS["cases"] for r in set(c["rules"]) - set(c["fires"])}
    elsewhere = set(CORPUS["elsewhere"])
    missing = {r for r in RULESET.rules if r not in elsewhere and not (r in positive and r in negative)}
    assert not missing, f"rules without both a firing and a quiet case in the corpus: {sorted(missing)}"


def sweeps(steps: list[dict]) -> list[dict]:
    """A connect step with `sweep: N` stands for N connects, to ports dport, dport+1, ... (a scan, written once)."""
    out = []
    for step in steps:
        n = step.get("connect", {}).get("sweep", 0)
        if not n:
            out.append(step)
            continue
        for k in range(n):
            spec = {key: v for key, v in step["connect"].items() if key != "sweep"}
            spec["dport"] = spec["dport"] + k
            out.append({**step, "connect": spec})
    return out


def sequence_events(seq: dict) -> list[pb.Event]:
    """Events of one job in order; each pid's key, exe and ancestors follow its parent and its last exec."""
    exes: dict[int, str] = {}
    parents: dict[int, int] = {}
    out = []
    for i, step in enumerate(sweeps(seq["events"]), start=1):
        pid = step["pid"]
        if "parent" in step:
            parents[pid] = step["parent"]
            exes.setdefault(pid, exes.get(step["parent"], ""))
        if "exe" in step:
            exes[pid] = step["exe"]
        if "exec" in step:
            exes[pid] = step["exec"].get("exe", step["exec"]["argv"][0])
            ev = exec_event(step["exec"], pid)
        elif "connect" in step:
            ev = connect_event(step["connect"], pid, exes[pid])
        elif any(k in step for k in FLOW_KINDS):
            kind = next(k for k in FLOW_KINDS if k in step)
            ev = flow_event(kind, step[kind], pid, exes.get(pid, ""))
        else:
            ev = with_job(pb.Event(gpu_open=pb.GpuOpen(path=step["gpu_open"])), pid, exes[pid])
        ev.seq, ev.ts_ns = i, i * 1_000_000_000
        ancestor = parents.get(pid)
        while ancestor:
            ev.process.ancestors.add(key=f"key-{ancestor}", pid=ancestor)
            ancestor = parents.get(ancestor)
        out.append(ev)
    return out


@pytest.mark.parametrize("seq", CORPUS["sequences"], ids=lambda s: s["name"][:60])
def test_sequence(seq):
    engine, correlator = Engine(RULESET), Correlator(RULESET)
    assert seq["events"], "a sequence needs events"
    alerts: set[str] = set()
    for ev in sequence_events(seq):
        matches = engine.evaluate(HOST, ev, correlator.context(HOST, ev))
        correlator.observe(HOST, ev)
        alerts |= {m.rule.id for m in matches if m.rule.action != "signal"}
        alerts |= {corr.id for corr, _hits in correlator.record(HOST, ev, matches)}
    assert alerts == set(seq["alerts"])


def case_events(case: dict) -> list[pb.Event]:
    if "exec" in case:
        return [exec_event(case["exec"])]
    if "connect" in case:
        return [connect_event(case["connect"])]
    if any(k in case for k in CASE_KINDS):
        kind = next(k for k in CASE_KINDS if k in case)
        return [flow_event(kind, case[kind])]
    return []


def other_process(ev: pb.Event, n: int) -> pb.Event:
    """The same program doing the same thing as another process, at another time: everything the engine's verdict
    memo leaves out of its key (keys.STATELESS_READS) changed."""
    out = pb.Event()
    out.CopyFrom(ev)
    out.seq, out.ts_ns, out.boot_id = 1000 + n, 10**18 + n, f"boot-{n}"
    p = out.process
    p.pid, p.tid, p.ppid, p.key, p.parent_key = 4000 + n, 4000 + n, 17 + n, f"other-{n}", f"parent-{n}"
    p.uid, p.gid, p.cgroup_id, p.cgroup = 1000 + n, 1000 + n, 99 + n, f"/slurm/uid_{n}/job_77"
    p.ancestors.add(pid=17 + n, key=f"parent-{n}", comm="bash", exe="/bin/bash")
    if not out.HasField("exec"):            # only exec rules read the argv
        del p.argv[:]
        p.argv.extend(["python3", "-c", f"other {n}", "stratum+tcp://x.example:3333"])
    return out


@pytest.mark.parametrize("case", [c for c in CORPUS["cases"] if case_events(c)], ids=case_id)
def test_remembered_verdicts_equal_fresh_ones(case):
    """The engine remembers the verdict of rules that read only the event by what they read: a second process
    running the same program the same way gets the verdict a fresh engine gives it, and no rule's verdict
    depends on the pid, key, ancestors, uid, cgroup, time or seq it leaves out."""
    ev = case_events(case)[0]
    fresh = {m.rule.id for m in Engine(RULESET).evaluate(HOST, ev, None)}
    warm = Engine(RULESET)
    warm.evaluate(HOST, ev, None)
    for n in (1, 2):
        other = other_process(ev, n)
        assert {m.rule.id for m in Engine(RULESET).evaluate(HOST, other, None)} == fresh     # nothing left out
        assert {m.rule.id for m in warm.evaluate(HOST, other, None)} == fresh                # remembered
    assert warm.memo_hits == 2                                  # both answered from the memo


def test_the_memo_tells_apart_what_rules_read():
    """Same process, another destination or argv: not the remembered verdict."""
    engine = Engine(RULESET)
    quiet = connect_event({"daddr": "10.1.2.3", "dport": 29500})
    miner = connect_event({"daddr": "203.0.113.9", "dport": 3333})
    assert not engine.evaluate(HOST, quiet, None)
    fired_now = {m.rule.id for m in engine.evaluate(HOST, miner, None)}
    assert fired_now and fired_now == {m.rule.id for m in Engine(RULESET).evaluate(HOST, miner, None)}
    assert engine.memo_misses == 2 and engine.memo_hits == 0


def test_one_job_reaching_another_jobs_listener_over_loopback():
    """Jobs of one node share its loopback: a connect to a port another job listens on is one job reaching into
    another (its notebook, dashboard, debug port); its own port, a free port, another host's: quiet."""
    engine, correlator = Engine(RULESET), Correlator(RULESET)

    def run(ev: pb.Event, job: str, host: str = HOST) -> set[str]:
        ev.job.id = job
        matches = engine.evaluate(host, ev, correlator.context(host, ev))
        correlator.observe(host, ev)
        return {m.rule.id for m in matches}

    notebook = flow_event("listen", {"family": "inet", "addr": "127.0.0.1", "port": 8888}, pid=200)
    assert "cross-job-connect" not in run(notebook, "B")
    node_proxy = flow_event("listen", {"family": "inet", "addr": "127.0.0.1", "port": 3128, "job_kind": "host"},
                            pid=1)             # the node's own service (a local proxy, an ssh -L of a session)
    run(node_proxy, "host")
    for addr in ("10.0.0.5", "::ffff:10.0.0.5"):          # bound to the node's own address only: not on loopback
        run(flow_event("listen", {"family": "inet6", "addr": addr, "port": 7000}, pid=202), "B")
    assert "cross-job-connect" not in run(connect_event({"daddr": "127.0.0.1", "dport": 7000}, pid=306), "A")
    assert "cross-job-connect" not in run(connect_event({"daddr": "127.0.0.1", "dport": 3128}, pid=305), "A")
    assert "cross-job-connect" in run(connect_event({"daddr": "127.0.0.1", "dport": 8888}, pid=300), "A")
    assert "cross-job-connect" in run(connect_event({"daddr": "::ffff:127.0.0.1", "dport": 8888}, pid=301), "A")
    assert "cross-job-connect" not in run(connect_event({"daddr": "127.0.0.1", "dport": 8888}, pid=201), "B")
    assert "cross-job-connect" not in run(connect_event({"daddr": "127.0.0.1", "dport": 8889}, pid=302), "A")
    assert "cross-job-connect" not in run(connect_event({"daddr": "10.0.0.7", "dport": 8888}, pid=303), "A")
    assert "cross-job-connect" not in run(connect_event({"daddr": "127.0.0.1", "dport": 8888}, pid=304), "A",
                                          host="node-2")       # another node's loopback

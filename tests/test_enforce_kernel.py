"""Every block, loaded and triggered for real, scoped to cgroups the test created."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid

import pytest

from agent.enforce import Enforcer
from gpuguard.v1 import policy_pb2 as ppb
from lab import FakePool, popen_in_cgroup
from tests.conftest import PYTHON, ROOT, fresh_job_id, mark, run_in_cgroup, wait_for

pytestmark = pytest.mark.kernel


def job_scope(job_id: str) -> ppb.Scope:
    return ppb.Scope(job_ids=[job_id])


def fake_binary(tmp_path, name: str, source: str = "/bin/sleep") -> str:
    path = tmp_path / name
    shutil.copy(source, path)
    return str(path)


def test_kill_at_exec_in_scope_only(capture, enforcer, test_cgroup, tmp_path):
    job = fresh_job_id()
    cg = test_cgroup(f"slurm/job_{job}/step_0")
    miner = fake_binary(tmp_path, "gg-fakeminer")
    enforcer.apply(ppb.Policy(version=1, kill=[ppb.KillBinary(rule_id="t-kill", comm="gg-fakeminer",
                                                              scope=job_scope(job))]), persist=False)
    inside = run_in_cgroup(cg, [miner, "0.2"])
    assert inside.returncode == -9                    # SIGKILL before its first instruction
    outside = subprocess.run([miner, "0.01"])
    assert outside.returncode == 0                    # same binary outside the job: untouched
    hits = wait_for(capture, lambda r: r["kind"] == "enforcement" and r["enforcement"]["rule_id"] == "t-kill")
    assert hits and hits[0]["enforcement"]["action"] == "kill_exec"
    assert hits[0]["job"]["id"] == job


def test_kill_at_exec_only_with_the_named_options(capture, enforcer, test_cgroup, tmp_path):
    job = fresh_job_id()
    cg = test_cgroup(f"slurm/job_{job}")
    tunnel = fake_binary(tmp_path, "gg-tunnel", "/bin/true")
    enforcer.apply(ppb.Policy(version=1, kill=[ppb.KillBinary(rule_id="t-fwd", comm="gg-tunnel", options="RDw",
                                                              scope=job_scope(job))]), persist=False)
    outcomes = {argv: run_in_cgroup(cg, [tunnel, *argv.split()]).returncode for argv in
                ("-R 2222:localhost:22 host", "-NfR 1:h:2 host", "-R8080:h:22 host", "-D 1080 host",
                 "-L 8888:localhost:8888 host", "-oRemoteForwardX=1 host", "-N host", "host uptime")}
    assert outcomes == {"-R 2222:localhost:22 host": -9, "-NfR 1:h:2 host": -9, "-R8080:h:22 host": -9,
                        "-D 1080 host": -9, "-L 8888:localhost:8888 host": 0, "-oRemoteForwardX=1 host": 0,
                        "-N host": 0, "host uptime": 0}


@pytest.mark.parametrize("encoded", [False, True], ids=["objects", "bytes"])
def test_kill_by_executable_hash_whatever_its_name(capture, enforcer, test_cgroup, tmp_path, encoded):
    """Whether the exec reaches the enforcer as an object or, as in the agent, as its bytes (agent/encoded.py)."""
    from agent.exe_hash import sha256_file  # noqa: PLC0415

    job = fresh_job_id()
    cg = test_cgroup(f"slurm/job_{job}")
    renamed = fake_binary(tmp_path, "innocent-helper")       # a copy of sleep under a harmless name
    digest = sha256_file(renamed)
    enforcer.apply(ppb.Policy(version=1, kill=[ppb.KillBinary(rule_id="t-hash", sha256=digest,
                                                              scope=job_scope(job))]), persist=False)
    capture.sinks.append(enforcer.on_records)
    capture.enricher.encode_events = encoded
    try:
        proc = popen_in_cgroup(cg, [renamed, "30"])
        wait_for(capture, lambda r: r["kind"] == "enforcement" and r["enforcement"]["rule_id"] == "t-hash"
                 and r["proc"]["pid"] == proc.pid, timeout=10)
        assert proc.wait(10) == -9
        assert any(r["kind"] == "exec" and r["proc"]["pid"] == proc.pid for r in capture.seen)
    finally:
        capture.enricher.encode_events = False
        capture.sinks.remove(enforcer.on_records)
        if proc.poll() is None:
            proc.kill()
    outside = subprocess.run([renamed, "0.01"])
    assert outside.returncode == 0                           # out of scope: untouched


@pytest.mark.parametrize("cover", ["swap", "unlink"])
def test_kill_by_hash_whatever_becomes_of_the_path(capture, enforcer, test_cgroup, tmp_path, cover):
    """Run the known binary, then move a harmless one over its name (or delete it) before the agent reads it: the
    exec record's inode (probes/exec.c) makes the hash the image's, not the path's, and the kill still comes."""
    from agent.exe_hash import kernel_dev, sha256_file  # noqa: PLC0415

    job = fresh_job_id()
    cg = test_cgroup(f"slurm/job_{job}")
    known = fake_binary(tmp_path, "gg-known")
    harmless = fake_binary(tmp_path, "gg-harmless", "/bin/true")
    digest = sha256_file(known)
    st = os.stat(known)
    enforcer.apply(ppb.Policy(version=1, kill=[ppb.KillBinary(rule_id="t-hash-cover", sha256=digest,
                                                              scope=job_scope(job))]), persist=False)
    since = mark(capture)                      # nothing of this process is drained before the path is covered
    proc = popen_in_cgroup(cg, [known, "30"])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{proc.pid}/exe") == known:
                    break                      # the exec has happened
            time.sleep(0.01)
        if cover == "swap":
            os.replace(harmless, known)
            assert sha256_file(known) != digest
        else:
            os.unlink(known)
        capture.sinks.append(enforcer.on_records)
        hits = wait_for(capture, lambda r: r["kind"] == "enforcement" and r["enforcement"]["rule_id"] ==
                        "t-hash-cover", timeout=10, since=since)
        assert hits, "no kill: the hash was read from what the path names now"
        assert proc.wait(10) == -9
        seen = [r for r in capture.seen[since:] if r["kind"] == "exec" and r["proc"]["pid"] == proc.pid]
        assert seen, "the exec record was not seen"
        p = capture.table.get(proc.pid)
        assert p is None or p.exe_inode == (kernel_dev(st.st_dev), st.st_ino, st.st_ctime_ns)   # the kernel's is stat's
    finally:
        with contextlib.suppress(ValueError):
            capture.sinks.remove(enforcer.on_records)
        if proc.poll() is None:
            proc.kill()


def test_kill_by_hash_after_a_rewrite_in_place_with_the_mtime_put_back(capture, enforcer, test_cgroup, tmp_path):
    """A harmless program is hashed, then the known-bad content is written into the same inode and its mtime set
    back (touch -d): the exec record's ctime (probes/exec.c) makes it a new image, hashed anew, and killed. Keyed
    by (device, inode, mtime) as before, the cached harmless hash answered and the process ran."""
    from agent.exe_hash import sha256_file  # noqa: PLC0415

    job = fresh_job_id()
    cg = test_cgroup(f"slurm/job_{job}")
    tool = fake_binary(tmp_path, "gg-tool", "/bin/true")
    digest = sha256_file("/bin/sleep")
    assert enforcer.hasher.hash_now(tool) == sha256_file(tool) != digest    # the harmless content, cached
    before = os.stat(tool)
    with open(tool, "r+b") as f, open("/bin/sleep", "rb") as bad:
        f.write(bad.read())
        f.truncate()
    os.utime(tool, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(tool).st_ino == before.st_ino and os.stat(tool).st_mtime_ns == before.st_mtime_ns
    enforcer.apply(ppb.Policy(version=1, kill=[ppb.KillBinary(rule_id="t-hash-rewrite", sha256=digest,
                                                              scope=job_scope(job))]), persist=False)
    capture.sinks.append(enforcer.on_records)
    proc = popen_in_cgroup(cg, [tool, "30"])
    try:
        hits = wait_for(capture, lambda r: r["kind"] == "enforcement" and r["enforcement"]["rule_id"] ==
                        "t-hash-rewrite", timeout=10)
        assert hits, "no kill: the rewritten binary was answered with the harmless content's cached hash"
        assert proc.wait(10) == -9
    finally:
        capture.sinks.remove(enforcer.on_records)
        if proc.poll() is None:
            proc.kill()


def _connect_script(addr: str, port: int, family: str = "AF_INET", kind: str = "SOCK_STREAM") -> str:
    return (f"import socket, sys\ns = socket.socket(socket.{family}, socket.{kind})\n"
            f"try:\n    s.connect(({addr!r}, {port}))\n    print('ok')\n"
            f"except OSError as e:\n    print(e.errno)\n")


TFO_SEND = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
try:
    s.sendto(b"x", socket.MSG_FASTOPEN, ("127.0.0.1", {port})); print("ok")
except OSError as e:
    print(e.errno)
"""


def test_deny_connect_v4_v6mapped_and_udp_in_scope_only(capture, enforcer, test_cgroup):
    job = fresh_job_id()
    cg = test_cgroup(f"slurm/job_{job}/step_0")
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        enforcer.apply(ppb.Policy(version=2, deny=[ppb.DenyDestination(rule_id="t-deny", cidr="127.0.0.0/8",
                                                                         port=port, scope=job_scope(job))]),
                       persist=False)
        run = lambda script: run_in_cgroup(cg, [PYTHON, "-c", script], capture_output=True,  # noqa: E731
                                           text=True).stdout.strip()
        assert run(_connect_script("127.0.0.1", port)) == str(errno.EPERM)
        assert run(_connect_script("::ffff:127.0.0.1", port, "AF_INET6")) == str(errno.EPERM)
        assert run(_connect_script("127.0.0.1", port, kind="SOCK_DGRAM")) == str(errno.EPERM)
        assert run(TFO_SEND.format(port=port)) == str(errno.EPERM)     # a connect inside sendto(): the same hook
        assert run(_connect_script("127.0.0.1", port + 1 if port < 65535 else port - 1)) != str(errno.EPERM)
        outside = subprocess.run([PYTHON, "-c", _connect_script("127.0.0.1", port)], capture_output=True, text=True)
        assert outside.stdout.strip() == "ok"
    hits = wait_for(capture, lambda r: r["kind"] == "enforcement" and r["enforcement"]["rule_id"] == "t-deny"
                    and r["enforcement"]["action"] == "deny_connect")
    assert hits and f"127.0.0.1:{port}" in hits[0]["enforcement"]["detail"]
    # the observe-only hook at the root ran too, under the deny program: each attempt recorded as EPERM
    seen = wait_for(capture, lambda r: r["kind"] == "connect" and r["connect"]["dport"] == port
                    and r["job"]["id"] == job)
    assert sorted((r["connect"]["family"], r["connect"]["proto"], r["connect"]["result"]) for r in seen) == [
        ("inet", "tcp", -errno.EPERM), ("inet", "tcp", -errno.EPERM), ("inet", "udp", -errno.EPERM),
        ("inet6", "tcp", -errno.EPERM)]


def test_egress_allowlist_in_scope_only(capture, enforcer, test_cgroup):
    job = fresh_job_id()
    cg = test_cgroup(f"slurm/job_{job}")
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        enforcer.apply(ppb.Policy(version=9, allow=[ppb.EgressAllowlist(rule_id="t-allow", cidrs=["127.0.0.1/32"],
                                                                        scope=job_scope(job))]), persist=False)
        run = lambda script: run_in_cgroup(cg, [PYTHON, "-c", script], capture_output=True,  # noqa: E731
                                           text=True).stdout.strip()
        assert run(_connect_script("127.0.0.1", port)) == "ok"                       # on the list
        assert run(_connect_script("127.0.0.2", port)) == str(errno.EPERM)           # off the list
        assert run(_connect_script("127.0.0.3", 53, kind="SOCK_DGRAM")) == str(errno.EPERM)
        assert run(_connect_script("::1", port, "AF_INET6")) == str(errno.EPERM)
        outside = subprocess.run([PYTHON, "-c", _connect_script("127.0.0.2", port)], capture_output=True, text=True)
        assert outside.stdout.strip() != str(errno.EPERM)                            # other cgroups untouched
    hits = wait_for(capture, lambda r: r["kind"] == "enforcement" and r["enforcement"]["rule_id"] == "t-allow")
    assert hits and "127.0.0.2" in hits[0]["enforcement"]["detail"]


STRATUM_CLIENT = (
    "import socket, sys, time\n"
    "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
    "s.sendall(sys.argv[2].encode() + b'\\n')\n"
    "time.sleep(0.5)\n"
)
SUBSCRIBE = '{"id": 1, "method": "mining.subscribe", "params": ["fakeminer/1.0"]}'
XMR_LOGIN = '{"id":1,"jsonrpc":"2.0","method":"login","params":{"login":"4Abc","pass":"x","agent":"XMRig/6.21"}}'
GETWORK = '{"jsonrpc":"2.0","id":5,"method":"eth_getWork","params":[]}'          # ethminer -P http:// (getwork)
TEMPLATE = '{"id":0,"method":"getblocktemplate","params":[{"rules":["segwit"]}]}'  # solo mining against a node
HTTP = "GET /simple/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: pip/24.0\r\n\r\n"


@pytest.mark.parametrize("drop", [True, False], ids=["enforce", "monitor"])
def test_stratum_payload_hook(capture, enforcer, test_cgroup, drop):
    job = fresh_job_id()
    cg = test_cgroup(f"slurm/job_{job}")
    enforcer.apply(ppb.Policy(version=3, payload=[ppb.PayloadWatch(rule_id="t-stratum", scope=job_scope(job),
                                                                   stratum=True, drop=drop)]), persist=False)
    pool = FakePool()
    try:
        for payload in (SUBSCRIBE, XMR_LOGIN, GETWORK, TEMPLATE, HTTP):
            run_in_cgroup(cg, [PYTHON, "-c", STRATUM_CLIENT, str(pool.port), payload], timeout=20)
        pool.settle()
    finally:
        pool.close()
    assert pool.accepted == 5
    got = b"".join(pool.received)
    assert b"GET /simple/" in got                         # ordinary traffic passes either way
    mining = (b"mining.subscribe", b'"login"', b"eth_getWork", b"getblocktemplate")
    if drop:
        assert not any(m in got for m in mining)
    else:
        assert all(m in got for m in mining)
    hits = wait_for(capture, lambda r: r["kind"] == "enforcement" and r["enforcement"]["rule_id"] == "t-stratum"
                    and r["job"]["id"] == job)
    actions = {r["enforcement"]["action"] for r in hits}
    assert actions == ({"drop_stratum"} if drop else {"seen_stratum"})
    assert all(r["job"]["id"] == job for r in hits if r["proc"]["pid"])


def test_new_job_cgroup_is_covered_as_it_appears(capture, enforcer, test_cgroup, tmp_path):
    job = fresh_job_id()
    miner = fake_binary(tmp_path, "gg-lateminer")
    enforcer.apply(ppb.Policy(version=4, kill=[ppb.KillBinary(rule_id="t-late", comm="gg-lateminer",
                                                              scope=ppb.Scope(job_kinds=["slurm"]))],
                              deny=[ppb.DenyDestination(rule_id="t-late-deny", cidr="127.0.0.2/32", port=9,
                                                        scope=ppb.Scope(job_ids=[job]))]), persist=False)
    cg = test_cgroup(f"slurm/job_{job}")                  # created after the policy
    deadline = time.monotonic() + 10                         # the agent sees cgroup_mkdir and re-applies
    while not any(c.endswith(f"job_{job}") for c, _t in enforcer.attached) and time.monotonic() < deadline:
        capture.poll_once(50)
    assert any(c.endswith(f"job_{job}") for c, _t in enforcer.attached), enforcer.attached
    assert run_in_cgroup(cg, [miner, "0.1"]).returncode == -9
    out = run_in_cgroup(cg, [PYTHON, "-c", _connect_script("127.0.0.2", 9)], capture_output=True, text=True)
    assert out.stdout.strip() == str(errno.EPERM)


def test_close_detaches_and_connects_work_again(capture, tmp_path, test_cgroup):
    job = fresh_job_id()
    cg = test_cgroup(f"slurm/job_{job}")
    enf = Enforcer(capture, tmp_path / "state")
    enf.apply(ppb.Policy(version=5, deny=[ppb.DenyDestination(rule_id="t-det", cidr="127.0.0.3/32", port=0,
                                                              scope=job_scope(job))]))
    script = _connect_script("127.0.0.3", 9, kind="SOCK_DGRAM")
    assert run_in_cgroup(cg, [PYTHON, "-c", script], capture_output=True, text=True).stdout.strip() == "1"
    enf.apply(ppb.Policy(version=6), persist=False)
    enf.close()
    assert not enf.attached
    assert run_in_cgroup(cg, [PYTHON, "-c", script], capture_output=True, text=True).stdout.strip() == "ok"


FIRST_AGENT = """
import os, sys
sys.path.insert(0, {root!r})
from agent.runtime import Capture
from agent.enforce import Enforcer
from gpuguard.v1 import policy_pb2 as ppb
cap = Capture(hash_executables=False)
cap.start()
Enforcer(cap, {state!r}).apply(ppb.Policy.FromString(bytes.fromhex({policy!r})))
os._exit(0)   # die like a killed agent: no detach, programs stay attached
"""


def test_saved_policy_is_enforced_at_restart_and_leftovers_detached(capture, tmp_path, test_cgroup):
    job = fresh_job_id()
    cg = test_cgroup(f"slurm/job_{job}")
    state = tmp_path / "state"
    policy = ppb.Policy(version=7, deny=[ppb.DenyDestination(rule_id="t-keep", cidr="127.0.0.4/32",
                                                              scope=job_scope(job))])
    code = FIRST_AGENT.format(root=str(ROOT), state=str(state), policy=policy.SerializeToString().hex())
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    script = _connect_script("127.0.0.4", 9, kind="SOCK_DGRAM")
    still = run_in_cgroup(cg, [PYTHON, "-c", script], capture_output=True, text=True).stdout.strip()
    assert still == str(errno.EPERM)                      # enforcement outlived the dead agent
    from agent.pins import pin_dir_for  # noqa: PLC0415

    pins = pin_dir_for(state)
    old = {p.name for p in pins.iterdir() if p.name.startswith("cg")}     # the pins are the only ledger
    assert old                                            # the dead agent's cgroup links, still pinned
    second = Enforcer(capture, state)
    try:
        assert {p.name for p in pins.iterdir()} >= old    # nothing dropped before the saved policy is back
        second.start()                                    # re-applies policy.pb, then unpins the leftovers
        assert second.policy_version == 7
        now = {p.name for p in pins.iterdir()}
        assert not (now & old)
        assert {p for p in now if p.startswith("cg")} == {p.name for p in second.pins.mine if p.name.startswith("cg")}
        assert all(p.endswith(f"-{os.getpid()}") for p in now)
        assert run_in_cgroup(cg, [PYTHON, "-c", script], capture_output=True, text=True).stdout.strip() == "1"
    finally:
        second.apply(ppb.Policy(version=8), persist=False)
        second.close()
        left = list(pins.glob("*")) if pins.exists() else []
        for pin in left:                                  # never leave a test's program attached
            pin.unlink()
    assert not left                                       # a clean stop leaves no pin
    after = run_in_cgroup(cg, [PYTHON, "-c", script], capture_output=True, text=True).stdout.strip()
    assert after == "ok"                                  # old programs gone too, not just the new ones


def test_programs_an_agent_before_the_pins_attached_are_detached_at_start(capture, tmp_path, test_cgroup):
    """Agents before the pins attached with BPF_PROG_ATTACH and listed (cgroup, attach type, program id) in
    attachments.json: an upgraded agent detaches them once its own links are in place, or they would enforce
    an old policy forever."""
    import json  # noqa: PLC0415

    from bcc import BPF  # noqa: PLC0415

    cg = test_cgroup(f"slurm/job_{fresh_job_id()}")
    script = _connect_script("127.0.0.5", 9, kind="SOCK_DGRAM")
    legacy = BPF(text=b"int gg_legacy_deny(struct bpf_sock_addr *ctx) { return 0; }")
    fn = legacy.load_func(b"gg_legacy_deny", BPF.CGROUP_SOCK_ADDR, attach_type=10)     # connect4: deny all
    cfd = os.open(cg, os.O_RDONLY | os.O_DIRECTORY)
    legacy.attach_func(fn, cfd, 10, 2)                                               # BPF_F_ALLOW_MULTI
    try:
        progs = json.loads(subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True,
                                          check=True).stdout)
        prog_id = next(p["id"] for p in progs if p.get("name") == "gg_legacy_deny")
        assert run_in_cgroup(cg, [PYTHON, "-c", script], capture_output=True, text=True).stdout.strip() == \
            str(errno.EPERM)                                                         # the old program enforces
        state = tmp_path / "state"
        state.mkdir()
        (state / "attachments.json").write_text(json.dumps([{"cgroup": str(cg), "attach_type": 10,
                                                             "prog_id": prog_id}]))
        upgraded = Enforcer(capture, state)
        try:
            upgraded.start()
            assert not (state / "attachments.json").exists()
            assert run_in_cgroup(cg, [PYTHON, "-c", script], capture_output=True, text=True).stdout.strip() == "ok"
        finally:
            upgraded.close()
    finally:
        try:
            legacy.detach_func(fn, cfd, 10)          # never leave it attached (a no-op once the agent did)
        except Exception:  # noqa: BLE001 - already detached: what the test wanted
            pass
        os.close(cfd)
        legacy.cleanup()


def test_kill_at_exec_outlives_a_dead_agent_and_is_adopted(capture, tmp_path, test_cgroup):
    from agent.pins import pin_dir_for  # noqa: PLC0415

    job = fresh_job_id()
    cg = test_cgroup(f"slurm/job_{job}")
    state = tmp_path / "state"
    miner = fake_binary(tmp_path, "gg-deadminer", "/bin/true")
    policy = ppb.Policy(version=3, kill=[ppb.KillBinary(rule_id="t-dead", comm="gg-deadminer",
                                                        scope=job_scope(job))])
    code = FIRST_AGENT.format(root=str(ROOT), state=str(state), policy=policy.SerializeToString().hex())
    pins = pin_dir_for(state)
    second = None
    try:
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)      # the agent dies (os._exit)
        left = sorted(p.name for p in pins.glob("kill_exec-*"))
        assert len(left) == 1                                 # its link is still pinned
        assert run_in_cgroup(cg, [miner]).returncode == -9    # and still kills, with no agent running
        assert subprocess.run([miner]).returncode == 0        # only in scope
        second = Enforcer(capture, state)
        second.start()
        assert sorted(p.name for p in pins.glob("kill_exec-*")) == [f"kill_exec-{os.getpid()}"]   # adopted
        assert run_in_cgroup(cg, [miner]).returncode == -9    # the new agent's program kills (policy.pb)
        second.close()
        second = None
        assert not list(pins.glob("kill_exec-*"))          # a clean stop unpins
        assert run_in_cgroup(cg, [miner]).returncode == 0     # and nothing kills any more
    finally:
        if second is not None:
            second.close()
        for pin in pins.glob("*"):                           # never leave a test's program attached
            pin.unlink()


def test_a_burst_of_new_job_cgroups_costs_the_ring_buffer_nothing(capture, enforcer, test_cgroup):
    """200 job cgroups appear while execs flow: the poll thread only decodes/enriches; the worker extends the
    policy to the new jobs (coalesced walks). Nothing is lost in the kernel, every exec is captured."""
    import threading  # noqa: PLC0415
    import time  # noqa: PLC0415

    capture.sinks.append(enforcer.on_records)
    base = test_cgroup("slurm/uid_0")
    ids = [str(600000 + i) for i in range(200)]
    enforcer.apply(ppb.Policy(version=4, deny=[ppb.DenyDestination(rule_id="t-burst", cidr="127.0.0.9/32", port=9,
                                                                     scope=ppb.Scope(job_ids=ids))]), persist=False)
    tag = uuid.uuid4().hex[:8]
    lost_before = sum(capture.kernel_lost().values())

    def burst():
        for job in ids:
            (base / f"job_{job}").mkdir()

    def execs():
        for _ in range(300):
            pid = os.posix_spawn("/bin/true", ["/bin/true", tag], {})
            os.waitpid(pid, 0)

    threads = [threading.Thread(target=burst), threading.Thread(target=execs)]
    try:
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            capture.poll_once(20)
        seen = wait_for(capture, lambda r: r["kind"] == "exec" and r["exec"]["argv"] == ["/bin/true", tag])
        deadline = time.monotonic() + 20
        while len(seen) < 300 and time.monotonic() < deadline:
            seen = wait_for(capture, lambda r: r["kind"] == "exec" and r["exec"]["argv"] == ["/bin/true", tag])
        assert enforcer.worker.drain(60)
        covered = {c for (c, _t) in enforcer.attached if c.rsplit("/", 1)[-1].startswith("job_6")}
        print(f"\n200 new job cgroups during 300 execs: {len(seen)} execs captured, kernel lost "
              f"{sum(capture.kernel_lost().values()) - lost_before}, {enforcer.reapplied} coalesced re-applies, "
              f"{len(covered)} job cgroups covered")
        assert len(seen) == 300
        assert sum(capture.kernel_lost().values()) == lost_before
        assert len(covered) == 200                          # the worker extended the policy to every new job
        assert 1 <= enforcer.reapplied < 200                # coalesced: fewer walks than cgroups
    finally:
        capture.sinks.remove(enforcer.on_records)
        enforcer.apply(ppb.Policy(version=5), persist=False)


def test_shells_cannot_connect_in_scope_whatever_their_name(capture, enforcer, test_cgroup, tmp_path):
    """bash's /dev/tcp fails at the syscall in the job; python in the same job still connects; a hard link
    to bash under an innocent name is the same executable and is denied too; outside the job bash connects."""
    job = fresh_job_id()
    cg = test_cgroup(f"slurm/job_{job}")
    alias = tmp_path / "innocent"
    try:
        os.link(os.path.realpath("/bin/bash"), alias)          # same inode, another name (same filesystem)
    except OSError:
        alias = None
    since = mark(capture)                      # an earlier test's records are named by its own policy, not this one's
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        enforcer.apply(ppb.Policy(version=6, no_connect=[ppb.NoConnect(rule_id="t-shell", comm="bash",
                                                                        scope=job_scope(job))]), persist=False)
        devtcp = f"exec 3<>/dev/tcp/127.0.0.1/{port} && echo ok || echo refused"
        inside = run_in_cgroup(cg, ["/bin/bash", "-c", devtcp], capture_output=True, text=True)
        assert inside.stdout.strip() == "refused" and "not permitted" in inside.stderr
        py = run_in_cgroup(cg, [PYTHON, "-c", _connect_script("127.0.0.1", port)], capture_output=True, text=True)
        assert py.stdout.strip() == "ok"                        # not a shell: untouched
        outside = subprocess.run(["/bin/bash", "-c", devtcp], capture_output=True, text=True)
        assert outside.stdout.strip() == "ok"                   # out of scope: untouched
        if alias is not None:
            renamed = run_in_cgroup(cg, [str(alias), "-c", devtcp], capture_output=True, text=True)
            assert renamed.stdout.strip() == "refused"          # matched by executable, not by name
    hits = wait_for(capture, lambda r: r["kind"] == "enforcement" and r["enforcement"]["rule_id"] == "t-shell",
                    since=since)
    assert hits and hits[0]["enforcement"]["action"] == "deny_connect" and hits[0]["job"]["id"] == job


SOCKET_STDIO = """
import os, socket, sys
srv = socket.create_server(("127.0.0.1", 0))
c = socket.create_connection(srv.getsockname())
for fd in (0, 1, 2):
    os.dup2(c.fileno(), fd)
os.execv(sys.argv[1], sys.argv[1:])
"""


def test_shell_on_a_socket_is_killed_at_exec(capture, enforcer, test_cgroup):
    """A reverse shell however it was set up (here python dup2's a socket onto 0-2, then execs sh): killed before
    its first instruction. The same shell with ordinary stdio runs; python on the socket is not a shell."""
    job = fresh_job_id()
    cg = test_cgroup(f"slurm/job_{job}")
    enforcer.apply(ppb.Policy(version=7, kill=[ppb.KillBinary(rule_id="t-revsh", comm="sh", stdio_socket=True,
                                                              scope=job_scope(job))]), persist=False)
    tag = uuid.uuid4().hex[:8]
    reverse = run_in_cgroup(cg, [PYTHON, "-c", SOCKET_STDIO, "/bin/sh", "-c", f"echo {tag}"])
    assert reverse.returncode == -9                             # sh killed at exec, in the kernel
    plain = run_in_cgroup(cg, ["/bin/sh", "-c", "exit 0"])
    assert plain.returncode == 0                                # same shell, ordinary stdio
    other = run_in_cgroup(cg, [PYTHON, "-c", SOCKET_STDIO, "/bin/true"])
    assert other.returncode == 0                                # not a shell
    pair = ("import os, socket, sys\na, b = socket.socketpair()\nos.dup2(a.fileno(), 0); os.dup2(a.fileno(), 1)\n"
            "os.execv('/bin/sh', ['/bin/sh', '-c', 'exit 0'])\n")
    assert run_in_cgroup(cg, [PYTHON, "-c", pair]).returncode == 0   # a unix socketpair (launchers): not one
    hits = wait_for(capture, lambda r: r["kind"] == "enforcement" and r["enforcement"]["rule_id"] == "t-revsh")
    assert hits and hits[0]["enforcement"]["action"] == "kill_exec"
    execs = wait_for(capture, lambda r: r["kind"] == "exec" and r["exec"]["argv"] == ["/bin/sh", "-c", f"echo {tag}"])
    assert execs and execs[0]["exec"]["stdio"] == ["socket", "socket", "socket"]


def shared_map_names() -> list[str]:
    """The maps probes/gpuguard.h declares through GG_SHARED_* (the capture object defines, enforcement reuses)."""
    import re  # noqa: PLC0415

    from agent.loader import PROBES_DIR  # noqa: PLC0415

    text = (PROBES_DIR / "gpuguard.h").read_text().split("#endif", 1)[1]     # past the macros' own definitions
    ring_or_sk = re.findall(r"^GG_SHARED_(?:RING|SK_STORAGE)\((\w+),", text, re.M)
    tables = re.findall(r"^GG_SHARED_TABLE\([^,]+,[^,]+,[^,]+,\s*(\w+),", text, re.M)
    return ring_or_sk + tables


def table_fd(bpf, name: str) -> int:
    """A map's fd in a BCC module (BCC's Python tables know no sk_storage)."""
    from bcc.libbcc import lib  # noqa: PLC0415

    return lib.bpf_table_fd(bpf.module, name.encode())


def module_functions(bpf) -> set[str]:
    from bcc.libbcc import lib  # noqa: PLC0415

    return {lib.bpf_function_name(bpf.module, i).decode() for i in range(lib.bpf_num_functions(bpf.module))}


def test_enforcement_is_its_own_bpf_object_on_the_capture_objects_maps(capture, enforcer):
    """The capture object holds no enforcement program and the enforcement object no capture probe; every map
    the header shares is one kernel map seen from both (what an enforcement program writes to the priority ring
    is what the capture loop drains - the kill tests above read those records)."""
    from agent.bpf_links import map_id  # noqa: PLC0415

    capture_funcs, enforce_funcs = module_functions(capture.probes.bpf), module_functions(enforcer.bpf)
    assert {"kill_at_exec", "kill_by_argv", "argv_scan_piece", "deny_connect4"} <= enforce_funcs
    assert {"observe_connect4", "flow_egress", "gpu_device_watch"} <= capture_funcs
    assert not capture_funcs & enforce_funcs
    assert not {f for f in capture_funcs if f.startswith(("kill_", "deny_", "allow_", "argv_", "payload_"))}
    names = shared_map_names()
    assert len(names) >= 15 and {"events", "priority_events", "sock_owners", "task_origins"} <= set(names)
    for name in names:
        assert map_id(table_fd(enforcer.bpf, name)) == map_id(table_fd(capture.probes.bpf, name)), name
    assert capture.probes.enforcement() is enforcer.bpf         # compiled once per capture object


def test_enforcement_refuses_another_capture_objects_maps(capture, enforcer):
    """BCC's shared maps are per process: with a second capture object loaded, its enforcement object would bind
    to the first one's maps - the loader sees that and refuses instead of enforcing blind."""
    from agent.loader import LoaderError  # noqa: PLC0415
    from agent.runtime import Capture  # noqa: PLC0415

    second = Capture(hash_executables=False, verify_offsets=False)
    second.start()
    try:
        with pytest.raises(LoaderError, match="another capture object"):
            second.probes.enforcement()
    finally:
        second.close()


def test_an_agent_whose_enforcement_cannot_load_still_observes(tmp_path, monkeypatch, caplog):
    """Enforcement is its own object: when it fails to build or verify, capture goes on and the log says the agent
    only observes (its heartbeat then carries no policy: the collector's enforcement drift for the host)."""
    import agent.loader  # noqa: PLC0415
    from agent.config import AgentConfig  # noqa: PLC0415
    from agent.encoded import EncodedEvent, expand  # noqa: PLC0415
    from agent.main import Agent  # noqa: PLC0415

    def refuse(self):
        raise agent.loader.LoaderError("loading the enforcement programs failed: verifier said no (test)")

    monkeypatch.setattr(agent.loader.CaptureProbes, "enforcement", refuse)
    ag = Agent(AgentConfig(state_dir=str(tmp_path / "state"), gpu_sample_s=0, hash_executables=False))
    try:
        ag.start()
        assert ag.enforcer is None
        assert "enforcement unavailable, this agent only observes" in caplog.text
        assert "verifier said no (test)" in caplog.text
        tag = f"gg-observed-{uuid.uuid4().hex[:6]}"
        subprocess.run(["/bin/true", tag], check=True)
        seen = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not seen:
            records = expand(ag.capture.process(ag.capture.probes.poll(100)))
            events = [r.event() if type(r) is EncodedEvent else r for r in records]   # the agent's are bytes
            seen = [e for e in events if e.WhichOneof("body") == "exec" and tag in e.exec.argv]
        assert seen, "the agent without enforcement did not see an exec"
        status = ag.status()
        assert status["policy_version"] == 0 and not status["enforcing"]
        assert "verifier said no (test)" in status["enforcement_unavailable"]      # the heartbeat says why
    finally:
        ag.capture.close()

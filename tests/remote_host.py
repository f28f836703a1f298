"""A throw-away "remote host": a network namespace with a veth link and its own sshd.

Everything is created by the fixture and removed afterwards (the sshd by PID,
then the namespace, which takes the veth pair with it).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path


@dataclass
class RemoteHost:
    netns: str
    addr: str
    key: Path
    proc: subprocess.Popen

    def ssh_args(self) -> list[str]:
        return ["-i", str(self.key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5"]

    def in_ns(self, *cmd: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.netns, *cmd], capture_output=True, text=True, **kw)

    def listening(self, port: int) -> bool:
        out = self.in_ns("ss", "-ltnH").stdout
        return any(line.split()[3].endswith(f":{port}") for line in out.splitlines() if len(line.split()) > 3)


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@contextlib.contextmanager
def remote_host(tmp: Path):
    if not shutil.which("sshd") and not Path("/usr/sbin/sshd").exists():
        raise RuntimeError("openssh-server is not installed (scripts/setup.sh installs it)")
    tag = uuid.uuid4().hex[:6]
    netns, host_if, ns_if = f"gg{tag}", f"gg{tag}h", f"gg{tag}n"
    octet = random.randint(1, 250)
    host_ip, ns_ip = f"10.231.{octet}.1", f"10.231.{octet}.2"
    proc = None
    try:
        _run("ip", "netns", "add", netns)
        _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _run("ip", "link", "set", ns_if, "netns", netns)
        _run("ip", "addr", "add", f"{host_ip}/30", "dev", host_if)
        _run("ip", "link", "set", host_if, "up")
        _run("ip", "netns", "exec", netns, "ip", "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        _run("ip", "netns", "exec", netns, "ip", "link", "set", ns_if, "up")
        _run("ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up")
        d = tmp / "sshd"
        d.mkdir()
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key"))
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "client_key"))
        (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
        os.chmod(d / "authorized_keys", 0o600)
        (d / "sshd_config").write_text(
            f"ListenAddress {ns_ip}\nPort 22\nHostKey {d / 'host_key'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
            f"PidFile {d / 'sshd.pid'}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nAllowTcpForwarding yes\n"
            "GatewayPorts no\nLogLevel VERBOSE\n")
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        log = open(d / "sshd.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(["ip", "netns", "exec", netns, "/usr/sbin/sshd", "-D", "-e", "-f",
                                 str(d / "sshd_config")], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                s.settimeout(0.5)
                if s.connect_ex((ns_ip, 22)) == 0:
                    break
            if proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(d / 'sshd.log').read_text()}")
            time.sleep(0.1)
        yield RemoteHost(netns, ns_ip, d / "client_key", proc)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)

"""A lab for tests, benchmarks and the demo: fake remote hosts, fake pools, fake miners, job cgroups.

Dev-only: it lives in the source checkout, not in the installed package (pyproject.toml includes
agent, collector, gpuguard and gpuguard_cli only).

Everything here is harmless and local: the "remote host" is a network namespace
this process creates (veth link, its own sshd), the "pool" listens on loopback,
the "miner" only sends a stratum handshake and never hashes. Every helper
removes what it created, by PID and by name, also when the caller fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "gpuguard_cli.main"]


def lab_credentials(*agent_hosts: str) -> str:
    """Benchmarks and labs keep their credentials in a throwaway directory (never /etc/gpuguard): set
    GPUGUARD_AUTH_DIR for this process and its children, issue the agents' credentials; returns the dir."""
    from gpuguard.credentials import CredentialStore  # noqa: PLC0415

    if not os.environ.get("GPUGUARD_AUTH_DIR"):
        os.environ["GPUGUARD_AUTH_DIR"] = tempfile.mkdtemp(prefix="gpuguard-lab-auth-")
    for host in agent_hosts:
        CredentialStore().issue("agent", f"agent-{host}", host)
    return os.environ["GPUGUARD_AUTH_DIR"]


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (/proc/PID/stat), for benchmarks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """A process's resident size now (/proc/PID/statm), for memory-bound checks."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


_HANDED_OUT: set[int] = set()


def ephemeral_range() -> range:
    """The ports the kernel picks for outgoing connections and bind(0) here (ip_local_port_range)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def free_port() -> int:
    """A port nothing listens on now, for a server a test starts later: never one handed out before in this
    process, and outside the ephemeral range, so neither another free_port() nor some process's outgoing
    connection (an agent, a client) can take it between now and the server's bind."""
    ephemeral = ephemeral_range()
    for _ in range(1000):
        port = random.randint(10000, 65535)
        if port in ephemeral or port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free port outside the ephemeral range")


def wait_until(predicate: Callable[[], object], timeout: float = 30.0, what: str = "", every: float = 0.1):
    """The predicate's first truthy value within timeout; AssertionError naming what was awaited otherwise. The one
    wait of the tests and benches: a positive signal to wait for, never a sleep, and a timeout that fails loudly."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or predicate}")
        time.sleep(every)


def wait_for_text(path: Path, text: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}) before logging {text!r}:\n{path.read_text()}")
        time.sleep(0.05)
    raise TimeoutError(f"{text!r} not in {path} after {timeout}s:\n{path.read_text() if path.exists() else ''}")


class Service:
    def __init__(self, argv: list[str], log: Path, ready: str, ready_within_s: float = 60.0,
                 explain: Callable[[], str] | None = None) -> None:
        """ready_within_s: how long start() waits for the ready line (longer than any deadline of the service's own
        start, or a slow start the service would survive fails the test); explain: more to say when it does not
        come (the logs of the servers it depends on)."""
        self.argv, self.log, self.ready = argv, log, ready
        self.ready_within_s, self.explain = ready_within_s, explain
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> Service:
        start_mark = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=out, cwd=ROOT)
        if wait:
            deadline = time.monotonic() + self.ready_within_s
            while time.monotonic() < deadline:
                if self.ready in self.log.read_text(errors="replace")[start_mark:]:
                    return self
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.argv[3]} exited {self.proc.returncode}:\n{self.log.read_text()}")
                time.sleep(0.05)
            self.stop()                       # not left running behind a failed test
            more = f"\n{self.explain()}" if self.explain else ""
            raise TimeoutError(f"{self.argv[3]} not ready after {self.ready_within_s:.0f} s:\n"
                               f"{self.log.read_text()}{more}")
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(30)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.kill(signal.SIGTERM)
        with contextlib.suppress(Exception):
            self.kill(signal.SIGKILL)


def local_collector(tmp: Path, port: int, *extra: str) -> Service:
    """A collector on 127.0.0.1:port with its SQLite store and log in tmp (``collector.db``, ``collector.log``)."""
    return Service([*CLI, "collector", "--listen", f"127.0.0.1:{port}", "--store", str(tmp / "collector.db"), *extra],
                   tmp / "collector.log", "collector listening on")


def local_agent(tmp: Path, port: int, host_id: str, *extra: str) -> Service:
    """An agent shipping to the collector on 127.0.0.1:port, its spool, state and log in tmp."""
    return Service([*CLI, "agent", "--collector", f"127.0.0.1:{port}", "--spool-dir", str(tmp / "spool"),
                    "--state-dir", str(tmp / "agent-state"), "--host-id", host_id, "--quiet", *extra],
                   tmp / "agent.log", "agent running")     # capture, enforcement and shipping all started


def wait_policy_acked(port: int, host: str, version: int | None = None, timeout: float = 20) -> int:
    """Wait until the agent on ``host`` runs ``version`` (default: the collector's current policy)."""
    reply: dict = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run([*CLI, "policy", "show", "--json", "--collector", f"127.0.0.1:{port}"],
                             capture_output=True, text=True, cwd=ROOT, check=False)
        if out.returncode == 0:
            reply = json.loads(out.stdout)
            want = version or int(reply["policy"]["version"])
            if any(a["host_id"] == host and int(a["version"]) == want for a in reply["agents"]):
                return want
        time.sleep(0.2)
    raise TimeoutError(f"agent {host} never acked policy {version or 'current'}: {reply}")


FAKE_MINER = textwrap.dedent("""\
    #!/usr/bin/python3
    # A harmless stand-in for a miner: a stratum handshake to a local fake pool, then idle. No hashing.
    import json, os, socket, sys, time
    url = next((a for a in sys.argv if "://" in a), None)
    port = int(os.environ.get("POOL_PORT", "0")) or int(url.rsplit(":", 1)[1])
    for dev in ("/dev/nvidiactl", "/dev/nvidia0"):
        try:
            os.close(os.open(dev, os.O_RDWR))
        except OSError:
            pass
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(json.dumps({"id": 1, "method": "mining.subscribe", "params": ["fake/1.0"]}).encode() + b"\\n")
    time.sleep(1.5)
""")


def install_miner(directory: Path, name: str) -> str:
    """Write the fake miner as an executable called ``name`` (comm becomes the name, as with a real binary)."""
    path = directory / "bin" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(FAKE_MINER)
    path.chmod(0o755)
    return str(path)


class FakePool:
    """Loopback listener recording what each client sent."""

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.create_server(("127.0.0.1", port))
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _greet(self, conn) -> bytes:
        """What a subclass says before reading (a handshake); returns what it read doing so."""
        return b""

    def _read(self, conn) -> None:
        conn.settimeout(3)
        data = b""
        try:
            data += self._greet(conn)
            while chunk := conn.recv(4096):
                data += chunk
        except OSError:
            pass
        self.received.append(data)
        conn.close()

    def got(self, needle: bytes) -> bool:
        return any(needle in r for r in self.received)

    def settle(self, timeout: float = 6.0) -> None:
        """Wait until every accepted connection has been read to its end (or its read timed out)."""
        deadline = time.monotonic() + timeout
        while len(self.received) < self.accepted and time.monotonic() < deadline:
            time.sleep(0.1)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> FakePool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FakeSocksServer(FakePool):
    """A loopback SOCKS5 proxy that says yes to every CONNECT and connects nowhere: it records what
    the client sent through it (the greeting, the CONNECT request, then the proxied bytes)."""

    def _greet(self, conn) -> bytes:
        data = conn.recv(3)                                       # 05 01 00: one method, no auth
        conn.sendall(b"\x05\x00")
        data += conn.recv(512)                                    # 05 01 00 ATYP ADDR PORT
        conn.sendall(b"\x05\x00\x00\x01" + bytes(6))
        return data


class CommandPeer(FakePool):
    """The attacker's end of a reverse shell, on loopback: sends one command to whoever connects,
    then records what comes back. The command only touches a file the test names."""

    def __init__(self, command: bytes) -> None:
        self.command = command
        super().__init__()

    def _greet(self, conn) -> bytes:
        conn.sendall(self.command)
        return b""


class FakeResolver:
    """A DNS server on a loopback address's port 53 (UDP and TCP) answering A queries from a table, so
    tests see real DNS packets cross the kernel. Unknown names get NXDOMAIN. ``served`` counts answers."""

    def __init__(self, records: dict[str, str], address: str = "127.0.0.53", ttl: int = 60) -> None:
        self.records = {k.lower().rstrip("."): v for k, v in records.items()}
        self.address, self.ttl, self.served = address, ttl, 0
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((address, 53))
        self.tcp = socket.create_server((address, 53))
        threading.Thread(target=self._serve_udp, daemon=True).start()
        threading.Thread(target=self._serve_tcp, daemon=True).start()

    def answer(self, query: bytes) -> bytes:
        qid, _flags = query[:2], query[2:4]
        off, labels = 12, []
        while query[off]:
            labels.append(query[off + 1:off + 1 + query[off]].decode())
            off += 1 + query[off]
        question = query[12:off + 5]
        address = self.records.get(".".join(labels).lower())
        if address is None:
            return qid + b"\x81\x83\x00\x01\x00\x00\x00\x00\x00\x00" + question
        rr = b"\xc0\x0c\x00\x01\x00\x01" + self.ttl.to_bytes(4, "big") + b"\x00\x04" + socket.inet_aton(address)
        self.served += 1
        return qid + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + question + rr

    def _serve_udp(self) -> None:
        while True:
            try:
                query, peer = self.udp.recvfrom(512)
                self.udp.sendto(self.answer(query), peer)
            except OSError:
                return
            except (IndexError, UnicodeDecodeError):
                continue

    def _serve_tcp(self) -> None:
        while True:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                return
            with conn:
                try:
                    n = int.from_bytes(conn.recv(2), "big")
                    reply = self.answer(conn.recv(n))
                    conn.sendall(len(reply).to_bytes(2, "big") + reply)
                except (OSError, IndexError, UnicodeDecodeError):
                    pass

    def close(self) -> None:
        self.udp.close()
        self.tcp.close()


def dns_query(name: str, server: str = "127.0.0.53", qtype: int = 1, tcp: bool = False, qid: int = 0x4242) -> bytes:
    """The wire bytes of one DNS question (what a stub resolver sends)."""
    q = qid.to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    q += b"".join(len(lb).to_bytes(1, "big") + lb.encode() for lb in name.split(".")) + b"\x00"
    return q + qtype.to_bytes(2, "big") + b"\x00\x01"


# A client that resolves NAME at a resolver (UDP, or TCP with "tcp") and connects to the answer at once,
# printing the connect's errno (0 = connected). Runs as its own process so a test can put it in a cgroup.
# Lending a socket to a task that is not its owner (so its packets, or its closing, happen there). The lender's
# script makes the socket ``c`` and sets ``lend_as`` (an abstract unix socket name) and ``keep_copy`` (False: the
# borrower's copy is the last one), then runs LEND_SOCKET: "ready", one hand-over, and a wait until told it is done.
LEND_SOCKET = """
u = socket.socket(socket.AF_UNIX); u.bind("\\0" + lend_as); u.listen(1)
print("ready", flush=True)
conn, _ = u.accept()
conn.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [c.fileno()]))])
if not keep_copy:
    c.close()
conn.recv(1)
"""

# The borrower's scripts start with BORROW_SOCKET (argv[1]: the name lent as): the lent socket is ``s``, and
# ``u.send(b"d")`` tells the lender it is done.
BORROW_SOCKET = """
import array, os, socket, sys
u = socket.socket(socket.AF_UNIX); u.connect("\\0" + sys.argv[1])
_msg, anc, _flags, _addr = u.recvmsg(1, socket.CMSG_SPACE(4))
s = socket.socket(fileno=array.array("i", anc[0][2][:4])[0])
"""

# Connects a TCP socket (argv: port, name to lend it as) and lends it, keeping its own copy.
SOCKET_OWNER = """
import array, socket, sys
c = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
lend_as, keep_copy = sys.argv[2], True
""" + LEND_SOCKET

# Borrows the socket (argv: name, server name) and starts TLS on it; prints its pid.
TLS_ON_BORROWED_SOCKET = BORROW_SOCKET + """
import ssl
s.settimeout(1)
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
try:
    ctx.wrap_socket(s, server_hostname=sys.argv[2])
except (OSError, ssl.SSLError):
    pass
print(os.getpid(), flush=True)
u.send(b"d")
"""

# Borrows the socket (argv: name, bytes as hex) and sends the bytes on it; prints its pid.
SEND_ON_BORROWED_SOCKET = BORROW_SOCKET + """
import time
s.sendall(bytes.fromhex(sys.argv[2]))
time.sleep(0.3)
print(os.getpid(), flush=True)
u.send(b"d")
"""


@contextlib.contextmanager
def lent_socket(cg: Path, port: int, name: str, python: str = "/usr/bin/python3"):
    """A process in cgroup cg connects to 127.0.0.1:port and lends the socket to whoever connects to the abstract
    unix socket ``name`` (see SOCKET_OWNER); yields that process, killed on the way out."""
    owner = popen_in_cgroup(cg, [python, "-c", SOCKET_OWNER, str(port), name], stdout=subprocess.PIPE, text=True)
    try:
        if owner.stdout.readline().strip() != "ready":
            raise RuntimeError("the socket owner did not start")
        yield owner
    finally:
        owner.kill()
        owner.wait(10)


RESOLVE_CONNECT = """
import errno, socket, sys
name, server, port, transport = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
q = (0x4242).to_bytes(2, "big") + bytes([1, 0, 0, 1, 0, 0, 0, 0, 0, 0])
q += b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + bytes([0, 0, 1, 0, 1])
if transport == "tcp":
    s = socket.create_connection((server, 53)); s.sendall(len(q).to_bytes(2, "big") + q)
    n = int.from_bytes(s.recv(2), "big"); reply = b""
    while len(reply) < n:
        reply += s.recv(n - len(reply))
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3); s.sendto(q, (server, 53))
    reply = s.recv(512)
address = socket.inet_ntoa(reply[-4:])
c = socket.socket()
try:
    c.connect((address, port)); print(0)
except OSError as exc:
    print(exc.errno)
"""


# A harmless netcat: connect to 127.0.0.1:PORT, copy the socket to stdout and stdin to the socket.
# Exits 13 when its connect is refused with EPERM (what the kernel does to a process feeding a shell).
RELAY = """
import errno, os, socket, sys, threading
try:
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
except PermissionError:
    sys.exit(13)
def up():
    while data := os.read(0, 4096):
        s.sendall(data)
threading.Thread(target=up, daemon=True).start()
while data := s.recv(4096):
    os.write(1, data)
"""


def builtin_argv_kill(job_id: str, version: int = 1) -> list:
    """The built-in rules' whole-argv kill entries (Policy.argv_kill), scoped to one job only: what a test or a
    bench applies so the kernel's argv scan judges that job's execs and nothing else on the machine."""
    from collector.rules.loader import load_ruleset, rule_texts  # noqa: PLC0415 - lab stays importable alone
    from collector.rules.lowering import compile_policy  # noqa: PLC0415
    from gpuguard.v1 import policy_pb2 as ppb  # noqa: PLC0415

    entries = list(compile_policy(load_ruleset(rule_texts()), version).argv_kill)
    for e in entries:
        e.scope.CopyFrom(ppb.Scope(job_ids=[job_id]))
    return entries


def run_in_cgroup(cg: Path, argv: list[str], env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """Start argv inside cgroup cg: the child moves itself in, then execs."""
    script = f'echo $$ > "{cg}/cgroup.procs" && exec "$@"'
    return subprocess.run(["/bin/sh", "-c", script, "sh", *argv], env=env, check=kw.pop("check", False), **kw)


def popen_in_cgroup(cg: Path, argv: list[str], **kw) -> subprocess.Popen:
    script = f'echo $$ > "{cg}/cgroup.procs" && exec "$@"'
    return subprocess.Popen(["/bin/sh", "-c", script, "sh", *argv], **kw)


def remove_cgroup_tree(base: Path, patience_s: float = 10.0) -> None:
    """rmdir a cgroup subtree, deepest first, waiting for exiting processes: a cgroup whose last process is still
    being reaped refuses rmdir (EBUSY) for a moment after its cgroup.procs reads empty, so each rmdir is retried
    until ``patience_s`` has passed (a tree left behind after that is said, not hidden)."""
    if not base.exists():
        return
    deadline = time.monotonic() + patience_s
    dirs = sorted((p for p in base.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
    for path in [*dirs, base]:
        while True:
            try:
                busy = bool((path / "cgroup.procs").read_text().split())
                if not busy:
                    path.rmdir()
                    break
            except FileNotFoundError:
                break
            except OSError:
                pass
            if time.monotonic() > deadline:
                print(f"remove_cgroup_tree: {path} still busy after {patience_s:.0f} s; left behind", file=sys.stderr)
                break
            time.sleep(0.05)


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
        return subprocess.run(["ip", "netns", "exec", self.netns, *cmd], capture_output=True, text=True,
                              check=False, **kw)

    def listening(self, port: int) -> bool:
        out = self.in_ns("ss", "-ltnH").stdout
        return any(line.split()[3].endswith(f":{port}") for line in out.splitlines() if len(line.split()) > 3)


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@dataclass
class Netns:
    """A network namespace joined to this host by a veth pair: another host, as far as addresses go."""

    name: str
    host_ip: str        # this host's end
    ns_ip: str          # the namespace's end

    def run(self, *cmd: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.name, *cmd], capture_output=True, text=True,
                              check=False, **kw)


@contextlib.contextmanager
def netns_peer():
    """A test-owned namespace on a /30 of its own (10.231.N.0), removed afterwards whatever happened."""
    tag = uuid.uuid4().hex[:6]
    netns, host_if, ns_if = f"gg{tag}", f"gg{tag}h", f"gg{tag}n"
    octet = random.randint(1, 250)
    host_ip, ns_ip = f"10.231.{octet}.1", f"10.231.{octet}.2"
    try:
        _run("ip", "netns", "add", netns)
        _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _run("ip", "link", "set", ns_if, "netns", netns)
        _run("ip", "addr", "add", f"{host_ip}/30", "dev", host_if)
        _run("ip", "link", "set", host_if, "up")
        _run("ip", "netns", "exec", netns, "ip", "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        _run("ip", "netns", "exec", netns, "ip", "link", "set", ns_if, "up")
        _run("ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up")
        yield Netns(netns, host_ip, ns_ip)
    finally:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, check=False)


@contextlib.contextmanager
def remote_host(tmp: Path):
    if not shutil.which("sshd") and not Path("/usr/sbin/sshd").exists():
        raise RuntimeError("openssh-server is not installed (scripts/setup.sh installs it)")
    with netns_peer() as ns:
        proc = None
        try:
            d = tmp / "sshd"
            d.mkdir()
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key"))
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "client_key"))
            (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
            os.chmod(d / "authorized_keys", 0o600)
            (d / "sshd_config").write_text(
                f"ListenAddress {ns.ns_ip}\nPort 22\nHostKey {d / 'host_key'}\n"
                f"AuthorizedKeysFile {d / 'authorized_keys'}\n"
                f"PidFile {d / 'sshd.pid'}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nAllowTcpForwarding yes\n"
                "GatewayPorts no\nLogLevel VERBOSE\n")
            Path("/run/sshd").mkdir(parents=True, exist_ok=True)
            log = open(d / "sshd.log", "wb")  # noqa: SIM115
            proc = subprocess.Popen(["ip", "netns", "exec", ns.name, "/usr/sbin/sshd", "-D", "-e", "-f",
                                     str(d / "sshd_config")], stdout=log, stderr=log)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with socket.socket() as s:
                    s.settimeout(0.5)
                    if s.connect_ex((ns.ns_ip, 22)) == 0:
                        break
                if proc.poll() is not None:
                    raise RuntimeError(f"sshd exited: {(d / 'sshd.log').read_text()}")
                time.sleep(0.1)
            yield RemoteHost(ns.name, ns.ns_ip, d / "client_key", proc)
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)

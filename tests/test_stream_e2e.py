"""Real agent + real collector on loopback: timelines, collector crashes, collector down."""

from __future__ import annotations

import re
import subprocess
import time
import uuid

import pytest

from gpuguard.v1 import events_pb2 as pb
from tests.conftest import PYTHON, require_bpf, run_in_cgroup
from tests.services import agent, cli_json, collector, free_port, stored_events

pytestmark = pytest.mark.kernel


@pytest.fixture
def stack(tmp_path):
    require_bpf()
    port = free_port()
    host_id = f"test-{uuid.uuid4().hex[:8]}"
    col = collector(tmp_path, port)
    ag = agent(tmp_path, port, host_id)
    yield tmp_path, port, host_id, col, ag
    ag.stop()
    col.stop()


def tagged_execs(db, host_id: str, tag: str) -> list[int]:
    seqs = []
    for seq, kind, body in stored_events(db, host_id):
        if kind == "exec":
            ev = pb.Event.FromString(body)
            if tag in ev.exec.argv and ev.exec.filename == "/bin/true":
                seqs.append(seq)
    return seqs


def wait_stored(db, host_id, tag, n, timeout=30.0) -> list[int]:
    """The tagged execs once n are stored and a sentinel exec made after them is stored too: the agent ships and
    the collector stores in seq order, so nothing of the workload (no late duplicate either) is still in flight."""
    deadline = time.monotonic() + timeout
    seqs: list[int] = []
    sentinel = f"{tag}-sentinel"
    while time.monotonic() < deadline:
        if db.exists():
            seqs = tagged_execs(db, host_id, tag)
            if len(seqs) >= n:
                subprocess.run(["/bin/true", sentinel], check=True)
                while not tagged_execs(db, host_id, sentinel) and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert tagged_execs(db, host_id, sentinel), "the sentinel exec was never stored"
                return tagged_execs(db, host_id, tag)
        time.sleep(0.2)
    return seqs


WORKLOAD = (
    "import os, socket\n"
    "srv = socket.create_server(('127.0.0.1', 0)); port = srv.getsockname()[1]\n"
    "try:\n    os.close(os.open('/dev/nvidia7', os.O_RDWR))\nexcept OSError:\n    pass\n"
    "socket.create_connection(('127.0.0.1', port)).close()\n"
)


def test_job_timeline_in_order_with_tree(stack, test_cgroup):
    tmp, port, host_id, col, ag = stack
    col.start()
    ag.start()
    cg = test_cgroup("slurm/uid_0/job_4242/step_0")
    private_dev = "mount -t tmpfs tmpfs /dev && mknod /dev/nvidia7 c 195 7 && "   # a GPU node, no driver
    run_in_cgroup(cg, ["unshare", "-m", "/bin/sh", "-c", private_dev + f"{PYTHON} -c \"$0\"; /bin/true done-4242",
                       WORKLOAD], check=True)
    deadline = time.monotonic() + 30
    kinds: list[str] = []
    while time.monotonic() < deadline:
        reply = cli_json(port, "timeline", "4242", "--host", host_id)
        kinds = [next((k for k in ("exec", "gpu_open", "connect", "listen", "exit", "gap") if k in e["event"]), "other")
                 for e in reply["events"]]
        if "connect" in kinds and kinds.count("exec") >= 3:
            break
        time.sleep(0.3)
    events = [e["event"] for e in reply["events"]]
    py_exec = next(i for i, e in enumerate(events) if "exec" in e and e["exec"]["filename"] == PYTHON)
    gpu = next(i for i, e in enumerate(events) if "gpu_open" in e)
    conn = next(i for i, e in enumerate(events) if "connect" in e and e["connect"]["daddr"] == "127.0.0.1")
    assert py_exec < gpu < conn, kinds
    assert events[gpu]["gpu_open"]["path"] == "/dev/nvidia7"
    assert all(e["job"]["id"] == "4242" for e in events)
    ts = [int(e["ts_ns"]) for e in events]
    assert ts == sorted(ts)
    assert any(g["path"] == "/dev/nvidia7" for g in reply["first_gpu_use"])
    tree = cli_json(port, "tree", "4242", "--host", host_id)
    by_key = {n["key"]: n for n in tree["nodes"]}
    py = next(n for n in tree["nodes"] if n["exe"] == PYTHON)
    assert py["used_gpu"] is True
    assert by_key[py["parent_key"]]["comm"] == "sh"


def stored_tagged_pids(db, host_id: str, tag: str) -> list[int]:
    out = []
    for _seq, kind, body in stored_events(db, host_id) if db.exists() else []:
        if kind == "exec":
            ev = pb.Event.FromString(body)
            if tag in ev.exec.argv:
                out.append(ev.process.pid)
    return out


def test_collector_sigkill_mid_stream_loses_and_duplicates_nothing(stack):
    tmp, port, host_id, col, ag = stack
    db = tmp / "collector.db"
    col.start()
    ag.start()
    tag = uuid.uuid4().hex[:8]
    n = 300
    gen = subprocess.Popen(["/bin/sh", "-c", f"for i in $(seq 1 {n}); do /bin/true {tag}; sleep 0.01; done"])
    deadline = time.monotonic() + 30
    while len(stored_tagged_pids(db, host_id, tag)) < 30 and time.monotonic() < deadline:
        time.sleep(0.05)
    before_kill = len(stored_tagged_pids(db, host_id, tag))
    col.kill()                      # SIGKILL while events flow: some stored and acked, most not yet
    assert 30 <= before_kill < n and gen.poll() is None
    col.start()
    gen.wait(120)
    seqs = wait_stored(db, host_id, tag, n)
    pids = stored_tagged_pids(db, host_id, tag)
    assert len(seqs) == n                             # every exec the workload made...
    assert len(set(pids)) == n                        # ...stored once: n distinct processes, none twice
    log = (tmp / "agent.log").read_text()
    assert "reconnecting" in log


def test_collector_down_while_events_happen_then_all_arrive(stack):
    tmp, port, host_id, col, ag = stack
    ag.start()                      # no collector yet: everything goes to the spool
    tag = uuid.uuid4().hex[:8]
    for _ in range(50):
        subprocess.run(["/bin/true", tag], check=True)
    deadline = time.monotonic() + 30               # the agent says it holds them (status line), before we start
    depth = 0
    while depth < 50 and time.monotonic() < deadline:
        depths = re.findall(r"spool depth (\d+)", (tmp / "agent.log").read_text())
        depth = max(map(int, depths), default=0)
        time.sleep(0.1)
    assert depth >= 50
    col.start()
    seqs = wait_stored(tmp / "collector.db", host_id, tag, 50)
    assert len(seqs) == 50
    status = [pb.Event.FromString(b) for _s, k, b in stored_events(tmp / "collector.db", host_id) if k == "status"]
    assert status, "agent status events not stored"
    assert max(s.status.spool_depth for s in status) >= 50   # it reported the backlog while disconnected


def test_agent_killed_and_restarted_resumes_sequence(stack):
    tmp, port, host_id, col, ag = stack
    col.start()
    ag.start()
    tag1 = uuid.uuid4().hex[:8]
    for _ in range(20):
        subprocess.run(["/bin/true", tag1], check=True)
    assert len(wait_stored(tmp / "collector.db", host_id, tag1, 20)) == 20
    ag.kill()                       # SIGKILL the agent
    ag.start()
    tag2 = uuid.uuid4().hex[:8]
    for _ in range(20):
        subprocess.run(["/bin/true", tag2], check=True)
    second = wait_stored(tmp / "collector.db", host_id, tag2, 20)
    assert len(second) == 20
    all_seqs = [s for s, _k, _b in stored_events(tmp / "collector.db", host_id)]
    assert len(all_seqs) == len(set(all_seqs))
    assert min(second) > max(tagged_execs(tmp / "collector.db", host_id, tag1))

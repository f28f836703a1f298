"""Real probes on the real kernel: each capture probe loaded and triggered for real."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from agent.decode import SIZES
from agent.lifecycle_batch import LIVES_MIN
from agent.main import BUSY_DRAIN_S
from tests.conftest import PYTHON, mark, run_in_cgroup, wait_for

pytestmark = pytest.mark.kernel


def test_exec_with_long_argv_and_parent_chain(capture):
    tag = uuid.uuid4().hex[:8]
    args = [f"{tag}-{i}" for i in range(55)]
    sh = subprocess.Popen(["/bin/sh", "-c", "/bin/echo " + " ".join(args) + " >/dev/null; exit 3"])
    sh.wait()
    hits = wait_for(capture, lambda r: r["kind"] == "exec" and r["exec"]["filename"] == "/bin/echo"
                    and tag in " ".join(r["exec"]["argv"]))
    assert hits, "exec of /bin/echo not seen"
    e = hits[0]
    assert e["exec"]["argv"] == ["/bin/echo", *args][:48]   # EXEC_MAX_ARGS = 48, argv[0] included (echo is gone
    assert e["exec"]["argv_truncated"] is True          # before the agent could read /proc): 56 args > 48
    assert e["exec"]["result"] == 0
    assert e["proc"]["ppid"] == sh.pid
    ancestor_pids = [a["pid"] for a in e["proc"]["ancestors"]]
    now = [sh.pid, *true_ancestry(os.getpid())]                     # sh, pytest, ... up to PID 1, as /proc says
    assert ancestor_pids[:2] == now[:2] and ancestor_pids[-1] == 1
    rest = iter(ancestor_pids)                                       # /proc's chain, in order; an ancestor that
    assert all(pid in rest for pid in now), (ancestor_pids, now)     # exited since keeps its place (lineage
                                                                     # survives a daemonizing parent's exit)
    exits = wait_for(capture, lambda r: r["kind"] == "exit" and r["proc"]["pid"] == sh.pid)
    assert exits and exits[0]["exit"]["code"] == 3


def true_ancestry(pid: int) -> list[int]:
    chain = [pid]
    while chain[-1] != 1:
        with open(f"/proc/{chain[-1]}/status") as f:
            ppid = int(next(line for line in f if line.startswith("PPid:")).split()[1])
        if ppid == 0:
            break
        chain.append(ppid)
    return chain


def test_an_exec_wakes_a_reader_waiting_on_an_idle_ring():
    """The priority ring wakes its reader (adaptive wakeup, probes/gpuguard.h): an agent that waits long after an
    empty drain still sees an exec at once. Without the wakeup the records sit in the ring and the poll runs to its
    timeout (the bulk ring never wakes anyone), whether the exec came before the poll began or during it."""
    import time  # noqa: PLC0415

    from agent.runtime import Capture  # noqa: PLC0415

    cap = Capture(hash_executables=False, verify_offsets=False)
    cap.start()
    try:
        cap.probes.drain()
        tag = uuid.uuid4().hex[:8]
        subprocess.run(["/bin/true", tag], check=True)
        timeout_s, waited, seen = 60.0, 0.0, False
        while not seen and waited < timeout_s:
            started = time.monotonic()
            records = cap.process(cap.probes.poll(int(timeout_s * 1000)))
            waited += time.monotonic() - started
            seen = any(r.HasField("exec") and tag in r.exec.argv for r in records)
        assert seen and waited < timeout_s / 2, f"the exec was seen after {waited:.1f} s of a {timeout_s:.0f} s wait"
    finally:
        cap.close()


def test_ring_buffer_overflow_is_counted_per_kind():
    """A one-page ring buffer that nobody drains: the kernel counts what it could not hand over."""
    from agent.runtime import Capture  # noqa: PLC0415

    cap = Capture(ringbuf_pages=1, priority_pages=1, hash_executables=False, verify_offsets=False)   # too small
    cap.start()
    try:
        tag = uuid.uuid4().hex[:8]
        for _ in range(20):                             # ~2.4 KB per exec record: the page fills at once
            subprocess.run(["/bin/true", tag], check=True)
        lost = cap.kernel_lost()
        assert lost.get("exec", 0) >= 15, lost
        seen = [ev for ev in cap.poll_once(50) if ev.HasField("exec") and tag in ev.exec.argv]
        assert len(seen) + lost["exec"] >= 20 and len(seen) <= 5
    finally:
        cap.close()


def test_failed_exec_is_a_documented_blind_spot(capture):
    """sched_process_exec fires only when the new image exists: an exec that fails is not seen (README)."""
    missing = f"/nonexistent-{uuid.uuid4().hex[:8]}"
    tag = uuid.uuid4().hex[:8]
    subprocess.run(["/bin/sh", "-c", f"{missing} 2>/dev/null; /bin/true {tag}"])
    assert wait_for(capture, lambda r: r["kind"] == "exec" and tag in r["exec"]["argv"])   # what came after it
    assert not [r for r in capture.seen if r["kind"] == "exec" and r["exec"]["filename"] == missing]


def test_exit_code_and_terminating_signal(capture):
    normal = subprocess.Popen(["/bin/sh", "-c", "exit 42"])
    normal.wait()
    killed = subprocess.Popen(["/bin/sleep", "30"])
    assert wait_for(capture, lambda r: r["kind"] == "exec" and r["proc"]["pid"] == killed.pid)
    killed.send_signal(signal.SIGTERM)
    killed.wait()
    exits = {pid: wait_for(capture, lambda r, pid=pid: r["kind"] == "exit" and r["proc"]["pid"] == pid)[0]["exit"]
             for pid in (normal.pid, killed.pid)}
    assert exits[normal.pid] == {"code": 42, "signal": 0}
    assert exits[killed.pid] == {"code": 0, "signal": signal.SIGTERM}


def test_a_loops_short_lives_are_made_from_the_columns_whole(capture):
    """The agent's own pipeline (events as bytes): a shell loop's children - forked, exec'd and gone, most of them
    within one drain - come out of the short-lives path (agent/lifecycle_batch.py) as every exec and exit, with
    their exit codes, their keys and their parent's."""
    tag = uuid.uuid4().hex[:8]
    before, since = capture.stats.short_lives, len(capture.seen)
    capture.enricher.encode_events = True
    try:
        loop = f"sleep 0.2; for i in $(seq 60); do /bin/true {tag}; /bin/false {tag}; done; sleep 0.2"
        shell = subprocess.Popen(["/bin/sh", "-c", loop])          # the loop's parent lives on around it
        deadline = time.monotonic() + 20
        while shell.poll() is None and time.monotonic() < deadline:   # drains paced as the agent's (agent/main.py)
            time.sleep(BUSY_DRAIN_S)
            capture.poll_once(0)
        assert wait_for(capture, lambda r: r["kind"] == "exit" and r["proc"]["pid"] == shell.pid, since=since)
        shell.wait()
    finally:
        capture.enricher.encode_events = False
    mine = [r for r in capture.seen[since:] if r["proc"]["ppid"] == shell.pid and r["kind"] in ("exec", "exit")]
    execs = {r["proc"]["pid"]: r for r in mine if r["kind"] == "exec" and r["exec"]["argv"][1:] == [tag]}
    exits = {r["proc"]["pid"]: r for r in mine if r["kind"] == "exit" and r["proc"]["pid"] in execs}
    assert len(execs) == 120 and exits.keys() == execs.keys()
    assert capture.stats.short_lives - before >= LIVES_MIN    # the path was taken (drains of fewer go the loop)
    shell_key = next(r["proc"]["key"] for r in capture.seen[since:] if r["proc"]["pid"] == shell.pid)
    for pid, ex in execs.items():
        code = 0 if ex["exec"]["filename"].endswith("true") else 1
        assert exits[pid]["exit"] == {"code": code, "signal": 0}
        assert exits[pid]["proc"]["key"] == ex["proc"]["key"] and ex["proc"]["parent_key"] == shell_key
        assert ex["proc"]["ancestors"] and not exits[pid]["proc"].get("ancestors")


def test_real_parent_comes_from_the_kernel(capture):
    """A double fork re-parents the grandchild before it execs: its exec names the parent the kernel has."""
    tag = uuid.uuid4().hex[:8]
    subprocess.run(["/bin/sh", "-c", f"(/bin/sleep 0.3; exec /bin/sleep 3 {tag}) & exit 0"])
    hits = wait_for(capture, lambda r: r["kind"] == "exec" and tag in r["exec"]["argv"], timeout=10)
    assert hits
    pid = hits[0]["proc"]["pid"]
    with open(f"/proc/{pid}/status") as f:
        truth = int(next(line for line in f if line.startswith("PPid:")).split()[1])
    assert hits[0]["proc"]["ppid"] == truth
    os.kill(pid, signal.SIGKILL)                          # ours: started by this test


def test_no_syscall_tracepoint_is_attached(capture):
    """While the capture runs, bpftool lists none of its programs on a syscall tracepoint."""
    out = subprocess.run(["bpftool", "perf", "list", "-j"], capture_output=True, text=True, check=True)
    mine = [e for e in json.loads(out.stdout) if e.get("pid") == os.getpid()]
    names = sorted(e.get("tracepoint", e.get("func", "?")) for e in mine)
    assert "sched_process_exec" in names and "sched_process_exit" in names   # the capture is really attached
    assert not [n for n in names if n.startswith(("sys_enter", "sys_exit"))], names


def test_short_exec_sees_full_argv_without_truncation(capture):
    tag = uuid.uuid4().hex[:8]
    subprocess.run(["/bin/true", tag, "two"])
    hits = wait_for(capture, lambda r: r["kind"] == "exec" and tag in r["exec"]["argv"])
    assert hits[0]["exec"]["argv"] == ["/bin/true", tag, "two"]
    assert hits[0]["exec"]["argv_truncated"] is False


def _connects(capture, port, since: int = 0):
    """This process's connects to port (since a mark: an earlier test's connect from this process - a gRPC client's
    v4-mapped socket - may have gone to the same ephemeral port)."""
    return wait_for(capture, lambda r: r["kind"] == "connect" and r["connect"]["dport"] == port
                    and r["proc"]["pid"] == os.getpid(), since=since)


def test_tcp_connect_to_loopback_listener(capture):
    since = mark(capture)
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):
            pass
    hits = _connects(capture, port, since)
    assert hits, "connect not seen"
    c = hits[0]["connect"]
    assert (c["daddr"], c["family"], c["proto"], c["result"]) == ("127.0.0.1", "inet", "tcp", 0)


def test_refused_connect_reports_econnrefused(capture):
    since = mark(capture)
    with socket.socket() as probe:       # find a free port, then close it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", port))
    hits = _connects(capture, port, since)
    assert hits and hits[0]["connect"]["result"] == -errno.ECONNREFUSED


def test_ipv6_udp_sendmsg_and_v4_mapped_connects(capture):
    since = mark(capture)
    with socket.create_server(("::1", 0), family=socket.AF_INET6) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("::1", port)):
            pass
    hits = _connects(capture, port, since)
    assert hits and (hits[0]["connect"]["daddr"], hits[0]["connect"]["family"]) == ("::1", "inet6")
    assert hits[0]["connect"]["result"] == 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.connect(("127.0.0.1", 9))
    udp = _connects(capture, 9, since)
    assert udp and udp[0]["connect"]["proto"] == "udp" and udp[0]["connect"]["result"] == 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:   # unconnected sends: once per destination
        for _ in range(50):
            u.sendto(b"x", ("127.0.0.1", 19))
    sends = _connects(capture, 19, since)
    assert len(sends) == 1 and sends[0]["connect"]["proto"] == "udp"
    with socket.create_server(("127.0.0.1", 0)) as server, socket.socket(socket.AF_INET6) as s6:
        mapped_port = server.getsockname()[1]
        s6.connect(("::ffff:127.0.0.1", mapped_port))                  # v4-mapped: goes through connect6
    mapped = _connects(capture, mapped_port, since)
    assert mapped and mapped[0]["connect"]["daddr"] == "127.0.0.1" and mapped[0]["connect"]["result"] == 0


def bash_copy(tmp_path, name: str, deleted: bool) -> tuple[str, str]:
    """A private copy of bash, and the command that makes it delete itself once running (or nothing)."""
    shell = tmp_path / name
    shell.write_bytes(Path("/bin/bash").read_bytes())
    shell.chmod(0o755)
    return str(shell), f"rm -f {shell}; " if deleted else ""


def test_a_connect_says_when_its_program_deleted_itself(capture, tmp_path):
    """A program that removes its own binary once running (miners and droppers do) carries no trait at exec; its
    connects say so (probes/connect.c reads the image's link count at a reported connect). The same copy left in
    place says nothing: the flag is the deletion, not the copy."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        pids = {}
        for deleted in (True, False):
            shell, remove = bash_copy(tmp_path, f"sh-{deleted}", deleted)
            run = subprocess.run([shell, "-c", f"{remove}exec 3<>/dev/tcp/127.0.0.1/{port}; echo $$"],
                                 capture_output=True, text=True, timeout=30)
            assert run.returncode == 0, run.stderr
            pids[deleted] = int(run.stdout.split()[-1])
            server.accept()[0].close()
    for deleted, pid in pids.items():
        hits = wait_for(capture, lambda r, pid=pid: r["kind"] == "connect" and r["proc"]["pid"] == pid
                        and r["connect"]["dport"] == port)
        assert hits, f"the connect of pid {pid} was not seen"
        assert hits[0]["connect"]["image_nolink"] is deleted, hits[0]["connect"]


GPU_OPENER = (
    "import os\n"
    "os.mkdir('/tmp/elsewhere'); os.mknod('/tmp/elsewhere/innocent', 0o600 | 0o020000, os.makedev(195, 3))\n"
    "paths = ['/dev/nvidia0', '/dev/nvidiactl', '/dev/dri/renderD128', '/dev/kfd', '/tmp/elsewhere/innocent']\n"
    "for p in paths:\n"
    "    try:\n"
    "        os.close(os.open(p, os.O_RDWR))\n"
    "    except OSError as e:\n"
    "        print(p, e.errno)\n"
    "try:\n"
    "    os.close(os.open('nvidia0', os.O_RDONLY, dir_fd=os.open('/dev', os.O_RDONLY | os.O_DIRECTORY)))\n"
    "except OSError:\n"
    "    pass\n"
)


def test_gpu_device_opens_by_number_outside_any_job(capture):
    """Nodes made in a private /dev and /tmp (tmpfs in a mount namespace, nothing leaks), opened by a
    process in the root cgroup: by path, through a dirfd and under an innocent name."""
    script = (
        "set -e; mount -t tmpfs tmpfs /dev; mount -t tmpfs tmpfs /tmp; mkdir /dev/dri; "
        "mknod /dev/nvidia0 c 195 0; mknod /dev/nvidiactl c 195 255; mknod /dev/dri/renderD128 c 226 128; "
        f"exec {PYTHON} -c \"$0\""
    )
    proc = subprocess.run(["unshare", "-m", "/bin/sh", "-c", script, GPU_OPENER], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    opener = wait_for(capture, lambda r: r["kind"] == "exec" and r["exec"]["filename"] == PYTHON
                      and "-c" in r["exec"]["argv"] and "renderD128" in " ".join(r["exec"]["argv"]))
    pid = opener[0]["proc"]["pid"]
    assert opener[0]["job"]["kind"] == "host"
    assert wait_for(capture, lambda r: r["kind"] == "exit" and r["proc"]["pid"] == pid)   # all its opens came first
    opens = [(r["gpu_open"]["path"], r["gpu_open"]["major"], r["gpu_open"]["minor"]) for r in capture.seen
             if r["kind"] == "gpu_open" and r["proc"]["pid"] == pid]
    assert opens == [("/dev/nvidia0", 195, 0), ("/dev/nvidiactl", 195, 255), ("/dev/dri/renderD128", 226, 128),
                     ("/dev/nvidia3", 195, 3),        # /tmp/elsewhere/innocent, named by its number
                     ("/dev/nvidia0", 195, 0)]        # 'nvidia0' relative to a dirfd of /dev
    assert "/dev/kfd 2" in proc.stdout                  # never created: no device check, nothing to report


def test_a_gpu_open_says_when_its_program_deleted_itself(capture, tmp_path):
    """The same for GPU opens (probes/gpu_dev.c): a copy of bash that removes itself and opens /dev/nvidia0 (a node
    made in a private /dev: the hook sees the open before any driver) is flagged; the copy left in place is not."""
    pids = {}
    for deleted in (True, False):
        shell, remove = bash_copy(tmp_path, f"gpu-sh-{deleted}", deleted)
        inner = f"{remove}echo $$; exec 4</dev/nvidia0 || true"
        script = f"set -e; mount -t tmpfs tmpfs /dev; mknod /dev/nvidia0 c 195 0; exec {shell} -c \"$0\""
        run = subprocess.run(["unshare", "-m", "/bin/sh", "-c", script, inner], capture_output=True, text=True,
                             timeout=30)
        pids[deleted] = int(run.stdout.split()[0])
    for deleted, pid in pids.items():
        hits = wait_for(capture, lambda r, pid=pid: r["kind"] == "gpu_open" and r["proc"]["pid"] == pid)
        assert hits, f"the GPU open of pid {pid} was not seen"
        assert hits[0]["gpu_open"]["image_nolink"] is deleted, hits[0]["gpu_open"]
        assert hits[0]["gpu_open"]["flags"] & 0x100 == 0          # the bit is taken out of the access flags

def test_dev_null_open_storm_reaches_no_user_space(capture):
    storm = "import os\nfor _ in range(20000):\n    os.close(os.open('/dev/null', os.O_RDONLY))\n"
    proc = subprocess.run([PYTHON, "-c", storm])
    assert proc.returncode == 0
    started = wait_for(capture, lambda r: r["kind"] == "exec" and r["exec"]["argv"][-1:] == [storm])
    pid = started[0]["proc"]["pid"]
    assert wait_for(capture, lambda r: r["kind"] == "exit" and r["proc"]["pid"] == pid)   # the storm is over
    from_storm = [r["kind"] for r in capture.seen if r["proc"]["pid"] == pid]
    assert "gpu_open" not in from_storm
    assert len(from_storm) <= 4, from_storm                 # the exec and its exit, nothing per open


def test_slurm_job_from_cgroup_path(capture, test_cgroup):
    cg = test_cgroup("slurm/uid_0/job_4242/step_0/task_0")
    tag = uuid.uuid4().hex[:8]
    run_in_cgroup(cg, ["/bin/true", tag], check=True)
    hits = wait_for(capture, lambda r: r["kind"] == "exec" and r["exec"]["argv"] == ["/bin/true", tag])
    assert hits[0]["job"] == {"kind": "slurm", "id": "4242", "name": "step_0"}
    assert hits[0]["proc"]["cgroup"].endswith("/job_4242/step_0/task_0")


def test_kubernetes_pod_from_cgroup_path(capture, test_cgroup):
    pod = str(uuid.uuid4())
    container = uuid.uuid4().hex * 2
    cg = test_cgroup(
        f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{pod.replace('-', '_')}.slice/"
        f"cri-containerd-{container}.scope"
    )
    tag = uuid.uuid4().hex[:8]
    run_in_cgroup(cg, ["/bin/true", tag], check=True)
    hits = wait_for(capture, lambda r: r["kind"] == "exec" and r["exec"]["argv"] == ["/bin/true", tag])
    assert hits[0]["job"] == {"kind": "k8s", "id": pod, "name": container}


def test_slurm_job_id_from_environment_in_kernel(capture):
    tag = uuid.uuid4().hex[:8]
    env = {"PATH": "/usr/bin:/bin", "A_VERY_LONG_VARIABLE": "x" * 300, "SLURM_JOB_ID": "777001"}
    subprocess.run(["/bin/true", tag], env=env, check=True)
    hits = wait_for(capture, lambda r: r["kind"] == "exec" and tag in r["exec"]["argv"])
    assert hits[0]["job"] == {"kind": "slurm", "id": "777001", "name": ""}


def test_forked_child_inherits_job_and_parent(capture, test_cgroup):
    cg = test_cgroup("slurm/uid_0/job_5150/step_batch")
    child = ("import os, sys\npid = os.fork()\nif pid == 0:\n"
             "    try:\n        os.open('/dev/nvidia5', os.O_RDONLY)\n    except OSError:\n        pass\n"
             "    os._exit(0)\nos.waitpid(pid, 0)\n")
    script = f"mount -t tmpfs tmpfs /dev && mknod /dev/nvidia5 c 195 5 && exec {PYTHON} -c \"$0\""
    run_in_cgroup(cg, ["unshare", "-m", "/bin/sh", "-c", script, child], check=True)
    hits = wait_for(capture, lambda r: r["kind"] == "gpu_open" and r["gpu_open"]["minor"] == 5
                    and r["job"]["id"] == "5150")
    assert hits, "gpu_open from the forked child not seen"
    rec = hits[0]
    parent = [r for r in capture.seen if r["kind"] == "exec" and r["proc"]["pid"] == rec["proc"]["ppid"]]
    assert parent and parent[0]["proc"]["key"] == rec["proc"]["parent_key"]
    assert rec["proc"]["pid"] != parent[0]["proc"]["pid"]     # the child, not the parent itself


def test_event_sizes_match_decoder_layouts(capture):
    subprocess.run(["/bin/true"])
    first, then = capture.probes.poll(100), capture.probes.drain()
    raw = first.records() + then.records()
    assert raw, "no raw events"
    for item in raw:
        kind = int.from_bytes(item[16:20], "little")
        assert len(item) == SIZES[kind], f"kind {kind}: kernel {len(item)} bytes, decoder {SIZES[kind]}"
    capture.process(first)
    capture.process(then)


def test_no_events_lost_in_normal_operation(capture):
    assert capture.kernel_lost() == {}
    assert capture.stats.decode.malformed == 0


def test_wrong_kernel_offsets_are_refused_at_start(monkeypatch):
    """The self-check proves the BTF offsets on a child process; a wrong one stops the agent with a clear error."""
    import agent.loader  # noqa: PLC0415
    from agent.loader import LoaderError  # noqa: PLC0415
    from agent.runtime import Capture  # noqa: PLC0415

    real = agent.loader.kernel_offsets

    def skewed():
        offsets = real()
        offsets["TASK_REAL_PARENT"] += 16         # the next field (parent is at +8 and equal for most tasks)
        return offsets

    monkeypatch.setattr(agent.loader, "kernel_offsets", skewed)
    cap = Capture(hash_executables=False)
    with pytest.raises(LoaderError, match="parent read as"):
        cap.start()
    assert cap.probes.bpf is None                # everything it attached is gone again


def test_the_start_up_check_holds_encoded_connects_for_the_sinks():
    """The agent encodes connects as bytes (agent/encoded.py) from its first poll, and its start-up check polls
    before any sink exists: another process's connects seen meanwhile are held for the sinks, not mistaken for
    the check's own records (an agent crashed at start on a busy node before this)."""
    from agent.encoded import EncodedEvent  # noqa: PLC0415
    from agent.runtime import Capture  # noqa: PLC0415
    from tests.conftest import require_bpf  # noqa: PLC0415

    require_bpf()
    storm = subprocess.Popen([PYTHON, "-c", "import socket, time\nend = time.time() + 60\nwhile time.time() < end:\n"
                              "    s = socket.socket()\n    try:\n        s.connect(('127.0.0.1', 9))\n"
                              "    except OSError:\n        pass\n    s.close()\n    time.sleep(0.001)\n"])
    cap = Capture(hash_executables=False)
    cap.enricher.encode_events = True
    try:
        cap.start()
        held = [r for r in cap.held if type(r) is EncodedEvent and r.pid == storm.pid]
        assert held, "no connect of the storm was seen during the start-up check"
        assert held[0].event().connect.result == -errno.ECONNREFUSED
    finally:
        storm.kill()
        storm.wait()
        cap.close()

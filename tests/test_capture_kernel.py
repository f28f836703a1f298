"""Real probes on the real kernel: each capture probe loaded and triggered for real."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import uuid

import pytest

from agent.decode import SIZES
from tests.conftest import PYTHON, run_in_cgroup, wait_for

pytestmark = pytest.mark.kernel


def test_exec_with_long_argv_and_parent_chain(capture):
    tag = uuid.uuid4().hex[:8]
    args = [f"{tag}-{i}" for i in range(25)]
    sh = subprocess.Popen(["/bin/sh", "-c", "/bin/echo " + " ".join(args) + " >/dev/null; exit 3"])
    sh.wait()
    hits = wait_for(capture, lambda r: r["kind"] == "exec" and r["exec"]["filename"] == "/bin/echo"
                    and tag in " ".join(r["exec"]["argv"]))
    assert hits, "exec of /bin/echo not seen"
    e = hits[0]
    assert e["exec"]["argv"] == ["/bin/echo", *args][:20]   # MAX_ARGS = 20, argv[0] included
    assert e["exec"]["argv_truncated"] is True          # 26 args > MAX_ARGS
    assert e["exec"]["result"] == 0
    assert e["proc"]["ppid"] == sh.pid
    ancestor_pids = [a["pid"] for a in e["proc"]["ancestors"]]
    assert ancestor_pids[0] == sh.pid
    assert os.getpid() in ancestor_pids                  # pytest itself, further up
    assert ancestor_pids[-1] == 1 or len(ancestor_pids) >= 3
    exits = wait_for(capture, lambda r: r["kind"] == "exit" and r["proc"]["pid"] == sh.pid)
    assert exits and exits[0]["exit"]["code"] == 3


def test_failed_exec_is_reported_with_errno(capture):
    missing = f"/nonexistent-{uuid.uuid4().hex[:8]}"
    subprocess.run(["/bin/sh", "-c", f"{missing} 2>/dev/null; true"])
    hits = wait_for(capture, lambda r: r["kind"] == "exec" and r["exec"]["filename"] == missing)
    assert hits and hits[0]["exec"]["result"] == -errno.ENOENT


def test_short_exec_sees_full_argv_without_truncation(capture):
    tag = uuid.uuid4().hex[:8]
    subprocess.run(["/bin/true", tag, "two"])
    hits = wait_for(capture, lambda r: r["kind"] == "exec" and tag in r["exec"]["argv"])
    assert hits[0]["exec"]["argv"] == ["/bin/true", tag, "two"]
    assert hits[0]["exec"]["argv_truncated"] is False


def _connects(capture, port):
    return wait_for(capture, lambda r: r["kind"] == "connect" and r["connect"]["dport"] == port
                    and r["proc"]["pid"] == os.getpid())


def test_tcp_connect_to_loopback_listener(capture):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):
            pass
    hits = _connects(capture, port)
    assert hits, "connect not seen"
    c = hits[0]["connect"]
    assert (c["daddr"], c["family"], c["proto"], c["result"]) == ("127.0.0.1", "inet", "tcp", 0)


def test_refused_connect_reports_econnrefused(capture):
    with socket.socket() as probe:       # find a free port, then close it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", port))
    hits = _connects(capture, port)
    assert hits and hits[0]["connect"]["result"] == -errno.ECONNREFUSED


def test_ipv6_and_udp_connects(capture):
    with socket.create_server(("::1", 0), family=socket.AF_INET6) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("::1", port)):
            pass
    hits = _connects(capture, port)
    assert hits and hits[0]["connect"]["daddr"] == "::1" and hits[0]["connect"]["family"] == "inet6"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.connect(("127.0.0.1", 9))
        udp_port = 9
    udp = _connects(capture, udp_port)
    assert udp and udp[0]["connect"]["proto"] == "udp" and udp[0]["connect"]["result"] == 0


GPU_OPENER = (
    "import os\n"
    "for p in ['/dev/nvidia0', '/dev/nvidiactl', '/dev/dri/renderD128', '/dev/kfd', '/dev/nvidia-uvm']:\n"
    "    try:\n"
    "        os.close(os.open(p, os.O_RDWR))\n"
    "    except OSError as e:\n"
    "        print(p, e.errno)\n"
)


def test_gpu_device_open_without_a_driver(capture):
    """Device nodes made in a private /dev (tmpfs in a mount namespace): nothing leaks."""
    script = (
        "set -e; mount -t tmpfs tmpfs /dev; mkdir /dev/dri; "
        "mknod /dev/nvidia0 c 195 0; mknod /dev/nvidiactl c 195 255; mknod /dev/dri/renderD128 c 226 128; "
        f"exec {PYTHON} -c \"$0\""
    )
    proc = subprocess.run(["unshare", "-m", "/bin/sh", "-c", script, GPU_OPENER], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    opener = wait_for(capture, lambda r: r["kind"] == "exec" and r["exec"]["filename"] == PYTHON
                      and "-c" in r["exec"]["argv"] and "renderD128" in " ".join(r["exec"]["argv"]))
    pid = opener[0]["proc"]["pid"]
    hits = wait_for(capture, lambda r: r["kind"] == "gpu_open" and r["proc"]["pid"] == pid
                    and r["gpu_open"]["path"] == "/dev/nvidia-uvm")
    assert hits
    by_path = {r["gpu_open"]["path"]: r["gpu_open"]["result"] for r in capture.seen
               if r["kind"] == "gpu_open" and r["proc"]["pid"] == pid}
    assert by_path["/dev/nvidia0"] == -errno.ENXIO          # node exists, no driver answers
    assert by_path["/dev/nvidiactl"] == -errno.ENXIO
    assert by_path["/dev/dri/renderD128"] == -errno.ENXIO
    assert by_path["/dev/kfd"] == -errno.ENOENT             # not created: still reported
    assert by_path["/dev/nvidia-uvm"] == -errno.ENOENT


def test_dev_null_open_storm_reaches_no_user_space(capture):
    storm = "import os\nfor _ in range(20000):\n    os.close(os.open('/dev/null', os.O_RDONLY))\n"
    proc = subprocess.run([PYTHON, "-c", storm])
    assert proc.returncode == 0
    started = wait_for(capture, lambda r: r["kind"] == "exec" and r["exec"]["argv"][-1:] == [storm])
    pid = started[0]["proc"]["pid"]
    wait_for(capture, lambda r: r["kind"] == "exit" and r["proc"]["pid"] == pid)
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
             "    try:\n        os.open('/dev/nvidia-gpuguard-none', os.O_RDONLY)\n    except OSError:\n        pass\n"
             "    os._exit(0)\nos.waitpid(pid, 0)\n")
    run_in_cgroup(cg, [PYTHON, "-c", child], check=True)
    hits = wait_for(capture, lambda r: r["kind"] == "gpu_open" and r["gpu_open"]["path"] == "/dev/nvidia-gpuguard-none")
    assert hits, "gpu_open from the forked child not seen"
    rec = hits[0]
    assert rec["job"]["id"] == "5150"
    parent = [r for r in capture.seen if r["kind"] == "exec" and r["proc"]["pid"] == rec["proc"]["ppid"]]
    assert parent and parent[0]["proc"]["key"] == rec["proc"]["parent_key"]


def test_event_sizes_match_decoder_layouts(capture):
    subprocess.run(["/bin/true"])
    raw = capture.probes.poll(100)
    raw += capture.probes.drain()
    assert raw, "no raw events"
    for item in raw:
        kind = int.from_bytes(item[16:20], "little")
        assert len(item) == SIZES[kind], f"kind {kind}: kernel {len(item)} bytes, decoder {SIZES[kind]}"
    capture.process(raw)


def test_no_events_lost_in_normal_operation(capture):
    assert capture.kernel_lost() == {}
    assert capture.stats.decode.malformed == 0

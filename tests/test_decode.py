"""Pure decoding and job-resolution logic on synthetic input."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from agent.decode import (
    CONNECT_TAIL,
    EXEC_TAIL,
    HEADER,
    MalformedEvent,
    decode,
    decode_batch,
)
from agent.events import (
    ConnectEvent,
    ConnectResultEvent,
    DecodeStats,
    ExecEvent,
    ExitEvent,
    ForkEvent,
    GpuOpenEvent,
)
from agent.gpu_names import gpu_node_name
from agent.jobs import DEFAULT_PATTERNS, HOST_JOB, Job, JobPattern, find_cgroup2_mount, match_job

HEADER_H = Path(__file__).resolve().parent.parent / "probes" / "gpuguard.h"


def header(kind: int, result: int = 0, comm: bytes = b"prog") -> bytes:
    return HEADER.pack(123456789, 42, kind, 1001, 1000, 0, 0, result, comm)


def test_exec_argv_flags_and_parent():
    args = b"python\0train.py\0--lr\0"
    raw = header(1) + EXEC_TAIL.pack(3, len(args), 1, 0, b"/usr/bin/python", b"4242", 0, 77, 0, 0, 0, 5511, 0x800001,
                                     0, 1_700_000_000_123_456_789, args)
    ev = decode(raw)
    assert isinstance(ev, ExecEvent)
    assert ev.exe_inode == (0x800001, 5511, 1_700_000_000_123_456_789)   # the image, from the kernel (exe_hash)
    assert ev.argv == ["python", "train.py", "--lr"]
    assert ev.argv_truncated and not ev.argv_fault
    assert ev.filename == "/usr/bin/python" and ev.slurm_job_env == "4242" and ev.ppid == 77
    assert ev.hdr.pid == 1000 and ev.hdr.tid == 1001 and ev.hdr.comm == "prog"


def test_connect_v4_v6_mapped_and_outcome():
    tail = CONNECT_TAIL
    v4 = decode(header(4) + tail.pack(2, 3333, 1, bytes([10, 1, 2, 3]) + bytes(12), 0xFFFF8880DEAD, 6, 0, 41, 0))
    assert isinstance(v4, ConnectEvent) and (v4.daddr, v4.dport, v4.sk, v4.sendmsg) == ("10.1.2.3", 3333,
                                                                                         0xFFFF8880DEAD, False)
    assert v4.repeats == 41                                  # identical connects folded in the kernel
    v6 = decode(header(4) + tail.pack(10, 22, 1, bytes(15) + b"\x01", 1, 6, 0, 0, 0))
    assert v6.daddr == "::1"
    mapped = decode(header(4) + tail.pack(10, 22, 2, bytes(10) + b"\xff\xff" + bytes([127, 0, 0, 1]), 1, 17, 1, 0, 0))
    assert mapped.daddr == "127.0.0.1" and mapped.sendmsg
    outcome = decode(header(8, -111) + struct.pack("<Q", 0xFFFF8880DEAD))
    assert isinstance(outcome, ConnectResultEvent) and (outcome.sk, outcome.hdr.result) == (0xFFFF8880DEAD, -111)


def test_fork_exit_and_gpu_open():
    fork = decode(header(2) + struct.pack("<II", 4321, 999))
    assert isinstance(fork, ForkEvent) and (fork.child_pid, fork.parent_pid) == (4321, 999)
    killed = decode(header(3, 9) + struct.pack("<iI", 0, 9))
    assert isinstance(killed, ExitEvent) and (killed.code, killed.signal) == (0, 9)
    ev = decode(header(5) + struct.pack("<iIII", 6, 195, 255, 0))
    assert isinstance(ev, GpuOpenEvent) and (ev.major, ev.minor, ev.flags) == (195, 255, 6)


def test_gpu_nodes_are_named_from_their_device_numbers():
    drivers = {195: "nvidia-frontend", 226: "drm", 508: "nvidia-uvm", 240: "kfd"}
    assert gpu_node_name(195, 0, drivers) == "/dev/nvidia0"
    assert gpu_node_name(195, 255, drivers) == "/dev/nvidiactl"
    assert gpu_node_name(226, 128, drivers) == "/dev/dri/renderD128"
    assert gpu_node_name(226, 1, drivers) == "/dev/dri/card1"
    assert gpu_node_name(508, 0, drivers) == "/dev/nvidia-uvm"
    assert gpu_node_name(240, 0, drivers) == "/dev/kfd"
    assert gpu_node_name(499, 3, drivers) == "<char device 499:3>"


def test_malformed_events_are_counted_not_raised():
    stats = DecodeStats()
    good = header(3)                                   # an exit: header + 8 bytes
    out = decode_batch([b"short", header(99) + bytes(100), header(1), good + bytes(8)], stats)
    assert len(out) == 1 and stats.malformed == 3 and stats.decoded == 1
    with pytest.raises(MalformedEvent, match="unknown event kind"):
        decode(header(99))


@pytest.mark.parametrize("path,expected", [
    ("/system.slice/slurmstepd.scope/job_4242/step_0/user/task_0", Job("slurm", "4242", "step_0")),
    ("/slurm/uid_1000/job_17/step_batch", Job("slurm", "17", "step_batch")),
    ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c3d4e_1111_2222_3333_444455556666.slice/"
     "cri-containerd-" + "a" * 64 + ".scope",
     Job("k8s", "1b2c3d4e-1111-2222-3333-444455556666", "a" * 64)),
    ("/kubepods/besteffort/pod1b2c3d4e-1111-2222-3333-444455556666/" + "b" * 64,
     Job("k8s", "1b2c3d4e-1111-2222-3333-444455556666", "b" * 64)),
    ("/system.slice/docker-" + "c" * 64 + ".scope", Job("container", "c" * 64)),
    ("/system.slice/sshd.service", Job("systemd", "sshd.service")),
    ("/user.slice/user-0.slice/session-3.scope", Job("systemd", "session-3.scope")),
    ("/", HOST_JOB),
])
def test_job_patterns(path, expected):
    assert match_job(path) == expected


def test_user_pattern_wins_and_needs_an_id_group():
    custom = JobPattern.of("batch", r"/lsf/(?P<id>\d+)")
    assert match_job("/lsf/99/job_5", (custom, *DEFAULT_PATTERNS)) == Job("batch", "99")
    with pytest.raises(ValueError, match="named group 'id'"):
        JobPattern.of("bad", r"/x/(\d+)")


def test_cgroup2_mount_discovery_from_mountinfo(tmp_path):
    mi = tmp_path / "mountinfo"
    mi.write_text("30 25 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
                  "31 25 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n")
    assert str(find_cgroup2_mount(mi)) == "/sys/fs/cgroup/unified"

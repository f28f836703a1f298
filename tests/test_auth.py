"""Every RPC has an identity and a role; policy changes and kill orders are audited (append-only)."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess

import grpc
import pytest

from collector.app import CollectorConfig
from gpuguard.credentials import CredentialStore, TokenVerifier, find_token, token_hash
from gpuguard.tls import open_channel
from gpuguard.v1 import collector_pb2 as cpb
from gpuguard.v1 import collector_pb2_grpc as cgrpc
from tests.services import CLI, ROOT, admin, bearer, collector_in_thread, issue

HOSTILE_POLICY = """
default_mode: monitor
rules:
  - id: kill-python
    description: kill every python
    event: exec
    match: {exe_name_in: [python3]}
    action: kill
"""


@pytest.fixture
def collector(tmp_path):
    with collector_in_thread(CollectorConfig(listen="127.0.0.1:0", store=str(tmp_path / "c.db"))) as app:
        yield app


def query(port: int, method: str, request, metadata=None):
    with open_channel(f"127.0.0.1:{port}") as ch:
        return getattr(cgrpc.QueryStub(ch), method)(request, timeout=5, metadata=metadata)


def test_credentials_are_root_only_hashed_and_revocable(tmp_path):
    store = CredentialStore(tmp_path / "auth")
    made = store.bootstrap("node-1")
    assert made == ["admin", "agent (host node-1)"]
    assert store.bootstrap("node-1") == []                      # idempotent
    assert stat.S_IMODE(os.stat(store.dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(store.tokens_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(store.file).st_mode) == 0o600
    admin_token = store.token_path("admin").read_text().strip()
    assert stat.S_IMODE(os.stat(store.token_path("admin")).st_mode) == 0o600
    assert admin_token not in store.file.read_text()           # only the hash is kept
    verifier = TokenVerifier(store)
    assert verifier.verify(admin_token).role == "admin"
    agent = verifier.verify(store.token_path("agent").read_text().strip())
    assert (agent.role, agent.host) == ("agent", "node-1")
    assert verifier.verify("guess") is None
    assert store.revoke("admin")
    assert verifier.verify(admin_token) is None                 # picked up without a restart
    assert find_token(role="admin", directory=str(tmp_path / "auth")) == ""


def test_queries_need_a_credential_and_policy_needs_admin(collector):
    port = collector.port
    for method, request in (("ListJobs", cpb.ListJobsRequest()), ("Timeline", cpb.TimelineRequest(job_id="1")),
                            ("ListAlerts", cpb.AlertsRequest()), ("GetPolicy", cpb.PolicyRequest()),
                            ("ListHosts", cpb.HostsRequest()), ("ListAudit", cpb.AuditRequest()),
                            ("ApplyPolicy", cpb.ApplyPolicyRequest(rules_yaml=HOSTILE_POLICY))):
        with pytest.raises(grpc.RpcError) as info:
            query(port, method, request)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, method
    reader = bearer(issue("reader", "alice"))
    agent = bearer(issue("agent", "agent-n1", "n1"))
    assert query(port, "ListJobs", cpb.ListJobsRequest(), reader) is not None
    version = query(port, "GetPolicy", cpb.PolicyRequest(), reader).policy.version
    for who in (reader, agent):
        with pytest.raises(grpc.RpcError) as info:
            query(port, "ApplyPolicy", cpb.ApplyPolicyRequest(rules_yaml=HOSTILE_POLICY), who)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as info:
        query(port, "ListJobs", cpb.ListJobsRequest(), agent)       # an agent credential reads nothing
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert query(port, "GetPolicy", cpb.PolicyRequest(), reader).policy.version == version   # nothing changed
    applied = query(port, "ApplyPolicy", cpb.ApplyPolicyRequest(rules_yaml=HOSTILE_POLICY), admin())
    assert applied.policy.version == version + 1
    entries = query(port, "ListAudit", cpb.AuditRequest(), reader).entries
    summary = [(e.who, e.action, e.ok) for e in entries]
    assert ("alice", "policy.apply", False) in summary              # refused attempts are audited too
    assert ("agent-n1", "policy.apply", False) in summary
    assert ("admin", "policy.apply", True) in summary
    assert all(e.peer for e in entries)


def test_audit_log_is_append_only(collector):
    collector.store.add_audit("admin", "admin", "ipv4:127.0.0.1:1", "policy.apply", "v2", True)
    for sql in ("UPDATE audit SET who='x'", "DELETE FROM audit"):
        with collector.store._lock, pytest.raises(sqlite3.IntegrityError, match="append-only"):   # the writer's lock
            collector.store.db.execute(sql)
    assert [e["who"] for e in collector.store.audit()] == ["admin"]


def test_cli_finds_the_local_admin_credential_and_explains_refusals(collector, tmp_path):
    port = f"127.0.0.1:{collector.port}"
    ok = subprocess.run([*CLI, "policy", "show", "--collector", port], capture_output=True, text=True, cwd=ROOT,
                        timeout=60)
    assert ok.returncode == 0, ok.stderr                        # root on the collector host: no flags needed
    reader_file = tmp_path / "reader.token"
    reader_file.write_text(issue("reader", "bob"))
    policy = tmp_path / "p.yaml"
    policy.write_text(HOSTILE_POLICY)
    refused = subprocess.run([*CLI, "policy", "apply", str(policy), "--collector", port, "--token-file",
                              str(reader_file)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert refused.returncode == 6 and "PERMISSION_DENIED" in refused.stderr
    nobody = subprocess.run([*CLI, "jobs", "--collector", port, "--auth-dir", str(tmp_path / "empty")],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert nobody.returncode == 6 and "UNAUTHENTICATED" in nobody.stderr
    audit = subprocess.run([*CLI, "audit", "--collector", port], capture_output=True, text=True, cwd=ROOT,
                           timeout=60)
    assert audit.returncode == 0 and "bob" in audit.stdout and "REFUSED" in audit.stdout


def test_revoking_an_agent_credential_ends_its_open_stream(collector):
    """Identity was checked once, when the stream opened: a revoked agent kept being acked and stored."""
    import queue  # noqa: PLC0415

    from gpuguard.v1 import events_pb2 as pb  # noqa: PLC0415

    token = issue("agent", "agent-revoked-node", "revoked-node")
    out: queue.Queue = queue.Queue()

    def batch(seq: int) -> cpb.AgentMessage:
        ev = pb.Event(seq=seq, ts_ns=1_700_000_000_000_000_000 + seq, exec=pb.Exec(filename="/bin/true"))
        ev.job.kind, ev.job.id = "slurm", "7"
        return cpb.AgentMessage(batch=cpb.EventBatch(events=[ev]))

    with open_channel(f"127.0.0.1:{collector.port}") as ch:
        replies = cgrpc.CollectorStub(ch).Stream(iter(out.get, None), metadata=bearer(token), timeout=30)
        out.put(cpb.AgentMessage(hello=cpb.Hello(host=pb.Host(host_id="revoked-node", hostname="n", boot_id="b"))))
        assert next(replies).WhichOneof("msg") == "hello"
        out.put(batch(1))
        assert next(m for m in replies if m.WhichOneof("msg") == "ack").ack.seq == 1
        assert CredentialStore().revoke("agent-revoked-node")
        out.put(batch(2))
        with pytest.raises(grpc.RpcError) as err:
            for m in replies:
                assert m.WhichOneof("msg") != "ack", "a revoked credential's batch was acked"
        out.put(None)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in err.value.details()
    from collector.store.base import TimelineFilter  # noqa: PLC0415

    stored = collector.store.timeline(TimelineFilter(job_id="7", host="revoked-node"))
    assert [r.event.seq for r in stored] == [1]                       # the batch after the revocation: not stored


def test_a_silent_stream_ends_when_its_credential_is_revoked_or_re_roled(collector):
    """No message needed: the stream closes within a second of identities.json changing (no kill order or policy
    reaches it after that), and the closing is audited."""
    import queue  # noqa: PLC0415
    import time  # noqa: PLC0415

    from gpuguard.v1 import events_pb2 as pb  # noqa: PLC0415

    for change in ("revoke", "re-role"):
        host = f"silent-{change}"
        token = issue("agent", f"agent-{host}", host)
        out: queue.Queue = queue.Queue()
        with open_channel(f"127.0.0.1:{collector.port}") as ch:
            replies = cgrpc.CollectorStub(ch).Stream(iter(out.get, None), metadata=bearer(token), timeout=30)
            out.put(cpb.AgentMessage(hello=cpb.Hello(host=pb.Host(host_id=host, hostname="n", boot_id="b"))))
            assert next(replies).WhichOneof("msg") == "hello"
            if change == "revoke":
                assert CredentialStore().revoke(f"agent-{host}")
            else:                                   # same name, now a reader: the stream is not an agent's any more
                store = CredentialStore()
                records = [r for r in store.load() if r.name != f"agent-{host}"]
                records.append(type(records[0])(f"agent-{host}", "reader", "", token_hash(token), time.time_ns()))
                with store._locked():
                    store._save(records)
            with pytest.raises(grpc.RpcError) as err:
                for _m in replies:                  # the policy the collector pushes, then nothing
                    pass
            out.put(None)
        # closed by the collector (without the watcher it would run to its 30 s deadline: DEADLINE_EXCEEDED)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, err.value
    audit = [a for a in collector.store.audit() if a["action"] == "credentials.stream-closed"]
    assert {a["who"] for a in audit} >= {"agent-silent-revoke", "agent-silent-re-role"}, audit

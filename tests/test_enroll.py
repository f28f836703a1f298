"""Enrollment: a node exchanges a short-lived join token for its own host-bound credential, so no node ever
holds another node's token; the join token itself can do nothing else, and it cannot take over an enrolled host."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import uuid

import grpc
import pytest

from agent.enroll import Credential
from agent.identity import HostIdentity
from collector.app import CollectorConfig
from gpuguard.credentials import CredentialStore, TokenVerifier, bearer
from gpuguard.v1 import collector_pb2 as cpb
from gpuguard.v1 import collector_pb2_grpc as cgrpc
from tests.services import CLI, ROOT, collector_in_thread
from tests.test_collector_protocol import RawStream, hello


def test_a_join_token_enrolls_each_node_once_and_does_nothing_else(tmp_path):
    store = CredentialStore()
    _name, join = store.issue_join_token(600)
    (tmp_path / "join").write_text(join + "\n")
    with collector_in_thread(CollectorConfig(listen="127.0.0.1:0", store=str(tmp_path / "c.db"))) as app:
        target = f"127.0.0.1:{app.port}"
        node_a, node_b = (f"node-{uuid.uuid4().hex[:8]}" for _ in range(2))
        cred_a = Credential(HostIdentity(node_a, node_a, "b"), target, state_dir=str(tmp_path / "a"),
                            join_token_file=str(tmp_path / "join"))
        token_a = cred_a()
        kept = tmp_path / "a" / "agent.token"
        assert token_a and kept.read_text().strip() == token_a
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600
        who = TokenVerifier(store).verify(token_a)
        assert (who.role, who.host) == ("agent", node_a)
        assert cred_a() == token_a                                    # the next connect reads the kept one
        token_b = Credential(HostIdentity(node_b, node_b, "b"), target, state_dir=str(tmp_path / "b"),
                             join_token_file=str(tmp_path / "join"))()
        assert token_b and token_b != token_a                         # one join token, a credential per node
        # the same join token cannot take over an enrolled host
        again = Credential(HostIdentity(node_a, node_a, "b"), target, state_dir=str(tmp_path / "a2"),
                           join_token_file=str(tmp_path / "join"))
        assert again() == "" and "already enrolled" in again.last_error
        # the join token streams nothing and reads nothing
        s = RawStream(app.port, token=join, host=node_a)
        s.send(hello(node_a))
        with pytest.raises(grpc.RpcError) as refused:
            s.recv()
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        s.close()
        with grpc.insecure_channel(target) as ch, pytest.raises(grpc.RpcError) as denied:
            cgrpc.QueryStub(ch).ListJobs(cpb.ListJobsRequest(), timeout=10, metadata=bearer(join))
        assert denied.value.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
        audit = [a for a in app.store.audit() if a["action"] == "credentials.enroll"]
        assert [bool(a["ok"]) for a in audit] == [True, True, False], audit
        assert "already enrolled" in audit[-1]["detail"]


def test_an_expired_join_token_enrolls_nobody(tmp_path):
    store = CredentialStore()
    name, join = store.issue_join_token(600)
    data = json.loads(store.file.read_text())
    for item in data["identities"]:
        if item["name"] == name:
            item["expires_ns"] = 1                               # long past
    store.file.write_text(json.dumps(data))
    (tmp_path / "join").write_text(join)
    with collector_in_thread(CollectorConfig(listen="127.0.0.1:0", store=str(tmp_path / "c.db"))) as app:
        host = f"node-{uuid.uuid4().hex[:8]}"
        cred = Credential(HostIdentity(host, host, "b"), f"127.0.0.1:{app.port}", state_dir=str(tmp_path / "s"),
                          join_token_file=str(tmp_path / "join"))
        assert cred() == "" and "UNAUTHENTICATED" in cred.last_error
        assert not (tmp_path / "s" / "agent.token").exists()


def test_cli_join_token_has_a_bounded_lifetime():
    out = subprocess.run([*CLI, "credentials", "join-token", "--ttl", "30m", "--json"], capture_output=True,
                         text=True, cwd=ROOT, env=os.environ)
    assert out.returncode == 0, out.stderr
    made = json.loads(out.stdout)
    assert made["ttl_s"] == 1800 and len(made["token"]) >= 40
    listed = subprocess.run([*CLI, "credentials", "list", "--json"], capture_output=True, text=True, cwd=ROOT)
    row = next(r for r in json.loads(listed.stdout) if r["name"] == made["name"])
    assert row["role"] == "join" and row["expires"] != "-"
    too_long = subprocess.run([*CLI, "credentials", "join-token", "--ttl", "9d"], capture_output=True, text=True,
                              cwd=ROOT)
    assert too_long.returncode == 2 and "lifetime" in too_long.stderr

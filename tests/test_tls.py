"""TLS and mutual TLS between agents/CLI and the collector (certificates made by the test)."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest

from agent.identity import HostIdentity
from agent.shipper import Shipper
from agent.spool import Spool
from collector.app import CollectorConfig
from gpuguard.tls import open_channel
from gpuguard.v1 import collector_pb2 as cpb
from gpuguard.v1 import collector_pb2_grpc as cgrpc
from gpuguard.v1 import events_pb2 as pb
from tests.services import admin, agent_credential, collector_in_thread


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=gpuguard-test-ca",
             "-days", "1", cwd=d)
    for name, san in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
                      ("agent", "subjectAltName=URI:gpuguard://agent/mtls-host"),
                      ("reader", "subjectAltName=URI:gpuguard://reader/alice"),
                      ("nobody", "subjectAltName=DNS:nobody")):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        (d / f"{name}.ext").write_text(san + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "1", "-extfile", f"{name}.ext", cwd=d)
    return d


def tls_config(tmp_path: Path, pki: Path, mutual: bool) -> CollectorConfig:
    return CollectorConfig(listen="127.0.0.1:0", store=str(tmp_path / "c.db"), detection=False,
                           tls_cert=str(pki / "server.crt"), tls_key=str(pki / "server.key"),
                           tls_client_ca=str(pki / "ca.crt") if mutual else "")


def list_jobs(port: int, metadata=None, **tls) -> cpb.ListJobsReply:
    with open_channel(f"127.0.0.1:{port}", **tls) as ch:
        return cgrpc.QueryStub(ch).ListJobs(cpb.ListJobsRequest(), timeout=5, metadata=metadata)


def apply_policy(port: int, text: str, metadata=None, **tls) -> cpb.ApplyPolicyReply:
    with open_channel(f"127.0.0.1:{port}", **tls) as ch:
        return cgrpc.QueryStub(ch).ApplyPolicy(cpb.ApplyPolicyRequest(rules_yaml=text), timeout=5, metadata=metadata)


def ship_one(tmp_path: Path, port: int, host: str, token: str, tls: tuple[str, str, str]) -> Spool:
    spool = Spool(tmp_path / f"spool-{host}")
    ev = pb.Event(ts_ns=1, boot_id="b", exit=pb.Exit(code=0), job=pb.Job(kind="slurm", id="77"),
                  process=pb.Process(key="k", pid=5, tid=5, ppid=1, comm="x", exe="/x", cgroup_id=1, cgroup="/"))
    spool.append([ev])
    shipper = Shipper(f"127.0.0.1:{port}", spool, HostIdentity(host, host, "b"), token=token, tls=tls)
    threading.Thread(target=shipper.run, daemon=True).start()
    deadline = time.monotonic() + 10
    while spool.depth() and shipper.reconnects == 0 and time.monotonic() < deadline:   # stored, or refused
        time.sleep(0.05)
    shipper.stop()
    return spool


def test_tls_agent_ships_and_plaintext_is_refused(tmp_path, pki):
    with collector_in_thread(tls_config(tmp_path, pki, mutual=False)) as app:
        spool = ship_one(tmp_path, app.port, "tls-host", agent_credential("tls-host"), (str(pki / "ca.crt"), "", ""))
        assert spool.depth() == 0                                   # stored and acked over TLS
        assert [j.job.id for j in list_jobs(app.port, admin(), ca=str(pki / "ca.crt")).jobs] == ["77"]
        with pytest.raises(grpc.RpcError) as info:
            list_jobs(app.port, admin())                            # plaintext client
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as info:
            list_jobs(app.port, ca=str(pki / "ca.crt"))             # TLS without any credential
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_mutual_tls_roles_come_from_the_certificate(tmp_path, pki):
    ca = str(pki / "ca.crt")

    def cert(name: str) -> dict:
        return {"ca": ca, "cert": str(pki / f"{name}.crt"), "key": str(pki / f"{name}.key")}

    with collector_in_thread(tls_config(tmp_path, pki, mutual=True)) as app:
        assert list(list_jobs(app.port, **cert("reader")).jobs) == []          # reader: may query
        with pytest.raises(grpc.RpcError) as info:
            apply_policy(app.port, "rules: []\n", **cert("reader"))            # ... but not change policy
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as info:
            list_jobs(app.port, **cert("agent"))                               # an agent's certificate cannot read
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as info:
            list_jobs(app.port, **cert("nobody"))                              # signed, but names no role
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as info:
            list_jobs(app.port, ca=ca)                                         # TLS, but no client certificate
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        tls = (ca, str(pki / "agent.crt"), str(pki / "agent.key"))
        assert ship_one(tmp_path, app.port, "mtls-host", "", tls).depth() == 0  # streams for its own host
        assert ship_one(tmp_path, app.port, "other-host", "", tls).depth() == 1  # never for another
        hosts = {r[0] for r in app.store.db.execute("SELECT DISTINCT host_id FROM events")}
        assert hosts == {"mtls-host"}

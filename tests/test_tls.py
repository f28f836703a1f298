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
from tests.services import collector_in_thread


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=gpuguard-test-ca",
             "-days", "1", cwd=d)
    for name, san in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"), ("agent", "subjectAltName=DNS:agent")):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        (d / f"{name}.ext").write_text(san + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "1", "-extfile", f"{name}.ext", cwd=d)
    return d


def tls_config(tmp_path: Path, pki: Path, mutual: bool) -> CollectorConfig:
    return CollectorConfig(listen="127.0.0.1:0", store=str(tmp_path / "c.db"), detection=False,
                           tls_cert=str(pki / "server.crt"), tls_key=str(pki / "server.key"),
                           tls_client_ca=str(pki / "ca.crt") if mutual else "")


def list_jobs(port: int, **tls) -> cpb.ListJobsReply:
    with open_channel(f"127.0.0.1:{port}", **tls) as ch:
        return cgrpc.QueryStub(ch).ListJobs(cpb.ListJobsRequest(), timeout=5)


def test_tls_agent_ships_and_plaintext_is_refused(tmp_path, pki):
    with collector_in_thread(tls_config(tmp_path, pki, mutual=False)) as app:
        spool = Spool(tmp_path / "spool")
        spool.append([{"kind": "exit", "ts_ns": 1, "boot_id": "b", "exit": {"code": 0},
                       "job": {"kind": "slurm", "id": "77", "name": ""},
                       "proc": {"key": "k", "pid": 5, "tid": 5, "ppid": 1, "parent_key": "", "comm": "x",
                                "exe": "/x", "argv": [], "uid": 0, "gid": 0, "cgroup_id": 1, "cgroup": "/",
                                "exe_sha256": ""}}])
        shipper = Shipper(f"127.0.0.1:{app.port}", spool, HostIdentity("tls-host", "tls-host", "b"),
                          tls=(str(pki / "ca.crt"), "", ""))
        threading.Thread(target=shipper.run, daemon=True).start()
        deadline = time.monotonic() + 10
        while spool.depth() and time.monotonic() < deadline:
            time.sleep(0.1)
        shipper.stop()
        assert spool.depth() == 0                                   # stored and acked over TLS
        assert [j.job.id for j in list_jobs(app.port, ca=str(pki / "ca.crt")).jobs] == ["77"]
        with pytest.raises(grpc.RpcError) as info:
            list_jobs(app.port)                                     # plaintext client
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate(tmp_path, pki):
    with collector_in_thread(tls_config(tmp_path, pki, mutual=True)) as app:
        ok = list_jobs(app.port, ca=str(pki / "ca.crt"), cert=str(pki / "agent.crt"), key=str(pki / "agent.key"))
        assert list(ok.jobs) == []
        with pytest.raises(grpc.RpcError) as info:
            list_jobs(app.port, ca=str(pki / "ca.crt"))              # TLS, but no client certificate
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE

"""Bad input on the agent stream gets a clear error; the stream and the server go on."""

from __future__ import annotations

import queue
import time

import grpc
import pytest

from collector.app import CollectorConfig
from gpuguard.v1 import collector_pb2 as cpb
from gpuguard.v1 import events_pb2 as pb
from tests.services import collector_in_thread

STREAM = "/gpuguard.v1.Collector/Stream"


@pytest.fixture
def server(tmp_path):
    cfg = CollectorConfig(listen="127.0.0.1:0", store=str(tmp_path / "c.db"), tokens=("s3cret",), detection=False)
    with collector_in_thread(cfg) as app:
        yield app


class RawStream:
    """A stream that sends raw bytes, so tests can send what no real agent would."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[
            ("grpc.max_send_message_length", 64 << 20)])
        self.out: queue.Queue = queue.Queue()
        call = self.channel.stream_stream(STREAM, request_serializer=None,
                                          response_deserializer=cpb.CollectorMessage.FromString)
        self.responses = call(iter(self.out.get, None))

    def send(self, msg) -> None:
        self.out.put(msg if isinstance(msg, bytes) else msg.SerializeToString())

    def recv(self) -> cpb.CollectorMessage:
        return next(self.responses)

    def close(self) -> None:
        self.out.put(None)
        self.channel.close()


def hello(host="h1", token="s3cret") -> cpb.AgentMessage:
    return cpb.AgentMessage(hello=cpb.Hello(host=pb.Host(host_id=host, hostname=host, boot_id="b"), token=token))


def batch(*seqs: int) -> cpb.AgentMessage:
    return cpb.AgentMessage(batch=cpb.EventBatch(events=[
        pb.Event(seq=s, ts_ns=1000 + s, exit=pb.Exit(code=0)) for s in seqs]))


def test_happy_path_ack_after_store_and_dedupe(server):
    s = RawStream(server.port)
    s.send(hello())
    assert s.recv().hello.stored_through_seq == 0
    s.send(batch(1, 2, 3))
    assert s.recv().ack.seq == 3
    s.send(batch(2, 3, 4))                       # replay overlap: duplicates ignored
    assert s.recv().ack.seq == 4
    s.close()
    assert [r[0] for r in server.store.db.execute("SELECT seq FROM events ORDER BY seq")] == [1, 2, 3, 4]


def test_malformed_message_gets_error_and_stream_continues(server):
    s = RawStream(server.port)
    s.send(hello())
    s.recv()
    s.send(b"\xff\xff\xff\xff not a protobuf")
    err = s.recv().error
    assert err.code == "INVALID_ARGUMENT" and "malformed" in err.message
    s.send(batch(1))
    assert s.recv().ack.seq == 1                  # same stream still works
    s.close()


def test_oversized_message_soft_limit_error_then_continue(server):
    s = RawStream(server.port)
    s.send(hello())
    s.recv()
    big = cpb.AgentMessage(batch=cpb.EventBatch(events=[
        pb.Event(seq=1, exec=pb.Exec(filename="x" * (9 << 20)))]))
    s.send(big)
    err = s.recv().error
    assert err.code == "RESOURCE_EXHAUSTED" and "split the batch" in err.message
    s.send(batch(1))
    assert s.recv().ack.seq == 1
    s.close()


def test_message_over_hard_limit_is_refused_by_grpc_and_server_survives(server):
    s = RawStream(server.port)
    s.send(hello())
    s.recv()
    s.send(b"\x12" + b"\x80" * 0 + bytes(20 << 20))
    with pytest.raises(grpc.RpcError) as info:
        s.recv()
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    s.close()
    again = RawStream(server.port)                # the server still serves
    again.send(hello("h2"))
    assert again.recv().HasField("hello")
    again.close()


def test_out_of_order_and_before_hello(server):
    s = RawStream(server.port)
    s.send(batch(1))
    err = s.recv().error
    assert err.code == "FAILED_PRECONDITION" and "before hello" in err.message
    s.send(hello())
    s.recv()
    s.send(batch(3, 2))
    err = s.recv().error
    assert err.code == "INVALID_ARGUMENT" and "ascending" in err.message
    s.send(batch(1, 2))
    assert s.recv().ack.seq == 2
    s.send(batch(7, 8))                           # 3..6 never sent: stored, hole recorded, told
    err = s.recv().error
    assert err.code == "OUT_OF_RANGE" and "3..6" in err.message
    assert s.recv().ack.seq == 8
    s.send(hello())
    assert s.recv().error.code == "FAILED_PRECONDITION"
    s.close()
    gaps = server.store.db.execute("SELECT from_seq, to_seq, reason FROM gaps").fetchall()
    assert gaps == [(3, 6, "not received")]


def test_unknown_agent_is_refused(server):
    s = RawStream(server.port)
    s.send(hello(token="wrong"))
    with pytest.raises(grpc.RpcError) as info:
        s.recv()
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "h1" in info.value.details()
    s.close()


@pytest.fixture
def detecting_server(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    cfg = CollectorConfig(listen="127.0.0.1:0", store=str(tmp_path / "c.db"), rules_dir=str(rules))
    with collector_in_thread(cfg) as app:
        yield app, rules


def test_rules_dir_is_hot_reloaded_and_pushed(detecting_server):
    app, rules = detecting_server
    s = RawStream(app.port)
    s.send(hello())
    assert s.recv().HasField("hello")
    first = s.recv()
    assert first.HasField("policy") and first.policy.version == app.policy.version
    before = app.policy.version
    (rules / "site.yaml").write_text(
        "rules:\n  - id: site-no-db\n    description: no prod DB from jobs\n    event: connect\n"
        "    match: {daddr_cidr_in: [198.51.100.0/24], dport_in: [5432]}\n    scope: {job_kinds: [slurm]}\n"
        "    action: block\n")
    pushed = s.recv()                                # arrives without asking
    assert pushed.HasField("policy") and pushed.policy.version == before + 1
    assert [(d.cidr, d.port) for d in pushed.policy.deny if d.rule_id == "site-no-db"] == [("198.51.100.0/24", 5432)]
    (rules / "broken.yaml").write_text("rules:\n  - id: x\n    event: nope\n")
    time.sleep(3)
    assert app.policy.version == before + 1          # an invalid file never replaces a good policy
    s.close()

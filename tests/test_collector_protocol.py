"""Bad input on the agent stream gets a clear error; the stream and the server go on."""

from __future__ import annotations

import queue
import time

import grpc
import pytest

from collector.app import CollectorConfig
from gpuguard.v1 import collector_pb2 as cpb
from gpuguard.v1 import events_pb2 as pb
from tests.services import agent_credential, bearer, collector_in_thread, issue

STREAM = "/gpuguard.v1.Collector/Stream"


@pytest.fixture
def server(tmp_path):
    cfg = CollectorConfig(listen="127.0.0.1:0", store=str(tmp_path / "c.db"), detection=False)
    with collector_in_thread(cfg) as app:
        yield app


class RawStream:
    """A stream that sends raw bytes, so tests can send what no real agent would."""

    def __init__(self, port: int, token: str | None = None, host: str = "h1") -> None:
        """Presents ``token``, by default the agent credential of ``host``; "" presents none."""
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[
            ("grpc.max_send_message_length", 64 << 20)])
        self.out: queue.Queue = queue.Queue()
        call = self.channel.stream_stream(STREAM, request_serializer=None,
                                          response_deserializer=cpb.CollectorMessage.FromString)
        token = agent_credential(host) if token is None else token
        self.responses = call(iter(self.out.get, None), metadata=bearer(token) if token else None)

    def send(self, msg) -> None:
        self.out.put(msg if isinstance(msg, bytes) else msg.SerializeToString())

    def recv(self) -> cpb.CollectorMessage:
        return next(self.responses)

    def close(self) -> None:
        self.out.put(None)
        self.channel.close()


def hello(host="h1") -> cpb.AgentMessage:
    return cpb.AgentMessage(hello=cpb.Hello(host=pb.Host(host_id=host, hostname=host, boot_id="b")))


def batch(*seqs: int) -> cpb.AgentMessage:
    return cpb.AgentMessage(batch=cpb.EventBatch(events=[
        pb.Event(seq=s, ts_ns=1000 + s % 1000, exit=pb.Exit(code=0)) for s in seqs]))


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
    again = RawStream(server.port, host="h2")     # the server still serves
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


def test_stream_without_credential_is_refused_before_anything_is_read(server):
    s = RawStream(server.port, token="")
    s.send(hello())
    with pytest.raises(grpc.RpcError) as info:
        s.recv()
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    s.close()
    s = RawStream(server.port, token="not-a-token")
    s.send(hello())
    with pytest.raises(grpc.RpcError) as info:
        s.recv()
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    s.close()


def test_reader_and_admin_identities_cannot_stream_events(server):
    for role in ("reader", "admin"):
        s = RawStream(server.port, token=issue(role, f"someone-{role}"))
        s.send(hello())
        with pytest.raises(grpc.RpcError) as info:
            s.recv()
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        s.close()


def test_an_agent_cannot_speak_for_another_host(server):
    """The attack: forge events as another host, then make it drop its spool with a huge seq."""
    victim = RawStream(server.port, host="victim")
    victim.send(hello("victim"))
    victim.recv()
    victim.send(batch(1, 2, 3))
    assert victim.recv().ack.seq == 3
    attacker = RawStream(server.port, host="attacker")          # a valid agent credential, for its own host
    attacker.send(hello("victim"))
    with pytest.raises(grpc.RpcError) as info:
        attacker.recv()
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "victim" in info.value.details()
    attacker.close()
    victim.send(batch(4))                                         # the victim's stream is untouched
    assert victim.recv().ack.seq == 4
    victim.close()
    rows = server.store.db.execute("SELECT host_id, seq FROM events ORDER BY seq").fetchall()
    assert rows == [("victim", 1), ("victim", 2), ("victim", 3), ("victim", 4)]


def test_sequence_numbers_are_range_checked(server):
    s = RawStream(server.port)
    s.send(hello())
    s.recv()
    s.send(batch(1 << 63))                                        # does not fit the store's signed 64-bit seq
    err = s.recv().error
    assert err.code == "OUT_OF_RANGE" and "maximum" in err.message
    s.send(batch(1))
    assert s.recv().ack.seq == 1                                  # the stream goes on
    s.close()
    assert server.store.db.execute("SELECT MAX(seq) FROM events").fetchone()[0] == 1


def test_events_far_from_the_collector_clock_are_flagged(server):
    s = RawStream(server.port)
    s.send(hello())
    s.recv()
    s.send(cpb.AgentMessage(batch=cpb.EventBatch(events=[
        pb.Event(seq=1, ts_ns=time.time_ns(), exit=pb.Exit(code=0)),
        pb.Event(seq=2, ts_ns=time.time_ns() + 10 * 86400 * 10**9, exit=pb.Exit(code=0))])))
    assert s.recv().ack.seq == 2
    s.close()
    bodies = [pb.Event.FromString(b) for (b,) in server.store.db.execute("SELECT body FROM events ORDER BY seq")]
    assert [e.clock_suspect for e in bodies] == [False, True]


def test_hello_must_come_in_time(tmp_path):
    cfg = CollectorConfig(listen="127.0.0.1:0", store=str(tmp_path / "c.db"), detection=False, hello_timeout_s=0.5)
    with collector_in_thread(cfg) as app:
        s = RawStream(app.port)
        with pytest.raises(grpc.RpcError) as info:
            s.recv()                                              # sent nothing at all
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
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
    deadline = time.monotonic() + 10
    while app.policy.rejected_reloads == 0 and time.monotonic() < deadline:   # the reload ran and refused it
        time.sleep(0.05)
    assert app.policy.rejected_reloads == 1
    assert app.policy.version == before + 1          # an invalid file never replaces a good policy
    s.close()

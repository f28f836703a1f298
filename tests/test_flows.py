"""Whom a flow is for, pure logic: DNS messages, TLS ClientHellos (real ones, made by Python's ssl without a
network), UDP shapes, and the address -> name memory. Hostile bytes never raise."""

from __future__ import annotations

import re
import socket
import ssl
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.flows import (
    MIN_KEEP_S,
    DestinationNames,
    datagram_shape,
    is_grease,
    parse_client_hello,
    parse_dns,
)
from lab import FakeResolver, dns_query

JA4 = re.compile(r"^t(13|12)[di]\d{4}[0-9a-z]{2}_[0-9a-f]{12}_[0-9a-f]{12}$")


def client_hello(server_name: str | None, alpn: list[str] | None = None) -> bytes:
    """The first flight Python's ssl (OpenSSL) sends for this server name, captured from a memory BIO."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def answer_for(name: str, address: str, ttl: int = 60) -> bytes:
    """A real answer from the lab resolver's encoder (compressed name pointer to the question)."""
    resolver = FakeResolver.__new__(FakeResolver)          # the encoder only, no sockets
    resolver.records, resolver.ttl, resolver.served = {name: address}, ttl, 0
    return resolver.answer(dns_query(name))


def test_sni_alpn_version_and_ja4_from_a_real_client_hello():
    hello = parse_client_hello(client_hello("xmr.pool.example", ["h2", "http/1.1"]))
    assert hello is not None and not hello.truncated
    assert hello.sni == "xmr.pool.example" and hello.alpn == ["h2", "http/1.1"] and hello.version == "1.3"
    assert JA4.match(hello.ja4) and hello.ja4[3] == "d" and hello.ja4[8:10] == "h2", hello.ja4
    # the same client and options give the same fingerprint; another server name does not change it
    assert parse_client_hello(client_hello("other.example", ["h2", "http/1.1"])).ja4 == hello.ja4


def test_no_sni_is_marked_in_the_fingerprint():
    hello = parse_client_hello(client_hello(None))
    assert hello.sni == "" and hello.ja4[3] == "i" and hello.ja4[8:10] == "00"


def test_a_cut_client_hello_still_names_its_server_but_claims_no_fingerprint():
    data = client_hello("cut.example", ["h2"])
    cut = parse_client_hello(data[:150])
    assert cut is not None and cut.truncated and cut.ja4 == ""
    assert parse_client_hello(b"GET / HTTP/1.1\r\n\r\n") is None


def test_grease_values_are_ignored():
    assert is_grease(0x0A0A) and is_grease(0xFAFA) and not is_grease(0x1301) and not is_grease(0x0A0B)


def test_dns_question_and_compressed_answers():
    q = parse_dns(dns_query("Eu1.NanoPool.org"))
    assert q and not q.response and q.questions == [("eu1.nanopool.org", "A")]
    a = parse_dns(answer_for("eu1.nanopool.org", "203.0.113.7", ttl=42))
    assert a.response and [(x.name, x.address, x.ttl) for x in a.answers] == [("eu1.nanopool.org", "203.0.113.7", 42)]
    tcp = parse_dns(struct.pack("!H", 29) + dns_query("x.example")[:29], tcp=True)
    assert tcp.questions == [("x.example", "A")]


def test_dns_pointer_loops_and_truncation_give_partial_results():
    loop = bytearray(answer_for("a.example", "203.0.113.1"))
    loop[-16:-14] = b"\xc0\x30"                  # the answer's name points forward (at itself): refused
    msg = parse_dns(bytes(loop))
    assert msg.questions == [("a.example", "A")] and msg.answers == []
    assert parse_dns(b"\x00" * 5) is None
    assert parse_dns(answer_for("a.example", "203.0.113.1")[:-3]).answers == []   # cut inside the record


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.booleans())
def test_parsers_never_raise_on_hostile_bytes(data, flag):
    parse_dns(data, tcp=flag)
    parse_client_hello(b"\x16\x03\x01" + data[:2] + b"\x01" + data)
    parse_client_hello(data)
    datagram_shape(data, len(data))


def test_udp_shapes():
    wg = bytes([1, 0, 0, 0]) + bytes(144)
    assert datagram_shape(wg, 148) == "wireguard-handshake"
    assert datagram_shape(wg[:100], 100) == ""
    assert datagram_shape(b'{"id":1,"method":"mining.subscribe","params":[]}\n', 50) == "stratum"
    assert datagram_shape(b'{"metric":"loss","value":0.1}', 30) == ""
    quic = bytes([0xC3]) + b"\0\0\0\x01" + bytes(500)
    assert datagram_shape(quic, 1250) == "quic-initial" and datagram_shape(quic, 300) == ""
    assert datagram_shape(bytes([0x38]) + bytes(8) + b"\0\0\0\0" + bytes(2), 15) == "openvpn-reset"
    assert datagram_shape(socket.inet_aton("10.0.0.1") * 4, 16) == ""


def test_names_per_job_then_host_then_unnamed():
    now = [1000.0]
    names = DestinationNames(clock=lambda: now[0])
    assert names.name_of("slurm:1", "203.0.113.9") == ("", "")          # no DNS seen: names unknowable
    names.learn("slurm:1", "pypi.org", "203.0.113.9", ttl=30)
    assert names.name_of("slurm:1", "203.0.113.9") == ("pypi.org", "job")
    assert names.name_of("slurm:2", "203.0.113.9") == ("pypi.org", "host")
    assert names.name_of("slurm:1", "::ffff:203.0.113.9") == ("pypi.org", "job")   # v4-mapped connects
    assert names.name_of("slurm:1", "198.51.100.1") == ("", "none")
    now[0] += MIN_KEEP_S + 1                                             # past max(TTL, the floor)
    assert names.name_of("slurm:1", "203.0.113.9") == ("", "none")


def test_names_are_bounded():
    names = DestinationNames(max_entries=10)
    for i in range(100):
        names.learn(f"slurm:{i}", f"n{i}.example", f"203.0.113.{i}", ttl=60)
    assert len(names.by_job) == 10 and len(names.by_host) == 10
    assert names.name_of("slurm:99", "203.0.113.99") == ("n99.example", "job")

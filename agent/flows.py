"""Whom a flow is for: DNS messages, TLS ClientHellos and UDP first datagrams, parsed from the bytes the
flow observers copy out (probes/flow.c), and the address -> name memory that names every connect.

Every parser takes hostile bytes: bounded loops, bounded compression-pointer jumps, and a truncated
capture (the kernel copies at most 512 bytes of a packet) gives a partial result, never an exception.
Hand-written rather than dnspython/scapy: those refuse truncated messages and cost a Python object tree
per packet; these read only the fields gpuguard uses.
"""

from __future__ import annotations

import functools
import hashlib
import socket
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from gpuguard.addresses import unmapped

FLOW_TLS_HELLO, FLOW_DNS_QUERY, FLOW_DNS_ANSWER, FLOW_UDP_FIRST, FLOW_UDP_INBOUND = 1, 2, 3, 4, 5   # probes/gpuguard.h
IPPROTO_TCP = 6

# ---- DNS -----------------------------------------------------------------------------------------------
QTYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 10: "NULL", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA",
          33: "SRV", 35: "NAPTR", 64: "SVCB", 65: "HTTPS", 99: "SPF", 255: "ANY"}
MAX_POINTER_JUMPS = 16
MAX_NAME = 255
MAX_ANSWERS = 64


@dataclass
class DnsAnswer:
    name: str
    rtype: int
    ttl: int
    address: str = ""          # A / AAAA


@dataclass
class DnsMessage:
    response: bool
    questions: list[tuple[str, str]] = field(default_factory=list)   # (name, qtype)
    answers: list[DnsAnswer] = field(default_factory=list)


def _read_name(data: bytes, off: int) -> tuple[str | None, int]:
    """A (possibly compressed) name at off -> (name, offset after it in the message); (None, off) if bad."""
    labels: list[str] = []
    end = -1
    jumps = 0
    total = 0
    while True:
        if off >= len(data):
            return None, off
        n = data[off]
        if n == 0:
            off += 1
            break
        if n & 0xC0 == 0xC0:
            if off + 1 >= len(data) or jumps >= MAX_POINTER_JUMPS:
                return None, off
            target = ((n & 0x3F) << 8) | data[off + 1]
            if end < 0:
                end = off + 2
            if target >= off:          # pointers only go back: no loops
                return None, off
            off = target
            jumps += 1
            continue
        if n & 0xC0:
            return None, off           # extended label types: not used
        label = data[off + 1:off + 1 + n]
        if len(label) < n:
            return None, off
        total += n + 1
        if total > MAX_NAME:
            return None, off
        labels.append(label.decode("ascii", "replace").lower())
        off += 1 + n
    return ".".join(labels), end if end >= 0 else off


def parse_dns(data: bytes, tcp: bool = False) -> DnsMessage | None:
    """A DNS message (over TCP: after its 2-byte length). Questions and A/AAAA answers; None if not DNS."""
    if tcp:
        data = data[2:]
    if len(data) < 12:
        return None
    _qid, flags, qdcount, ancount, _ns, _ar = struct.unpack_from("!HHHHHH", data)
    if flags & 0x7800:              # opcode other than QUERY
        return None
    msg = DnsMessage(response=bool(flags & 0x8000))
    off = 12
    for _ in range(min(qdcount, 4)):
        name, off = _read_name(data, off)
        if name is None or off + 4 > len(data):
            return msg if msg.questions else None
        qtype = struct.unpack_from("!H", data, off)[0]
        off += 4
        msg.questions.append((name, QTYPES.get(qtype, str(qtype))))
    for _ in range(min(ancount, MAX_ANSWERS)):
        name, off = _read_name(data, off)
        if name is None or off + 10 > len(data):
            break
        rtype, _rclass, ttl, rdlen = struct.unpack_from("!HHIH", data, off)
        off += 10
        rdata = data[off:off + rdlen]
        if len(rdata) < rdlen:
            break                      # cut by the capture: later answers are not seen
        off += rdlen
        address = ""
        if rtype == 1 and rdlen == 4:
            address = socket.inet_ntop(socket.AF_INET, rdata)
        elif rtype == 28 and rdlen == 16:
            address = socket.inet_ntop(socket.AF_INET6, rdata)
        msg.answers.append(DnsAnswer(name, rtype, ttl, address))
    return msg


# ---- TLS ClientHello -------------------------------------------------------------------------------------
TLS_VERSIONS = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3", 0x0002: "s2"}
VERSION_NAMES = {"13": "1.3", "12": "1.2", "11": "1.1", "10": "1.0", "s3": "ssl3", "s2": "ssl2"}
EXT_SNI, EXT_ALPN, EXT_SIG_ALGS, EXT_VERSIONS = 0x0000, 0x0010, 0x000D, 0x002B


def is_grease(value: int) -> bool:
    return value & 0x0F0F == 0x0A0A and value >> 8 == value & 0xFF


@dataclass
class ClientHello:
    sni: str = ""
    alpn: list[str] = field(default_factory=list)
    version: str = ""          # highest offered: 1.3, 1.2, ...
    ja4: str = ""              # "" when the capture cut the hello before its extensions ended
    truncated: bool = False


def _ja4(transport: str, version: str, has_sni: bool, ciphers: list[int], extensions: list[int],
         alpn: list[str], sig_algs: list[int]) -> str:
    """JA4 (FoxIO): t13d1516h2_<sha256 of sorted ciphers>_<sha256 of sorted extensions _ signature algorithms>."""
    first = alpn[0] if alpn else ""
    alpn_code = (first[0] + first[-1]) if first and first.isascii() and first.isprintable() else "00"
    a = f"{transport}{version or '00'}{'d' if has_sni else 'i'}{min(len(ciphers), 99):02d}" \
        f"{min(len(extensions), 99):02d}{alpn_code}"
    b = hashlib.sha256(",".join(f"{c:04x}" for c in sorted(ciphers)).encode()).hexdigest()[:12] \
        if ciphers else "0" * 12
    exts = ",".join(f"{e:04x}" for e in sorted(e for e in extensions if e not in (EXT_SNI, EXT_ALPN)))
    text = exts + ("_" + ",".join(f"{s:04x}" for s in sig_algs) if sig_algs else "")
    c = hashlib.sha256(text.encode()).hexdigest()[:12] if extensions else "0" * 12
    return f"{a}_{b}_{c}"


def parse_client_hello(data: bytes, transport: str = "t") -> ClientHello | None:
    """A TLS record holding a ClientHello -> SNI, ALPN, offered version, JA4. None if it is not one."""
    if len(data) < 9 or data[0] != 0x16 or data[1] != 0x03 or data[5] != 0x01:
        return None
    hello = ClientHello()
    body = data[9:]
    if len(body) < 35:
        return None
    legacy_version = struct.unpack_from("!H", body)[0]
    off = 34
    sid_len = body[off]
    off += 1 + sid_len
    if off + 2 > len(body):
        return None
    n = struct.unpack_from("!H", body, off)[0]
    off += 2
    raw_ciphers = body[off:off + n]
    ciphers = [c for (c,) in struct.iter_unpack("!H", raw_ciphers[: len(raw_ciphers) & ~1]) if not is_grease(c)]
    off += n
    if off >= len(body):
        hello.truncated = True
        hello.version = VERSION_NAMES.get(TLS_VERSIONS.get(legacy_version, ""), "")
        return hello
    off += 1 + body[off]                        # compression methods
    if off + 2 > len(body):
        hello.truncated = True
        return hello
    ext_total = struct.unpack_from("!H", body, off)[0]
    off += 2
    end = off + ext_total
    extensions: list[int] = []
    sig_algs: list[int] = []
    versions: list[int] = []
    has_sni = False
    while off + 4 <= min(end, len(body)):
        etype, elen = struct.unpack_from("!HH", body, off)
        edata = body[off + 4:off + 4 + elen]
        off += 4 + elen
        if len(edata) < elen:
            break
        if is_grease(etype):
            continue
        extensions.append(etype)
        if etype == EXT_SNI and len(edata) >= 5:
            has_sni = True
            name_len = struct.unpack_from("!H", edata, 3)[0]
            hello.sni = edata[5:5 + name_len].decode("ascii", "replace").lower().rstrip(".")
        elif etype == EXT_ALPN and len(edata) >= 2:
            pos = 2
            while pos < len(edata) and len(hello.alpn) < 8:
                plen = edata[pos]
                hello.alpn.append(edata[pos + 1:pos + 1 + plen].decode("ascii", "replace"))
                pos += 1 + plen
        elif etype == EXT_VERSIONS and edata:
            versions = [v for (v,) in struct.iter_unpack("!H", edata[1:1 + (edata[0] & ~1)]) if not is_grease(v)]
        elif etype == EXT_SIG_ALGS and len(edata) >= 2:
            sig_algs = [s for (s,) in struct.iter_unpack("!H", edata[2:2 + (struct.unpack_from("!H", edata)[0] & ~1)])
                        if not is_grease(s)]
    hello.truncated = off < end
    code = TLS_VERSIONS.get(max(versions) if versions else legacy_version, "00")
    hello.version = VERSION_NAMES.get(code, "")
    if not hello.truncated:
        hello.ja4 = _ja4(transport, code, has_sni, ciphers, extensions, hello.alpn, sig_algs)
    return hello


# ---- UDP first datagrams -----------------------------------------------------------------------------------
STRATUM_METHODS = (b'"mining.', b'"login"', b'"eth_submitLogin"', b'"eth_submitlogin"')


def datagram_shape(data: bytes, length: int) -> str:
    """What the first datagram of a UDP flow is, by its shape; "" when nothing gpuguard knows."""
    if len(data) >= 4 and data[0] == 1 and data[1:4] == b"\0\0\0" and length == 148:
        return "wireguard-handshake"
    stripped = data.lstrip(b" \t\r\n")
    if stripped.startswith(b"{") and any(m in data[:256] for m in STRATUM_METHODS):
        return "stratum"
    if len(data) >= 5 and data[0] & 0xC0 == 0xC0 and data[1:5] in (b"\0\0\0\x01", b"\x6b\x33\x43\xcf") \
            and length >= 1200:
        return "quic-initial"
    if len(data) >= 14 and data[0] == 0x16 and data[1:3] in (b"\xfe\xff", b"\xfe\xfd") and data[13] == 1:
        return "dtls-hello"
    if 14 <= length <= 128 and data[0] >> 3 in (7, 10) and len(data) >= 14 and data[9:13] == b"\0\0\0\0":
        return "openvpn-reset"       # P_CONTROL_HARD_RESET_CLIENT_V2/V3, session id, packet-id array empty
    return ""


# ---- address -> name ---------------------------------------------------------------------------------------
MIN_KEEP_S = 300.0       # applications keep using an address past its TTL (their own caches, long-lived pools)
MAX_KEEP_S = 86400.0
NAMING_FRESH_S = 3600.0  # DNS answers seen this recently: an address nobody resolved is "unnamed"


class DestinationNames:
    """Which DNS name gave an address to a job (and to the host), learnt from the answers the job received.

    Bounded LRU maps; an entry lives max(TTL, MIN_KEEP_S). One job's answers never evict another job's
    lookups beyond the shared bound, and a name is only ever the question the job asked (the policy follows
    the question name, not a CNAME target an attacker's zone chose)."""

    def __init__(self, max_entries: int = 65536, clock=time.monotonic) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self.by_job: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()
        self.by_host: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self.last_answer = float("-inf")
        self.learnt = 0

    @staticmethod
    def _put(table: OrderedDict, key, value, bound: int) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > bound:
            table.popitem(last=False)

    def learn(self, job: str, name: str, address: str, ttl: int) -> None:
        now = self.clock()
        expiry = now + min(max(float(ttl), MIN_KEEP_S), MAX_KEEP_S)
        address = canonical(address)
        self._put(self.by_job, (job, address), (name, expiry), self.max_entries)
        self._put(self.by_host, address, (name, expiry), self.max_entries)
        self.last_answer = now
        self.learnt += 1

    def name_of(self, job: str, address: str) -> tuple[str, str]:
        """(name, scope): scope job | host; ("", "none") when DNS is seen on this node but nobody resolved
        this address; ("", "") when no DNS answer was seen lately (names cannot be known here)."""
        now = self.clock()
        address = canonical(address)
        for table, key, scope in ((self.by_job, (job, address), "job"), (self.by_host, address, "host")):
            hit = table.get(key)
            if hit is not None and hit[1] >= now:
                return hit[0], scope
        return ("", "none") if now - self.last_answer <= NAMING_FRESH_S else ("", "")


def canonical(address: str) -> str:
    """One spelling per address (map keys). The decoder already writes v4 dotted and v6 in RFC 5952 form, so a
    dotted v4 string is returned as it is: the per-connect lookup parses nothing."""
    if ":" not in address:
        return address          # dotted v4 (ipaddress accepts no other spelling of it) or not an address
    ip = unmapped(address)
    return str(ip) if ip is not None else address


@functools.lru_cache(maxsize=65_536)        # a node talks to few addresses: parse each once
def off_node(address: str) -> bool:
    """Not loopback, not unspecified: a connect that leaves the node (jupyter's kernels on 127.0.0.1 do not)."""
    ip = unmapped(address)
    return ip is not None and not (ip.is_loopback or ip.is_unspecified)

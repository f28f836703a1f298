"""Payload fingerprints as rule data: the YAML form, the kernel form (PayloadWatch) and a Python twin.

A rule's ``payload`` match says which bytes to look for in the first payload packets of a TCP
flow; the agent's egress hook (probes/enforce_payload.c) does the looking. In YAML::

    payload: {text: "SSH-2.0-", offset: 0}                    # bytes at one offset
    payload: {hex: "050100", offset: 0, min_len: 10}          # SOCKS5 CONNECT
    payload: {text: "protocol: chisel", nocase: true, window: [16, 480]}

``text`` is taken as Latin-1 bytes (YAML escapes such as "\\x05" work); ``nocase`` makes letters
case-insensitive (the kernel ANDs them with 0xdf); ``window`` searches every offset in [min, max].
The Python twin (``PayloadSpec.search``) is what the rule corpus tests and what the engine uses on
the excerpt an agent reports; the kernel is the authority on what was dropped.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

MAX_PATTERN = 16                # bytes the kernel compares
MAX_OFFSET = 496                # the kernel reads 512 bytes of payload
WIDE_WINDOW = 8                 # wider windows go through the kernel's anchors: patterns of >= 7 bytes
KEYS = {"text", "hex", "offset", "window", "nocase", "min_len"}


@dataclass(frozen=True)
class PayloadSpec:
    pattern: bytes
    mask: bytes
    offset_min: int
    offset_max: int
    min_len: int

    def search(self, data: bytes) -> int | None:
        """The first offset where the pattern matches data, or None."""
        if len(data) < max(self.min_len, self.offset_min + len(self.pattern)):
            return None
        for off in range(self.offset_min, min(self.offset_max, len(data) - len(self.pattern)) + 1):
            window = data[off:off + len(self.pattern)]
            if all((b & m) == p for b, m, p in zip(window, self.mask, self.pattern, strict=True)):
                return off
        return None


def parse_spec(value) -> PayloadSpec:
    """The YAML mapping -> PayloadSpec; ValueError says what is wrong."""
    if not isinstance(value, dict):
        raise ValueError("must be a mapping: {text: ... | hex: ..., offset: N | window: [MIN, MAX], ...}")
    unknown = set(value) - KEYS
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}; known: {sorted(KEYS)}")
    if ("text" in value) == ("hex" in value):
        raise ValueError("give exactly one of text or hex")
    try:
        raw = bytes.fromhex(str(value["hex"])) if "hex" in value else str(value["text"]).encode("latin-1")
    except ValueError as exc:
        raise ValueError(f"bad bytes: {exc}") from exc
    if not 1 <= len(raw) <= MAX_PATTERN:
        raise ValueError(f"a pattern is 1..{MAX_PATTERN} bytes, got {len(raw)}")
    if "offset" in value and "window" in value:
        raise ValueError("give offset or window, not both")
    if "window" in value:
        window = value["window"]
        if not (isinstance(window, list) and len(window) == 2 and all(isinstance(x, int) for x in window)):
            raise ValueError("window must be [MIN, MAX]")
        lo, hi = window
    else:
        lo = hi = value.get("offset", 0)
    if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi <= MAX_OFFSET):
        raise ValueError(f"offsets must satisfy 0 <= min <= max <= {MAX_OFFSET}")
    if hi - lo >= WIDE_WINDOW and len(raw) < 7:
        raise ValueError("a pattern searched over a window wider than 8 bytes needs at least 7 bytes")
    min_len = value.get("min_len", 0)
    if not isinstance(min_len, int) or min_len < 0:
        raise ValueError("min_len must be a non-negative integer")
    nocase = value.get("nocase", False)
    if not isinstance(nocase, bool):
        raise ValueError("nocase must be true or false")
    mask = bytes(0xDF if nocase and chr(b).isalpha() and b < 128 else 0xFF for b in raw)
    pattern = bytes(b & m for b, m in zip(raw, mask, strict=True))
    return PayloadSpec(pattern, mask, lo, hi, min_len)


HTTP_CONNECT = b"CONNECT "


def proxy_target(data: bytes) -> tuple[str, int, str] | None:
    """(host, port, "SOCKS" | "HTTP") a proxy request asks for: a SOCKS4/4a/5 CONNECT or an HTTP CONNECT
    (``CONNECT host:port HTTP/1.1``, the way ssh ProxyCommand helpers, proxytunnel, corkscrew and every client
    with an https_proxy leave a job), or None."""
    if data.startswith(HTTP_CONNECT):
        target = data[len(HTTP_CONNECT):].split(b" ", 1)[0].split(b"\r", 1)[0]
        host, sep, port = target.rpartition(b":")
        if not sep or not port.isdigit() or not host or not 0 < int(port) < 65536:
            return None
        return host.strip(b"[]").decode("ascii", "replace").lower(), int(port), "HTTP"
    target = socks_target(data)
    return (target[0], target[1], "SOCKS") if target is not None else None


def socks_target(data: bytes) -> tuple[str, int] | None:
    """(host, port) a SOCKS4/4a/5 CONNECT request asks for, or None. The request may follow its SOCKS5 greeting
    in the same bytes (a client that sends both at once, or the kernel's flow prefix joining them)."""
    if len(data) >= 3 and data[0] == 5 and 0 < data[1] <= 8 and data[2 + data[1]:5 + data[1]] == b"\x05\x01\x00":
        inner = socks_target(data[2 + data[1]:])
        if inner is not None:
            return inner
    if len(data) >= 9 and data[0] == 4 and data[1] == 1:
        port = struct.unpack_from("!H", data, 2)[0]
        ip = data[4:8]
        if ip[:3] == b"\0\0\0" and ip[3]:                      # 4a: the host name follows the user id
            rest = data[8:].split(b"\0")
            host = rest[1] if len(rest) > 2 else b""
            return host.decode("ascii", "replace"), port
        return str(ipaddress.IPv4Address(ip)), port
    if len(data) >= 10 and data[0] == 5 and data[1] == 1 and data[2] == 0:
        atyp = data[3]
        if atyp == 1:
            return str(ipaddress.IPv4Address(data[4:8])), struct.unpack_from("!H", data, 8)[0]
        if atyp == 3 and len(data) >= 5 + data[4] + 2:
            n = data[4]
            return data[5:5 + n].decode("ascii", "replace"), struct.unpack_from("!H", data, 5 + n)[0]
        if atyp == 4 and len(data) >= 22:
            return str(ipaddress.IPv6Address(data[4:20])), struct.unpack_from("!H", data, 20)[0]
    return None


STRATUM_SCAN = 192   # bytes the kernel's stratum scan reads
STRATUM_NINE = (b'"eth_subm', b'"eth_getW', b'"getwork"', b'"getblock')   # the kernel's nine-byte names


def looks_like_stratum(data: bytes) -> bool:
    """Python twin of looks_like_stratum() in probes/enforce_payload.c (for the rule corpus)."""
    start = next((i for i in range(4) if i < len(data) and data[i] not in b" \n\r\t"), None)
    if start is None or data[start:start + 1] != b"{":
        return False
    for i in range(1, STRATUM_SCAN - 16):
        if i + 9 > len(data):
            break
        if data[i:i + 8] == b'"mining.' or data[i:i + 7] == b'"login"' or data[i:i + 9] in STRATUM_NINE:
            return True
    return False

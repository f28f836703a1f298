"""What the kernel's whole-argv scan (probes/enforce_argv.c) sees, in one place for the agent and the collector.

The kernel reads the new image's argument area as bytes: arguments separated by NUL, A-Z folded to a-z, NUL
read as a space. A literal (rule key ``argv_has``) matches when it occurs in that text; user space builds the
same text from an argv list (``argv_scan_text``), so a rule judges the same way in both places. Option letters
follow gpuguard.vocab.option_letters, as a 4-state machine the kernel runs from ``grammar_table`` (no
cluster-length cap there: every letter of a cluster counts).

The kernel bounds: ``ARGV_SCAN_MAX`` bytes of argv; literals of 4..``ARGV_FP_LEN`` bytes, at most
``ARGV_FP_MAX`` of them; ``ARGV_HITS`` anchor hits per ``ARGV_CHUNK``. Beyond any of them an exec is
"uninspectable" (rule key ``argv_uninspectable``), which a rule can itself act on.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from gpuguard.vocab import VALUE_LETTERS

ARGV_CHUNK = 4096
ARGV_SCAN_MAX = 16 * ARGV_CHUNK          # 64 KiB: mirror of probes/enforce_argv.c
ARGV_FP_MAX, ARGV_FP_LEN, ARGV_FP_MIN = 64, 32, 4
ARGV_HITS, ARGV_ANCHOR_CANDS, ARGV_RULES = 32, 4, 24
ARGV_UNINSPECTABLE = 1 << 63
HASH_MUL = 2654435761
T_STATE, T_FOLDED = 52, 56
IN_ARG, ARG_START, DASH, CLUSTER = 0, 1, 2, 3     # grammar states


FOLD = bytes((b | 0x20) if 65 <= b <= 90 else (0x20 if b == 0 else b) for b in range(256))


def fold(data: bytes) -> bytes:
    """The kernel's folding: A-Z -> a-z, NUL -> space, every other byte as is."""
    return data.translate(FOLD)


def argv_scan_text(argv: list[str]) -> str:
    """The text the kernel scans, from an argv list: arguments joined (and ended) by a space, ASCII folded."""
    raw = b"".join(a.encode("utf-8", "surrogateescape") + b"\0" for a in argv)
    return fold(raw).decode("utf-8", "replace")


def literal_bytes(literal: str) -> bytes:
    return fold(literal.encode("utf-8"))


def _letter_bit(b: int) -> int:
    if 97 <= b <= 122:
        return 1 << (b - 97)
    if 65 <= b <= 90:
        return 1 << (26 + b - 65)
    return 0


def _next(state: int, b: int) -> tuple[int, int]:
    """(next state, letter bit) of the option grammar: the first byte after a NUL starts an argument; '-' then
    letters is a cluster, ended by a value letter (ssh's grammar) or a non-letter; '--' is a long option."""
    if b == 0:
        return ARG_START, 0
    if state == ARG_START:
        return (DASH if b == 0x2D else IN_ARG), 0
    if state in (DASH, CLUSTER):
        bit = _letter_bit(b)
        if not bit:
            return IN_ARG, 0
        return (IN_ARG if chr(b) in VALUE_LETTERS else CLUSTER), bit
    return IN_ARG, 0


def grammar_table() -> bytes:
    """argv_table: 4 x 256 u64 entries (letter bit | next state << 52 | folded byte << 56)."""
    out = []
    for state in range(4):
        for b in range(256):
            nxt, bit = _next(state, b)
            out.append(bit | (nxt << T_STATE) | (FOLD[b] << T_FOLDED))
    return struct.pack(f"<{len(out)}Q", *out)


def anchor_hash(window: int) -> int:
    return ((window * HASH_MUL) >> 16) & 0xFFFF


@dataclass
class FingerprintSet:
    """Literals -> the kernel's maps: ids, anchors (last 4 bytes) -> candidate ids, the prefilter bitmap."""

    ids: dict[bytes, int] = field(default_factory=dict)

    def add(self, literal: str) -> int:
        lit = literal_bytes(literal)
        if not ARGV_FP_MIN <= len(lit) <= ARGV_FP_LEN:
            raise ValueError(f"argv literal {literal!r}: {ARGV_FP_MIN}..{ARGV_FP_LEN} bytes")
        if lit not in self.ids:
            if len(self.ids) >= ARGV_FP_MAX - 1:       # bit 63 is ARGV_UNINSPECTABLE
                raise ValueError(f"more than {ARGV_FP_MAX - 1} argv literals in force")
            if sum(1 for other in self.ids if other[-4:] == lit[-4:]) >= ARGV_ANCHOR_CANDS:
                raise ValueError(f"argv literal {literal!r}: more than {ARGV_ANCHOR_CANDS} share its last 4 bytes")
            self.ids[lit] = len(self.ids)
        return self.ids[lit]

    def anchors(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for lit, i in self.ids.items():
            out.setdefault(int.from_bytes(lit[-4:], "big"), []).append(i)
        return out

    def bitmap(self) -> bytes:
        words = [0] * 1024
        for window in self.anchors():
            h = anchor_hash(window)
            words[h >> 6] |= 1 << (h & 63)
        return struct.pack("<1024Q", *words)

    def fp_struct(self, lit: bytes) -> bytes:
        """struct argv_fp: len, the literal right-aligned in ARGV_FP_LEN bytes, its mask."""
        pad = ARGV_FP_LEN - len(lit)
        return struct.pack("<I", len(lit)) + bytes(pad) + lit + bytes(pad) + b"\xff" * len(lit)


def reference_scan(raw: bytes, literals: list[str]) -> tuple[int, set[str]]:
    """The kernel's scan in Python, from the very table the kernel gets (the test oracle): (option letter bits,
    literals found) over raw argv bytes (NUL-separated, as in the argument area), bounded like the kernel."""
    table = struct.unpack(f"<{4 * 256}Q", grammar_table())
    state, opts, folded = IN_ARG, 0, bytearray()
    for b in raw[:ARGV_SCAN_MAX]:
        t = table[state << 8 | b]
        state, opts = (t >> T_STATE) & 3, opts | (t & ((1 << T_STATE) - 1))
        folded.append(t >> T_FOLDED)
    return opts, {lit for lit in literals if literal_bytes(lit) in folded}


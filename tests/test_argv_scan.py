"""The whole-argv scan's user-space half (gpuguard/argv_scan.py) against the kernel's (probes/enforce_argv.c) and
against the rules' own reading of argv: the bounds mirror the C, and the grammar table the agent writes into
the kernel finds exactly the option letters and literals user space finds. No kernel needed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gpuguard import argv_scan as scan
from gpuguard.vocab import option_letters, option_mask

C_SOURCE = Path(__file__).resolve().parent.parent / "probes" / "enforce_argv.c"


def c_defines() -> dict[str, int]:
    text = C_SOURCE.read_text()
    return {m[1]: int(m[2].rstrip("u"), 0) for m in re.finditer(r"^#define (ARGV_\w+) (\d+u?)\b", text, re.M)}


def test_bounds_mirror_the_kernel_program():
    c = c_defines()
    assert c["ARGV_CHUNK"] == scan.ARGV_CHUNK
    assert c["ARGV_CHUNK"] * c["ARGV_SCAN_CALLS"] == scan.ARGV_SCAN_MAX == 64 * 1024
    assert (c["ARGV_FP_MAX"], c["ARGV_FP_LEN"], c["ARGV_HITS"]) == (scan.ARGV_FP_MAX, scan.ARGV_FP_LEN, scan.ARGV_HITS)
    assert (c["ARGV_ANCHOR_CANDS"], c["ARGV_RULES"]) == (scan.ARGV_ANCHOR_CANDS, scan.ARGV_RULES)
    assert (c["ARGV_T_STATE"], c["ARGV_T_FOLDED"], c["ARGV_HASH_MUL"]) == (scan.T_STATE, scan.T_FOLDED, scan.HASH_MUL)


ARGVS = [
    ["ssh", "-NfR", "2222:localhost:22", "gw"],
    ["ssh", "-oRemoteForward=1", "-l", "-R", "x"],            # value letters end a cluster; "-l" takes "-R" as value
    ["autossh", "--", "-R", "x"],
    ["ssh", "x" * 5000, "-D", "1080", "h"],
    ["python3", "-c", "import socket,os;os.DUP2(1,2)", "--url=Stratum2+SSL://p:1"],
    ["bash", "-c", "exec 3<>/DEV/TCP/h/1"],
    ["tool", "-", "-9", "-a-b", "--long", "-Zz"],
]
LITERALS = ["stratum2+", "os.dup2", "/dev/tcp/", "-o remoteforward", "-oremoteforward", "tcp/h/1 "]


@pytest.mark.parametrize("argv", ARGVS, ids=range(len(ARGVS)))
def test_kernel_table_agrees_with_user_space(argv):
    raw = b"".join(a.encode() + b"\0" for a in argv)
    opts, found = scan.reference_scan(raw, LITERALS)
    assert opts == option_mask("".join(sorted(option_letters(argv))))
    text = scan.argv_scan_text(argv)
    assert found == {lit for lit in LITERALS if lit in text}


def test_literals_are_found_case_insensitively_across_arguments():
    raw = b"ssh\0-o\0RemoteForward=9000 h:22\0gw\0"
    assert scan.reference_scan(raw, LITERALS)[1] == {"-o remoteforward"}
    assert scan.reference_scan(b"x\0" + b"y" * scan.ARGV_SCAN_MAX + b"\0stratum2+tcp", ["stratum2+"])[1] == set()


def test_fingerprint_set_bounds_and_layout():
    fps = scan.FingerprintSet()
    assert fps.add("Stratum+") == fps.add("stratum+") == 0           # folded: one literal, one bit
    with pytest.raises(ValueError, match="4..32 bytes"):
        fps.add("abc")
    for i, lit in enumerate(("xtum+", "ytum+", "ztum+")):
        assert fps.add(lit) == i + 1
    with pytest.raises(ValueError, match="share its last 4 bytes"):
        fps.add("wtum+")                                              # a fifth literal on one anchor
    fp = fps.fp_struct(b"stratum+")
    assert len(fp) == 4 + 2 * scan.ARGV_FP_LEN and fp[4 + 24:4 + 32] == b"stratum+" and fp[-8:] == b"\xff" * 8
    window = int.from_bytes(b"tum+", "big")
    assert sorted(fps.anchors()[window]) == [0, 1, 2, 3]
    h = scan.anchor_hash(window)
    assert int.from_bytes(fps.bitmap()[(h >> 6) * 8:(h >> 6) * 8 + 8], "little") >> (h & 63) & 1


def test_the_builtin_policy_fits_the_kernel_whole():
    """Every built-in whole-argv kill entry of a scope fits the kernel's per-scope table and every literal its
    fingerprint table: an entry beyond either would be judged only in user space, where a flood, a dead agent or
    a long first argument hides it (the agent logs it; this keeps the built-in policy from ever doing it)."""
    from collections import Counter  # noqa: PLC0415

    from collector.rules.loader import load_ruleset, rule_texts  # noqa: PLC0415
    from collector.rules.lowering import compile_policy  # noqa: PLC0415

    policy = compile_policy(load_ruleset(rule_texts()), 1)
    per_scope = Counter(e.scope.SerializeToString(deterministic=True) for e in policy.argv_kill)
    assert per_scope and max(per_scope.values()) <= scan.ARGV_RULES, per_scope
    literals = {lit for e in policy.argv_kill for lit in (*e.all, *e.any)}
    assert len(literals) < scan.ARGV_FP_MAX, len(literals)

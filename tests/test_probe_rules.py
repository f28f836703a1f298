"""The rule of probes/: kernel-internal structs are never named; their fields are read only through
kread_u32/kread_u64 at OFF_* offsets that the agent takes from the running kernel's BTF.

The agent may compile probes against generic headers of another kernel; a
dereference through a kernel struct type would then read the wrong offset silently.
"""

from __future__ import annotations

import re
from pathlib import Path

PROBES = Path(__file__).resolve().parent.parent / "probes"
KERNEL_INTERNAL = ("task_struct", "sock", "socket", "file", "inode", "dentry", "path", "mm_struct", "cred",
                   "net", "sk_buff", "files_struct", "fdtable", "nsproxy", "pid", "signal_struct", "cgroup",
                   "css_set", "vfsmount", "super_block", "linux_binprm", "kernfs_node")
STRUCT_USE = re.compile(r"\bstruct\s+(" + "|".join(KERNEL_INTERNAL) + r")\b")
INTERNAL_HELPERS = re.compile(r"\bbpf_get_current_task_btf\b|\bbpf_probe_read_kernel\b|\bBPF_CORE_READ\b")
KREAD = re.compile(r"\bkread_(?:u32|u64|bytes)\(([^;]*?),\s*([A-Za-z_0-9]+)\)")
SYSCALL_HOOK = re.compile(r"TRACEPOINT_PROBE\(\s*syscalls\b|RAW_TRACEPOINT_PROBE\(\s*sys_(?:enter|exit)\b")


def code_only(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def probe_files() -> list[Path]:
    return sorted(PROBES.glob("*.c")) + sorted(PROBES.glob("*.h"))


def kread_bodies_removed(code: str) -> str:
    """The accessors in gpuguard.h are the one place bpf_probe_read_kernel may appear."""
    return re.sub(r"static __always_inline (?:u32|u64|void) kread_(?:u32|u64|array_u64|bytes)\([^)]*\)\s*\{.*?\n\}", "",
                  code, flags=re.S)


def test_there_are_probes_to_check():
    names = {p.name for p in probe_files()}
    assert {"exec.c", "fork_exit.c", "connect.c", "gpu_dev.c", "gpuguard.h"} <= names


def test_no_probe_names_a_kernel_internal_struct_or_reads_it_directly():
    offenders = []
    for path in probe_files():
        code = kread_bodies_removed(code_only(path.read_text()))
        for m in STRUCT_USE.finditer(code):
            offenders.append(f"{path.name}: struct {m.group(1)}")
        for m in INTERNAL_HELPERS.finditer(code):
            offenders.append(f"{path.name}: {m.group(0)}")
        for m in KREAD.finditer(code):
            if not m.group(2).startswith("OFF_"):
                offenders.append(f"{path.name}: kread at {m.group(2)} (offsets must be BTF OFF_* constants)")
    assert not offenders, "probes break the rule in gpuguard.h:\n" + "\n".join(offenders)


def test_no_probe_uses_a_syscall_tracepoint():
    """Any syscall tracepoint puts every syscall of every task on the slow path (see README)."""
    offenders = [p.name for p in probe_files() if SYSCALL_HOOK.search(code_only(p.read_text()))]
    assert offenders == []


def test_checker_catches_violations():
    bad = "int f(struct task_struct *t) { return t->pid; } // ok\n/* struct inode */"
    assert STRUCT_USE.findall(code_only(bad)) == ["task_struct"]
    assert [m.group(2) for m in KREAD.finditer("u32 x = kread_u32(task, 1280);")] == ["1280"]
    assert SYSCALL_HOOK.search("TRACEPOINT_PROBE(syscalls, sys_enter_openat)")
    assert INTERNAL_HELPERS.search(kread_bodies_removed("x = bpf_probe_read_kernel(&v, 4, p);"))


def test_option_mask_is_the_probes_letter_bit():
    """gpuguard.vocab.option_mask against letter_bit() from gpuguard.h, compiled by the host compiler."""
    import shutil  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    import pytest  # noqa: PLC0415

    from gpuguard.vocab import option_mask  # noqa: PLC0415

    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler (cc) on this machine")
    header = (PROBES / "gpuguard.h").read_text()
    body = re.search(r"static __always_inline u64 letter_bit\(char c\)\n\{.*?\n\}", header, re.S)
    assert body, "letter_bit() not found in gpuguard.h"
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-0:"
    src = ("#include <stdio.h>\ntypedef unsigned long long u64;\n#define __always_inline inline\n"
           + body.group(0) + f'\nint main(void){{const char *s="{letters}";'
           'for(const char *c=s;*c;c++) printf("%llu\\n", letter_bit(*c)); return 0;}\n')
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "t.c").write_text(src)
        subprocess.run([cc, "-O1", "-o", f"{tmp}/t", f"{tmp}/t.c"], check=True, capture_output=True)
        bits = [int(x) for x in subprocess.run([f"{tmp}/t"], capture_output=True, text=True).stdout.split()]
    for c, bit in zip(letters, bits, strict=True):
        if c.isalpha():
            assert option_mask(c) == bit, c
        else:
            assert bit == 0
            with pytest.raises(ValueError):
                option_mask(c)

"""The stable-ABI rule of probes/: no kernel-internal struct may be named in a probe.

The agent may compile probes against generic headers of another kernel; a
dereference through a kernel struct would then read the wrong offset silently.
"""

from __future__ import annotations

import re
from pathlib import Path

PROBES = Path(__file__).resolve().parent.parent / "probes"
KERNEL_INTERNAL = ("task_struct", "sock", "socket", "file", "inode", "dentry", "path", "mm_struct", "cred",
                   "net", "sk_buff", "files_struct", "fdtable", "nsproxy", "pid", "signal_struct", "cgroup",
                   "css_set", "vfsmount", "super_block", "linux_binprm", "kernfs_node")
STRUCT_USE = re.compile(r"\bstruct\s+(" + "|".join(KERNEL_INTERNAL) + r")\b")
INTERNAL_HELPERS = re.compile(r"\bbpf_get_current_task(_btf)?\b|\bbpf_probe_read_kernel\b|\bBPF_CORE_READ\b")


def code_only(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def probe_files() -> list[Path]:
    return sorted(PROBES.glob("*.c")) + sorted(PROBES.glob("*.h"))


def test_there_are_probes_to_check():
    names = {p.name for p in probe_files()}
    assert {"exec.c", "fork_exit.c", "connect.c", "gpu_open.c", "gpuguard.h"} <= names


def test_no_probe_names_a_kernel_internal_struct():
    offenders = []
    for path in probe_files():
        code = code_only(path.read_text())
        for m in STRUCT_USE.finditer(code):
            offenders.append(f"{path.name}: struct {m.group(1)}")
        for m in INTERNAL_HELPERS.finditer(code):
            offenders.append(f"{path.name}: {m.group(0)}")
    assert not offenders, "probes must use stable ABI only:\n" + "\n".join(offenders)


def test_checker_catches_a_violation():
    bad = "int f(struct task_struct *t) { return t->pid; } // ok\n/* struct inode */"
    assert STRUCT_USE.findall(code_only(bad)) == ["task_struct"]


def test_rule_is_written_at_the_top_of_the_shared_header():
    head = (PROBES / "gpuguard.h").read_text()[:1200]
    assert "Never dereference a kernel-internal struct" in head

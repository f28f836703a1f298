"""The house has floors: the shared floor (gpuguard: contract, TLS, credentials, vocabulary, rendering)
imports neither side; agent/ and collector/ import the shared floor and never each other, the CLI or the
dev-only lab; only the CLI (gpuguard_cli) sits on top."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "gpuguard": {"agent", "collector", "gpuguard_cli", "lab", "tests"},
    "agent": {"collector", "gpuguard_cli", "lab", "tests"},
    "collector": {"agent", "gpuguard_cli", "lab", "tests"},
    "gpuguard_cli": {"tests"},          # lab.demo only from a source checkout (cmd_demo)
}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_reaches_up_or_sideways(package):
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        if "/v1/" in str(path):
            continue                                   # generated code
        for name in imports(path):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[package]):
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_the_checker_sees_imports(tmp_path):
    sample = tmp_path / "x.py"
    sample.write_text("import lab\nfrom collector.policy import X\n")
    assert imports(sample) == {"lab", "collector.policy"}

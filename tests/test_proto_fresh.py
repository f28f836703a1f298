"""Generated protobuf code must match proto/: regenerate with `make proto`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_fresh(tmp_path):
    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto").rglob("*.proto"))
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-Iproto", f"--python_out={tmp_path}",
                    f"--grpc_python_out={tmp_path}", f"--pyi_out={tmp_path}", *protos], cwd=ROOT, check=True)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    assert generated, "protoc produced nothing"
    stale = [str(rel) for rel in generated
             if (tmp_path / rel).read_text() != (ROOT / rel).read_text()]
    assert not stale, f"stale generated files (run `make proto`): {stale}"


def test_c_vocabulary_is_generated_from_the_proto_enums():
    """probes/vocab.h (EV_*, ACT_*) must be what scripts/gen_vocab.py makes of the current enums."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from gen_vocab import TARGET, render  # noqa: PLC0415

    assert TARGET.read_text() == render(), "probes/vocab.h is stale: run `make proto`"
    assert "#define ACT_KILL_EXEC 1" in render() and "#define EV_CONNECT_RESULT 8" in render()


def test_event_kinds_everywhere_are_the_proto_oneof():
    """The CLI's --kind choices and the page's kinds are the Event.body oneof (less the agent status)."""
    from collector.web import KINDS  # noqa: PLC0415
    from gpuguard.v1 import events_pb2 as pb  # noqa: PLC0415
    from gpuguard_cli.main import EVENT_KINDS  # noqa: PLC0415

    bodies = {f.name for f in pb.Event.DESCRIPTOR.oneofs_by_name["body"].fields} - {"status"}
    assert set(EVENT_KINDS) == bodies and set(KINDS) == bodies

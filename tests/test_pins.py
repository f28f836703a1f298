"""The pin directory (agent/pins.py) as the agent sees it when someone else cleans bpffs: pure logic, the pin
call stands in for libbpf's."""

from __future__ import annotations

from pathlib import Path

from agent import pins


class _Libbpf:
    def bpf_obj_pin(self, fd: int, path: bytes) -> int:
        Path(path.decode()).write_text(str(fd))
        return 0


def test_a_pin_directory_removed_under_the_agent_is_made_again(tmp_path, monkeypatch):
    """An empty pin directory removed by another tool (or a test session's clean-up) between the agent's start and
    its first pin: listing it says nothing is pinned, and the pin makes it again (an agent failed to start on it)."""
    monkeypatch.setattr(pins, "BPFFS", tmp_path / "bpffs")
    monkeypatch.setattr(pins, "ensure_bpffs", lambda *a: None)
    monkeypatch.setattr(pins, "libbpf", _Libbpf)
    pin_dir = pins.PinDir(tmp_path / "state")
    pin_dir.path.rmdir()
    assert pin_dir.listed() == []
    pinned = pin_dir._pin("kill_exec", 7)
    assert pinned.exists() and pin_dir.listed() == [pinned.name]

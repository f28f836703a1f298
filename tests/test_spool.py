"""The on-disk spool: order, acks, restart recovery, corruption, full disk, gaps."""

from __future__ import annotations

import errno
import os

from agent.spool import Spool
from gpuguard.v1 import events_pb2 as pb


def recs(n: int, start: int = 0) -> list[pb.Event]:
    return [pb.Event(ts_ns=1, exit=pb.Exit(code=start + i)) for i in range(n)]


def view(events: list[pb.Event]) -> list[dict]:
    """seq, kind, the exit code as n, the gap as a dict: what these tests look at."""
    return [{"seq": e.seq, "kind": e.WhichOneof("body"), "n": e.exit.code,
             "gap": {"from_seq": e.gap.from_seq, "to_seq": e.gap.to_seq, "reason": e.gap.reason}} for e in events]


def test_append_read_ack_in_order(tmp_path):
    sp = Spool(tmp_path)
    assert sp.append(recs(5)) == 5
    got = view(sp.read_after(0, 100))
    assert [r["seq"] for r in got] == [1, 2, 3, 4, 5]
    assert [r["n"] for r in got] == [0, 1, 2, 3, 4]
    sp.ack(3)
    assert [r["seq"] for r in view(sp.read_after(3, 100))] == [4, 5]
    assert sp.depth() == 2


def test_sequence_and_unacked_records_survive_restart(tmp_path):
    sp = Spool(tmp_path, segment_bytes=200)
    sp.append(recs(10))
    sp.ack(4)
    sp.close()
    again = Spool(tmp_path, segment_bytes=200)
    assert again.acked == 4 and again.last_seq == 10
    assert [r["seq"] for r in view(again.read_after(again.acked, 100))] == list(range(5, 11))
    again.append(recs(1))
    assert view(again.read_after(10, 10))[0]["seq"] == 11


def test_acked_segments_are_deleted(tmp_path):
    sp = Spool(tmp_path, segment_bytes=100)
    for i in range(10):
        sp.append(recs(2, i * 2))
    before = len(list(tmp_path.glob("seg-*.log")))
    sp.ack(18)
    after = len(list(tmp_path.glob("seg-*.log")))
    assert after < before
    assert [r["seq"] for r in view(sp.read_after(18, 100))] == [19, 20]


def test_torn_tail_is_truncated_and_earlier_records_kept(tmp_path):
    sp = Spool(tmp_path)
    sp.append(recs(3))
    sp.close()
    seg = next(tmp_path.glob("seg-*.log"))
    with open(seg, "ab") as f:
        f.write(b"\x40\x00\x00\x00garbage")      # a frame header promising 64 bytes, then junk
    again = Spool(tmp_path)
    assert again.stats.corrupt_truncated == 1
    assert [r["seq"] for r in view(again.read_after(0, 10))] == [1, 2, 3]


def test_full_spool_drops_counts_and_reports_exact_gap(tmp_path):
    sp = Spool(tmp_path, max_bytes=400)
    stored = sum(sp.append(recs(1, i)) for i in range(30))
    assert 0 < stored < 30
    assert sp.stats.dropped == 30 - stored
    last_stored = stored
    sp.ack(sp.last_seq)                          # collector caught up: space is back
    sp.max_bytes = 1 << 20
    assert sp.append(recs(1, 99)) == 1
    tail = view(sp.read_after(last_stored, 10))
    gap = tail[0]
    assert gap["kind"] == "gap"
    assert gap["gap"]["from_seq"] == last_stored + 1
    assert gap["gap"]["to_seq"] == 30
    assert gap["gap"]["reason"] == "spool full"
    assert tail[1]["n"] == 99 and tail[1]["seq"] == gap["seq"] + 1


def test_disk_error_drops_without_corrupting(tmp_path, monkeypatch):
    sp = Spool(tmp_path)
    sp.append(recs(2))
    real_fsync = os.fsync

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    assert sp.append(recs(3)) == 0
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert sp.append(recs(1, 50)) == 1
    got = view(sp.read_after(0, 10))
    assert [r["seq"] for r in got[:2]] == [1, 2]
    assert got[2]["kind"] == "gap" and got[2]["gap"]["from_seq"] == 3 and got[2]["gap"]["to_seq"] == 5
    assert "ENOSPC" in got[2]["gap"]["reason"]
    assert got[3]["n"] == 50


def test_tracked_size_matches_the_files_on_disk(tmp_path):
    sp = Spool(tmp_path, segment_bytes=150)
    for i in range(12):
        sp.append(recs(2, i * 2))
    sp.ack(15)
    on_disk = sum(p.stat().st_size for p in tmp_path.glob("seg-*.log"))
    assert sp.size_bytes() == on_disk > 0
    sp.close()
    assert Spool(tmp_path, segment_bytes=150).size_bytes() == on_disk


def test_raw_reads_give_the_spooled_bytes_and_columns_also_for_an_older_agents_frames(tmp_path):
    import zlib  # noqa: PLC0415

    import msgpack  # noqa: PLC0415

    from agent.spool import FRAME  # noqa: PLC0415
    from gpuguard.rawbatch import BODY_FIELD  # noqa: PLC0415

    old = pb.Event(seq=1, ts_ns=1, exit=pb.Exit(code=7))          # a frame as an older agent spooled it
    old.job.kind, old.job.id = "slurm", "41"
    body = msgpack.packb([1, old.SerializeToString()], use_bin_type=True)
    (tmp_path / f"seg-{1:020d}.log").write_bytes(FRAME.pack(len(body), zlib.crc32(body)) + body)
    sp = Spool(tmp_path)
    new = pb.Event(ts_ns=2, status=pb.AgentStatus(events_total=3))
    assert sp.last_seq == 1 and sp.append([new]) == 1
    raw = sp.read_raw_after(0, 10)
    assert [(seq, kind, job) for seq, _b, kind, job in raw] == [(1, BODY_FIELD["exit"], "41"),
                                                               (2, BODY_FIELD["status"], "")]
    assert [pb.Event.FromString(b) for _s, b, _k, _j in raw] == sp.read_after(0, 10) == [old, new]


def test_one_frame_per_append_and_reads_that_stop_inside_a_frame_resume_there(tmp_path):
    sp = Spool(tmp_path)
    for n in (5, 3, 4):                                      # three polls' worth
        assert sp.append(recs(n)) == n
    segment = next(tmp_path.glob("seg-*.log"))
    frames = [(first, last) for _s, _e, first, last, _f in sp._frames(segment)]
    assert frames == [(1, 5), (6, 8), (9, 12)]               # one CRC and one header per append
    got, after = [], 0
    while True:                                              # the shipper's pattern: 2 at a time, then 3, ...
        part = sp.read_raw_after(after, 2 + len(got) % 2)
        if not part:
            break
        got.extend(part)
        after = part[-1][0]
    assert [seq for seq, *_ in got] == list(range(1, 13))
    assert [pb.Event.FromString(b).exit.code for _s, b, _k, _j in got] == [0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3]
    assert [e.seq for e in sp.read_after(7, 3)] == [8, 9, 10]   # a reader that jumps back and forth
    assert [e.seq for e in sp.read_after(2, 2)] == [3, 4]


def test_a_record_that_cannot_be_encoded_becomes_a_gap_and_the_rest_of_its_poll_is_kept(tmp_path):
    sp = Spool(tmp_path)
    assert sp.append([*recs(1), object(), *recs(1, start=7)]) == 3
    got = view(sp.read_after(0, 10))
    assert [r["kind"] for r in got] == ["exit", "gap", "exit"] and got[2]["n"] == 7
    assert got[1]["gap"]["from_seq"] == got[1]["gap"]["to_seq"] == 2 and "unencodable" in got[1]["gap"]["reason"]
    assert sp.stats.unpackable == 1


def test_the_shipper_lets_a_part_batch_fill_up_only_right_after_a_send(tmp_path):
    """Fewer, fuller batches under a steady stream; a record after a quiet spell or a full batch goes at once."""
    from agent.identity import HostIdentity  # noqa: PLC0415
    from agent.shipper import Shipper  # noqa: PLC0415

    shipper = Shipper("127.0.0.1:1", Spool(tmp_path / "spool"), HostIdentity("h", "h", "b"), batch_max_events=100,
                      batch_max_delay_s=0.2)
    assert shipper.linger_s(since_send_s=0.05, unsent=10) == 0.2 - 0.05     # part batch just after a send: waits
    assert shipper.linger_s(since_send_s=5.0, unsent=1) == 0.0              # after a quiet spell: at once
    assert shipper.linger_s(since_send_s=0.05, unsent=100) == 0.0           # a full batch: at once
    assert shipper.linger_s(since_send_s=0.05, unsent=0) == 0.0             # nothing to send: no linger


class Clock:
    """The spool's monotonic clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time_ns(self) -> int:
        return int(self.now * 1e9)


def test_fsync_is_deferred_to_its_interval_and_forced_at_segment_change_and_close(tmp_path, monkeypatch):
    """With an fsync interval, appends within it are written but not synced; the agent loop's sync_due syncs once
    the interval is over; a segment left behind and a closed spool are synced at once; 0 syncs every append."""
    import agent.spool as spool_module  # noqa: PLC0415

    clock, synced = Clock(), []
    monkeypatch.setattr(spool_module, "time", clock)
    monkeypatch.setattr(spool_module.os, "fsync", synced.append)
    sp = Spool(tmp_path / "deferred", fsync_interval_s=0.2, segment_bytes=1 << 20)
    assert sp.append(recs(3)) == 3 and len(synced) == 1          # the first write is synced at once
    clock.now += 0.05
    assert sp.append(recs(2)) == 2 and len(synced) == 1          # within the interval: written, not synced
    sp.sync_due()
    assert len(synced) == 1
    clock.now += 0.2
    sp.sync_due()
    assert len(synced) == 2
    sp.sync_due()                                                # nothing new written: nothing to sync
    assert len(synced) == 2 and [e.seq for e in sp.read_after(0, 10)] == [1, 2, 3, 4, 5]
    clock.now += 0.01
    sp.append(recs(1))
    sp.close()
    assert len(synced) == 3                                      # close syncs what was pending
    small = Spool(tmp_path / "segments", fsync_interval_s=10, segment_bytes=64)
    synced.clear()
    small.append(recs(1))                                        # synced: the first write
    clock.now += 0.01
    small.append(recs(4))                                        # not synced yet; the segment is now full
    assert len(synced) == 1
    small.append(recs(1))                                        # a new segment: the full one is synced first
    assert len(synced) == 2 and len(list((tmp_path / "segments").glob("seg-*.log"))) == 2
    every = Spool(tmp_path / "every", fsync_interval_s=0)
    synced.clear()
    every.append(recs(1))
    every.append(recs(1))
    assert len(synced) == 2

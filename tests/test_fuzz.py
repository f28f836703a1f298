"""A short, seeded run of the collector fuzzer inside the suite (``make fuzz`` runs a long one)."""

from __future__ import annotations

from tests.fuzz_collector import fuzz


def test_collector_survives_a_short_fuzz_run(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUGUARD_AUTH_DIR", str(tmp_path / "auth"))
    report = fuzz(cases=300, seed=1234, workdir=tmp_path)
    print(f"\nfuzz: {report}")
    assert report.cases == 300 and report.crashes == 0
    assert report.tracebacks == 0
    assert report.integrity == "ok"
    assert report.rss_after_mb < report.rss_before_mb + 200
    assert report.codes.get("OK", 0) > 0                       # some stream cases got through to ingest
    assert report.codes.get("UNAUTHENTICATED", 0) > 0

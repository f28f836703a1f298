"""The timeline page in a real browser: headless Chromium from the distribution, against a collector that
holds the recorded ROME replay (tests/corpus/rome_job.jsonl, re-shipped through the gRPC ingest path so
detection re-derives its alerts) and a 6,000-event job (paging and aggregation)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from collector.app import CollectorConfig
from gpuguard.v1 import events_pb2 as pb
from lab import free_port
from tests.services import collector_in_thread, issue, stream_events

CORPUS = Path(__file__).parent / "corpus" / "rome_job.jsonl"
ROME_JOB, BIG_JOB = "4242", "9999"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def browser() -> str:
    found = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if found:
        return found
    if os.environ.get("GPUGUARD_REQUIRE_BROWSER") == "1":
        pytest.fail("chromium is required (GPUGUARD_REQUIRE_BROWSER=1): scripts/setup.sh --test installs it")
    pytest.skip("no headless chromium here (apt-get install chromium)")


def rome_events() -> list[pb.Event]:
    """The recorded job, renumbered 1..N in its original order (it was one host's slice of a longer run)."""
    lines = [json.loads(line) for line in CORPUS.read_text().splitlines()[1:]]
    events = [pb.Event.FromString(base64.b64decode(x["event"])) for x in lines]
    for seq, ev in enumerate(events, start=1):
        ev.seq = seq
    return events


def big_job(n: int = 6000) -> list[pb.Event]:
    start = time.time_ns()
    out = []
    for i in range(n):
        ev = pb.Event(seq=i + 1, ts_ns=start + i * 1_000_000)
        if i % 3:
            ev.connect.CopyFrom(pb.Connect(daddr=f"10.0.{i % 7}.{i % 200}", dport=29500, proto="tcp"))
        else:
            ev.exec.CopyFrom(pb.Exec(filename="/usr/bin/python3", argv=["python3", "worker.py", str(i)]))
        ev.process.pid, ev.process.key, ev.process.comm = 5000 + i % 2, f"w{i % 2}", "python3"   # two ranks
        ev.job.kind, ev.job.id = "slurm", BIG_JOB
        out.append(ev)
    return out


def render(chrome: str, url: str, tmp: Path, screenshot: str = "") -> str:
    """The DOM after the page's scripts ran (and a PNG when asked)."""
    base = [chrome, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", f"--user-data-dir={tmp / 'profile'}", "--window-size=1400,1400",
            "--virtual-time-budget=20000"]
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    if screenshot:
        shot = subprocess.run([*base, f"--screenshot={screenshot}", url], capture_output=True, text=True,
                              timeout=120)
        assert shot.returncode == 0, shot.stderr[-2000:]
    return dom.stdout


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    chrome = browser()
    tmp = tmp_path_factory.mktemp("page")
    cfg = CollectorConfig(listen="127.0.0.1:0", store=str(tmp / "c.db"), http=f"127.0.0.1:{free_port()}")
    with collector_in_thread(cfg) as app:
        rome = rome_events()
        assert stream_events(app.port, "node-rome", rome) == len(rome)
        assert stream_events(app.port, "node-big", big_job()) == 6000
        app.detector.drain()
        yield {"chrome": chrome, "tmp": tmp, "url": app.http_servers["page"].url, "token": issue("reader", "page-test"),
               "app": app}


def test_rome_job_page_shows_lanes_marks_and_alerts_in_order(page):
    shot = page["tmp"] / "rome-job.png"
    dom = render(page["chrome"], f"{page['url']}/#/job/{ROME_JOB}&token={page['token']}", page["tmp"], str(shot))
    assert 'data-ready="job"' in dom, dom[-3000:]
    assert 'id="timeline"' in dom
    lanes = re.findall(r'<g class="lane" data-host="([^"]+)"', dom)
    assert lanes and set(lanes) == {"node-rome"}
    for kind in ("exec", "gpu_open", "enforcement"):
        assert f'data-kind="{kind}"' in dom, kind                          # marks of each kind are drawn
    shown = re.findall(r'<tr class="alert" data-rule="([^"]+)"', dom)
    expected = [a.rule_id for a in sorted(page["app"].store.alerts(ROME_JOB), key=lambda a: a.ts_ns)]
    assert shown == expected and {"ssh-reverse-tunnel", "miner-binary"} <= set(shown)
    assert shown.index("ssh-reverse-tunnel") < shown.index("miner-binary")      # the tunnel came first
    assert 'class="badge gpu"' in dom                                      # the trainer is marked as a GPU user
    assert 'class="ev-link"' in dom                                        # alerts link to their evidence
    assert shot.exists() and shot.stat().st_size > 10_000
    keep = os.environ.get("GPUGUARD_SCREENSHOT_DIR")
    if keep:
        shutil.copy(shot, Path(keep) / shot.name)


def test_job_list_and_a_job_of_thousands_of_events(page):
    dom = render(page["chrome"], f"{page['url']}/#token={page['token']}", page["tmp"])
    jobs = re.findall(r'data-job="([^"]+)"', dom)
    assert jobs[:2] == [BIG_JOB, ROME_JOB] or set(jobs) >= {BIG_JOB, ROME_JOB}
    assert re.search(rf'<tr class="hot job" data-job="{ROME_JOB}"', dom)         # it has alerts
    dom = render(page["chrome"], f"{page['url']}/#/job/{BIG_JOB}&token={page['token']}", page["tmp"])
    assert 'data-ready="job"' in dom and 'id="more"' in dom                   # 6,000 events: paged
    marks = len(re.findall(r'class="mark ', dom))
    assert 0 < marks < 4000               # 5,000 events in two lanes: one mark per (pixel column, kind)
    assert len(re.findall(r'<tr class="event"', dom)) == 400                  # rows rendered in slices


def test_without_a_token_the_page_asks_for_one(page):
    dom = render(page["chrome"], f"{page['url']}/#/job/{ROME_JOB}", page["tmp"])
    assert '<form id="login">' in dom and 'id="timeline"' not in dom


def test_the_rome_page_reads_in_one_look(page):
    """Spans for process lifetimes, the GPU user's lane first and labelled by what it ran (not its wrapper),
    set-up noise folded, a legend, and every alert's label whole."""
    shot = page["tmp"] / "rome-timeline.png"
    dom = render(page["chrome"], f"{page['url']}/#/job/{ROME_JOB}&token={page['token']}", page["tmp"], str(shot))
    legend = set(re.findall(r'<g class="legend-item" data-kind="([^"]+)"', dom))
    assert {"exec", "connect", "gpu_open", "enforcement", "span", "alert", "incomplete"} <= legend
    assert len(re.findall(r'<rect class="span', dom)) >= 5                 # process lifetimes
    lanes = re.findall(r'<g class="lane" [^>]*data-gpu="(\d)"[^>]*>.*?<text class="lane-label"[^>]*>([^<]*)<', dom)
    assert lanes[0][0] == "1" and "python3" in lanes[0][1] and "unshare" not in lanes[0][1], lanes
    assert any("folded" in label for _gpu, label in lanes)                # mkdir/mount set-up in one lane
    labels = re.findall(r'<text class="alert-label[^"]*"[^>]*>([^<]*)<', dom)
    expected = {a.rule_id for a in page["app"].store.alerts(ROME_JOB)}
    assert set(labels) == expected                                         # each alert labelled, in full
    keep = os.environ.get("GPUGUARD_SCREENSHOT_DIR")
    if keep:
        shutil.copy(shot, Path(keep) / shot.name)


def test_a_window_named_in_the_link_is_zoomed(page):
    rome = rome_events()
    lo, hi = rome[len(rome) // 3].ts_ns, rome[2 * len(rome) // 3].ts_ns
    whole = render(page["chrome"], f"{page['url']}/#/job/{ROME_JOB}&token={page['token']}", page["tmp"])
    dom = render(page["chrome"], f"{page['url']}/#/job/{ROME_JOB}?from={lo}&to={hi}&token={page['token']}",
                 page["tmp"])
    assert 'id="zoomed"' in dom and 'id="zoom-reset"' in dom
    t0 = float(re.search(r'<svg id="timeline"[^>]*data-t0="([\d.e+]+)"', dom).group(1))
    assert abs(t0 - lo / 1000) < 1                                          # the axis starts at the window
    assert 0 < len(re.findall(r'class="mark ', dom)) < len(re.findall(r'class="mark ', whole))


def test_a_job_on_twenty_hosts_has_a_lane_per_host_named_by_hostname(page):
    start = time.time_ns()
    job = "20202"
    for h in range(20):
        events = []
        for i in range(6):
            ev = pb.Event(seq=i + 1, ts_ns=start + (h * 6 + i) * 10_000_000)
            if i == 0:
                ev.exec.CopyFrom(pb.Exec(filename="/usr/bin/python3", argv=["python3", "train.py", f"--rank={h}"]))
            elif i == 5 and h == 13:
                ev.gpu_usage.CopyFrom(pb.GpuUsage(gpu=0, sm_util=93, memory_bytes=8 << 30))
            else:
                ev.connect.CopyFrom(pb.Connect(daddr=f"10.1.0.{h + 1}", dport=29500, proto="tcp"))
            ev.process.pid, ev.process.key, ev.process.comm = 7000 + h, f"r{h}", "python3"
            ev.job.kind, ev.job.id = "slurm", job
            events.append(ev)
        assert stream_events(page["app"].port, f"gpu-node-{h:02d}", events) == 6
    shot = page["tmp"] / "twenty-hosts.png"
    dom = render(page["chrome"], f"{page['url']}/#/job/{job}&token={page['token']}", page["tmp"], str(shot))
    hosts = set(re.findall(r'<g class="lane" data-host="([^"]+)"', dom))
    assert hosts == {f"gpu-node-{h:02d}" for h in range(20)}
    first = re.search(r'<g class="lane" data-host="([^"]+)"[^>]*data-gpu="1"', dom)
    assert first and first.group(1) == "gpu-node-13"                      # the GPU-busy lane leads
    assert "gpu-node-13 · python3 train.py" in dom                         # hostname and what it ran
    keep = os.environ.get("GPUGUARD_SCREENSHOT_DIR")
    if keep:
        shutil.copy(shot, Path(keep) / shot.name)


def test_a_live_job_page_follows_the_push_stream(page):
    """live=1 in the link: the page opens the collector's push stream for the job (api/follow) and merges what
    arrives; what is pushed is checked below on the stream itself, where arrival does not race the DOM dump."""
    dom = render(page["chrome"], f"{page['url']}/#/job/{ROME_JOB}?live=1&token={page['token']}", page["tmp"])
    assert 'data-ready="job"' in dom and 'id="live" type="checkbox" checked' in dom.replace('checked=""', "checked")
    assert 'data-following="1"' in dom, "the page did not open the push stream"


def test_new_events_and_alerts_are_pushed_as_they_are_stored(page):
    import json as _json  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    from tests.services import FakeAgent  # noqa: PLC0415

    job = "31337"
    req = urllib.request.Request(f"{page['url']}/api/follow?job=slurm:{job}",
                                 headers={"Authorization": f"Bearer {page['token']}"})
    with urllib.request.urlopen(req, timeout=30) as resp:                 # noqa: S310 - local
        assert resp.readline().strip() == b"{}"                            # subscribed: now store something
        agent = FakeAgent(page["app"].port, "live-node")
        try:
            ev = pb.Event(ts_ns=time.time_ns(), exec=pb.Exec(filename="/opt/xmrig", argv=["xmrig", "-o", "x"]))
            ev.process.pid, ev.process.key, ev.process.comm, ev.process.exe = 4000, "live", "xmrig", "/opt/xmrig"
            ev.job.kind, ev.job.id = "slurm", job
            agent.ship([ev])
            page["app"].detector.drain()
            got = []
            while not (any("event" in g for g in got) and any("alert" in g for g in got)):
                line = resp.readline().strip()
                if line:
                    got.append(_json.loads(line))
        finally:
            agent.close()
    event = next(g["event"] for g in got if "event" in g)
    assert event["host_id"] == "live-node" and event["event"]["exec"]["filename"] == "/opt/xmrig"
    assert any(g["alert"]["rule_id"] == "miner-binary" for g in got if "alert" in g)


def test_the_push_stream_needs_a_reader_token(page):
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{page['url']}/api/follow?job={ROME_JOB}", timeout=10)   # noqa: S310 - local
    assert refused.value.code == 401
    req = urllib.request.Request(f"{page['url']}/api/follow?job={ROME_JOB}",
                                 headers={"Authorization": f"Bearer {page['token']}"})
    with urllib.request.urlopen(req, timeout=10) as resp:                 # noqa: S310 - local
        assert resp.headers["Content-Type"] == "application/x-ndjson"
        assert resp.readline().strip() == b"{}"                            # subscribed

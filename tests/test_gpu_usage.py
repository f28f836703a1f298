"""GPU evidence without a GPU: a fake libnvidia-ml.so.1 (lab/fake_nvml/nvml.c, built here) that the real
nvidia-ml-py loads; the sampler, the records joined to process and job, the rule, and the agent end to end."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from agent.gpu_usage import GpuUsageReporter, NvmlSampler
from collector.correlate import Correlator
from collector.rules.engine import Engine
from collector.rules.loader import load_ruleset, rule_texts
from gpuguard.v1 import events_pb2 as pb
from lab import popen_in_cgroup
from tests.conftest import PYTHON, fresh_job_id

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def fake_nvml(tmp_path_factory) -> Path:
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler to build the fake NVML")
    out = tmp_path_factory.mktemp("nvml") / "libnvidia-ml.so.1"
    subprocess.run([cc, "-shared", "-fPIC", "-Wl,-soname,libnvidia-ml.so.1", "-o", str(out),
                    str(ROOT / "lab" / "fake_nvml" / "nvml.c")], check=True, capture_output=True)
    return out


def gpu_state(path: Path, procs: list[tuple[int, int, int]], util: int = 87) -> None:
    """procs: (pid, MiB, SM %) on GPU 0."""
    lines = [f"gpu 0 GPU-fake-0 {util} 250000"] + [f"proc 0 {pid} {mib << 20} {sm}" for pid, mib, sm in procs]
    path.write_text("\n".join(lines) + "\n")


def test_no_driver_means_the_sampler_says_so_and_stays_off(fake_nvml, monkeypatch, caplog):
    monkeypatch.delenv("GPUGUARD_FAKE_NVML", raising=False)          # the library is there, the driver is not
    sampler = NvmlSampler(str(fake_nvml))
    assert not sampler.ok and "Driver Not Loaded" in sampler.why_off and sampler.sample() == []


def test_the_sampler_reads_gpu_processes_through_the_real_pynvml(fake_nvml, tmp_path, monkeypatch):
    state = tmp_path / "gpu"
    gpu_state(state, [(4242, 1024, 80), (4343, 10, 0)])
    monkeypatch.setenv("GPUGUARD_FAKE_NVML", str(state))
    samples = NvmlSampler(str(fake_nvml)).sample()
    assert [(s.pid, s.memory_bytes >> 20, s.sm_util, s.device_util, s.uuid) for s in samples] == \
        [(4242, 1024, 80, 87, "GPU-fake-0"), (4343, 10, 0, 87, "GPU-fake-0")]


def usage(exe: str, key: str, sm: int, seq: int) -> pb.Event:
    ev = pb.Event(seq=seq, ts_ns=seq * 10**9, gpu_usage=pb.GpuUsage(gpu=0, sm_util=sm, memory_bytes=2 << 30))
    ev.job.kind, ev.job.id = "slurm", "4242"
    ev.process.key, ev.process.exe, ev.process.comm = key, exe, exe.rsplit("/", 1)[-1]
    return ev


def test_a_new_binary_keeping_the_gpu_busy_is_an_alert_the_trainer_is_not():
    rs = load_ruleset(rule_texts())
    engine, corr = Engine(rs), Correlator(rs)

    def fired(ev: pb.Event) -> set[str]:
        hits = {m.rule.id for m in engine.evaluate("h1", ev, corr.context("h1", ev))}
        corr.observe("h1", ev)
        return hits

    assert "gpu-busy-new-binary" not in fired(usage("/usr/bin/python3", "main", 95, 1))   # the job's trainer
    assert "gpu-busy-new-binary" not in fired(usage("/usr/bin/python3", "main", 97, 2))
    assert "gpu-busy-new-binary" not in fired(usage("/tmp/.x/kworker", "m", 5, 3))        # present, idle
    assert "gpu-busy-new-binary" in fired(usage("/tmp/.x/kworker", "m", 80, 4))           # busy: the miner


@pytest.mark.kernel
def test_samples_become_records_of_the_process_and_its_job(capture, test_cgroup, fake_nvml, tmp_path, monkeypatch):
    job = fresh_job_id()
    cg = test_cgroup(f"slurm/job_{job}")
    proc = popen_in_cgroup(cg, [PYTHON, "-c", "import sys; print('ready', flush=True); sys.stdin.readline()"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        state = tmp_path / "gpu"
        gpu_state(state, [(proc.pid, 2048, 91)])
        monkeypatch.setenv("GPUGUARD_FAKE_NVML", str(state))
        reporter = GpuUsageReporter(NvmlSampler(str(fake_nvml)), capture.enricher, interval_s=60)
        (ev,) = reporter.report(now=1.0)
        assert reporter.report(now=2.0) == []                          # not again before the interval
        assert (ev.job.kind, ev.job.id) == ("slurm", job) and ev.process.pid == proc.pid
        assert ev.process.exe.endswith("python3") or "python" in ev.process.exe
        assert (ev.gpu_usage.sm_util, ev.gpu_usage.memory_bytes >> 20, ev.gpu_usage.uuid) == (91, 2048, "GPU-fake-0")
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.kernel
def test_the_agent_ships_gpu_usage_into_the_jobs_timeline(tmp_path, test_cgroup, fake_nvml):
    from lab import free_port  # noqa: PLC0415
    from tests.services import agent, cli_json, collector  # noqa: PLC0415
    from tests.test_tamper_kernel import host_state, wait_until  # noqa: PLC0415

    port, host = free_port(), f"gpu-{uuid.uuid4().hex[:6]}"
    state = tmp_path / "gpu"
    gpu_state(state, [])
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\ngpu_sample_s = 0.5\nnvml_library = "{fake_nvml}"\n')
    os.environ["GPUGUARD_FAKE_NVML"] = str(state)                      # the agent inherits it
    col = collector(tmp_path, port).start()
    ag = agent(tmp_path, port, host, "--config", str(config))
    job = fresh_job_id()
    proc = stray = None
    try:
        ag.start()
        wait_until(lambda: host_state(port, host) == "ok")
        cg = test_cgroup(f"slurm/uid_0/job_{job}")
        proc = popen_in_cgroup(cg, [PYTHON, "-c", "import sys; print('ready', flush=True); sys.stdin.readline()"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        gpu_state(state, [(proc.pid, 4096, 77)])
        got = wait_until(lambda: [e["event"]["gpu_usage"] for e in
                                  cli_json(port, "timeline", job, "--kind", "gpu_usage").get("events", [])], timeout=30)
        assert got[0]["sm_util"] == 77 and int(got[0]["memory_bytes"]) == 4096 << 20
        text = subprocess.run([*__import__("lab").CLI, "timeline", job, "--collector", f"127.0.0.1:{port}"],
                              capture_output=True, text=True, cwd=ROOT, timeout=60).stdout
        assert "SM 77%" in text
        # a process outside every job (a transient unit) keeping a GPU busy: GPU time no scheduler granted
        unit = f"run-u{job}.service"
        stray = popen_in_cgroup(test_cgroup(unit), [PYTHON, "-c", "import sys; print('ready', flush=True); "
                                                    "sys.stdin.readline()"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert stray.stdout.readline().strip() == "ready"
        gpu_state(state, [(proc.pid, 4096, 77), (stray.pid, 1024, 93)])
        alerted = wait_until(lambda: [a for a in cli_json(port, "alerts", "--job", unit).get("alerts", [])
                                      if a["rule_id"] == "gpu-busy-outside-jobs"], timeout=30)
        assert alerted[0]["job"]["kind"] == "systemd" and "93" in alerted[0]["matched"]["gpu_util_above"]
        assert not [a for a in cli_json(port, "alerts", "--job", job).get("alerts", [])
                    if a["rule_id"] == "gpu-busy-outside-jobs"]                   # the job's trainer is not outside
    finally:
        os.environ.pop("GPUGUARD_FAKE_NVML", None)
        for p in (proc, stray):
            if p is not None:
                p.kill()
                p.wait(10)
        ag.stop()
        col.stop()
        time.sleep(0)

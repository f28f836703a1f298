"""GPU evidence beside behaviour: which process keeps which GPU busy, and how much.

Behind a small interface (GpuSampler), NVML by default through nvidia-ml-py (pynvml): every few seconds, for
each GPU process the driver reports, its GPU memory and SM utilisation with the device's utilisation and power.
Each becomes a gpu_usage record joined to the process and its job by pid (the enricher's process table and the
process's cgroup), shipped like any other record: the timeline shows it, rules can judge it
(collector/rules/keys.py gpu_util_above, gpu_new_binary). No NVML (no driver, no GPU): the sampler says so once
and stays off. Tested without a GPU against a fake libnvidia-ml.so.1 (lab/fake_nvml) that the real pynvml loads.
"""

from __future__ import annotations

import ctypes
import logging
import time
from dataclasses import dataclass
from typing import Protocol

from agent.enrich import Enricher
from gpuguard.v1 import events_pb2 as pb

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 5.0


@dataclass(frozen=True)
class GpuProcessSample:
    gpu: int
    uuid: str
    pid: int
    memory_bytes: int
    sm_util: int
    device_util: int
    power_mw: int


class GpuSampler(Protocol):
    def sample(self) -> list[GpuProcessSample]: ...


class NvmlSampler:
    """GPU processes from NVML. library: a libnvidia-ml.so.1 to load first (tests, odd installs); "" = the
    system's. Any NVML failure at start turns the sampler off, logged once."""

    def __init__(self, library: str = "") -> None:
        self.ok = False
        self.why_off = ""
        try:
            if library:
                ctypes.CDLL(library, mode=ctypes.RTLD_GLOBAL)   # pynvml's CDLL("libnvidia-ml.so.1") finds it
            import pynvml  # noqa: PLC0415

            self.nvml = pynvml
            pynvml.nvmlInit()
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self.uuids = [_text(pynvml.nvmlDeviceGetUUID(h)) for h in self.handles]
            self.ok = True
            log.info("GPU sampler: NVML, %d GPU(s)", len(self.handles))
        except Exception as exc:   # no driver, no library, no GPU: off, said once
            self.why_off = f"{type(exc).__name__}: {exc}"
            log.info("GPU sampler off (no NVML: %s); GPU use is seen as device opens only", self.why_off)

    def sample(self) -> list[GpuProcessSample]:
        if not self.ok:
            return []
        nvml, out = self.nvml, []
        for index, (handle, uuid) in enumerate(zip(self.handles, self.uuids, strict=True)):
            try:
                device = nvml.nvmlDeviceGetUtilizationRates(handle).gpu
                power = nvml.nvmlDeviceGetPowerUsage(handle)
                procs = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
                try:
                    sm = {s.pid: s.smUtil for s in nvml.nvmlDeviceGetProcessUtilization(handle, 0)}
                except nvml.NVMLError:      # no samples yet (an idle GPU answers NOT_FOUND)
                    sm = {}
            except nvml.NVMLError as exc:
                log.debug("GPU %d: %s", index, exc)
                continue
            for p in procs:
                out.append(GpuProcessSample(index, uuid, p.pid, p.usedGpuMemory or 0, sm.get(p.pid, 0), device,
                                            power))
        return out


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class GpuUsageReporter:
    """Samples into gpu_usage records, every interval_s (called from the capture loop)."""

    def __init__(self, sampler: GpuSampler, enricher: Enricher, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self.sampler = sampler
        self.enricher = enricher
        self.interval_s = interval_s
        self._due = 0.0
        self.reported = 0

    def report(self, now: float | None = None) -> list[pb.Event]:
        now = time.monotonic() if now is None else now
        if now < self._due:
            return []
        self._due = now + self.interval_s
        out = []
        boot_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        for s in self.sampler.sample():
            ev = self.enricher.event_for_pid(s.pid, boot_ns)
            if ev is None:
                continue                         # gone between the sample and now
            g = ev.gpu_usage
            g.gpu, g.uuid, g.memory_bytes, g.sm_util = s.gpu, s.uuid, s.memory_bytes, s.sm_util
            g.device_util, g.power_mw = s.device_util, s.power_mw
            out.append(ev)
        self.reported += len(out)
        return out

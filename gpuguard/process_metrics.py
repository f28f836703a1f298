"""Series every gpuguard process exports beside its own: CPU, memory, open fds and start time
(prometheus_client's process collector), and its version."""

from __future__ import annotations

from prometheus_client import Info, ProcessCollector
from prometheus_client.registry import CollectorRegistry

from gpuguard import __version__


def add_process_series(registry: CollectorRegistry, prefix: str) -> None:
    """CPU, memory, open fds and start time of this process (prometheus_client's process collector), and
    the version as {prefix}_build_info."""
    ProcessCollector(namespace=prefix, registry=registry)
    Info(f"{prefix}_build", "gpuguard version of this process", registry=registry).info({"version": __version__})

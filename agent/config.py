"""Agent configuration: defaults, then a TOML file, then command-line flags."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from agent.jobs import JobPattern


class ConfigError(ValueError):
    """A bad config file or value; the message names the file and the key."""


@dataclass
class AgentConfig:
    collector: str = ""                      # host:port; empty = print locally only
    spool_dir: str = "/var/lib/gpuguard/spool"
    spool_max_bytes: int = 1 << 30
    spool_fsync_ms: int = 200                # spooled records reach the disk within this (0: fsync every append)
    batch_max_events: int = 2048             # a RawBatch of connects is ~100 B per event: ~200 KB
    batch_max_delay_ms: int = 200
    drain_max_ms: int = 250                  # while records flow, user space sees each within this (agent/pacing.py)
    ringbuf_pages: int = 4096
    gpu_sample_s: float = 5.0               # GPU processes sampled from NVML this often (0: off)
    nvml_library: str = ""                  # a libnvidia-ml.so.1 to load instead of the system's (tests, demos)
    capture_budget_per_s: int = 4000        # shared-ring records per job cgroup per second; over it: counted, not sent
    packet_sockets: bool = True             # watch every socket send/receive for packet sockets (probes/flow.c)
    status_interval_s: float = 10.0
    host_id: str = ""
    token_file: str = ""                     # this agent's credential; default AUTH_DIR/credentials/agent[-HOST].token
    auth_dir: str = ""                       # default /etc/gpuguard (or $GPUGUARD_AUTH_DIR)
    join_token_file: str = ""                # no credential yet: enroll with this join token (agent/enroll.py)
    tls_ca: str = ""                         # CA of the collector's certificate: TLS on
    tls_cert: str = ""                       # this agent's certificate and key, for mTLS
    tls_key: str = ""
    hash_executables: bool = True
    enforce: bool = True                     # apply policy pushed by the collector
    state_dir: str = "/var/lib/gpuguard/agent"   # last policy and cgroup attachments, for restarts
    job_patterns: list[dict] = field(default_factory=list)   # [{kind=..., regex=...}]
    metrics: str = ""                        # HOST:PORT for Prometheus /metrics; "" = off
    metrics_token_file: str = ""             # bearer token scrapers must present (required off loopback)

    def patterns(self) -> tuple[JobPattern, ...]:
        out = []
        for i, item in enumerate(self.job_patterns):
            try:
                out.append(JobPattern.of(item["kind"], item["regex"]))
            except (KeyError, ValueError, TypeError) as exc:
                raise ConfigError(f"job_patterns[{i}]: {exc}") from exc
        return tuple(out)


def load_config(path: str | None, overrides: dict) -> AgentConfig:
    cfg = AgentConfig()
    known = {f.name: f for f in fields(AgentConfig)}
    values: dict = {}
    if path:
        try:
            values = tomllib.loads(Path(path).read_text()).get("agent", {})
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    values.update({k: v for k, v in overrides.items() if v is not None})
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{path or 'flags'}: unknown agent setting {key!r}")
        default = getattr(cfg, key)
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"{path or 'flags'}: {key} must be true or false")
        if isinstance(default, int | float) and not isinstance(default, bool) and not isinstance(value, int | float):
            raise ConfigError(f"{path or 'flags'}: {key} must be a number, got {value!r}")
        setattr(cfg, key, value)
    cfg.patterns()
    return cfg

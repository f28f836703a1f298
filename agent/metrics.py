"""Prometheus metrics of the agent, read from its own counters at scrape time (nothing on the hot path
but a dict increment per record, in agent/runtime.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from gpuguard.process_metrics import add_process_series
from gpuguard.v1 import events_pb2 as pb
from gpuguard.vocab import ACTION_NAMES, KIND_NAMES

# what the agent's records can be (the Event body), less its own status
RECORD_KINDS = tuple(f.name for f in pb.Event.DESCRIPTOR.oneofs_by_name["body"].fields if f.name != "status")


class AgentMetrics(Collector):
    def __init__(self, agent) -> None:
        self.agent = agent

    def collect(self) -> Iterator:
        a = self.agent
        cap = a.capture
        events = CounterMetricFamily("gpuguard_agent_events", "Events captured and enriched, by kind", labels=["kind"])
        for kind, n in sorted(zeroed(RECORD_KINDS, cap.stats.by_kind).items()):   # every kind from the start
            events.add_metric([kind], n)
        yield events
        lost = CounterMetricFamily("gpuguard_agent_kernel_lost_events",
                                   "Events the kernel could not put on the ring buffer, by kind", labels=["kind"])
        for kind, n in sorted(zeroed(KIND_NAMES.values(), cap.probes.lost_counts()).items()):
            lost.add_metric([kind], n)
        yield lost
        yield CounterMetricFamily("gpuguard_agent_enrich_failed_events", "Events dropped because enriching failed",
                                  value=cap.stats.enrich_failed)
        blocks = CounterMetricFamily("gpuguard_agent_enforcement_actions",
                                     "Enforcement actions (kill_exec, deny_connect, drop_payload, ...)",
                                     labels=["action"])
        for action, n in sorted(zeroed(ACTION_NAMES.values(), cap.stats.actions).items()):
            blocks.add_metric([action], n)
        yield blocks
        spool, shipper = a.spool, a.shipper
        yield GaugeMetricFamily("gpuguard_agent_spool_depth_events", "Events in the spool not yet acked",
                                value=spool.depth() if spool else 0)
        yield GaugeMetricFamily("gpuguard_agent_spool_bytes", "Bytes of the spool on disk",
                                value=spool.size_bytes() if spool else 0)
        gaps = (spool.stats.dropped if spool else 0) + (shipper.quarantine.count if shipper else 0)
        yield CounterMetricFamily("gpuguard_agent_gap_events",
                                  "Events replaced by gap records (spool full or quarantined)", value=gaps)
        yield GaugeMetricFamily("gpuguard_agent_ship_lag_seconds",
                                "Seconds since the collector last acked while events wait in the spool (0: caught up)",
                                value=shipper.lag_seconds(time.monotonic()) if shipper else 0)
        yield CounterMetricFamily("gpuguard_agent_reconnects", "Reconnections to the collector",
                                  value=shipper.reconnects if shipper else 0)
        yield GaugeMetricFamily("gpuguard_agent_connected", "1 while the stream to the collector is up",
                                value=1 if shipper and shipper.connected.is_set() else 0)
        enf = a.enforcer
        yield GaugeMetricFamily("gpuguard_agent_policy_version", "Policy version in force",
                                value=enf.policy_version if enf else 0)
        programs = GaugeMetricFamily("gpuguard_agent_enforcement_programs",
                                     "Enforcement programs attached now (1 per kind in force)", labels=["program"])
        for name in enf.programs() if enf else []:
            programs.add_metric([name], 1)
        yield programs


def zeroed(names, counts) -> dict[str, int]:
    """Every label value from the start, at 0 until counted: a rate() or an alert on the first increment after
    a restart sees it (a series that appears only at its first increment has no earlier sample)."""
    out = dict.fromkeys(names, 0)
    out.update(counts)
    return out


def agent_registry(agent) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentMetrics(agent))
    add_process_series(registry, "gpuguard_agent")
    return registry

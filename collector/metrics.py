"""Prometheus metrics of the collector: counters read from ingest, detection, alerts and the agent table
at scrape time, plus one histogram observed on the ingest path (store commit latency)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from gpuguard.process_metrics import add_process_series

COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class CollectorMetrics(Collector):
    def __init__(self, app) -> None:
        self.app = app

    def collect(self) -> Iterator:
        app = self.app
        ing = app.ingestor
        yield CounterMetricFamily("gpuguard_collector_events_stored", "Events written to the store", value=ing.stored)
        yield CounterMetricFamily("gpuguard_collector_batches", "Batches committed", value=ing.batches)
        yield CounterMetricFamily("gpuguard_collector_raw_batches",
                                  "RawBatches that passed the checks (today's agents; older ones send EventBatches)",
                                  value=ing.raw_batches)
        yield CounterMetricFamily("gpuguard_collector_duplicates_ignored",
                                  "Events received again after a replay, not stored twice", value=ing.duplicates)
        yield CounterMetricFamily("gpuguard_collector_clock_suspect_events",
                                  "Events stamped more than 24 h from the collector's clock", value=ing.clock_suspect)
        det = app.detector
        yield GaugeMetricFamily("gpuguard_collector_detection_lag_seconds",
                                "Age of the oldest committed batch detection has not evaluated yet",
                                value=det.lag_seconds() if det else 0)
        yield GaugeMetricFamily("gpuguard_collector_detection_pending_events", "Events waiting for detection",
                                value=det.pending if det else 0)
        yield CounterMetricFamily("gpuguard_collector_detection_skipped_events",
                                  "Events stored but not evaluated (detection queue full)",
                                  value=det.skipped if det else 0)
        alerts = CounterMetricFamily("gpuguard_collector_alerts", "Alerts raised, by rule and severity",
                                     labels=["rule", "severity"])
        if app.policy:
            with app.policy.lock:
                counts = Counter((a.rule_id, a.severity) for a in app.policy.alerts.values())
                rs = app.policy.ruleset
                known = {(r.id, r.severity) for r in (*rs.rules.values(), *rs.correlations.values())
                         if getattr(r, "action", "alert") != "signal"}
            for key in known:                   # every rule from the start: its first alert is a visible increase
                counts.setdefault(key, 0)
            for (rule, severity), n in sorted(counts.items()):
                alerts.add_metric([rule, severity], n)
        yield alerts
        connected = GaugeMetricFamily("gpuguard_collector_agent_connected", "1 while the agent's stream is up",
                                      labels=["host"])
        seen = GaugeMetricFamily("gpuguard_collector_agent_last_seen_age_seconds",
                                 "Seconds since the agent's last message", labels=["host"])
        version = GaugeMetricFamily("gpuguard_collector_agent_policy_version", "Policy version the agent acked",
                                    labels=["host"])
        now = time.time_ns()
        for a in app.store.agents():
            host = a["host_id"]
            connected.add_metric([host], 1 if a["connected"] else 0)
            seen.add_metric([host], max(0.0, (now - (a["last_seen_ns"] or 0)) / 1e9) if a["last_seen_ns"] else -1)
            version.add_metric([host], a["policy_version"] or 0)
        yield connected
        yield seen
        yield version
        yield GaugeMetricFamily("gpuguard_collector_policy_version", "Policy version this collector pushes",
                                value=app.policy.version if app.policy else 0)


def collector_registry(app) -> CollectorRegistry:
    """A registry of its own (no process-global state: tests run several collectors in one process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CollectorMetrics(app))
    commit = Histogram("gpuguard_collector_commit_seconds", "Store commit time per batch (the ack waits for it)",
                       buckets=COMMIT_BUCKETS, registry=registry)
    app.ingestor.on_commit = commit.observe
    add_process_series(registry, "gpuguard_collector")
    return registry


class WorkerMetrics(Collector):
    """A log worker's series: what it holds, how far behind it is, what it stored and evaluated, per phase CPU."""

    def __init__(self, worker) -> None:
        self.worker = worker

    def collect(self) -> Iterator:
        w, s = self.worker, self.worker.stats
        held = GaugeMetricFamily("gpuguard_worker_partition_held", "1 for each log partition this worker leases",
                                 labels=["partition"])
        offset = GaugeMetricFamily("gpuguard_worker_partition_offset", "Last log offset stored and evaluated",
                                   labels=["partition"])
        for p, state in sorted(dict(w.held).items()):
            held.add_metric([str(p)], 1)
            offset.add_metric([str(p)], state.offset)
        yield held
        yield offset
        yield GaugeMetricFamily("gpuguard_worker_lag_seconds",
                                "Age of the last batch handled when it was handled (receive -> stored+evaluated)",
                                value=s.lag_s)
        yield CounterMetricFamily("gpuguard_worker_log_entries", "Log entries read", value=s.entries)
        yield CounterMetricFamily("gpuguard_worker_events_stored", "Events written to the store", value=s.events_stored)
        yield CounterMetricFamily("gpuguard_worker_events_evaluated", "Events run through detection",
                                  value=s.events_evaluated)
        yield CounterMetricFamily("gpuguard_worker_malformed_entries", "Log entries that were not a LogBatch",
                                  value=s.malformed)
        yield CounterMetricFamily("gpuguard_worker_failures", "Failed reads or loads (retried)", value=s.failures)
        yield CounterMetricFamily("gpuguard_worker_detection_failures",
                                  "Batches detection raised on (stored, not evaluated)", value=s.detect_failures)
        yield CounterMetricFamily("gpuguard_worker_takeovers", "Partitions taken", value=s.takeovers)
        checked = CounterMetricFamily("gpuguard_worker_forwarded_checks",
                                      "What the checks of forwarded RawBatch events found (refused: a value no store "
                                      "keeps, stored as a gap; clock_suspect: stamped a day off; disagreeing: parts "
                                      "whose bodies' seqs were not the ones acked)", labels=["finding"])
        for name, n in (("refused", s.refused), ("clock_suspect", s.clock_suspect), ("disagreeing", s.disagreeing)):
            checked.add_metric([name], n)
        yield checked
        phase = CounterMetricFamily("gpuguard_worker_phase_cpu_seconds", "CPU spent per phase", labels=["phase"])
        for name, secs in (("decode", s.decode_cpu_s), ("load", s.load_cpu_s), ("detect", s.detect_cpu_s)):
            phase.add_metric([name], secs)
        yield phase


def worker_registry(worker) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerMetrics(worker))
    add_process_series(registry, "gpuguard_worker")
    return registry

"""The alert book: every alert detection raised, merged by id (one alert per rule, host and process), bounded,
and handed to the publisher (store + outputs) on each change. Detection and agent confirmations write here."""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict

from collector.outputs import AlertPublisher
from gpuguard.v1 import events_pb2 as pb
from gpuguard.v1 import policy_pb2 as ppb

log = logging.getLogger(__name__)

MAX_EVIDENCE = 100
MAX_ALERTS = 20_000


def make_alert(host: str, ev: pb.Event, rule_id: str, description: str, severity: str, action: str, state,
               outcome: str, matched: dict, seqs: list[int]) -> ppb.Alert:
    aid = hashlib.sha1(f"{host}|{rule_id}|{ev.process.key}".encode()).hexdigest()[:16]
    a = ppb.Alert(id=aid, rule_id=rule_id, description=description, severity=severity, action=action,
                  state=state, outcome=outcome, host_id=host, evidence_seqs=seqs, ts_ns=ev.ts_ns or time.time_ns())
    a.job.CopyFrom(ev.job)
    a.process.CopyFrom(ev.process)
    a.matched.update({k: str(v) for k, v in matched.items()})
    return a


class AlertBook:
    def __init__(self, publisher: AlertPublisher) -> None:
        self.publisher = publisher
        self.alerts: OrderedDict[str, ppb.Alert] = OrderedDict()

    def upsert(self, alert: ppb.Alert, detail: str = "") -> None:
        """Merge into the alert with the same id. A confirmation from the agent is never downgraded by a later
        expectation; a second confirmation appends what else was done (e.g. dropped, then killed)."""
        old = self.alerts.get(alert.id)
        if old is not None:
            merged = ppb.Alert()
            merged.CopyFrom(old)
            room = MAX_EVIDENCE - len(old.evidence_seqs)     # bounded: a storm of hits is one alert
            if room > 0:
                seen = set(old.evidence_seqs)
                merged.evidence_seqs.extend([s for s in alert.evidence_seqs if s not in seen][:room])
            merged.matched.update({k: v for k, v in alert.matched.items() if k not in old.matched})
            confirmed = ppb.ALERT_CONFIRMED
            if alert.state == confirmed and old.state == confirmed:
                if detail and detail not in old.outcome:
                    merged.outcome = f"{old.outcome}; then {detail}"
            elif alert.state == confirmed or old.state != confirmed:
                merged.outcome, merged.state = alert.outcome, alert.state
            merged.ts_ns = min(old.ts_ns, alert.ts_ns)
            alert = merged
        else:
            log.warning("ALERT [%s] %s job %s:%s host %s pid %d %s: %s -> %s", alert.severity, alert.rule_id,
                        alert.job.kind, alert.job.id, alert.host_id, alert.process.pid, alert.process.comm,
                        dict(alert.matched), alert.outcome)
        self.alerts[alert.id] = alert
        self.alerts.move_to_end(alert.id)
        while len(self.alerts) > MAX_ALERTS:
            self.alerts.popitem(last=False)
        self.publisher.record(alert)

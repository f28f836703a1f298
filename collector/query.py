"""The Query service: incident-response questions answered from the store.

Each method receives the caller's identity (checked against ``QUERY_ROLES``
by collector/auth.py before it runs). Changes to what is enforced are written
to the append-only audit log, refused ones included.
"""

from __future__ import annotations

import asyncio

from collector.store.base import Store, TimelineFilter
from collector.timeline import build_timeline, build_tree
from gpuguard.credentials import Identity
from gpuguard.v1 import collector_pb2 as cpb

MAX_POLICY_BYTES = 1 << 20

QUERY_ROLES = {
    "ListJobs": "reader", "Timeline": "reader", "ProcessTree": "reader", "ListAlerts": "reader",
    "GetPolicy": "reader", "ListHosts": "reader", "ListAudit": "reader", "ApplyPolicy": "admin",
}


class QueryService:
    def __init__(self, store: Store, policy=None, health=None) -> None:
        self.store = store
        self.policy = policy     # collector.policy.PolicyManager, when detection is on
        self.health = health     # collector.health.HostHealth

    async def ListJobs(self, request, context, who: Identity):  # noqa: N802
        jobs = await asyncio.to_thread(self.store.jobs, request.since_ns, request.limit or 1000)
        reply = cpb.ListJobsReply()
        for j in jobs:
            s = reply.jobs.add(hosts=j["hosts"], first_ts_ns=j["first_ts_ns"], last_ts_ns=j["last_ts_ns"],
                               events=j["events"], alerts=j["alerts"])
            s.job.kind, s.job.id = j["job_kind"], j["job_id"]
        return reply

    async def Timeline(self, request, context, who: Identity):  # noqa: N802
        flt = TimelineFilter(job_id=request.job_id, host=request.host, since_ns=request.since_ns,
                             until_ns=request.until_ns, kinds=tuple(request.kinds)[:16],
                             limit=min(request.limit or 10_000, 100_000))
        return await asyncio.to_thread(build_timeline, self.store, flt, request.subtree_key)

    async def ProcessTree(self, request, context, who: Identity):  # noqa: N802
        return await asyncio.to_thread(build_tree, self.store, request.job_id, request.host)

    async def ListAlerts(self, request, context, who: Identity):  # noqa: N802
        alerts = await asyncio.to_thread(self.store.alerts, request.job_id, request.since_ns,
                                         min(request.limit or 1000, 100_000))
        return cpb.AlertsReply(alerts=alerts)

    async def GetPolicy(self, request, context, who: Identity):  # noqa: N802
        if self.policy is None:
            return cpb.PolicyReply()
        return await asyncio.to_thread(self.policy.describe)

    async def ApplyPolicy(self, request, context, who: Identity):  # noqa: N802
        peer = context.peer() if context else ""
        size = len(request.rules_yaml.encode())
        if self.policy is None:
            reply = cpb.ApplyPolicyReply(error="this collector runs without detection")
        elif size > MAX_POLICY_BYTES:
            reply = cpb.ApplyPolicyReply(error=f"rules file of {size} bytes exceeds {MAX_POLICY_BYTES}")
        else:
            reply = await asyncio.to_thread(self.policy.apply_yaml, request.rules_yaml)
        detail = (f"rejected: {reply.error[:500]}" if reply.error else
                  f"version {reply.policy.version}, {len(reply.policy.rules)} rules, {size} bytes")
        await asyncio.to_thread(self.store.add_audit, who.name, who.role, peer, "policy.apply", detail,
                                not reply.error)
        return reply

    async def ListHosts(self, request, context, who: Identity):  # noqa: N802
        current = self.policy.version if self.policy else 0
        return await asyncio.to_thread(self.health.describe, current) if self.health else cpb.HostsReply()

    async def ListAudit(self, request, context, who: Identity):  # noqa: N802
        rows = await asyncio.to_thread(self.store.audit, request.since_ns, min(request.limit or 1000, 100_000))
        return cpb.AuditReply(entries=[cpb.AuditEntry(**r) for r in rows])

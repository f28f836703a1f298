"""The Query service: incident-response questions answered from the store."""

from __future__ import annotations

import asyncio

from collector.store.base import Store, TimelineFilter
from collector.timeline import build_timeline, build_tree
from gpuguard.v1 import collector_pb2 as cpb
from gpuguard.v1 import collector_pb2_grpc as cgrpc


class QueryService(cgrpc.QueryServicer):
    def __init__(self, store: Store, policy=None) -> None:
        self.store = store
        self.policy = policy     # collector.policy.PolicyManager, when detection is on

    async def ListJobs(self, request, context):  # noqa: N802
        jobs = await asyncio.to_thread(self.store.jobs, request.since_ns, request.limit or 1000)
        reply = cpb.ListJobsReply()
        for j in jobs:
            s = reply.jobs.add(hosts=j["hosts"], first_ts_ns=j["first_ts_ns"], last_ts_ns=j["last_ts_ns"],
                               events=j["events"], alerts=j["alerts"])
            s.job.kind, s.job.id = j["job_kind"], j["job_id"]
        return reply

    async def Timeline(self, request, context):  # noqa: N802
        flt = TimelineFilter(job_id=request.job_id, host=request.host, since_ns=request.since_ns,
                             until_ns=request.until_ns, kinds=tuple(request.kinds), limit=request.limit or 10_000)
        return await asyncio.to_thread(build_timeline, self.store, flt, request.subtree_key)

    async def ProcessTree(self, request, context):  # noqa: N802
        return await asyncio.to_thread(build_tree, self.store, request.job_id, request.host)

    async def ListAlerts(self, request, context):  # noqa: N802
        alerts = await asyncio.to_thread(self.store.alerts, request.job_id, request.since_ns, request.limit or 1000)
        return cpb.AlertsReply(alerts=alerts)

    async def GetPolicy(self, request, context):  # noqa: N802
        if self.policy is None:
            return cpb.PolicyReply()
        return await asyncio.to_thread(self.policy.describe)

    async def ApplyPolicy(self, request, context):  # noqa: N802
        if self.policy is None:
            return cpb.ApplyPolicyReply(error="this collector runs without detection")
        return await asyncio.to_thread(self.policy.apply_yaml, request.rules_yaml)

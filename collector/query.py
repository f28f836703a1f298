"""The Query service: incident-response questions answered from the store.

Each method receives the caller's identity (checked against ``QUERY_ROLES``
by collector/auth.py before it runs). Changes to what is enforced are written
to the append-only audit log, refused ones included.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections import Counter

from collector.follow import Follower, items
from collector.paging import BadCursor, page, page_events, parse_cursor, reply_budget
from collector.store.base import Store, TimelineFilter
from collector.timeline import build_timeline, build_tree
from gpuguard.credentials import Identity
from gpuguard.v1 import collector_pb2 as cpb

MAX_POLICY_BYTES = 1 << 20

QUERY_ROLES = {
    "ListJobs": "reader", "Timeline": "reader", "ProcessTree": "reader", "ListAlerts": "reader",
    "GetPolicy": "reader", "ListHosts": "reader", "ListAudit": "reader", "ApplyPolicy": "admin", "ForgetHost": "admin",
    "Connections": "reader", "Executions": "reader", "GpuProcesses": "reader", "Follow": "reader",
}
MAX_ROWS = 100_000


class BadRequest(ValueError):
    """A query the store cannot answer as asked (INVALID_ARGUMENT)."""


async def refuse(context, message: str):
    import grpc  # noqa: PLC0415

    if context is None:
        raise BadRequest(message)
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)


def fleet_reply(rows, next_cursor: str) -> cpb.FleetReply:
    reply = cpb.FleetReply(truncated=bool(next_cursor), next_cursor=next_cursor)
    for r in rows:
        reply.events.add(host_id=r.host_id, event=r.event)
    return reply


def alerts_page(fetch, limit: int, budget: int, cursor: str) -> cpb.AlertsReply:
    """Alerts in (ts_ns, id) order, at most limit and about budget bytes; next_cursor "ts:id" to continue."""
    after = None
    if cursor:
        ts, _, alert_id = cursor.partition(":")
        try:
            after = (int(ts), alert_id)
        except ValueError as exc:
            raise BadCursor(f"not a cursor of this collector: {cursor[:80]!r}") from exc
    alerts, last = page(fetch, limit, budget, after, lambda a: (a.ts_ns, a.id), lambda a: a.ByteSize() + 8)
    reply = cpb.AlertsReply(alerts=alerts)
    if last:
        reply.truncated, reply.next_cursor = True, f"{last[0]}:{last[1]}"
    return reply


JOB_PREFIX = re.compile(r"([a-z][a-z0-9_-]{0,31}):(.+)")


def job_id_of(text: str) -> str:
    """One job name everywhere: alerts, the job list and the page show ``kind:id`` (slurm:4242), queries take it
    as well as the plain id. Job ids themselves (Slurm ids, pod UIDs, container ids, units) hold no colon."""
    m = JOB_PREFIX.fullmatch(text)
    return m.group(2) if m else text


class QueryService:
    def __init__(self, store: Store, policy=None, health=None, follow=None, revalidator=None) -> None:
        self.store = store
        self.policy = policy     # collector.policy.PolicyManager, when detection is on
        self.health = health     # collector.health.HostHealth
        self.follow = follow     # collector.follow.FollowHub: server push
        self.revalidator = revalidator or (lambda _context: lambda: True)

    async def ListJobs(self, request, context, who: Identity):  # noqa: N802
        jobs = await asyncio.to_thread(self.store.jobs, request.since_ns, request.limit or 1000)
        reply = cpb.ListJobsReply()
        for j in jobs:
            s = reply.jobs.add(hosts=j["hosts"], first_ts_ns=j["first_ts_ns"], last_ts_ns=j["last_ts_ns"],
                               events=j["events"], alerts=j["alerts"])
            s.job.kind, s.job.id = j["job_kind"], j["job_id"]
        return reply

    async def Timeline(self, request, context, who: Identity):  # noqa: N802
        flt = TimelineFilter(job_id=job_id_of(request.job_id), host=request.host, since_ns=request.since_ns,
                             until_ns=request.until_ns, kinds=tuple(request.kinds)[:16],
                             limit=min(request.limit or 10_000, 100_000))
        try:
            return await asyncio.to_thread(build_timeline, self.store, flt, request.subtree_key, request.cursor,
                                           reply_budget(request.max_bytes))
        except BadCursor as exc:
            return await refuse(context, str(exc))

    async def ProcessTree(self, request, context, who: Identity):  # noqa: N802
        return await asyncio.to_thread(build_tree, self.store, job_id_of(request.job_id), request.host)

    async def ListAlerts(self, request, context, who: Identity):  # noqa: N802
        job, r = job_id_of(request.job_id), request

        def fetch(after, n):
            return self.store.alerts(job, r.since_ns, n, r.rule_id, r.host, r.until_ns, after)
        try:
            return await asyncio.to_thread(alerts_page, fetch, min(r.limit or 1000, MAX_ROWS),
                                           reply_budget(r.max_bytes), r.cursor)
        except BadCursor as exc:
            return await refuse(context, str(exc))

    # -- fleet questions -------------------------------------------------------------------------
    async def Connections(self, request, context, who: Identity):  # noqa: N802
        """Which jobs and hosts reached an address or network, and when."""
        try:
            ipaddress.ip_network(request.cidr, strict=False)
        except ValueError:
            return await refuse(context, f"not an address or CIDR: {request.cidr[:100]!r}")
        r = request

        def fetch(after, n):
            return self.store.connections(r.cidr, r.since_ns, r.until_ns, n, after)
        return await self._fleet_page(fetch, r, context)

    async def _fleet_page(self, fetch, request, context) -> cpb.FleetReply:
        try:
            after = parse_cursor(request.cursor)
        except BadCursor as exc:
            return await refuse(context, str(exc))
        rows, next_cursor = await asyncio.to_thread(page_events, fetch, min(request.limit or 10_000, MAX_ROWS),
                                                    reply_budget(request.max_bytes), after)
        return fleet_reply(rows, next_cursor)

    async def Executions(self, request, context, who: Identity):  # noqa: N802
        """Which hosts (and jobs) ran an executable, by sha256, path or name."""
        given = [x for x in (request.sha256, request.exe, request.name) if x]
        if len(given) != 1:
            return await refuse(context, "give exactly one of sha256, exe (a path) or name")
        if request.sha256 and not re.fullmatch(r"[0-9a-fA-F]{64}", request.sha256):
            return await refuse(context, "sha256 must be 64 hex digits")
        r = request

        def fetch(after, n):
            return self.store.executions(r.sha256, r.exe, r.name, r.since_ns, r.until_ns, n, after)
        return await self._fleet_page(fetch, r, context)

    async def GpuProcesses(self, request, context, who: Identity):  # noqa: N802
        """The processes that opened a GPU in a job, and what else each of them did."""
        return await asyncio.to_thread(self._gpu_processes, job_id_of(request.job_id))

    def _gpu_processes(self, job_id: str) -> cpb.GpuProcessesReply:
        reply = cpb.GpuProcessesReply()
        for p in self.store.processes(job_id):
            if not p["used_gpu"]:
                continue
            item = reply.processes.add()
            item.process.CopyFrom(cpb.TreeNode(key=p["key"], parent_key=p["parent_key"] or "", host_id=p["host_id"],
                                               pid=p["pid"] or 0, comm=p["comm"] or "", exe=p["exe"] or "",
                                               argv=p["argv"], first_ts_ns=p["first_ts_ns"] or 0, used_gpu=True))
            flt = TimelineFilter(job_id=job_id, host=p["host_id"], process_keys=(p["key"],), limit=MAX_ROWS)
            kinds: Counter = Counter()
            dests: dict[tuple, list] = {}
            for row in self.store.timeline(flt):
                kind = row.event.WhichOneof("body")
                kinds[kind] += 1
                if kind == "connect":
                    c = row.event.connect
                    d = dests.setdefault((c.daddr, c.dport, c.proto), [0, 0])
                    d[0] += 1
                    d[1] = c.result
            item.events_by_kind.update(kinds)
            for (daddr, dport, proto), (count, last) in sorted(dests.items()):
                item.destinations.add(daddr=daddr, dport=dport, proto=proto, count=count, last_result=last)
        return reply

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
            reply = await asyncio.to_thread(self.policy.apply_yaml, request.rules_yaml, request.source)
        detail = (f"rejected: {reply.error[:500]}" if reply.error else
                  f"version {reply.policy.version}, {len(reply.policy.rules)} rules, {size} bytes")
        await asyncio.to_thread(self.store.add_audit, who.name, who.role, peer, "policy.apply", detail,
                                not reply.error)
        return reply

    async def ListHosts(self, request, context, who: Identity):  # noqa: N802
        current = self.policy.version if self.policy else 0
        return await asyncio.to_thread(self.health.describe, current) if self.health else cpb.HostsReply()

    async def ForgetHost(self, request, context, who: Identity):  # noqa: N802
        """A decommissioned host leaves `gpuguard hosts` (its events stay); refused while its agent is connected.
        If it comes back, it is known again from its first hello."""
        host = request.host_id[:256]
        error = ""
        if self.health is not None and self.health.connected(host):
            error = f"host {host!r} has a connected agent: stop it first"
        elif not await asyncio.to_thread(self.store.forget_agent, host):
            error = f"no such host {host!r}"
        elif self.health is not None:
            self.health.forget(host)
        peer = context.peer() if context else ""
        await asyncio.to_thread(self.store.add_audit, who.name, who.role, peer, "hosts.forget",
                                error or f"forgot host {host}", not error)
        return cpb.ForgetHostReply(forgotten=not error, error=error)

    async def Follow(self, request, context, who: Identity):  # noqa: N802
        """New events and alerts as they are stored, until the caller goes away or its credential is revoked."""
        import grpc  # noqa: PLC0415

        if self.follow is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this collector does not push")
        both = not request.alerts and not request.events
        follower = Follower(job_id=job_id_of(request.job_id), host=request.host[:256],
                            kinds=frozenset(request.kinds[:16]), alerts=request.alerts or both,
                            events=request.events or both)
        try:
            self.follow.subscribe(follower)
        except OverflowError as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        try:
            await context.write(cpb.FollowItem())            # subscribed: the caller may read the backlog now
            async for got in items(follower, self.revalidator(context), idle_s=0.5):
                if got is None:
                    continue
                kind, host, obj = got
                item = cpb.FollowItem(dropped=follower.dropped)
                if kind == "event":
                    item.event.host_id = host
                    item.event.event.CopyFrom(obj)
                else:
                    item.alert.CopyFrom(obj)
                await context.write(item)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "the credential was revoked")
        finally:
            self.follow.unsubscribe(follower)

    async def ListAudit(self, request, context, who: Identity):  # noqa: N802
        rows = await asyncio.to_thread(self.store.audit, request.since_ns, min(request.limit or 1000, 100_000))
        return cpb.AuditReply(entries=[cpb.AuditEntry(**r) for r in rows])

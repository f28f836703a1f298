"""`gpuguard egress suggest`: the egress policy by name that would have allowed what jobs really reached.

Learning mode for the per-job egress allowlist (rules with ``dns_name_not_in`` / ``daddr_not_in``, enforced in
the kernel): run the jobs in monitor mode for a while, then print a rule from the stored connects of one job kind
- every DNS zone they reached by name, with counts, and the unnamed destinations outside the cluster that the
rule would block - for a human to review and `gpuguard policy apply`.
"""

from __future__ import annotations

import ipaddress
from collections import Counter, defaultdict

from collector.rules.context import base_domain

UNNAMED_V4_PREFIX, UNNAMED_V6_PREFIX = 24, 48


def _network_of(address: str) -> str:
    ip = ipaddress.ip_address(address)
    prefix = UNNAMED_V4_PREFIX if ip.version == 4 else UNNAMED_V6_PREFIX
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def _inside(address: str, networks: list) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in n for n in networks if n.version == ip.version)


def suggest(events, job_kind: str, cluster_networks: list[str], since_text: str) -> tuple[str, int]:
    """(YAML text, connects considered) from stored connect events (gpuguard.v1.Event) of one job kind."""
    networks = [ipaddress.ip_network(n, strict=False) for n in cluster_networks]
    zones: Counter = Counter()
    zone_jobs: dict[str, set] = defaultdict(set)
    unnamed: Counter = Counter()
    considered = 0
    for ev in events:
        if ev.WhichOneof("body") != "connect" or ev.job.kind != job_kind:
            continue
        c = ev.connect
        considered += 1
        if c.name:
            zone = base_domain(c.name.lower().rstrip(".").split("."))
            zones[zone] += 1
            zone_jobs[zone].add(ev.job.id)
        elif not _inside(c.daddr, networks):
            try:
                unnamed[_network_of(c.daddr)] += 1
            except ValueError:
                continue
    lines = [f"# gpuguard egress suggest: {considered} connects of {job_kind} jobs since {since_text}.",
             "# Review before `gpuguard policy apply FILE`: every name below was reached; anything else will get",
             "# EPERM in the kernel (enforce mode) or an alert (monitor mode).",
             "rules:",
             f"  - id: egress-{job_kind}",
             f"    description: {job_kind} jobs may reach the cluster's networks and these names only "
             "(suggested from what they reached)",
             "    severity: high",
             "    event: connect",
             "    match:",
             "      daddr_not_in: $cluster_networks",
             "      dns_name_not_in:"]
    if zones:
        for zone, count in sorted(zones.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"        - {zone}    # {count} connects from {len(zone_jobs[zone])} job(s)")
    else:
        lines.append("        - localhost.invalid    # no named destination was reached")
    lines += [f"    scope: {{job_kinds: [{job_kind}]}}", "    action: block"]
    if unnamed:
        lines.append("# Reached without any DNS name (hard-coded addresses), outside the cluster: these would be")
        lines.append("# blocked; add them to daddr_not_in only if they are yours:")
        lines += [f"#   {net}: {count} connects" for net, count in unnamed.most_common(50)]
    return "\n".join(lines) + "\n", considered

"""IP address text as the agent and the collector both read it: one parse, v4-mapped IPv6 taken as the IPv4
address it carries (``::ffff:10.0.0.5`` is 10.0.0.5), so a rule or a check never sees one host as two."""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def unmapped(address: str) -> IPAddress | None:
    """The address, IPv4 for a v4-mapped IPv6 one; None if it is not an address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    return ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped else ip

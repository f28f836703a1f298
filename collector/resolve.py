"""Pool domains -> addresses, so a connect to a known pool is recognised by its destination IP.

Off by default: resolving public names is network traffic the operator must opt into
(``resolve_domains = true`` / ``--resolve-domains``). Names are resolved in a background
thread and refreshed periodically; a lookup on the event path is one dict read.
Limits: exact names only (no wildcard subdomains), and addresses shared with other services
(CDNs) would match too — a hit is evidence, not a verdict.
"""

from __future__ import annotations

import logging
import socket
import threading

log = logging.getLogger(__name__)


class DomainResolver:
    def __init__(self, enabled: bool = False, refresh_s: float = 600.0) -> None:
        self.enabled = enabled
        self.refresh_s = refresh_s
        self.names: set[str] = set()
        self._by_addr: dict[str, str] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, names: set[str]) -> None:
        """The names to keep resolved (from the rules); resolution starts or refreshes now."""
        self.names = {n.lower().rstrip(".") for n in names}
        if not self.enabled or not self.names:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="pool-dns", daemon=True)
            self._thread.start()
        self._wake.set()

    def resolve_now(self) -> None:
        by_addr: dict[str, str] = {}
        for name in sorted(self.names):
            try:
                infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
            except OSError as exc:
                log.debug("cannot resolve %s: %s", name, exc)
                continue
            for info in infos:
                by_addr[info[4][0]] = name
        self._by_addr = by_addr
        log.info("pool domains: %d of %d names resolved to %d addresses", len(set(by_addr.values())),
                 len(self.names), len(by_addr))

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.refresh_s)
            self._wake.clear()
            self.resolve_now()

    def name_of(self, addr: str) -> str | None:
        return self._by_addr.get(addr)

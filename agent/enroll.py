"""A new node's own credential, from a short-lived join token (``gpuguard credentials join-token``).

No node is ever given another node's token: the deployment carries one join token (a Secret, a file baked into
an image) that can do nothing but enroll; each agent exchanges it once for an agent credential bound to its own
host id (Collector.Enroll) and keeps that in its state directory (0600). A host already enrolled is refused by
the collector, so a join token cannot take over a node that has an identity.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from agent.identity import HostIdentity
from gpuguard.credentials import CredentialStore, bearer, find_token

log = logging.getLogger(__name__)

ENROLLED_TOKEN = "agent.token"      # in the agent's state dir


class Credential:
    """The token the shipper presents, re-read at every connect: the explicit --token-file, else this node's
    enrolled one, else the local default; enrolling first when there is none and a join token is given."""

    def __init__(self, identity: HostIdentity, target: str, token_file: str = "", auth_dir: str = "",
                 state_dir: str = "", join_token_file: str = "", tls: tuple[str, str, str] = ("", "", "")) -> None:
        self.identity = identity
        self.target = target
        self.token_file = token_file
        self.auth_dir = auth_dir or None
        self.enrolled = Path(state_dir) / ENROLLED_TOKEN if state_dir else None
        self.join_token_file = join_token_file
        self.tls = tls
        self.last_error = ""

    def __call__(self) -> str:
        if self.token_file:
            return find_token(self.token_file)
        if self.enrolled is not None and self.enrolled.exists():
            return self.enrolled.read_text().strip()
        if not self.join_token_file:
            return find_token("", "agent", self.identity.host_id, self.auth_dir)
        try:                                     # enrolling nodes take no shared agent.token: only their own
            return CredentialStore(self.auth_dir).token_path(f"agent-{self.identity.host_id}").read_text().strip()
        except OSError:
            return self.enroll()

    def enroll(self) -> str:
        """Exchange the join token for this node's credential; "" (and why, logged) when that fails now."""
        import grpc  # noqa: PLC0415

        from gpuguard.tls import open_channel  # noqa: PLC0415
        from gpuguard.v1 import collector_pb2 as cpb  # noqa: PLC0415
        from gpuguard.v1 import collector_pb2_grpc as cgrpc  # noqa: PLC0415
        from gpuguard.v1 import events_pb2 as pb  # noqa: PLC0415

        try:
            join = Path(self.join_token_file).read_text().strip()
        except OSError as exc:
            self._failed(f"cannot read join token file {self.join_token_file}: {exc.strerror}")
            return ""
        host = pb.Host(host_id=self.identity.host_id, hostname=self.identity.hostname, boot_id=self.identity.boot_id)
        reply = None
        for target in self.target.split(","):            # a fail-over list: any collector enrolls
            try:
                with open_channel(target.strip(), *self.tls) as channel:
                    reply = cgrpc.CollectorStub(channel).Enroll(cpb.EnrollRequest(host=host), timeout=10,
                                                                metadata=bearer(join))
                break
            except grpc.RpcError as exc:
                self._failed(f"enrollment refused by {target}: {exc.code().name}: {exc.details()}")
        if reply is None:
            return ""
        if self.enrolled is None:
            log.warning("enrolled as %s, but no state dir to keep the credential in: it lasts this run only",
                        reply.name)
            return reply.token
        self.enrolled.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.enrolled.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(reply.token + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.enrolled)
        log.info("enrolled with the collector as %s; credential kept in %s", reply.name, self.enrolled)
        return reply.token

    def _failed(self, why: str) -> None:
        if why != self.last_error:
            log.error("%s (retrying at each reconnect)", why)
            self.last_error = why

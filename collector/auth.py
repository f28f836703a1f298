"""Who is calling, and may they? Every RPC passes through here before it touches the core.

Identities come from a bearer token (``authorization: Bearer <token>`` metadata,
checked against the hashed identities file) or, with mutual TLS, from the
client certificate: a URI SAN ``gpuguard://<role>/<name>`` (for agents the
name is the host id). A certificate without such a name has no role.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable

import grpc

from gpuguard.credentials import ROLES, CredentialStore, Identity, TokenVerifier

log = logging.getLogger(__name__)

URI_PREFIX = "gpuguard://"
STAMP_MAX_AGE_S = 0.1   # open streams see a revocation at most this much later than a stat() would
AUDITED_METHODS = {"ApplyPolicy": "policy.apply", "ForgetHost": "hosts.forget"}   # calls that change state


def metadata_token(metadata) -> str:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
    return ""


def certificate_identity(auth_context: dict) -> Identity | None:
    for raw in auth_context.get("peer_uri", ()):
        uri = raw.decode(errors="replace")
        if not uri.startswith(URI_PREFIX):
            continue
        role, _, name = uri[len(URI_PREFIX):].partition("/")
        if role in ROLES and name and "/" not in name:
            return Identity(name, role, name if role == "agent" else "", via="mtls")
    return None


class Authenticator:
    def __init__(self, credentials: CredentialStore, audit: Callable | None = None) -> None:
        self.verifier = TokenVerifier(credentials)
        self.audit = audit          # (who, role, peer, action, detail, ok) -> None: refused admin calls
        self._last_warn: dict[str, float] = {}

    def identify(self, context) -> Identity | None:
        token = metadata_token(context.invocation_metadata())
        if token:
            return self.verifier.verify(token)
        try:
            return certificate_identity(context.auth_context())
        except Exception:   # plaintext channels have no auth context worth reading
            return None

    def revalidator(self, context):
        """A check a long-lived stream runs before each message and twice a second: its bearer token is verified
        again whenever the credentials file changed since the last check (a stat() otherwise), so `gpuguard
        credentials revoke` (or a new role) ends a stream that is already open, even a silent one. Certificate
        identities are checked at connect only."""
        token = metadata_token(context.invocation_metadata())
        return self.token_revalidator(token) if token else lambda max_age_s=0.0: True

    def token_revalidator(self, token: str):
        """still_valid() for one bearer token (a gRPC stream's, or the page's push stream's)."""
        seen = [self.verifier.store.stamp()]

        first = self.verifier.verify(token)
        valid = [first is not None]

        def still_valid(max_age_s: float = 0.0) -> bool:
            """max_age_s: a periodic sweep over many streams may use a stat() that recent (STAMP_MAX_AGE_S);
            a message is checked against the file as it is now."""
            stamp = self.verifier.store.stamp(max_age_s=max_age_s)
            if stamp == seen[0] or not valid[0]:
                return valid[0]
            seen[0] = stamp
            now = self.verifier.verify(token)     # revoked, or re-issued with another role or host: over
            valid[0] = now is not None and first is not None and (now.role, now.host) == (first.role, first.host)
            return valid[0]
        return still_valid

    def warn_once(self, key: str, message: str, *args) -> bool:
        """Refusals are logged, at most once a minute per peer and reason (a scanner cannot flood the log)."""
        now = time.monotonic()
        if now - self._last_warn.get(key, -120) < 60:
            return False
        self._last_warn[key] = now
        if len(self._last_warn) > 10_000:
            self._last_warn.clear()
        log.warning(message, *args)
        return True

    async def record_refusal(self, who: Identity | None, peer: str, method: str, reason: str) -> None:
        if self.audit is not None:
            await asyncio.to_thread(self.audit, who.name if who else "?", who.role if who else "none", peer,
                                    AUDITED_METHODS.get(method, method), f"refused: {reason}", False)


def peer_of(context) -> str:
    try:
        return context.peer() or "?"
    except Exception:
        return "?"


def require(role: str, auth: Authenticator, method: Callable) -> Callable:
    """Wrap a unary grpc.aio handler: refuse unless the caller has ``role``; pass the identity on."""

    name = method.__name__
    audited = name in AUDITED_METHODS

    @functools.wraps(method)
    async def guarded(request, context):
        who = auth.identify(context)
        peer = peer_of(context)
        if who is None:
            logged = auth.warn_once(f"{peer}|unauth|{name}", "refused %s from %s: no valid credential", name, peer)
            if audited and logged:     # unauthenticated attempts: audited at most once a minute per peer
                await auth.record_refusal(None, peer, name, "no valid credential")
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "no valid credential: pass --token-file, or run as root on the collector's host")
        if not who.can(role):
            auth.warn_once(f"{who.name}|{name}", "refused %s for %s (role %s, needs %s)", name, who.name, who.role,
                           role)
            if audited:
                await auth.record_refusal(who, peer, name, f"role {who.role}, needs {role}")
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"identity {who.name!r} has role {who.role}; {name} needs {role}")
        return await method(request, context, who)

    return guarded

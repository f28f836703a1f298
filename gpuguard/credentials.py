"""Identities and their credentials: who may stream, read or change what is enforced.

Three roles: ``agent`` (streams events, for its own host only), ``reader``
(queries, timelines, alerts, hosts, audit) and ``admin`` (reader + policy
changes and kill orders).

The collector keeps only SHA-256 hashes of tokens, in ``AUTH_DIR/identities.json``
(root-only). Tokens themselves live in ``AUTH_DIR/credentials/<name>.token``
(mode 0600 in a 0700 directory) for the local tools to find without flags:
``admin.token`` for the CLI run as root, ``agent.token`` (or
``agent-<host>.token``) for the local agent. Tokens are 256 random bits, so a
plain hash is enough (nothing to brute-force).

``AUTH_DIR`` is ``/etc/gpuguard`` unless ``GPUGUARD_AUTH_DIR`` or a flag says
otherwise; it does not depend on where the store is.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROLES = ("agent", "reader", "admin")
JOIN_ROLE = "join"          # a short-lived token that can only enroll a new node (Collector.Enroll)
MAX_JOIN_TTL_S = 7 * 24 * 3600
DEFAULT_AUTH_DIR = "/etc/gpuguard"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")


class CredentialError(ValueError):
    """A bad role, name or credentials file; the message says which."""


def auth_dir(explicit: str | None = None) -> Path:
    return Path(explicit or os.environ.get("GPUGUARD_AUTH_DIR") or DEFAULT_AUTH_DIR)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Identity:
    """Who is calling: a name, a role, and for agents the one host they may speak for."""

    name: str
    role: str
    host: str = ""
    via: str = "token"          # token | mtls

    def can(self, role: str) -> bool:
        if role == "reader":
            return self.role in ("reader", "admin")
        return self.role == role


@dataclass
class IdentityRecord:
    name: str
    role: str
    host: str
    sha256: str
    created_ns: int
    expires_ns: int = 0         # join tokens: refused after this (0: never expires)

    def expired(self, now_ns: int | None = None) -> bool:
        return bool(self.expires_ns) and (now_ns or time.time_ns()) > self.expires_ns


def _check(role: str, name: str, host: str) -> None:
    if role not in ROLES:
        raise CredentialError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    if not NAME_RE.fullmatch(name):
        raise CredentialError(f"bad identity name {name!r}: letters, digits, . _ @ - (max 128)")
    if role == "agent" and not (host and NAME_RE.fullmatch(host)):
        raise CredentialError(f"an agent identity needs the host id it speaks for, got {host!r}")


class CredentialStore:
    """The hashed identities file plus the token files beside it (both root-only)."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.dir = auth_dir(str(directory) if directory else None)
        self.file = self.dir / "identities.json"
        self.tokens_dir = self.dir / "credentials"
        self._stamp_cache: tuple[float, int] | None = None     # (when read, mtime): stamp(max_age_s)

    # -- reading ---------------------------------------------------------------
    def load(self) -> list[IdentityRecord]:
        try:
            data = json.loads(self.file.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise CredentialError(f"{self.file}: unreadable identities file: {exc}") from exc
        try:
            return [IdentityRecord(**item) for item in data.get("identities", [])]
        except TypeError as exc:
            raise CredentialError(f"{self.file}: malformed identity entry: {exc}") from exc

    def stamp(self, max_age_s: float = 0.0) -> int:
        """The identities file's mtime; with max_age_s, a value read at most that long ago (open streams check
        their credential before every message and twice a second: thousands of stat() calls a second otherwise)."""
        now = time.monotonic()
        cached = self._stamp_cache
        if max_age_s and cached is not None and now - cached[0] < max_age_s:
            return cached[1]
        try:
            value = self.file.stat().st_mtime_ns
        except OSError:
            value = 0
        self._stamp_cache = (now, value)
        return value

    # -- writing ---------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        fd = os.open(self.dir / ".lock", os.O_WRONLY | os.O_CREAT, 0o600)
        self._own(self.dir / ".lock")
        with os.fdopen(fd, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _own(self, path: Path) -> None:
        """Files root writes here belong to the directory's owner: the collector may run as its own user (systemd
        DynamicUser, a pod's runAsUser) and must read (and on enrollment, write) what the root CLI wrote."""
        if os.geteuid() != 0:
            return
        owner = self.dir.stat()
        if owner.st_uid != 0:
            os.chown(path, owner.st_uid, owner.st_gid)

    def _save(self, records: list[IdentityRecord]) -> None:
        tmp = self.file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"identities": [asdict(r) for r in records]}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        self._own(tmp)
        os.replace(tmp, self.file)

    def token_path(self, name: str) -> Path:
        return self.tokens_dir / f"{name}.token"

    def issue(self, role: str, name: str, host: str = "", write_token_file: bool = True) -> str:
        """Create (or replace) an identity; return its new token (also written to credentials/NAME.token)."""
        _check(role, name, host)
        token = secrets.token_urlsafe(32)
        with self._locked():
            records = [r for r in self.load() if r.name != name]
            records.append(IdentityRecord(name, role, host if role == "agent" else "", token_hash(token),
                                          time.time_ns()))
            if write_token_file:
                self.tokens_dir.mkdir(mode=0o700, exist_ok=True)
                os.chmod(self.tokens_dir, 0o700)
                self._own(self.tokens_dir)
                path = self.token_path(name)
                fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(token + "\n")
                self._own(path.with_suffix(".tmp"))
                os.replace(path.with_suffix(".tmp"), path)
            self._save(records)
        return token

    def issue_agents(self, hosts: list[str]) -> dict[str, str]:
        """Agent credentials for many hosts at once (one lock, one write): host -> token. For labs and benches
        that simulate a fleet; tokens are returned, not written to files."""
        for host in hosts:
            _check("agent", f"agent-{host}", host)
        tokens = {host: secrets.token_urlsafe(32) for host in hosts}
        names = {f"agent-{h}" for h in hosts}
        now = time.time_ns()
        with self._locked():
            records = [r for r in self.load() if r.name not in names]
            records.extend(IdentityRecord(f"agent-{h}", "agent", h, token_hash(t), now) for h, t in tokens.items())
            self._save(records)
        return tokens

    def issue_join_token(self, ttl_s: float) -> tuple[str, str]:
        """A token that only enrolls nodes, for ttl_s: (its name, the token). Not written to a file: the operator
        hands it to the deployment (a Secret, a file on the image) and it expires on its own."""
        if not 0 < ttl_s <= MAX_JOIN_TTL_S:
            raise CredentialError(f"join token lifetime must be between 1 s and {MAX_JOIN_TTL_S // 86400} days")
        token = secrets.token_urlsafe(32)
        now = time.time_ns()
        name = f"join-{now // 10**9}-{secrets.token_hex(3)}"
        with self._locked():
            records = [r for r in self.load() if not r.expired(now)]      # expired join tokens go now
            records.append(IdentityRecord(name, JOIN_ROLE, "", token_hash(token), now, now + int(ttl_s * 1e9)))
            self._save(records)
        return name, token

    def enroll(self, join_token: str, host: str) -> tuple[str, str]:
        """A new node presents a live join token: it gets its own agent credential, bound to its host id, returned
        once and kept nowhere but as a hash. A host that already has one is refused (a join token must not let
        one node take over another's identity): revoke the old credential first."""
        if not (host and NAME_RE.fullmatch(host)):
            raise CredentialError(f"bad host id {host[:128]!r}")
        digest = token_hash(join_token)
        with self._locked():
            records = self.load()
            join = next((r for r in records if r.role == JOIN_ROLE and hmac.compare_digest(r.sha256, digest)), None)
            if join is None or join.expired():
                raise CredentialError("the join token is unknown or expired")
            if any(r.role == "agent" and r.host == host for r in records):
                raise CredentialError(f"host {host} is already enrolled: revoke its credential first "
                                      f"(gpuguard credentials revoke --name agent-{host})")
            token = secrets.token_urlsafe(32)
            name = f"agent-{host}"
            records = [r for r in records if r.name != name]
            records.append(IdentityRecord(name, "agent", host, token_hash(token), time.time_ns()))
            self._save(records)
        return name, token

    def revoke(self, name: str) -> bool:
        with self._locked():
            records = self.load()
            kept = [r for r in records if r.name != name]
            if len(kept) == len(records):
                return False
            self._save(kept)
            with contextlib.suppress(FileNotFoundError):
                self.token_path(name).unlink()
            return True

    def bootstrap(self, local_host: str) -> list[str]:
        """First start with no configuration: an admin credential and the local agent's. Returns what was made."""
        made = []
        records = self.load()
        if not any(r.role == "admin" for r in records):
            self.issue("admin", "admin")
            made.append("admin")
        if not any(r.role == "agent" and r.host == local_host for r in self.load()):
            self.issue("agent", "agent", local_host)
            made.append(f"agent (host {local_host})")
        return made


class TokenVerifier:
    """token -> Identity against the hashed file, reloaded when the file changes."""

    def __init__(self, store: CredentialStore) -> None:
        self.store = store
        self._stamp = -1
        self._by_hash: dict[str, IdentityRecord] = {}
        self.reload()

    def reload(self) -> None:
        stamp = self.store.stamp()
        if stamp == self._stamp:
            return
        self._by_hash = {r.sha256: r for r in self.store.load()}
        self._stamp = stamp

    def verify(self, token: str) -> Identity | None:
        if not token or len(token) > 512:
            return None
        self.reload()
        digest = token_hash(token)
        rec = self._by_hash.get(digest)          # by the token's hash: one lookup whatever the fleet's size
        if rec is None or not hmac.compare_digest(rec.sha256, digest):
            return None
        return None if rec.expired() else Identity(rec.name, rec.role, rec.host)


def bearer(token: str) -> list[tuple[str, str]] | None:
    """Call metadata presenting a token (collector/auth.py reads it); None when there is no token."""
    return [("authorization", f"Bearer {token}")] if token else None


def find_token(token_file: str = "", role: str = "admin", host: str = "", directory: str | None = None) -> str:
    """The token a local tool presents: the given file, else the local default for its role ("" if none)."""
    if token_file:
        try:
            return Path(token_file).read_text().strip()
        except OSError as exc:
            raise CredentialError(f"cannot read token file {token_file}: {exc.strerror}") from exc
    store = CredentialStore(directory)
    names = [f"agent-{host}", "agent"] if role == "agent" else [role]
    for name in names:
        try:
            return store.token_path(name).read_text().strip()
        except OSError:
            continue
    return ""

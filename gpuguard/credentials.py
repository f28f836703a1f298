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

    def stamp(self) -> int:
        try:
            return self.file.stat().st_mtime_ns
        except OSError:
            return 0

    # -- writing ---------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        fd = os.open(self.dir / ".lock", os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _save(self, records: list[IdentityRecord]) -> None:
        tmp = self.file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"identities": [asdict(r) for r in records]}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
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
                path = self.token_path(name)
                fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(token + "\n")
                os.replace(path.with_suffix(".tmp"), path)
            self._save(records)
        return token

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
        for known, rec in self._by_hash.items():
            if hmac.compare_digest(known, digest):
                return Identity(rec.name, rec.role, rec.host)
        return None


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

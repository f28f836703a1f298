"""TLS (and mutual TLS) for the agent stream and the queries; plaintext only when no files are given."""

from __future__ import annotations

from pathlib import Path

import grpc


def _read(path: str) -> bytes | None:
    return Path(path).read_bytes() if path else None


def server_credentials(cert: str, key: str, client_ca: str = "") -> grpc.ServerCredentials:
    """Server certificate; with client_ca, clients must present a certificate signed by it (mTLS)."""
    return grpc.ssl_server_credentials([(_read(key), _read(cert))], root_certificates=_read(client_ca),
                                       require_client_auth=bool(client_ca))


def open_channel(target: str, ca: str = "", cert: str = "", key: str = "",
                 options: list | None = None) -> grpc.Channel:
    """A TLS channel when a CA is given (client cert/key for mTLS), else plaintext."""
    if not ca:
        return grpc.insecure_channel(target, options=options)
    creds = grpc.ssl_channel_credentials(root_certificates=_read(ca), private_key=_read(key),
                                         certificate_chain=_read(cert))
    return grpc.secure_channel(target, creds, options=options)

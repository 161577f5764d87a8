"""TLS server credentials for TCP listeners, checked before the daemon starts.

gRPC's Python API offers two client-certificate modes: none requested, or required
and verified during the handshake. With `tls_client_ca` set, every TCP client must
present a certificate that CA signed and that has not expired; a missing, foreign or
expired certificate fails the handshake (the client sees UNAVAILABLE with the TLS
alert, e.g. CERTIFICATE_EXPIRED), before any RPC exists that could carry a status.
Without `tls_client_ca`, clients authenticate with bearer tokens.
"""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from rustaid.errors import InvalidArgument

if TYPE_CHECKING:
    from rustaid.config import Settings


def setting_path(settings: Settings, value: str) -> Path:
    """A path setting: absolute, or relative to the configuration folder."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else settings.config_dir / path


def token_path(settings: Settings) -> Path:
    return setting_path(settings, settings.token_file or "tokens.json")


def _read(settings: Settings, key: str) -> bytes:
    path = setting_path(settings, getattr(settings, key))
    try:
        return path.read_bytes()
    except OSError as e:
        raise InvalidArgument(f"{key} {path}: {e.strerror or e}", field=key) from e


def server_credentials(settings: Settings) -> grpc.ServerCredentials:
    """The TLS credentials of the TCP listeners (certificate chain, key, client CA)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    key_path = setting_path(settings, settings.tls_key)
    cert_pem, key_pem = _read(settings, "tls_cert"), _read(settings, "tls_key")
    mode = stat.S_IMODE(key_path.stat().st_mode)
    if mode & 0o007:
        raise InvalidArgument(
            f"tls_key {key_path} is accessible to every user (mode {mode:04o}): "
            f"chmod 600 {key_path}",
            field="tls_key",
        )
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as e:
        raise InvalidArgument(
            f"tls_cert {setting_path(settings, settings.tls_cert)}: not a PEM certificate ({e})",
            field="tls_cert",
        ) from e
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise InvalidArgument(
            f"tls_key {key_path}: not an unencrypted PEM private key ({e})", field="tls_key"
        ) from e
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*raw) != chain[0].public_key().public_bytes(*raw):
        raise InvalidArgument(
            f"tls_key {key_path} does not belong to the certificate in tls_cert",
            field="tls_key",
        )
    expires = chain[0].not_valid_after_utc
    if expires <= datetime.now(UTC):
        raise InvalidArgument(
            f"tls_cert {setting_path(settings, settings.tls_cert)} expired on "
            f"{expires:%Y-%m-%d %H:%M} UTC: renew it",
            field="tls_cert",
        )
    ca_pem: bytes | None = None
    if settings.tls_client_ca:
        ca_pem = _read(settings, "tls_client_ca")
        try:
            x509.load_pem_x509_certificates(ca_pem)
        except ValueError as e:
            raise InvalidArgument(
                f"tls_client_ca {setting_path(settings, settings.tls_client_ca)}: not a PEM "
                f"certificate ({e})",
                field="tls_client_ca",
            ) from e
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)], root_certificates=ca_pem, require_client_auth=ca_pem is not None
    )

"""Signed release metadata: the format, its validation and its signatures.

A release repository is a folder served by any static HTTP server or CDN::

    metadata.json                       signed release metadata (what devices fetch)
    root/1.json, root/2.json, ...       signed key rotations (optional)
    artifacts/<id>/<version>/<file>     the artifacts

Both metadata.json and root/N.json are *signed documents*::

    {"signed": {...}, "signatures": [{"keyid": "<64 hex>", "sig": "<128 hex>"}]}

A signature is ed25519 over the canonical JSON of "signed" (keys sorted, no spaces,
UTF-8; floats are not allowed anywhere in "signed"). A key's id is the SHA-256 of its
32 raw public bytes, in hex. A document is accepted when at least `threshold`
*distinct trusted* keys signed it.

Release metadata ("_type": "release") has a `version` that never goes down on a device
and an `expires` time after which it is refused (TUF's rollback and freeze attacks),
and lists, per channel, artifacts with id, kind, version, size, SHA-256, URL, minimum
daemon version and staged-rollout percentage. See docs/updates.md.

`cryptography` is imported on first use only (not at daemon start-up).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from rustaid.errors import InvalidArgument, PreconditionFailed

SPEC_VERSION = 1
KEY_PREFIX = "ed25519:"
MAX_SIGNATURES = 64
MAX_CHANNELS = 64
MAX_ARTIFACTS_PER_CHANNEL = 1024
MAX_ARTIFACT_SIZE = 1 << 40  # 1 TiB: a sanity bound; devices set a lower cap

# Artifact ids are file names on the device (models/<id>.gguf, plugins/<id>.py):
# lower-case, no path separators, no leading dot.
ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
CHANNEL_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,31}$")
VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
HEX128 = re.compile(r"^[0-9a-f]{128}$")


class ArtifactKind(StrEnum):
    MODEL = "model"
    PLUGIN = "plugin"


# Where each kind lands on the device and the suffix of its file.
SUFFIX = {ArtifactKind.MODEL: ".gguf", ArtifactKind.PLUGIN: ".py"}


class MetadataRejected(PreconditionFailed):
    """Metadata (or an artifact) failed verification; `reason` says which check."""


def _malformed(what: str, problem: str) -> MetadataRejected:
    return MetadataRejected(f"{what} is malformed: {problem}", reason="METADATA_MALFORMED")


# ---------------------------------------------------------------------------- keys


def key_id(public: bytes) -> str:
    return hashlib.sha256(public).hexdigest()


def parse_public_key(text: str) -> bytes:
    """`ed25519:<64 hex>` -> the 32 raw bytes; InvalidArgument says what is wrong."""
    value = text.strip()
    if not value.startswith(KEY_PREFIX):
        raise InvalidArgument(
            f"public key {value[:24]!r}... must look like 'ed25519:<64 hex digits>'",
            field="trusted_keys",
        )
    hexpart = value.removeprefix(KEY_PREFIX).lower()
    if not HEX64.match(hexpart):
        raise InvalidArgument(
            f"public key {value[:24]!r}... must have 64 hex digits after 'ed25519:'",
            field="trusted_keys",
        )
    return bytes.fromhex(hexpart)


def format_public_key(public: bytes) -> str:
    return KEY_PREFIX + public.hex()


@dataclass(frozen=True)
class Trust:
    """Keys a device (or `release verify`) trusts: the configured ones (version 0) or
    the newest verified root/N.json."""

    version: int
    threshold: int
    keys: Mapping[str, bytes]  # keyid -> raw public key

    @classmethod
    def from_keys(cls, keys: Iterable[bytes], threshold: int, version: int = 0) -> Trust:
        by_id = {key_id(k): k for k in keys}
        if not by_id:
            raise InvalidArgument("at least one trusted key is needed", field="trusted_keys")
        if not 1 <= threshold <= len(by_id):
            raise InvalidArgument(
                f"threshold must be between 1 and the number of distinct trusted keys "
                f"({len(by_id)}), got {threshold}",
                field="threshold",
            )
        return cls(version=version, threshold=threshold, keys=by_id)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps([self.threshold, sorted(self.keys)]).encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "threshold": self.threshold,
            "keys": [format_public_key(k) for k in self.keys.values()],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Trust:
        return cls.from_keys(
            [parse_public_key(k) for k in data["keys"]],
            int(data["threshold"]),
            int(data["version"]),
        )


# ------------------------------------------------------------------ canonical JSON


def _check_text(text: str, where: str) -> None:
    # JSON can escape half of a UTF-16 surrogate pair ("\ud800"): not Unicode, so not UTF-8.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _malformed(
            where, "a string holds a lone surrogate escape (like \\ud800): not valid Unicode"
        ) from None


def _check_types(value: Any, where: str) -> None:
    if isinstance(value, float):
        raise _malformed(where, "floating-point numbers are not allowed in signed metadata")
    if isinstance(value, str):
        _check_text(value, where)
    if isinstance(value, dict):
        for k, v in value.items():
            _check_text(k, where)
            _check_types(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_types(v, f"{where}[{i}]")


def canonical_bytes(signed: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers."""
    _check_types(signed, "signed")
    return json.dumps(
        signed, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def sign(signed: Mapping[str, Any], private_key: Any) -> dict[str, str]:
    """A signature entry by an `Ed25519PrivateKey` over `signed`."""
    from cryptography.hazmat.primitives import serialization

    public = private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return {"keyid": key_id(public), "sig": private_key.sign(canonical_bytes(signed)).hex()}


@dataclass(frozen=True)
class SignedDocument:
    signed: dict[str, Any]
    signatures: tuple[tuple[str, str], ...]  # (keyid, sig hex)


def parse_document(raw: bytes | str, what: str) -> SignedDocument:
    """Parse the envelope of a signed document (not its content, not its signatures)."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as e:  # not UTF-8 or JSON, too deep, too long a number
        raise _malformed(what, f"not valid JSON ({e})") from e
    if not isinstance(doc, dict):
        raise _malformed(what, "the top level must be a JSON object")
    extra = set(doc) - {"signed", "signatures"}
    if extra:
        raise _malformed(what, f"unknown top-level field(s): {', '.join(sorted(extra))}")
    signed = doc.get("signed")
    if not isinstance(signed, dict):
        raise _malformed(what, "'signed' must be a JSON object")
    signatures = doc.get("signatures")
    if not isinstance(signatures, list):
        raise _malformed(what, "'signatures' must be a list")
    if len(signatures) > MAX_SIGNATURES:
        raise _malformed(what, f"more than {MAX_SIGNATURES} signatures")
    pairs = []
    for i, s in enumerate(signatures):
        if (
            not isinstance(s, dict)
            or set(s) != {"keyid", "sig"}
            or not isinstance(s["keyid"], str)
            or not isinstance(s["sig"], str)
            or not HEX64.match(s["keyid"])
            or not HEX128.match(s["sig"])
        ):
            raise _malformed(
                what, f"signatures[{i}] must be {{'keyid': <64 hex>, 'sig': <128 hex>}}"
            )
        pairs.append((s["keyid"], s["sig"]))
    _check_types(signed, "signed")
    return SignedDocument(signed=signed, signatures=tuple(pairs))


def document_bytes(signed: Mapping[str, Any], signatures: Iterable[Mapping[str, str]]) -> bytes:
    """How documents are written to disk (readable; signatures cover `signed` only)."""
    doc = {"signed": signed, "signatures": list(signatures)}
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def valid_signers(doc: SignedDocument, keys: Mapping[str, bytes]) -> set[str]:
    """Ids of the trusted keys whose signature over `doc.signed` verifies."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    message = canonical_bytes(doc.signed)
    good: set[str] = set()
    for keyid, sig in doc.signatures:
        public = keys.get(keyid)
        if public is None or keyid in good:
            continue
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(bytes.fromhex(sig), message)
        except InvalidSignature:
            continue
        good.add(keyid)
    return good


def verify_threshold(doc: SignedDocument, trust: Trust, what: str) -> None:
    """MetadataRejected unless `trust.threshold` distinct trusted keys signed `doc`."""
    good = valid_signers(doc, trust.keys)
    if len(good) >= trust.threshold:
        return
    unknown = sorted({k for k, _ in doc.signatures if k not in trust.keys})
    bad = sorted({k for k, _ in doc.signatures if k in trust.keys and k not in good})
    details = []
    if unknown:
        details.append(
            "signed by key(s) this device does not trust: " + ", ".join(k[:16] for k in unknown)
        )
    if bad:
        details.append(
            "signature(s) that do not match the content (tampered?) by key(s): "
            + ", ".join(k[:16] for k in bad)
        )
    if not doc.signatures:
        details.append("it has no signatures")
    raise MetadataRejected(
        f"{what} has {len(good)} valid signature(s) from trusted keys; "
        f"{trust.threshold} required" + (f" ({'; '.join(details)})" if details else ""),
        reason="METADATA_SIGNATURE_INVALID",
    )


# ------------------------------------------------------------------- field helpers


def _req(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise _malformed(where, f"missing field '{key}'")
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise _malformed(where, f"'{key}' must be {_type_name(kinds)}, got a boolean")
    if not isinstance(value, kinds):
        raise _malformed(where, f"'{key}' must be {_type_name(kinds)}, got {type(value).__name__}")
    return value


def _type_name(kinds: tuple[type, ...]) -> str:
    names = {
        int: "an integer",
        str: "a string",
        dict: "an object",
        list: "a list",
        bool: "true/false",
    }
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _no_extra(obj: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = set(obj) - allowed
    if extra:
        raise _malformed(where, f"unknown field(s): {', '.join(sorted(extra))}")


def parse_time(value: str, where: str) -> datetime:
    try:
        t = datetime.fromisoformat(value)
    except ValueError as e:
        raise _malformed(
            where, f"'{value}' is not an ISO 8601 time like 2030-01-31T00:00:00Z"
        ) from e
    if t.tzinfo is None:
        raise _malformed(where, f"time '{value}' needs a time zone (end it with Z for UTC)")
    return t.astimezone(UTC)


def format_time(t: datetime) -> str:
    return t.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def check_artifact_id(value: str, field_name: str = "id") -> str:
    if not ID_RE.match(value):
        raise InvalidArgument(
            f"artifact id {value!r} is not valid: use 1-64 lower-case letters, digits, "
            "'.', '_' or '-', starting with a letter or digit (no '/')",
            field=field_name,
        )
    return value


def check_channel(value: str, field_name: str = "channel") -> str:
    if not CHANNEL_RE.match(value):
        raise InvalidArgument(
            f"channel {value!r} is not valid: use 1-32 lower-case letters, digits, '.', '_' "
            "or '-', e.g. stable or beta",
            field=field_name,
        )
    return value


def check_version(value: str, field_name: str = "version") -> str:
    if not VERSION_RE.match(value):
        raise InvalidArgument(
            f"version {value!r} is not valid: use 1-64 letters, digits, '.', '+', '_' or '-' "
            "(e.g. 1.2.0)",
            field=field_name,
        )
    return value


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Order versions piece by piece: numbers numerically, words alphabetically (a number
    sorts before a word): 1.9 < 1.10 < 1.10a."""
    parts = re.split(r"[.+_-]", version)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts if p != "")


def check_url(url: str, where: str) -> str:
    if not url or len(url) > 2048 or any(c in url for c in "\\\x00\r\n\t "):
        raise _malformed(
            where, f"'url' {url[:80]!r} is empty, too long or has forbidden characters"
        )
    parts = urlsplit(url)
    if parts.scheme and parts.scheme not in ("http", "https"):
        raise _malformed(where, f"'url' scheme {parts.scheme!r} is not allowed (http, https)")
    if parts.scheme and not parts.netloc:
        raise _malformed(where, f"'url' {url!r} has no host")
    if not parts.scheme and (parts.netloc or url.startswith("/")):
        raise _malformed(where, f"'url' {url!r} must be absolute (http/https) or relative")
    if ".." in parts.path.split("/"):
        raise _malformed(where, f"'url' {url!r} has a '..' path segment")
    return url


# ---------------------------------------------------------------------- artifacts


@dataclass(frozen=True)
class Artifact:
    id: str
    kind: ArtifactKind
    version: str
    size: int
    sha256: str
    url: str
    min_daemon_version: str = ""
    rollout: int = 100  # percent of devices, 0..100

    @property
    def filename(self) -> str:
        return self.id + SUFFIX[self.kind]

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind.value,
            "version": self.version,
            "size": self.size,
            "sha256": self.sha256,
            "url": self.url,
            "rollout": self.rollout,
        }
        if self.min_daemon_version:
            data["min_daemon_version"] = self.min_daemon_version
        return data


_ARTIFACT_FIELDS = {
    "id",
    "kind",
    "version",
    "size",
    "sha256",
    "url",
    "min_daemon_version",
    "rollout",
}


def parse_artifact(obj: Any, where: str) -> Artifact:
    if not isinstance(obj, dict):
        raise _malformed(where, "must be an object")
    _no_extra(obj, _ARTIFACT_FIELDS, where)
    artifact_id = _req(obj, "id", str, where)
    if not ID_RE.match(artifact_id):
        raise _malformed(
            where,
            f"artifact id {artifact_id[:80]!r} is not a plain name (1-64 of a-z 0-9 . _ -, "
            "no '/', no leading dot)",
        )
    kind = _req(obj, "kind", str, where)
    if kind not in {k.value for k in ArtifactKind}:
        raise _malformed(where, f"'kind' must be 'model' or 'plugin', got {kind[:40]!r}")
    version = _req(obj, "version", str, where)
    if not VERSION_RE.match(version):
        raise _malformed(where, f"'version' {version[:80]!r} is not a valid version")
    size = _req(obj, "size", int, where)
    if not 0 < size <= MAX_ARTIFACT_SIZE:
        raise _malformed(where, f"'size' must be between 1 and {MAX_ARTIFACT_SIZE}, got {size}")
    digest = _req(obj, "sha256", str, where)
    if not HEX64.match(digest):
        raise _malformed(where, "'sha256' must be 64 lower-case hex digits")
    url = check_url(_req(obj, "url", str, where), where)
    min_version = obj.get("min_daemon_version", "")
    if not isinstance(min_version, str) or (min_version and not VERSION_RE.match(min_version)):
        raise _malformed(where, "'min_daemon_version' must be a version string")
    rollout = obj.get("rollout", 100)
    if isinstance(rollout, bool) or not isinstance(rollout, int) or not 0 <= rollout <= 100:
        raise _malformed(where, "'rollout' must be an integer percentage from 0 to 100")
    return Artifact(
        id=artifact_id,
        kind=ArtifactKind(kind),
        version=version,
        size=size,
        sha256=digest,
        url=url,
        min_daemon_version=min_version,
        rollout=rollout,
    )


# ------------------------------------------------------------------------ release


@dataclass(frozen=True)
class Release:
    version: int
    expires: datetime
    channels: dict[str, tuple[Artifact, ...]] = field(default_factory=dict)

    def channel(self, name: str) -> tuple[Artifact, ...]:
        if name not in self.channels:
            from rustaid.errors import NotFound

            known = ", ".join(sorted(self.channels)) or "none"
            raise NotFound(
                f"channel {name!r} is not in the release metadata (version {self.version}); "
                f"channels: {known}",
                reason="CHANNEL_NOT_FOUND",
            )
        return self.channels[name]

    def to_signed(self) -> dict[str, Any]:
        return {
            "_type": "release",
            "spec_version": SPEC_VERSION,
            "version": self.version,
            "expires": format_time(self.expires),
            "channels": {
                name: [a.to_json() for a in artifacts]
                for name, artifacts in sorted(self.channels.items())
            },
        }


def parse_release(signed: Mapping[str, Any], what: str = "release metadata") -> Release:
    _no_extra(signed, {"_type", "spec_version", "version", "expires", "channels"}, what)
    if _req(signed, "_type", str, what) != "release":
        raise _malformed(what, "'_type' must be 'release'")
    spec = _req(signed, "spec_version", int, what)
    if spec != SPEC_VERSION:
        raise _malformed(
            what, f"'spec_version' {spec} is not supported by this daemon (supports 1)"
        )
    version = _req(signed, "version", int, what)
    if version < 1:
        raise _malformed(what, "'version' must be >= 1")
    expires = parse_time(_req(signed, "expires", str, what), what)
    channels_obj = _req(signed, "channels", dict, what)
    if len(channels_obj) > MAX_CHANNELS:
        raise _malformed(what, f"more than {MAX_CHANNELS} channels")
    channels: dict[str, tuple[Artifact, ...]] = {}
    for name, items in channels_obj.items():
        if not CHANNEL_RE.match(name):
            raise _malformed(what, f"channel name {name[:40]!r} is not valid")
        where = f"{what}: channel {name!r}"
        if not isinstance(items, list):
            raise _malformed(where, "must be a list of artifacts")
        if len(items) > MAX_ARTIFACTS_PER_CHANNEL:
            raise _malformed(where, f"more than {MAX_ARTIFACTS_PER_CHANNEL} artifacts")
        artifacts = tuple(
            parse_artifact(item, f"{where}, artifact {i}") for i, item in enumerate(items)
        )
        ids = [a.id for a in artifacts]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise _malformed(where, f"artifact id(s) listed twice: {', '.join(dupes)}")
        channels[name] = artifacts
    return Release(version=version, expires=expires, channels=channels)


def check_fresh(release: Release, now: datetime, what: str = "release metadata") -> None:
    if release.expires <= now:
        raise MetadataRejected(
            f"{what} version {release.version} expired at {format_time(release.expires)} "
            "(a frozen or stale repository: the publisher must re-sign it)",
            reason="METADATA_EXPIRED",
        )


# --------------------------------------------------------------------------- roots


def root_signed(version: int, keys: Iterable[bytes], threshold: int) -> dict[str, Any]:
    return {
        "_type": "root",
        "spec_version": SPEC_VERSION,
        "version": version,
        "threshold": threshold,
        "keys": sorted(format_public_key(k) for k in keys),
    }


def parse_root(signed: Mapping[str, Any], what: str) -> Trust:
    _no_extra(signed, {"_type", "spec_version", "version", "threshold", "keys"}, what)
    if _req(signed, "_type", str, what) != "root":
        raise _malformed(what, "'_type' must be 'root'")
    if _req(signed, "spec_version", int, what) != SPEC_VERSION:
        raise _malformed(what, "'spec_version' is not supported (supports 1)")
    version = _req(signed, "version", int, what)
    threshold = _req(signed, "threshold", int, what)
    keys = _req(signed, "keys", list, what)
    if not keys or len(keys) > MAX_SIGNATURES or not all(isinstance(k, str) for k in keys):
        raise _malformed(what, f"'keys' must be a list of 1 to {MAX_SIGNATURES} public keys")
    try:
        return Trust.from_keys([parse_public_key(k) for k in keys], threshold, version)
    except InvalidArgument as e:
        raise _malformed(what, e.message) from e


def next_trust(current: Trust, raw: bytes, what: str) -> Trust:
    """Verify root/<current.version + 1>.json: signed by a threshold of the keys trusted
    now *and* a threshold of the keys it introduces (proof the new keys are held)."""
    doc = parse_document(raw, what)
    new = parse_root(doc.signed, what)
    if new.version != current.version + 1:
        raise MetadataRejected(
            f"{what} declares version {new.version}, expected {current.version + 1}",
            reason="ROOT_VERSION_MISMATCH",
        )
    verify_threshold(doc, current, f"{what} (by the keys trusted so far)")
    verify_threshold(doc, new, f"{what} (by its own new keys)")
    return new


def verify_release(
    raw: bytes, trust: Trust, *, now: datetime, floor: int = 0, what: str = "metadata.json"
) -> tuple[Release, SignedDocument]:
    """Parse and verify release metadata: envelope, signatures (threshold), fields,
    expiry and version floor. Raises MetadataRejected with a precise reason."""
    doc = parse_document(raw, what)
    verify_threshold(doc, trust, what)
    release = parse_release(doc.signed, what)
    if release.version < floor:
        raise MetadataRejected(
            f"{what} has version {release.version}, older than version {floor} this device "
            "already trusts (a replayed old release: rollback attack)",
            reason="METADATA_ROLLBACK",
        )
    check_fresh(release, now, what)
    return release, doc

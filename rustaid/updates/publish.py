"""The publisher's side: keys, adding artifacts, signing, rotating keys, verifying.

Everything works on a local folder that is then uploaded as is to a static HTTP
server or CDN (see metadata.py for the layout). `rustaictl release ...` calls these.

Signing is separate from editing so that several key holders can sign the same
metadata in turn (threshold): `add` produces an unsigned draft with the next version
number; each `sign` appends one signature without changing the signed content.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from rustaid.errors import AlreadyExists, InvalidArgument, NotFound, PreconditionFailed
from rustaid.updates.atomic import write_atomic
from rustaid.updates.download import sha256_file
from rustaid.updates.metadata import (
    SUFFIX,
    Artifact,
    ArtifactKind,
    MetadataRejected,
    Release,
    Trust,
    check_artifact_id,
    check_channel,
    check_fresh,
    check_version,
    document_bytes,
    format_public_key,
    format_time,
    next_trust,
    parse_document,
    parse_public_key,
    parse_release,
    root_signed,
    sign,
    verify_threshold,
)

METADATA = "metadata.json"
ROOT_DIR = "root"
ARTIFACTS_DIR = "artifacts"
DEFAULT_EXPIRY = timedelta(days=30)


# ---------------------------------------------------------------------------- keys


def generate_key(prefix: Path, *, overwrite: bool = False) -> tuple[Path, Path, str]:
    """Write PREFIX.key (private, PKCS#8 PEM, mode 0600) and PREFIX.pub
    ('ed25519:<hex>'); returns both paths and the public key text."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private_path = prefix.with_name(prefix.name + ".key")
    public_path = prefix.with_name(prefix.name + ".pub")
    for path in (private_path, public_path):
        if path.exists() and not overwrite:
            raise AlreadyExists(f"{path} already exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    prefix.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(private_path, pem, mode=0o600)
    text = format_public_key(public)
    write_atomic(public_path, (text + "\n").encode(), mode=0o644)
    return private_path, public_path, text


def load_private_key(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        data = path.read_bytes()
    except OSError as e:
        raise InvalidArgument(f"cannot read key {path}: {e.strerror or e}", field="key") from e
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise InvalidArgument(
            f"{path} is not an unencrypted PEM private key (make one with "
            "`rustaictl release keygen`)",
            field="key",
        ) from e
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidArgument(f"{path} is not an ed25519 key", field="key")
    return key


def load_public_key(spec: str) -> bytes:
    """'ed25519:<hex>' inline, or a .pub file (a .key file gives its public half)."""
    if spec.strip().startswith("ed25519:"):
        return parse_public_key(spec)
    path = Path(spec)
    if path.suffix == ".key":
        from cryptography.hazmat.primitives import serialization

        public: bytes = (
            load_private_key(path)
            .public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )
        return public
    try:
        return parse_public_key(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise InvalidArgument(f"cannot read key {path}: {e.strerror or e}", field="key") from e


def parse_rollout(text: str | int) -> int:
    """'10%', '10' or 10 -> 10."""
    value = str(text).strip().removesuffix("%").strip()
    if not value.isdigit() or not 0 <= int(value) <= 100:
        raise InvalidArgument(
            f"rollout {text!r} must be a whole percentage from 0% to 100%", field="rollout"
        )
    return int(value)


def parse_expiry(text: str) -> timedelta:
    """'30d', '12h', '90m' -> a timedelta."""
    from rustaid.updates.config import parse_duration

    try:
        seconds = parse_duration(text, "expires")
    except InvalidArgument as e:
        raise InvalidArgument(
            f"expiry {text!r} must be a duration like 30d, 12h or 90m", field="expires"
        ) from e
    if seconds <= 0:
        raise InvalidArgument("expiry must be in the future", field="expires")
    return timedelta(seconds=seconds)


# ----------------------------------------------------------------------- repository


@dataclass(frozen=True)
class Draft:
    release: Release
    signatures: tuple[dict[str, str], ...]


class Repository:
    """A release repository folder on the publisher's machine."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.metadata_path = root / METADATA

    # -- reading ------------------------------------------------------------------------

    def read(self) -> Draft | None:
        if not self.metadata_path.exists():
            return None
        doc = parse_document(self.metadata_path.read_bytes(), str(self.metadata_path))
        release = parse_release(doc.signed, str(self.metadata_path))
        sigs = tuple({"keyid": k, "sig": s} for k, s in doc.signatures)
        return Draft(release, sigs)

    def _write(self, release: Release, signatures: Iterable[dict[str, str]]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.metadata_path, document_bytes(release.to_signed(), signatures))

    # -- editing ------------------------------------------------------------------------

    def add(
        self,
        file: Path,
        *,
        channel: str,
        version: str,
        artifact_id: str = "",
        kind: ArtifactKind | None = None,
        rollout: int = 100,
        min_daemon_version: str = "",
        base_url: str = "",
        expires_in: timedelta = DEFAULT_EXPIRY,
        now: datetime | None = None,
    ) -> Artifact:
        """Copy `file` into artifacts/<id>/<version>/ and list it in `channel` (replacing
        that id's previous entry there). The metadata becomes an unsigned draft."""
        now = now or datetime.now(UTC)
        check_channel(channel)
        check_version(version)
        if min_daemon_version:
            check_version(min_daemon_version, "min_daemon_version")
        if not file.is_file():
            raise NotFound(f"artifact file {file} does not exist")
        if kind is None:
            kind = _kind_of(file)
        artifact_id = check_artifact_id(artifact_id or _default_id(file))
        _check_content(file, kind)
        if not 0 <= rollout <= 100:
            raise InvalidArgument("rollout must be 0..100", field="rollout")
        rel = f"{ARTIFACTS_DIR}/{artifact_id}/{version}/{artifact_id}{SUFFIX[kind]}"
        dest = self.root / rel
        digest = sha256_file(file)
        if dest.exists():
            if sha256_file(dest) != digest:
                raise AlreadyExists(
                    f"{artifact_id} {version} is already in the repository with other content; "
                    "publish the change under a new version"
                )
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.tmp")
            shutil.copyfile(file, tmp)
            tmp.chmod(0o644)
            tmp.replace(dest)
        artifact = Artifact(
            id=artifact_id,
            kind=kind,
            version=version,
            size=dest.stat().st_size,
            sha256=digest,
            url=urljoin(base_url.rstrip("/") + "/", rel) if base_url else rel,
            min_daemon_version=min_daemon_version,
            rollout=rollout,
        )
        draft = self.read()
        if draft is None:
            release = Release(version=1, expires=now + expires_in, channels={})
        elif draft.signatures:  # published: the next edit is the next version
            release = replace(draft.release, version=draft.release.version + 1)
        else:
            release = draft.release
        for other_channel, items in release.channels.items():
            for a in items:
                if a.id == artifact_id and a.kind is not kind:
                    raise AlreadyExists(
                        f"{artifact_id} is a {a.kind.value} in channel {other_channel}; "
                        f"an artifact id has one kind"
                    )
        channels = dict(release.channels)
        kept = [a for a in channels.get(channel, ()) if a.id != artifact_id]
        channels[channel] = (*kept, artifact)
        release = replace(release, channels=channels, expires=now + expires_in)
        self._write(release, [])
        return artifact

    def remove(self, artifact_id: str, channel: str) -> None:
        draft = self._require()
        items = draft.release.channels.get(channel, ())
        if not any(a.id == artifact_id for a in items):
            raise NotFound(f"{artifact_id} is not in channel {channel}")
        release = draft.release
        if draft.signatures:
            release = replace(release, version=release.version + 1)
        channels = dict(release.channels)
        channels[channel] = tuple(a for a in items if a.id != artifact_id)
        self._write(replace(release, channels=channels), [])

    def _require(self) -> Draft:
        draft = self.read()
        if draft is None:
            raise NotFound(
                f"{self.metadata_path} does not exist: add an artifact first "
                "(`rustaictl release add`)"
            )
        return draft

    # -- signing ------------------------------------------------------------------------

    def sign(
        self,
        keys: Sequence[Any],
        *,
        expires_in: timedelta | None = None,
        now: datetime | None = None,
    ) -> Draft:
        """Append one signature per private key. Changing the expiry is only allowed
        before the first signature (it is part of what is signed)."""
        draft = self._require()
        release = draft.release
        signatures = list(draft.signatures)
        if expires_in is not None:
            if signatures:
                raise PreconditionFailed(
                    "the metadata already has signatures; a new expiry would invalidate "
                    "them (sign without --expires, or re-create the draft with `add`)"
                )
            release = replace(release, expires=(now or datetime.now(UTC)) + expires_in)
        signed = release.to_signed()
        for key in keys:
            entry = sign(signed, key)
            signatures = [s for s in signatures if s["keyid"] != entry["keyid"]] + [entry]
        self._write(release, signatures)
        return Draft(release, tuple(signatures))

    # -- key rotation -------------------------------------------------------------------

    def root_versions(self) -> list[int]:
        folder = self.root / ROOT_DIR
        if not folder.is_dir():
            return []
        return sorted(int(p.stem) for p in folder.glob("*.json") if p.stem.isdigit())

    def rotate(self, new_keys: Sequence[bytes], threshold: int) -> Path:
        """Write root/<N+1>.json introducing `new_keys` (unsigned; sign it with
        `sign_root` by a threshold of the old keys *and* of the new ones)."""
        Trust.from_keys(new_keys, threshold)  # validates the threshold
        version = (self.root_versions() or [0])[-1] + 1
        path = self.root / ROOT_DIR / f"{version}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, document_bytes(root_signed(version, new_keys, threshold), []))
        return path

    def sign_root(self, keys: Sequence[Any]) -> Path:
        versions = self.root_versions()
        if not versions:
            raise NotFound("no root/N.json to sign: run `rustaictl release rotate` first")
        path = self.root / ROOT_DIR / f"{versions[-1]}.json"
        doc = parse_document(path.read_bytes(), str(path))
        signatures = [{"keyid": k, "sig": s} for k, s in doc.signatures]
        for key in keys:
            entry = sign(doc.signed, key)
            signatures = [s for s in signatures if s["keyid"] != entry["keyid"]] + [entry]
        write_atomic(path, document_bytes(doc.signed, signatures))
        return path

    # -- verifying ----------------------------------------------------------------------

    def verify(self, trust: Trust, *, now: datetime | None = None) -> list[str]:
        """Check the repository as a device would, plus every local artifact file.
        Returns report lines; raises MetadataRejected / NotFound on the first problem."""
        now = now or datetime.now(UTC)
        lines = []
        for version in self.root_versions():
            if version <= trust.version:
                continue
            path = self.root / ROOT_DIR / f"{version}.json"
            trust = next_trust(trust, path.read_bytes(), f"{ROOT_DIR}/{version}.json")
            lines.append(
                f"root {version}: ok, {len(trust.keys)} key(s), threshold {trust.threshold}"
            )
        draft = self._require()
        doc = parse_document(self.metadata_path.read_bytes(), METADATA)
        verify_threshold(doc, trust, METADATA)
        release = draft.release
        check_fresh(release, now, METADATA)
        signers = len({s["keyid"] for s in draft.signatures if s["keyid"] in trust.keys})
        lines.append(
            f"{METADATA}: version {release.version}, {signers} trusted signature(s) "
            f"(threshold {trust.threshold}), expires {format_time(release.expires)}"
        )
        for channel, artifacts in sorted(release.channels.items()):
            for a in artifacts:
                if "://" in a.url:
                    lines.append(f"{channel}/{a.id} {a.version}: remote {a.url} (not checked)")
                    continue
                path = self.root / a.url
                if not path.is_file():
                    raise NotFound(f"{channel}/{a.id} {a.version}: {a.url} is missing")
                size = path.stat().st_size
                if size != a.size or sha256_file(path) != a.sha256:
                    raise MetadataRejected(
                        f"{channel}/{a.id} {a.version}: {a.url} does not match the metadata "
                        f"(size {size}, declared {a.size}; or SHA-256 differs)",
                        reason="ARTIFACT_HASH_MISMATCH",
                    )
                lines.append(
                    f"{channel}/{a.id} {a.version}: ok ({a.kind.value}, {size} bytes, "
                    f"rollout {a.rollout} %)"
                )
        return lines


def _kind_of(file: Path) -> ArtifactKind:
    for kind, suffix in SUFFIX.items():
        if file.suffix == suffix:
            return kind
    raise InvalidArgument(
        f"cannot tell the kind of {file.name}: models are .gguf files, plugins .py files "
        "(or give --kind)",
        field="kind",
    )


def _default_id(file: Path) -> str:
    return file.stem.lower()


def _check_content(file: Path, kind: ArtifactKind) -> None:
    """Catch the publisher's mistakes before devices do."""
    if kind is ArtifactKind.MODEL:
        with file.open("rb") as f:
            if f.read(4) != b"GGUF":
                raise InvalidArgument(f"{file} is not a GGUF model file", field="artifact")
    else:
        try:
            source = file.read_text(encoding="utf-8")
            compile(source, str(file), "exec", dont_inherit=True)
        except (UnicodeDecodeError, SyntaxError, ValueError) as e:
            raise InvalidArgument(
                f"{file} is not a valid Python plugin: {e}", field="artifact"
            ) from e

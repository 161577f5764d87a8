"""Signed release metadata: real ed25519 keys, thresholds, rotation, and every kind of
bad metadata rejected with a reason that says what is wrong."""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from rustaid.errors import AlreadyExists, InvalidArgument, PreconditionFailed
from rustaid.updates.metadata import (
    MetadataRejected,
    Trust,
    document_bytes,
    parse_public_key,
    sign,
    verify_release,
    version_key,
)
from rustaid.updates.publish import Repository, load_public_key, parse_expiry, parse_rollout
from tests.updates.conftest import Key

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def trust_of(keys: list[Key], threshold: int = 1) -> Trust:
    return Trust.from_keys([parse_public_key(k.public) for k in keys], threshold)


def artifact(**changes: Any) -> dict[str, Any]:
    a = {
        "id": "chat",
        "kind": "model",
        "version": "1.0",
        "size": 10,
        "sha256": "ab" * 32,
        "url": "artifacts/chat/1.0/chat.gguf",
        "rollout": 100,
    }
    a.update(changes)
    return a


def release_doc(
    keys: list[Key], *, release: int = 1, expires_at: datetime | None = None, **changes: Any
) -> bytes:
    signed: dict[str, Any] = {
        "_type": "release",
        "spec_version": 1,
        "version": release,
        "expires": (expires_at or NOW + timedelta(days=7)).isoformat().replace("+00:00", "Z"),
        "channels": {"stable": [artifact()]},
    }
    signed.update(changes)
    return document_bytes(signed, [sign(signed, k.private) for k in keys])


def test_valid_metadata_is_accepted(keys: list[Key]) -> None:
    release, _ = verify_release(release_doc(keys[:1]), trust_of(keys[:1]), now=NOW)
    (a,) = release.channel("stable")
    assert (a.id, a.version, a.size, a.rollout, a.filename) == ("chat", "1.0", 10, 100, "chat.gguf")


def test_threshold_needs_distinct_trusted_signatures(keys: list[Key]) -> None:
    trust = trust_of(keys[:3], threshold=2)
    verify_release(release_doc(keys[:2]), trust, now=NOW)
    with pytest.raises(MetadataRejected) as e:
        verify_release(release_doc(keys[:1]), trust, now=NOW)
    assert e.value.reason == "METADATA_SIGNATURE_INVALID"
    assert "1 valid signature(s) from trusted keys; 2 required" in e.value.message
    # The same key signing twice still counts once.
    doc = json.loads(release_doc(keys[:1]))
    doc["signatures"] = doc["signatures"] * 2
    with pytest.raises(MetadataRejected, match="2 required"):
        verify_release(json.dumps(doc).encode(), trust, now=NOW)


def test_unknown_key_is_rejected(keys: list[Key]) -> None:
    with pytest.raises(MetadataRejected) as e:
        verify_release(release_doc([keys[3]]), trust_of(keys[:1]), now=NOW)
    assert e.value.reason == "METADATA_SIGNATURE_INVALID"
    assert "does not trust" in e.value.message


def test_tampered_metadata_is_rejected(keys: list[Key]) -> None:
    doc = json.loads(release_doc(keys[:1]))
    doc["signed"]["channels"]["stable"][0]["sha256"] = "cd" * 32  # point at another file
    with pytest.raises(MetadataRejected) as e:
        verify_release(json.dumps(doc).encode(), trust_of(keys[:1]), now=NOW)
    assert "do not match the content" in e.value.message


def test_older_version_is_a_rollback_attack(keys: list[Key]) -> None:
    with pytest.raises(MetadataRejected) as e:
        verify_release(release_doc(keys[:1], release=3), trust_of(keys[:1]), now=NOW, floor=4)
    assert e.value.reason == "METADATA_ROLLBACK"
    assert "older than version 4" in e.value.message


def test_expired_metadata_is_a_freeze_attack(keys: list[Key]) -> None:
    raw = release_doc(keys[:1], expires_at=NOW - timedelta(seconds=1))
    with pytest.raises(MetadataRejected) as e:
        verify_release(raw, trust_of(keys[:1]), now=NOW)
    assert e.value.reason == "METADATA_EXPIRED"
    assert "expired at 2029-12-31T23:59:59Z" in e.value.message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "top level must be a JSON object"),
        (b'{"signed": {}, "signatures": [], "x": 1}', "unknown top-level field"),
        (b'{"signed": [], "signatures": []}', "'signed' must be a JSON object"),
        (b'{"signed": {}, "signatures": {}}', "'signatures' must be a list"),
        (b'{"signed": {}, "signatures": [{"keyid": "zz", "sig": "00"}]}', "signatures[0]"),
    ],
)
def test_malformed_envelopes(keys: list[Key], raw: bytes, expected: str) -> None:
    with pytest.raises(MetadataRejected) as e:
        verify_release(raw, trust_of(keys[:1]), now=NOW)
    assert e.value.reason == "METADATA_MALFORMED"
    assert expected in e.value.message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"version": "7"}, "'version' must be an integer"),
        ({"version": True}, "'version' must be an integer, got a boolean"),
        ({"version": 0}, "'version' must be >= 1"),
        ({"expires": "tomorrow"}, "is not an ISO 8601 time"),
        ({"expires": "2031-01-01T00:00:00"}, "needs a time zone"),
        ({"spec_version": 2}, "'spec_version' 2 is not supported"),
        ({"channels": []}, "'channels' must be an object"),
        ({"channels": {"Stable!": []}}, "channel name"),
        ({"channels": {"stable": [artifact(size=1.5)]}}, "floating-point numbers"),
        ({"channels": {"stable": [artifact(size="10")]}}, "'size' must be an integer"),
        ({"channels": {"stable": [artifact(size=0)]}}, "'size' must be between 1"),
        ({"channels": {"stable": [artifact(sha256="AB" * 32)]}}, "64 lower-case hex"),
        ({"channels": {"stable": [artifact(kind="firmware")]}}, "'kind' must be 'model'"),
        ({"channels": {"stable": [artifact(rollout=101)]}}, "'rollout' must be an integer"),
        ({"channels": {"stable": [artifact(url="file:///etc/passwd")]}}, "scheme 'file'"),
        ({"channels": {"stable": [artifact(url="../../etc/passwd")]}}, "'..' path segment"),
        ({"channels": {"stable": [artifact(url="/etc/passwd")]}}, "must be absolute"),
        ({"channels": {"stable": [artifact(id="../../etc/passwd")]}}, "not a plain name"),
        ({"channels": {"stable": [artifact(id=".hidden")]}}, "not a plain name"),
        ({"channels": {"stable": [artifact(id="Chat")]}}, "not a plain name"),
        ({"channels": {"stable": [artifact(version="1.0/../x")]}}, "not a valid version"),
        ({"channels": {"stable": [artifact(extra=1)]}}, "unknown field(s): extra"),
        ({"channels": {"stable": [artifact(), artifact()]}}, "listed twice: chat"),
        ({"channels": {"stable": [{"id": "chat"}]}}, "missing field 'kind'"),
    ],
)
def test_malformed_signed_content(keys: list[Key], change: dict[str, Any], expected: str) -> None:
    """Signed by a trusted key and still refused: every field is checked."""
    with pytest.raises(MetadataRejected) as e:
        verify_release(release_doc(keys[:1], **change), trust_of(keys[:1]), now=NOW)
    assert e.value.reason == "METADATA_MALFORMED"
    assert expected in e.value.message


def test_version_order() -> None:
    assert version_key("1.9") < version_key("1.10") < version_key("1.10a") < version_key("2")
    assert version_key("1.0.0") == version_key("1.0.0")


def test_public_key_parsing(keys: list[Key]) -> None:
    assert len(parse_public_key(keys[0].public)) == 32
    assert load_public_key(str(keys[0].pub_file)) == load_public_key(str(keys[0].key_file))
    for bad in ("rsa:abcd", "ed25519:xyz", "ed25519:" + "a" * 63):
        with pytest.raises(InvalidArgument, match="ed25519"):
            parse_public_key(bad)


def test_trust_threshold_bounds(keys: list[Key]) -> None:
    with pytest.raises(InvalidArgument, match="between 1 and the number of distinct"):
        trust_of(keys[:2], threshold=3)
    with pytest.raises(InvalidArgument, match="between 1"):
        trust_of(keys[:2], threshold=0)


# ------------------------------------------------------------------------ publisher


def test_publisher_add_sign_verify_and_multi_party_signing(
    tmp_path: Path, keys: list[Key], models: dict[str, Path]
) -> None:
    repo = Repository(tmp_path / "repo")
    a = repo.add(models["v1"], channel="stable", version="1.0", artifact_id="chat", rollout=10)
    assert a.url == "artifacts/chat/1.0/chat.gguf" and a.rollout == 10
    assert (tmp_path / "repo" / a.url).read_bytes() == models["v1"].read_bytes()
    draft = repo.read()
    assert draft is not None and draft.release.version == 1 and not draft.signatures
    trust = trust_of(keys[:2], threshold=2)
    with pytest.raises(MetadataRejected, match="0 valid signature"):
        repo.verify(trust)
    repo.sign([keys[0].private])  # one key holder...
    with pytest.raises(MetadataRejected, match="1 valid signature"):
        repo.verify(trust)
    repo.sign([keys[1].private])  # ...then the other, on another machine
    lines = repo.verify(trust)
    assert any("2 trusted signature(s)" in line for line in lines)
    assert any("stable/chat 1.0: ok" in line for line in lines)
    # An expiry change would invalidate the signatures already there.
    with pytest.raises(PreconditionFailed, match="already has signatures"):
        repo.sign([keys[0].private], expires_in=timedelta(days=1))
    # The next edit is the next version, unsigned again.
    repo.add(models["v2"], channel="beta", version="2.0", artifact_id="chat")
    draft = repo.read()
    assert draft is not None and draft.release.version == 2 and not draft.signatures
    assert set(draft.release.channels) == {"stable", "beta"}


def test_publisher_refuses_bad_input(
    tmp_path: Path, models: dict[str, Path], plugins: dict[str, Path]
) -> None:
    repo = Repository(tmp_path / "repo")
    repo.add(models["v1"], channel="stable", version="1.0", artifact_id="chat")
    with pytest.raises(AlreadyExists, match="with other content"):
        repo.add(models["v2"], channel="stable", version="1.0", artifact_id="chat")
    with pytest.raises(
        InvalidArgument, match=re.escape("artifact id '../../etc/passwd' is not valid")
    ):
        repo.add(models["v1"], channel="stable", version="1.1", artifact_id="../../etc/passwd")
    with pytest.raises(InvalidArgument, match="channel"):
        repo.add(models["v1"], channel="Stable Channel", version="1.1")
    with pytest.raises(InvalidArgument, match="version"):
        repo.add(models["v1"], channel="stable", version="1 0")
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 zip")
    with pytest.raises(InvalidArgument, match="not a GGUF model file"):
        repo.add(not_gguf, channel="stable", version="1.0")
    bad_py = tmp_path / "bad.py"
    bad_py.write_text("def broken(:\n")
    with pytest.raises(InvalidArgument, match="not a valid Python plugin"):
        repo.add(bad_py, channel="stable", version="1.0")
    with pytest.raises(InvalidArgument, match="cannot tell the kind"):
        repo.add(tmp_path / "repo" / "metadata.json", channel="stable", version="1.0")
    with pytest.raises(AlreadyExists, match="one kind"):
        repo.add(plugins["v1"], channel="beta", version="1.0", artifact_id="chat")
    for text in ("101%", "-1", "ten"):
        with pytest.raises(InvalidArgument, match="percentage"):
            parse_rollout(text)
    assert parse_rollout("10%") == 10
    with pytest.raises(InvalidArgument, match="duration"):
        parse_expiry("soon")


def test_key_rotation_chain(tmp_path: Path, keys: list[Key], models: dict[str, Path]) -> None:
    """root/1.json moves trust from key 0 to keys 1+2 (threshold 2): it must be signed by
    the old key *and* the new ones; the release is then signed by the new keys."""
    repo = Repository(tmp_path / "repo")
    repo.add(models["v1"], channel="stable", version="1.0", artifact_id="chat")
    repo.sign([keys[1].private, keys[2].private])
    old = trust_of(keys[:1])
    new_keys = [parse_public_key(k.public) for k in keys[1:3]]
    repo.rotate(new_keys, threshold=2)
    repo.sign_root([keys[1].private, keys[2].private])  # new keys only: not enough
    with pytest.raises(MetadataRejected, match="by the keys trusted so far"):
        repo.verify(old)
    repo.sign_root([keys[0].private])
    lines = repo.verify(old)
    assert lines[0] == "root 1: ok, 2 key(s), threshold 2"
    # A root signed by the old key alone does not prove the new keys are held.
    root1 = json.loads((tmp_path / "repo" / "root" / "1.json").read_text())
    only_old = copy.deepcopy(root1)
    keyid0 = json.loads(release_doc(keys[:1]))["signatures"][0]["keyid"]
    only_old["signatures"] = [s for s in root1["signatures"] if s["keyid"] == keyid0]
    (tmp_path / "repo" / "root" / "1.json").write_text(json.dumps(only_old))
    with pytest.raises(MetadataRejected, match="by its own new keys"):
        repo.verify(old)

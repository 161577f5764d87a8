"""The downloader against a real HTTP server on 127.0.0.1 with injected faults."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from rustaid.errors import PreconditionFailed, Unavailable
from rustaid.updates.download import (
    Cancelled,
    DownloadFailed,
    MetadataTooLarge,
    download,
    fetch_bytes,
    sha256_file,
)
from tests.updates.conftest import small_disk
from tests.updates.server import RepoServer, serve

SIZE = 3 * (1 << 20) + 12345  # a few chunks, not a multiple of the chunk size
PATH = "artifacts/blob/1/blob.gguf"


@pytest.fixture
def blob_server(tmp_path: Path) -> Iterator[tuple[RepoServer, bytes]]:
    root = tmp_path / "repo"
    data = os.urandom(SIZE)
    (root / PATH).parent.mkdir(parents=True)
    (root / PATH).write_bytes(data)
    with serve(root) as server:
        yield server, data


def fetch(server: RepoServer, dest: Path, size: int = SIZE, **kwargs: object) -> object:
    options: dict[str, object] = {"timeout": 5.0, "attempts": 4, "backoff": 0.01}
    options.update(kwargs)
    return download(f"{server.url}/{PATH}", dest, size, **options)  # type: ignore[arg-type]


def test_plain_download(blob_server: tuple[RepoServer, bytes], tmp_path: Path) -> None:
    server, data = blob_server
    seen: list[int] = []
    result = fetch(server, tmp_path / "out.part", progress=seen.append)
    assert (tmp_path / "out.part").read_bytes() == data
    assert result.requests == 1 and result.received == SIZE  # type: ignore[attr-defined]
    assert seen[-1] == SIZE and seen == sorted(seen)


def test_truncated_response_resumes_with_range_and_downloads_only_the_rest(
    blob_server: tuple[RepoServer, bytes], tmp_path: Path
) -> None:
    server, data = blob_server
    cut = SIZE // 3
    server.fault(PATH, "truncate", cut)
    result = fetch(server, tmp_path / "out.part")
    assert (tmp_path / "out.part").read_bytes() == data
    first, second = server.requests_for("/" + PATH)
    assert (first.range, first.sent) == ("", cut)
    assert second.range == f"bytes={cut}-" and second.status == 206
    assert second.sent == SIZE - cut  # only the rest
    assert server.bytes_sent("/" + PATH) == SIZE
    assert result.requests == 2  # type: ignore[attr-defined]


def test_partial_file_from_an_earlier_attempt_is_resumed(
    blob_server: tuple[RepoServer, bytes], tmp_path: Path
) -> None:
    server, data = blob_server
    dest = tmp_path / "out.part"
    dest.write_bytes(data[:1000])
    result = fetch(server, dest)
    assert dest.read_bytes() == data
    assert result.resumed_from == 1000 and result.received == SIZE - 1000  # type: ignore[attr-defined]
    assert server.requests_for("/" + PATH)[0].range == "bytes=1000-"


def test_server_without_range_support_restarts_from_zero(
    blob_server: tuple[RepoServer, bytes], tmp_path: Path
) -> None:
    server, data = blob_server
    dest = tmp_path / "out.part"
    dest.write_bytes(b"\0" * 1000)  # stale garbage that must not survive
    server.fault(PATH, "no_range")
    fetch(server, dest)
    assert dest.read_bytes() == data


def test_stall_is_detected_and_resumed(
    blob_server: tuple[RepoServer, bytes], tmp_path: Path
) -> None:
    server, data = blob_server
    server.fault(PATH, "stall", 100_000)
    fetch(server, tmp_path / "out.part", timeout=0.5)
    assert (tmp_path / "out.part").read_bytes() == data
    assert server.requests_for("/" + PATH)[1].range == "bytes=100000-"


def test_stall_every_time_gives_up_with_the_reason(
    blob_server: tuple[RepoServer, bytes], tmp_path: Path
) -> None:
    server, _ = blob_server
    server.fault(PATH, "stall", 0, times=-1)
    with pytest.raises(DownloadFailed) as e:
        fetch(server, tmp_path / "out.part", timeout=0.3, attempts=2)
    assert e.value.reason == "DOWNLOAD_STALLED"
    assert "gave up after 2 attempts" in e.value.message


def test_not_found_is_not_retried(blob_server: tuple[RepoServer, bytes], tmp_path: Path) -> None:
    server, _ = blob_server
    server.fault(PATH, "status", 404, times=-1)
    with pytest.raises(DownloadFailed) as e:
        fetch(server, tmp_path / "out.part")
    assert "HTTP 404" in e.value.message and not e.value.transient
    assert len(server.requests_for("/" + PATH)) == 1


def test_server_error_is_retried(blob_server: tuple[RepoServer, bytes], tmp_path: Path) -> None:
    server, data = blob_server
    server.fault(PATH, "status", 500, times=2)
    fetch(server, tmp_path / "out.part")
    assert (tmp_path / "out.part").read_bytes() == data
    assert [r.status for r in server.requests_for("/" + PATH)] == [500, 500, 200]


def test_announced_size_larger_than_declared_is_refused_before_reading(
    blob_server: tuple[RepoServer, bytes], tmp_path: Path
) -> None:
    server, _ = blob_server
    with pytest.raises(DownloadFailed) as e:
        fetch(server, tmp_path / "out.part", size=SIZE - 1)
    assert e.value.reason == "ARTIFACT_TOO_LARGE"
    assert f"announces {SIZE} bytes but the signed metadata declares {SIZE - 1}" in e.value.message


def test_endless_data_is_cut_at_the_declared_size(
    blob_server: tuple[RepoServer, bytes], tmp_path: Path
) -> None:
    server, _ = blob_server
    server.fault(PATH, "endless", times=-1)
    dest = tmp_path / "out.part"
    with pytest.raises(DownloadFailed) as e:
        fetch(server, dest)
    assert e.value.reason == "ARTIFACT_TOO_LARGE"
    assert dest.stat().st_size == SIZE  # never more than declared on disk


def test_wrong_short_content_length_is_resumed(
    blob_server: tuple[RepoServer, bytes], tmp_path: Path
) -> None:
    server, data = blob_server
    server.fault(PATH, "content_length", 1000)  # announces 1000 bytes, sends everything
    fetch(server, tmp_path / "out.part")
    assert (tmp_path / "out.part").read_bytes() == data
    assert server.requests_for("/" + PATH)[1].range == "bytes=1000-"


def test_flipped_byte_is_caught_by_the_hash(
    blob_server: tuple[RepoServer, bytes], tmp_path: Path
) -> None:
    server, data = blob_server
    server.fault(PATH, "flip", 4242)
    fetch(server, tmp_path / "out.part")
    assert sha256_file(tmp_path / "out.part") != hashlib.sha256(data).hexdigest()


def test_cancel_stops_between_chunks(blob_server: tuple[RepoServer, bytes], tmp_path: Path) -> None:
    server, _ = blob_server
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        fetch(server, tmp_path / "out.part", cancel=cancel)


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    data = os.urandom(5 * (1 << 20) + 7)
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()
    assert sha256_file(tmp_path / "f", bufsize=4096) == hashlib.sha256(data).hexdigest()


def test_fetch_bytes_caps_metadata_and_maps_errors(
    blob_server: tuple[RepoServer, bytes], tmp_path: Path
) -> None:
    server, _ = blob_server
    with pytest.raises(MetadataTooLarge, match="more than the 1000 bytes max_metadata_size") as e:
        fetch_bytes(f"{server.url}/{PATH}", max_bytes=1000, timeout=5)
    assert e.value.reason == "METADATA_TOO_LARGE"
    server.fault(PATH, "endless")  # no Content-Length: cut at the limit while reading
    with pytest.raises(MetadataTooLarge, match="the document is more than the 1000 bytes"):
        fetch_bytes(f"{server.url}/{PATH}", max_bytes=1000, timeout=5)
    assert fetch_bytes(f"{server.url}/missing.json", max_bytes=1000, timeout=5) is None
    server.fault("metadata.json", "status", 503)
    with pytest.raises(Unavailable, match="HTTP 503"):
        fetch_bytes(f"{server.url}/metadata.json", max_bytes=1000, timeout=5)
    with pytest.raises(Unavailable, match="cannot fetch"):
        fetch_bytes("http://127.0.0.1:9/metadata.json", max_bytes=1000, timeout=5)


def test_a_trickle_under_the_minimum_rate_is_cut_off(
    blob_server: tuple[RepoServer, bytes], tmp_path: Path
) -> None:
    server, _ = blob_server
    server.fault(PATH, "trickle", 1000, times=-1)  # 10 kB/s, never a stall
    with pytest.raises(DownloadFailed, match="too slow") as e:
        fetch(server, tmp_path / "out.part", timeout=0.5, min_rate=100_000, attempts=2)
    assert e.value.reason == "DOWNLOAD_TOO_SLOW" and "gave up after 2 attempts" in e.value.message


def test_the_whole_download_has_a_deadline(
    blob_server: tuple[RepoServer, bytes], tmp_path: Path
) -> None:
    server, _ = blob_server
    server.fault(PATH, "trickle", 20_000, times=-1)  # 200 kB/s: fast enough, never done
    with pytest.raises(DownloadFailed, match="not finished by the download deadline") as e:
        fetch(server, tmp_path / "out.part", timeout=1, min_rate=1000, deadline_s=1.0)
    assert e.value.reason == "DOWNLOAD_DEADLINE"
    assert len(server.requests_for(PATH)) == 1  # not retried


def test_redirects_stay_on_the_origin_or_go_to_a_listed_mirror(
    blob_server: tuple[RepoServer, bytes], tmp_path: Path
) -> None:
    server, data = blob_server
    server.fault("old/blob.gguf", "redirect", times=-1, location=f"/{PATH}")
    url = f"{server.url}/old/blob.gguf"
    download(url, tmp_path / "same.part", SIZE, timeout=5)
    assert (tmp_path / "same.part").read_bytes() == data
    with serve(server.root) as mirror:
        server.fault("moved/blob.gguf", "redirect", times=-1, location=f"{mirror.url}/{PATH}")
        url = f"{server.url}/moved/blob.gguf"
        with pytest.raises(DownloadFailed, match="add its URL to `mirrors`") as e:
            download(url, tmp_path / "other.part", SIZE, timeout=5)
        assert e.value.reason == "REDIRECT_REFUSED" and mirror.requests == []
        download(url, tmp_path / "mirror.part", SIZE, timeout=5, mirrors=[f"{mirror.url}/"])
        assert (tmp_path / "mirror.part").read_bytes() == data
        # A mirror is a URL prefix, not a whole host.
        with pytest.raises(DownloadFailed, match="outside"):
            download(url, tmp_path / "o.part", SIZE, timeout=5, mirrors=[f"{mirror.url}/x"])
        server.fault("metadata.json", "redirect", location=f"{mirror.url}/{PATH}")
        with pytest.raises(PreconditionFailed) as refused:
            fetch_bytes(f"{server.url}/metadata.json", max_bytes=SIZE, timeout=5)
        assert refused.value.reason == "REDIRECT_REFUSED"


def test_a_full_disk_is_an_error_with_its_reason(
    blob_server: tuple[RepoServer, bytes], tmp_path: Path
) -> None:
    server, _ = blob_server
    with small_disk(tmp_path / "disk", "1m") as disk:
        with pytest.raises(DownloadFailed, match="the disk is full") as e:
            fetch(server, disk / "out.part")
        assert e.value.reason == "DISK_FULL" and not e.value.transient

"""Bounded HTTP downloads with Range resume, and SHA-256 of files.

Blocking (stdlib urllib): run it in a worker thread. Nothing here makes a file
visible to the daemon: downloads land in the staging folder and are verified by the
caller before they move into a slot.

The size declared in the signed metadata is the authority: a server that announces
or sends more is cut off (TUF's "endless data" attack); one that sends less is asked
for the rest with `Range: bytes=N-`.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rustaid import __version__
from rustaid.errors import RustaidError, Unavailable

log = logging.getLogger(__name__)

CHUNK = 1 << 20
HASH_BUFFER = 1 << 20
USER_AGENT = f"rustaid/{__version__}"
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class DownloadFailed(RustaidError):
    """A download that cannot complete; `transient` ones are retried."""

    def __init__(self, message: str, *, reason: str, transient: bool = False) -> None:
        super().__init__(message, reason=reason)
        self.transient = transient


class Cancelled(Exception):
    pass


@dataclass
class DownloadResult:
    path: Path
    size: int
    # Bytes received over the network by this call (excludes what was already there).
    received: int
    # Bytes that were already in the partial file when this call started.
    resumed_from: int
    requests: int


def _open(url: str, headers: dict[str, str], timeout: float) -> http.client.HTTPResponse:
    request = urllib.request.Request(
        url, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **headers}
    )
    response = urllib.request.urlopen(request, timeout=timeout)
    assert isinstance(response, http.client.HTTPResponse)
    return response


def _http_error(url: str, e: urllib.error.HTTPError) -> DownloadFailed:
    transient = e.code >= 500 or e.code in (408, 429)
    return DownloadFailed(
        f"{url}: the server answered HTTP {e.code} {e.reason}",
        reason="DOWNLOAD_HTTP_ERROR",
        transient=transient,
    )


def fetch_bytes(url: str, *, max_bytes: int, timeout: float) -> bytes | None:
    """GET a small document (metadata); None on 404/410. Refuses more than max_bytes."""
    try:
        with _open(url, {}, timeout) as response:
            length = response.getheader("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise DownloadFailed(
                    f"{url}: {length} bytes is more than the {max_bytes} allowed",
                    reason="METADATA_TOO_LARGE",
                )
            data = response.read(max_bytes + 1)
    except urllib.error.HTTPError as e:
        if e.code in (404, 410):
            return None
        raise Unavailable(str(_http_error(url, e)), reason="REPOSITORY_UNAVAILABLE") from e
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise Unavailable(
            f"cannot fetch {url}: {getattr(e, 'reason', None) or e}",
            reason="REPOSITORY_UNAVAILABLE",
        ) from e
    if len(data) > max_bytes:
        raise DownloadFailed(
            f"{url}: more than the {max_bytes} bytes allowed", reason="METADATA_TOO_LARGE"
        )
    return data


def fetch_required(url: str, *, max_bytes: int, timeout: float) -> bytes:
    data = fetch_bytes(url, max_bytes=max_bytes, timeout=timeout)
    if data is None:
        raise Unavailable(
            f"{url} does not exist (HTTP 404): nothing is published there yet",
            reason="METADATA_NOT_FOUND",
        )
    return data


def sha256_file(
    path: Path, bufsize: int = HASH_BUFFER, cancel: threading.Event | None = None
) -> str:
    """SHA-256 of a file, read with one reusable buffer (hashlib releases the GIL)."""
    digest = hashlib.sha256()
    buf = bytearray(bufsize)
    view = memoryview(buf)
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
            if cancel is not None and cancel.is_set():
                raise Cancelled()
    return digest.hexdigest()


def download(
    url: str,
    dest: Path,
    size: int,
    *,
    timeout: float = 60.0,
    attempts: int = 5,
    backoff: float = 0.5,
    progress: Callable[[int], None] | None = None,
    cancel: threading.Event | None = None,
    after_first_chunk: Callable[[], None] | None = None,
) -> DownloadResult:
    """Download `url` to `dest` (a partial file is resumed), exactly `size` bytes.

    Transient failures (connection lost, stall longer than `timeout`, HTTP 5xx) are
    retried up to `attempts` requests in all, each resuming where the file ends.
    Raises DownloadFailed (reason says which check) or Cancelled.
    """
    have = dest.stat().st_size if dest.exists() else 0
    if have > size:
        dest.unlink()
        have = 0
    resumed_from = have
    received = 0
    requests = 0
    last_error: DownloadFailed | None = None
    first_chunk_hook = after_first_chunk
    while have < size:
        if requests >= attempts:
            assert last_error is not None
            raise DownloadFailed(
                f"{last_error.message} (gave up after {requests} attempts)",
                reason=last_error.reason,
            )
        if requests:
            time.sleep(min(backoff * 2 ** (requests - 1), 30.0))
        requests += 1
        try:
            got = _one_request(url, dest, have, size, timeout, progress, cancel, first_chunk_hook)
        except DownloadFailed as e:
            if not e.transient:
                raise
            last_error = e
            now = dest.stat().st_size if dest.exists() else 0
            received += max(0, now - have)
            have = now
            log.info("download of %s interrupted (%s); resuming at byte %d", url, e.message, have)
            continue
        first_chunk_hook = None
        received += got
        have = dest.stat().st_size
    return DownloadResult(dest, size, received, resumed_from, requests)


def _one_request(
    url: str,
    dest: Path,
    have: int,
    size: int,
    timeout: float,
    progress: Callable[[int], None] | None,
    cancel: threading.Event | None,
    after_first_chunk: Callable[[], None] | None,
) -> int:
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        response = _open(url, headers, timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have == size:
            return 0
        if e.code == 416:  # our partial file does not fit what the server has: start over
            dest.unlink(missing_ok=True)
            raise DownloadFailed(
                f"{url}: the server refused the resume range",
                reason="DOWNLOAD_RANGE",
                transient=True,
            ) from e
        raise _http_error(url, e) from e
    except TimeoutError as e:
        raise DownloadFailed(
            f"{url}: no answer within {timeout:g} s", reason="DOWNLOAD_STALLED", transient=True
        ) from e
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise DownloadFailed(
            f"cannot fetch {url}: {getattr(e, 'reason', None) or e}",
            reason="DOWNLOAD_CONNECTION",
            transient=True,
        ) from e
    with response:
        start = 0
        if response.status == 206:
            match = _CONTENT_RANGE.match(response.getheader("Content-Range") or "")
            if (
                match is None
                or int(match[1]) != have
                or (match[3] != "*" and int(match[3]) != size)
            ):
                dest.unlink(missing_ok=True)
                raise DownloadFailed(
                    f"{url}: the server answered the resume request with range "
                    f"{response.getheader('Content-Range')!r}, expected bytes {have}-{size - 1}/"
                    f"{size}; starting over",
                    reason="DOWNLOAD_RANGE",
                    transient=True,
                )
            start = have
        elif response.status == 200:
            start = 0  # no Range support (or no partial file): from the beginning
        else:
            raise DownloadFailed(
                f"{url}: unexpected HTTP status {response.status}",
                reason="DOWNLOAD_HTTP_ERROR",
            )
        remaining = size - start
        length = response.getheader("Content-Length")
        if length is not None and length.strip().isdigit() and int(length) > remaining:
            raise DownloadFailed(
                f"{url}: the server announces {int(length) + start} bytes but the signed "
                f"metadata declares {size}; refusing to download more than declared",
                reason="ARTIFACT_TOO_LARGE",
            )
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW
        fd = os.open(dest, flags, 0o600)
        got = 0
        try:
            os.ftruncate(fd, start)
            os.lseek(fd, start, os.SEEK_SET)
            while got < remaining:
                if cancel is not None and cancel.is_set():
                    raise Cancelled()
                try:
                    # read1: what has arrived (one recv), so a stall loses nothing.
                    chunk = response.read1(min(CHUNK, remaining - got))
                except TimeoutError as e:
                    raise DownloadFailed(
                        f"{url}: stalled, no data for {timeout:g} s after {start + got} of "
                        f"{size} bytes",
                        reason="DOWNLOAD_STALLED",
                        transient=True,
                    ) from e
                except http.client.IncompleteRead as e:
                    if e.partial:
                        os.write(fd, e.partial)
                        got += len(e.partial)
                    raise DownloadFailed(
                        f"{url}: the connection closed after {start + got} of {size} bytes",
                        reason="DOWNLOAD_TRUNCATED",
                        transient=True,
                    ) from e
                except (OSError, http.client.HTTPException) as e:
                    raise DownloadFailed(
                        f"{url}: connection lost after {start + got} of {size} bytes: {e}",
                        reason="DOWNLOAD_CONNECTION",
                        transient=True,
                    ) from e
                if not chunk:
                    raise DownloadFailed(
                        f"{url}: the connection closed after {start + got} of {size} bytes",
                        reason="DOWNLOAD_TRUNCATED",
                        transient=True,
                    )
                view = memoryview(chunk)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                got += len(chunk)
                if progress is not None:
                    progress(start + got)
                if after_first_chunk is not None:
                    os.fsync(fd)
                    after_first_chunk()
                    after_first_chunk = None
            # Exactly `size` bytes are here; anything more is an attack or a wrong file.
            extra = b""
            with contextlib.suppress(TimeoutError, OSError, http.client.HTTPException):
                extra = response.read(1)
            if extra:
                raise DownloadFailed(
                    f"{url}: the server sends more than the {size} bytes the signed metadata "
                    "declares; stopped at the declared size",
                    reason="ARTIFACT_TOO_LARGE",
                )
            os.fsync(fd)
        finally:
            os.close(fd)
    return got

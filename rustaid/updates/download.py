"""Bounded HTTP downloads with Range resume, and SHA-256 of files.

Blocking (stdlib urllib): run it in a worker thread. Nothing here makes a file
visible to the daemon: downloads land in the staging folder and are verified by the
caller before they move into a slot.

The size declared in the signed metadata is the authority: a server that announces
or sends more is cut off (TUF's "endless data" attack); one that sends less is asked
for the rest with `Range: bytes=N-`. A download cannot hang either: besides the stall
timeout, each stretch of `timeout` seconds must bring `min_rate` bytes a second (a
server trickling just under the stall timeout is cut off) and the whole download,
retries included, has a deadline. Redirects are followed only within the URL's own
origin (scheme, host, port) or to a listed mirror. A full disk is `DISK_FULL`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import logging
import math
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from rustaid import __version__
from rustaid.errors import DataLoss, PreconditionFailed, RustaidError, Unavailable

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


class MetadataTooLarge(DataLoss):
    """The repository sent more metadata than `max_metadata_size` allows."""


class RedirectRefused(DownloadFailed):
    def __init__(self, message: str) -> None:
        super().__init__(message, reason="REDIRECT_REFUSED")


def origin(url: str) -> str:
    """scheme://host:port of `url` (default ports made explicit)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


def redirect_allowed(source: str, target: str, mirrors: Sequence[str] = ()) -> bool:
    """A redirect stays within `source`'s origin, or goes to one of `mirrors` (URL
    prefixes: same origin and path under the mirror's)."""
    if origin(target) == origin(source):
        return True
    path = urlsplit(target).path
    for mirror in mirrors:
        base = urlsplit(mirror).path.rstrip("/")
        if origin(target) == origin(mirror) and (path == base or path.startswith(base + "/")):
            return True
    return False


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only within the first URL's origin or to a listed mirror."""

    def __init__(self, first: str, mirrors: Sequence[str]) -> None:
        self.first, self.mirrors = first, tuple(mirrors)

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        if not redirect_allowed(self.first, newurl, self.mirrors):
            raise RedirectRefused(
                f"{self.first}: the server redirects to {newurl}, outside "
                f"{origin(self.first)}; add its URL to `mirrors` in [updates] if it is one"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


@dataclass
class DownloadResult:
    path: Path
    size: int
    # Bytes received over the network by this call (excludes what was already there).
    received: int
    # Bytes that were already in the partial file when this call started.
    resumed_from: int
    requests: int


def _open(
    url: str, headers: dict[str, str], timeout: float, mirrors: Sequence[str] = ()
) -> http.client.HTTPResponse:
    request = urllib.request.Request(
        url, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **headers}
    )
    opener = urllib.request.build_opener(_Redirects(url, mirrors))
    response = opener.open(request, timeout=timeout)
    assert isinstance(response, http.client.HTTPResponse)
    return response


def _http_error(url: str, e: urllib.error.HTTPError) -> DownloadFailed:
    transient = e.code >= 500 or e.code in (408, 429)
    return DownloadFailed(
        f"{url}: the server answered HTTP {e.code} {e.reason}",
        reason="DOWNLOAD_HTTP_ERROR",
        transient=transient,
    )


def _too_large(url: str, what: str, max_bytes: int) -> MetadataTooLarge:
    return MetadataTooLarge(
        f"{url}: {what} more than the {max_bytes} bytes max_metadata_size in "
        "[updates] allows; nothing was used (raise the limit if the repository is right)",
        reason="METADATA_TOO_LARGE",
    )


def fetch_bytes(
    url: str, *, max_bytes: int, timeout: float, mirrors: Sequence[str] = ()
) -> bytes | None:
    """GET a small document (metadata); None on 404/410. Refuses more than max_bytes
    (MetadataTooLarge) and redirects off its origin (PreconditionFailed)."""
    try:
        with _open(url, {}, timeout, mirrors) as response:
            length = response.getheader("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise _too_large(url, f"{length} bytes is", max_bytes)
            data = response.read(max_bytes + 1)
    except RedirectRefused as e:
        raise PreconditionFailed(e.message, reason=e.reason) from None
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
        raise _too_large(url, "the document is", max_bytes)
    return data


def fetch_required(
    url: str, *, max_bytes: int, timeout: float, mirrors: Sequence[str] = ()
) -> bytes:
    data = fetch_bytes(url, max_bytes=max_bytes, timeout=timeout, mirrors=mirrors)
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
    min_rate: int = 0,
    deadline_s: float = math.inf,
    mirrors: Sequence[str] = (),
) -> DownloadResult:
    """Download `url` to `dest` (a partial file is resumed), exactly `size` bytes.

    Transient failures (connection lost, stall longer than `timeout`, slower than
    `min_rate` bytes/s over `timeout`, HTTP 5xx) are retried up to `attempts` requests
    in all, each resuming where the file ends; all of it ends within `deadline_s`.
    Raises DownloadFailed (reason says which check) or Cancelled.
    """
    pace = _Pace(url, size, timeout, min_rate, time.monotonic() + deadline_s, mirrors)
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
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        if requests >= attempts:
            assert last_error is not None
            raise DownloadFailed(
                f"{last_error.message} (gave up after {requests} attempts)",
                reason=last_error.reason,
            )
        if requests:
            time.sleep(min(backoff * 2 ** (requests - 1), 30.0, pace.left()))
        pace.check_deadline(have)
        requests += 1
        try:
            got = _one_request(url, dest, have, size, pace, progress, cancel, first_chunk_hook)
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


@dataclass
class _Pace:
    """How long and how slow a download may be."""

    url: str
    size: int
    timeout: float  # no data for this long: stalled; also the rate's window
    min_rate: int  # bytes per second, over each window
    deadline: float  # time.monotonic() by which all of it must be here
    mirrors: Sequence[str]
    _window_start: float = 0.0
    _window_bytes: int = 0

    def left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def socket_timeout(self) -> float:
        return max(0.1, min(self.timeout, self.left()))

    def check_deadline(self, have: int) -> None:
        if time.monotonic() >= self.deadline:
            raise DownloadFailed(
                f"{self.url}: not finished by the download deadline ({have} of {self.size} "
                "bytes); download_deadline in [updates] sets it",
                reason="DOWNLOAD_DEADLINE",
            )

    def start(self) -> None:
        self._window_start, self._window_bytes = time.monotonic(), 0

    def received(self, n: int, have: int) -> None:
        """After each chunk: the deadline, then the rate over the window just ended."""
        self.check_deadline(have)
        self._window_bytes += n
        elapsed = time.monotonic() - self._window_start
        if elapsed < self.timeout:
            return
        rate = self._window_bytes / elapsed
        if rate < self.min_rate:
            raise DownloadFailed(
                f"{self.url}: too slow, {rate:.0f} bytes/s over {elapsed:.1f} s after {have} "
                f"of {self.size} bytes (download_min_rate in [updates] is {self.min_rate})",
                reason="DOWNLOAD_TOO_SLOW",
                transient=True,
            )
        self.start()


def _write_error(url: str, dest: Path, e: OSError) -> DownloadFailed:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return DownloadFailed(
            f"{url}: the disk is full ({dest.parent}: {e.strerror}); the partial download "
            "is removed, free some space and try again",
            reason="DISK_FULL",
        )
    return DownloadFailed(f"{url}: cannot write {dest}: {e.strerror or e}", reason="DOWNLOAD_WRITE")


def _one_request(
    url: str,
    dest: Path,
    have: int,
    size: int,
    pace: _Pace,
    progress: Callable[[int], None] | None,
    cancel: threading.Event | None,
    after_first_chunk: Callable[[], None] | None,
) -> int:
    headers = {"Range": f"bytes={have}-"} if have else {}
    timeout = pace.timeout
    try:
        response = _open(url, headers, pace.socket_timeout(), pace.mirrors)
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
        try:
            fd = os.open(dest, flags, 0o600)
        except OSError as e:
            raise _write_error(url, dest, e) from e
        got = 0
        pace.start()
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
                pace.received(len(chunk), start + got)
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
        except OSError as e:  # reading errors are DownloadFailed already: this is the disk
            raise _write_error(url, dest, e) from e
        finally:
            os.close(fd)
    return got

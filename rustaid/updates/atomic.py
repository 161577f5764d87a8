"""Crash-safe file operations: every change is a rename, made durable with fsync.

After a power cut or a kill -9, each path below holds either its old content or its
new content, never a mix: data is written to a temporary name in the same folder,
fsynced, renamed over the target, and the folder is fsynced so the rename itself
survives.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` (temp file, fsync, rename, fsync of the folder)."""
    tmp = _temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.chmod(mode)  # the umask may have taken bits away
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def symlink_atomic(target: str, link: Path) -> None:
    """Point `link` at `target` with one rename: readers see the old or the new target."""
    tmp = _temp_name(link)
    tmp.symlink_to(target)
    try:
        tmp.replace(link)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(link.parent)


def remove(path: Path) -> None:
    """Remove a file, symlink or folder tree if present, and fsync its folder."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    else:
        return
    fsync_dir(path.parent)


def make_private_dir(path: Path) -> Path:
    """Create `path` (and parents) readable by the daemon's user only."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path

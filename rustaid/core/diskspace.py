"""Free disk space: writers check it before they write, so a full disk is an error
(RESOURCE_EXHAUSTED, reason DISK_FULL) and never a crash.

Memory-mapped files are why a check must come first: a write into a mapped page the
file system cannot back (a sparse file on a full disk) is not an error return but
SIGBUS, which kills the daemon. Writers that map files keep a reserve free; every
writer also turns ENOSPC/EDQUOT from plain writes into the same error.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from rustaid.errors import ResourceExhausted

MIB = 1 << 20
# Clients come back after this long: freeing space is a person's doing, not a moment's.
DISK_FULL_RETRY_S = 30.0
_FULL = (errno.ENOSPC, errno.EDQUOT)


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the file system holding `path`
    (its nearest existing ancestor)."""
    for folder in (path, *path.parents):
        try:
            st = os.statvfs(folder)
        except FileNotFoundError:
            continue
        return st.f_bavail * st.f_frsize
    raise FileNotFoundError(path)


def disk_full(path: Path, what: str, free: int | None = None, need: int = 0) -> ResourceExhausted:
    free_text = "" if free is None else f" has {free / MIB:.1f} MiB free"
    need_text = f"; {what} keeps at least {need / MIB:.0f} MiB free" if need else f" ({what})"
    return ResourceExhausted(
        f"the disk holding {path} is full: it{free_text}{need_text}. Free some space "
        "there, then retry",
        reason="DISK_FULL",
        retry_after_s=DISK_FULL_RETRY_S,
    )


def require_free(path: Path, need: int, what: str) -> None:
    """Raise DISK_FULL unless `need` bytes are free on `path`'s file system."""
    free = free_bytes(path)
    if free < need:
        raise disk_full(path, what, free, need)


@contextlib.contextmanager
def full_disk_is_exhausted(path: Path, what: str) -> Iterator[None]:
    """Turn ENOSPC / EDQUOT raised inside the block into DISK_FULL."""
    try:
        yield
    except OSError as e:
        if e.errno not in _FULL:
            raise
        free = None
        with contextlib.suppress(OSError):
            free = free_bytes(path)
        raise disk_full(path, what, free) from e

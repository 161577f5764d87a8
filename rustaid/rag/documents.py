"""Getting documents in: reading files safely from the allowed folders, and picking the
parser plugin for a file."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath

from rustaid.errors import InvalidArgument, NotFound, PermissionDenied
from rustaid.providers import DocumentParser

_SNIFF_BYTES = 4096
# Tried in this order on content of unknown type; "text" comes last.
_SNIFF_ORDER = ("pdf", "docx", "html")


def _inside(path: str, folders: Sequence[Path]) -> bool:
    return any(path == str(f) or path.startswith(str(f).rstrip(os.sep) + os.sep) for f in folders)


def read_allowed_file(raw: str, folders: Sequence[Path], max_bytes: int) -> tuple[Path, bytes]:
    """The resolved path and content of a file under one of `folders` (already resolved).

    Symbolic links are followed and the target must be inside an allowed folder too. The
    check is made on the path the kernel actually opened (/proc/self/fd), so a link
    swapped in between the check and the open is caught as well.
    """
    if not folders:
        raise PermissionDenied(
            "reading files by path is off: list the folders the daemon may read in the "
            "[rag] allowed_folders setting, or upload the file's content instead",
            reason="PATH_READING_OFF",
        )
    if not raw:
        raise InvalidArgument("path is empty", field="path")
    if "\x00" in raw:
        raise InvalidArgument("path contains a NUL byte", field="path")
    if not Path(raw).is_absolute():
        raise InvalidArgument(
            f"path {raw!r} is relative: give an absolute path on the daemon's host",
            field="path",
        )
    denied = PermissionDenied(
        f"{raw} is outside the folders the daemon may read ([rag] allowed_folders: "
        f"{', '.join(str(f) for f in folders)}); symbolic links must stay inside them too",
        reason="PATH_NOT_ALLOWED",
    )
    resolved = os.path.realpath(raw)
    if not _inside(resolved, folders):
        raise denied
    try:
        fd = os.open(resolved, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError as e:
        raise NotFound(f"no file at {raw}", reason="FILE_NOT_FOUND") from e
    except PermissionError as e:
        raise PermissionDenied(
            f"the daemon's user may not read {raw}", reason="FILE_NOT_READABLE"
        ) from e
    except OSError as e:
        raise InvalidArgument(f"cannot open {raw}: {e.strerror}", field="path") from e
    try:
        opened = str(Path(f"/proc/self/fd/{fd}").readlink())
        if not _inside(opened, folders):
            raise denied
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise InvalidArgument(
                f"{raw} is a folder: index the files in it (rustaictl rag index walks folders)",
                field="path",
            )
        if not stat.S_ISREG(st.st_mode):
            raise InvalidArgument(f"{raw} is not a regular file", field="path")
        if st.st_size > max_bytes:
            raise InvalidArgument(
                f"{raw} is {st.st_size >> 20} MiB; the limit is {max_bytes >> 20} MiB "
                "([rag] max_file_mb)",
                field="path",
                reason="FILE_TOO_LARGE",
            )
        chunks: list[bytes] = []
        remaining = max_bytes + 1
        while remaining > 0:
            block = os.read(fd, min(1 << 20, remaining))
            if not block:
                break
            chunks.append(block)
            remaining -= len(block)
        content = b"".join(chunks)
        if len(content) > max_bytes:
            raise InvalidArgument(
                f"{raw} grew beyond the limit of {max_bytes >> 20} MiB while being read",
                field="path",
                reason="FILE_TOO_LARGE",
            )
        return Path(opened), content
    finally:
        os.close(fd)


def choose_parser(
    parsers: Mapping[str, DocumentParser], filename: str, mime_type: str, content: bytes
) -> DocumentParser:
    """By the file name's suffix, then the MIME type, then by looking at the content."""
    if not parsers:
        raise InvalidArgument("no document parser plugin is active", reason="NO_PARSER")
    suffix = PurePath(filename).suffix.lower() if filename else ""
    if suffix:
        for parser in parsers.values():
            if suffix in parser.suffixes:
                return parser
    mime = mime_type.split(";", 1)[0].strip().lower()
    if mime:
        for parser in parsers.values():
            if mime in parser.mime_types:
                return parser
    head = content[:_SNIFF_BYTES]
    ordered = [parsers[n] for n in _SNIFF_ORDER if n in parsers]
    ordered += [p for n, p in parsers.items() if n not in _SNIFF_ORDER and n != "text"]
    for parser in ordered:
        if parser.sniff(head):
            return parser
    text = parsers.get("text")
    if text is not None and text.sniff(head):
        return text
    supported = sorted({s for p in parsers.values() for s in p.suffixes})
    what = f"'{suffix}' files" if suffix else "this content"
    raise InvalidArgument(
        f"{filename or 'the upload'}: no parser for {what} (it is not text); supported "
        f"suffixes: {', '.join(supported)}",
        field="filename",
        reason="NO_PARSER",
    )

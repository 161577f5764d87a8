"""What every `rustaictl` command shares: exit statuses, usage errors and output (text,
JSON, tables fitted to the terminal). Commands write through `stdout()` and `stderr()`
here, so one place decides where output goes."""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
from collections.abc import Sequence
from datetime import UTC
from typing import Any, TextIO

from google.protobuf import json_format
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

PROG = "rustaictl"
# Narrowest a table column gets when the table is fitted to the terminal.
MIN_COLUMN = 8
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """A mistake in the command line found after parsing (exit status 2)."""


def stdout() -> TextIO:
    return sys.stdout


def stderr() -> TextIO:
    return sys.stderr


def echo(text: str = "") -> None:
    print(text, file=stdout())


def note(text: str) -> None:
    print(text, file=stderr())


def to_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


def print_json(message: Message, *, compact: bool = False) -> None:
    data = to_dict(message)
    text = json.dumps(data, ensure_ascii=False, indent=None if compact else 2)
    out = stdout()
    out.write(text + "\n")
    out.flush()


def friendly(wrapper: EnumTypeWrapper, value: int) -> str:
    """`MODEL_STATE_LOADED` -> `loaded`; unspecified -> `-`."""
    try:
        name = wrapper.Name(value)
    except ValueError:
        return str(value)
    prefix = next(
        (
            v.name.removesuffix("UNSPECIFIED")
            for v in wrapper.DESCRIPTOR.values
            if v.name.endswith("_UNSPECIFIED")
        ),
        "",
    )
    if name.endswith("_UNSPECIFIED"):
        return "-"
    return name.removeprefix(prefix).lower()


def human_size(n: int) -> str:
    """1536 -> `1.5 KiB`."""
    if n < 1024:
        return f"{n} B"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        size /= 1024
        if size < 1024 or unit == "TiB":
            break
    return f"{size:.1f} {unit}"


def time_text(ts: Timestamp) -> str:
    if ts.seconds == 0 and ts.nanos == 0:
        return "never"
    return ts.ToDatetime(tzinfo=UTC).astimezone().isoformat(timespec="seconds")


def terminal_width() -> int | None:
    """The width tables must fit: the terminal's (or $COLUMNS); None for a pipe, whose
    reader may want whole lines."""
    if "COLUMNS" in os.environ or stdout().isatty():
        return shutil.get_terminal_size().columns
    return None


def fit_widths(widths: list[int], total: int) -> list[int]:
    """Column widths whose sum fits `total`: the widest columns give way first, down to
    MIN_COLUMN characters."""
    widths = list(widths)
    while sum(widths) > total:
        widest = max(range(len(widths)), key=lambda i: widths[i])
        if widths[widest] <= MIN_COLUMN:
            break
        widths[widest] -= 1
    return widths


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Columns separated by two spaces; on a terminal, long cells wrap so that every line
    fits its width."""
    cells = [list(headers), *([c or "-" for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    width = terminal_width()
    if width is not None:
        widths = fit_widths(widths, width - 2 * (len(widths) - 1))
    for row in cells:
        wrapped = [
            [c] if len(c) <= w else textwrap.wrap(c, w, break_on_hyphens=False)
            for c, w in zip(row, widths, strict=True)
        ]
        for i in range(max(len(w) for w in wrapped)):
            parts = [(w[i] if i < len(w) else "") for w in wrapped]
            echo("  ".join(p.ljust(n) for p, n in zip(parts, widths, strict=True)).rstrip())


def fields(pairs: Sequence[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in pairs) + 1
    for key, value in pairs:
        echo(f"{key + ':':<{width}} {value or '-'}")

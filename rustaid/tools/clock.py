"""The `datetime` tool: the current time, or a given time, in any IANA time zone."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from rustaid.providers import Tool, ToolError

_ZONE_NAME = re.compile(r"^[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*$")


def zone(name: str, field: str) -> tzinfo:
    """The time zone called `name` (IANA, e.g. Europe/Paris; "UTC"); ToolError if unknown."""
    if name.upper() in ("UTC", "Z", "GMT"):
        return UTC
    if not _ZONE_NAME.match(name) or ".." in name:
        raise ToolError(f"{field} {name!r} is not a time zone name (e.g. Europe/Paris, UTC)")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ToolError(
            f"{field}: unknown time zone {name!r}; use an IANA name such as Europe/Paris, "
            "America/New_York or Asia/Tokyo"
        ) from None


def _offset(moment: datetime) -> str:
    delta = moment.utcoffset()
    assert delta is not None
    minutes = int(delta.total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    hours, mins = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}:{mins:02d}"


def describe(moment: datetime, zone_name: str) -> dict[str, Any]:
    dst = moment.dst()
    return {
        "iso": moment.isoformat(timespec="seconds"),
        "timezone": zone_name,
        "utc_offset": _offset(moment),
        "abbreviation": moment.tzname() or "",
        "date": moment.date().isoformat(),
        "time": moment.time().isoformat(timespec="seconds"),
        "weekday": moment.strftime("%A"),
        "unix": int(moment.timestamp()),
        "dst": bool(dst),
    }


class DateTime(Tool):
    name = "datetime"
    description = (
        "The current date and time, or converts a date-time between time zones (IANA "
        "names such as Europe/Paris, America/New_York, UTC). Returns ISO 8601 text, the "
        "UTC offset, weekday and Unix time."
    )
    parameters_schema: Mapping[str, Any] = {
        "type": "object",
        "properties": {
            "time": {
                "type": "string",
                "maxLength": 40,
                "description": "ISO 8601 date-time to convert, e.g. 2024-05-01T09:30 or "
                "2024-05-01T09:30:00+02:00; omit it for now",
            },
            "from_timezone": {
                "type": "string",
                "maxLength": 40,
                "description": "time zone of `time` when it has no UTC offset (default UTC)",
            },
            "to_timezone": {
                "type": "string",
                "maxLength": 40,
                "description": "time zone to express the time in (default UTC)",
            },
        },
        "additionalProperties": False,
    }
    result_schema: Mapping[str, Any] = {
        "type": "object",
        "properties": {
            "iso": {"type": "string"},
            "timezone": {"type": "string"},
            "utc_offset": {"type": "string"},
            "unix": {"type": "integer"},
        },
        "required": ["iso", "timezone", "utc_offset", "unix"],
    }
    timeout_s = 2.0

    def run(self, arguments: Mapping[str, Any]) -> Any:
        to_name = arguments.get("to_timezone") or "UTC"
        target = zone(to_name, "to_timezone")
        text = arguments.get("time")
        if not text or text.lower() == "now":
            moment = datetime.now(UTC)
        else:
            try:
                moment = datetime.fromisoformat(text)
            except ValueError:
                raise ToolError(
                    f"time {text!r} is not an ISO 8601 date-time (e.g. 2024-05-01T09:30 or "
                    "2024-05-01T09:30:00+02:00)"
                ) from None
            if moment.tzinfo is None:
                source = zone(arguments.get("from_timezone") or "UTC", "from_timezone")
                moment = moment.replace(tzinfo=source)
        try:
            converted = moment.astimezone(target)
        except (OverflowError, ValueError) as e:
            raise ToolError(f"cannot convert {text!r}: {e}") from None
        return describe(converted, "UTC" if target is UTC else to_name)

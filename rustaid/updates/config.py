"""The [updates] section of rustaid.toml, validated into one typed object.

    [updates]
    repository = "https://updates.example.com/rustaid"   # unset: updates are off
    channel = "stable"
    trusted_keys = ["ed25519:3b6a27bc...", "/etc/rustaid/keys/release-2.pub"]
    threshold = 1
    check_interval = "6h"        # 0 disables scheduled checks (manual only)
    jitter = "30m"               # each check moves by a random -jitter..+jitter
    maintenance_window = "02:00-05:00"   # local time; scheduled updates only then
    auto_apply = true            # scheduled checks also apply what they find
    min_battery = 30             # percent; refuse on battery below it
    report_url = "https://fleet.example.com/rustaid/report"
    mirrors = ["https://mirror.example.org/rustaid"]   # redirects may go there too
    download_timeout = "60s"     # no data for this long: stalled (and the rate's window)
    download_min_rate = "4KiB"   # per second, over each download_timeout
    download_deadline = "12h"    # one artifact's download, retries included

A bad value raises InvalidArgument naming `updates.<key>`: the daemon does not start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import time as dtime
from pathlib import Path
from urllib.parse import urlsplit

from rustaid.errors import InvalidArgument
from rustaid.updates.metadata import (
    CHANNEL_RE,
    ID_RE,
    Trust,
    parse_public_key,
)

THERMAL_STATES = ("nominal", "fair", "serious", "critical")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KiB": 1 << 10,
    "MiB": 1 << 20,
    "GiB": 1 << 30,
    "TiB": 1 << 40,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
}
_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


def _bad(key: str, why: str, value: object) -> InvalidArgument:
    return InvalidArgument(
        f"[updates] {key}: {why} (got {value!r})", field=f"updates.{key}", reason="BAD_CONFIG"
    )


def parse_duration(value: object, key: str) -> float:
    """Seconds from 90, 1.5, "45s", "30m", "6h", "1d"."""
    if isinstance(value, bool):
        raise _bad(key, "expected a duration like 30m or 6h", value)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m[1]) * _UNITS[m[2]]
    else:
        raise _bad(key, "expected a duration: seconds, or a number with ms, s, m, h or d", value)
    if seconds < 0:
        raise _bad(key, "must not be negative", value)
    return seconds


def parse_size(value: object, key: str) -> int:
    if isinstance(value, bool):
        raise _bad(key, "expected a size like 16GiB", value)
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        size = int(m[1]) * _SIZE_UNITS[m[2]]
    else:
        raise _bad(key, "expected a size in bytes, or a number with KiB, MiB, GiB", value)
    if size < 1:
        raise _bad(key, "must be at least 1 byte", value)
    return size


@dataclass(frozen=True)
class Window:
    """A daily local-time window; may wrap midnight (22:00-04:00)."""

    start: dtime
    end: dtime

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


def parse_window(value: object) -> Window | None:
    if value in ("", None):
        return None
    if not isinstance(value, str) or not (m := _WINDOW.match(value)):
        raise _bad("maintenance_window", "expected HH:MM-HH:MM in local time", value)
    h1, m1, h2, m2 = (int(x) for x in m.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59 or (h1, m1) == (h2, m2):
        raise _bad("maintenance_window", "expected two different times HH:MM-HH:MM", value)
    return Window(dtime(h1, m1), dtime(h2, m2))


@dataclass(frozen=True)
class UpdatesConfig:
    repository: str = ""
    channel: str = "stable"
    trust: Trust | None = None
    check_interval_s: float = 6 * 3600.0
    jitter_s: float = 1800.0
    window: Window | None = None
    auto_apply: bool = True
    min_battery: int = 30
    # Refuse at this thermal state or worse.
    max_thermal: str = "serious"
    report_url: str = ""
    device_id: str = ""
    # Only these artifact ids are installed (empty: everything in the channel).
    artifacts: tuple[str, ...] = ()
    max_artifact_bytes: int = 64 << 30
    max_metadata_bytes: int = 4 << 20
    download_timeout_s: float = 60.0
    download_min_rate: int = 4 << 10
    download_deadline_s: float = 12 * 3600.0
    # Redirects go only to the repository's own origin or under one of these URLs.
    mirrors: tuple[str, ...] = ()
    download_attempts: int = 5
    retry_backoff_s: float = 0.5
    health_timeout_s: float = 120.0
    health_prompt: str = "Hello"
    health_tokens: int = 4
    # When a scheduled update is deferred (battery, heat), try again after this long.
    retry_interval_s: float = 900.0

    @property
    def enabled(self) -> bool:
        return bool(self.repository)


_KEYS = {
    "repository",
    "channel",
    "trusted_keys",
    "threshold",
    "check_interval",
    "jitter",
    "maintenance_window",
    "auto_apply",
    "min_battery",
    "max_thermal",
    "report_url",
    "device_id",
    "artifacts",
    "max_artifact_size",
    "max_metadata_size",
    "download_timeout",
    "download_min_rate",
    "download_deadline",
    "mirrors",
    "download_attempts",
    "retry_backoff",
    "health_timeout",
    "health_prompt",
    "health_tokens",
    "retry_interval",
}


def _http_url(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise _bad(key, "expected an http:// or https:// URL", value)
    if not value:
        return ""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise _bad(key, "expected an http:// or https:// URL", value)
    return value.rstrip("/")


def _load_key(spec: object, base: Path) -> bytes:
    if not isinstance(spec, str) or not spec.strip():
        raise _bad("trusted_keys", "each key is 'ed25519:<hex>' or a path to a .pub file", spec)
    if spec.strip().startswith("ed25519:"):
        try:
            return parse_public_key(spec)
        except InvalidArgument as e:
            raise _bad("trusted_keys", e.message, spec) from e
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = base / path
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise _bad("trusted_keys", f"cannot read key file {path}: {e.strerror or e}", spec) from e
    try:
        return parse_public_key(text)
    except InvalidArgument as e:
        raise _bad("trusted_keys", f"{path}: {e.message}", spec) from e


def load_config(section: object, config_dir: Path) -> UpdatesConfig:
    """Validate the [updates] table (`settings.extra["updates"]`); relative key file
    paths are relative to the config folder."""
    if section is None:
        return UpdatesConfig()
    if not isinstance(section, dict):
        raise InvalidArgument("[updates] must be a table", field="updates", reason="BAD_CONFIG")
    unknown = set(section) - _KEYS
    if unknown:
        raise _bad(
            next(iter(sorted(unknown))),
            f"unknown setting; known: {', '.join(sorted(_KEYS))}",
            section[next(iter(sorted(unknown)))],
        )
    s = section
    repository = _http_url("repository", s.get("repository", ""))
    channel = s.get("channel", "stable")
    if not isinstance(channel, str) or not CHANNEL_RE.match(channel):
        raise _bad("channel", "expected a channel name like stable or beta", channel)
    keys_value = s.get("trusted_keys", [])
    if isinstance(keys_value, str):
        keys_value = [keys_value]
    if not isinstance(keys_value, list):
        raise _bad("trusted_keys", "expected a list of keys or key files", keys_value)
    threshold = s.get("threshold", 1)
    if isinstance(threshold, bool) or not isinstance(threshold, int):
        raise _bad("threshold", "expected an integer", threshold)
    trust = None
    if keys_value:
        keys = [_load_key(k, config_dir) for k in keys_value]
        try:
            trust = Trust.from_keys(keys, threshold)
        except InvalidArgument as e:
            raise _bad("threshold", e.message, threshold) from e
    if repository and trust is None:
        raise _bad("trusted_keys", "a repository needs at least one trusted key", keys_value)

    def number(key: str, default: int, low: int, high: int) -> int:
        value = s.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _bad(key, f"expected an integer from {low} to {high}", value)
        return value

    def flag(key: str, default: bool) -> bool:
        value = s.get(key, default)
        if not isinstance(value, bool):
            raise _bad(key, "expected true or false", value)
        return value

    max_thermal = s.get("max_thermal", "serious")
    if max_thermal not in THERMAL_STATES:
        raise _bad("max_thermal", f"expected one of {', '.join(THERMAL_STATES)}", max_thermal)
    artifacts = s.get("artifacts", [])
    if not isinstance(artifacts, list) or not all(
        isinstance(a, str) and ID_RE.match(a) for a in artifacts
    ):
        raise _bad("artifacts", "expected a list of artifact ids", artifacts)
    device_id = s.get("device_id", "")
    if not isinstance(device_id, str) or len(device_id) > 256:
        raise _bad("device_id", "expected a string of at most 256 characters", device_id)
    mirrors = s.get("mirrors", [])
    if not isinstance(mirrors, list):
        raise _bad("mirrors", "expected a list of http:// or https:// URLs", mirrors)
    mirrors = [_http_url("mirrors", m) for m in mirrors]
    if "" in mirrors:
        raise _bad("mirrors", "expected a list of http:// or https:// URLs", mirrors)
    min_rate = s.get("download_min_rate", "4KiB")
    prompt = s.get("health_prompt", "Hello")
    if not isinstance(prompt, str) or not prompt:
        raise _bad("health_prompt", "expected a non-empty string", prompt)
    return UpdatesConfig(
        repository=repository,
        channel=channel,
        trust=trust,
        check_interval_s=parse_duration(s.get("check_interval", "6h"), "check_interval"),
        jitter_s=parse_duration(s.get("jitter", "30m"), "jitter"),
        window=parse_window(s.get("maintenance_window", "")),
        auto_apply=flag("auto_apply", True),
        min_battery=number("min_battery", 30, 0, 100),
        max_thermal=max_thermal,
        report_url=_http_url("report_url", s.get("report_url", "")),
        device_id=device_id,
        artifacts=tuple(artifacts),
        max_artifact_bytes=parse_size(s.get("max_artifact_size", "64GiB"), "max_artifact_size"),
        max_metadata_bytes=parse_size(s.get("max_metadata_size", "4MiB"), "max_metadata_size"),
        download_timeout_s=max(
            0.1, parse_duration(s.get("download_timeout", 60), "download_timeout")
        ),
        download_min_rate=0 if min_rate == 0 else parse_size(min_rate, "download_min_rate"),
        download_deadline_s=max(
            1.0, parse_duration(s.get("download_deadline", "12h"), "download_deadline")
        ),
        mirrors=tuple(mirrors),
        download_attempts=number("download_attempts", 5, 1, 100),
        retry_backoff_s=parse_duration(s.get("retry_backoff", 0.5), "retry_backoff"),
        health_timeout_s=max(1.0, parse_duration(s.get("health_timeout", 120), "health_timeout")),
        health_prompt=prompt,
        health_tokens=number("health_tokens", 4, 1, 256),
        retry_interval_s=parse_duration(s.get("retry_interval", "15m"), "retry_interval"),
    )

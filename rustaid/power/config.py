"""The `[power]` section of rustaid.toml: where to read the device's state and the
thresholds that turn readings into states. Every key is optional."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from rustaid.errors import InvalidArgument

DEFAULT_SYSTEM_BUS = "unix:path=/run/dbus/system_bus_socket"


@dataclass(frozen=True)
class PowerConfig:
    # Roots of the kernel's pseudo file systems (tests point them at a fake tree).
    sys_root: Path = Path("/sys")
    proc_root: Path = Path("/proc")
    # "" -> $DBUS_SYSTEM_BUS_ADDRESS -> unix:path=/run/dbus/system_bus_socket
    system_bus_address: str = ""
    # Event sources; off means "not used", reported as unavailable.
    dbus: bool = True
    udev: bool = True
    psi_trigger: bool = True
    # Thermal zones have no events: read them this often while generating / idle.
    poll_active_s: float = 2.0
    poll_idle_s: float = 30.0
    # Temperatures, throttling and memory pressure alone (a few small files) are read
    # this often, so heat is seen within a second even while idle; a change re-reads all.
    poll_quick_s: float = 1.0
    # Take fewer inference threads while other processes keep cores busy (for seconds).
    share_cpu: bool = True
    # A reading older than this is refreshed before a decision (request, GetSnapshot).
    max_age_s: float = 1.0
    # Power profiles.
    default_profile: str = "balanced"
    follow_power_profiles_daemon: bool = True
    low_battery_percent: float = 20.0
    critical_battery_percent: float = 10.0
    # Hold the system "performance" profile during long interactive generations on AC.
    hold_performance: bool = False
    hold_min_tokens: int = 256
    # Thermal state from trip points (degrees C).
    near_critical_c: float = 5.0
    fair_margin_c: float = 10.0
    hysteresis_c: float = 2.0
    # For zones without usable trip points.
    fallback_fair_c: float = 70.0
    fallback_serious_c: float = 80.0
    fallback_critical_c: float = 90.0
    # A zone heating fast enough to reach its Serious or Critical threshold within this
    # many seconds counts as there already for the policy (0: off).
    rise_horizon_s: float = 5.0
    # Memory pressure: PSI avg10 percentages and available-memory percentages.
    psi_warning_some: float = 10.0
    psi_critical_some: float = 40.0
    psi_critical_full: float = 10.0
    available_warning_percent: float = 15.0
    available_critical_percent: float = 5.0
    # Unload idle models (largest first) while memory pressure is critical.
    evict_on_critical_pressure: bool = True
    eviction_settle_s: float = 5.0

    @property
    def bus_address(self) -> str:
        return (
            self.system_bus_address
            or os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", "")
            or DEFAULT_SYSTEM_BUS
        )


_PROFILES = ("performance", "balanced", "power_saver", "ultra_saver")

# What the event sources (the bus connection, udev, the PSI trigger) are started with:
# a reload that changes one of these restarts them.
EVENT_SOURCE_KEYS = ("sys_root", "proc_root", "system_bus_address", "dbus", "udev", "psi_trigger")


def power_config(section: Any) -> PowerConfig:
    """Build the config from the `[power]` table; InvalidArgument names the bad key."""
    if section is None:
        return PowerConfig()
    if not isinstance(section, dict):
        raise InvalidArgument("[power] must be a table of settings", field="power")
    known = {f.name: f for f in fields(PowerConfig)}
    values: dict[str, Any] = {}
    for key, value in section.items():
        f = known.get(key)
        if f is None:
            raise InvalidArgument(
                f"power.{key} is not a setting; known: {', '.join(sorted(known))}",
                field=f"power.{key}",
            )
        values[key] = _coerce(key, f.type, value)
    config = PowerConfig(**values)
    _validate(config)
    return config


def _coerce(key: str, kind: object, value: Any) -> Any:
    def bad(expected: str) -> InvalidArgument:
        return InvalidArgument(
            f"power.{key}: expected {expected} (got {value!r})", field=f"power.{key}"
        )

    if kind == "Path":
        if not isinstance(value, str) or not value.startswith("/"):
            raise bad("an absolute path")
        return Path(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad("a number")
        return float(value)
    if not isinstance(value, str):
        raise bad("a string")
    return value


def _validate(c: PowerConfig) -> None:
    def bad(key: str, why: str) -> InvalidArgument:
        return InvalidArgument(f"power.{key} {why}", field=f"power.{key}")

    # power-profiles-daemon's spelling (power-saver) or ours (power_saver): both mean it.
    if c.default_profile.replace("-", "_") not in _PROFILES:
        names = ", ".join(p.replace("_", "-") for p in _PROFILES)
        raise bad("default_profile", f"must be one of {names} (got {c.default_profile!r})")
    for key in ("poll_active_s", "poll_idle_s", "poll_quick_s", "max_age_s", "eviction_settle_s"):
        value = getattr(c, key)
        if not 0.01 <= value <= 3600:
            raise bad(key, f"must be between 0.01 and 3600 seconds (got {value})")
    for key in (
        "low_battery_percent",
        "critical_battery_percent",
        "available_warning_percent",
        "available_critical_percent",
        "psi_warning_some",
        "psi_critical_some",
        "psi_critical_full",
    ):
        value = getattr(c, key)
        if not 0 <= value <= 100:
            raise bad(key, f"must be a percentage between 0 and 100 (got {value})")
    if c.critical_battery_percent > c.low_battery_percent:
        raise bad("critical_battery_percent", "must not exceed power.low_battery_percent")
    if c.available_critical_percent > c.available_warning_percent:
        raise bad("available_critical_percent", "must not exceed power.available_warning_percent")
    if c.psi_warning_some > c.psi_critical_some:
        raise bad("psi_warning_some", "must not exceed power.psi_critical_some")
    if not c.fallback_fair_c <= c.fallback_serious_c <= c.fallback_critical_c:
        raise bad("fallback_serious_c", "must lie between fallback_fair_c and fallback_critical_c")
    for key in ("near_critical_c", "fair_margin_c", "hysteresis_c"):
        if not 0 <= getattr(c, key) <= 50:
            raise bad(key, "must be between 0 and 50 degrees")
    if not 0 <= c.rise_horizon_s <= 60:
        raise bad("rise_horizon_s", f"must be between 0 and 60 seconds (got {c.rise_horizon_s})")
    if c.hold_min_tokens < 1:
        raise bad("hold_min_tokens", "must be >= 1")

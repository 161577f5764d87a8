"""The thermal state (Nominal, Fair, Serious, Critical) from zone temperatures, their
trip points and the Raspberry Pi firmware's throttling flags.

Per zone, with the zone's own trip points:

- Critical: within `near_critical_c` (5 C) of its `critical` trip, or at its `hot` trip;
- Serious: at or above its `passive` trip (where the kernel starts throttling);
- Fair: within `fair_margin_c` (10 C) below the Serious threshold.

A zone without a passive trip uses `fallback_serious_c` (80 C, where a Raspberry Pi's
firmware starts to throttle), capped at its Critical threshold; a zone without usable
trips uses the fallbacks (70 / 80 / 90 C). The device's state is its hottest zone's.

Firmware flags: throttled or at the soft temperature limit -> Serious; under-voltage
(get_throttled bit 0 or an hwmon in0_lcrit_alarm) -> Serious; frequency capped -> Fair.

Going down, a state is kept until the temperature falls below its threshold by the
trip's hysteresis (or `hysteresis_c`), so a zone hovering at a trip does not flap.

Rising fast: a zone heating at least `MIN_RISE_C_S` whose temperature, at its current
rate, reaches its Serious or Critical threshold within `rise_horizon_s` (5 s) gives the
state it is heading for (`rising_state`), so the policy acts before the trip point.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rustaid.power.config import PowerConfig
from rustaid.power.snapshot import ThermalState, ThermalZone, Throttling

# Slower rises (sensor noise, a slow warm-up) are left to the thresholds themselves.
MIN_RISE_C_S = 0.25


@dataclass(frozen=True)
class _Thresholds:
    fair: float
    serious: float
    critical: float
    hysteresis: float
    critical_why: str
    serious_why: str


def _thresholds(zone: ThermalZone, c: PowerConfig) -> _Thresholds:
    crit = [t for t in zone.trip_points if t.type == "critical"]
    hot = [t for t in zone.trip_points if t.type == "hot"]
    passive = [t for t in zone.trip_points if t.type == "passive"]
    hyst = [t.hysteresis_c for t in zone.trip_points if t.hysteresis_c > 0]
    critical, critical_why = c.fallback_critical_c, f"the default limit {c.fallback_critical_c:g} C"
    if crit:
        trip = min(t.temperature_c for t in crit)
        critical = trip - c.near_critical_c
        critical_why = f"within {c.near_critical_c:g} C of its critical trip {trip:g} C"
    if hot:
        trip = min(t.temperature_c for t in hot)
        if trip < critical:
            critical, critical_why = trip, f"at its hot trip {trip:g} C"
    if passive:
        serious = min(t.temperature_c for t in passive)
        serious_why = f"at or above its passive trip {serious:g} C"
    else:
        serious = min(c.fallback_serious_c, critical)
        serious_why = f"at or above {serious:g} C (no passive trip)"
    serious = min(serious, critical)
    fair = c.fallback_fair_c if not zone.trip_points else serious - c.fair_margin_c
    return _Thresholds(
        fair=min(fair, serious),
        serious=serious,
        critical=critical,
        hysteresis=max(hyst) if hyst else c.hysteresis_c,
        critical_why=critical_why,
        serious_why=serious_why,
    )


def _zone_state(zone: ThermalZone, th: _Thresholds, lower_by: float) -> tuple[ThermalState, str]:
    t = zone.temperature_c
    where = f"{zone.type or zone.name} at {t:.1f} C"
    if t >= th.critical - lower_by:
        return ThermalState.CRITICAL, f"{where}, {th.critical_why}"
    if t >= th.serious - lower_by:
        return ThermalState.SERIOUS, f"{where}, {th.serious_why}"
    if t >= th.fair - lower_by:
        return ThermalState.FAIR, f"{where}, within {th.serious - th.fair:g} C of throttling"
    return ThermalState.NOMINAL, ""


def _throttling_state(t: Throttling | None) -> tuple[ThermalState, str]:
    if t is None:
        return ThermalState.NOMINAL, ""
    if t.throttled or t.soft_temperature_limit:
        what = "throttled" if t.throttled else "at its soft temperature limit"
        return ThermalState.SERIOUS, f"the firmware reports the CPU {what}"
    if t.under_voltage:
        return ThermalState.SERIOUS, "under-voltage: the power supply cannot keep up"
    if t.frequency_capped:
        return ThermalState.FAIR, "the firmware capped the CPU frequency"
    return ThermalState.NOMINAL, ""


def thermal_state(
    zones: Sequence[ThermalZone],
    throttling: Throttling | None,
    config: PowerConfig,
    previous: ThermalState = ThermalState.NOMINAL,
) -> tuple[ThermalState, str]:
    """The device's thermal state and why; `previous` applies hysteresis going down."""
    best: tuple[ThermalState, str] = _throttling_state(throttling)
    kept: tuple[ThermalState, str] = best
    for zone in zones:
        th = _thresholds(zone, config)
        now = _zone_state(zone, th, 0.0)
        if now[0] > best[0]:
            best = now
        lowered = _zone_state(zone, th, th.hysteresis)
        if lowered[0] > kept[0]:
            kept = lowered
    if best[0] >= previous:
        return best
    # Cooling down: no lower than the previous state while within the hysteresis band.
    state = min(previous, kept[0])
    if state <= best[0]:
        return best
    return state, f"{kept[1]} (cooling down, within the hysteresis)"


def rising_state(
    zones: Sequence[ThermalZone], slopes: Mapping[str, float], config: PowerConfig
) -> tuple[ThermalState, str]:
    """The Serious or Critical state a fast-heating zone reaches within
    `rise_horizon_s` at its current rate, and why (NOMINAL, "" when none does)."""
    best: tuple[ThermalState, str] = (ThermalState.NOMINAL, "")
    horizon = config.rise_horizon_s
    for zone in zones:
        rate = slopes.get(zone.name, 0.0)
        if horizon <= 0 or rate < MIN_RISE_C_S:
            continue
        th = _thresholds(zone, config)
        t = zone.temperature_c
        for state, limit, why in (
            (ThermalState.CRITICAL, th.critical, th.critical_why),
            (ThermalState.SERIOUS, th.serious, th.serious_why),
        ):
            if t < limit <= t + rate * horizon and state > best[0]:
                eta = (limit - t) / rate
                where = f"{zone.type or zone.name} at {t:.1f} C rising {rate:.1f} C/s"
                best = state, f"{where}, {why.replace('at or above', 'reaching')} in {eta:.1f} s"
                break
    return best

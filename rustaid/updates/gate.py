"""Power gating, as fwupd does it: no update on a low battery or a hot device.

The updater only needs one call, `power_ok() -> (ok, reason)`. Whatever knows the
device's power state (the resource monitor, a D-Bus UPower reader, a test) provides
it; without one every update is allowed. `gate_from_state` builds that call from a
reader of the raw state plus the [updates] thresholds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rustaid.updates.config import THERMAL_STATES, UpdatesConfig

PowerOk = Callable[[], tuple[bool, str]]


@dataclass(frozen=True)
class PowerState:
    on_battery: bool = False
    # Battery charge in percent; None when unknown or there is no battery.
    battery_percent: float | None = None
    # One of nominal, fair, serious, critical; "" when unknown.
    thermal: str = ""


def always_ok() -> tuple[bool, str]:
    return True, ""


def gate_from_state(
    read: Callable[[], PowerState], *, min_battery: int = 30, max_thermal: str = "serious"
) -> PowerOk:
    """Refuse on battery below `min_battery` percent, or at `max_thermal` or hotter.

    A reader that raises refuses too (with its error): an update is never worth
    bricking a device whose state cannot be read; `force` overrides.
    """
    limit = THERMAL_STATES.index(max_thermal)

    def power_ok() -> tuple[bool, str]:
        try:
            state = read()
        except Exception as e:
            return False, f"cannot read the power state: {e}"
        if (
            state.on_battery
            and state.battery_percent is not None
            and state.battery_percent < min_battery
        ):
            return False, (
                f"on battery at {state.battery_percent:.0f} %, below the {min_battery} % "
                "needed for an update (plug in the charger, or force it)"
            )
        if state.thermal in THERMAL_STATES and THERMAL_STATES.index(state.thermal) >= limit:
            return False, f"thermal state is {state.thermal}: the device is too hot to update"
        return True, ""

    return power_ok


def gate_from_config(
    read: Callable[[], PowerState], config: Callable[[], UpdatesConfig]
) -> PowerOk:
    """`gate_from_state` with the thresholds of the `[updates]` settings in force at each
    call, so a reload that changes `min_battery` or `max_thermal` applies at once."""

    def power_ok() -> tuple[bool, str]:
        c = config()
        return gate_from_state(read, min_battery=c.min_battery, max_thermal=c.max_thermal)()

    return power_ok


def state_from_snapshot(snapshot: object) -> PowerState:
    """A PowerState from the resource monitor's snapshot (rustaid.power): its
    `power.on_battery`, `power.battery_present`, `power.battery_percent` and
    `thermal.state` (an enum named NOMINAL, FAIR, SERIOUS or CRITICAL)."""
    power = getattr(snapshot, "power", None)
    thermal = getattr(snapshot, "thermal", None)
    present = bool(getattr(power, "battery_present", False))
    percent = getattr(power, "battery_percent", None) if present else None
    state = getattr(thermal, "state", None)
    name = str(getattr(state, "name", "")).lower()
    return PowerState(
        on_battery=present and bool(getattr(power, "on_battery", False)),
        battery_percent=float(percent) if isinstance(percent, int | float) else None,
        thermal=name if name in THERMAL_STATES else "",
    )

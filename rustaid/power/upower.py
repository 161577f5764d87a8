"""UPower on the system bus: the battery as the desktop sees it (its DisplayDevice, a
composite of all system batteries) and whether the machine runs on battery."""

from __future__ import annotations

import logging
import math
from typing import Any

from rustaid.power.dbus import BusWatcher
from rustaid.power.snapshot import BatteryState, PowerStatus

log = logging.getLogger(__name__)

NAME = "org.freedesktop.UPower"
PATH = "/org/freedesktop/UPower"
INTERFACE = "org.freedesktop.UPower"
DISPLAY_DEVICE = "/org/freedesktop/UPower/devices/DisplayDevice"
DEVICE_INTERFACE = "org.freedesktop.UPower.Device"

# UPower's Device.State.
_STATE = {
    1: BatteryState.CHARGING,
    2: BatteryState.DISCHARGING,
    3: BatteryState.EMPTY,
    4: BatteryState.FULL,
    5: BatteryState.CHARGING,  # pending charge
    6: BatteryState.DISCHARGING,  # pending discharge
}
# Device.Type values that are a system power source.
_BATTERY_TYPES = (2, 3)  # battery, UPS


def _number(props: dict[str, Any], key: str, lo: float, hi: float) -> float:
    value = props.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    if not math.isfinite(value) or not lo <= value <= hi:
        return 0.0
    return float(value)


class UPowerWatcher(BusWatcher):
    names = (NAME,)
    paths = {NAME: (PATH, DISPLAY_DEVICE)}

    def __init__(self) -> None:
        super().__init__()
        self.present = False
        self.daemon: dict[str, Any] = {}
        self.device: dict[str, Any] = {}

    async def appeared(self, name: str) -> None:
        assert self.client is not None
        daemon = await self.client.get_all(NAME, PATH, INTERFACE)
        device = await self.client.get_all(NAME, DISPLAY_DEVICE, DEVICE_INTERFACE)
        self.daemon, self.device, self.present = daemon, device, True

    def vanished(self, name: str) -> None:
        self.present = False
        self.daemon, self.device = {}, {}

    def properties_changed(
        self, name: str, path: str, interface: str, changed: dict[str, Any]
    ) -> None:
        if path == PATH and interface == INTERFACE:
            self.daemon.update(changed)
        elif path == DISPLAY_DEVICE and interface == DEVICE_INTERFACE:
            self.device.update(changed)
        log.debug("UPower %s changed: %s", path, changed)

    def status(self) -> PowerStatus | None:
        """The power status from UPower, None while it is not on the bus."""
        if not self.present:
            return None
        d = self.device
        kind = int(_number(d, "Type", 0, 100))
        present = bool(d.get("IsPresent", False)) and kind in _BATTERY_TYPES
        on_battery = bool(self.daemon.get("OnBattery", False))
        if not present:
            return PowerStatus(ac_online=not on_battery, on_battery=on_battery, source="upower")
        state = _STATE.get(int(_number(d, "State", 0, 100)), BatteryState.UNKNOWN)
        rate = _number(d, "EnergyRate", 0, 1000)
        return PowerStatus(
            battery_present=True,
            on_battery=on_battery,
            ac_online=not on_battery,
            battery_percent=_number(d, "Percentage", 0, 100),
            battery_state=state,
            time_to_empty_s=_number(d, "TimeToEmpty", 0, 10 * 365 * 86400),
            power_draw_w=rate if on_battery or state is BatteryState.DISCHARGING else 0.0,
            warning_level=int(_number(d, "WarningLevel", 0, 100)),
            energy_full_wh=_number(d, "EnergyFull", 0, 100_000),
            source="upower",
        )

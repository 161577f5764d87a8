"""power-profiles-daemon on the system bus: the system's active profile, and holding
the `performance` profile while a long interactive generation runs.

Newer versions own `org.freedesktop.UPower.PowerProfiles`; older ones only
`net.hadess.PowerProfiles`. Both are followed; the first present wins.
"""

from __future__ import annotations

import logging
from typing import Any

from rustaid.power.dbus import BusError, BusWatcher

log = logging.getLogger(__name__)

LOCATIONS = {
    "org.freedesktop.UPower.PowerProfiles": (
        "/org/freedesktop/UPower/PowerProfiles",
        "org.freedesktop.UPower.PowerProfiles",
    ),
    "net.hadess.PowerProfiles": ("/net/hadess/PowerProfiles", "net.hadess.PowerProfiles"),
}
PROFILES = ("power-saver", "balanced", "performance")
APP_ID = "rustaid"


class PowerProfilesWatcher(BusWatcher):
    names = tuple(LOCATIONS)
    paths = {name: (path,) for name, (path, _) in LOCATIONS.items()}

    def __init__(self) -> None:
        super().__init__()
        # Per present name: its properties.
        self.props: dict[str, dict[str, Any]] = {}

    @property
    def present(self) -> bool:
        return bool(self.props)

    @property
    def name(self) -> str:
        return next((n for n in self.names if n in self.props), "")

    @property
    def active_profile(self) -> str:
        """power-saver, balanced or performance; "" while absent or unknown."""
        value = self.props.get(self.name, {}).get("ActiveProfile", "")
        if value and value not in PROFILES:
            return ""
        return str(value)

    @property
    def performance_degraded(self) -> str:
        return str(self.props.get(self.name, {}).get("PerformanceDegraded", ""))

    async def appeared(self, name: str) -> None:
        assert self.client is not None
        path, interface = LOCATIONS[name]
        self.props[name] = await self.client.get_all(name, path, interface)
        log.info("power-profiles-daemon (%s): active profile %s", name, self.active_profile)

    def vanished(self, name: str) -> None:
        self.props.pop(name, None)

    def properties_changed(
        self, name: str, path: str, interface: str, changed: dict[str, Any]
    ) -> None:
        if interface == LOCATIONS[name][1]:
            self.props.setdefault(name, {}).update(changed)
            if "ActiveProfile" in changed:
                log.info("system power profile is now %s", changed["ActiveProfile"])

    async def hold(self, profile: str, reason: str) -> tuple[str, int]:
        """HoldProfile; returns (name it was held on, cookie) for `release`."""
        name = self.name
        if not name or self.client is None:
            raise BusError("power-profiles-daemon is not running")
        path, interface = LOCATIONS[name]
        body = await self.client.call(
            name, path, interface, "HoldProfile", "sss", [profile, reason, APP_ID]
        )
        return name, int(body[0])

    async def release(self, name: str, cookie: int) -> None:
        if self.client is None or name not in self.props:
            return  # it left the bus: its holds went with it
        path, interface = LOCATIONS[name]
        await self.client.call(name, path, interface, "ReleaseProfile", "u", [cookie])

"""udev events for power supplies and thermal zones (pyudev), when udevd runs: a
charger plugged in, a battery changing state, a thermal zone crossing a trip point.
Each event makes the monitor re-read sysfs at once instead of at its next poll."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SUBSYSTEMS = ("power_supply", "thermal")
# udevd's control socket: present while it runs.
UDEV_CONTROL = Path("/run/udev/control")


class UdevWatcher:
    def __init__(self, sys_root: Path, on_event: Callable[[str], None]) -> None:
        self.sys_root = sys_root
        self.on_event = on_event
        self.error = ""
        self._monitor: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> bool:
        """Listen; False (and `error`) when there is nothing to listen to."""
        if self.sys_root != Path("/sys"):
            self.error = f"udev describes /sys, not {self.sys_root}"
            return False
        if not UDEV_CONTROL.exists():
            self.error = "udevd is not running"
            return False
        try:
            import pyudev

            context = pyudev.Context()
            monitor = pyudev.Monitor.from_netlink(context)
            for subsystem in SUBSYSTEMS:
                monitor.filter_by(subsystem)
            monitor.start()
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(monitor.fileno(), self._ready)
        except Exception as e:  # no libudev, no netlink permission
            self.error = f"cannot listen to udev: {e}"
            return False
        self._monitor = monitor
        return True

    def _ready(self) -> None:
        while True:
            try:
                device = self._monitor.poll(timeout=0)
            except Exception as e:
                log.warning("udev monitor failed, falling back to polling: %s", e)
                self.error = f"udev monitor failed: {e}"
                self.stop()
                return
            if device is None:
                return
            log.debug("udev %s event: %s", device.action, device.sys_path)
            self.on_event(str(device.subsystem))

    def stop(self) -> None:
        if self._monitor is not None and self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._monitor.fileno())
        self._monitor = None

    @property
    def active(self) -> bool:
        return self._monitor is not None

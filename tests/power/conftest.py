"""Fixtures for the power tests: a fake sysfs/proc tree, a private system bus with
dbusmock's UPower and power-profiles-daemon, and monitors wired to them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from rustaid.power.config import PowerConfig
from rustaid.power.monitor import ResourceMonitor
from tests.power.bus import PPD, UPOWER, BusDriver, DbusMock, PrivateSystemBus, private_bus
from tests.power.fakesys import FakeDevice


@pytest.fixture
def dev(tmp_path: Path) -> FakeDevice:
    return FakeDevice(tmp_path / "device")


@pytest.fixture
def bus() -> Iterator[tuple[PrivateSystemBus, BusDriver]]:
    with private_bus() as pair:
        yield pair


@pytest.fixture
def upower(bus: tuple[PrivateSystemBus, BusDriver]) -> Iterator[DbusMock]:
    mock = DbusMock(bus[0], "upower", UPOWER)
    mock.start(bus[1])
    yield mock
    mock.stop()


@pytest.fixture
def ppd(bus: tuple[PrivateSystemBus, BusDriver]) -> Iterator[DbusMock]:
    mock = DbusMock(bus[0], "power_profiles_daemon", PPD)
    mock.start(bus[1])
    yield mock
    mock.stop()


def config_for(dev: FakeDevice, bus_address: str = "", **values: Any) -> PowerConfig:
    defaults: dict[str, Any] = {
        "sys_root": dev.sys,
        "proc_root": dev.proc,
        "system_bus_address": bus_address or "unix:path=/nonexistent/bus",
        "dbus": bool(bus_address),
        "poll_idle_s": 30.0,
        "poll_active_s": 2.0,
    }
    return PowerConfig(**{**defaults, **values})


@asynccontextmanager
async def running_monitor(config: PowerConfig, state_dir: Path | None = None,
                          cores: int = 4) -> AsyncIterator[ResourceMonitor]:  # fmt: skip
    monitor = ResourceMonitor(config, state_dir=state_dir, cores=cores)
    monitor.start()
    await monitor.start_event_sources()
    try:
        yield monitor
    finally:
        await monitor.stop()


async def until(check: Callable[[], Any], within: float = 1.0) -> float:
    """Await until `check()` is truthy (the event loop keeps running); the seconds it
    took, or AssertionError after `within` seconds."""
    t0 = time.monotonic()
    while True:
        value = check()
        if value:
            return time.monotonic() - t0
        if time.monotonic() - t0 > within:
            raise AssertionError(f"not within {within} s: last value {value!r}")
        await asyncio.sleep(0.01)

"""Power gating as fwupd does it, against a real D-Bus: python-dbusmock's upower
template on a private bus. The updater's power check reads UPower's OnBattery and the
display device's Percentage over that bus, as the daemon's monitor does."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rustaid.errors import PreconditionFailed
from rustaid.testing.daemon import isolated_settings, running_daemon
from rustaid.updates.gate import PowerState, gate_from_state, state_from_snapshot
from tests.updates.conftest import Publisher, updates_config, write_config

DBUSMOCK_PYTHON = "/usr/bin/python3"  # dbusmock is a Debian package (python3-dbusmock)
UPOWER = "org.freedesktop.UPower"
DISPLAY = "/org/freedesktop/UPower/devices/DisplayDevice"


def _have_dbusmock() -> bool:
    if shutil.which("dbus-daemon") is None or not Path(DBUSMOCK_PYTHON).exists():
        return False
    probe = subprocess.run([DBUSMOCK_PYTHON, "-c", "import dbusmock"], capture_output=True)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(
    not _have_dbusmock(), reason="needs dbus-daemon and python3-dbusmock (make system-deps)"
)


@pytest.fixture
def upower(tmp_path: Path) -> Iterator[str]:
    """A private session bus with dbusmock's upower template on it; yields its address."""
    bus = subprocess.Popen(
        ["dbus-daemon", "--session", "--nofork", "--print-address=1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert bus.stdout is not None
    address = bus.stdout.readline().strip()
    env = {**os.environ, "DBUS_SESSION_BUS_ADDRESS": address}
    mock = subprocess.Popen(
        [
            DBUSMOCK_PYTHON,
            "-m",
            "dbusmock",
            "--session",
            "--template",
            "upower",
            "--parameters",
            '{"OnBattery": true}',
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        asyncio.run(_wait_for_name(address))
        yield address
    finally:
        for proc in (mock, bus):
            proc.terminate()
            proc.wait(10)
        bus.stdout.close()


async def _bus(address: str):  # type: ignore[no-untyped-def]
    from dbus_next.aio import MessageBus

    return await MessageBus(bus_address=address).connect()


async def _wait_for_name(address: str) -> None:
    bus = await _bus(address)
    try:
        deadline = time.monotonic() + 20
        while True:
            introspection = await bus.introspect("org.freedesktop.DBus", "/org/freedesktop/DBus")
            proxy = bus.get_proxy_object(
                "org.freedesktop.DBus", "/org/freedesktop/DBus", introspection
            )
            names = await proxy.get_interface("org.freedesktop.DBus").call_list_names()
            if UPOWER in names:
                return
            assert time.monotonic() < deadline, "dbusmock did not come up"
            await asyncio.sleep(0.05)
    finally:
        bus.disconnect()


async def _call(
    address: str, path: str, interface: str, member: str, signature: str, body: list[object]
) -> None:
    from dbus_next import Message, MessageType

    bus = await _bus(address)
    try:
        reply = await bus.call(
            Message(
                destination=UPOWER,
                path=path,
                interface=interface,
                member=member,
                signature=signature,
                body=body,
            )
        )
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
    finally:
        bus.disconnect()


async def set_battery(address: str, *, on_battery: bool, percent: float) -> None:
    from dbus_next import Variant

    await _call(
        address,
        "/org/freedesktop/UPower",
        "org.freedesktop.DBus.Properties",
        "Set",
        "ssv",
        [UPOWER, "OnBattery", Variant("b", on_battery)],
    )
    state = 2 if on_battery else 1  # discharging / charging
    await _call(
        address,
        "/org/freedesktop/UPower",
        "org.freedesktop.DBus.Mock",
        "SetupDisplayDevice",
        "uuddddxxbsu",
        [2, state, percent, percent, 100.0, 8.5, 3600, 0, True, "battery", 1],
    )


def read_upower(address: str) -> PowerState:
    """OnBattery and the display device's Percentage, read over D-Bus."""

    async def read() -> PowerState:
        from dbus_next import Message

        bus = await _bus(address)
        try:

            async def get(path: str, interface: str, name: str) -> object:
                reply = await bus.call(
                    Message(
                        destination=UPOWER,
                        path=path,
                        interface="org.freedesktop.DBus.Properties",
                        member="Get",
                        signature="ss",
                        body=[interface, name],
                    )
                )
                return reply.body[0].value

            on_battery = await get("/org/freedesktop/UPower", UPOWER, "OnBattery")
            percent = await get(DISPLAY, "org.freedesktop.UPower.Device", "Percentage")
        finally:
            bus.disconnect()
        return PowerState(on_battery=bool(on_battery), battery_percent=float(percent))  # type: ignore[arg-type]

    return asyncio.run(read())


async def test_update_refused_on_battery_then_allowed_on_ac(
    upower: str, tmp_path: Path, publisher: Publisher, models: dict[str, Path]
) -> None:
    data = tmp_path / "data"
    write_config(data, updates_config(publisher.url, publisher.keys[:1], min_battery=30))
    publisher.release(models["v1"], "1.0")
    await set_battery(upower, on_battery=True, percent=12.0)
    async with running_daemon(isolated_settings(data)) as d:
        cfg = d.updates.config  # type: ignore[attr-defined]
        d.updates.power_ok = gate_from_state(  # type: ignore[attr-defined]
            lambda: read_upower(upower), min_battery=cfg.min_battery, max_thermal=cfg.max_thermal
        )
        with pytest.raises(PreconditionFailed) as e:
            await d.updates.apply(wait=True)  # type: ignore[attr-defined]
        assert e.value.reason == "POWER_GATE"
        assert "on battery at 12 %, below the 30 % needed" in e.value.message
        assert "set force" in e.value.message
        assert "12 %" in d.updates.status().message  # type: ignore[attr-defined]
        assert d.updates.installed() == []  # type: ignore[attr-defined]
        # On battery but charged enough: allowed.
        await set_battery(upower, on_battery=True, percent=80.0)
        _, (record,) = await d.updates.apply(wait=True)  # type: ignore[attr-defined]
        assert record.outcome == "committed"
        # Low, but plugged in: allowed too.
        await set_battery(upower, on_battery=False, percent=5.0)
        publisher.release(models["v2"], "2.0")
        _, (record,) = await d.updates.apply(wait=True)  # type: ignore[attr-defined]
        assert record.outcome == "committed"


def test_gate_rules() -> None:
    def gate(state: PowerState) -> tuple[bool, str]:
        return gate_from_state(lambda: state, min_battery=30, max_thermal="serious")()

    assert gate(PowerState()) == (True, "")
    assert gate(PowerState(on_battery=True, battery_percent=30))[0]
    assert not gate(PowerState(on_battery=True, battery_percent=29.4))[0]
    assert gate(PowerState(on_battery=False, battery_percent=1))[0]
    assert gate(PowerState(thermal="fair"))[0]
    ok, why = gate(PowerState(thermal="serious"))
    assert not ok and "thermal state is serious" in why
    assert not gate(PowerState(thermal="critical"))[0]

    def broken() -> PowerState:
        raise OSError("no power supply information")

    ok, why = gate_from_state(broken)()
    assert not ok and "cannot read the power state: no power supply information" in why


def test_state_from_the_resource_monitor_snapshot() -> None:
    snapshot_module = pytest.importorskip("rustaid.power.snapshot")
    snap = snapshot_module.ResourceSnapshot(
        power=snapshot_module.PowerStatus(
            battery_present=True, on_battery=True, battery_percent=17.0
        ),
        thermal=snapshot_module.ThermalStatus(state=snapshot_module.ThermalState.SERIOUS),
    )
    assert state_from_snapshot(snap) == PowerState(True, 17.0, "serious")
    assert state_from_snapshot(snapshot_module.ResourceSnapshot()) == PowerState(
        False, None, "nominal"
    )


async def test_the_first_scheduled_check_waits_for_upower(
    upower: str, tmp_path: Path, publisher: Publisher, models: dict[str, Path]
) -> None:
    """A check due at start-up must not act before UPower was read: on battery at 15 %
    it is deferred, though the daemon's own default (no battery) would have let it go."""
    data = tmp_path / "data"
    section = updates_config(
        publisher.url, publisher.keys[:1], min_battery=30, check_interval="1h", jitter=0
    )
    write_config(data, section)
    config = data / "config" / "rustaid.toml"
    config.write_text(config.read_text() + f'[power]\nsystem_bus_address = "{upower}"\n')
    publisher.release(models["v1"], "1.0")
    await set_battery(upower, on_battery=True, percent=15.0)
    async with running_daemon(isolated_settings(data)) as d:
        deadline = time.monotonic() + 30
        while d.updates.status().phase.value not in ("deferred", "committed"):  # type: ignore[attr-defined]
            assert time.monotonic() < deadline, d.updates.status()  # type: ignore[attr-defined]
            await asyncio.sleep(0.05)
        status = d.updates.status()  # type: ignore[attr-defined]
        assert "on battery at 15 %, below the 30 %" in status.message, status
        assert d.updates.installed() == []  # type: ignore[attr-defined]


async def test_a_forced_update_on_a_low_battery_is_health_checked_at_once(
    upower: str, tmp_path: Path, publisher: Publisher, models: dict[str, Path]
) -> None:
    """The policy holds background work on a low battery; the health check of an update
    forced past the gate is not background work, so it runs and the update commits."""
    data = tmp_path / "data"
    write_config(data, updates_config(publisher.url, publisher.keys[:1], health_timeout=20))
    config = data / "config" / "rustaid.toml"
    config.write_text(config.read_text() + f'[power]\nsystem_bus_address = "{upower}"\n')
    publisher.release(models["v1"], "1.0")
    await set_battery(upower, on_battery=True, percent=12.0)
    async with running_daemon(isolated_settings(data)) as d:
        await d.resources.fresh_snapshot()  # type: ignore[attr-defined]
        assert d.resources.policy.background_wait()  # type: ignore[attr-defined]
        _, (record,) = await d.updates.apply(force=True, wait=True)  # type: ignore[attr-defined]
        assert record.outcome == "committed", record

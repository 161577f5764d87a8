"""`[power]` applied by a reload (SIGHUP) of a real daemon reading a fake sysfs tree:
thresholds, profile rules and poll intervals take effect at once, and the event sources
(here the system bus, with python3-dbusmock's UPower on a private bus) restart."""

from __future__ import annotations

import signal
from pathlib import Path

from rustaid_client.client import Client

from rustaid.api.v1 import common_pb2, resources_pb2
from rustaid.testing.daemon import DaemonProcess, run_daemon
from tests.power.bus import BusDriver, DbusMock, PrivateSystemBus, eventually
from tests.power.fakesys import FakeDevice
from tests.power.test_service import Watcher

R = resources_pb2


def write(data: Path, dev: FakeDevice, lines: str) -> None:
    path = data / "config" / "rustaid.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"[power]\n{dev.toml()}dbus = false\n{lines}")


def reload(daemon: DaemonProcess, times: int) -> None:
    """SIGHUP, then wait until the daemon has reloaded `times` times in all."""
    daemon.proc.send_signal(signal.SIGHUP)

    def reloaded() -> bool:
        daemon.read_notifications(timeout=0.2)
        return sum("STATUS=reloaded" in n.split("\n") for n in daemon.notifications) >= times

    eventually(reloaded, 15.0)


def test_reload_applies_thresholds_profile_and_polls(tmp_path: Path) -> None:
    dev = FakeDevice(tmp_path / "device")
    dev.zone(0, "cpu-thermal", 75.0)  # no trip points: the fallback thresholds apply
    data = tmp_path / "data"
    # Slow polls: only a reload that re-times them lets a watcher see heat soon.
    slow = "poll_idle_s = 3600\npoll_quick_s = 3600\n"
    write(data, dev, slow)
    with run_daemon(data) as daemon, Client(daemon.address, timeout=30) as client:
        s = client.get_snapshot().snapshot
        assert s.thermal.state == R.THERMAL_STATE_FAIR
        assert s.power_profile == common_pb2.POWER_PROFILE_BALANCED
        write(
            data,
            dev,
            slow + "fallback_fair_c = 60\nfallback_serious_c = 72\n"
            'default_profile = "power-saver"\n',
        )
        reload(daemon, 1)
        s = client.get_snapshot().snapshot
        assert s.thermal.state == R.THERMAL_STATE_SERIOUS
        assert "at or above 72 C" in s.thermal.reason
        assert s.power_profile == common_pb2.POWER_PROFILE_POWER_SAVER
        assert client.get_power_profile().parameters.threads >= 1
        # The quick read of temperatures re-timed to 0.2 s: a watcher sees the heat.
        write(data, dev, "poll_idle_s = 3600\npoll_quick_s = 0.2\n")
        reload(daemon, 2)
        watcher = Watcher(client)
        assert watcher.last.thermal.state == R.THERMAL_STATE_FAIR  # default thresholds again
        dev.temp(0, 85.0)
        eventually(lambda: watcher.last.thermal.state == R.THERMAL_STATE_SERIOUS, 10.0)
        watcher.close()
        assert "apply after a restart" not in daemon.stderr()


def test_reload_restarts_the_event_sources_it_changes(
    tmp_path: Path, bus: tuple[PrivateSystemBus, BusDriver], upower: DbusMock
) -> None:
    bus[1].battery(42)
    dev = FakeDevice(tmp_path / "device")
    dev.zone(0, "cpu-thermal", 45.0)
    data = tmp_path / "data"
    write(data, dev, "")  # dbus = false
    env = {"DBUS_SYSTEM_BUS_ADDRESS": bus[0].address}
    with run_daemon(data, env=env) as daemon, Client(daemon.address, timeout=30) as client:
        s = client.get_snapshot().snapshot
        assert "dbus" in s.unavailable_sources and not s.power.battery_present
        # The system bus turned on by a reload: UPower's battery shows up.
        path = data / "config" / "rustaid.toml"
        path.write_text(path.read_text().replace("dbus = false\n", ""))
        reload(daemon, 1)

        def on_upower() -> bool:
            s = client.get_snapshot().snapshot
            return s.power.source == "upower" and "dbus" not in s.unavailable_sources

        eventually(on_upower, 10.0)
        assert client.get_snapshot().snapshot.power.battery_percent == 42
        # And off again: the bus connection closes, sysfs speaks for the power supply.
        write(data, dev, "")
        reload(daemon, 2)
        eventually(lambda: "dbus" in client.get_snapshot().snapshot.unavailable_sources, 10.0)
        assert client.get_snapshot().snapshot.power.source != "upower"
        assert "apply after a restart" not in daemon.stderr()

"""The real upowerd (Debian's upower) on a umockdev testbed with a fake battery and AC
adapter, on a private system bus: what UPower says reaches the snapshot and the profile
through its PropertiesChanged signals."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rustaid.power.snapshot import BatteryState, PowerProfile, ProfileSource
from tests.power.bus import BusDriver, PrivateSystemBus, RealUPower
from tests.power.conftest import config_for, running_monitor, until
from tests.power.fakesys import FakeDevice

Bus = tuple[PrivateSystemBus, BusDriver]


@pytest.fixture
def upowerd(bus: Bus) -> Iterator[RealUPower]:
    daemon = RealUPower(bus[0])
    # 9 of 60 Wh left (15 %), discharging at 12 W, AC adapter offline.
    daemon.start(bus[1], energy_now="9000000", capacity="15", status="Discharging")
    yield daemon
    daemon.stop()


async def test_real_upowerd_battery_events(dev: FakeDevice, bus: Bus, upowerd: RealUPower) -> None:
    async with running_monitor(config_for(dev, bus[0].address)) as monitor:
        await until(lambda: monitor.snapshot.power.source == "upower", 5.0)
        p = monitor.snapshot.power
        assert p.battery_present and p.on_battery and not p.ac_online
        assert p.battery_state is BatteryState.DISCHARGING
        assert p.battery_percent == pytest.approx(15.0)
        assert p.power_draw_w == pytest.approx(12.0)
        assert p.energy_full_wh == pytest.approx(60.0)
        assert p.time_to_empty_s == pytest.approx(9 / 12 * 3600, rel=0.05)
        assert monitor.snapshot.power_profile is PowerProfile.POWER_SAVER
        assert monitor.snapshot.profile_source is ProfileSource.BATTERY

        # Plugged in and charging: the kernel sends "change" uevents, upowerd re-reads
        # sysfs and signals; nobody polls.
        upowerd.set("AC", online="1")
        upowerd.set("BAT0", status="Charging", energy_now="30000000", capacity="50",
                    power_now="20000000")  # fmt: skip
        took = await until(
            lambda: monitor.snapshot.power.battery_state is BatteryState.CHARGING, 1.0
        )
        assert took < 1.0
        await until(lambda: not monitor.snapshot.power.on_battery)
        p = monitor.snapshot.power
        assert p.battery_percent == pytest.approx(50.0) and p.ac_online
        assert p.power_draw_w == 0.0  # charging: nothing drawn from the battery
        assert monitor.snapshot.power_profile is PowerProfile.BALANCED

        # Unplugged again at 8 %: UltraSaver.
        upowerd.set("AC", online="0")
        upowerd.set("BAT0", status="Discharging", energy_now="4800000", capacity="8",
                    power_now="12000000")  # fmt: skip
        await until(lambda: monitor.snapshot.power_profile is PowerProfile.ULTRA_SAVER)
        assert monitor.snapshot.power.battery_percent == pytest.approx(8.0)

"""Readings from the kernel's sysfs: thermal zones and their trip points, CPU frequency,
power supplies, Raspberry Pi throttling flags and GPU memory.

Everything is read below a configurable root (`/sys` by default) so tests can point it
at a fake tree. The readers never raise: a missing, empty, non-numeric or absurd value
is logged once per file and treated as absent; a zone that vanishes while being read is
skipped.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from rustaid.power.snapshot import (
    BatteryState,
    GpuStatus,
    PowerStatus,
    ThermalZone,
    Throttling,
    TripPoint,
)

log = logging.getLogger(__name__)

# Plausible ranges; anything outside is a driver bug or garbage, not a temperature.
MIN_TEMP_C = -60.0
MAX_TEMP_C = 150.0
# Trip points of 0 or below (or absurdly high) mean "disabled" on many drivers.
MAX_TRIP_C = 150.0
# Raspberry Pi firmware flags file.
RPI_THROTTLED = "devices/platform/soc/soc:firmware/get_throttled"

_NUMBER = re.compile(r"\d+")


def _natural(path: Path) -> tuple[int, str]:
    m = _NUMBER.search(path.name)
    return (int(m.group()) if m else -1, path.name)


class FileReader:
    """Reads small pseudo files. Problems are logged once per file (and again once the
    file has recovered and broken anew), never raised."""

    def __init__(self) -> None:
        self._bad: dict[Path, str] = {}

    def problem(self, path: Path, what: str) -> None:
        if self._bad.get(path) != what:
            self._bad[path] = what
            log.warning("ignoring %s: %s", path, what)

    def _ok(self, path: Path) -> None:
        if self._bad.pop(path, None) is not None:
            log.info("%s is readable again", path)

    def _read(self, path: Path, quiet_missing: bool) -> str | None:
        try:
            raw = path.read_bytes()[:4096]
        except FileNotFoundError:
            if not quiet_missing:
                self.problem(path, "missing")
            return None
        except OSError as e:  # EIO/ENODATA from a driver, EACCES, a vanished device
            self.problem(path, f"unreadable ({e.strerror or e})")
            return None
        text = raw.decode("ascii", errors="replace").strip()
        if not text:
            self.problem(path, "empty")
            return None
        return text

    def text(self, path: Path, *, quiet_missing: bool = True) -> str | None:
        text = self._read(path, quiet_missing)
        if text is not None:
            self._ok(path)
        return text

    def integer(
        self,
        path: Path,
        lo: int,
        hi: int,
        *,
        parse: Callable[[str], int] = int,
        quiet_missing: bool = True,
    ) -> int | None:
        text = self._read(path, quiet_missing)
        if text is None:
            return None
        try:
            value = parse(text)
        except ValueError:
            self.problem(path, f"not a number: {text[:40]!r}")
            return None
        if not lo <= value <= hi:
            self.problem(path, f"out of range: {value} (expected {lo}..{hi})")
            return None
        self._ok(path)
        return value


# -- thermal ---------------------------------------------------------------------------


def read_thermal_zones(sys_root: Path, reader: FileReader) -> tuple[list[ThermalZone], bool]:
    """Every readable zone with its valid trip points; the flag says whether the
    thermal class exists at all."""
    base = sys_root / "class" / "thermal"
    try:
        dirs = sorted(base.glob("thermal_zone*"), key=_natural)
    except OSError:
        return [], False
    if not base.is_dir():
        return [], False
    zones: list[ThermalZone] = []
    for d in dirs:
        milli = reader.integer(
            d / "temp", int(MIN_TEMP_C * 1000), int(MAX_TEMP_C * 1000), quiet_missing=False
        )
        if milli is None:
            continue  # vanished, unreadable or garbage: logged by the reader
        zone_type = reader.text(d / "type") or d.name
        zones.append(
            ThermalZone(
                name=d.name,
                type=zone_type,
                temperature_c=milli / 1000,
                trip_points=tuple(_trip_points(d, reader)),
            )
        )
    return zones, True


def _trip_points(zone: Path, reader: FileReader) -> Iterable[TripPoint]:
    try:
        temps = sorted(zone.glob("trip_point_*_temp"), key=_natural)
    except OSError:
        return
    for temp_file in temps:
        prefix = temp_file.name.removesuffix("_temp")
        kind = reader.text(zone / f"{prefix}_type")
        milli = reader.integer(temp_file, -(2**31), 2**31)
        if kind is None or milli is None or not 0 < milli <= MAX_TRIP_C * 1000:
            continue  # disabled (0, negative), absurd, or incomplete
        hyst = reader.integer(zone / f"{prefix}_hyst", 0, 50_000) or 0
        yield TripPoint(type=kind.lower(), temperature_c=milli / 1000, hysteresis_c=hyst / 1000)


def _parse_throttled(text: str) -> int:
    # "0x50005", "50005" or vcgencmd's "throttled=0x50005"; always hexadecimal.
    return int(text.removeprefix("throttled=").strip(), 16)


def read_throttling(sys_root: Path, reader: FileReader) -> Throttling | None:
    """Raspberry Pi get_throttled bits plus any hwmon in0_lcrit_alarm (under-voltage);
    None when the device has neither."""
    bits = reader.integer(sys_root / RPI_THROTTLED, 0, 2**32 - 1, parse=_parse_throttled)
    alarms = []
    try:
        alarm_files = sorted((sys_root / "class" / "hwmon").glob("hwmon*/in0_lcrit_alarm"))
    except OSError:
        alarm_files = []
    for path in alarm_files:
        alarm = reader.integer(path, 0, 1)
        if alarm is not None:
            alarms.append(alarm == 1)
    if bits is None and not alarms:
        return None
    return Throttling.from_bits(bits or 0, under_voltage_alarm=any(alarms))


# -- CPU -------------------------------------------------------------------------------


def read_cpu_frequency(sys_root: Path, reader: FileReader) -> tuple[float, float] | None:
    """(average current MHz, highest maximum MHz) over the CPUs with cpufreq."""
    cpu_dir = sys_root / "devices" / "system" / "cpu"
    try:
        dirs = sorted(cpu_dir.glob("cpu[0-9]*/cpufreq"), key=lambda p: _natural(p.parent))
    except OSError:
        return None
    current: list[int] = []
    maximum: list[int] = []
    for d in dirs:
        cur = reader.integer(d / "scaling_cur_freq", 1, 20_000_000)
        if cur is not None:
            current.append(cur)
        top = reader.integer(d / "cpuinfo_max_freq", 1, 20_000_000)
        if top is not None:
            maximum.append(top)
    if not current and not maximum:
        return None
    avg = sum(current) / len(current) / 1000 if current else 0.0
    return avg, (max(maximum) / 1000 if maximum else 0.0)


# -- power supplies ---------------------------------------------------------------------

_STATUS = {
    "charging": BatteryState.CHARGING,
    "discharging": BatteryState.DISCHARGING,
    "full": BatteryState.FULL,
    "not charging": BatteryState.NOT_CHARGING,
}
_MAX_MICRO = 10**12  # 1 MW / 1 MWh in micro units: beyond any battery


@dataclass
class _Battery:
    state: BatteryState
    capacity: float | None
    energy_now_wh: float | None
    energy_full_wh: float | None
    power_w: float | None


def read_power_supplies(sys_root: Path, reader: FileReader) -> PowerStatus | None:
    """Batteries and mains adapters from /sys/class/power_supply; None when the class
    is empty (a desktop or board without any, or a missing tree)."""
    base = sys_root / "class" / "power_supply"
    try:
        supplies = sorted(base.iterdir()) if base.is_dir() else []
    except OSError:
        supplies = []
    batteries: list[_Battery] = []
    adapters: list[bool] = []
    for d in supplies:
        kind = (reader.text(d / "type") or "").lower()
        if (reader.text(d / "scope") or "").lower() == "device":
            continue  # a mouse's or headset's battery, not the system's
        if kind == "battery":
            if reader.integer(d / "present", 0, 1) == 0:
                continue
            batteries.append(_read_battery(d, reader))
        elif kind in ("mains", "usb", "usb_c", "usb_pd", "wireless"):
            online = reader.integer(d / "online", 0, 2)
            if online is not None:
                adapters.append(online > 0)
    if not batteries and not adapters:
        return None
    ac_online = any(adapters) if adapters else not batteries
    if not batteries:
        return PowerStatus(ac_online=ac_online, source="sysfs")
    states = {b.state for b in batteries}
    if BatteryState.DISCHARGING in states:
        state = BatteryState.DISCHARGING
    elif BatteryState.CHARGING in states:
        state = BatteryState.CHARGING
    elif states == {BatteryState.FULL}:
        state = BatteryState.FULL
    elif BatteryState.NOT_CHARGING in states:
        state = BatteryState.NOT_CHARGING
    else:
        state = BatteryState.UNKNOWN
    now = [b.energy_now_wh for b in batteries if b.energy_now_wh is not None]
    full = [b.energy_full_wh for b in batteries if b.energy_full_wh is not None]
    caps = [b.capacity for b in batteries if b.capacity is not None]
    if len(now) == len(full) == len(batteries) and sum(full) > 0:
        percent = min(100.0, 100 * sum(now) / sum(full))
    elif caps:
        percent = sum(caps) / len(caps)
    else:
        percent = 0.0
    power = sum(b.power_w for b in batteries if b.power_w is not None)
    on_battery = state is BatteryState.DISCHARGING or (bool(adapters) and not ac_online)
    tte = 0.0
    if on_battery and power > 0 and len(now) == len(batteries):
        tte = sum(now) / power * 3600
    if state is BatteryState.UNKNOWN and on_battery:
        state = BatteryState.DISCHARGING
    return PowerStatus(
        battery_present=True,
        on_battery=on_battery,
        ac_online=ac_online,
        battery_percent=percent,
        battery_state=state,
        time_to_empty_s=tte,
        power_draw_w=power if on_battery else 0.0,
        energy_full_wh=sum(full) if len(full) == len(batteries) else 0.0,
        source="sysfs",
    )


def _read_battery(d: Path, reader: FileReader) -> _Battery:
    status = (reader.text(d / "status") or "").lower()
    state = _STATUS.get(status, BatteryState.UNKNOWN)
    capacity = reader.integer(d / "capacity", 0, 100)

    def micro(name: str) -> int | None:
        # Some drivers report negative current/power while discharging.
        value = reader.integer(d / name, -_MAX_MICRO, _MAX_MICRO)
        return abs(value) if value is not None else None

    voltage = micro("voltage_now")
    volts = voltage / 1e6 if voltage else None
    energy_now = micro("energy_now")
    energy_full = micro("energy_full")
    if energy_now is None and volts is not None and (charge := micro("charge_now")) is not None:
        energy_now = int(charge * volts)
    if energy_full is None and volts is not None and (charge := micro("charge_full")) is not None:
        energy_full = int(charge * volts)
    power = micro("power_now")
    power_w = power / 1e6 if power is not None else None
    if power_w is None and volts is not None and (current := micro("current_now")) is not None:
        power_w = current / 1e6 * volts
    if power_w is not None and power_w > 1000:  # a kilowatt from a battery: garbage
        power_w = None
    return _Battery(
        state=state,
        capacity=float(capacity) if capacity is not None else None,
        energy_now_wh=energy_now / 1e6 if energy_now is not None else None,
        energy_full_wh=energy_full / 1e6 if energy_full else None,
        power_w=power_w,
    )


# -- GPU -------------------------------------------------------------------------------


def read_gpus(sys_root: Path, reader: FileReader) -> list[GpuStatus]:
    """GPUs whose driver reports memory in sysfs (amdgpu: mem_info_vram_*,
    gpu_busy_percent). Other GPUs come from resource-monitor plugins."""
    base = sys_root / "class" / "drm"
    try:
        cards = sorted(base.glob("card[0-9]*"), key=_natural) if base.is_dir() else []
    except OSError:
        return []
    gpus: list[GpuStatus] = []
    for card in cards:
        if "-" in card.name:  # card0-HDMI-A-1: a connector, not a GPU
            continue
        dev = card / "device"
        total = reader.integer(dev / "mem_info_vram_total", 1, 2**50)
        if total is None:
            continue
        used = reader.integer(dev / "mem_info_vram_used", 0, 2**50) or 0
        busy = reader.integer(dev / "gpu_busy_percent", 0, 100) or 0
        try:
            driver = (dev / "driver").resolve().name if (dev / "driver").exists() else ""
        except OSError:
            driver = ""
        name = f"{card.name} ({driver})" if driver else card.name
        gpus.append(
            GpuStatus(
                name=name,
                memory_total_bytes=total,
                memory_used_bytes=min(used, total),
                utilization_percent=float(busy),
            )
        )
    return gpus

"""A fake /sys and /proc tree in a temp dir, laid out like the kernel's (the machine
running the tests has no battery, no thermal zones and no Raspberry Pi firmware)."""

from __future__ import annotations

import shutil
from pathlib import Path


class FakeDevice:
    def __init__(self, root: Path) -> None:
        self.sys = root / "sys"
        self.proc = root / "proc"
        self.sys.mkdir(parents=True, exist_ok=True)
        (self.sys / "class" / "thermal").mkdir(parents=True, exist_ok=True)
        (self.sys / "class" / "power_supply").mkdir(parents=True, exist_ok=True)
        (self.proc / "pressure").mkdir(parents=True, exist_ok=True)
        self.meminfo(total_kib=8_000_000, available_kib=6_000_000)
        self.psi(some=0.0, full=0.0)

    @staticmethod
    def _write(path: Path, value: object) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Replace atomically: the daemon may read while a test writes.
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(f"{value}\n" if not isinstance(value, bytes) else value.decode())
        tmp.replace(path)

    # -- thermal --------------------------------------------------------------------------

    def zone(self, n: int, type_: str, temp_c: float, trips: list[tuple[str, float]] = ()) -> Path:  # type: ignore[assignment]
        d = self.sys / "class" / "thermal" / f"thermal_zone{n}"
        self._write(d / "type", type_)
        self._write(d / "temp", int(temp_c * 1000))
        for i, (kind, t) in enumerate(trips):
            self._write(d / f"trip_point_{i}_type", kind)
            self._write(d / f"trip_point_{i}_temp", int(t * 1000))
        return d

    def temp(self, n: int, temp_c: float) -> None:
        self._write(
            self.sys / "class" / "thermal" / f"thermal_zone{n}" / "temp", int(temp_c * 1000)
        )

    def raw(self, relative: str, text: str) -> None:
        """Write anything (garbage included) to a file below /sys."""
        self._write(self.sys / relative, text)

    def remove_zone(self, n: int) -> None:
        shutil.rmtree(self.sys / "class" / "thermal" / f"thermal_zone{n}")

    # -- Raspberry Pi -----------------------------------------------------------------------

    def throttled(self, bits: int) -> None:
        self._write(self.sys / "devices/platform/soc/soc:firmware/get_throttled", f"{bits:x}")

    def lcrit_alarm(self, on: bool, hwmon: int = 0) -> None:
        self._write(self.sys / "class" / "hwmon" / f"hwmon{hwmon}" / "in0_lcrit_alarm", int(on))

    # -- CPU ----------------------------------------------------------------------------------

    def cpufreq(self, cpu: int, cur_khz: int, max_khz: int) -> None:
        d = self.sys / "devices" / "system" / "cpu" / f"cpu{cpu}" / "cpufreq"
        self._write(d / "scaling_cur_freq", cur_khz)
        self._write(d / "cpuinfo_max_freq", max_khz)

    # -- power supplies -------------------------------------------------------------------------

    def battery(
        self,
        name: str = "BAT0",
        *,
        status: str = "Discharging",
        capacity: int = 80,
        energy_full_uwh: int = 50_000_000,
        power_uw: int = 10_000_000,
    ) -> None:
        d = self.sys / "class" / "power_supply" / name
        self._write(d / "type", "Battery")
        self._write(d / "present", 1)
        self._write(d / "status", status)
        self._write(d / "capacity", capacity)
        self._write(d / "energy_full", energy_full_uwh)
        self._write(d / "energy_now", energy_full_uwh * capacity // 100)
        self._write(d / "power_now", power_uw)

    def mains(self, online: bool, name: str = "AC") -> None:
        d = self.sys / "class" / "power_supply" / name
        self._write(d / "type", "Mains")
        self._write(d / "online", int(online))

    # -- GPU ----------------------------------------------------------------------------------

    def amdgpu(self, card: int, total: int, used: int, busy: int) -> None:
        d = self.sys / "class" / "drm" / f"card{card}" / "device"
        self._write(d / "mem_info_vram_total", total)
        self._write(d / "mem_info_vram_used", used)
        self._write(d / "gpu_busy_percent", busy)

    # -- /proc ----------------------------------------------------------------------------------

    def meminfo(self, total_kib: int, available_kib: int) -> None:
        self._write(
            self.proc / "meminfo",
            f"MemTotal:       {total_kib} kB\nMemFree:        {available_kib // 2} kB\n"
            f"MemAvailable:   {available_kib} kB\nBuffers:        1000 kB\n",
        )

    def psi(self, some: float, full: float) -> None:
        self._write(
            self.proc / "pressure" / "memory",
            f"some avg10={some:.2f} avg60=0.00 avg300=0.00 total=1\n"
            f"full avg10={full:.2f} avg60=0.00 avg300=0.00 total=1",
        )

    def toml(self) -> str:
        """The [power] lines pointing a daemon at this tree."""
        return f'sys_root = "{self.sys}"\nproc_root = "{self.proc}"\n'

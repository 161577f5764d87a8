"""Memory: totals from psutil (or `<proc>/meminfo` below another root), pressure from
Linux PSI (`<proc>/pressure/memory`), and a PSI trigger that wakes the monitor when
tasks start stalling on memory, instead of polling for it.

Pressure levels (thresholds are `[power]` settings):

| level    | PSI avg10 (percent of the last 10 s some/all tasks stalled) | or available memory |
| -------- | ----------------------------------------------------------- | ------------------- |
| Warning  | some >= 10                                                  | <= 15 % of total    |
| Critical | some >= 40, or full >= 10                                   | <= 5 % of total     |

Without PSI (kernels before 4.20, or `psi=0`), only available memory counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
from collections.abc import Callable
from pathlib import Path

from rustaid.power.config import PowerConfig
from rustaid.power.snapshot import MemoryStatus, PressureLevel
from rustaid.power.sysfs import FileReader

log = logging.getLogger(__name__)

# A trigger fires when tasks stalled on memory for 150 ms within a 2 s window (7.5 %).
# Unprivileged processes may only use windows that are multiples of 2 s.
TRIGGER = b"some 150000 2000000"
_MAX_BYTES = 1 << 56


def _psi(text: str | None) -> tuple[float, float] | None:
    """(some avg10, full avg10) from a PSI file; None when unparsable."""
    if text is None:
        return None
    values: dict[str, float] = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        for item in rest.split():
            key, _, value = item.partition("=")
            if key == "avg10":
                try:
                    number = float(value)
                except ValueError:
                    return None
                if not 0 <= number <= 100:
                    return None
                values[kind] = number
    if "some" not in values:
        return None
    return values["some"], values.get("full", 0.0)


def _meminfo(proc_root: Path, reader: FileReader) -> tuple[int, int] | None:
    """(MemTotal, MemAvailable) in bytes from <proc>/meminfo."""
    text = reader.text(proc_root / "meminfo", quiet_missing=False)
    if text is None:
        return None
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if name in ("MemTotal", "MemAvailable") and parts:
            try:
                kib = int(parts[0])
            except ValueError:
                continue
            if 0 <= kib * 1024 < _MAX_BYTES:
                fields[name] = kib * 1024
    total, available = fields.get("MemTotal", 0), fields.get("MemAvailable")
    if total <= 0 or available is None or available > total:
        reader.problem(proc_root / "meminfo", "no valid MemTotal/MemAvailable")
        return None
    return total, available


def read_memory(
    proc_root: Path,
    reader: FileReader,
    config: PowerConfig,
    psi_path: Path | None = None,
) -> tuple[MemoryStatus, list[str]]:
    """Memory status and the names of sources that could not be read."""
    unavailable: list[str] = []
    totals: tuple[int, int] | None
    if proc_root == Path("/proc"):
        import psutil

        vm = psutil.virtual_memory()
        totals = (vm.total, vm.available)
    else:
        totals = _meminfo(proc_root, reader)
    if totals is None:
        unavailable.append("meminfo")
        totals = (0, 0)
    total, available = totals
    psi = _psi(reader.text(psi_path or proc_root / "pressure" / "memory"))
    if psi is None:
        unavailable.append("psi")
    some, full = psi or (0.0, 0.0)
    level, reason = pressure_level(total, available, psi, config)
    return (
        MemoryStatus(
            total_bytes=total,
            available_bytes=available,
            used_bytes=max(0, total - available),
            pressure=level,
            psi_some_avg10=some,
            psi_full_avg10=full,
            reason=reason,
        ),
        unavailable,
    )


def pressure_level(
    total: int, available: int, psi: tuple[float, float] | None, c: PowerConfig
) -> tuple[PressureLevel, str]:
    """The documented thresholds; the reason names the one that was crossed."""
    percent = 100 * available / total if total > 0 else 100.0
    some, full = psi or (0.0, 0.0)
    if psi is not None and full >= c.psi_critical_full:
        return PressureLevel.CRITICAL, f"all tasks stalled on memory {full:.1f} % of the last 10 s"
    if psi is not None and some >= c.psi_critical_some:
        return PressureLevel.CRITICAL, f"tasks stalled on memory {some:.1f} % of the last 10 s"
    if total > 0 and percent <= c.available_critical_percent:
        return PressureLevel.CRITICAL, f"only {percent:.1f} % of memory available"
    if psi is not None and some >= c.psi_warning_some:
        return PressureLevel.WARNING, f"tasks stalled on memory {some:.1f} % of the last 10 s"
    if total > 0 and percent <= c.available_warning_percent:
        return PressureLevel.WARNING, f"only {percent:.1f} % of memory available"
    return PressureLevel.NORMAL, ""


class PressureTrigger:
    """A PSI trigger on the real /proc/pressure/memory: the kernel wakes us (POLLPRI)
    when memory stalls cross TRIGGER, at most once per window. asyncio's selector only
    waits for readability, so the trigger's fd sits in an epoll set of its own whose fd
    the loop watches."""

    def __init__(self, path: Path, on_pressure: Callable[[], None]) -> None:
        self.path = path
        self.on_pressure = on_pressure
        self._fd = -1
        self._epoll: select.epoll | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.error = ""

    def start(self) -> bool:
        """Arm the trigger; False (and `error`) when this kernel or user cannot."""
        if self.path != Path("/proc/pressure/memory"):
            # A regular file would always poll ready: triggers only work on procfs.
            self.error = "PSI triggers need the real /proc"
            return False
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            os.write(self._fd, TRIGGER + b"\0")
            self._epoll = select.epoll()
            self._epoll.register(self._fd, select.EPOLLPRI)
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self._epoll.fileno(), self._ready)
        except OSError as e:
            self.error = f"cannot arm a PSI trigger on {self.path}: {e.strerror or e}"
            self.stop()
            return False
        return True

    def _ready(self) -> None:
        assert self._epoll is not None
        for _, events in self._epoll.poll(0):
            if events & (select.EPOLLERR | select.EPOLLHUP):
                log.warning("the PSI trigger on %s failed; falling back to polling", self.path)
                self.error = "the PSI trigger stopped working"
                self.stop()
                return
            if events & select.EPOLLPRI:
                self.on_pressure()

    def stop(self) -> None:
        if self._epoll is not None:
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
            self._epoll = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    @property
    def armed(self) -> bool:
        return self._epoll is not None

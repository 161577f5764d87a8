"""How fast each thermal zone is heating: a least-squares slope over the readings of
the last few seconds (quick reads included, so about one a second while idle).

A zone that heats fast reaches its trip point before the next reading shows it there;
the forecast (`thermal.rising_state`) lets the policy act a few seconds early."""

from __future__ import annotations

import collections
import threading
from collections.abc import Sequence

from rustaid.power.snapshot import ThermalZone

# The readings a slope is fitted over, and the fewest that make one.
WINDOW_S = 5.0
MIN_SAMPLES = 3
MIN_SPAN_S = 1.0


class ThermalTrend:
    """Per-zone temperature history; `add` may run in worker threads."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._samples: dict[str, collections.deque[tuple[float, float]]] = {}
        self._lock = threading.Lock()

    def add(self, when: float, zones: Sequence[ThermalZone]) -> None:
        with self._lock:
            for zone in zones:
                samples = self._samples.setdefault(zone.name, collections.deque())
                if samples and when <= samples[-1][0]:
                    continue  # an older reading finishing late adds nothing
                samples.append((when, zone.temperature_c))
                while samples and when - samples[0][0] > self.window_s:
                    samples.popleft()
            gone = set(self._samples) - {z.name for z in zones}
            for name in gone:
                del self._samples[name]

    def slopes(self) -> dict[str, float]:
        """Degrees C per second for each zone with enough recent readings."""
        out = {}
        with self._lock:
            for name, samples in self._samples.items():
                if len(samples) < MIN_SAMPLES or samples[-1][0] - samples[0][0] < MIN_SPAN_S:
                    continue
                out[name] = _slope(list(samples))
        return out


def _slope(samples: list[tuple[float, float]]) -> float:
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_c = sum(c for _, c in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    if var <= 0:
        return 0.0
    return sum((t - mean_t) * (c - mean_c) for t, c in samples) / var

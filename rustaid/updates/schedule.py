"""When to check: interval plus random jitter, inside an optional maintenance window,
remembered across restarts (`state/updates/schedule.json`) so a restart does not reset
the clock and a fleet that reboots together does not check together."""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

from rustaid.updates.atomic import write_atomic
from rustaid.updates.config import Window


@dataclass
class ScheduleState:
    last_check: float = 0.0
    next_check: float = 0.0


class ScheduleStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> ScheduleState:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return ScheduleState(float(data["last_check"]), float(data["next_check"]))
        except (OSError, ValueError, KeyError, TypeError):
            return ScheduleState()

    def save(self, state: ScheduleState) -> None:
        write_atomic(self.path, json.dumps(asdict(state)).encode(), mode=0o600)


def _local(t: float) -> datetime:
    return datetime.fromtimestamp(t).astimezone()


def in_window(window: Window | None, t: float) -> bool:
    if window is None:
        return True
    now = _local(t).time()
    if window.start < window.end:
        return window.start <= now < window.end
    return now >= window.start or now < window.end  # wraps midnight


def window_length_s(window: Window) -> float:
    start = window.start.hour * 3600 + window.start.minute * 60
    end = window.end.hour * 3600 + window.end.minute * 60
    return float((end - start) % 86400)


def next_window_start(window: Window, t: float) -> float:
    """The first start of the window at or after `t`."""
    local = _local(t)
    start = local.replace(hour=window.start.hour, minute=window.start.minute, second=0,
                          microsecond=0)  # fmt: skip
    if start < local:
        start += timedelta(days=1)
    return start.timestamp()


def place_in_window(window: Window | None, t: float, jitter: float, rng: random.Random) -> float:
    """`t` if it is inside the window, else a random moment early in the next window."""
    if window is None or in_window(window, t):
        return t
    spread = min(jitter, window_length_s(window) / 2) if jitter else 0.0
    return next_window_start(window, t) + rng.uniform(0, spread)


def first_check(
    state: ScheduleState,
    now: float,
    *,
    jitter: float,
    window: Window | None,
    rng: random.Random,
) -> float:
    """Start-up: keep a persisted next check that is still ahead; a missed or unknown one
    happens soon, spread by the jitter."""
    if state.next_check > now:
        return state.next_check
    return place_in_window(window, now + rng.uniform(0, jitter), jitter, rng)


def following_check(
    now: float,
    *,
    interval: float,
    jitter: float,
    window: Window | None,
    rng: random.Random,
) -> float:
    t = now + interval + rng.uniform(-jitter, jitter)
    t = max(t, now + min(interval, 1.0))
    return place_in_window(window, t, jitter, rng)

"""adapt(), one row per device state: what a request runs with (the rules table of
rustaid/power/policy.py), on a 4-core device asking for 400 tokens with the engine's
own thread count. Pure, milliseconds each; tests/power/test_policy.py checks the
messages, and tests/power/ the policy in a daemon."""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import pytest

from rustaid.core.scheduler import Priority
from rustaid.power.snapshot import (
    CpuStatus,
    PowerProfile,
    PressureLevel,
    ResourceSnapshot,
    ThermalState,
)
from tests.power.test_policy import battery, run, snap


class Runs(NamedTuple):
    max_tokens: int
    threads: int  # 0: the engine's own count
    context_cap: int
    batch: int
    gpu: bool
    remote: bool
    caching: bool
    # What background requests wait for, and why local models refuse ("": nothing).
    waits: str
    refused: str


BUSY = replace(snap(), cpu=CpuStatus(others_busy_cores=1.2))

ROWS: list[tuple[str, ResourceSnapshot, PowerProfile | None, Runs]] = [
    ("healthy", snap(), None, Runs(400, 0, 4096, 256, True, False, True, "", "")),
    ("thermal-critical", snap(ThermalState.CRITICAL), None,
     Runs(50, 1, 4096, 1, False, False, True, "thermal state critical", "thermal state critical")),
    ("thermal-serious", snap(ThermalState.SERIOUS), None,
     Runs(200, 2, 4096, 256, True, False, True, "thermal state serious", "")),
    ("battery-low", snap(power=battery(15)), None,
     Runs(256, 2, 2048, 64, False, True, True, "battery low (15 %", "")),
    ("memory-warning", snap(pressure=PressureLevel.WARNING), None,
     Runs(400, 0, 2048, 256, True, False, False, "", "")),
    ("memory-critical", snap(pressure=PressureLevel.CRITICAL), None,
     Runs(400, 0, 1024, 256, True, False, False, "", "")),
    ("others-busy", BUSY, None, Runs(400, 3, 4096, 256, True, False, True, "", "")),
    ("performance", snap(), PowerProfile.PERFORMANCE,
     Runs(400, 0, 8192, 512, True, False, True, "", "")),
    ("ultra-saver", snap(), PowerProfile.ULTRA_SAVER,
     Runs(64, 1, 1024, 32, False, True, False, "power profile ultra_saver runs no background", "")),
    ("hot-and-pressed", snap(ThermalState.SERIOUS, pressure=PressureLevel.CRITICAL), None,
     Runs(200, 2, 1024, 256, True, False, False, "thermal state serious", "")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("state", "profile", "runs"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS]
)
def test_adapt(state: ResourceSnapshot, profile: PowerProfile | None, runs: Runs) -> None:
    a = run(state, max_tokens=400, priority=Priority.BACKGROUND, profile=profile)
    got = Runs(
        a.params.max_tokens or 0, a.threads, a.context_cap, a.batch_size, a.use_gpu,
        a.prefer_remote, a.caching, a.background_wait, a.local_refused,
    )  # fmt: skip
    assert got._replace(waits="", refused="") == runs._replace(waits="", refused="")
    assert got.waits.startswith(runs.waits) and bool(got.waits) == bool(runs.waits)
    assert got.refused.startswith(runs.refused) and bool(got.refused) == bool(runs.refused)
    # Interactive requests never wait; the rest is the same.
    interactive = run(state, max_tokens=400, profile=profile)
    assert interactive.background_wait == ""
    assert interactive.params == a.params and interactive.threads == a.threads

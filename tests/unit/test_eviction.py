"""MemoryBudget.plan_eviction, case by case: which loaded models are unloaded so a new
one fits (least recently used idle, unpinned first), and the refusals with the numbers."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rustaid.config import Settings, load_settings
from rustaid.core.cache import MIB, LoadedSlot, MemoryBudget
from rustaid.core.scheduler import ModelQueue
from rustaid.errors import ResourceExhausted
from rustaid.providers import LoadedLLM
from tests.helpers import model_entry

BUDGET_MB = 1000


@pytest.fixture(scope="module")
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1) as pool:  # a slot's thread; never used by planning
        yield pool


def budget(tmp_path: Path) -> MemoryBudget:
    settings: Settings = dataclasses.replace(
        load_settings(data_dir=tmp_path, environ={}), memory_budget_mb=BUDGET_MB
    )
    return MemoryBudget(lambda: settings)


def slot(
    executor: ThreadPoolExecutor,
    model_id: str,
    mb: int,
    last_used: float,
    *,
    busy: bool = False,
    pinned: bool = False,
) -> LoadedSlot:
    queue = ModelQueue(model_id, max_waiting=8)
    if busy:  # a request holds the model: a ticket granted at once
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(_hold(queue))
        finally:
            loop.close()
    return LoadedSlot(
        entry=model_entry(model_id, pinned=pinned),
        model=_Unused(),
        queue=queue,
        estimate_bytes=mb * MIB,
        keep_alive_s=300,
        executor=executor,
        last_used=last_used,
    )


class _Unused(LoadedLLM):
    """Planning never calls the model; a slot holds one all the same."""

    complete = chat = tokenize = token_pieces = count_chat_tokens = close = None  # type: ignore[assignment]


async def _hold(queue: ModelQueue) -> None:
    queue.join(0)


# (loaded models: id, MB, last used, busy, pinned), MB needed -> ids unloaded, in order
CASES = [
    ([], 900, []),
    ([("a", 400, 1.0, False, False)], 600, []),  # exactly fits
    ([("a", 400, 1.0, False, False)], 700, ["a"]),
    # Least recently used first, and no more than needed.
    ([("a", 300, 2.0, False, False), ("b", 300, 1.0, False, False), ("c", 300, 3.0, False, False)],
     400, ["b"]),
    ([("a", 300, 2.0, False, False), ("b", 300, 1.0, False, False), ("c", 300, 3.0, False, False)],
     700, ["b", "a"]),
    # Busy and pinned models stay; the next idle one goes.
    ([("a", 400, 1.0, True, False), ("b", 400, 2.0, False, True), ("c", 150, 3.0, False, False)],
     200, ["c"]),
]  # fmt: skip


@pytest.mark.parametrize(("loaded", "need_mb", "victims"), CASES)
def test_plan(
    tmp_path: Path,
    executor: ThreadPoolExecutor,
    loaded: list[tuple[str, int, float, bool, bool]],
    need_mb: int,
    victims: list[str],
) -> None:
    slots = [slot(executor, i, mb, t, busy=b, pinned=p) for i, mb, t, b, p in loaded]
    plan = budget(tmp_path).plan_eviction(model_entry("new"), need_mb * MIB, slots)
    assert [s.entry.id for s in plan] == victims


@pytest.mark.parametrize(
    ("loaded", "need_mb", "reason", "message"),
    [
        ([], 1001, "MODEL_TOO_LARGE", "the whole memory budget is 1000 MiB: load it with a "
         "smaller context_length or raise memory_budget_mb"),
        ([("a", 600, 1.0, True, False)], 500, "MEMORY_BUDGET",
         "400 MiB of the 1000 MiB budget is free and the other models are in use or pinned (a)"),
        ([("a", 600, 1.0, False, True), ("b", 100, 2.0, False, False)], 500, "MEMORY_BUDGET",
         "(a); retry shortly"),
    ],
    ids=["larger-than-the-budget", "others-busy", "others-pinned"],
)  # fmt: skip
def test_refusals(
    tmp_path: Path,
    executor: ThreadPoolExecutor,
    loaded: list[tuple[str, int, float, bool, bool]],
    need_mb: int,
    reason: str,
    message: str,
) -> None:
    slots = [slot(executor, i, mb, t, busy=b, pinned=p) for i, mb, t, b, p in loaded]
    with pytest.raises(ResourceExhausted) as info:
        budget(tmp_path).plan_eviction(model_entry("new"), need_mb * MIB, slots)
    assert info.value.reason == reason
    assert message in info.value.message


def test_memory_reserved_by_loads_in_progress_counts(
    tmp_path: Path, executor: ThreadPoolExecutor
) -> None:
    slots = [slot(executor, "a", 400, 1.0)]
    plan = budget(tmp_path).plan_eviction(model_entry("new"), 400 * MIB, slots, reserved=300 * MIB)
    assert [s.entry.id for s in plan] == ["a"]

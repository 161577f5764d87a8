"""The engine reports on its buses: model events say why a model was unloaded, and
every generation leaves a request record (what metrics and D-Bus listen to)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from rustaid.builtin.llama_cpp import LlamaCppProvider
from rustaid.config import load_settings
from rustaid.core.engine import Done, Engine, GenerationRequest
from rustaid.core.events import UnloadReason
from rustaid.core.generation_types import RequestRecord
from rustaid.core.registry import ModelEvent, ModelEventType, ModelRegistry
from rustaid.providers import GenerationParams


def _engine(tmp_path: Path, tiny: Path, budget_mb: int) -> Engine:
    settings = dataclasses.replace(
        load_settings(data_dir=tmp_path, environ={}), memory_budget_mb=budget_mb, threads=1
    )
    settings.models_dir.mkdir(parents=True)
    for name in ("a", "b"):
        shutil.copy(tiny, settings.models_dir / f"{name}.gguf")
    provider = LlamaCppProvider()
    registry = ModelRegistry(
        settings.models_dir,
        llm_engines=lambda: {provider.name: provider},
        embedding_engines=dict,
    )
    found, _, _ = registry.scan()
    registry.apply(found)
    return Engine(settings, registry, lambda: {provider.name: provider})


def _unloads(events: list[ModelEvent]) -> list[tuple[str, str]]:
    return [(e.model.id, e.reason) for e in events if e.type is ModelEventType.UNLOADED]


async def test_unloaded_events_say_why(tmp_path: Path, model_files: dict[str, Path]) -> None:
    # Each tiny model needs about 33 MiB of the budget: one fits, not two.
    engine = _engine(tmp_path, model_files["tiny"], budget_mb=50)
    events: list[ModelEvent] = []
    engine.registry.events.listen(events.append)
    try:
        await engine.load("a")
        await engine.load("b")  # a makes room
        assert _unloads(events) == [("a", UnloadReason.EVICTED)]
        await engine.unload("b")
        assert _unloads(events)[-1] == ("b", UnloadReason.REQUESTED)
        await engine.load("a")
    finally:
        await engine.stop()
    assert _unloads(events)[-1] == ("a", UnloadReason.STOPPING)
    loaded = [e for e in events if e.type is ModelEventType.LOADED]
    assert [e.reason for e in loaded] == ["", "", ""]


async def test_generations_leave_request_records(
    tmp_path: Path, model_files: dict[str, Path]
) -> None:
    engine = _engine(tmp_path, model_files["tiny"], budget_mb=200)
    records: list[RequestRecord] = []
    stop = engine.requests.listen(records.append)
    try:
        request = GenerationRequest("a", "hi", params=GenerationParams(max_tokens=3))
        done = [e async for e in engine.generate(request) if isinstance(e, Done)]
        assert len(records) == 1
        assert records[0].model_id == "a" and not records[0].failed
        assert records[0].stats == done[0].stats and records[0].timings == done[0].timings
        stop()  # a listener that stopped hears nothing more
        [e async for e in engine.generate(request)]
        assert len(records) == 1
    finally:
        await engine.stop()


async def test_a_failing_listener_neither_stops_the_publisher_nor_the_others(
    tmp_path: Path, model_files: dict[str, Path]
) -> None:
    engine = _engine(tmp_path, model_files["tiny"], budget_mb=200)
    heard: list[ModelEvent] = []

    def broken(_event: ModelEvent) -> None:
        raise RuntimeError("listener bug")

    engine.registry.events.listen(broken)
    engine.registry.events.listen(heard.append)
    try:
        await engine.load("a")
    finally:
        await engine.stop()
    assert [e.type for e in heard] == [ModelEventType.LOADED, ModelEventType.UNLOADED]

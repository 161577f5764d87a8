"""The model pool on its own (no engine around it): it reads the settings and the
policy through callables, so a reloaded budget applies to the next decision, and
after stop() it loads nothing more."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from rustaid.builtin.llama_cpp import LlamaCppProvider
from rustaid.config import Settings, load_settings
from rustaid.core.events import UnloadReason
from rustaid.core.model_pool import ModelPool
from rustaid.core.registry import ModelEvent, ModelEventType, ModelRegistry
from rustaid.errors import ResourceExhausted, Unavailable


class Current:
    """The settings in force, replaceable as a reload replaces them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __call__(self) -> Settings:
        return self.settings


def _pool(tmp_path: Path, tiny: Path) -> tuple[ModelPool, Current]:
    settings = dataclasses.replace(
        load_settings(data_dir=tmp_path, environ={}), memory_budget_mb=200, threads=1
    )
    settings.models_dir.mkdir(parents=True)
    shutil.copy(tiny, settings.models_dir / "a.gguf")
    provider = LlamaCppProvider()
    registry = ModelRegistry(
        settings.models_dir,
        llm_engines=lambda: {provider.name: provider},
        embedding_engines=dict,
    )
    found, _, _ = registry.scan()
    registry.apply(found)
    current = Current(settings)
    return ModelPool(current, registry, lambda: {provider.name: provider}, lambda: None), current


async def test_a_reloaded_budget_applies_to_the_next_load(
    tmp_path: Path, model_files: dict[str, Path]
) -> None:
    pool, current = _pool(tmp_path, model_files["tiny"])
    entry = pool.registry.get("a")
    try:
        assert pool.fits(entry) == ""
        # The tiny model needs about 33 MiB: a 10 MiB budget holds none of it.
        current.settings = dataclasses.replace(current.settings, memory_budget_mb=10)
        assert "more than the 10 MiB memory budget" in pool.fits(entry)
        with pytest.raises(ResourceExhausted) as refused:
            await pool.load("a")
        assert refused.value.reason == "MODEL_TOO_LARGE"
        assert pool.slots() == {}
        current.settings = dataclasses.replace(current.settings, memory_budget_mb=200)
        loaded, _ = await pool.load("a")
        assert loaded.id == "a" and list(pool.slots()) == ["a"]
        pool.slots().clear()  # a copy: the pool keeps its own
        assert pool.loaded() == [pool.registry.get("a")]
    finally:
        await pool.stop()


async def test_stop_frees_every_model_and_refuses_new_loads(
    tmp_path: Path, model_files: dict[str, Path]
) -> None:
    pool, _ = _pool(tmp_path, model_files["tiny"])
    events: list[ModelEvent] = []
    pool.registry.events.listen(events.append)
    await pool.load("a")
    await pool.stop()
    assert pool.stopping and pool.slots() == {}
    unloads = [(e.model.id, e.reason) for e in events if e.type is ModelEventType.UNLOADED]
    assert unloads == [("a", UnloadReason.STOPPING)]
    with pytest.raises(Unavailable, match="shutting down"):
        await pool.load("a")

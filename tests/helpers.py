"""Helpers shared by tests: polling for a condition, what a daemon lists, and domain
objects with defaults for the table-driven tests of pure decisions (one line per case)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from rustaid.api.v1 import models_pb2
from rustaid.core.registry import ModelEntry, ModelKind, ModelState
from tests.conftest import Stubs

MB = 1_000_000


def wait_until(predicate: Callable[[], object], timeout: float = 10.0) -> float:
    """Poll `predicate` until it is true; seconds waited. AssertionError after `timeout`."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.02)
    return time.monotonic() - t0


def listed(stubs: Stubs) -> dict[str, models_pb2.Model]:
    """The daemon's models by id (ListModels)."""
    return {m.id: m for m in stubs.models.ListModels(models_pb2.ListModelsRequest()).models}


def model_entry(
    model_id: str,
    size_mb: float = 100,
    *,
    state: ModelState = ModelState.AVAILABLE,
    remote: bool = False,
    priority: int = 0,
    tags: tuple[str, ...] = (),
    error: str = "",
    **changes: Any,
) -> ModelEntry:
    """A model as the registry lists it: a local GGUF file of `size_mb` MB (`remote`: an
    endpoint); `error` puts it in state ERROR; `changes` set any other field."""
    entry = ModelEntry(
        id=model_id,
        kind=ModelKind.LLM,
        path=None if remote else Path(f"/models/{model_id}.gguf"),
        size_bytes=int(size_mb * MB),
        mtime=0.0,
        url="https://example.invalid/v1" if remote else "",
        state=ModelState.ERROR if error else state,
        error=error,
        priority=priority,
        tags=tags,
    )
    return replace(entry, **changes)

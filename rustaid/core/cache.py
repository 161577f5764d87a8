"""Which loaded models stay in memory: a memory budget, least-recently-used eviction of
idle models, pins, and keep-alive expiry.

Only decisions live here; the engine does the loading and unloading they call for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import psutil

from rustaid.config import Settings
from rustaid.core.admission import RETRY_MIN_S, retry_delay
from rustaid.core.registry import ModelEntry
from rustaid.core.scheduler import ModelQueue
from rustaid.errors import ResourceExhausted
from rustaid.providers import LoadedLLM

MIB = 1 << 20
# llama.cpp's compute buffers and bookkeeping beyond weights and KV cache.
OVERHEAD_BYTES = 32 * MIB


def estimate_bytes(entry: ModelEntry, context_length: int) -> int:
    """Resident size of a loaded model: its weights (the file) plus an f16 KV cache for
    `context_length` tokens. Remote models cost nothing here."""
    if entry.path is None:
        return 0
    m = entry.metadata
    kv = 0
    if m.block_count and m.embedding_length and m.head_count:
        kv_dim = m.embedding_length * (m.head_count_kv or m.head_count) // m.head_count
        kv = 2 * m.block_count * context_length * kv_dim * 2
    return entry.size_bytes + kv + OVERHEAD_BYTES


def mb(n: int) -> str:
    return f"{n / MIB:.0f} MiB"


@dataclass
class LoadedSlot:
    entry: ModelEntry
    model: LoadedLLM
    queue: ModelQueue
    estimate_bytes: int
    # Seconds to stay loaded after the last use: -1 never unload, 0 unload right away.
    keep_alive_s: float
    # The one thread that runs this model's engine calls.
    executor: ThreadPoolExecutor
    # A model that batches (model.parallel > 1) decodes on a thread of its own; its
    # generate calls wait for their sequence on these threads, one per request (paused
    # ones included).
    requests: ThreadPoolExecutor | None = None
    # Such a model's quick calls (tokenize, count) take turns here, one at a time on
    # `executor`, beside the generations rather than in their slots.
    calls: ModelQueue | None = None
    last_used: float = field(default_factory=time.monotonic)
    closed: bool = False  # no new requests; freed once idle
    freed: bool = False
    timer: asyncio.TimerHandle | None = None

    @property
    def idle(self) -> bool:
        calls = self.calls
        return (
            not self.queue.busy
            and self.queue.waiting == 0
            and (calls is None or (not calls.busy and calls.waiting == 0))
        )


class MemoryBudget:
    def __init__(self, settings: Callable[[], Settings]) -> None:
        # Read at every decision, so a reloaded configuration (SIGHUP) applies at once.
        self._settings = settings

    @property
    def settings(self) -> Settings:
        return self._settings()

    def total_bytes(self, loaded_bytes: int) -> int:
        """The budget: configured, or a share of what is available plus what our models
        already hold (their memory is ours to give back)."""
        if self.settings.memory_budget_mb:
            base = self.settings.memory_budget_mb * MIB
        else:
            available = psutil.virtual_memory().available
            base = int((available + loaded_bytes) * self.settings.memory_budget_fraction)
        return base

    def plan_eviction(
        self, entry: ModelEntry, need: int, slots: list[LoadedSlot], reserved: int = 0
    ) -> list[LoadedSlot]:
        """Slots to unload (least recently used idle, unpinned first) so `need` fits.
        Raises ResourceExhausted with the numbers when it cannot fit."""
        loaded = sum(s.estimate_bytes for s in slots) + reserved
        total = self.total_bytes(loaded)
        if need > total:
            raise ResourceExhausted(
                f"model {entry.id!r} needs about {mb(need)} (weights {mb(entry.size_bytes)} + "
                f"KV cache) but the whole memory budget is {mb(total)}: load it with a "
                "smaller context_length or raise memory_budget_mb",
                reason="MODEL_TOO_LARGE",
                retry_after_s=0,
            )
        victims: list[LoadedSlot] = []
        candidates = sorted(
            (s for s in slots if s.idle and not s.entry.pinned and s.estimate_bytes),
            key=lambda s: s.last_used,
        )
        while loaded + need > total:
            if not candidates:
                busy = [s.entry.id for s in slots if s not in victims and s.estimate_bytes]
                raise ResourceExhausted(
                    f"model {entry.id!r} needs about {mb(need)}; {mb(total - loaded)} of the "
                    f"{mb(total)} budget is free and the other models are in use or pinned "
                    f"({', '.join(busy)}); retry shortly",
                    reason="MEMORY_BUDGET",
                    retry_after_s=_until_freed(need - (total - loaded), slots, victims),
                )
            victim = candidates.pop(0)
            victims.append(victim)
            loaded -= victim.estimate_bytes
        return victims


def _until_freed(short: int, slots: list[LoadedSlot], victims: list[LoadedSlot]) -> float:
    """Seconds until models in use have drained enough to free `short` more bytes (the
    queues' own estimates, soonest first); idle models already counted are not waited
    for. Pinned models are never freed, so they do not count."""
    busy = sorted(
        (s for s in slots if s not in victims and not s.entry.pinned and s.estimate_bytes),
        key=lambda s: s.queue.drain_estimate(),
    )
    wait = RETRY_MIN_S
    for slot in busy:
        wait = slot.queue.drain_estimate()
        short -= slot.estimate_bytes
        if short <= 0:
            break
    return retry_delay(wait)

"""How many requests a loaded model serves at once (its sequences in one batch).

Each sequence holds a KV cache of the model's full context, so the memory budget must
hold the weights plus the KV of every sequence. Batching pays where decoding waits on
memory more than on arithmetic: a few sequences per core keep the cores busy; past
that, each stream only gets slower. A single-core device serves one at a time.
"""

from __future__ import annotations

# Sequences per physical core when nothing is configured, and the most by default.
PER_CORE = 2
DEFAULT_MAX = 4


def choose_parallel(
    configured: int, cores: int, weights_bytes: int, kv_bytes: int, budget_bytes: int
) -> int:
    """`configured` (models.toml's, else the daemon's setting; 0 is automatic), lowered
    until the weights plus `kv_bytes` per sequence fit `budget_bytes` (at least 1)."""
    wanted = configured or (1 if cores <= 1 else min(DEFAULT_MAX, PER_CORE * cores))
    while wanted > 1 and weights_bytes + wanted * kv_bytes > budget_bytes:
        wanted -= 1
    return max(1, wanted)

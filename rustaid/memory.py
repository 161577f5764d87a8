"""Giving memory back to the system: glibc malloc settings for a long-running daemon.

glibc keeps freed memory for reuse: in the heap of each thread's arena, and (once a large
block mapped on its own was freed) it raises its mmap threshold up to 32 MiB, so later
large buffers (embedding batches, model load scratch) come from the heap too and stay
there after they are freed. A daemon that embedded one long batch, or loaded and unloaded
a model, then kept hundreds of MiB it no longer used. So, at start-up:

- M_MMAP_THRESHOLD fixed at 1 MiB (fixing it also turns the dynamic raise off): blocks of
  1 MiB or more get their own mapping, returned to the system the moment they are freed;
- M_ARENA_MAX 8: the worker pools' threads share at most eight arenas rather than up to
  eight per core, each holding freed memory of its own. Not fewer: with two, the thread
  that samples tokens and the event loop that streams them contend for an arena's lock
  on every token (generation ran at 0.88-0.91x of llama-cpp-python direct with 2 arenas,
  1.03x with 8: `tests/bench/generate.py --model synthetic --runs 3`).

And after a model is unloaded, `release_freed_memory()` trims the heaps (malloc_trim).
Variables MALLOC_MMAP_THRESHOLD_ and MALLOC_ARENA_MAX set in the environment win. On a C
library other than glibc, all of this does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os

log = logging.getLogger(__name__)

# mallopt() parameters (glibc malloc.h).
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 1 << 20
ARENA_MAX = 8


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt  # noqa: B018 (glibc only)
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def tune_allocator() -> None:
    """Make freed memory go back to the system (call once, early)."""
    libc = _libc()
    if libc is None:
        return
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    if "MALLOC_ARENA_MAX" not in os.environ:
        libc.mallopt(M_ARENA_MAX, ARENA_MAX)


def release_freed_memory() -> None:
    """Return the free pages of every malloc arena to the system (after an unload):
    first what only the cycle collector would free, then the heaps' free pages."""
    gc.collect()
    libc = _libc()
    if libc is not None:
        with contextlib.suppress(Exception):
            libc.malloc_trim(0)

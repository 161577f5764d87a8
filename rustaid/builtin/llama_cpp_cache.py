"""A prompt cache for llama-cpp-python that keeps its memory cap.

llama-cpp-python's `LlamaRAMCache` counts only the llama.cpp context state of each
saved `LlamaState` against its capacity; the copy of the logits it also keeps (one row
of n_vocab float32 per evaluated token, up to the batch size) is not counted, and is
~10x the context state for a small model with a large vocabulary. A cap of 256 MB could
so hold gigabytes.

`PromptCache` counts every byte a saved state holds (context state, logits, token ids
and its key) and evicts the least recently used states to stay under the cap. A model
made without `logits_all` never reads the saved logits back: sampling works on the
logits of the context, and a restored state is always decoded again before the next
sample. For such models only the last row is kept (`load_state` needs an array it can
broadcast), and the token ids are kept up to the evaluated count; `snapshot` saves a
state without copying the whole logits first.

numpy and llama_cpp are imported here, so import this module only once llama.cpp is
loaded.
"""

from __future__ import annotations

import ctypes
import mmap
from collections import OrderedDict
from collections.abc import Sequence

import llama_cpp
import numpy as np
import numpy.typing as npt
from llama_cpp.llama_cache import BaseLlamaCache


def state_nbytes(state: llama_cpp.LlamaState) -> int:
    """Bytes of memory a saved state holds (its arrays and its context state)."""
    # len(): the whole buffer, which may be a little larger than llama_state_size
    return len(state.llama_state) + int(state.scores.nbytes) + int(state.input_ids.nbytes)


def snapshot(llm: llama_cpp.Llama) -> llama_cpp.LlamaState:
    """`llm.save_state()` holding only what restoring needs: for a model without
    `logits_all`, the last row of logits only (a (1, n_vocab) array), never a copy of
    them all. The result is a valid argument of `llm.load_state`.

    The context state goes straight into anonymous memory of its own (one copy, not
    three), which returns to the system as soon as the state is dropped: megabytes
    allocated and freed over and over on the C heap would otherwise stay resident."""
    if llm._logits_all:
        return llama_cpp.Llama.save_state(llm)
    n = llm.n_tokens
    size = int(llama_cpp.llama_state_get_size(llm._ctx.ctx))
    mem = mmap.mmap(-1, max(size, 1))
    buf = (ctypes.c_uint8 * size).from_buffer(mem)
    written = int(llama_cpp.llama_state_get_data(llm._ctx.ctx, buf, size))
    del buf  # an exported buffer would keep the mapping from being closed
    if written > size:
        raise RuntimeError("llama.cpp wrote more state than it announced")
    rows = llm.scores[: max(min(n, llm.scores.shape[0]), 1)]
    return llama_cpp.LlamaState(
        input_ids=llm.input_ids.copy(),
        scores=rows[-1:].copy(),
        n_tokens=n,
        # any buffer will do: load_state copies it with from_buffer_copy
        llama_state=mem,  # type: ignore[arg-type]
        llama_state_size=written,
        seed=llm._seed,
    )


class PromptCache(BaseLlamaCache):
    """LRU cache of evaluated prompt states whose total memory stays <= capacity_bytes.

    Keys are the token sequences a state was saved after; a lookup returns the state
    whose key shares the longest prefix with the asked tokens (as LlamaRAMCache).
    """

    def __init__(self, capacity_bytes: int, n_ctx: int, logits_all: bool = False) -> None:
        super().__init__(capacity_bytes)
        self.n_ctx = n_ctx
        self.logits_all = logits_all
        # key (int32 tokens) -> (state, bytes counted for it); oldest first
        self._entries: OrderedDict[bytes, tuple[llama_cpp.LlamaState, int]] = OrderedDict()
        self._size = 0

    @property
    def cache_size(self) -> int:
        return self._size

    def __len__(self) -> int:
        return len(self._entries)

    def token_keys(self) -> list[list[int]]:
        """Token keys held, least recently used first."""
        return [np.frombuffer(k, dtype=np.intc).tolist() for k in self._entries]

    def entry_nbytes(self) -> list[int]:
        """Measured bytes of each entry (key included), least recently used first."""
        return [len(k) + state_nbytes(s) for k, (s, _) in self._entries.items()]

    def _longest(self, tokens: Sequence[int]) -> bytes | None:
        want = np.asarray(tokens, dtype=np.intc)
        best, best_len = None, 0
        for k in self._entries:
            have = np.frombuffer(k, dtype=np.intc)
            m = min(len(have), len(want))
            diff = np.flatnonzero(have[:m] != want[:m])
            common = int(diff[0]) if len(diff) else m
            if common > best_len:
                best, best_len = k, common
        return best

    def __contains__(self, key: Sequence[int]) -> bool:
        return self._longest(key) is not None

    def __getitem__(self, key: Sequence[int]) -> llama_cpp.LlamaState:
        found = self._longest(key)
        if found is None:
            raise KeyError("no cached state shares a prefix with these tokens")
        self._entries.move_to_end(found)
        state = self._entries[found][0]
        if len(state.input_ids) >= self.n_ctx:
            return state
        # load_state adopts input_ids as the context's token buffer: give it full length.
        ids = np.zeros(self.n_ctx, dtype=np.intc)
        ids[: len(state.input_ids)] = state.input_ids
        return llama_cpp.LlamaState(
            input_ids=ids,
            scores=state.scores,
            n_tokens=state.n_tokens,
            llama_state=state.llama_state,
            llama_state_size=state.llama_state_size,
            seed=state.seed,
        )

    def __setitem__(self, key: Sequence[int], value: llama_cpp.LlamaState) -> None:
        k = np.asarray(key, dtype=np.intc).tobytes()
        old = self._entries.pop(k, None)
        if old is not None:
            self._size -= old[1]
        value = self._slim(value)
        cost = len(k) + state_nbytes(value)
        if cost > self.capacity_bytes:
            return  # would evict everything and still not fit
        while self._entries and self._size + cost > self.capacity_bytes:
            _, (_, freed) = self._entries.popitem(last=False)
            self._size -= freed
        self._entries[k] = (value, cost)
        self._size += cost

    def clear(self) -> None:
        self._entries.clear()
        self._size = 0

    def _slim(self, state: llama_cpp.LlamaState) -> llama_cpp.LlamaState:
        """Drop what restoring a model without logits_all never reads."""
        if self.logits_all:
            return state
        scores: npt.NDArray[np.single] = state.scores
        ids: npt.NDArray[np.intc] = state.input_ids
        if len(scores) > 1:
            scores = scores[-1:].copy()
        if len(ids) > state.n_tokens:
            ids = ids[: state.n_tokens].copy()
        if scores is state.scores and ids is state.input_ids:
            return state
        return llama_cpp.LlamaState(
            input_ids=ids,
            scores=scores,
            n_tokens=state.n_tokens,
            llama_state=state.llama_state,
            llama_state_size=state.llama_state_size,
            seed=state.seed,
        )

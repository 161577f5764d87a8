"""Built-in plugin: sentence embeddings with ONNX Runtime and Hugging Face `tokenizers`.

A model is a folder under `models/embeddings/NAME/` holding `model.onnx` and
`tokenizer.json`, optionally a sentence-transformers `1_Pooling/config.json` (mean, CLS,
max, last-token or mean-sqrt-len pooling; mean when absent) and
`sentence_bert_config.json` (max_seq_length). The graph's inputs are read from the model
(`input_ids`, and `attention_mask`, `token_type_ids`, `position_ids` when it has them);
its output is either per-token states (pooled here) or one vector per text. Vectors are
L2-normalised. Texts are sorted by length and run in batches, so a batch pads little.
Dynamically quantised int8 graphs get per-token activation quantisation when loaded
(onnx_quantization.py), so a text's vector does not depend on its batch.

numpy, onnxruntime and tokenizers are imported when the first model loads.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from rustaid.builtin.onnx_quantization import (
    FUSIONS_TO_DISABLE,
    has_dynamic_quantization,
    per_token_quantized,
)
from rustaid.errors import PreconditionFailed
from rustaid.hookspecs import hookimpl
from rustaid.providers import (
    EmbeddingOptions,
    EmbeddingProvider,
    LoadedEmbedder,
    PluginInfo,
    ResourceRequirements,
)

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

PLUGIN = PluginInfo(
    name="onnx-embeddings",
    version="0.1.0",
    description="Sentence embeddings with ONNX Runtime and Hugging Face tokenizers.",
    requirements=ResourceRequirements(
        min_memory_bytes=64 << 20, cores=1, battery_draw_mw=3000, thermal_impact=50
    ),
)

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
DEFAULT_BATCH_SIZE = 32
# Runs of more padded tokens than this give their arena memory back when they end.
SHRINK_AFTER_TOKENS = 2048
# When no file says how long an input may be.
FALLBACK_MAX_TOKENS = 512
_POOLING_KEYS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_lasttoken": "last",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
}
_KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
# Outputs that already are one vector per text, and per-token outputs, by preference.
_POOLED_OUTPUTS = ("sentence_embedding", "sentence_embeddings", "embeddings", "text_embeds")
_TOKEN_OUTPUTS = ("last_hidden_state", "token_embeddings", "hidden_states")


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PreconditionFailed(
            f"{path} is not valid JSON: {e}", reason="MODEL_LOAD_FAILED"
        ) from e
    if not isinstance(data, dict):
        raise PreconditionFailed(f"{path} must hold a JSON object", reason="MODEL_LOAD_FAILED")
    return data


def read_pooling(folder: Path) -> str:
    """The pooling mode from 1_Pooling/config.json ("mean" when there is none)."""
    config_path = folder / "1_Pooling" / "config.json"
    if not config_path.is_file():
        return "mean"
    config = read_json(config_path)
    modes = [mode for key, mode in _POOLING_KEYS.items() if config.get(key)]
    if len(modes) != 1:
        raise PreconditionFailed(
            f"{config_path} must enable exactly one pooling mode of "
            f"{', '.join(_POOLING_KEYS)} (enabled: {', '.join(modes) or 'none'})",
            reason="MODEL_LOAD_FAILED",
        )
    return modes[0]


def read_max_tokens(folder: Path, tokenizer_config: dict[str, Any]) -> int:
    """Longest input: sentence_bert_config.json's max_seq_length, else tokenizer.json's
    truncation, else tokenizer_config.json's model_max_length, else config.json's
    max_position_embeddings."""
    candidates: list[Any] = []
    if (folder / "sentence_bert_config.json").is_file():
        candidates.append(read_json(folder / "sentence_bert_config.json").get("max_seq_length"))
    truncation = tokenizer_config.get("truncation")
    if isinstance(truncation, dict):
        candidates.append(truncation.get("max_length"))
    if (folder / "tokenizer_config.json").is_file():
        candidates.append(read_json(folder / "tokenizer_config.json").get("model_max_length"))
    if (folder / "config.json").is_file():
        candidates.append(read_json(folder / "config.json").get("max_position_embeddings"))
    for value in candidates:
        # tokenizer_config.json says 1e30 when it does not know.
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 1 << 20:
            return value
    return FALLBACK_MAX_TOKENS


def is_model_folder(path: Path) -> bool:
    """A folder holding model.onnx and tokenizer.json (embedding models, cross-encoders)."""
    return path.is_dir() and (path / MODEL_FILE).is_file() and (path / TOKENIZER_FILE).is_file()


def load_tokenizer(path: Path) -> Any:
    """A Hugging Face tokenizer from `path`, or PreconditionFailed saying why not."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises plain Exception
        raise PreconditionFailed(
            f"{path} cannot be read by Hugging Face tokenizers: {e}",
            reason="MODEL_LOAD_FAILED",
        ) from e


def session_options(threads: int, spin_wait: bool) -> Any:
    """ONNX Runtime session options for a model run on `threads` threads, one run at a
    time. Workers that spin between the operators of a run make it faster; the
    power-saving profiles turn that off (`spin_wait`). Either way they stop when a run
    ends: spinning on between runs took a core from the tokenizer and the gRPC reply
    (about 6 % of the daemon's embedding throughput on 2 cores) and burnt CPU while the
    daemon was idle."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin_wait else "0")
    so.add_session_config_entry("session.force_spinning_stop", "1")
    return so


def read_pad_token(tokenizer: Any, config: dict[str, Any]) -> tuple[int, str]:
    padding = config.get("padding")
    if isinstance(padding, dict) and isinstance(padding.get("pad_id"), int):
        return int(padding["pad_id"]), str(padding.get("pad_token") or "[PAD]")
    for token in ("[PAD]", "<pad>", "<|padding|>", "<unk>", "[UNK]"):
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return int(token_id), token
    return 0, "[PAD]"


class OnnxEmbedder(LoadedEmbedder):
    # Token counting has a tokenizer of its own (thread-safe, like every tokenizers one).
    concurrent_token_offsets = True

    def __init__(self, folder: Path, options: EmbeddingOptions) -> None:
        import numpy as np
        import onnxruntime as ort

        self.folder = folder
        self.threads = options.threads or psutil.cpu_count(logical=False) or 1
        self.batch_size = options.batch_size or DEFAULT_BATCH_SIZE
        tokenizer_path = folder / TOKENIZER_FILE
        tokenizer_config = read_json(tokenizer_path)
        self.pooling = read_pooling(folder)
        self.max_tokens = read_max_tokens(folder, tokenizer_config)
        # Two tokenizers: one truncates and pads for the model, one counts tokens.
        self._tokenizer = load_tokenizer(tokenizer_path)
        self._counter = load_tokenizer(tokenizer_path)
        self._counter.no_truncation()
        self._counter.no_padding()
        pad_id, pad_token = read_pad_token(self._tokenizer, tokenizer_config)
        self._tokenizer.enable_truncation(self.max_tokens)
        self._tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)
        self.special_tokens = self._tokenizer.num_special_tokens_to_add(False)
        # The model needs no character offsets: encode_batch_fast (tokenizers >= 0.20)
        # skips them.
        self._encode_batch = getattr(
            self._tokenizer, "encode_batch_fast", self._tokenizer.encode_batch
        )

        so = session_options(self.threads, options.spin_wait)
        # ONNX Runtime's CPU arena reuses buffers between the operators of a run, and is
        # shrunk when a large run ends: by itself it grows to the largest batch it has
        # seen and never shrinks. Without an arena every intermediate tensor of 1 MiB or
        # more got a fresh mapping (rustaid.memory) and its pages faulted in again:
        # ingestion of one-line documents ran at 342-394 chunks/s against 527-535 with
        # the arena (int8 all-MiniLM-L6-v2, 2 threads, alternating runs of the daemon).
        # Shrinking after every run cost that again in part (runs of 64 one-line texts:
        # 769-784 texts/s against 838-910 int8, 464-467 against 494-502 fp32), so runs of
        # at most SHRINK_AFTER_TOKENS keep the small arena they need.
        so.enable_cpu_mem_arena = True
        self._run_options = ort.RunOptions()
        self._shrink_options = ort.RunOptions()
        self._shrink_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        model: str | bytes = str(folder / MODEL_FILE)
        disabled: list[str] = []
        # Texts embedded in one run: an int8 graph that quantises per tensor must see one
        # text at a time to give it the same vector in any batch.
        self.run_size = self.batch_size
        try:
            if has_dynamic_quantization(folder / MODEL_FILE):
                rewritten = per_token_quantized(folder / MODEL_FILE)
                if rewritten is None:
                    self.run_size = 1
                else:
                    model, disabled = rewritten, FUSIONS_TO_DISABLE
            self._session = ort.InferenceSession(
                model, so, providers=["CPUExecutionProvider"], disabled_optimizers=disabled
            )
        except Exception as e:  # onnxruntime raises its own exception types
            raise PreconditionFailed(
                f"{folder / MODEL_FILE} cannot be loaded by ONNX Runtime: {e}",
                reason="MODEL_LOAD_FAILED",
            ) from e
        inputs = {i.name: i for i in self._session.get_inputs()}
        unknown = [name for name in inputs if name not in _KNOWN_INPUTS]
        if "input_ids" not in inputs or unknown:
            raise PreconditionFailed(
                f"{folder / MODEL_FILE} has inputs {', '.join(inputs)}; an embedding model "
                f"needs input_ids and may have {', '.join(_KNOWN_INPUTS[1:])}",
                reason="MODEL_LOAD_FAILED",
            )
        self._inputs = {
            name: np.int32 if "int32" in str(inp.type) else np.int64 for name, inp in inputs.items()
        }
        outputs = {o.name: o for o in self._session.get_outputs()}
        self._output, self._pooled = self._pick_output(outputs)
        if self._pooled:
            self.pooling = "model"
        probe = self._run(["hello"])
        self.dimension = int(probe.shape[1])
        self._size = (folder / MODEL_FILE).stat().st_size
        log.info(
            "loaded %s: %d dimensions, %d tokens max, %s pooling, %d threads",
            folder.name,
            self.dimension,
            self.max_tokens,
            self.pooling,
            self.threads,
        )

    def _pick_output(self, outputs: dict[str, Any]) -> tuple[str, bool]:
        for name in _POOLED_OUTPUTS:
            if name in outputs and len(outputs[name].shape or ()) == 2:
                return name, True
        for name in _TOKEN_OUTPUTS:
            if name in outputs and len(outputs[name].shape or ()) == 3:
                return name, False
        for name, output in outputs.items():
            rank = len(output.shape or ())
            if rank in (2, 3):
                return name, rank == 2
        raise PreconditionFailed(
            f"{self.folder / MODEL_FILE} has no output shaped [batch, dim] or "
            f"[batch, tokens, dim] (outputs: {', '.join(outputs)})",
            reason="MODEL_LOAD_FAILED",
        )

    def _feed(self, encodings: Sequence[Any]) -> tuple[dict[str, Any], npt.NDArray[Any]]:
        import numpy as np

        ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
        feed: dict[str, Any] = {}
        for name, dtype in self._inputs.items():
            if name == "input_ids":
                value = ids
            elif name == "attention_mask":
                value = mask
            elif name == "token_type_ids":
                value = np.asarray([e.type_ids for e in encodings], dtype=np.int64)
            else:  # position_ids
                value = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int64), ids.shape)
            feed[name] = value.astype(dtype, copy=False)
        return feed, mask

    def _run(
        self, texts: Sequence[str], truncated: list[bool] | None = None
    ) -> npt.NDArray[np.float32]:
        import numpy as np

        encodings = self._encode_batch(list(texts))
        if truncated is not None:
            truncated.extend(bool(e.overflowing) for e in encodings)
        feed, mask = self._feed(encodings)
        large = mask.size > SHRINK_AFTER_TOKENS
        options = self._shrink_options if large else self._run_options
        out = self._session.run([self._output], feed, options)[0].astype(np.float32, copy=False)
        if not self._pooled:
            out = self._pool(out, mask)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        result: npt.NDArray[np.float32] = out / np.maximum(norms, 1e-12)
        return result

    def _pool(self, states: npt.NDArray[Any], mask: npt.NDArray[Any]) -> npt.NDArray[Any]:
        import numpy as np

        pooled: npt.NDArray[Any]
        if self.pooling == "cls":
            pooled = states[:, 0]
        elif self.pooling == "max":
            pooled = np.where(mask[:, :, None] > 0, states, -np.inf).max(axis=1)
        elif self.pooling == "last":
            last = np.maximum(mask.sum(axis=1) - 1, 0)
            pooled = states[np.arange(states.shape[0]), last]
        else:
            # [batch, 1, tokens] @ [batch, tokens, dim]: the masked sum without a
            # temporary the size of the states (a quarter of the time of multiply-and-sum).
            weights = mask.astype(states.dtype)
            summed = np.matmul(weights[:, None, :], states)[:, 0]
            counts = np.maximum(weights.sum(axis=1, keepdims=True), 1e-9)
            pooled = summed / (np.sqrt(counts) if self.pooling == "mean_sqrt_len" else counts)
        return pooled

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return self.embed_reporting(texts)[0]

    def embed_reporting(self, texts: Sequence[str]) -> tuple[list[list[float]], list[int]]:
        result, truncated = self._embed_array(texts)
        vectors: list[list[float]] = result.tolist()
        return vectors, truncated

    def embed_packed(self, texts: Sequence[str]) -> tuple[bytes, list[int]]:
        result, truncated = self._embed_array(texts)
        return result.astype("<f4", copy=False).tobytes(), truncated

    def _embed_array(self, texts: Sequence[str]) -> tuple[npt.NDArray[np.float32], list[int]]:
        import numpy as np

        result = np.empty((len(texts), self.dimension), dtype=np.float32)
        # Similar lengths in a batch: little padding, so little wasted compute.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        truncated: list[bool] = []
        for start in range(0, len(order), self.run_size):
            batch = order[start : start + self.run_size]
            result[batch] = self._run([texts[i] for i in batch], truncated)
        return result, sorted(order[k] for k, cut in enumerate(truncated) if cut)

    def token_offsets(self, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        if not texts:
            return []
        encodings = self._counter.encode_batch(list(texts), add_special_tokens=False)
        return [list(e.offsets) for e in encodings]

    def memory_bytes(self) -> int:
        return self._size

    def close(self) -> None:
        self._session = None


class OnnxEmbeddingProvider(EmbeddingProvider):
    name = "onnx"
    # NAME.onnx files and NAME/ folders holding model.onnx (served: with tokenizer.json).
    suffixes = (".onnx",)
    folder_markers = (MODEL_FILE,)

    def handles(self, path: Path) -> bool:
        return is_model_folder(path)

    def load(self, path: Path, options: EmbeddingOptions) -> LoadedEmbedder:
        if not self.handles(path):
            raise PreconditionFailed(
                f"{path} is not an ONNX embedding model folder: it needs {MODEL_FILE} and "
                f"{TOKENIZER_FILE}",
                reason="MODEL_LOAD_FAILED",
            )
        return OnnxEmbedder(path, options)


@hookimpl
def register_embedding_providers(register: Any) -> None:
    register(OnnxEmbeddingProvider())

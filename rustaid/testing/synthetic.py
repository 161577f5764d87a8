"""Synthetic llama-architecture GGUF models for tests and benchmarks.

The files have random weights but real shapes and a real SentencePiece-style
vocabulary, so llama.cpp (through llama-cpp-python) loads them, tokenizes,
generates, streams and applies chat templates exactly as with a real model.
Token speed depends on shapes and quantisation only, so a synthetic file with
the shapes of a real model (see `SMOLLM2_135M`) measures the engine honestly.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType, TokenType

__all__ = [
    "DEFAULT_CHAT_TEMPLATE",
    "N_BASE_TOKENS",
    "SMOLLM2_135M",
    "TINY",
    "FileType",
    "ModelShape",
    "base_vocab",
    "write_llama_gguf",
    "write_truncated_copy",
]

FileType = Literal["F32", "F16", "Q8_0", "Q4_0"]

UNK_ID = 0
BOS_ID = 1
EOS_ID = 2
_SPACE = "\u2581"  # SentencePiece word-boundary marker "▁"
_WEIGHT_STD = 0.02

# Whole words in the vocabulary. Every "▁"-prefix of each word is a token too, so
# the SentencePiece merge algorithm can build the word from its characters.
_WORDS = (
    *("the", "a", "an", "and", "or", "of", "to", "in", "on", "at", "is", "are", "was", "be"),
    *("it", "this", "that", "with", "for", "as", "by", "from", "not", "no", "yes", "i", "you"),
    *("he", "she", "we", "they", "my", "your", "hello", "hi", "world", "model", "test"),
    *("token", "text", "rust", "aid", "daemon", "chat", "answer", "question", "user"),
    *("assistant", "system", "json", "true", "false", "null", "name", "value", "one", "two"),
    *("three", "four", "five", "good", "bad", "ok", "done", "what", "how", "why", "when"),
    *("where", "who", "which", "can", "will", "do", "does", "say", "said"),
)
_PUNCTUATION = tuple(".,!?:;'\"-()[]{}<>/\\@#$%&*+=_|~`^")
_CONTROL_WORDS = ("<|im_start|>", "<|im_end|>")


@dataclass(frozen=True)
class ModelShape:
    """Hyper-parameters of a llama-architecture model."""

    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 128
    vocab_extra_words: int = 0
    """Filler word tokens beyond the base vocabulary (see `N_BASE_TOKENS`)."""
    context_length: int = 512
    tie_embeddings: bool = False
    """Omit ``output.weight``; llama.cpp then reuses ``token_embd.weight``."""

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError("n_embd must be a multiple of n_head")
        if self.n_head % self.n_head_kv:
            raise ValueError("n_head must be a multiple of n_head_kv")
        if (self.n_embd // self.n_head) % 2:
            raise ValueError("head size must be even (RoPE)")
        if min(self.n_layer, self.n_ff, self.context_length) <= 0 or self.vocab_extra_words < 0:
            raise ValueError("invalid model shape")

    @property
    def head_dim(self) -> int:
        """Size of one attention head."""
        return self.n_embd // self.n_head

    @property
    def n_vocab(self) -> int:
        """Total number of tokens."""
        return N_BASE_TOKENS + self.vocab_extra_words

    def n_params(self) -> int:
        """Number of weights in the model."""
        hd = self.head_dim
        per_layer = (
            2 * self.n_embd
            + 2 * self.n_embd * self.n_embd
            + 2 * self.n_embd * hd * self.n_head_kv
            + 3 * self.n_embd * self.n_ff
        )
        n_out = 0 if self.tie_embeddings else self.n_vocab * self.n_embd
        return self.n_vocab * self.n_embd + n_out + self.n_embd + self.n_layer * per_layer


def base_vocab() -> list[tuple[str, float, TokenType]]:
    """The fixed part of the vocabulary: (text, score, type) in id order."""
    vocab: list[tuple[str, float, TokenType]] = [
        ("<unk>", 0.0, TokenType.UNKNOWN),
        ("<s>", 0.0, TokenType.CONTROL),
        ("</s>", 0.0, TokenType.CONTROL),
    ]
    vocab += [(f"<0x{b:02X}>", 0.0, TokenType.BYTE) for b in range(256)]
    pieces: dict[str, None] = dict.fromkeys([_SPACE])
    pieces.update(dict.fromkeys(chr(c) for c in range(ord("a"), ord("z") + 1)))
    pieces.update(dict.fromkeys(str(d) for d in range(10)))
    pieces.update(dict.fromkeys(_PUNCTUATION))
    for word in _WORDS:
        w = _SPACE + word
        pieces.update(dict.fromkeys(w[:n] for n in range(2, len(w) + 1)))
    # Longer pieces get higher scores, as in a trained SentencePiece model.
    vocab += [
        (p, -1000.0 + 10.0 * len(p) - 0.001 * i, TokenType.NORMAL) for i, p in enumerate(pieces)
    ]
    vocab += [(c, 0.0, TokenType.CONTROL) for c in _CONTROL_WORDS]
    return vocab


N_BASE_TOKENS = len(base_vocab())
"""Number of tokens every synthetic model has."""

TINY = ModelShape()
"""A model of about 0.5 MB (F32) that loads and generates in milliseconds."""

SMOLLM2_135M = ModelShape(
    n_embd=576,
    n_layer=30,
    n_head=9,
    n_head_kv=3,
    n_ff=1536,
    vocab_extra_words=49152 - N_BASE_TOKENS,
    context_length=2048,
    tie_embeddings=True,
)
"""The shapes of HuggingFaceTB/SmolLM2-135M (tied embeddings, 49152 tokens)."""

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""A ChatML template like SmolLM2's (without its default system prompt)."""

_QUANT_FTYPES = {"Q8_0": LlamaFileType.MOSTLY_Q8_0, "Q4_0": LlamaFileType.MOSTLY_Q4_0}


def _vocab(shape: ModelShape) -> list[tuple[str, float, TokenType]]:
    vocab = base_vocab()
    vocab += [
        (f"{_SPACE}w{i}", -2000.0 - 0.001 * i, TokenType.NORMAL)
        for i in range(shape.vocab_extra_words)
    ]
    return vocab


def _tensor_specs(shape: ModelShape) -> Iterator[tuple[str, tuple[int, ...]]]:
    """Tensor names with numpy shapes (ggml ``ne`` reversed), in file order."""
    e, ff, kv = shape.n_embd, shape.n_ff, shape.head_dim * shape.n_head_kv
    yield "token_embd.weight", (shape.n_vocab, e)
    yield "output_norm.weight", (e,)
    if not shape.tie_embeddings:
        yield "output.weight", (shape.n_vocab, e)
    for i in range(shape.n_layer):
        yield f"blk.{i}.attn_norm.weight", (e,)
        yield f"blk.{i}.attn_q.weight", (e, e)
        yield f"blk.{i}.attn_k.weight", (kv, e)
        yield f"blk.{i}.attn_v.weight", (kv, e)
        yield f"blk.{i}.attn_output.weight", (e, e)
        yield f"blk.{i}.ffn_norm.weight", (e,)
        yield f"blk.{i}.ffn_gate.weight", (ff, e)
        yield f"blk.{i}.ffn_up.weight", (ff, e)
        yield f"blk.{i}.ffn_down.weight", (e, ff)


def _tmp_path_beside(path: Path, suffix: str) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(name)


def _write_float_gguf(
    path: Path, shape: ModelShape, *, seed: int, name: str, chat_template: str | None, f16: bool
) -> None:
    writer = GGUFWriter(path, "llama")
    writer.add_name(name)
    writer.add_file_type(LlamaFileType.MOSTLY_F16 if f16 else LlamaFileType.ALL_F32)
    writer.add_vocab_size(shape.n_vocab)
    writer.add_context_length(shape.context_length)
    writer.add_embedding_length(shape.n_embd)
    writer.add_block_count(shape.n_layer)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_rope_freq_base(10000.0)

    vocab = _vocab(shape)
    writer.add_tokenizer_model("llama")
    writer.add_token_list([t for t, _, _ in vocab])
    writer.add_token_scores([s for _, s, _ in vocab])
    writer.add_token_types([k for _, _, k in vocab])
    writer.add_unk_token_id(UNK_ID)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_eot_token_id(N_BASE_TOKENS - 1)  # <|im_end|>
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(True)
    if chat_template is not None:
        writer.add_chat_template(chat_template)

    # Declare all tensors first, then generate and write them one at a time so
    # that memory use stays at one tensor even for large shapes.
    specs = list(_tensor_specs(shape))
    big_dtype = np.dtype(np.float16 if f16 else np.float32)
    for tname, tshape in specs:
        dtype = big_dtype if len(tshape) > 1 else np.dtype(np.float32)
        writer.add_tensor_info(tname, tshape, dtype, int(np.prod(tshape)) * dtype.itemsize)
    rng = np.random.default_rng(seed)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for _, tshape in specs:
            data: npt.NDArray[np.floating]
            if len(tshape) == 1:  # RMS-norm weights
                data = np.ones(tshape, dtype=np.float32)
            else:
                data = rng.standard_normal(tshape, dtype=np.float32)
                data *= _WEIGHT_STD
                if f16:
                    data = data.astype(np.float16)
            writer.write_tensor_data(data)
    finally:
        writer.close()


def _quantize(src: Path, dst: Path, file_type: str, shape: ModelShape) -> None:
    import llama_cpp  # optional, heavy dependency: imported lazily
    from llama_cpp._logger import logger as llama_logger

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(_QUANT_FTYPES[file_type])
    if shape.n_embd % 256:
        # Q4_0 files get a Q6_K output tensor, which needs rows of 256: ask for
        # llama.cpp's own fallback up front instead of having it warn on stderr.
        params.output_tensor_type = int(GGMLQuantizationType.Q8_0)
    # llama-cpp-python's log callback prints llama.cpp's per-tensor progress to
    # stderr unless its logger's level is raised.
    old_level = llama_logger.level
    llama_logger.setLevel(max(old_level, logging.ERROR))
    try:
        rc = llama_cpp.llama_model_quantize(
            os.fsencode(src), os.fsencode(dst), ctypes.byref(params)
        )
    finally:
        llama_logger.setLevel(old_level)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed with code {rc}")


def write_llama_gguf(
    path: str | os.PathLike[str],
    shape: ModelShape = TINY,
    *,
    seed: int = 0,
    name: str = "synthetic",
    chat_template: str | None = DEFAULT_CHAT_TEMPLATE,
    file_type: FileType = "F32",
) -> Path:
    """Write a random-weight llama GGUF model to `path` atomically and return the path.

    The same `shape`, `seed` and `file_type` always give the same weights.
    Q8_0 and Q4_0 need llama-cpp-python (``llama_model_quantize``).
    """
    if file_type not in ("F32", "F16", "Q8_0", "Q4_0"):
        raise ValueError(f"unsupported file_type {file_type!r}")
    out = Path(path)
    tmp = _tmp_path_beside(out, ".tmp")
    quant_src: Path | None = None
    try:
        f16 = file_type != "F32"
        if file_type in _QUANT_FTYPES:
            quant_src = _tmp_path_beside(out, ".f16.tmp")
        src = quant_src or tmp
        _write_float_gguf(src, shape, seed=seed, name=name, chat_template=chat_template, f16=f16)
        if quant_src is not None:
            _quantize(quant_src, tmp, file_type, shape)
        tmp.chmod(0o644)  # mkstemp creates 0600
        tmp.replace(out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if quant_src is not None:
            with contextlib.suppress(FileNotFoundError):
                quant_src.unlink()
    return out


def write_truncated_copy(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], keep_fraction: float = 0.5
) -> Path:
    """Copy the first `keep_fraction` of `src` to `dst` (a damaged model file)."""
    if not 0.0 <= keep_fraction < 1.0:
        raise ValueError("keep_fraction must be in [0, 1)")
    out = Path(dst)
    with Path(src).open("rb") as f:
        data = f.read(int(os.fstat(f.fileno()).st_size * keep_fraction))
    out.write_bytes(data)
    return out

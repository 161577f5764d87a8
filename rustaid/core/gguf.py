"""Read a GGUF file's metadata and tensor table without loading its weights.

Also proves the file is complete: every tensor's data must lie inside the file, so a
truncated or half-copied model is reported instead of crashing the engine later.
Pure stdlib (no numpy) so scanning the models folder stays cheap at start-up.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rustaid.providers import ModelFileError, ModelMetadata

MAGIC = b"GGUF"
MAX_STRING = 16 << 20  # a single metadata string larger than this is corruption
MAX_ARRAY = 1 << 24
MAX_TENSORS = 1 << 20
# Arrays of arrays deeper than this are corruption (real files nest at most 2 levels).
MAX_NESTING = 16
# Longer arrays are walked past and kept as their length (like the vocabulary), so the
# metadata of any file stays small.
MAX_KEPT_ITEMS = 4096

# value type -> struct format for scalars
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}  # fmt: skip
_STRING, _ARRAY = 8, 9

# ggml tensor type -> (bytes per block, elements per block)
_TYPE_SIZE = {
    0: (4, 1), 1: (2, 1), 2: (18, 32), 3: (20, 32), 6: (22, 32), 7: (24, 32), 8: (34, 32),
    9: (36, 32), 10: (84, 256), 11: (110, 256), 12: (144, 256), 13: (176, 256),
    14: (210, 256), 15: (292, 256), 16: (66, 256), 17: (74, 256), 18: (98, 256),
    19: (50, 256), 20: (18, 32), 21: (110, 256), 22: (82, 256), 23: (136, 256), 24: (1, 1),
    25: (2, 1), 26: (4, 1), 27: (8, 1), 28: (8, 1), 29: (56, 256), 30: (2, 1),
    34: (54, 256), 35: (66, 256), 39: (17, 32),
}  # fmt: skip

# llama_ftype (general.file_type) -> name
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0",
    38: "MXFP4_MOE",
}  # fmt: skip


class GGUFError(ValueError):
    """The file is not a valid, complete GGUF file."""


class GGUFTruncated(GGUFError):
    """The file ends too early: corrupt, or still being copied."""


@dataclass(frozen=True)
class GGUFInfo:
    version: int
    metadata: dict[str, Any]
    tensor_count: int
    parameter_count: int
    architecture: str
    name: str
    context_length: int
    embedding_length: int
    block_count: int
    head_count: int
    head_count_kv: int
    vocab_size: int
    quantization: str
    chat_template: str


class _Reader:
    def __init__(self, buf: mmap.mmap | bytes) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise GGUFTruncated(f"truncated: needs {end} bytes, file has {len(self.buf)}")
        data = self.buf[self.pos : end]
        self.pos = end
        return bytes(data)

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.scalar("<Q")
        if n > MAX_STRING:
            raise GGUFError(f"string of {n} bytes at offset {self.pos}: corrupt")
        return self.take(n).decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        n = self.scalar("<Q")
        if n > MAX_STRING:
            raise GGUFError(f"string of {n} bytes at offset {self.pos}: corrupt")
        self.take(n)

    def value(self, vtype: int, keep: bool, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            if depth >= MAX_NESTING:
                raise GGUFError(f"arrays nested more than {MAX_NESTING} deep at offset {self.pos}")
            etype, count = self.scalar("<I"), self.scalar("<Q")
            if count > MAX_ARRAY:
                raise GGUFError(f"array of {count} items: corrupt")
            keep = keep and count <= MAX_KEPT_ITEMS
            if not keep:  # large arrays (vocabularies): walk past them, keep only the length
                if etype in _SCALARS:
                    self.take(struct.calcsize(_SCALARS[etype]) * count)
                elif etype == _STRING:
                    for _ in range(count):
                        self.skip_string()
                else:
                    for _ in range(count):
                        self.value(etype, keep=False, depth=depth + 1)
                return count
            return [self.value(etype, keep=True, depth=depth + 1) for _ in range(count)]
        raise GGUFError(f"unknown metadata value type {vtype} at offset {self.pos}")


def read_gguf(path: Path) -> GGUFInfo:
    """Parse header, metadata and tensor table; raise GGUFError if invalid or truncated."""
    with path.open("rb") as f:
        size = path.stat().st_size
        if size < 24:
            raise GGUFTruncated(f"file is {size} bytes: too small to be GGUF")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(_Reader(buf), size)


def _parse(r: _Reader, size: int) -> GGUFInfo:
    if r.take(4) != MAGIC:
        raise GGUFError("not a GGUF file (bad magic)")
    version = r.scalar("<I")
    if version not in (2, 3):
        raise GGUFError(f"unsupported GGUF version {version}")
    n_tensors, n_kv = r.scalar("<Q"), r.scalar("<Q")
    if n_tensors > MAX_TENSORS or n_kv > MAX_TENSORS:
        raise GGUFError("tensor or metadata count out of range: corrupt")
    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        key = r.string()
        vtype = r.scalar("<I")
        meta[key] = r.value(vtype, keep=not key.startswith("tokenizer.ggml."))
    params = 0
    data_end = 0
    type_counts: dict[int, int] = {}
    for _ in range(n_tensors):
        r.skip_string()
        n_dims = r.scalar("<I")
        if n_dims > 8:
            raise GGUFError(f"tensor with {n_dims} dimensions: corrupt")
        n_elems = 1
        for _ in range(n_dims):
            n_elems *= r.scalar("<Q")
        ttype, offset = r.scalar("<I"), r.scalar("<Q")
        params += n_elems
        type_counts[ttype] = type_counts.get(ttype, 0) + n_elems
        block_bytes, block_elems = _TYPE_SIZE.get(ttype, (0, 1))
        data_end = max(data_end, offset + n_elems // block_elems * block_bytes)
    alignment = meta.get("general.alignment", 32)
    # As llama.cpp requires: a power of two (it refuses the file otherwise).
    if isinstance(alignment, bool) or not isinstance(alignment, int) or alignment <= 0:
        raise GGUFError(f"general.alignment is {alignment!r}, not a positive integer: corrupt")
    if alignment & (alignment - 1):
        raise GGUFError(f"general.alignment {alignment} is not a power of two: corrupt")
    data_start = -(-r.pos // alignment) * alignment
    if data_start + data_end > size:
        raise GGUFTruncated(
            f"truncated: tensor data needs {data_start + data_end} bytes, file has {size}"
            " (still being copied, or an incomplete download)"
        )
    arch = str(meta.get("general.architecture", ""))
    ftype = meta.get("general.file_type")
    if isinstance(ftype, int) and ftype in FILE_TYPES:
        quant = FILE_TYPES[ftype]
    elif type_counts:
        main_type = max(type_counts, key=lambda t: type_counts[t])
        quant = {0: "F32", 1: "F16", 30: "BF16"}.get(main_type, f"type{main_type}")
    else:
        quant = ""

    def arch_int(key: str) -> int:
        value = meta.get(f"{arch}.{key}", 0)
        return int(value) if isinstance(value, int | float) else 0

    tokens = meta.get("tokenizer.ggml.tokens", 0)
    return GGUFInfo(
        version=version,
        metadata=meta,
        tensor_count=n_tensors,
        parameter_count=params,
        architecture=arch,
        name=str(meta.get("general.name", "")),
        context_length=arch_int("context_length"),
        embedding_length=arch_int("embedding_length"),
        block_count=arch_int("block_count"),
        head_count=arch_int("attention.head_count"),
        head_count_kv=arch_int("attention.head_count_kv") or arch_int("attention.head_count"),
        vocab_size=tokens if isinstance(tokens, int) else 0,
        quantization=quant,
        chat_template=str(meta.get("tokenizer.chat_template", "")),
    )


def describe_gguf(path: Path) -> ModelMetadata:
    """A GGUF file's metadata for the model registry (what GGUF engines' describe()
    returns); ModelFileError when the file is unreadable, incomplete ones marked so."""
    try:
        info = read_gguf(path)
    except GGUFTruncated as e:
        raise ModelFileError(f"unreadable GGUF file: {e}", incomplete=True) from e
    except (GGUFError, OSError) as e:
        raise ModelFileError(f"unreadable GGUF file: {e}") from e
    return ModelMetadata(
        architecture=info.architecture,
        name=info.name,
        context_length=info.context_length,
        parameter_count=info.parameter_count,
        quantization=info.quantization,
        chat_template=info.chat_template,
        embedding_length=info.embedding_length,
        block_count=info.block_count,
        head_count=info.head_count,
        head_count_kv=info.head_count_kv,
        vocab_size=info.vocab_size,
    )

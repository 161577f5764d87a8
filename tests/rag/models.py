"""Tiny real embedding models for tests: an ONNX graph built with onnx.helper and a
WordPiece tokenizer.json built with Hugging Face `tokenizers`.

The graph looks up a vector per token (a random table) and zeroes padded positions, so
mean pooling gives a bag-of-words embedding: texts sharing words are close, which is
enough to test retrieval end to end with real ONNX Runtime and real tokenizers.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
WORDS = [
    "the",
    "a",
    "an",
    "and",
    "or",
    "of",
    "to",
    "in",
    "on",
    "at",
    "is",
    "are",
    "was",
    "be",
    "it",
    "this",
    "that",
    "with",
    "for",
    "as",
    "by",
    "from",
    "not",
    "how",
    "what",
    "why",
    "when",
    "where",
    "which",
    "who",
    "do",
    "does",
    "can",
    "will",
    "you",
    "your",
    "my",
    "we",
    "they",
    "install",
    "daemon",
    "model",
    "models",
    "plugin",
    "plugins",
    "folder",
    "file",
    "files",
    "socket",
    "battery",
    "power",
    "thermal",
    "update",
    "updates",
    "rollback",
    "signature",
    "collection",
    "collections",
    "search",
    "index",
    "chunk",
    "chunks",
    "embedding",
    "embeddings",
    "vector",
    "vectors",
    "query",
    "answer",
    "question",
    "document",
    "documents",
    "text",
    "page",
    "pages",
    "heading",
    "section",
    "cat",
    "cats",
    "kitten",
    "dog",
    "dogs",
    "car",
    "cars",
    "engine",
    "red",
    "blue",
    "green",
    "paris",
    "france",
    "berlin",
    "germany",
    "rome",
    "italy",
    "capital",
    "city",
    "river",
    "mountain",
    "music",
    "piano",
    "guitar",
    "violin",
    "apple",
    "banana",
    "fruit",
    "bread",
    "cheese",
    "milk",
    "coffee",
    "tea",
    "water",
    "fire",
    "earth",
    "linux",
    "grpc",
    "proto",
    "client",
    "server",
    "port",
    "token",
    "tokens",
    "memory",
    "cpu",
    "gpu",
    "disk",
    "network",
]
LETTERS = tuple("abcdefghijklmnopqrstuvwxyz0123456789")
PUNCTUATION = tuple(".,!?:;'\"-()[]{}<>/\\@#$%&*+=_|~`^")


def vocabulary() -> dict[str, int]:
    tokens = [*SPECIALS, *WORDS, *LETTERS, *PUNCTUATION, *(f"##{c}" for c in LETTERS)]
    return {t: i for i, t in enumerate(dict.fromkeys(tokens))}


def write_tokenizer(path: Path, max_length: int = 128) -> dict[str, int]:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = vocabulary()
    tokenizer = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer.enable_truncation(max_length)
    tokenizer.save(str(path))
    return vocab


def write_onnx(
    path: Path,
    vocab_size: int,
    dim: int,
    *,
    seed: int = 0,
    pooled_output: bool = False,
    int32_inputs: bool = False,
    token_type_ids: bool = True,
    extra_input: str = "",
) -> np.ndarray:
    """Write the graph; returns its token-vector table (for checking the pooling)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    table = rng.standard_normal((vocab_size, dim)).astype(np.float32)
    itype = TensorProto.INT32 if int32_inputs else TensorProto.INT64
    inputs = [
        helper.make_tensor_value_info("input_ids", itype, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", itype, ["batch", "seq"]),
    ]
    if token_type_ids:
        inputs.append(helper.make_tensor_value_info("token_type_ids", itype, ["batch", "seq"]))
    if extra_input:
        inputs.append(helper.make_tensor_value_info(extra_input, TensorProto.FLOAT, ["batch"]))
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["vectors"], axis=0),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "last_axis"], ["mask_3d"]),
        helper.make_node("Mul", ["vectors", "mask_3d"], ["last_hidden_state"]),
    ]
    initializers = [
        numpy_helper.from_array(table, "table"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "last_axis"),
    ]
    if token_type_ids:
        # Use the input (a graph may not ignore it): add 0 * token_type_ids.
        nodes += [
            helper.make_node("Cast", ["token_type_ids"], ["types_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["types_f", "zero"], ["types_zero"]),
            helper.make_node("Unsqueeze", ["types_zero", "last_axis"], ["types_3d"]),
            helper.make_node("Add", ["last_hidden_state", "types_3d"], ["states"]),
        ]
        initializers.append(numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"))
        states = "states"
    else:
        states = "last_hidden_state"
    if pooled_output:
        nodes += [
            helper.make_node("ReduceSum", [states, "seq_axis"], ["summed"], keepdims=0),
            helper.make_node("ReduceSum", ["mask_3d", "seq_axis"], ["counts"], keepdims=0),
            helper.make_node("Div", ["summed", "counts"], ["sentence_embedding"]),
        ]
        initializers.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "seq_axis"))
        outputs = [
            helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", dim])
        ]
    else:
        if states != "last_hidden_state":
            nodes.append(helper.make_node("Identity", [states], ["token_states"]))
            states = "token_states"
        outputs = [helper.make_tensor_value_info(states, TensorProto.FLOAT, ["batch", "seq", dim])]
    graph = helper.make_graph(nodes, "tiny-embedder", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return table


def write_model(
    folder: Path,
    *,
    dim: int = 16,
    seed: int = 0,
    max_length: int = 128,
    pooling: str = "",
    pooled_output: bool = False,
    int32_inputs: bool = False,
    token_type_ids: bool = True,
    extra_input: str = "",
) -> Path:
    """A complete model folder: model.onnx, tokenizer.json, optional 1_Pooling."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    vocab = write_tokenizer(folder / "tokenizer.json", max_length)
    write_onnx(
        folder / "model.onnx",
        len(vocab),
        dim,
        seed=seed,
        pooled_output=pooled_output,
        int32_inputs=int32_inputs,
        token_type_ids=token_type_ids,
        extra_input=extra_input,
    )
    if pooling:
        (folder / "1_Pooling").mkdir()
        config = {
            "word_embedding_dimension": dim,
            "pooling_mode_cls_token": pooling == "cls",
            "pooling_mode_mean_tokens": pooling == "mean",
            "pooling_mode_max_tokens": pooling == "max",
            "pooling_mode_mean_sqrt_len_tokens": pooling == "mean_sqrt_len",
        }
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(config))
    settle(folder)
    return folder


def settle(folder: Path) -> None:
    """Date the files an hour back: the daemon waits for fresh files to stop changing
    before it lists them (they may still be being copied)."""
    old = time.time() - 3600
    for path in [folder, *folder.rglob("*")]:
        os.utime(path, (old, old))


def token_ids(folder: Path, text: str) -> list[int]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    return list(tokenizer.encode(text).ids)


def normalise(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def expected_mean(table: np.ndarray, ids: Sequence[int]) -> np.ndarray:
    return normalise(table[list(ids)].mean(axis=0))

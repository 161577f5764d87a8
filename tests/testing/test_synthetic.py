"""Synthetic GGUF models load and run in the real llama-cpp-python."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import llama_cpp
import pytest

from rustaid.testing.synthetic import (
    DEFAULT_CHAT_TEMPLATE,
    N_BASE_TOKENS,
    SMOLLM2_135M,
    TINY,
    FileType,
    ModelShape,
    write_llama_gguf,
    write_truncated_copy,
)


def _load(path: Path, **kwargs: Any) -> llama_cpp.Llama:
    return llama_cpp.Llama(model_path=str(path), n_ctx=256, verbose=False, **kwargs)


def _complete(llm: llama_cpp.Llama, prompt: str = "hello world") -> str:
    out = llm.create_completion(prompt, max_tokens=8, temperature=0)
    assert isinstance(out, dict)
    assert out["usage"]["prompt_tokens"] == len(llm.tokenize(prompt.encode()))
    return str(out["choices"][0]["text"])


def test_tiny_loads_and_generates_deterministically(tmp_path: Path) -> None:
    start = time.perf_counter()
    a = write_llama_gguf(tmp_path / "a.gguf", seed=7)
    assert time.perf_counter() - start < 1.0
    b = write_llama_gguf(tmp_path / "b.gguf", seed=7)
    c = write_llama_gguf(tmp_path / "c.gguf", seed=8)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gguf", "b.gguf", "c.gguf"]

    llm = _load(a)
    assert llm.n_vocab() == TINY.n_vocab == N_BASE_TOKENS
    assert (llm.token_bos(), llm.token_eos()) == (1, 2)
    assert llm.metadata["general.architecture"] == "llama"
    assert llm.metadata["general.name"] == "synthetic"
    text = _complete(llm)
    assert text
    assert _complete(llm) == text
    assert _complete(_load(b)) == text


def test_tokenize_round_trip(tmp_path: Path) -> None:
    llm = _load(write_llama_gguf(tmp_path / "m.gguf"))
    tokens = llm.tokenize(b"hello world")
    assert tokens[0] == llm.token_bos()
    assert [llm.detokenize([t]) for t in tokens[1:]] == [b" hello", b" world"]
    assert llm.detokenize(tokens) == b"hello world"
    # Unknown characters fall back to byte tokens and still round-trip.
    text = "Grüße, Zoë! 42 \u2603"
    assert llm.detokenize(llm.tokenize(text.encode())).decode() == text
    # ChatML markers are single control tokens when special tokens are parsed.
    assert len(llm.tokenize(b"<|im_start|>", add_bos=False, special=True)) == 1


@pytest.mark.parametrize("file_type", ["F16", "Q8_0", "Q4_0"])
def test_other_file_types_load_and_are_smaller(tmp_path: Path, file_type: FileType) -> None:
    shape = ModelShape(vocab_extra_words=1000)
    f32 = write_llama_gguf(tmp_path / "f32.gguf", shape)
    small = write_llama_gguf(tmp_path / "small.gguf", shape, file_type=file_type)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f32.gguf", "small.gguf"]
    assert small.stat().st_size < f32.stat().st_size * (0.6 if file_type == "F16" else 0.4)
    llm = _load(small)
    assert llm.n_vocab() == N_BASE_TOKENS + 1000
    assert _complete(llm)


def test_chat_completion_uses_embedded_template(tmp_path: Path) -> None:
    llm = _load(write_llama_gguf(tmp_path / "m.gguf"))
    assert llm.metadata["tokenizer.chat_template"] == DEFAULT_CHAT_TEMPLATE
    assert llm.chat_format == "chat_template.default"
    out = llm.create_chat_completion(
        messages=[{"role": "user", "content": "hello"}], max_tokens=2, temperature=0
    )
    assert isinstance(out, dict)
    # llama-cpp-python's Jinja2 chat handler adds no BOS of its own (added_special=True);
    # only a template that emits {{ bos_token }} gets one.
    prompt = b"<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    expected = llm.tokenize(prompt, add_bos=False, special=True)
    assert out["usage"]["prompt_tokens"] == len(expected)
    assert out["choices"][0]["message"]["role"] == "assistant"


def test_without_chat_template(tmp_path: Path) -> None:
    llm = _load(write_llama_gguf(tmp_path / "m.gguf", chat_template=None, name="plain"))
    assert "tokenizer.chat_template" not in llm.metadata
    assert llm.metadata["general.name"] == "plain"


def test_embeddings(tmp_path: Path) -> None:
    path = write_llama_gguf(tmp_path / "m.gguf")
    llm = _load(path, embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN)
    assert len(llm.embed("hello world")) == TINY.n_embd
    # Without a pooling type, llama arch models return one vector per token.
    per_token = _load(path, embedding=True).embed("hello world")
    assert [len(v) for v in per_token] == [TINY.n_embd] * 3


def test_truncated_copy_fails_to_load(tmp_path: Path) -> None:
    src = write_llama_gguf(tmp_path / "m.gguf")
    dst = write_truncated_copy(src, tmp_path / "t.gguf", keep_fraction=0.5)
    assert dst.stat().st_size == src.stat().st_size // 2
    assert dst.read_bytes() == src.read_bytes()[: dst.stat().st_size]
    with pytest.raises(ValueError):
        _load(dst)
    with pytest.raises(ValueError):
        write_truncated_copy(src, tmp_path / "x.gguf", keep_fraction=1.0)


def test_invalid_shape_rejected() -> None:
    with pytest.raises(ValueError):
        ModelShape(n_embd=60, n_head=8)


@pytest.mark.slow
def test_smollm2_135m_shape(tmp_path: Path) -> None:
    assert SMOLLM2_135M.n_vocab == 49152
    assert 134e6 < SMOLLM2_135M.n_params() < 136e6
    path = write_llama_gguf(tmp_path / "smollm2.gguf", SMOLLM2_135M, file_type="Q8_0")
    assert 130e6 < path.stat().st_size < 160e6
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=2, verbose=False)
    assert llm.n_vocab() == 49152
    assert _complete(llm)

"""The registry lists what engines declare, and nothing else: a real ModelRegistry over
a real folder, with engines written here (no daemon: milliseconds each)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rustaid.core.registry import ModelKind, ModelRegistry, ModelState
from rustaid.providers import (
    EmbeddingOptions,
    EmbeddingProvider,
    GenerationParams,
    LoadedEmbedder,
    ModelFileError,
    ModelFiles,
    ModelMetadata,
    SimpleLLM,
)


class Chain(SimpleLLM):
    """Serves .chain files; its describe() reads the first line."""

    name = "chain"
    suffixes = (".chain",)
    checks_completeness = True

    def describe(self, path: Path) -> ModelMetadata:
        head = path.read_text().partition("\n")[0]
        if head == "#partial":
            raise ModelFileError("ends too early", incomplete=True)
        if head == "#boom":
            raise RuntimeError("reader bug")
        if not head.startswith("#chain "):
            raise ModelFileError("not a word chain")
        return ModelMetadata(architecture="chain", name=head.removeprefix("#chain "))

    def generate(self, model: Any, prompt: str, params: GenerationParams) -> Iterator[str]:
        yield ""


class Vectors(EmbeddingProvider):
    """Serves embeddings/NAME/ folders holding vectors.bin."""

    name = "vectors"
    folder_markers = ("vectors.bin",)

    def load(self, path: Path, options: EmbeddingOptions) -> LoadedEmbedder:
        raise NotImplementedError


OLD = time.time() - 3600  # written long ago: not being copied


def put(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, (OLD, OLD))


def registry(root: Path, engines: dict[str, ModelFiles]) -> ModelRegistry:
    return ModelRegistry(
        root,
        llm_engines=lambda: {n: e for n, e in engines.items() if isinstance(e, SimpleLLM)},
        embedding_engines=lambda: {
            n: e for n, e in engines.items() if isinstance(e, EmbeddingProvider)
        },
    )


def test_only_declared_files_are_listed_with_their_engine_and_metadata(tmp_path: Path) -> None:
    put(tmp_path / "team" / "Poem.chain", "#chain Poem\nroses\n")
    put(tmp_path / "notes.txt", "not a model")
    put(tmp_path / "x.gguf", "no engine declares .gguf here")
    put(tmp_path / "embeddings" / "mini" / "vectors.bin", "")
    put(tmp_path / "embeddings" / "other" / "readme.md", "")
    put(tmp_path / "embeddings" / "side.chain", "#chain not an LLM in embeddings/\n")
    put(tmp_path / "nlu" / "intents" / "vectors.bin", "")
    reg = registry(tmp_path, {"chain": Chain(), "vectors": Vectors()})
    reg.rescan()
    models = {e.id: e for e in reg.list()}
    assert sorted(models) == ["embeddings/mini", "nlu/intents", "team/poem"]
    poem = models["team/poem"]
    assert (poem.kind, poem.provider, poem.state) == (ModelKind.LLM, "chain", ModelState.AVAILABLE)
    assert poem.metadata == ModelMetadata(architecture="chain", name="Poem")
    assert (models["embeddings/mini"].kind, models["embeddings/mini"].provider) == (
        ModelKind.EMBEDDING,
        "vectors",
    )
    assert models["nlu/intents"].kind is ModelKind.NLU


def test_unreadable_files_are_listed_with_the_reason(tmp_path: Path) -> None:
    put(tmp_path / "bad.chain", "roses\n")
    put(tmp_path / "buggy.chain", "#boom\n")
    reg = registry(tmp_path, {"chain": Chain()})
    reg.rescan()
    models = {e.id: e for e in reg.list()}
    assert (models["bad"].state, models["bad"].error) == (ModelState.ERROR, "not a word chain")
    assert models["buggy"].error == "the chain engine could not read the file: reader bug"


def test_a_file_that_ends_too_early_waits_while_it_may_still_be_copied(tmp_path: Path) -> None:
    path = tmp_path / "copying.chain"
    path.write_text("#partial\n")  # written just now
    reg = registry(tmp_path, {"chain": Chain()})
    found, recheck, _ = reg.scan()
    assert "copying" not in found and recheck is not None
    os.utime(path, (OLD, OLD))  # nobody wrote to it for an hour: it is broken
    found, recheck, _ = reg.scan()
    assert found["copying"].error == "ends too early" and recheck is None


def test_files_of_an_engine_that_went_away_stay_listed_as_unserved(tmp_path: Path) -> None:
    put(tmp_path / "poem.chain", "#chain Poem\n")
    engines: dict[str, ModelFiles] = {"chain": Chain()}
    reg = registry(tmp_path, engines)
    reg.rescan()
    engines.clear()
    reg.rescan()
    gone = reg.get("poem")
    assert (gone.state, gone.provider) == (ModelState.ERROR, "")
    assert gone.error == "no loaded plugin provides an engine for this file"
    engines["chain"] = Chain()
    reg.rescan()
    assert reg.get("poem").state is ModelState.AVAILABLE

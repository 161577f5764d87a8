"""A third-party engine brings its own model file format, as a drop-in plugin of a
real daemon: its files are listed with the metadata it reads, the router selects its
model, and it serves generations, with no change to the daemon's core."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from rustaid.api.v1 import common_pb2, generate_pb2, models_pb2, plugins_pb2
from rustaid.testing.daemon import run_daemon
from tests.conftest import Stubs, add_model
from tests.helpers import listed, wait_until
from tests.services.test_generate import error_of, field_violations

DOC = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"


def doc_plugin(heading: str) -> str:
    """The first Python example under `heading` in docs/plugins.md, as written."""
    section = DOC.read_text().split(heading)[1]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)[0]


# A whole engine on SimpleLLM, and its ".chain" format (a header line, then the words
# it recites, one per token).
WORDCHAIN_PLUGIN = doc_plugin("### A whole engine in one method: SimpleLLM")
# The whole LLMProvider + LoadedLLM contract, serving ".echo" files.
ECHO_PLUGIN = doc_plugin("### A skeleton LLM provider")

P = common_pb2.GenerationParams


@pytest.fixture(scope="module")
def chained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stubs]:
    data_dir = tmp_path_factory.mktemp("formats")
    (data_dir / "plugins").mkdir(mode=0o755)
    (data_dir / "plugins" / "wordchain.py").write_text(WORDCHAIN_PLUGIN)
    models = data_dir / "models"
    models.mkdir()
    (models / "poem.chain").write_text("#chain Poem\nroses are red violets are blue\n")
    (models / "bad.chain").write_text("roses are red\n")
    old = time.time() - 3600  # files lying there, not being copied
    for name in ("poem.chain", "bad.chain"):
        os.utime(models / name, (old, old))
    with run_daemon(data_dir) as daemon:
        stubs = Stubs(daemon)
        yield stubs
        stubs.channel.close()


def test_the_engines_files_are_listed_with_the_metadata_it_reads(chained: Stubs) -> None:
    models = listed(chained)
    poem = models["poem"]
    assert poem.provider == "wordchain"
    assert poem.kind == common_pb2.MODEL_KIND_LLM
    assert poem.state == models_pb2.MODEL_STATE_AVAILABLE
    assert (poem.metadata.architecture, poem.metadata.name) == ("wordchain", "Poem")
    assert poem.metadata.vocab_size == 5
    bad = models["bad"]
    assert bad.state == models_pb2.MODEL_STATE_ERROR
    assert "the first line must start with '#chain '" in bad.error


def test_the_router_selects_its_model_and_it_generates(chained: Stubs) -> None:
    selected = chained.models.SelectModel(models_pb2.SelectModelRequest())
    assert selected.model_id == "poem"  # the broken file is excluded
    r = chained.generate.Generate(generate_pb2.GenerateRequest(prompt="hi", params=P(max_tokens=3)))
    assert r.model_id == "poem"
    assert r.text == "roses are red "
    assert r.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert r.usage.completion_tokens == 3
    assert r.usage.prompt_tokens == 2  # one token per byte


def test_stream_and_chat_stop_where_asked(chained: Stubs) -> None:
    chunks = list(
        chained.generate.GenerateStream(
            generate_pb2.GenerateStreamRequest(
                model_id="poem", prompt="hi", params=P(stop=["violets"])
            )
        )
    )
    text = "".join(r.chunk.text for r in chunks if r.WhichOneof("event") == "chunk")
    assert text == "roses are red "
    assert chunks[-1].done.finish_reason == common_pb2.FINISH_REASON_STOP_SEQUENCE
    chat = chained.generate.Chat(
        generate_pb2.ChatRequest(
            model_id="poem",
            messages=[generate_pb2.ChatMessage(role=generate_pb2.ROLE_USER, content="a poem?")],
            params=P(max_tokens=2),
        )
    )
    assert chat.message.content == "roses are "


def test_a_grammar_is_refused_with_what_to_change(chained: Stubs) -> None:
    err = error_of(
        lambda: chained.generate.Generate(
            generate_pb2.GenerateRequest(
                model_id="poem", prompt="hi", params=P(grammar='root ::= "a"')
            )
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "wordchain engine cannot constrain output" in err.details()
    assert field_violations(err) == ["params.grammar"]


def test_unloading_the_engine_leaves_its_files_listed_as_unserved(chained: Stubs) -> None:
    plugins = chained.plugins
    plugins.UnloadPlugin(plugins_pb2.UnloadPluginRequest(id="wordchain"))

    def poem() -> models_pb2.Model:
        return listed(chained)["poem"]

    wait_until(lambda: poem().state == models_pb2.MODEL_STATE_ERROR)
    assert "no loaded plugin provides an engine" in poem().error
    plugins.LoadPlugin(plugins_pb2.LoadPluginRequest(id="wordchain"))
    wait_until(lambda: poem().state == models_pb2.MODEL_STATE_AVAILABLE)
    assert poem().provider == "wordchain"


def test_built_in_gguf_models_are_served_beside_it(
    tmp_path_factory: pytest.TempPathFactory, model_files: dict[str, object]
) -> None:
    data_dir = tmp_path_factory.mktemp("formats-both")
    (data_dir / "plugins").mkdir(mode=0o755)
    (data_dir / "plugins" / "wordchain.py").write_text(WORDCHAIN_PLUGIN)
    add_model(data_dir, model_files["tiny"])  # type: ignore[arg-type]
    (data_dir / "models" / "poem.chain").write_text("#chain Poem\nroses\n")
    with run_daemon(data_dir) as daemon:
        stubs = Stubs(daemon)
        wait_until(lambda: {"tiny", "poem"} <= set(listed(stubs)))
        models = listed(stubs)
        assert (models["tiny"].provider, models["poem"].provider) == ("llama.cpp", "wordchain")
        assert models["tiny"].metadata.architecture == "llama"
        r = stubs.generate.Generate(
            generate_pb2.GenerateRequest(model_id="tiny", prompt="hello", params=P(max_tokens=2))
        )
        assert r.usage.completion_tokens >= 1
        stubs.channel.close()


def test_the_same_engine_installed_as_a_distribution(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    site = tmp_path_factory.mktemp("site")
    dist_info = site / "rustaid_wordchain-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: rustaid-wordchain\nVersion: 1.0\n"
    )
    (dist_info / "entry_points.txt").write_text("[rustaid]\nwordchain = rustaid_wordchain\n")
    (site / "rustaid_wordchain.py").write_text(WORDCHAIN_PLUGIN)
    data_dir = tmp_path_factory.mktemp("formats-entry-point")
    (data_dir / "models").mkdir()
    (data_dir / "models" / "poem.chain").write_text("#chain Poem\nroses are red\n")
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    env = {"RUSTAID_ENTRY_POINT_PLUGINS": "1", "PYTHONPATH": path}
    with run_daemon(data_dir, env=env) as daemon:
        stubs = Stubs(daemon)
        plugin = stubs.plugins.GetPlugin(plugins_pb2.GetPluginRequest(id="wordchain")).plugin
        assert plugin.source == plugins_pb2.PLUGIN_SOURCE_ENTRY_POINT
        wait_until(lambda: "poem" in listed(stubs))
        assert listed(stubs)["poem"].provider == "wordchain"
        r = stubs.generate.Generate(
            generate_pb2.GenerateRequest(model_id="poem", prompt="hi", params=P(max_tokens=2))
        )
        assert r.text == "roses are "
        stubs.channel.close()


def test_the_skeleton_provider_of_the_docs_serves_its_files(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    data_dir = tmp_path_factory.mktemp("formats-echo")
    (data_dir / "plugins").mkdir(mode=0o755)
    (data_dir / "plugins" / "echo_engine.py").write_text(ECHO_PLUGIN)
    (data_dir / "models").mkdir()
    (data_dir / "models" / "parrot.echo").write_text("")
    with run_daemon(data_dir) as daemon:
        stubs = Stubs(daemon)
        wait_until(lambda: "parrot" in listed(stubs))
        assert listed(stubs)["parrot"].provider == "echo"
        r = stubs.generate.Generate(
            generate_pb2.GenerateRequest(model_id="parrot", prompt="say it back", params=P())
        )
        assert r.text == "say it back "
        stubs.channel.close()

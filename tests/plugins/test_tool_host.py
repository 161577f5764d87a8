"""A plugin's tool reaches the daemon through its typed `ToolHost` (docs/plugins.md,
"What a tool sees of the daemon"): the example plugin, as written in the docs, runs as a
drop-in of a real daemon with a language model and a RAG collection."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from rustaid.api.v1 import rag_pb2, rag_pb2_grpc, tools_pb2, tools_pb2_grpc
from rustaid.testing.daemon import DaemonProcess, run_daemon
from tests.conftest import Stubs, add_model
from tests.plugins.test_model_formats import doc_plugin
from tests.rag.conftest import link_embedding_model, write_config
from tests.rag.models import write_model

BRIEFING_PLUGIN = doc_plugin("### What a tool sees of the daemon: ToolHost")


class HostStubs(Stubs):
    def __init__(self, daemon: DaemonProcess) -> None:
        super().__init__(daemon)
        self.tools = tools_pb2_grpc.ToolsServiceStub(self.channel)
        self.rag = rag_pb2_grpc.RagServiceStub(self.channel)

    def briefing(self, **args: str) -> tools_pb2.ExecuteToolResponse:
        request = tools_pb2.ExecuteToolRequest(name="briefing", arguments_json=json.dumps(args))
        return self.tools.ExecuteTool(request)


@pytest.fixture(scope="module")
def hosted(
    tmp_path_factory: pytest.TempPathFactory, model_files: dict[str, Path]
) -> Iterator[HostStubs]:
    data_dir = tmp_path_factory.mktemp("host")
    (data_dir / "plugins").mkdir(mode=0o755)
    (data_dir / "plugins" / "briefing.py").write_text(BRIEFING_PLUGIN)
    add_model(data_dir, model_files["tiny"], "chat.gguf")
    embedder = write_model(tmp_path_factory.mktemp("onnx") / "tiny", dim=16, seed=1)
    link_embedding_model(data_dir, embedder, "tiny")
    write_config(data_dir, '[rag]\nembedding_model = "embeddings/tiny"\n')
    with run_daemon(data_dir) as daemon:
        stubs = HostStubs(daemon)
        yield stubs
        stubs.channel.close()


def test_a_plugin_tool_reads_the_daemon_through_its_host(hosted: HostStubs) -> None:
    r = hosted.briefing()
    assert r.status == tools_pb2.TOOL_CALL_STATUS_OK, r.error
    out = json.loads(r.output_json)
    assert out == {
        "api_version": 1,
        "data_dir": str(hosted.daemon.data_dir),
        "models": ["chat", "embeddings/tiny"],  # the language and the embedding model
        "on_battery": False,  # no battery on this machine
    }


def test_a_plugin_tool_searches_documents_through_its_host(hosted: HostStubs) -> None:
    r = hosted.briefing(topic="cats")
    # No collection yet: the search's NotFound is the call's outcome, naming it.
    assert r.status == tools_pb2.TOOL_CALL_STATUS_ERROR
    assert "notes" in r.error
    hosted.rag.CreateCollection(rag_pb2.CreateCollectionRequest(name="notes"))
    doc = rag_pb2.Document(id="cats", text="The cat and the kitten sleep on the sofa.")
    hosted.rag.IndexDocuments(
        iter([rag_pb2.IndexDocumentsRequest(collection="notes", documents=[doc])])
    )
    r = hosted.briefing(topic="where does the cat sleep")
    assert r.status == tools_pb2.TOOL_CALL_STATUS_OK, r.error
    assert json.loads(r.output_json)["passage"] == "The cat and the kitten sleep on the sofa."

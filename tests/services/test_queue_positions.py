"""Every stream that waits for a model hears its queue position: RagService.Ask (while
it counts the passages' tokens and while it generates) and ToolsService.RunAgent (each
model turn), like GenerateStream. A long generation holds the slow model; the waiter
must report `queued` before anything else and finish normally once the holder goes."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from rustaid_client import cli
from rustaid_client.cli import main

from rustaid.api.v1 import (
    common_pb2,
    generate_pb2,
    generate_pb2_grpc,
    rag_pb2,
    rag_pb2_grpc,
    tools_pb2,
    tools_pb2_grpc,
)
from rustaid.testing.daemon import DaemonProcess, run_daemon
from tests.conftest import add_model
from tests.rag.conftest import link_embedding_model, write_config
from tests.rag.models import write_model
from tests.services.test_limits import Stream, cancelling, long_stream

P = common_pb2.GenerationParams


class Daemon:
    def __init__(self, process: DaemonProcess) -> None:
        self.process = process
        self.channels: list[grpc.Channel] = []

    def channel(self) -> grpc.Channel:
        """A connection of its own for each stream (one caller: the test's user)."""
        channel = grpc.insecure_channel(
            self.process.address, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        self.channels.append(channel)
        return channel

    def generate(self) -> generate_pb2_grpc.GenerateServiceStub:
        return generate_pb2_grpc.GenerateServiceStub(self.channel())

    def rag(self) -> rag_pb2_grpc.RagServiceStub:
        return rag_pb2_grpc.RagServiceStub(self.channel())

    def tools(self) -> tools_pb2_grpc.ToolsServiceStub:
        return tools_pb2_grpc.ToolsServiceStub(self.channel())


@pytest.fixture(scope="module")
def daemon(
    tmp_path_factory: pytest.TempPathFactory, model_files: dict[str, Path]
) -> Iterator[Daemon]:
    """The slow language model, a tiny ONNX embedding model and a small collection."""
    data_dir = tmp_path_factory.mktemp("queue")
    add_model(data_dir, model_files["slow"])
    embedder = write_model(tmp_path_factory.mktemp("onnx") / "tiny", dim=16, seed=1)
    link_embedding_model(data_dir, embedder, "tiny")
    write_config(
        data_dir,
        '[rag]\nembedding_model = "embeddings/tiny"\n[rag.stores.qdrant]\npath = "qdrant-local"\n',
    )
    # One request at a time per model: these tests are about the ones that wait.
    with run_daemon(data_dir, env={"RUSTAID_PARALLEL": "1"}) as process:
        d = Daemon(process)
        rag = d.rag()
        rag.CreateCollection(rag_pb2.CreateCollectionRequest(name="facts"))
        documents = [
            rag_pb2.Document(id="cities", text="Paris is the capital of France."),
            rag_pb2.Document(id="animals", text="The cat drinks milk."),
        ]
        rag.IndexDocuments(
            iter([rag_pb2.IndexDocumentsRequest(collection="facts", documents=documents)])
        )
        yield d
        for channel in d.channels:
            channel.close()


class Steps(Stream):
    """A RunAgent stream (its events are the `step` oneof)."""

    def positions(self) -> list[int]:
        return [e.queued.position for e in self.events if e.WhichOneof("step") == "queued"]


def kinds(events: list[Any], oneof: str = "event") -> list[str]:
    return [e.WhichOneof(oneof) for e in events]


def ask(d: Daemon) -> Stream:
    request = rag_pb2.AskRequest(
        collection="facts", question="What is the capital of France?", model_id="slow",
        params=P(max_tokens=4, temperature=0, seed=1),
    )  # fmt: skip
    return Stream(d.rag().Ask(request))


def run_agent(d: Daemon) -> Steps:
    request = tools_pb2.RunAgentRequest(
        prompt="what is 2 + 2?", tools=["calculator"], model_id="slow", max_steps=1,
        params=P(max_tokens=8, temperature=0, seed=1),
    )  # fmt: skip
    return Steps(d.tools().RunAgent(request))


def background(d: Daemon) -> Stream:
    request = generate_pb2.GenerateStreamRequest(
        model_id="slow", prompt="hello", params=P(max_tokens=2),
        priority=common_pb2.PRIORITY_BACKGROUND,
    )  # fmt: skip
    return Stream(d.generate().GenerateStream(request))


def test_a_waiting_ask_hears_its_position_then_answers(daemon: Daemon) -> None:
    holder = long_stream(daemon.generate()).running()
    waiting = ask(daemon).started()
    with cancelling(holder, waiting):
        # Waiting to count the passages' tokens: nothing but the position so far.
        assert kinds(waiting.events) == ["queued"]
        assert waiting.events[0].queued.position == 1
        assert waiting.events[0].queued.model_id == "slow"
        holder.cancel()
        events = waiting.finish()
    assert waiting.error is None, waiting.error
    order = kinds(events)
    assert order[0] == "queued" and order[1] == "citations" and order[-1] == "done"
    assert "chunk" in order
    assert events[1].citations.hits[0].document_id == "cities"
    assert events[-1].done.model_id == "slow"


def test_an_ask_behind_two_hears_each_change(daemon: Daemon) -> None:
    holder = long_stream(daemon.generate()).running()
    first = long_stream(daemon.generate(), max_tokens=2).started()  # position 1
    waiting = ask(daemon).started()
    with cancelling(holder, first, waiting):
        assert first.positions() == [1]
        assert waiting.positions() == [2]
        holder.cancel()  # `first` runs: the Ask moves up, then gets its turn
        assert first.finish()[-1].WhichOneof("event") == "done"
        events = waiting.finish()
    assert waiting.error is None, waiting.error
    assert waiting.positions() == [2, 1]
    assert kinds(events)[-1] == "done"


def test_a_waiting_agent_turn_hears_its_position_then_finishes(daemon: Daemon) -> None:
    holder = long_stream(daemon.generate()).running()
    agent = run_agent(daemon).started()
    with cancelling(holder, agent):
        assert kinds(agent.events, "step") == ["queued"]
        first = agent.events[0]
        assert first.queued.position == 1 and first.queued.model_id == "slow"
        assert first.turn == 1
        holder.cancel()
        events = agent.finish()
    assert agent.error is None, agent.error
    assert kinds(events, "step")[-1] == "done" and events[-1].done.steps == 1
    assert kinds(events, "step").count("queued") == 1


def test_an_agent_overtakes_a_background_request(daemon: Daemon) -> None:
    holder = long_stream(daemon.generate()).running()
    bg = background(daemon).started()
    with cancelling(holder, bg):
        assert bg.positions() == [1]
        agent = run_agent(daemon).started()
        with cancelling(agent):
            # The agent's (interactive) turn goes ahead; the background request moves back.
            assert agent.positions() == [1]
            bg.wait_for(lambda: bg.positions() == [1, 2], timeout=10)
            holder.cancel()
            assert kinds(agent.finish(), "step")[-1] == "done"
            assert bg.finish()[-1].WhichOneof("event") == "done"
            assert bg.positions() == [1, 2, 1]


def test_rustaictl_agent_says_it_is_waiting(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    err = io.StringIO()
    err.isatty = lambda: True  # type: ignore[method-assign]
    monkeypatch.setattr(cli.output, "stderr", lambda: err)
    holder = long_stream(daemon.generate()).running()
    codes: list[int] = []
    argv = [
        "--address", daemon.process.address, "agent", "what is 2 + 2?", "--tool", "calculator",
        "-m", "slow", "--max-steps", "1", "-n", "8", "--seed", "1",
    ]  # fmt: skip
    thread = threading.Thread(target=lambda: codes.append(main(argv)), daemon=True)
    with cancelling(holder):
        thread.start()
        holder.wait_for(lambda: "waiting for slow (position 1)" in err.getvalue())
        holder.cancel()
        thread.join(60)
    assert not thread.is_alive()
    assert len(codes) == 1  # answered, or stopped at its single step: both end the run
    assert err.getvalue().count("waiting for slow") == 1

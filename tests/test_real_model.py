"""Real text from a real chat model (SmolLM2-135M-Instruct) through a real daemon: the
chat template, stop sequences on real words, JSON that parses, tool calls, and cited
answers from real embeddings (all-MiniLM-L6-v2). Greedy decoding, so runs repeat."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from rustaid.api.v1 import (
    common_pb2,
    generate_pb2,
    generate_pb2_grpc,
    rag_pb2,
    rag_pb2_grpc,
    tools_pb2,
)
from rustaid.testing import real_model as real
from rustaid.testing.daemon import run_daemon
from tests.rag.conftest import MINILM, link_embedding_model, needs_minilm, write_config

GREEDY = {"temperature": 0.0, "seed": 1}


class Real:
    def __init__(self, channel: grpc.Channel) -> None:
        self.generate = generate_pb2_grpc.GenerateServiceStub(channel)
        self.rag = rag_pb2_grpc.RagServiceStub(channel)


@pytest.fixture(scope="module")
def smol(tmp_path_factory: pytest.TempPathFactory, real_model: Path) -> Iterator[Real]:
    data_dir = tmp_path_factory.mktemp("real")
    real.place(real_model, data_dir / "models")
    if (MINILM / "model.onnx").is_file():
        link_embedding_model(data_dir, MINILM, "minilm")
        write_config(data_dir, '[rag]\nembedding_model = "embeddings/minilm"\n')
    with run_daemon(data_dir) as daemon, grpc.insecure_channel(daemon.address) as channel:
        yield Real(channel)


def user(text: str) -> generate_pb2.ChatMessage:
    return generate_pb2.ChatMessage(role=generate_pb2.ROLE_USER, content=text)


def chat(smol: Real, text: str, **params: object) -> generate_pb2.ChatResponse:
    request = generate_pb2.ChatRequest(
        model_id=real.MODEL_ID,
        messages=[user(text)],
        params=common_pb2.GenerationParams(**{**GREEDY, "max_tokens": 48, **params}),  # type: ignore[arg-type]
    )
    return smol.generate.Chat(request, timeout=120)


def test_chat_template_makes_it_answer(smol: Real) -> None:
    reply = chat(smol, "What is the capital of France? Answer in one sentence.")
    assert "Paris" in reply.message.content
    assert reply.message.role == generate_pb2.ROLE_ASSISTANT
    assert reply.finish_reason == common_pb2.FINISH_REASON_STOP  # it ended its turn itself


def test_stop_sequence_on_a_real_word(smol: Real) -> None:
    def count(**extra: object) -> generate_pb2.GenerateResponse:
        params = common_pb2.GenerationParams(**{**GREEDY, "max_tokens": 30, **extra})  # type: ignore[arg-type]
        return smol.generate.Generate(
            generate_pb2.GenerateRequest(
                model_id=real.MODEL_ID,
                prompt="Count from one to ten: one, two, three,",
                params=params,
            ),
            timeout=120,
        )

    free = count()
    assert "five" in free.text  # it does count on...
    stopped = count(stop=["five"])
    assert stopped.text == free.text[: free.text.index("five")]  # ...and stops right before
    assert stopped.finish_reason == common_pb2.FINISH_REASON_STOP_SEQUENCE


def test_json_schema_output_parses_and_fits(smol: Real) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
        "additionalProperties": False,
    }
    reply = chat(
        smol,
        "Give the capital of France as JSON with the keys city and country.",
        json_schema=json.dumps(schema),
        max_tokens=64,
    )
    answer = json.loads(reply.message.content)
    assert set(answer) == {"city", "country"}
    assert "Paris" in answer["city"]


def test_tool_call_names_the_tool_with_arguments(smol: Real) -> None:
    weather = tools_pb2.Tool(
        name="get_weather",
        description="Current weather for a city",
        parameters_schema=json.dumps(
            {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
        ),
    )
    request = generate_pb2.ChatRequest(
        model_id=real.MODEL_ID,
        messages=[user("What is the weather in Paris right now?")],
        params=common_pb2.GenerationParams(**GREEDY, max_tokens=64),  # type: ignore[arg-type]
        tools=[weather],
        tool_choice=tools_pb2.ToolChoice(mode=tools_pb2.TOOL_CHOICE_MODE_REQUIRED),
    )
    reply = smol.generate.Chat(request, timeout=120)
    calls = reply.message.tool_calls
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert "Paris" in json.loads(calls[0].arguments_json)["city"]


PASSAGES = {
    "mars": "Mars is called the red planet because iron oxide dust covers its surface.",
    "bread": "To bake bread, mix flour, water, salt and yeast, let the dough rise, then bake it.",
    "python": "Python lists are ordered and mutable; tuples are ordered and immutable.",
    "tides": "Ocean tides are caused mainly by the gravitational pull of the Moon.",
    "coffee": "Espresso is made by forcing hot water through finely ground coffee beans.",
}


@needs_minilm
def test_ask_cites_the_passage_that_answers(smol: Real) -> None:
    smol.rag.CreateCollection(rag_pb2.CreateCollectionRequest(name="facts"), timeout=60)
    docs = [rag_pb2.Document(id=k, text=v) for k, v in PASSAGES.items()]
    smol.rag.IndexDocuments(
        iter([rag_pb2.IndexDocumentsRequest(collection="facts", documents=docs)]), timeout=120
    )
    stream = smol.rag.Ask(
        rag_pb2.AskRequest(
            collection="facts",
            question="What causes the tides in the ocean?",
            top_k=1,
            model_id=real.MODEL_ID,
            params=common_pb2.GenerationParams(**GREEDY, max_tokens=48),  # type: ignore[arg-type]
        ),
        timeout=120,
    )
    events = list(stream)
    citations = next(e.citations for e in events if e.HasField("citations"))
    assert citations.hits[0].document_id == "tides"
    answer = "".join(e.chunk.text for e in events if e.HasField("chunk"))
    # A 135M model answers by pointing at the passage: [1] is the tides passage.
    assert "[1]" in answer

"""The daemon survives any gRPC input: random and malformed requests to every RPC of
every service in proto/rustaid/api/v1 (unary, server-streaming and client-streaming),
drawn from the message descriptors, seeded with real names part of the time, plus raw
bytes and damaged encodings.

For every call: the status is never INTERNAL or UNKNOWN (those mean a bug), an error
carries a message that reaches the client, bytes that do not parse are INVALID_ARGUMENT,
the daemon process is still alive, and a call that runs into its deadline (a long
generation or agent run) leaves the daemon free: a generation that went on for a client
that left would be a finding. At the end: health is SERVING for every service, the
daemon still generates, and it holds no more file descriptors than before (see
FD_TOLERANCE).
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given, settings
from hypothesis import strategies as st

import rustaid.api.v1
from rustaid.api.v1 import (
    common_pb2,
    generate_pb2,
    generate_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    nlu_pb2,
    rag_pb2,
    rag_pb2_grpc,
    resources_pb2,
    tools_pb2,
)
from rustaid.testing.proto_strategies import (
    Seeds,
    message_class,
    messages,
    raw_requests,
    wire_mutations,
)
from tests.fuzz.conftest import COLLECTION, DOCUMENT_IDS, LLM, Target, examples, short

CODE = grpc.StatusCode
BUGS = (CODE.INTERNAL, CODE.UNKNOWN)
# Every call gets this deadline. A call that runs past it (a long agent run, a long
# generation) is acceptable only if the daemon then stops its work: see check().
CALL_DEADLINE_S = 5.0
# After a call ran into its deadline, a one-token generation must get through within
# this time: it would queue behind abandoned work the daemon failed to stop.
# A watch stream is read for its first message, then cancelled.
WATCH_DEADLINE_S = 0.3
MAX_STREAM_MESSAGES = 20_000


def _rpcs() -> list[MethodDescriptor]:
    methods = []
    for info in pkgutil.iter_modules(rustaid.api.v1.__path__):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(f"rustaid.api.v1.{info.name}")
            for service in module.DESCRIPTOR.services_by_name.values():
                methods.extend(service.methods)
    return sorted(methods, key=lambda m: m.full_name)


RPCS = _rpcs()


def path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def is_watch(method: MethodDescriptor) -> bool:
    return method.server_streaming and method.name.startswith("Watch")


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str
    elapsed_s: float


def invoke(target: Target, method: MethodDescriptor, bodies: list[bytes]) -> Outcome:
    """Send encoded request(s) with identity serialization; parse what comes back."""
    ch = target.channel
    response_class = message_class(method.output_type)
    watch = is_watch(method)
    timeout = WATCH_DEADLINE_S if watch else CALL_DEADLINE_S
    start = time.monotonic()
    try:
        if method.client_streaming:
            raw = ch.stream_unary(path(method))(iter(bodies), timeout=timeout)
            response_class.FromString(raw)
        elif method.server_streaming:
            call = ch.unary_stream(path(method))(bodies[0], timeout=timeout)
            try:
                for n, raw in enumerate(call):
                    response_class.FromString(raw)
                    if watch or n > MAX_STREAM_MESSAGES:
                        break
            finally:
                call.cancel()
        else:
            raw = ch.unary_unary(path(method))(bodies[0], timeout=timeout)
            response_class.FromString(raw)
        return Outcome(CODE.OK, "", time.monotonic() - start)
    except grpc.RpcError as e:
        return Outcome(e.code(), e.details() or "", time.monotonic() - start)  # type: ignore[attr-defined]


def check(target: Target, method: MethodDescriptor, outcome: Outcome, what: str) -> None:
    name = f"{method.containing_service.name}.{method.name}"
    target.record(name, outcome.code.name, outcome.details, outcome.elapsed_s, what)
    assert target.alive(), f"the daemon died on {name} with {what}:\n{target.log_tail()}"
    assert outcome.code not in BUGS, (
        f"{name} answered {outcome.code.name} ({outcome.details[:300]!r}) to {what}; "
        f"daemon log:\n{target.log_tail()}"
    )
    if outcome.code is CODE.DEADLINE_EXCEEDED:
        if not is_watch(method):
            target.assert_model_free(
                f"{name} ran into its {CALL_DEADLINE_S} s deadline with {what}"
            )
    elif outcome.code not in (CODE.OK, CODE.CANCELLED):
        assert outcome.details.strip(), f"{name}: {outcome.code.name} without a message"
        # The error must reach the client, not be replaced by gRPC's own complaint.
        assert "metadata size exceeds" not in outcome.details, (name, outcome.details[:300])


# -- seeds: real names, part of the time -------------------------------------------------

_JSON_KEYS = ("expression", "text", "value", "from", "to", "unit", "source", "collection",
              "query", "timezone", "top_k", "")  # fmt: skip
_EXPRESSIONS = ("1+2", "2^3^4", "9^9^9^9", "1000!", "(((((1)))))", "(" * 300, "1/0",
                "sqrt(-1)", "log(0)", "1e308*10", "atan2(1)", "max()", "0^-1", "%", "")  # fmt: skip


# JSON past the parsers' limits: nesting deeper than the recursion limit, an integer
# longer than Python converts.
_NASTY_JSON = ("[" * 20_000, '{"type": "object", "maxLength": 1' + "0" * 5_000 + "}")


def _json_args() -> st.SearchStrategy[str]:
    values = st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False)
        | st.sampled_from(_EXPRESSIONS)
        | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(st.sampled_from(_JSON_KEYS), inner, max_size=3)
        ),
        max_leaves=8,
    )
    objects = st.dictionaries(st.sampled_from(_JSON_KEYS), values, max_size=4)
    return st.one_of(
        objects.map(json.dumps),
        values.map(lambda v: json.dumps(v, allow_nan=True)),
        st.sampled_from(
            ['{"expression": "1+1"}', '{"text": "a b c"}', "{", "NaN", '{"a":1e999}', *_NASTY_JSON]
        ),
    )


def seeds(target: Target) -> Seeds:
    model_ids = st.sampled_from((*target.model_ids, "nlu/none", "nope"))
    llm = st.sampled_from((LLM, ""))
    plugins = st.sampled_from((*target.plugin_ids, "../plugins", "x.wasm", "nope.py"))
    collections = st.sampled_from((COLLECTION, "new-one", "a" * 64, "a" * 65, "-x", "a b"))
    tools = st.sampled_from((*target.tool_names, "nope"))
    files = st.sampled_from(
        (*target.files, str(target.allowed), str(target.allowed / ".." / "data"),
         "/etc/passwd", "/proc/self/environ", "relative.txt", str(target.allowed / "missing"))
    )  # fmt: skip
    filenames = st.sampled_from(("a.txt", "a.md", "a.html", "a.pdf", "a.docx", "a", ".", ""))
    grammars = st.sampled_from(('root ::= "yes" | "no"', 'root ::= [a-z]+', "root ::= root",
                                'root ::= "a"*', "x ::= y"))  # fmt: skip
    schemas = st.sampled_from(('{"type": "object"}', '{"type": "string", "maxLength": 3}',
                               '{"$ref": "#"}', "{", '{"type": "nope"}', *_NASTY_JSON))  # fmt: skip
    doc_ids = st.sampled_from((*DOCUMENT_IDS, "nope"))
    keys = st.sampled_from(("document_id", "source", "title", "parser", "page", "chunk_index",
                            "heading", "metadata.lang", "metadata.", "nope"))  # fmt: skip
    small = st.integers(0, 16)
    words = st.lists(st.sampled_from(_WORDS), min_size=1, max_size=8).map(" ".join)
    pb = _message_seeds(words, grammars, schemas, doc_ids)
    return Seeds(
        {
            **pb,
            "prompt": words,
            "text": words,
            "texts": words,
            "query": words,
            "question": words,
            "content": words,
            "labels": st.sampled_from(("yes", "no", "weather", "music")),
            "score_threshold": st.floats(0, 1),
            "rustaid.api.v1.IndexFileRequest.content": st.sampled_from(target.contents),
            "model_id": st.one_of(llm, model_ids),
            "embedding_model_id": model_ids,
            "rustaid.api.v1.GetModelRequest.id": model_ids,
            "rustaid.api.v1.LoadModelRequest.id": model_ids,
            "rustaid.api.v1.UnloadModelRequest.id": model_ids,
            "rustaid.api.v1.GetPluginRequest.id": plugins,
            "rustaid.api.v1.LoadPluginRequest.id": plugins,
            "rustaid.api.v1.UnloadPluginRequest.id": plugins,
            "rustaid.api.v1.ReloadPluginRequest.id": plugins,
            "collection": collections,
            "rustaid.api.v1.CreateCollectionRequest.name": collections,
            "rustaid.api.v1.DeleteCollectionRequest.name": collections,
            "rustaid.api.v1.ExecuteToolRequest.name": tools,
            "rustaid.api.v1.ExecuteToolRequest.arguments_json": _json_args(),
            "rustaid.api.v1.RunAgentRequest.tools": tools,
            "rustaid.api.v1.ToolChoice.name": tools,
            "rustaid.api.v1.ToolCall.arguments_json": _json_args(),
            "rustaid.api.v1.IndexFileRequest.path": files,
            "filename": filenames,
            "grammar": grammars,
            "json_schema": schemas,
            "document_ids": doc_ids,
            "document_id": doc_ids,
            "rustaid.api.v1.Condition.key": keys,
            "max_tokens": st.integers(1, 8),
            "top_k": small,
            "max_steps": st.integers(1, 3),
            "context_length": st.sampled_from((0, 64, 512)),
            "threads": st.sampled_from((0, 1)),
            "channel": st.sampled_from(("", "stable", "../x")),
            "artifact_id": st.sampled_from(("tiny", "nope")),
            "artifact_ids": st.sampled_from(("tiny", "nope")),
            "limit": small,
        }
    )


_WORDS = ("the", "cat", "dog", "hello", "world", "paris", "is", "what", "capital", "a", "fire")


def _optional(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=fields)


def _message_seeds(
    words: st.SearchStrategy[str],
    grammars: st.SearchStrategy[str],
    schemas: st.SearchStrategy[str],
    doc_ids: st.SearchStrategy[str],
) -> dict[str, st.SearchStrategy[Any]]:
    """Mostly valid sub-messages, so that requests get past validation into the engine,
    the store and the tools."""
    v1 = "rustaid.api.v1."
    params = _optional(
        max_tokens=st.integers(1, 8),
        temperature=st.floats(0, 2),
        top_p=st.floats(0.05, 1),
        top_k=st.integers(0, 50),
        min_p=st.floats(0, 1),
        repeat_penalty=st.floats(0.5, 2),
        seed=st.integers(0, (1 << 32) - 1),
        stop=st.lists(st.text(min_size=1, max_size=4), max_size=3),
        grammar=grammars,
    ).map(lambda d: common_pb2.GenerationParams(**d))
    roles = st.sampled_from(
        (generate_pb2.ROLE_SYSTEM, generate_pb2.ROLE_USER, generate_pb2.ROLE_ASSISTANT)
    )
    chat = st.builds(generate_pb2.ChatMessage, role=roles, content=words)
    condition = st.builds(
        lambda key, v: rag_pb2.Condition(key=key, value=rag_pb2.MatchValue(text=v)),
        st.sampled_from(("document_id", "source", "metadata.lang")),
        doc_ids,
    )
    filters = st.builds(rag_pb2.Filter, must=st.lists(condition, max_size=2))
    chunking = _optional(
        chunk_size=st.sampled_from((0, 16, 64, 256)), chunk_overlap=st.sampled_from((0, 4))
    ).map(lambda d: rag_pb2.ChunkingOptions(**d))
    profile = st.builds(
        resources_pb2.ProfileParameters,
        threads=st.integers(0, 2),
        max_local_tokens=st.integers(0, 64),
        batch_size=st.sampled_from((0, 8, 512)),
        context_length=st.sampled_from((0, 128, 512)),
        caching=st.booleans(),
        background_inference=st.booleans(),
    )
    tool = st.builds(
        tools_pb2.Tool,
        name=st.sampled_from(("lookup", "get_weather")),
        description=words,
        parameters_schema=st.sampled_from(
            ('{"type": "object", "properties": {"q": {"type": "string"}}}', "{}")
        ),
    )
    power = st.one_of(
        st.builds(resources_pb2.SetPowerProfileRequest, profile=st.integers(1, 4)),
        st.builds(resources_pb2.SetPowerProfileRequest, profile=st.just(5), custom=profile),
        st.just(resources_pb2.SetPowerProfileRequest(clear_override=True)),
    )
    return {
        v1 + "SetPowerProfileRequest": power,
        v1 + "GenerationParams": params,
        v1 + "ChatMessage": chat,
        v1 + "Filter": filters,
        v1 + "ChunkingOptions": chunking,
        v1 + "ProfileParameters": profile,
        v1 + "Tool": tool,
        v1 + "Document": st.builds(rag_pb2.Document, id=doc_ids, text=words),
        v1 + "EntityType": st.builds(nlu_pb2.EntityType, name=st.sampled_from(("city", "x"))),
        v1 + "SelectionCriteria": st.just(common_pb2.SelectionCriteria()),
        v1 + "KeepAlive": st.builds(
            lambda s: common_pb2.KeepAlive(duration=duration_pb2.Duration(seconds=s)),
            st.integers(0, 5),
        ),
    }


_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {}


def request_strategy(target: Target, method: MethodDescriptor) -> st.SearchStrategy[Any]:
    if method.full_name not in _STRATEGIES:
        _STRATEGIES[method.full_name] = messages(method.input_type, seeds=seeds(target))
    return _STRATEGIES[method.full_name]


@pytest.fixture(autouse=True)
def _restore(target: Target) -> Iterator[None]:
    yield
    if target.alive():
        target.restore()


# -- the fuzz targets --------------------------------------------------------------------


def test_every_rpc_is_fuzzed() -> None:
    """The targets come from the descriptors: a new RPC is fuzzed without being listed."""
    services = {m.containing_service.full_name for m in RPCS}
    assert len(services) >= 8 and len(RPCS) >= 44, [rpc_id(m) for m in RPCS]
    assert any(m.client_streaming for m in RPCS) and any(m.server_streaming for m in RPCS)


# RPCs that run a model (generation, embeddings, agents) cost up to a deadline per call:
# fewer examples for those in the default budget.
HEAVY = frozenset(
    {"Generate", "GenerateStream", "Chat", "ChatStream", "RunAgent", "Ask", "ClassifyIntent",
     "ExtractEntities", "IndexDocuments", "IndexFile", "Embed", "Search"}
)  # fmt: skip
LIGHT_RPCS = [m for m in RPCS if m.name not in HEAVY and not is_watch(m)]
# Watch streams cost their deadline when nothing happens: fewer examples too.
HEAVY_RPCS = [m for m in RPCS if m.name in HEAVY or is_watch(m)]


def rpc_id(method: MethodDescriptor) -> str:
    return f"{method.containing_service.name}.{method.name}"


@pytest.mark.parametrize("method", LIGHT_RPCS, ids=rpc_id)
@settings(max_examples=examples(60))
@given(data=st.data())
def test_random_messages(target: Target, method: MethodDescriptor, data: st.DataObject) -> None:
    random_messages(target, method, data)


@pytest.mark.parametrize("method", HEAVY_RPCS, ids=rpc_id)
@settings(max_examples=examples(30))
@given(data=st.data())
def test_random_messages_to_models(
    target: Target, method: MethodDescriptor, data: st.DataObject
) -> None:
    random_messages(target, method, data)


def random_messages(target: Target, method: MethodDescriptor, data: st.DataObject) -> None:
    strategy = request_strategy(target, method)
    if method.client_streaming:
        requests = data.draw(st.lists(strategy, max_size=4), label="requests")
    else:
        requests = [data.draw(strategy, label="request")]
    bodies = [r.SerializeToString() for r in requests]
    outcome = invoke(target, method, bodies)
    check(target, method, outcome, short(requests))


@pytest.mark.parametrize("method", RPCS, ids=rpc_id)
@settings(max_examples=examples(15))
@given(data=st.data())
def test_malformed_bytes(target: Target, method: MethodDescriptor, data: st.DataObject) -> None:
    """Raw bytes and damaged encodings of valid requests: INVALID_ARGUMENT (or, when
    the damage leaves a valid message, whatever that message gets), never UNKNOWN."""
    valid = data.draw(request_strategy(target, method), label="valid")
    body = data.draw(st.one_of(raw_requests(), wire_mutations(valid.SerializeToString())))
    bodies = [body, valid.SerializeToString()] if method.client_streaming else [body]
    outcome = invoke(target, method, bodies)
    check(target, method, outcome, short(body))
    try:
        message_class(method.input_type).FromString(body)
    except Exception:  # undecodable: the daemon must say so
        assert outcome.code is CODE.INVALID_ARGUMENT, (outcome.code, outcome.details)
        assert "not a valid" in outcome.details


def test_huge_max_tokens_is_refused_or_bounded(target: Target) -> None:
    """Past the limit: refused. At the limit: the generation ends by the model's context
    (2048 tokens here) at the latest, instead of running on."""
    stub = generate_pb2_grpc.GenerateServiceStub(target.channel)

    def generate(max_tokens: int) -> generate_pb2.GenerateResponse:
        params = common_pb2.GenerationParams(max_tokens=max_tokens, grammar="root ::= [a-z ]+")
        request = generate_pb2.GenerateRequest(model_id=LLM, prompt="the cat", params=params)
        return stub.Generate(request, timeout=120)

    with pytest.raises(grpc.RpcError) as info:
        generate((1 << 32) - 1)
    assert info.value.code() is CODE.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "max_tokens" in info.value.details()  # type: ignore[attr-defined]
    limit = int(info.value.details().rsplit("between 1 and ", 1)[1].split(" ")[0])  # type: ignore[attr-defined]
    reply = generate(limit)  # the power profile may cap it further (see adjustments)
    assert reply.finish_reason in (common_pb2.FINISH_REASON_STOP, common_pb2.FINISH_REASON_LENGTH)
    assert reply.usage.total_tokens <= 2048 < limit


# -- after the fuzzing ----------------------------------------------------------------------

# Descriptors the daemon may hold more of after fuzzing than at the baseline (taken
# after a warm-up that loaded the model, the embeddings, the vector store and the WASM
# engine, so lazily opened files are already counted): a gRPC connection being reaped
# (socket + eventfd), onnxruntime's and llama.cpp's thread pools, which may re-create
# an eventfd or a pipe, and the models-folder watcher's inotify handle when a rescan
# re-creates it. A leak per request would show as tens to hundreds after the calls above.
FD_TOLERANCE = 8


def test_zz_no_descriptor_leak_and_still_serving(target: Target) -> None:
    assert target.alive()
    # Drop what the fuzzing created: collections of other names, models it loaded.
    rag = rag_pb2_grpc.RagServiceStub(target.channel)
    for c in rag.ListCollections(rag_pb2.ListCollectionsRequest(), timeout=30).collections:
        if c.name != COLLECTION:
            rag.DeleteCollection(rag_pb2.DeleteCollectionRequest(name=c.name), timeout=30)
    models = models_pb2_grpc.ModelsServiceStub(target.channel)
    for m in models.ListModels(models_pb2.ListModelsRequest(loaded_only=True), timeout=30).models:
        if m.id != LLM:
            models.UnloadModel(models_pb2.UnloadModelRequest(id=m.id), timeout=30)
    limit = len(target.baseline_fds) + FD_TOLERANCE
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(target.fds()) > limit:
        time.sleep(0.5)  # settle: closed connections and finished calls are reaped
    after = target.fds()
    extra = sorted((Counter(after) - Counter(target.baseline_fds)).elements())
    print(f"descriptors: {len(target.baseline_fds)} after the warm-up, {len(after)} at the end")
    assert len(after) <= limit, (
        f"{len(target.baseline_fds)} descriptors before fuzzing, {len(after)} after; new: {extra}"
    )
    health = health_pb2_grpc.HealthStub(target.channel)
    for service in ("", *{m.containing_service.full_name for m in RPCS}):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    # And it still does its job.
    stub = generate_pb2_grpc.GenerateServiceStub(target.channel)
    reply = stub.Generate(
        generate_pb2.GenerateRequest(
            model_id=LLM, prompt="hello", params=common_pb2.GenerationParams(max_tokens=4)
        ),
        timeout=30,
    )
    assert reply.usage.completion_tokens >= 1

"""The minimal example of every bug the fuzzers found, as a plain test: each answered
INTERNAL or UNKNOWN, raised an exception of the wrong type, lost its error message or
killed the daemon, and now gets a clear domain error with the right status code."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2

from rustaid.api.v1 import (
    common_pb2,
    generate_pb2,
    generate_pb2_grpc,
    plugins_pb2,
    plugins_pb2_grpc,
    rag_pb2,
    rag_pb2_grpc,
    tools_pb2,
    tools_pb2_grpc,
)
from rustaid.builtin.llama_cpp import MAX_GRAMMAR_NESTING, grammar_nesting
from rustaid.builtin.parsers import PDFParser
from rustaid.core import gguf
from rustaid.core.messages import MAX_STATUS_MESSAGE_BYTES, bounded
from rustaid.core.models_toml import load_models_toml
from rustaid.errors import InvalidArgument
from rustaid.tools.schema import load_json_object, schema_problem
from rustaid.updates import metadata
from tests.fuzz.conftest import COLLECTION, LLM, Target
from tests.rag.documents import encrypted, make_pdf

CODE = grpc.StatusCode
DIGITS = "1" + "0" * 5_000  # past Python's 4300-digit int conversion limit
DEEP = "[" * 20_000  # past the JSON decoder's recursion limit


def rpc_error(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value


# -- over gRPC, against the fuzzed daemon ----------------------------------------------


def _raw_call(target: Target, method: str, *bodies: bytes, stream: bool = False) -> grpc.RpcError:
    if stream:
        call = target.channel.stream_unary(method)
        return rpc_error(lambda: call(iter(bodies), timeout=30))
    unary = target.channel.unary_unary(method)
    return rpc_error(lambda: unary(bodies[0], timeout=30))


def test_undecodable_request_is_invalid_argument(target: Target) -> None:
    """A body that does not parse (a varint of 11 bytes) was UNKNOWN, answered by grpc
    itself outside any handler."""
    error = _raw_call(
        target, "/rustaid.api.v1.ModelsService/GetModel", b"\x08" + b"\xff" * 10 + b"\x01"
    )
    assert error.code() is CODE.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "not a valid rustaid.api.v1.GetModelRequest message" in error.details()  # type: ignore[attr-defined]


def test_undecodable_stream_message_is_invalid_argument(target: Target) -> None:
    """The second message of a client stream cut mid-field was INTERNAL, logged as a bug
    twice (the handler's own abort was caught again by the interceptor)."""
    bugs = target.daemon.stderr().count("bug in")
    first = rag_pb2.IndexDocumentsRequest(collection=COLLECTION).SerializeToString()
    error = _raw_call(
        target, "/rustaid.api.v1.RagService/IndexDocuments", first, b"\x12\x05ab", stream=True
    )
    assert error.code() is CODE.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "rustaid.api.v1.IndexDocumentsRequest" in error.details()  # type: ignore[attr-defined]
    # A domain error raised in the handler is not taken for a bug either.
    error = _raw_call(
        target,
        "/rustaid.api.v1.RagService/IndexDocuments",
        rag_pb2.IndexDocumentsRequest(collection="nope").SerializeToString(),
        stream=True,
    )
    assert error.code() is CODE.NOT_FOUND  # type: ignore[attr-defined]
    assert target.daemon.stderr().count("bug in") == bugs


def test_deeply_nested_grammar_is_refused_not_a_crash(target: Target) -> None:
    """llama.cpp's recursive GBNF parser overflowed its stack: SIGSEGV, daemon gone."""
    stub = generate_pb2_grpc.GenerateServiceStub(target.channel)
    grammar = "root ::= " + "(" * 20_000 + '"a"' + ")" * 20_000
    params = common_pb2.GenerationParams(max_tokens=2, grammar=grammar)
    error = rpc_error(
        lambda: stub.Generate(
            generate_pb2.GenerateRequest(model_id=LLM, prompt="hi", params=params), timeout=30
        )
    )
    assert error.code() is CODE.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "nests ( ) groups 20000 deep" in error.details()  # type: ignore[attr-defined]
    assert target.alive()
    # A grammar nested as deep as allowed still works.
    ok = "root ::= " + "(" * MAX_GRAMMAR_NESTING + '"a"' + ")" * MAX_GRAMMAR_NESTING
    reply = stub.Generate(
        generate_pb2.GenerateRequest(
            model_id=LLM, prompt="hi", params=common_pb2.GenerationParams(max_tokens=2, grammar=ok)
        ),
        timeout=30,
    )
    assert set(reply.text) <= {"a"}


def test_grammar_nesting_skips_literals_classes_and_comments() -> None:
    assert grammar_nesting('root ::= (("(" [()] )) # ((((') == 2
    assert grammar_nesting(r'root ::= "a\"(" x') == 0
    assert grammar_nesting("root ::= " + "(" * 9 + ")" * 9) == 9


@pytest.mark.parametrize(
    ("schema", "why"), [(DEEP, "recursion"), ('{"maxLength": ' + DIGITS + "}", "4300 digits")]
)
def test_json_schema_past_the_json_limits_is_invalid_argument(
    target: Target, schema: str, why: str
) -> None:
    stub = generate_pb2_grpc.GenerateServiceStub(target.channel)
    params = common_pb2.GenerationParams(max_tokens=2, json_schema=schema)
    error = rpc_error(
        lambda: stub.Generate(
            generate_pb2.GenerateRequest(model_id=LLM, prompt="hi", params=params), timeout=30
        )
    )
    assert error.code() is CODE.INVALID_ARGUMENT  # type: ignore[attr-defined]
    details = error.details()  # type: ignore[attr-defined]
    assert details.startswith("params.json_schema is not valid JSON") and why in details
    assert "sys.set_int_max_str_digits" not in details


def test_tool_arguments_with_a_huge_number_are_invalid_argument(target: Target) -> None:
    stub = tools_pb2_grpc.ToolsServiceStub(target.channel)
    request = tools_pb2.ExecuteToolRequest(
        name="calculator", arguments_json='{"expression": ' + DIGITS + "}"
    )
    error = rpc_error(lambda: stub.ExecuteTool(request, timeout=30))
    assert error.code() is CODE.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert error.details().startswith("arguments_json is not valid JSON")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "schema",
    ['{"type": "object", "maxProperties": ' + DIGITS + "}", '{"$schema": {}, "type": "object"}'],
)
def test_tool_definitions_with_bad_schemas_are_invalid_argument(
    target: Target, schema: str
) -> None:
    stub = generate_pb2_grpc.GenerateServiceStub(target.channel)
    request = generate_pb2.GenerateRequest(
        model_id=LLM,
        prompt="hi",
        params=common_pb2.GenerationParams(max_tokens=2),
        tools=[tools_pb2.Tool(name="lookup", parameters_schema=schema)],
    )
    error = rpc_error(lambda: stub.Generate(request, timeout=30))
    assert error.code() is CODE.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "tools[0].parameters_schema" in error.details()  # type: ignore[attr-defined]


def test_metadata_with_nan_is_invalid_argument(target: Target) -> None:
    rag = rag_pb2_grpc.RagServiceStub(target.channel)
    meta = struct_pb2.Struct()
    meta.update({"score": float("inf")})
    error = rpc_error(
        lambda: rag.IndexFile(
            rag_pb2.IndexFileRequest(
                collection=COLLECTION, content=b"hello", filename="a.txt", metadata=meta
            ),
            timeout=30,
        )
    )
    assert error.code() is CODE.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "NaN or infinite" in error.details()  # type: ignore[attr-defined]
    doc = rag_pb2.Document(id="x", text="hello", metadata=meta)
    error = rpc_error(
        lambda: rag.IndexDocuments(
            iter([rag_pb2.IndexDocumentsRequest(collection=COLLECTION, documents=[doc])]),
            timeout=30,
        )
    )
    assert error.code() is CODE.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "documents[0].metadata" in error.details()  # type: ignore[attr-defined]


def test_keep_alive_out_of_the_duration_range_is_invalid_argument(target: Target) -> None:
    """Duration.ToTimedelta() overflowed (OverflowError: INTERNAL)."""
    stub = generate_pb2_grpc.GenerateServiceStub(target.channel)

    def generate(seconds: int, nanos: int) -> generate_pb2.GenerateResponse:
        keep = common_pb2.KeepAlive(duration=duration_pb2.Duration(seconds=seconds, nanos=nanos))
        request = generate_pb2.GenerateRequest(
            model_id=LLM,
            prompt="hi",
            params=common_pb2.GenerationParams(max_tokens=1),
            keep_alive=keep,
        )
        return stub.Generate(request, timeout=30)

    error = rpc_error(lambda: generate(-(1 << 63), -(1 << 31)))
    assert error.code() is CODE.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "keep_alive.duration is out of range" in error.details()  # type: ignore[attr-defined]
    assert generate(315_576_000_000, 0).usage.completion_tokens >= 0  # the longest valid one
    generate(300, 0)  # back to a normal keep-alive for the tests that follow


def test_overlong_plugin_name_is_invalid_argument(target: Target) -> None:
    """ENAMETOOLONG from the file system used to escape as INTERNAL."""
    stub = plugins_pb2_grpc.PluginsServiceStub(target.channel)
    error = rpc_error(
        lambda: stub.LoadPlugin(plugins_pb2.LoadPluginRequest(id="x" * 300), timeout=30)
    )
    assert error.code() is CODE.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "at most 255 bytes" in error.details()  # type: ignore[attr-defined]


def test_error_quoting_a_huge_field_still_reaches_the_client(target: Target) -> None:
    """A message quoting a 100 kB id made the trailers exceed the client's metadata limit:
    the client got RESOURCE_EXHAUSTED "Stream removed" instead of NOT_FOUND."""
    stub = plugins_pb2_grpc.PluginsServiceStub(target.channel)
    error = rpc_error(
        lambda: stub.GetPlugin(plugins_pb2.GetPluginRequest(id="x" * 100_000), timeout=30)
    )
    assert error.code() is CODE.NOT_FOUND  # type: ignore[attr-defined]
    details = error.details()  # type: ignore[attr-defined]
    assert details.startswith("no plugin with id 'xxx") and "characters cut" in details
    assert len(details.encode()) <= MAX_STATUS_MESSAGE_BYTES + 64


def test_bounded_keeps_short_messages_and_cuts_on_characters() -> None:
    assert bounded("short") == "short"
    cut = bounded("é" * 5_000)
    assert len(cut.encode()) <= MAX_STATUS_MESSAGE_BYTES + 64 and "characters cut" in cut
    cut.encode("utf-8")  # no half characters


# -- in-process parsers -------------------------------------------------------------------


def _gguf(*kv: bytes) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, 0, len(kv)) + b"".join(kv) + b"\0" * 64


def _kv(key: bytes, vtype: int, payload: bytes) -> bytes:
    return struct.pack("<Q", len(key)) + key + struct.pack("<I", vtype) + payload


@pytest.mark.parametrize(
    ("data", "why"),
    [
        # arrays of arrays 3000 deep: RecursionError
        (_gguf(_kv(b"a", 9, struct.pack("<IQ", 9, 1) * 3000 + struct.pack("<IQ", 4, 0))),
         "nested more than"),
        # alignment as a string, a NaN, zero, not a power of two: ValueError or silence
        (_gguf(_kv(b"general.alignment", 8, struct.pack("<Q", 3) + b"abc")), "not a positive"),
        (_gguf(_kv(b"general.alignment", 12, struct.pack("<d", float("nan")))), "not a positive"),
        (_gguf(_kv(b"general.alignment", 4, struct.pack("<I", 0))), "not a positive"),
        (_gguf(_kv(b"general.alignment", 4, struct.pack("<I", 24))), "not a power of two"),
    ],
)  # fmt: skip
def test_gguf_corruption_is_gguf_error(tmp_path: Path, data: bytes, why: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(gguf.GGUFError, match=why):
        gguf.read_gguf(path)


def test_gguf_long_arrays_are_kept_as_their_length(tmp_path: Path) -> None:
    n = gguf.MAX_KEPT_ITEMS + 1
    path = tmp_path / "long.gguf"
    path.write_bytes(_gguf(_kv(b"x", 9, struct.pack("<IQ", 0, n) + b"\1" * n)))
    assert gguf.read_gguf(path).metadata["x"] == n


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("model = [1, 2]\n", "entries must be tables"),  # AttributeError
        ('[[model]]\npath = "~nobody-here-at-all/x.gguf"\n', "cannot expand '~'"),  # RuntimeError
        ('[[model]]\npath = "a.gguf"\nmin_memory = "' + "9" * 400 + ' TB"\n', "min_memory: "),
        ('[[model]]\npath = "a.gguf"\nkeep_alive = nan\n', "keep_alive: must be a finite"),
        ('[[model]]\npath = "a.gguf"\nkeep_alive = inf\n', "keep_alive: must be a finite"),
    ],
)
def test_models_toml_bad_entries_are_problems(tmp_path: Path, text: str, why: str) -> None:
    source = tmp_path / "models.toml"
    source.write_text(text)
    entries, problems = load_models_toml(source, tmp_path / "models", ["llama.cpp"])
    assert entries == []
    assert problems and all(why in p.reason for p in problems), problems


@pytest.fixture(scope="module")
def signing() -> tuple[object, metadata.Trust]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return key, metadata.Trust.from_keys([public], 1)


@pytest.mark.parametrize("raw", [DEEP.encode(), DIGITS.encode()])
def test_metadata_past_the_json_limits_is_rejected(raw: bytes) -> None:
    with pytest.raises(metadata.MetadataRejected, match="not valid JSON"):
        metadata.parse_document(raw, "metadata.json")


def test_metadata_with_a_lone_surrogate_is_rejected(
    signing: tuple[object, metadata.Trust],
) -> None:
    """UnicodeEncodeError while computing the bytes the signature covers."""
    _, trust = signing
    raw = json.dumps({"signed": {"x": "\ud800"}, "signatures": []}).encode()
    with pytest.raises(metadata.MetadataRejected, match="lone surrogate"):
        metadata.verify_release(raw, trust, now=metadata.datetime.now(metadata.UTC))


def test_tool_json_past_the_limits_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="Exceeds the limit"):
        load_json_object('{"a": ' + DIGITS + "}", "arguments_json", "the arguments")
    assert "is not a JSON Schema draft" in schema_problem(
        {"$schema": "http://example.com/nope", "type": "object"}, object_only=True
    )


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ((b"/V 2", b"/V 0"), "DOCUMENT_ENCRYPTED"),
        ((b"/Standard", b"/Nopexxx"), "DOCUMENT_ENCRYPTED"),
    ],
)
def test_pdf_with_unsupported_encryption_is_invalid_argument(
    change: tuple[bytes, bytes], reason: str
) -> None:
    """pypdf's NotImplementedError escaped the parser (INTERNAL at IndexFile)."""
    pdf = encrypted(make_pdf([["x"]]), "secret").replace(*change, 1)
    with pytest.raises(InvalidArgument) as info:
        PDFParser().parse(pdf, "locked.pdf")
    assert info.value.reason == reason and "cannot open" in info.value.message


def test_wasm_tool_definitions_nested_too_deep_are_refused(tmp_path: Path) -> None:
    from rustaid.tools import wasm
    from rustaid.tools.config import WasmLimits
    from tests.fuzz.test_parsers import tool_module

    module = tool_module(DEEP.encode(), None, b"")
    runtime = wasm._Runtime()
    try:
        with pytest.raises(wasm.WasmRefused, match="did not return JSON"):
            wasm.WasmPlugin(runtime, tmp_path / "deep.wasm", module, WasmLimits())
    finally:
        runtime.close()

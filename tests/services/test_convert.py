"""Every message of the served services has its converter (the qdrant-client
completeness check): a new message cannot be forgotten. That the converters keep every
field, both ways, is checked by round trips in test_convert_roundtrip.py.

Messages of common/generate/models/plugins.proto convert in rustaid.services.convert;
those of another X.proto in rustaid.services.convert.X. Add a proto module to SERVED
when its service is implemented.
"""

from __future__ import annotations

import importlib
import re
from types import ModuleType

from rustaid.api.v1 import (
    common_pb2,
    generate_pb2,
    models_pb2,
    nlu_pb2,
    plugins_pb2,
    rag_pb2,
    resources_pb2,
    tools_pb2,
    updates_pb2,
)
from rustaid.services import convert
from rustaid.services.convert.tools import tool_call_to_pb
from rustaid.tools.calling import ToolCall

SERVED: list[ModuleType] = [
    common_pb2,
    generate_pb2,
    models_pb2,
    nlu_pb2,
    plugins_pb2,
    rag_pb2,
    resources_pb2,
    tools_pb2,
    updates_pb2,
]
# Request/response wrappers are unpacked by the servicers, except these streamed events.
WRAPPER = re.compile(r".*(Request|Response)$")
CONVERTED_WRAPPERS = {"WatchModelsResponse", "SelectModelResponse"}
# Read by servicers field by field (no domain type of their own), or, for Embedding,
# written straight to the wire by embed_response_to_pb (vectors packed as floats).
HANDLED_INLINE = {"TokenChunk", "Embedding"}


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def converters_for(module: ModuleType) -> list[ModuleType]:
    proto = module.__name__.rsplit(".", 1)[1].removesuffix("_pb2")
    try:
        return [convert, importlib.import_module(f"rustaid.services.convert.{proto}")]
    except ModuleNotFoundError:
        return [convert]


def test_every_message_has_a_converter() -> None:
    missing = []
    for module in SERVED:
        places = converters_for(module)
        for name in module.DESCRIPTOR.message_types_by_name:
            if name in HANDLED_INLINE or (WRAPPER.match(name) and name not in CONVERTED_WRAPPERS):
                continue
            names = [f"{snake(name)}_{d}_pb" for d in ("to", "from")]
            if not any(hasattr(m, n) for m in places for n in names):
                missing.append(f"{module.__name__}.{name}")
    assert not missing, f"add converters for: {missing}"


def test_generation_params_keep_unset_fields_unset() -> None:
    p = convert.generation_params_from_pb(common_pb2.GenerationParams(temperature=0.0, stop=["\n"]))
    assert p.temperature == 0.0  # explicitly greedy, not "default"
    assert p.max_tokens is None and p.top_p is None and p.seed is None
    assert p.stop == ("\n",)


def test_a_tool_call_with_half_a_surrogate_pair_still_converts() -> None:
    call = ToolCall("c1", "rag_search", {"query": "a\udae3b"})
    pb = tool_call_to_pb(call)  # before: UnicodeEncodeError, an INTERNAL RunAgent
    assert pb.name == "rag_search" and "\ufffd" in pb.arguments_json
    pb.SerializeToString()

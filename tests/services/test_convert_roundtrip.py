"""Round trips through the conversion layer (qdrant-client's lesson): messages drawn
from the proto strategies (every field, edge values, undefined enum numbers) are
converted to the domain and back, and must come back the same; converters that only
read a message must carry every one of its fields. Bad values may only raise
InvalidArgument, naming the field."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf import struct_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rustaid.api.v1 import common_pb2, generate_pb2, rag_pb2, resources_pb2, tools_pb2
from rustaid.errors import InvalidArgument
from rustaid.services import convert
from rustaid.services.convert import rag as convert_rag
from rustaid.services.convert import resources as convert_resources
from rustaid.services.convert import tools as convert_tools
from rustaid.testing.proto_strategies import Limits, Seeds, messages

LIMITS = Limits(max_depth=2, many_items=(100,), long_text=(1_000, 5_000))
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# Valid JSON objects half of the time, so that tool calls get past parsing.
JSON_OBJECTS = st.dictionaries(
    st.text(max_size=8),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
        max_leaves=8,
    ),
    max_size=4,
).map(json.dumps)
SEEDS = Seeds({"arguments_json": JSON_OBJECTS, "name": st.text(min_size=1, max_size=12)})


def drawn(descriptor: Descriptor) -> st.SearchStrategy[Message]:
    return messages(descriptor, seeds=SEEDS, limits=LIMITS)


def convert_or_refuse(fn: Callable[[], Any]) -> Any:
    """The converted value, or None when the converter refused the message (which it
    may only do with InvalidArgument naming a field)."""
    try:
        return fn()
    except InvalidArgument as e:
        assert e.field, f"InvalidArgument without a field: {e}"
        return None


# -- from protobuf and back ----------------------------------------------------------------


ROLES = (
    generate_pb2.ROLE_SYSTEM,
    generate_pb2.ROLE_USER,
    generate_pb2.ROLE_ASSISTANT,
    generate_pb2.ROLE_TOOL,
)


@FAST
@given(drawn(generate_pb2.ChatMessage.DESCRIPTOR))
def test_chat_message(m: generate_pb2.ChatMessage) -> None:
    domain = convert_or_refuse(lambda: convert_tools.tool_messages_from_pb([m])[0])
    if domain is None:
        assert m.role not in ROLES or any(not c.name for c in m.tool_calls) or _bad_json(m)
        return
    assert (domain.content, domain.name, domain.tool_call_id) == (m.content, m.name,
                                                                   m.tool_call_id)  # fmt: skip
    assert convert.chat_message_to_pb(domain.role, "").role == m.role
    # Back as a reply: role assistant, content and tool calls; a reply has no name and
    # answers no call, so those two are not written back.
    back = convert_tools.chat_reply_to_pb(domain.content, domain.tool_calls)
    assert (back.role, back.content, back.name, back.tool_call_id) == (
        generate_pb2.ROLE_ASSISTANT, m.content, "", ""
    )  # fmt: skip
    assert [_call(c) for c in back.tool_calls] == [_call(c) for c in m.tool_calls]


def _call(c: tools_pb2.ToolCall) -> tuple[str, str, Any]:
    return c.id, c.name, json.loads(c.arguments_json or "{}")


def _bad_json(m: generate_pb2.ChatMessage) -> bool:
    for c in m.tool_calls:
        try:
            if not isinstance(json.loads(c.arguments_json or "{}"), dict):
                return True
        except ValueError:
            return True
    return False


@FAST
@given(drawn(tools_pb2.ToolCall.DESCRIPTOR))
def test_tool_call(c: tools_pb2.ToolCall) -> None:
    domain = convert_or_refuse(lambda: convert_tools.tool_call_from_pb(c, "tool_calls[0]"))
    if domain is None:
        return
    back = convert_tools.tool_call_to_pb(domain)
    # The arguments come back as the same JSON object, not always the same text.
    assert _call(back) == _call(c)


@FAST
@given(drawn(resources_pb2.ProfileParameters.DESCRIPTOR))
def test_profile_parameters(p: resources_pb2.ProfileParameters) -> None:
    domain = convert_resources.profile_parameters_from_pb(p)
    assert convert_resources.profile_parameters_to_pb(domain) == p


@FAST
@given(drawn(struct_pb2.Struct.DESCRIPTOR))
def test_struct_metadata(s: struct_pb2.Struct) -> None:
    data = convert_or_refuse(lambda: convert_rag.struct_from_pb(s))
    if data is None:
        assert _has_non_finite(s)
        return
    # A Value with no kind set, or a null of an undefined number (malformed, but they
    # parse), is read as null.
    expected = struct_pb2.Struct()
    expected.CopyFrom(s)
    _unset_to_null(expected)
    assert convert_rag.struct_to_pb(data) == expected


def _unset_to_null(s: struct_pb2.Struct | struct_pb2.ListValue) -> None:
    values = s.fields.values() if isinstance(s, struct_pb2.Struct) else s.values
    for v in values:
        kind = v.WhichOneof("kind")
        if kind in (None, "null_value"):
            v.null_value = struct_pb2.NULL_VALUE
        elif kind in ("struct_value", "list_value"):
            _unset_to_null(getattr(v, kind))


def _has_non_finite(s: struct_pb2.Struct | struct_pb2.ListValue) -> bool:
    values = s.fields.values() if isinstance(s, struct_pb2.Struct) else s.values
    for v in values:
        kind = v.WhichOneof("kind")
        if kind == "number_value" and not math.isfinite(v.number_value):
            return True
        if kind in ("struct_value", "list_value") and _has_non_finite(getattr(v, kind)):
            return True
    return False


@pytest.mark.parametrize("number", rag_pb2.SearchMode.values())
def test_search_mode(number: int) -> None:
    mode = convert_rag.search_mode_from_pb(number)
    if number == rag_pb2.SEARCH_MODE_UNSPECIFIED:
        assert mode is None  # the collection decides
    else:
        assert mode is not None and convert_rag.search_mode_to_pb(mode) == number


def test_an_undefined_search_mode_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="not a known SearchMode") as info:
        convert_rag.search_mode_from_pb(max(rag_pb2.SearchMode.values()) + 1)
    assert info.value.field == "mode"


# -- read-only converters carry every field -------------------------------------------------

# (message, converter, fields the domain type names differently: proto name -> attribute)
READERS: list[tuple[Descriptor, Callable[[Any], Any], dict[str, str]]] = [
    (common_pb2.GenerationParams.DESCRIPTOR, convert.generation_params_from_pb, {}),
    (common_pb2.SelectionCriteria.DESCRIPTOR, convert.selection_criteria_from_pb, {}),
    (rag_pb2.ChunkingOptions.DESCRIPTOR, convert_rag.chunking_options_from_pb,
     {"chunk_size": "size", "chunk_overlap": "overlap"}),
]  # fmt: skip


def _expected(m: Message, f: FieldDescriptor) -> Any:
    if f.is_repeated:
        return tuple(getattr(m, f.name))
    if f.has_presence and not m.HasField(f.name):
        return None
    return getattr(m, f.name)


@pytest.mark.parametrize(
    ("descriptor", "reader", "renamed"), READERS, ids=[r[0].name for r in READERS]
)
@FAST
@given(data=st.data())
def test_readers_carry_every_field(
    descriptor: Descriptor,
    reader: Callable[[Any], Any],
    renamed: dict[str, str],
    data: st.DataObject,
) -> None:
    m = data.draw(drawn(descriptor))
    domain = convert_or_refuse(lambda: reader(m))
    if domain is None:
        return
    for f in descriptor.fields:
        attribute = renamed.get(f.name, f.name)
        assert hasattr(domain, attribute), f"{descriptor.name}.{f.name} is not carried"
        got, want = getattr(domain, attribute), _expected(m, f)
        same = got == want or (
            isinstance(want, float)
            and math.isnan(want)
            and isinstance(got, float)
            and math.isnan(got)
        )
        assert same, f"{descriptor.name}.{f.name}: {want!r} became {got!r}"

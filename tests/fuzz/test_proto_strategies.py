"""rustaid.testing.proto_strategies draws what the fuzzers need: every field type, maps,
oneofs, seeds and damaged encodings."""

from __future__ import annotations

import math

from google.protobuf import descriptor_pb2, descriptor_pool, struct_pb2
from google.protobuf.message import DecodeError
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st

from rustaid.api.v1 import common_pb2, models_pb2, rag_pb2
from rustaid.testing.proto_strategies import (
    Limits,
    Seeds,
    message_class,
    messages,
    raw_requests,
    wire_mutations,
)
from tests.fuzz.test_grpc import RPCS


def _map_message() -> object:
    """A message type with map fields (the API has none of its own), built at run time."""
    f = descriptor_pb2.FileDescriptorProto(name="fuzz_maps.proto", package="fuzz", syntax="proto3")
    sub = f.message_type.add(name="Sub")
    sub.field.add(name="n", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_INT64)
    msg = f.message_type.add(name="WithMaps")
    for name, number, key, value, type_name in (
        ("counts", 1, "TYPE_STRING", "TYPE_UINT64", ""),
        ("subs", 2, "TYPE_INT32", "TYPE_MESSAGE", ".fuzz.Sub"),
    ):
        kinds = descriptor_pb2.FieldDescriptorProto
        entry = msg.nested_type.add(name=name.capitalize() + "Entry")
        entry.options.map_entry = True
        entry.field.add(
            name="key", number=1, type=getattr(descriptor_pb2.FieldDescriptorProto, key)
        )
        value_field = entry.field.add(name="value", number=2, type=getattr(kinds, value))
        if type_name:
            value_field.type_name = type_name
        msg.field.add(
            name=name,
            number=number,
            type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
            label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
            type_name=f".fuzz.WithMaps.{entry.name}",
        )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return pool.FindMessageTypeByName("fuzz.WithMaps")


@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_every_request_type_round_trips(data: st.DataObject) -> None:
    """What is drawn is a valid message of its type (bytes compared: NaN != NaN)."""
    for method in RPCS:
        msg = data.draw(messages(method.input_type), label=method.full_name)
        encoded = msg.SerializeToString(deterministic=True)
        again = message_class(method.input_type).FromString(encoded)
        assert again.SerializeToString(deterministic=True) == encoded


def test_map_fields_are_filled() -> None:
    descriptor = _map_message()
    found = find(
        messages(descriptor),  # type: ignore[arg-type]
        lambda m: len(m.counts) >= 2 and any(s.n != 0 for s in m.subs.values()),
        settings=settings(database=None, max_examples=2000, phases=[Phase.generate]),
    )
    assert len(found.counts) >= 2


def test_edges_are_drawn() -> None:
    """Extreme integers, NaN, unknown enum numbers and long strings all occur."""
    small = Limits(long_text=(1_000, 2_000))  # long strings, but cheap to draw
    strategy = messages(common_pb2.GenerationParams.DESCRIPTOR, limits=small)
    cfg = settings(database=None, max_examples=5000, phases=[Phase.generate])
    find(
        strategy, lambda m: m.HasField("max_tokens") and m.max_tokens == (1 << 32) - 1, settings=cfg
    )
    find(strategy, lambda m: m.HasField("temperature") and math.isnan(m.temperature), settings=cfg)
    find(strategy, lambda m: len(m.grammar) >= 1_000, settings=cfg)
    request = messages(models_pb2.ListModelsRequest.DESCRIPTOR, limits=small)
    find(request, lambda m: m.kind not in common_pb2.ModelKind.values(), settings=cfg)
    find(
        messages(rag_pb2.Document.DESCRIPTOR, limits=small),
        lambda d: len(d.metadata.fields) >= 2,
        settings=cfg,
    )


def test_oneofs_and_well_known_types() -> None:
    cfg = settings(database=None, max_examples=3000, phases=[Phase.generate])
    small = Limits(long_text=(1_000, 2_000))
    strategy = messages(rag_pb2.IndexFileRequest.DESCRIPTOR, limits=small)
    find(strategy, lambda m: m.WhichOneof("source") == "content", settings=cfg)
    find(strategy, lambda m: m.WhichOneof("source") == "path", settings=cfg)
    keep_alive = messages(common_pb2.KeepAlive.DESCRIPTOR, limits=small)
    find(keep_alive, lambda k: k.duration.seconds < 0, settings=cfg)  # out of range
    find(keep_alive, lambda k: 0 < k.duration.seconds < 10, settings=cfg)  # in range
    assert isinstance(
        find(
            messages(struct_pb2.Struct.DESCRIPTOR, limits=small),
            lambda s: len(s.fields) > 0,
            settings=cfg,
        ),
        struct_pb2.Struct,
    )


def test_seeds_appear_in_fields_and_whole_messages() -> None:
    cfg = settings(database=None, max_examples=500, phases=[Phase.generate])
    seeds = Seeds(
        {
            "id": st.just("tiny"),
            "rustaid.api.v1.KeepAlive": st.just(common_pb2.KeepAlive(forever=True)),
        }
    )
    strategy = messages(models_pb2.LoadModelRequest.DESCRIPTOR, seeds=seeds)
    find(strategy, lambda m: m.id == "tiny", settings=cfg)
    find(strategy, lambda m: m.keep_alive.forever and m.id == "tiny", settings=cfg)
    find(strategy, lambda m: m.id not in ("", "tiny"), settings=cfg)  # not only seeds


def test_damaged_encodings_and_raw_bytes() -> None:
    cfg = settings(database=None, max_examples=1000, phases=[Phase.generate])
    valid = models_pb2.GetModelRequest(id="tiny").SerializeToString()

    def undecodable(b: bytes) -> bool:
        try:
            models_pb2.GetModelRequest.FromString(b)
        except DecodeError:
            return True
        return False

    find(wire_mutations(valid), undecodable, settings=cfg)
    find(wire_mutations(valid), lambda b: b != valid and not undecodable(b), settings=cfg)
    find(raw_requests(), undecodable, settings=cfg)

"""Conversions for rag.proto (RagService)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format, struct_pb2

from rustaid.api.v1 import rag_pb2
from rustaid.errors import InvalidArgument
from rustaid.providers import (
    Condition,
    Distance,
    FieldAnyOf,
    FieldMatch,
    FieldRange,
    Filter,
    SearchMode,
)
from rustaid.rag.ask import Hit
from rustaid.rag.manager import (
    ChunkingRequest,
    CitedHits,
    CollectionView,
    Embedded,
    normalise_metadata,
)
from rustaid.rag.pipeline import DocumentInput

_DISTANCE = {
    Distance.COSINE: rag_pb2.DISTANCE_COSINE,
    Distance.DOT: rag_pb2.DISTANCE_DOT,
    Distance.EUCLID: rag_pb2.DISTANCE_EUCLID,
}
_DISTANCE_FROM = {v: k for k, v in _DISTANCE.items()}
MAX_ANY_VALUES = 1024


def distance_from_pb(value: int) -> Distance:
    if value == rag_pb2.DISTANCE_UNSPECIFIED:
        return Distance.COSINE
    if value not in _DISTANCE_FROM:
        raise InvalidArgument(f"distance {value} is not a known Distance", field="distance")
    return _DISTANCE_FROM[value]  # type: ignore[index]


_MODE = {
    SearchMode.DENSE: rag_pb2.SEARCH_MODE_DENSE,
    SearchMode.KEYWORD: rag_pb2.SEARCH_MODE_KEYWORD,
    SearchMode.HYBRID: rag_pb2.SEARCH_MODE_HYBRID,
}
_MODE_FROM = {v: k for k, v in _MODE.items()}


def search_mode_from_pb(value: int) -> SearchMode | None:
    """None for unspecified: the collection decides."""
    if value == rag_pb2.SEARCH_MODE_UNSPECIFIED:
        return None
    if value not in _MODE_FROM:
        raise InvalidArgument(
            f"mode {value} is not a known SearchMode (dense, keyword or hybrid)", field="mode"
        )
    return _MODE_FROM[value]  # type: ignore[index]


def search_mode_to_pb(mode: SearchMode) -> rag_pb2.SearchMode:
    return _MODE[mode]


def struct_from_pb(s: struct_pb2.Struct, field_name: str = "metadata") -> dict[str, Any]:
    try:
        data: dict[str, Any] = json_format.MessageToDict(s)
    except ValueError as e:  # NaN or an infinity: JSON has no such numbers
        raise InvalidArgument(
            f"{field_name} holds a number that is NaN or infinite ({e}); metadata must be "
            "JSON: give finite numbers, or the value as a string",
            field=field_name,
        ) from None
    return data


def struct_to_pb(data: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(data)
    return s


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def index_progress_to_pb(chunks_done: int, chunks_total: int) -> rag_pb2.IndexProgress:
    return rag_pb2.IndexProgress(chunks_done=chunks_done, chunks_total=chunks_total)


def embed_response_to_pb(e: Embedded) -> rag_pb2.EmbedResponse:
    """The response, its vectors written straight from the packed float32 bytes (the
    wire form of `repeated float` is exactly that): no Python float per value."""
    row = e.dimension * 4
    if len(e.packed) != row * e.count:
        raise ValueError(f"{len(e.packed)} bytes do not hold {e.count} x {e.dimension} floats")
    values = b"\x0a" + _varint(row)  # Embedding.values = 1, packed
    embedding = b"\x0a" + _varint(len(values) + row)  # EmbedResponse.embeddings = 1
    packed = memoryview(e.packed)
    wire = b"".join(
        part
        for i in range(e.count)
        for part in (embedding, values, packed[i * row : (i + 1) * row])
    )
    response = rag_pb2.EmbedResponse.FromString(wire)
    response.model_id = e.model_id
    response.dimension = e.dimension
    response.max_tokens = e.max_tokens
    response.truncated.extend(e.truncated)
    return response


def collection_to_pb(view: CollectionView) -> rag_pb2.Collection:
    r, stats = view.record, view.stats
    return rag_pb2.Collection(
        name=r.name,
        embedding_model_id=r.embedding_model_id,
        dimension=r.dimension,
        distance=_DISTANCE[r.distance],
        vector_store=r.vector_store,
        points_count=stats.points if stats else 0,
        indexed_points_count=stats.indexed_points if stats else 0,
        index_building=stats.index_building if stats else False,
        error=view.error,
        keyword_language=r.keyword_language,
    )


def chunking_options_from_pb(c: rag_pb2.ChunkingOptions) -> ChunkingRequest:
    return ChunkingRequest(
        size=c.chunk_size, overlap=c.chunk_overlap if c.HasField("chunk_overlap") else None
    )


def document_from_pb(d: rag_pb2.Document, index: int) -> DocumentInput:
    where = f"documents[{index}]"
    if not d.text.strip():
        raise InvalidArgument(
            f"{where}.text is empty: give the document's text", field=f"{where}.text"
        )
    return DocumentInput(
        id=d.id,
        text=d.text,
        source=d.source,
        title=d.title,
        metadata=normalise_metadata(
            struct_from_pb(d.metadata, f"{where}.metadata"), f"{where}.metadata"
        ),
    )


def match_value_from_pb(m: rag_pb2.MatchValue, key: str, where: str) -> FieldMatch:
    kind = m.WhichOneof("value")
    if kind is None:
        raise InvalidArgument(
            f"{where}.value sets none of text, integer, boolean", field=f"{where}.value"
        )
    value: str | int | bool = getattr(m, kind)
    return FieldMatch(key, value)


def match_any_from_pb(m: rag_pb2.MatchAny, key: str, where: str) -> FieldAnyOf:
    if not m.values:
        raise InvalidArgument(f"{where}.any.values is empty", field=f"{where}.any.values")
    if len(m.values) > MAX_ANY_VALUES:
        raise InvalidArgument(
            f"{where}.any has {len(m.values)} values; at most {MAX_ANY_VALUES}",
            field=f"{where}.any.values",
        )
    return FieldAnyOf(key, tuple(m.values))


def range_from_pb(r: rag_pb2.Range, key: str, where: str) -> FieldRange:
    def bound(name: str) -> float | None:
        if not r.HasField(name):
            return None
        value = float(getattr(r, name))
        if not math.isfinite(value):
            raise InvalidArgument(
                f"{where}.range.{name} must be a finite number", field=f"{where}.range.{name}"
            )
        return value

    bounds = {name: bound(name) for name in ("gt", "gte", "lt", "lte")}
    if all(v is None for v in bounds.values()):
        raise InvalidArgument(
            f"{where}.range sets no bound: give gt, gte, lt or lte", field=f"{where}.range"
        )
    return FieldRange(key, **bounds)


def condition_from_pb(c: rag_pb2.Condition, where: str) -> Condition:
    if not c.key:
        raise InvalidArgument(f"{where}.key is empty: name the field", field=f"{where}.key")
    kind = c.WhichOneof("match")
    if kind == "value":
        return match_value_from_pb(c.value, c.key, where)
    if kind == "any":
        return match_any_from_pb(c.any, c.key, where)
    if kind == "range":
        return range_from_pb(c.range, c.key, where)
    raise InvalidArgument(
        f"{where} on {c.key!r} sets none of value, any, range", field=f"{where}.match"
    )


def filter_from_pb(f: rag_pb2.Filter, field_name: str = "filter") -> Filter:
    def conditions(name: str, items: Sequence[rag_pb2.Condition]) -> tuple[Condition, ...]:
        return tuple(condition_from_pb(c, f"{field_name}.{name}[{i}]") for i, c in enumerate(items))

    return Filter(
        must=conditions("must", f.must),
        must_not=conditions("must_not", f.must_not),
        should=conditions("should", f.should),
    )


def search_hit_to_pb(h: Hit) -> rag_pb2.SearchHit:
    return rag_pb2.SearchHit(
        document_id=h.document_id,
        chunk_id=h.chunk_id,
        text=h.text,
        score=h.score,
        metadata=struct_to_pb(dict(h.metadata)),
        source=h.source,
        page=max(0, h.page),
        heading_path=list(h.heading_path),
        chunk_index=max(0, h.chunk_index),
        title=h.title,
    )


def citations_to_pb(c: CitedHits) -> rag_pb2.Citations:
    return rag_pb2.Citations(hits=[search_hit_to_pb(h) for h in c.hits], dropped=c.dropped)

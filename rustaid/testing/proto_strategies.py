"""Hypothesis strategies for protobuf messages, built from their descriptors.

`messages(Descriptor)` walks the message type and draws a value for every field:
integers at and near their limits, floats including NaN and the infinities, strings with
NUL, control and non-BMP characters or hundreds of kilobytes long, raw bytes, enum
numbers the contract does not define, nested messages down to a bounded depth, repeated
fields (occasionally thousands of items), map fields, at most one member of each oneof,
and the well-known types (Duration, Timestamp, Struct) both valid and out of range.

`Seeds` lets the caller mix real values (model ids, collection names...) into chosen
fields so that random requests get past "not found" part of the time.

`wire_mutations(encoded)` turns a valid encoding into a malformed one (truncated, bytes
flipped, garbage spliced in); `raw_requests()` draws arbitrary bytes.

    from rustaid.api.v1 import models_pb2
    from rustaid.testing.proto_strategies import Seeds, messages

    strategy = messages(models_pb2.GetModelRequest.DESCRIPTOR, seeds=Seeds({"id": ids}))

Needs hypothesis (a development dependency).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import strategies as st

__all__ = [
    "INTERESTING_STRINGS",
    "Limits",
    "Seeds",
    "field_values",
    "message_class",
    "messages",
    "raw_requests",
    "wire_mutations",
]

INT32 = (-(1 << 31), (1 << 31) - 1)
UINT32 = (0, (1 << 32) - 1)
INT64 = (-(1 << 63), (1 << 63) - 1)
UINT64 = (0, (1 << 64) - 1)

_INT_RANGES: dict[int, tuple[int, int]] = {
    FieldDescriptor.TYPE_INT32: INT32,
    FieldDescriptor.TYPE_SINT32: INT32,
    FieldDescriptor.TYPE_SFIXED32: INT32,
    FieldDescriptor.TYPE_UINT32: UINT32,
    FieldDescriptor.TYPE_FIXED32: UINT32,
    FieldDescriptor.TYPE_INT64: INT64,
    FieldDescriptor.TYPE_SINT64: INT64,
    FieldDescriptor.TYPE_SFIXED64: INT64,
    FieldDescriptor.TYPE_UINT64: UINT64,
    FieldDescriptor.TYPE_FIXED64: UINT64,
}

# Strings that tend to break parsers, paths, templates, grammars and logs.
INTERESTING_STRINGS = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "\n",
    "\r\n\t",
    "\u2028",
    "\ufeff",
    "\ufffd",
    "\U0001f600",
    "\u202e",
    "..",
    "../../../../etc/passwd",
    "/etc/passwd",
    "/",
    "~",
    "%s%n%x",
    "{}",
    "{{ x }}",
    "{% for %}",
    "null",
    "[]",
    '{"type": "object"}',
    '"',
    "'",
    "\\",
    "root ::= ",
    'root ::= "a"',
    "-1",
    "0",
    "1e309",
    "NaN",
    "<|im_start|>",
    "</s>",
    "<script>",
    "[" * 20_000,  # JSON nested deeper than any parser's recursion limit
    "9" * 5_000,  # an integer past Python's 4300-digit conversion limit
    '{"a": ' + "1" * 5_000 + "}",
)

_DURATION_MAX_S = 315_576_000_000  # 10,000 years: the documented range of Duration
_TIMESTAMP_MIN_S = -62_135_596_800  # 0001-01-01T00:00:00Z
_TIMESTAMP_MAX_S = 253_402_300_799  # 9999-12-31T23:59:59Z


@dataclass(frozen=True)
class Limits:
    """Bounds that keep one drawn message cheap enough to send many times."""

    max_depth: int = 3  # nested messages below this depth are left unset
    max_items: int = 4  # repeated and map fields, usual case
    many_items: tuple[int, ...] = (100, 1025, 5000)  # repeated scalars, rare case
    max_text: int = 40  # characters of an ordinary random string
    long_text: tuple[int, int] = (1_000, 300_000)  # length range of a very long string
    max_bytes: int = 64


@dataclass(frozen=True)
class Seeds:
    """Real values mixed into fields, about half of the time.

    Keys are a field name ("model_id": every field of that name), a full field name
    ("rustaid.api.v1.GetModelRequest.id": that field only, which wins), or a full
    message name ("rustaid.api.v1.GenerationParams": whole messages of that type, e.g.
    mostly valid ones, so that requests get past validation)."""

    values: Mapping[str, st.SearchStrategy[Any]] = field(default_factory=dict)

    def for_field(self, f: FieldDescriptor) -> st.SearchStrategy[Any] | None:
        found = self.values.get(f.full_name)
        return found if found is not None else self.values.get(f.name)


def message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


def _integers(lo: int, hi: int) -> st.SearchStrategy[int]:
    edges = sorted(
        {v for v in (0, 1, 2, -1, lo, lo + 1, hi, hi - 1, 1 << 31, 1 << 32) if lo <= v <= hi}
    )
    return st.one_of(
        st.sampled_from(edges), st.integers(max(lo, -3), min(hi, 300)), st.integers(lo, hi)
    )


def _floats(width: Literal[32, 64]) -> st.SearchStrategy[float]:
    big = 3.4e38 if width == 32 else 1.7e308
    edges = [0.0, -0.0, 1.0, -1.0, 0.5, 1e-45, math.inf, -math.inf, math.nan, big, -big]
    return st.one_of(
        st.sampled_from(edges),
        st.floats(-2.0, 2.0, width=width),
        st.floats(width=width, allow_nan=True, allow_infinity=True),
    )


def _text(limits: Limits) -> st.SearchStrategy[str]:
    # Surrogates cannot be encoded as UTF-8, so protobuf refuses them client-side.
    chars = st.characters(exclude_categories=["Cs"])
    long = st.tuples(st.text(chars, min_size=1, max_size=8), st.integers(*limits.long_text)).map(
        lambda t: (t[0] * (t[1] // len(t[0]) + 1))[: t[1]]
    )
    return st.one_of(
        st.sampled_from(INTERESTING_STRINGS),
        st.text(chars, max_size=limits.max_text),
        st.text(st.characters(codec="ascii"), max_size=limits.max_text),
        long,
    )


def _bytes(limits: Limits) -> st.SearchStrategy[bytes]:
    long = st.tuples(st.binary(min_size=1, max_size=8), st.integers(*limits.long_text)).map(
        lambda t: (t[0] * (t[1] // len(t[0]) + 1))[: t[1]]
    )
    return st.one_of(st.binary(max_size=limits.max_bytes), long)


def _enum(f: FieldDescriptor) -> st.SearchStrategy[int]:
    assert f.enum_type is not None
    known = [v.number for v in f.enum_type.values]
    unknown = st.one_of(
        st.sampled_from([max(known) + 1, -1, INT32[0], INT32[1]]), st.integers(*INT32)
    )
    return st.one_of(st.sampled_from(known), unknown)


def _scalar(f: FieldDescriptor, limits: Limits) -> st.SearchStrategy[Any]:
    t = f.type
    if t in _INT_RANGES:
        return _integers(*_INT_RANGES[t])
    if t == FieldDescriptor.TYPE_DOUBLE:
        return _floats(64)
    if t == FieldDescriptor.TYPE_FLOAT:
        return _floats(32)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_STRING:
        return _text(limits)
    if t == FieldDescriptor.TYPE_BYTES:
        return _bytes(limits)
    if t == FieldDescriptor.TYPE_ENUM:
        return _enum(f)
    raise TypeError(f"no strategy for field {f.full_name} of type {t}")


def _json_values(limits: Limits) -> st.SearchStrategy[Any]:
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        _floats(64),
        st.integers(-(1 << 53), 1 << 53).map(float),
        _text(Limits(long_text=(100, 2_000))),
    )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=limits.max_items),
            st.dictionaries(st.text(max_size=12), inner, max_size=limits.max_items),
        ),
        max_leaves=12,
    )


def _well_known(descriptor: Descriptor, limits: Limits) -> st.SearchStrategy[Message] | None:
    cls = message_class(descriptor)
    name = descriptor.full_name
    if name == "google.protobuf.Duration":
        valid = st.integers(-_DURATION_MAX_S, _DURATION_MAX_S).flatmap(
            lambda s: st.builds(
                lambda n, s=s: Duration(seconds=s, nanos=n if s >= 0 else -n),
                st.integers(0, 999_999_999),
            )
        )
        raw = st.builds(
            lambda s, n: Duration(seconds=s, nanos=n), _integers(*INT64), _integers(*INT32)
        )
        small = st.builds(
            lambda ms: Duration(seconds=ms // 1000, nanos=ms % 1000 * 1_000_000),
            st.integers(0, 10_000),
        )
        return st.one_of(small, valid, raw)
    if name == "google.protobuf.Timestamp":
        valid_ts = st.builds(
            lambda s, n: Timestamp(seconds=s, nanos=n),
            st.integers(_TIMESTAMP_MIN_S, _TIMESTAMP_MAX_S),
            st.integers(0, 999_999_999),
        )
        raw_ts = st.builds(
            lambda s, n: Timestamp(seconds=s, nanos=n), _integers(*INT64), _integers(*INT32)
        )
        return st.one_of(valid_ts, raw_ts)
    if name == "google.protobuf.Struct":

        def to_struct(values: dict[str, Any]) -> Message:
            s = cls()
            s.update(values)  # type: ignore[attr-defined]
            return s

        return st.dictionaries(
            st.text(max_size=16), _json_values(limits), max_size=limits.max_items
        ).map(to_struct)
    return None


class _Builder:
    def __init__(self, seeds: Seeds, limits: Limits) -> None:
        self.seeds = seeds
        self.limits = limits
        self._cache: dict[tuple[str, int], st.SearchStrategy[Message]] = {}

    def value(self, f: FieldDescriptor, depth: int) -> st.SearchStrategy[Any] | None:
        """One (non-repeated) value of `f`, or None when the depth bound leaves it unset."""
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= self.limits.max_depth or f.message_type is None:
                return None
            generic: st.SearchStrategy[Any] = self.message(f.message_type, depth + 1)
        else:
            generic = _scalar(f, self.limits)
        seed = self.seeds.for_field(f)
        return st.one_of(seed, generic) if seed is not None else generic

    def field(self, f: FieldDescriptor, depth: int) -> st.SearchStrategy[Any] | None:
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            key_f = f.message_type.fields_by_name["key"]
            value_f = f.message_type.fields_by_name["value"]
            value = self.value(value_f, depth)
            if value is None:
                return None
            return st.dictionaries(
                _scalar(key_f, self.limits), value, max_size=self.limits.max_items
            )
        one = self.value(f, depth)
        if one is None or not f.is_repeated:
            return one
        few = st.lists(one, max_size=self.limits.max_items)
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            return few
        # Occasionally a long list (limits on the number of texts, stop sequences...).
        short = self.seeds.for_field(f)
        if short is None:
            short = _scalar(f, Limits(max_text=8, long_text=(10, 20)))
        many = st.tuples(short, st.sampled_from(self.limits.many_items)).map(
            lambda t: [t[0]] * t[1]
        )
        return st.one_of(few, many)

    def message(self, descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
        key = (descriptor.full_name, depth)
        if key in self._cache:
            return self._cache[key]
        strategy = _well_known(descriptor, self.limits)
        if strategy is None:
            strategy = self._generic(descriptor, depth)
        seed = self.seeds.values.get(descriptor.full_name)
        if seed is not None:
            strategy = st.one_of(seed, strategy)
        self._cache[key] = strategy
        return strategy

    def seed_only(self, descriptor: Descriptor) -> st.SearchStrategy[Message]:
        """Messages with the seeded fields (all, or some) set from their seeds (one seeded
        member of each oneof) and nothing else: as valid as the seeds make them."""
        cls = message_class(descriptor)
        whole = self.seeds.values.get(descriptor.full_name)
        if whole is not None:
            return whole
        parts: dict[str, st.SearchStrategy[Any]] = {}
        oneofs: dict[str, list[st.SearchStrategy[dict[str, Any]]]] = {}
        for f in descriptor.fields:
            seed = self.seeds.for_field(f)
            if seed is None and f.message_type is not None:
                seed = self.seeds.values.get(f.message_type.full_name)
            if seed is None:
                continue
            value = st.lists(seed, min_size=1, max_size=2) if f.is_repeated else seed
            oneof = f.containing_oneof
            if oneof is not None and len(oneof.fields) > 1:
                oneofs.setdefault(oneof.name, []).append(
                    value.map(functools.partial(_single, f.name))
                )
            else:
                parts[f.name] = value
        picks = st.tuples(*(st.one_of(m) for m in oneofs.values()))

        # Every seeded field, or some of them (seeded fields may exclude each other).
        values = st.one_of(st.fixed_dictionaries(parts), st.fixed_dictionaries({}, optional=parts))
        return st.builds(_builder(cls, descriptor), values, picks)

    def one_field_off(self, descriptor: Descriptor) -> st.SearchStrategy[Message]:
        """A seed-only message with one field replaced by a random value."""
        cls = message_class(descriptor)
        fields = [f for f in descriptor.fields if self.field(f, 0) is not None]
        if not fields:
            return self.seed_only(descriptor)

        def mutate(base: Message, f: FieldDescriptor, value: Any) -> Message:
            msg = cls()
            msg.CopyFrom(base)
            msg.ClearField(f.name)
            _assign(msg, f, value)
            return msg

        def pick(f: FieldDescriptor) -> st.SearchStrategy[Message]:
            strategy = self.field(f, 0)
            assert strategy is not None
            return st.builds(mutate, self.seed_only(descriptor), st.just(f), strategy)

        return st.sampled_from(fields).flatmap(pick)

    def _generic(self, descriptor: Descriptor, depth: int) -> st.SearchStrategy[Message]:
        cls = message_class(descriptor)
        plain: dict[str, st.SearchStrategy[Any]] = {}
        for f in descriptor.fields:
            if f.containing_oneof is None:
                s = self.field(f, depth)
                if s is not None:
                    plain[f.name] = s
        # At most one member of each oneof (proto3 `optional` fields are one-member oneofs).
        choices: list[st.SearchStrategy[dict[str, Any]]] = []
        for oneof in descriptor.oneofs:
            members: list[st.SearchStrategy[dict[str, Any]]] = [st.just({})]
            for f in oneof.fields:
                s = self.field(f, depth)
                if s is not None:
                    members.append(s.map(functools.partial(_single, f.name)))
            choices.append(st.one_of(members))

        plain_values = st.fixed_dictionaries({}, optional=plain)
        return st.builds(_builder(cls, descriptor), plain_values, st.tuples(*choices))


def _builder(
    cls: type[Message], descriptor: Descriptor
) -> Callable[[dict[str, Any], tuple[dict[str, Any], ...]], Message]:
    """A message of `cls` from field values: plain ones, then one picked per oneof."""

    def build(values: dict[str, Any], picked: tuple[dict[str, Any], ...]) -> Message:
        msg = cls()
        for part in (values, *picked):
            for name, v in part.items():
                _assign(msg, descriptor.fields_by_name[name], v)
        return msg

    return build


def _single(name: str, value: Any) -> dict[str, Any]:
    return {name: value}


def _assign(msg: Message, f: FieldDescriptor, value: Any) -> None:
    target = getattr(msg, f.name)
    if f.message_type is not None and f.message_type.GetOptions().map_entry:
        if f.message_type.fields_by_name["value"].type == FieldDescriptor.TYPE_MESSAGE:
            for k, v in value.items():
                target[k].CopyFrom(v)
        else:
            target.update(value)
    elif f.is_repeated:
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            for v in value:
                target.add().CopyFrom(v)
        else:
            target.extend(value)
    elif f.type == FieldDescriptor.TYPE_MESSAGE:
        target.CopyFrom(value)
    else:
        setattr(msg, f.name, value)


def messages(
    descriptor: Descriptor, *, seeds: Seeds | None = None, limits: Limits | None = None
) -> st.SearchStrategy[Message]:
    """Random instances of the message type `descriptor` (see the module docstring):
    with seeds, a third are seed-only messages (as valid as the seeds make them), a
    third have one field off from those, a third are random throughout."""
    builder = _Builder(seeds or Seeds(), limits or Limits())
    if not builder.seeds.values:
        return builder.message(descriptor)
    return st.one_of(
        builder.seed_only(descriptor),
        builder.one_field_off(descriptor),
        builder.message(descriptor),
    )


def field_values(
    f: FieldDescriptor, *, seeds: Seeds | None = None, limits: Limits | None = None
) -> st.SearchStrategy[Any]:
    """Values of one field as `messages` draws them (lists for repeated fields)."""
    s = _Builder(seeds or Seeds(), limits or Limits()).field(f, 0)
    if s is None:
        raise ValueError(f"{f.full_name}: nothing to draw")
    return s


def raw_requests(max_size: int = 256) -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, and byte patterns that look like the start of a protobuf field."""
    varint_overflow = st.just(b"\x08" + b"\xff" * 10 + b"\x01")
    huge_length = st.sampled_from([b"\x12\xff\xff\xff\xff\x0f", b"\x0a\x80\x80\x80\x80\x80\x01"])
    groups = st.sampled_from([b"\x0b", b"\x0c", b"\x13\x14", b"\x0b" * 200])
    bad_utf8 = st.binary(min_size=1, max_size=8).map(
        lambda b: b"\x0a" + bytes([len(b) + 1]) + b"\xc3" + b
    )
    return st.one_of(st.binary(max_size=max_size), varint_overflow, huge_length, groups, bad_utf8)


def wire_mutations(encoded: bytes) -> st.SearchStrategy[bytes]:
    """Malformed variants of a valid encoding: truncated, bytes changed, junk spliced in."""

    def truncate(n: int) -> bytes:
        return encoded[: n % (len(encoded) + 1)]

    def flip(i: int, b: int) -> bytes:
        if not encoded:
            return bytes([b])
        i %= len(encoded)
        return encoded[:i] + bytes([b]) + encoded[i + 1 :]

    def splice(i: int, junk: bytes) -> bytes:
        i %= len(encoded) + 1
        return encoded[:i] + junk + encoded[i:]

    strategies: list[st.SearchStrategy[bytes]] = [
        st.integers(0, 1 << 20).map(truncate),
        st.builds(flip, st.integers(0, 1 << 20), st.integers(0, 255)),
        st.builds(splice, st.integers(0, 1 << 20), raw_requests(16)),
    ]
    return st.one_of(strategies)

"""The `options a{sv}` of Generate/StartGeneration -> a GenerationRequest, and of Ask
-> an AskInput.

Each option has one kind; a value of another D-Bus type, or an option the method's table
does not know, is rejected with InvalidArgument naming the option. Ranges (max_tokens,
temperature, top_k...) are checked by the core (engine, RAG), like for gRPC requests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dbus_next.signature import Variant

from rustaid.core.engine import GenerationRequest
from rustaid.core.router import SelectionCriteria
from rustaid.core.scheduler import Priority
from rustaid.errors import InvalidArgument
from rustaid.providers import (
    ChatMessage,
    Condition,
    FieldAnyOf,
    FieldMatch,
    Filter,
    GenerationParams,
    Role,
    SearchMode,
)
from rustaid.rag.manager import AskInput

INTEGER_TYPES = frozenset("ynqiuxt")


@dataclass(frozen=True)
class Option:
    kind: str  # "int", "float", "bool", "str", "strs", "dict"
    help: str


# The documented options (docs/dbus.md lists this table).
OPTIONS: dict[str, Option] = {
    "model": Option("str", "model id from ListModels; empty or absent: the router picks one"),
    "max_tokens": Option("int", "most tokens to generate (default: setting default_max_tokens)"),
    "temperature": Option("float", "sampling temperature, >= 0 (0: greedy)"),
    "top_p": Option("float", "nucleus sampling, in (0, 1]"),
    "top_k": Option("int", "sample among the k most likely tokens, >= 0"),
    "min_p": Option("float", "minimum probability relative to the top token, in [0, 1]"),
    "repeat_penalty": Option("float", "penalty for repeated tokens, > 0"),
    "seed": Option("int", "random seed, for repeatable output"),
    "stop": Option("strs", "stop sequences (at most 16)"),
    "grammar": Option("str", "a GBNF grammar the output must follow"),
    "json_schema": Option("str", "a JSON schema the output must follow"),
    "priority": Option("str", "'interactive' (default) or 'background'"),
    "prefer_local": Option("bool", "router: prefer local models"),
    "prefer_speed": Option("bool", "router: prefer fast models"),
    "prefer_quality": Option("bool", "router: prefer large models"),
    "battery_sensitive": Option("bool", "router: prefer models that draw less power"),
    "max_latency_ms": Option("int", "router: latency budget"),
    "required_tags": Option("strs", "router: tags the model must have"),
}

# Chat/StartChat: the generation options, plus the conversation the daemon keeps.
CHAT_OPTIONS: dict[str, Option] = {
    **OPTIONS,
    "session_id": Option(
        "str", "the daemon keeps this conversation: send only the new messages each turn"
    ),
}
# StartGeneration/StartChat only.
START_OPTIONS: dict[str, Option] = {
    "detach": Option(
        "bool",
        "run as an object of its own (/org/rustai/Daemon1/generations/ID) that outlives "
        "the caller and broadcasts its signals",
    ),
}

# Ask's options (docs/dbus.md lists this table): the generation options for the answer,
# except `priority`; `top_k` is the number of passages (sampling top_k is not offered).
ASK_OPTIONS: dict[str, Option] = {
    **{k: v for k, v in OPTIONS.items() if k not in ("priority", "top_k")},
    "top_k": Option("int", "passages to retrieve, 1 to 100 (0 or absent: 5)"),
    "score_threshold": Option("float", "leave out passages scoring worse than this"),
    "filter": Option(
        "dict",
        "only passages whose fields match: field -> s, b or an integer (equal) or as "
        "(any of); fields as in Search filters, e.g. source or metadata.lang",
    ),
    "mode": Option(
        "str",
        "how passages are retrieved: 'dense', 'keyword' or 'hybrid' (absent or empty: "
        "hybrid when the collection has keyword vectors, else dense)",
    ),
}
# SearchWithOptions' options (docs/dbus.md lists this table).
SEARCH_OPTIONS: dict[str, Option] = {
    "top_k": Option("int", "passages to return, 1 to 1000 (0 or absent: 5)"),
    **{k: ASK_OPTIONS[k] for k in ("score_threshold", "filter", "mode")},
}

_EXPECTED = {
    "int": "an integer (D-Bus type y, n, q, i, u, x or t)",
    "float": "a number (D-Bus type d, or an integer type)",
    "bool": "a boolean (D-Bus type b)",
    "str": "a string (D-Bus type s)",
    "strs": "an array of strings (D-Bus type as)",
    "dict": "a dictionary (D-Bus type a{sv})",
}

_PARAMS = ("max_tokens", "temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed")
_SELECTION = ("prefer_local", "prefer_speed", "prefer_quality", "battery_sensitive")
_PRIORITIES = {"interactive": Priority.INTERACTIVE, "background": Priority.BACKGROUND}


def _value(name: str, variant: Any, table: Mapping[str, Option] = OPTIONS) -> Any:
    option = table.get(name)
    if option is None:
        raise InvalidArgument(
            f"unknown option {name[:64]!r}; known options: {', '.join(sorted(table))}",
            field=f"options.{name[:64]}",
        )
    signature = variant.signature if isinstance(variant, Variant) else ""
    ok = {
        "int": signature in INTEGER_TYPES,
        "float": signature == "d" or signature in INTEGER_TYPES,
        "bool": signature == "b",
        "str": signature == "s",
        "strs": signature == "as",
        "dict": signature == "a{sv}",
    }[option.kind]
    if not ok:
        raise InvalidArgument(
            f"option {name!r} must be {_EXPECTED[option.kind]}, not D-Bus type {signature!r}",
            field=f"options.{name}",
        )
    value = variant.value
    return float(value) if option.kind == "float" else value


def generation_request(
    prompt: str,
    options: Mapping[str, Any],
    table: Mapping[str, Option] = OPTIONS,
    messages: tuple[ChatMessage, ...] = (),
) -> GenerationRequest:
    """Build the engine's request; raises InvalidArgument for an unknown option, a value
    of the wrong type or an unknown priority."""
    values = {name: _value(name, v, table) for name, v in options.items()}
    priority = values.get("priority", "interactive")
    if priority not in _PRIORITIES:
        raise InvalidArgument(
            f"option 'priority' must be 'interactive' or 'background' (got {priority!r})",
            field="options.priority",
        )
    return GenerationRequest(
        model_id=values.get("model", ""),
        prompt=prompt,
        params=_params(values),
        selection=_selection(values),
        priority=_PRIORITIES[priority],
        messages=messages,
        session_id=values.get("session_id", ""),
    )


def chat_request(messages: list[list[str]], options: Mapping[str, Any]) -> GenerationRequest:
    """Chat's `a(ss)` (role, content) messages and options -> the engine's request."""
    if not messages:
        raise InvalidArgument(
            "messages is empty: give at least one (role, content), e.g. [('user', 'Hi')]",
            field="messages",
        )
    roles = ", ".join(r.value for r in Role)
    chat: list[ChatMessage] = []
    for i, (role, content) in enumerate(messages):
        if role not in {r.value for r in Role}:
            raise InvalidArgument(
                f"messages[{i}]: unknown role {role[:32]!r} (one of {roles})",
                field=f"messages[{i}].role",
            )
        chat.append(ChatMessage(role=Role(role), content=content))
    return generation_request("", options, CHAT_OPTIONS, tuple(chat))


def split_start_options(options: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """StartGeneration/StartChat's own options out of `options`: (the rest, detach)."""
    rest = {k: v for k, v in options.items() if k not in START_OPTIONS}
    if "detach" not in options:
        return rest, False
    return rest, bool(_value("detach", options["detach"], START_OPTIONS))


def bounded(params: GenerationParams, limit: int) -> GenerationParams:
    """`params` with max_tokens at most `limit` when the caller did not choose it: a
    method that answers when the text is complete must answer within the bus' timeout."""
    if params.max_tokens is not None:
        return params
    return dataclasses.replace(params, max_tokens=limit)


def _params(values: Mapping[str, Any], names: tuple[str, ...] = _PARAMS) -> GenerationParams:
    return GenerationParams(
        **{k: values[k] for k in names if k in values},
        stop=tuple(values.get("stop", ())),
        grammar=values.get("grammar", ""),
        json_schema=values.get("json_schema", ""),
    )


def _selection(values: Mapping[str, Any]) -> SelectionCriteria:
    return SelectionCriteria(
        **{k: values[k] for k in _SELECTION if k in values},
        max_latency_ms=values.get("max_latency_ms", 0),
        required_tags=tuple(values.get("required_tags", ())),
    )


def _condition(key: str, variant: Any) -> Condition:
    """One `filter` entry; the field itself is checked by the RAG core."""
    signature = variant.signature if isinstance(variant, Variant) else ""
    if signature in ("s", "b") or signature in INTEGER_TYPES:
        return FieldMatch(key, variant.value)
    if signature == "as":
        return FieldAnyOf(key, tuple(variant.value))
    raise InvalidArgument(
        f"option 'filter': the value for {key[:64]!r} must be a string, a boolean, an "
        f"integer (equal to it) or an array of strings (any of them), not D-Bus type "
        f"{signature!r}",
        field=f"options.filter.{key[:64]}",
    )


def ask_request(collection: str, question: str, options: Mapping[str, Any]) -> AskInput:
    """Build the RAG core's request; raises InvalidArgument for an unknown option or a
    value of the wrong type (the question, top_k, filter fields and ranges are checked
    by the core)."""
    values = {name: _value(name, v, ASK_OPTIONS) for name, v in options.items()}
    conditions = tuple(_condition(k, v) for k, v in values.get("filter", {}).items())
    return AskInput(
        collection=collection,
        question=question,
        top_k=values.get("top_k", 0),
        filter=Filter(must=conditions),
        model_id=values.get("model", ""),
        params=_params(values, tuple(k for k in _PARAMS if k != "top_k")),
        selection=_selection(values),
        score_threshold=values.get("score_threshold"),
        mode=_mode(values.get("mode", "")),
    )


def _mode(name: str) -> SearchMode | None:
    if not name:
        return None
    try:
        return SearchMode(name)
    except ValueError:
        raise InvalidArgument(
            f"option mode {name[:32]!r} is not a search mode: use dense, keyword or hybrid",
            field="options.mode",
        ) from None


@dataclass(frozen=True)
class SearchOptions:
    top_k: int = 0
    filter: Filter = field(default_factory=Filter)
    score_threshold: float | None = None
    mode: SearchMode | None = None


def search_options(options: Mapping[str, Any]) -> SearchOptions:
    """SearchWithOptions' options; raises InvalidArgument like ask_request()."""
    values = {name: _value(name, v, SEARCH_OPTIONS) for name, v in options.items()}
    conditions = tuple(_condition(k, v) for k, v in values.get("filter", {}).items())
    return SearchOptions(
        top_k=values.get("top_k", 0),
        filter=Filter(must=conditions),
        score_threshold=values.get("score_threshold"),
        mode=_mode(values.get("mode", "")),
    )

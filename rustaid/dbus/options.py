"""The `options a{sv}` of Generate/StartGeneration -> a GenerationRequest.

Each option has one kind; a value of another D-Bus type, or an option this table does
not know, is rejected with InvalidArgument naming the option. Ranges (max_tokens,
temperature...) are checked by the engine, like for gRPC requests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dbus_next.signature import Variant

from rustaid.core.engine import GenerationRequest
from rustaid.core.router import SelectionCriteria
from rustaid.core.scheduler import Priority
from rustaid.errors import InvalidArgument
from rustaid.providers import GenerationParams

INTEGER_TYPES = frozenset("ynqiuxt")


@dataclass(frozen=True)
class Option:
    kind: str  # "int", "float", "bool", "str", "strs"
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

_EXPECTED = {
    "int": "an integer (D-Bus type y, n, q, i, u, x or t)",
    "float": "a number (D-Bus type d, or an integer type)",
    "bool": "a boolean (D-Bus type b)",
    "str": "a string (D-Bus type s)",
    "strs": "an array of strings (D-Bus type as)",
}

_PARAMS = ("max_tokens", "temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed")
_SELECTION = ("prefer_local", "prefer_speed", "prefer_quality", "battery_sensitive")
_PRIORITIES = {"interactive": Priority.INTERACTIVE, "background": Priority.BACKGROUND}


def _value(name: str, variant: Any) -> Any:
    option = OPTIONS.get(name)
    if option is None:
        raise InvalidArgument(
            f"unknown option {name!r}; known options: {', '.join(sorted(OPTIONS))}",
            field=f"options.{name}",
        )
    signature = variant.signature if isinstance(variant, Variant) else ""
    ok = {
        "int": signature in INTEGER_TYPES,
        "float": signature == "d" or signature in INTEGER_TYPES,
        "bool": signature == "b",
        "str": signature == "s",
        "strs": signature == "as",
    }[option.kind]
    if not ok:
        raise InvalidArgument(
            f"option {name!r} must be {_EXPECTED[option.kind]}, not D-Bus type {signature!r}",
            field=f"options.{name}",
        )
    value = variant.value
    return float(value) if option.kind == "float" else value


def generation_request(prompt: str, options: Mapping[str, Any]) -> GenerationRequest:
    """Build the engine's request; raises InvalidArgument for an unknown option, a value
    of the wrong type or an unknown priority."""
    values = {name: _value(name, v) for name, v in options.items()}
    priority = values.get("priority", "interactive")
    if priority not in _PRIORITIES:
        raise InvalidArgument(
            f"option 'priority' must be 'interactive' or 'background' (got {priority!r})",
            field="options.priority",
        )
    params = GenerationParams(
        **{k: values[k] for k in _PARAMS if k in values},
        stop=tuple(values.get("stop", ())),
        grammar=values.get("grammar", ""),
        json_schema=values.get("json_schema", ""),
    )
    selection = SelectionCriteria(
        **{k: values[k] for k in _SELECTION if k in values},
        max_latency_ms=values.get("max_latency_ms", 0),
        required_tags=tuple(values.get("required_tags", ())),
    )
    return GenerationRequest(
        model_id=values.get("model", ""),
        prompt=prompt,
        params=params,
        selection=selection,
        priority=_PRIORITIES[priority],
    )

"""JSON Schema helpers: checking schemas, validating arguments (every violation listed)
and turning schemas into GBNF grammars that constrain a model's output.

jsonschema and llama_cpp are imported on first use.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from rustaid.errors import InvalidArgument

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

# A tool's name: what OpenAI-style clients accept, and safe inside a grammar literal.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# Strings without maxLength get this bound in the grammar (not in validation), so that
# even a model that never chooses to close a string ends it.
GRAMMAR_MAX_STRING = 2000
# Larger bounds make llama.cpp's grammar engine slow to build.
GRAMMAR_MAX_REPEAT = 20000
# Integer ranges up to this size are enumerated in the grammar.
GRAMMAR_MAX_ENUM = 256

# Violations listed in an error message; the rest are counted.
MAX_LISTED = 20


def check_name(name: str, field: str) -> None:
    if not NAME_PATTERN.match(name):
        raise InvalidArgument(
            f"{field} {name!r} is not a valid tool name: use 1 to 64 letters, digits, '_' or '-'",
            field=field,
        )


def load_json_object(text: str, field: str, what: str) -> dict[str, Any]:
    """Parse JSON text that must hold an object; InvalidArgument names `field`."""
    try:
        value = json.loads(text)
    except ValueError as e:  # JSONDecodeError, or an integer too long to convert
        why = str(e).split("; use sys.", 1)[0]  # Python's advice is not for the client
        raise InvalidArgument(f"{field} is not valid JSON: {why}", field=field) from e
    except RecursionError as e:
        raise InvalidArgument(f"{field} is nested too deeply", field=field) from e
    if not isinstance(value, dict):
        raise InvalidArgument(
            f"{field} must be a JSON object ({what}), not {type(value).__name__}", field=field
        )
    return value


@functools.lru_cache(maxsize=256)
def _validator(schema_json: str) -> Validator:
    from jsonschema.validators import validator_for

    schema = json.loads(schema_json)
    cls = validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _key(schema: Mapping[str, Any]) -> str:
    return json.dumps(schema, sort_keys=True)


def schema_problem(schema: Mapping[str, Any], *, object_only: bool) -> str:
    """Why `schema` is not a usable JSON Schema ("" when it is)."""
    if not isinstance(schema, Mapping):
        return f"a schema must be a JSON object, not {type(schema).__name__}"
    if object_only and schema.get("type", "object") != "object":
        kind = schema.get("type")
        return f'the parameters schema must describe an object ("type": "object"), not {kind!r}'
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    meta = schema.get("$schema")
    if meta is not None and (
        # An explicit default: no DeprecationWarning (an error in future jsonschema).
        not isinstance(meta, str) or validator_for(schema, default=cast(Any, None)) is None
    ):
        return (
            f'"$schema" {meta!r} is not a JSON Schema draft this daemon knows: omit it, or '
            'name one, e.g. "https://json-schema.org/draft/2020-12/schema"'
        )
    try:
        validator_for(schema).check_schema(dict(schema))
    except SchemaError as e:
        return f"invalid JSON Schema: {e.message} (at {_path(e.absolute_path)})"
    try:
        _validator(_key(schema))
    except Exception as e:  # unresolvable references and the like
        return f"invalid JSON Schema: {e}"
    return ""


def _path(parts: Any) -> str:
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def validator(schema: Mapping[str, Any]) -> Validator:
    """A compiled validator for a schema that schema_problem() accepted."""
    return _validator(_key(schema))


def violations(schema: Mapping[str, Any] | Validator, instance: Any) -> list[str]:
    """Every way `instance` violates `schema` (or a compiled validator), as
    "$.path: message", in path order."""
    checker = validator(schema) if isinstance(schema, Mapping) else schema
    errors = sorted(
        checker.iter_errors(instance),
        key=lambda e: (list(map(str, e.absolute_path)), e.message),
    )
    return [f"{_path(e.absolute_path)}: {e.message}" for e in errors]


def describe(found: list[str]) -> str:
    listed = "; ".join(found[:MAX_LISTED])
    more = len(found) - MAX_LISTED
    return listed + (f"; and {more} more" if more > 0 else "")


# -- grammars ---------------------------------------------------------------------------


def relocate(schema: Mapping[str, Any], prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Copy `schema` so it can be embedded in a larger one: its definitions move to the
    returned dict under prefixed names, and its references are rewritten to match."""
    body = copy.deepcopy(dict(schema))
    defs: dict[str, Any] = {}
    for key in ("$defs", "definitions"):
        for name, sub in (body.pop(key, None) or {}).items():
            defs[f"{prefix}{name}"] = sub
    uses_root = False

    def fix(node: Any) -> Any:
        nonlocal uses_root
        if isinstance(node, list):
            return [fix(n) for n in node]
        if not isinstance(node, dict):
            return node
        out = {k: fix(v) for k, v in node.items()}
        ref = out.get("$ref")
        if isinstance(ref, str):
            if ref == "#":
                uses_root = True
                out["$ref"] = f"#/$defs/{prefix}root"
            else:
                m = re.fullmatch(r"#/(?:\$defs|definitions)/([^/]+)", ref)
                if m is None:
                    raise InvalidArgument(
                        f"unsupported $ref {ref!r}: only references to #/$defs/NAME "
                        "(or #/definitions/NAME) of the same schema work in a grammar"
                    )
                out["$ref"] = f"#/$defs/{prefix}{m.group(1)}"
        return out

    body = fix(body)
    defs = {k: fix(v) for k, v in defs.items()}
    if uses_root:
        defs[f"{prefix}root"] = body
    return body, defs


def bounded(schema: Any) -> Any:
    """A copy of `schema` in which every free-form string has a maximum length."""
    if isinstance(schema, list):
        return [bounded(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: bounded(v) if k != "const" and k != "enum" else v for k, v in schema.items()}
    if out.get("type") == "integer" and "enum" not in out and "const" not in out:
        low, high = _integer_range(out)
        if low is not None and high is not None and 0 <= high - low <= GRAMMAR_MAX_ENUM:
            # A small range becomes an enumeration: the grammar then enforces it.
            return {"enum": list(range(low, high + 1))} if high >= low else out
    if (
        out.get("type") == "string"
        and "pattern" not in out
        and "format" not in out
        and "enum" not in out
        and "const" not in out
    ):
        out["maxLength"] = min(int(out.get("maxLength", GRAMMAR_MAX_STRING)), GRAMMAR_MAX_REPEAT)
    return out


def _integer_range(schema: Mapping[str, Any]) -> tuple[int | None, int | None]:
    def bound(key: str, exclusive: str, step: int) -> int | None:
        value = schema.get(key)
        ex = schema.get(exclusive)
        if isinstance(ex, int | float) and not isinstance(ex, bool):
            return math.floor(ex) + 1 if step > 0 else math.ceil(ex) - 1
        if isinstance(value, int | float) and not isinstance(value, bool):
            return math.ceil(value) if step > 0 else math.floor(value)
        return None

    return bound("minimum", "exclusiveMinimum", 1), bound("maximum", "exclusiveMaximum", -1)


_NESTED_REPEAT = re.compile(r"\((?P<item>[\w-]+|\[[^\]]*\])(?: \((?P=item))*\)\?(?:\)\?)*")
_EXPONENT = "([eE] [-+]? integral-part)? "


def _collapse(match: re.Match[str]) -> str:
    text = match.group(0)
    item = match.group("item")
    opens = text.count("(")
    if text.count(")?") != opens:
        return text
    return f"{item}{{0,{opens}}}"


def schema_to_gbnf(schema: Mapping[str, Any]) -> str:
    """A GBNF grammar (root rule `root`) for JSON that satisfies `schema`, as far as
    llama-cpp-python's converter can express it. Numbers are written without exponent
    and strings are bounded, so that the output always ends."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        text = str(json_schema_to_gbnf(json.dumps(bounded(dict(schema)))))
    except InvalidArgument:
        raise
    except Exception as e:  # the converter raises assertions, KeyErrors...
        raise InvalidArgument(f"the schema cannot be turned into a grammar: {e}") from e
    lines = []
    for line in text.splitlines():
        if line.startswith("number ::="):
            line = line.replace(_EXPONENT, "")
        elif line.startswith("char ::="):  # no raw control characters: strict JSON
            line = line.replace('[^"\\\\]', '[^"\\\\\\x00-\\x1F]', 1)
        # "(x (x (x)?)?)?" -> "x{0,3}": llama.cpp parses deep nesting recursively.
        lines.append(_NESTED_REPEAT.sub(_collapse, line))
    return "\n".join(lines) + "\n"

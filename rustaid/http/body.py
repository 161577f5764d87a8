"""Reading a JSON request body field by field: each wrong type or value is an
InvalidArgument naming the field, as the gRPC converters do for protobuf fields."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from rustaid.errors import InvalidArgument


def parse_json_object(data: bytes) -> Body:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError too
        why = str(e).split("; use sys.", 1)[0]
        raise InvalidArgument(
            f"the request body is not valid JSON ({why}): send a JSON object with "
            "Content-Type: application/json",
            field="body",
        ) from e
    if not isinstance(value, dict):
        raise InvalidArgument(
            f"the request body must be a JSON object, not {_kind(value)}", field="body"
        )
    return Body(value)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


class Body:
    """A JSON object and the path of its fields in error messages ("messages[0].role")."""

    def __init__(self, data: Mapping[str, Any], prefix: str = "") -> None:
        self.data = data
        self.prefix = prefix

    def where(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def bad(self, key: str, why: str) -> InvalidArgument:
        return InvalidArgument(f"{self.where(key)} {why}", field=self.where(key))

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def raw(self, key: str) -> Any:
        return self.data.get(key)

    def text(self, key: str, default: str = "") -> str:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.bad(key, f"must be a string, not {_kind(value)}")
        return value

    def flag(self, key: str, default: bool = False) -> bool:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.bad(key, f"must be true or false, not {_kind(value)}")
        return value

    def integer(self, key: str) -> int | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.bad(key, f"must be an integer, not {_kind(value)}")
        if abs(value) >= 1 << 63:
            raise self.bad(key, "is out of range")
        return value

    def number(self, key: str) -> float | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.bad(key, f"must be a number, not {_kind(value)}")
        result = float(value)
        if not math.isfinite(result):
            raise self.bad(key, "must be a finite number")
        return result

    def object(self, key: str) -> Body | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.bad(key, f"must be a JSON object, not {_kind(value)}")
        return Body(value, f"{self.where(key)}.")

    def array(self, key: str) -> list[Any] | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, list):
            raise self.bad(key, f"must be an array, not {_kind(value)}")
        return value

    def objects(self, key: str) -> list[Body]:
        """An array of objects (empty when absent)."""
        items = self.array(key) or []
        out = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise self.bad(f"{key}[{i}]", f"must be a JSON object, not {_kind(item)}")
            out.append(Body(item, f"{self.where(key)}[{i}]."))
        return out

    def strings(self, key: str) -> tuple[str, ...]:
        """A string or an array of strings (OpenAI's `stop`, `input`)."""
        value = self.data.get(key)
        if value is None:
            return ()
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise self.bad(key, f"must be a string or an array of strings, not {_kind(value)}")

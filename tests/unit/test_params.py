"""validate_params, the range checks every engine shares: each bad value is refused with
the field to fix and what is allowed; good values pass. Pure, milliseconds each."""

from __future__ import annotations

import math
from typing import Any

import pytest

from rustaid.core.request_checks import MAX_STOP_LENGTH, MAX_STOP_SEQUENCES, validate_params
from rustaid.errors import InvalidArgument
from rustaid.providers import GenerationParams

LIMIT = 4096


@pytest.mark.parametrize(
    ("params", "field", "message"),
    [
        ({"max_tokens": 0}, "max_tokens", "must be between 1 and 4096 (got 0)"),
        ({"max_tokens": LIMIT + 1}, "max_tokens", "must be between 1 and 4096 (got 4097)"),
        ({"temperature": -0.1}, "temperature", "must be >= 0 (got -0.1)"),
        ({"temperature": math.nan}, "temperature", "must be a finite number (got nan)"),
        ({"top_p": 0.0}, "top_p", "must be in (0, 1] (got 0.0)"),
        ({"top_p": 1.5}, "top_p", "must be in (0, 1] (got 1.5)"),
        ({"top_p": math.inf}, "top_p", "must be a finite number (got inf)"),
        ({"min_p": -0.5}, "min_p", "must be in [0, 1] (got -0.5)"),
        ({"min_p": 2.0}, "min_p", "must be in [0, 1] (got 2.0)"),
        ({"top_k": -1}, "top_k", "must be >= 0 (got -1)"),
        ({"repeat_penalty": 0.0}, "repeat_penalty", "must be > 0 (got 0.0)"),
        ({"repeat_penalty": -math.inf}, "repeat_penalty", "must be a finite number (got -inf)"),
        ({"stop": ("x",) * (MAX_STOP_SEQUENCES + 1)}, "stop",
         f"has {MAX_STOP_SEQUENCES + 1} sequences; at most {MAX_STOP_SEQUENCES} allowed"),
        ({"stop": ("",)}, "stop", f"sequences must be 1..{MAX_STOP_LENGTH} characters"),
        ({"stop": ("x" * (MAX_STOP_LENGTH + 1),)}, "stop",
         f"sequences must be 1..{MAX_STOP_LENGTH} characters"),
        ({"grammar": 'root ::= "a"', "json_schema": "{}"}, "grammar",
         "and params.json_schema are exclusive: give one of them"),
    ],
)  # fmt: skip
def test_bad_values_name_the_field_and_the_range(
    params: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_params(GenerationParams(**params), LIMIT)
    assert info.value.field == f"params.{field}"
    assert info.value.message == f"params.{field} {message}"


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"max_tokens": 1},
        {"max_tokens": LIMIT},
        {"temperature": 0.0, "top_p": 1.0, "min_p": 0.0, "top_k": 0, "repeat_penalty": 1.0},
        {"min_p": 1.0, "top_p": 1e-6, "temperature": 2.5},
        {"stop": ("x" * MAX_STOP_LENGTH,) * MAX_STOP_SEQUENCES},
        {"grammar": 'root ::= "a"'},
        {"json_schema": "{}"},
    ],
)
def test_good_values_pass(params: dict[str, Any]) -> None:
    validate_params(GenerationParams(**params), LIMIT)

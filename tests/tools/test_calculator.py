"""The calculator's parser: arithmetic right, everything else refused with a reason."""

from __future__ import annotations

import math

import pytest

from rustaid.providers import ToolError
from rustaid.tools.calculator import evaluate


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("2 ^ 3 ^ 2", 512),  # right-associative
        ("2 ** 10", 1024),
        ("-2 ^ 2", -4),  # the power binds tighter than the sign
        ("(-2) ^ 2", 4),
        ("7 / 2", 3.5),
        ("6 / 3", 2),
        ("7 // 2", 3),
        ("7 % 4", 3),
        ("5!", 120),
        ("3!!", 720),
        ("2 ^ 100", 2**100),  # exact integers
        ("sqrt(16) + abs(-3)", 7.0),
        ("max(1, 5, 3) - min(4, 2)", 3),
        ("log(8, 2)", 3.0),
        ("round(3.14159, 2)", 3.14),
        ("1.5e3 + .5", 1500.5),
        ("2 \u00d7 3 \u2212 1", 5),
        ("pi", math.pi),
    ],
)
def test_evaluates(expression: str, value: float) -> None:
    result = evaluate(expression)
    assert result == pytest.approx(value)
    assert type(result) is type(value)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("", "empty"),
        ("1 +", "ends too early"),
        ("1 2", "unexpected '2'"),
        ("(1 + 2", "ends too early"),
        ("(1 + 2 3", "expected ')'"),
        ("1 / 0", "division by zero"),
        ("1 % 0", "division by zero"),
        ("0 ^ -1", "division by zero"),
        ("sqrt(-1)", "sqrt"),
        ("(-8) ^ 0.5", "no real result"),
        ("10 ^ 10 ^ 10", "too large"),
        ("9 ^ 9 ^ 9", "too large"),
        ("1e308 * 10", "too large"),
        ("1001!", "too large"),
        ("2.5!", "non-negative integer"),
        ("__import__(1)", "unknown name"),
        ("'os'", "unexpected character"),
        ("open", "unknown name"),
        ("1; 2", "unexpected character ';'"),
        ("sqrt(1, 2)", "takes 1 argument"),
        ("(" * 100 + "1" + ")" * 100, "nested"),
        ("1" * 1001, "longer than"),
    ],
)
def test_refuses_with_a_reason(expression: str, message: str) -> None:
    with pytest.raises(ToolError, match="(?i)" + message.replace("(", r"\(").replace(")", r"\)")):
        evaluate(expression)

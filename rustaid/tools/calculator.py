"""The `calculator` tool: arithmetic with a small recursive-descent parser (no eval).

    expression := sum
    sum        := product (("+" | "-") product)*
    product    := unary (("*" | "/" | "//" | "%") unary)*
    unary      := ("+" | "-") unary | power
    power      := postfix (("^" | "**") unary)?        right-associative; -2^2 = -4
    postfix    := atom "!"*                              factorial
    atom       := NUMBER | CONSTANT | FUNCTION "(" sum ("," sum)* ")" | "(" sum ")"

Integers stay exact (2^100 is exact) up to MAX_INT_BITS; "/" gives an integer when the
division is exact. Everything is bounded: expression length, nesting depth, size of
numbers, factorial argument.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from rustaid.providers import Tool, ToolError

Number = int | float

MAX_LENGTH = 1000
MAX_DEPTH = 64
MAX_INT_BITS = 4096
MAX_FACTORIAL = 1000

_TOKEN = re.compile(
    r"\s*(?:(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<name>[A-Za-z_]\w*)"
    r"|(?P<op>\*\*|//|[-+*/%^(),!]))"
)

CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _log(x: Number, base: Number = math.e) -> float:
    return math.log(x, base)


def _round(x: Number, digits: Number = 0) -> Number:
    if not isinstance(digits, int):
        raise ToolError("round(x, digits): digits must be an integer")
    return round(x, digits) if digits else round(x)


# name -> (function, min args, max args)
FUNCTIONS: dict[str, tuple[Callable[..., Number], int, int]] = {
    "abs": (abs, 1, 1),
    "sqrt": (math.sqrt, 1, 1),
    "cbrt": (lambda x: math.copysign(abs(x) ** (1 / 3), x), 1, 1),
    "exp": (math.exp, 1, 1),
    "ln": (math.log, 1, 1),
    "log": (_log, 1, 2),
    "log10": (math.log10, 1, 1),
    "log2": (math.log2, 1, 1),
    "sin": (math.sin, 1, 1),
    "cos": (math.cos, 1, 1),
    "tan": (math.tan, 1, 1),
    "asin": (math.asin, 1, 1),
    "acos": (math.acos, 1, 1),
    "atan": (math.atan, 1, 1),
    "atan2": (math.atan2, 2, 2),
    "sinh": (math.sinh, 1, 1),
    "cosh": (math.cosh, 1, 1),
    "tanh": (math.tanh, 1, 1),
    "degrees": (math.degrees, 1, 1),
    "radians": (math.radians, 1, 1),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
    "round": (_round, 1, 2),
    "min": (min, 1, 32),
    "max": (max, 1, 32),
    "hypot": (math.hypot, 1, 32),
}


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = self._tokenize(text)
        self.pos = 0
        self.depth = 0

    @staticmethod
    def _tokenize(text: str) -> list[tuple[str, str]]:
        text = text.replace("\u00d7", "*").replace("\u00f7", "/").replace("\u2212", "-")
        tokens = []
        pos = 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            m = _TOKEN.match(text, pos)
            if m is None:
                rest = text[pos:].lstrip()
                at = len(text) - len(rest)
                raise ToolError(f"unexpected character {rest[:1]!r} at position {at}")
            kind = m.lastgroup
            assert kind is not None
            tokens.append((kind, m.group(kind)))
            pos = m.end()
        return tokens

    def peek(self) -> str:
        return self.tokens[self.pos][1] if self.pos < len(self.tokens) else ""

    def take(self) -> tuple[str, str]:
        if self.pos >= len(self.tokens):
            raise ToolError("the expression ends too early")
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def expect(self, op: str) -> None:
        _, value = self.take()
        if value != op:
            raise ToolError(f"expected {op!r}, found {value!r}")

    def parse(self) -> Number:
        if not self.tokens:
            raise ToolError("the expression is empty")
        value = self.sum()
        if self.pos != len(self.tokens):
            raise ToolError(f"unexpected {self.peek()!r} after a complete expression")
        return value

    def _enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ToolError(f"the expression is nested more than {MAX_DEPTH} levels deep")

    def sum(self) -> Number:
        self._enter()
        value = self.product()
        while self.peek() in ("+", "-"):
            op = self.take()[1]
            right = self.product()
            value = _check(value + right if op == "+" else value - right)
        self.depth -= 1
        return value

    def product(self) -> Number:
        value = self.unary()
        while self.peek() in ("*", "/", "//", "%"):
            op = self.take()[1]
            right = self.unary()
            value = _check(_binary(op, value, right))
        return value

    def unary(self) -> Number:
        if self.peek() in ("+", "-"):
            op = self.take()[1]
            self._enter()
            value = self.unary()
            self.depth -= 1
            return -value if op == "-" else value
        return self.power()

    def power(self) -> Number:
        base = self.postfix()
        if self.peek() in ("^", "**"):
            self.take()
            self._enter()
            exponent = self.unary()
            self.depth -= 1
            return _check(_pow(base, exponent))
        return base

    def postfix(self) -> Number:
        value = self.atom()
        while self.peek() == "!":
            self.take()
            if not isinstance(value, int) or value < 0:
                raise ToolError("factorial (!) needs a non-negative integer")
            if value > MAX_FACTORIAL:
                raise ToolError(f"factorial of a number above {MAX_FACTORIAL} is too large")
            value = math.factorial(value)
        return value

    def atom(self) -> Number:
        kind, value = self.take()
        if kind == "number":
            if any(c in value for c in ".eE"):
                return _check(float(value))
            return _check(int(value))
        if kind == "name":
            name = value.lower()
            if name in CONSTANTS:
                return CONSTANTS[name]
            if name in FUNCTIONS:
                return self.call(name)
            known = ", ".join([*CONSTANTS, *FUNCTIONS])
            raise ToolError(f"unknown name {value!r}; known constants and functions: {known}")
        if value == "(":
            result = self.sum()
            self.expect(")")
            return result
        raise ToolError(f"unexpected {value!r}")

    def call(self, name: str) -> Number:
        fn, lo, hi = FUNCTIONS[name]
        self.expect("(")
        args = [self.sum()]
        while self.peek() == ",":
            self.take()
            args.append(self.sum())
        self.expect(")")
        if not lo <= len(args) <= hi:
            want = str(lo) if lo == hi else f"{lo} to {hi}"
            raise ToolError(f"{name}() takes {want} argument(s), got {len(args)}")
        try:
            return _check(fn(*args))
        except (ValueError, OverflowError) as e:
            raise ToolError(f"{name}{tuple(args)}: {e}") from None


def _binary(op: str, a: Number, b: Number) -> Number:
    if op == "*":
        if (
            isinstance(a, int)
            and isinstance(b, int)
            and a.bit_length() + b.bit_length() > MAX_INT_BITS
        ):
            raise ToolError("the result is too large")
        return a * b
    if b == 0:
        raise ToolError("division by zero")
    if op == "/":
        if isinstance(a, int) and isinstance(b, int) and a % b == 0:
            return a // b
        return a / b
    if op == "//":
        return a // b
    return a % b


def _pow(base: Number, exponent: Number) -> Number:
    if isinstance(base, int) and isinstance(exponent, int) and exponent >= 0:
        if base not in (0, 1, -1) and exponent * max(base.bit_length(), 1) > MAX_INT_BITS:
            raise ToolError("the result is too large")
        exact: int = base**exponent
        return exact
    if base == 0 and exponent < 0:
        raise ToolError("division by zero (0 to a negative power)")
    try:
        result: float | complex = float(base) ** float(exponent)
    except OverflowError:
        raise ToolError("the result is too large") from None
    if isinstance(result, complex):
        raise ToolError("a negative number to a fractional power has no real result")
    return result


def _check(value: Number) -> Number:
    if isinstance(value, float):
        if math.isnan(value):
            raise ToolError("the result is not a number")
        if math.isinf(value):
            raise ToolError("the result is too large")
    elif isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ToolError("the result is too large")
    return value


def evaluate(expression: str) -> Number:
    """The value of an arithmetic expression; ToolError says what is wrong."""
    if len(expression) > MAX_LENGTH:
        raise ToolError(f"the expression is longer than {MAX_LENGTH} characters")
    try:
        return _Parser(expression).parse()
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    except OverflowError:
        raise ToolError("the result is too large") from None


class Calculator(Tool):
    name = "calculator"
    description = (
        "Evaluates an arithmetic expression exactly: + - * / // % ^ (power) ! (factorial), "
        "parentheses, constants pi e tau, functions sqrt abs exp ln log(x[,base]) log10 "
        "log2 sin cos tan asin acos atan atan2 sinh cosh tanh degrees radians floor ceil "
        "round(x[,digits]) min max hypot. Angles are in radians."
    )
    parameters_schema: Mapping[str, Any] = {
        "type": "object",
        "properties": {
            "expression": {
                "type": "string",
                "minLength": 1,
                "maxLength": 500,
                "description": "e.g. (2 + 3) * 4 ^ 2 / sqrt(16)",
            }
        },
        "required": ["expression"],
        "additionalProperties": False,
    }
    result_schema: Mapping[str, Any] = {
        "type": "object",
        "properties": {"result": {"type": "number"}},
        "required": ["result"],
    }
    timeout_s = 2.0

    def run(self, arguments: Mapping[str, Any]) -> Any:
        return {"result": evaluate(arguments["expression"])}

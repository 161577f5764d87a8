"""The `unit_convert` tool: converts between units of the same dimension."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from rustaid.providers import Tool, ToolError

# unit -> (dimension, factor to the dimension's base unit). Temperatures are special.
UNITS: dict[str, tuple[str, float]] = {
    # length (metre)
    "m": ("length", 1.0), "km": ("length", 1e3), "cm": ("length", 1e-2),
    "mm": ("length", 1e-3), "um": ("length", 1e-6), "nm": ("length", 1e-9),
    "mi": ("length", 1609.344), "yd": ("length", 0.9144), "ft": ("length", 0.3048),
    "in": ("length", 0.0254), "nmi": ("length", 1852.0),
    # mass (kilogram)
    "kg": ("mass", 1.0), "g": ("mass", 1e-3), "mg": ("mass", 1e-6), "t": ("mass", 1e3),
    "lb": ("mass", 0.45359237), "oz": ("mass", 0.028349523125), "st": ("mass", 6.35029318),
    # time (second)
    "s": ("time", 1.0), "ms": ("time", 1e-3), "us": ("time", 1e-6), "ns": ("time", 1e-9),
    "min": ("time", 60.0), "h": ("time", 3600.0), "d": ("time", 86400.0),
    "wk": ("time", 604800.0),
    # volume (litre)
    "l": ("volume", 1.0), "ml": ("volume", 1e-3), "m3": ("volume", 1e3),
    "gal": ("volume", 3.785411784), "qt": ("volume", 0.946352946),
    "pt": ("volume", 0.473176473), "cup": ("volume", 0.2365882365),
    "floz": ("volume", 0.0295735295625), "tbsp": ("volume", 0.01478676478125),
    "tsp": ("volume", 0.00492892159375),
    # area (square metre)
    "m2": ("area", 1.0), "km2": ("area", 1e6), "cm2": ("area", 1e-4), "ha": ("area", 1e4),
    "acre": ("area", 4046.8564224), "ft2": ("area", 0.09290304),
    "mi2": ("area", 2589988.110336), "in2": ("area", 0.00064516),
    # speed (metre per second)
    "m/s": ("speed", 1.0), "km/h": ("speed", 1 / 3.6), "mph": ("speed", 0.44704),
    "kn": ("speed", 1852 / 3600), "ft/s": ("speed", 0.3048),
    # data (byte)
    "B": ("data", 1.0), "kB": ("data", 1e3), "MB": ("data", 1e6), "GB": ("data", 1e9),
    "TB": ("data", 1e12), "KiB": ("data", 1024.0), "MiB": ("data", 1024.0**2),
    "GiB": ("data", 1024.0**3), "TiB": ("data", 1024.0**4), "bit": ("data", 0.125),
    "kbit": ("data", 125.0), "Mbit": ("data", 125e3), "Gbit": ("data", 125e6),
    # energy (joule)
    "J": ("energy", 1.0), "kJ": ("energy", 1e3), "cal": ("energy", 4.184),
    "kcal": ("energy", 4184.0), "Wh": ("energy", 3600.0), "kWh": ("energy", 3.6e6),
    "eV": ("energy", 1.602176634e-19), "BTU": ("energy", 1055.05585262),
    # power (watt)
    "W": ("power", 1.0), "mW": ("power", 1e-3), "kW": ("power", 1e3),
    "hp": ("power", 745.69987158227022),
    # pressure (pascal)
    "Pa": ("pressure", 1.0), "hPa": ("pressure", 100.0), "kPa": ("pressure", 1e3),
    "bar": ("pressure", 1e5), "atm": ("pressure", 101325.0),
    "psi": ("pressure", 6894.757293168361), "mmHg": ("pressure", 133.322387415),
    # angle (radian)
    "rad": ("angle", 1.0), "deg": ("angle", math.pi / 180), "turn": ("angle", math.tau),
    # temperature (handled by _to_kelvin / _from_kelvin)
    "C": ("temperature", 1.0), "F": ("temperature", 1.0), "K": ("temperature", 1.0),
}  # fmt: skip


def _to_kelvin(value: float, unit: str) -> float:
    if unit == "C":
        return value + 273.15
    if unit == "F":
        return (value - 32) * 5 / 9 + 273.15
    return value


def _from_kelvin(value: float, unit: str) -> float:
    if unit == "C":
        return value - 273.15
    if unit == "F":
        return (value - 273.15) * 9 / 5 + 32
    return value


def convert(value: float, source: str, target: str) -> tuple[float, str]:
    """`value` in `source` units expressed in `target` units, and the dimension."""
    for unit, field in ((source, "from"), (target, "to")):
        if unit not in UNITS:
            raise ToolError(f"{field}: unknown unit {unit!r}; known: {', '.join(UNITS)}")
    dim, factor_from = UNITS[source]
    dim_to, factor_to = UNITS[target]
    if dim != dim_to:
        raise ToolError(f"cannot convert {dim} ({source}) to {dim_to} ({target})")
    if dim == "temperature":
        kelvin = _to_kelvin(value, source)
        if kelvin < 0:
            raise ToolError(f"{value} {source} is below absolute zero")
        result = _from_kelvin(kelvin, target)
    else:
        result = value * factor_from / factor_to
    if not math.isfinite(result):
        raise ToolError("the result is too large")
    return float(f"{result:.12g}"), dim


class UnitConvert(Tool):
    name = "unit_convert"
    description = (
        "Converts a value between units of the same dimension: length, mass, time, "
        "volume, area, speed, data, energy, power, pressure, angle, temperature (C, F, K)."
    )
    parameters_schema: Mapping[str, Any] = {
        "type": "object",
        "properties": {
            "value": {"type": "number"},
            "from": {"enum": list(UNITS), "description": "unit of value"},
            "to": {"enum": list(UNITS), "description": "unit to convert to"},
        },
        "required": ["value", "from", "to"],
        "additionalProperties": False,
    }
    result_schema: Mapping[str, Any] = {
        "type": "object",
        "properties": {
            "value": {"type": "number"},
            "unit": {"type": "string"},
            "dimension": {"type": "string"},
        },
        "required": ["value", "unit", "dimension"],
    }
    timeout_s = 2.0

    def run(self, arguments: Mapping[str, Any]) -> Any:
        value, dimension = convert(float(arguments["value"]), arguments["from"], arguments["to"])
        return {"value": value, "unit": arguments["to"], "dimension": dimension}

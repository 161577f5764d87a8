from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rustaid.providers import Tool


class UpperTool(Tool):
    name = "upper"
    description = "Upper-cases its 'text' argument"
    parameters_schema: Mapping[str, Any] = {
        "type": "object",
        "properties": {"text": {"type": "string"}},
    }

    def run(self, arguments: Mapping[str, Any]) -> Any:
        return str(arguments.get("text", "")).upper()

"""Every message of the implemented services has its converter in services/convert.py
(the qdrant-client completeness check): a new field or message cannot be forgotten."""

from __future__ import annotations

import re

from rustaid.api.v1 import common_pb2, generate_pb2, models_pb2, plugins_pb2
from rustaid.services import convert

# Request/response wrappers are unpacked by the servicers themselves.
WRAPPER = re.compile(r".*(Request|Response)$")
# Read by servicers field by field (no domain type of their own).
HANDLED_INLINE = {"KeepAlive", "TokenChunk", "QueueStatus"}


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def test_every_message_has_a_converter() -> None:
    missing = []
    for module in (common_pb2, generate_pb2, models_pb2, plugins_pb2):
        for name in module.DESCRIPTOR.message_types_by_name:
            if name in HANDLED_INLINE or (
                WRAPPER.match(name)
                and name != "WatchModelsResponse"
                and name != "SelectModelResponse"
            ):
                continue
            if not any(hasattr(convert, f"{snake(name)}_{d}_pb") for d in ("to", "from")):
                missing.append(name)
    assert not missing, f"add converters to rustaid/services/convert.py for: {missing}"


def test_generation_params_round_trip_keeps_unset_fields_unset() -> None:
    p = convert.generation_params_from_pb(common_pb2.GenerationParams(temperature=0.0, stop=["\n"]))
    assert p.temperature == 0.0  # explicitly greedy, not "default"
    assert p.max_tokens is None and p.top_p is None and p.seed is None
    assert p.stop == ("\n",)

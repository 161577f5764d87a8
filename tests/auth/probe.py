"""Calls the daemon with a real gRPC client and prints one JSON line per call:
{"call": NAME, "code": "OK" | status name, "details": ...}. The tests run it as other
users (setpriv), so the daemon sees their credentials.

    python tests/auth/probe.py ADDRESS CALL...   (CALL: see CALLS)
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rustaid.api.v1 import (
    common_pb2,
    generate_pb2,
    generate_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    plugins_pb2,
    plugins_pb2_grpc,
    resources_pb2,
    resources_pb2_grpc,
)


def _health(channel: grpc.Channel) -> str:
    r = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=20)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(r.status))


def _reflection(channel: grpc.Channel) -> str:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    for response in stub.ServerReflectionInfo(iter([request]), timeout=20):
        return ",".join(s.name for s in response.list_services_response.service)
    return ""


def _list_models(channel: grpc.Channel) -> str:
    r = models_pb2_grpc.ModelsServiceStub(channel).ListModels(
        models_pb2.ListModelsRequest(), timeout=20
    )
    return ",".join(m.id for m in r.models)


def _generate(channel: grpc.Channel) -> str:
    request = generate_pb2.GenerateStreamRequest(
        model_id="tiny",
        prompt="Hello",
        params=common_pb2.GenerationParams(max_tokens=4, temperature=0.0, seed=1),
    )
    stub = generate_pb2_grpc.GenerateServiceStub(channel)
    parts = [r.chunk.text for r in stub.GenerateStream(request, timeout=60) if r.HasField("chunk")]
    return f"{len(parts)} chunks"


def _reset_metrics(channel: grpc.Channel) -> str:
    resources_pb2_grpc.ResourcesServiceStub(channel).ResetMetrics(
        resources_pb2.ResetMetricsRequest(), timeout=20
    )
    return "reset"


def _load_plugin(channel: grpc.Channel) -> str:
    plugins_pb2_grpc.PluginsServiceStub(channel).LoadPlugin(
        plugins_pb2.LoadPluginRequest(id="no-such-plugin"), timeout=20
    )
    return "loaded"


CALLS: dict[str, Callable[[grpc.Channel], str]] = {
    "health": _health,
    "reflection": _reflection,
    "list_models": _list_models,
    "generate": _generate,
    "reset_metrics": _reset_metrics,
    "load_plugin": _load_plugin,
}


def probe(channel: grpc.Channel, names: list[str]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for name in names:
        try:
            results.append({"call": name, "code": "OK", "details": CALLS[name](channel)})
        except grpc.RpcError as e:
            code = e.code() if isinstance(e, grpc.Call) else grpc.StatusCode.UNKNOWN
            details = e.details() if isinstance(e, grpc.Call) else str(e)
            results.append({"call": name, "code": code.name, "details": details})
    return results


def main(argv: list[str]) -> int:
    address, *names = argv
    with grpc.insecure_channel(address) as channel:
        for result in probe(channel, names):
            print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""WatchModels tells why a model was unloaded: asked for, evicted for another model,
or the daemon stopping."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc

from rustaid.api.v1 import models_pb2
from rustaid.testing.daemon import run_daemon
from tests.conftest import Stubs, add_model

UNLOADED = models_pb2.MODEL_EVENT_TYPE_UNLOADED


def test_unloaded_events_carry_their_reason(tmp_path: Path, model_files: dict[str, Path]) -> None:
    for name in ("a", "b"):
        add_model(tmp_path, model_files["tiny"], f"{name}.gguf")
    # Each tiny model needs about 33 MiB of the budget: one fits, not two.
    with run_daemon(tmp_path, env={"RUSTAID_MEMORY_BUDGET_MB": "50"}) as daemon:
        stubs = Stubs(daemon)
        events: list[models_pb2.WatchModelsResponse] = []
        call = stubs.models.WatchModels(models_pb2.WatchModelsRequest())
        done = threading.Event()

        def read() -> None:
            try:
                for e in call:
                    events.append(e)
                    if e.type == UNLOADED and e.model.id == "b":
                        done.set()
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.CANCELLED

        reader = threading.Thread(target=read)
        reader.start()
        stubs.models.LoadModel(models_pb2.LoadModelRequest(id="a"))
        stubs.models.LoadModel(models_pb2.LoadModelRequest(id="b"))  # evicts a
        stubs.models.UnloadModel(models_pb2.UnloadModelRequest(id="b"))
        assert done.wait(10)
        call.cancel()
        reader.join(5)
        stubs.channel.close()
    unloads = [(e.model.id, e.reason) for e in events if e.type == UNLOADED]
    assert unloads == [("a", "evicted"), ("b", "requested")]
    others = [e.reason for e in events if e.type != UNLOADED]
    assert others and set(others) == {""}

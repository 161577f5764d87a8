"""ModelsService: listing, metadata read without loading, load/unload, watch, select."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest

from rustaid.api.v1 import common_pb2, generate_pb2, models_pb2
from tests.conftest import Stubs, add_model
from tests.services.test_generate import error_of, field_violations


def by_id(stubs: Stubs) -> dict[str, models_pb2.Model]:
    return {m.id: m for m in stubs.models.ListModels(models_pb2.ListModelsRequest()).models}


def test_list_reads_gguf_metadata_without_loading(served: Stubs) -> None:
    models = by_id(served)
    assert set(models) == {"tiny", "slow", "truncated"}
    tiny = models["tiny"]
    assert tiny.kind == common_pb2.MODEL_KIND_LLM
    assert tiny.provider == "llama.cpp"
    assert tiny.metadata.architecture == "llama"
    assert tiny.metadata.context_length == 512
    assert tiny.metadata.embedding_length == 64
    assert tiny.metadata.block_count == 2
    assert tiny.metadata.quantization == "F32"
    assert tiny.metadata.vocab_size == 517
    assert tiny.metadata.parameter_count > 100_000
    assert "<|im_start|>" in tiny.metadata.chat_template
    assert tiny.size_bytes == Path(tiny.path).stat().st_size


def test_truncated_file_is_listed_with_an_error(served: Stubs) -> None:
    bad = by_id(served)["truncated"]
    assert bad.state == models_pb2.MODEL_STATE_ERROR
    assert "truncated" in bad.error
    got = served.models.GetModel(models_pb2.GetModelRequest(id="truncated")).model
    assert got.error == bad.error


def test_load_and_unload(served: Stubs) -> None:
    r = served.models.LoadModel(
        models_pb2.LoadModelRequest(id="tiny", context_length=256, threads=1)
    )
    assert r.model.state == models_pb2.MODEL_STATE_LOADED
    assert r.model.context_length == 256
    assert r.model.threads == 1
    assert r.model.parallel >= 1
    assert r.load_ms > 0
    again = served.models.LoadModel(models_pb2.LoadModelRequest(id="tiny"))
    assert again.load_ms == 0  # already loaded: no-op
    loaded = served.models.ListModels(models_pb2.ListModelsRequest(loaded_only=True)).models
    assert "tiny" in [m.id for m in loaded]
    u = served.models.UnloadModel(models_pb2.UnloadModelRequest(id="tiny"))
    assert u.model.state == models_pb2.MODEL_STATE_AVAILABLE
    assert u.model.memory_bytes == 0
    # What it was loaded with is gone with it.
    assert (u.model.context_length, u.model.threads, u.model.parallel) == (0, 0, 0)
    # Generation loads it again on demand.
    g = served.generate.Generate(
        generate_pb2.GenerateRequest(
            model_id="tiny", prompt="hi", params=common_pb2.GenerationParams(max_tokens=2)
        )
    )
    assert g.timings.load_ms > 0


def test_unload_waits_for_the_running_generation(served: Stubs) -> None:
    served.generate.Generate(
        generate_pb2.GenerateRequest(
            model_id="slow", prompt="hi", params=common_pb2.GenerationParams(max_tokens=1)
        )
    )
    stream = served.generate.GenerateStream(
        generate_pb2.GenerateStreamRequest(
            model_id="slow", prompt="hi", params=common_pb2.GenerationParams(max_tokens=60)
        )
    )
    it = iter(stream)
    next(it)
    result: list[models_pb2.UnloadModelResponse] = []
    t = threading.Thread(
        target=lambda: result.append(
            served.models.UnloadModel(models_pb2.UnloadModelRequest(id="slow"))
        )
    )
    t.start()
    rest = list(it)
    t.join(30)
    assert rest[-1].WhichOneof("event") == "done"
    assert rest[-1].done.usage.completion_tokens == 60  # never cut short by the unload
    assert result[0].model.state == models_pb2.MODEL_STATE_AVAILABLE


def test_bad_model_requests(served: Stubs) -> None:
    for call, code, field in (
        (
            lambda: served.models.GetModel(models_pb2.GetModelRequest(id="")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "id",
        ),
        (
            lambda: served.models.GetModel(models_pb2.GetModelRequest(id="nope")),
            grpc.StatusCode.NOT_FOUND,
            None,
        ),
        (
            lambda: served.models.LoadModel(models_pb2.LoadModelRequest(id="nope")),
            grpc.StatusCode.NOT_FOUND,
            None,
        ),
        (
            lambda: served.models.LoadModel(models_pb2.LoadModelRequest(id="")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "id",
        ),
        (
            lambda: served.models.LoadModel(
                models_pb2.LoadModelRequest(id="tiny", context_length=10**6)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "context_length",
        ),
        (
            lambda: served.models.LoadModel(models_pb2.LoadModelRequest(id="truncated")),
            grpc.StatusCode.FAILED_PRECONDITION,
            None,
        ),
        (
            lambda: served.models.UnloadModel(models_pb2.UnloadModelRequest(id="nope")),
            grpc.StatusCode.NOT_FOUND,
            None,
        ),
        (
            lambda: served.models.UnloadModel(models_pb2.UnloadModelRequest()),
            grpc.StatusCode.INVALID_ARGUMENT,
            "id",
        ),
        (
            lambda: served.models.ListModels(models_pb2.ListModelsRequest(kind=42)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "kind",
        ),
        (
            lambda: served.models.SelectModel(
                models_pb2.SelectModelRequest(
                    criteria=common_pb2.SelectionCriteria(required_tags=[""])
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "required_tags",
        ),
        (
            lambda: served.models.SelectModel(
                models_pb2.SelectModelRequest(kind=common_pb2.MODEL_KIND_EMBEDDING)
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            None,
        ),
        (
            lambda: list(served.models.WatchModels(models_pb2.WatchModelsRequest(), timeout=0.3)),
            grpc.StatusCode.DEADLINE_EXCEEDED,
            None,
        ),
    ):
        err = error_of(call)
        assert err.code() == code, err.details()
        if field:
            assert field_violations(err) == [field]


def test_select_model_explains_the_choice(served: Stubs) -> None:
    r = served.models.SelectModel(
        models_pb2.SelectModelRequest(criteria=common_pb2.SelectionCriteria(prefer_speed=True))
    )
    assert r.model_id in ("tiny", "slow")
    by = {c.model_id: c for c in r.candidates}
    assert by["truncated"].excluded
    assert "truncated" in by["truncated"].reasons[0]
    assert not by[r.model_id].excluded
    assert by[r.model_id].score == max(c.score for c in r.candidates if not c.excluded)
    none = error_of(
        lambda: served.models.SelectModel(
            models_pb2.SelectModelRequest(
                criteria=common_pb2.SelectionCriteria(required_tags=["vision"])
            )
        )
    )
    assert none.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "vision" in none.details()


@pytest.mark.usefixtures("served")
def test_watch_streams_load_unload_and_folder_changes(
    served: Stubs, model_files: dict[str, Path]
) -> None:
    events: list[models_pb2.WatchModelsResponse] = []
    call = served.models.WatchModels(models_pb2.WatchModelsRequest(include_existing=True))
    seen = threading.Event()

    def read() -> None:
        try:
            for e in call:
                events.append(e)
                if e.type == models_pb2.MODEL_EVENT_TYPE_REMOVED:
                    seen.set()
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.CANCELLED

    t = threading.Thread(target=read)
    t.start()
    served.models.UnloadModel(models_pb2.UnloadModelRequest(id="tiny"))
    served.models.LoadModel(models_pb2.LoadModelRequest(id="tiny"))
    served.models.UnloadModel(models_pb2.UnloadModelRequest(id="tiny"))
    # A new file appears and disappears; SIGHUP asks the daemon to rescan.
    import signal
    import time

    new = add_model(served.daemon.data_dir, model_files["tiny"], "extra.gguf")
    served.daemon.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "extra" not in {e.model.id for e in events} and time.monotonic() < deadline:
        time.sleep(0.05)
    new.unlink()
    served.daemon.proc.send_signal(signal.SIGHUP)
    assert seen.wait(10)
    call.cancel()
    t.join(5)
    kinds = [(models_pb2.ModelEventType.Name(e.type), e.model.id) for e in events]
    assert ("MODEL_EVENT_TYPE_ADDED", "tiny") in kinds  # include_existing
    tiny_events = [k for k, model_id in kinds if model_id == "tiny"]
    assert tiny_events[-2:] == ["MODEL_EVENT_TYPE_LOADED", "MODEL_EVENT_TYPE_UNLOADED"]
    assert ("MODEL_EVENT_TYPE_ADDED", "extra") in kinds
    assert ("MODEL_EVENT_TYPE_REMOVED", "extra") in kinds


def test_load_with_other_settings_reloads(served: Stubs) -> None:
    served.models.LoadModel(models_pb2.LoadModelRequest(id="tiny", context_length=256))
    r = served.models.LoadModel(models_pb2.LoadModelRequest(id="tiny", context_length=512))
    assert r.model.context_length == 512
    assert r.load_ms > 0
    never = served.models.GetModel(models_pb2.GetModelRequest(id="truncated")).model
    assert not never.HasField("last_used_time")  # never used: unset, not 1970

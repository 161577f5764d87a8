"""The models folder is watched: files appear, change and vanish without a restart, and a
file is served only once it is complete."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from rustaid.api.v1 import common_pb2, generate_pb2, models_pb2
from rustaid.testing.daemon import run_daemon
from tests.conftest import Stubs
from tests.helpers import listed, wait_until


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Stubs]:
    with run_daemon(tmp_path) as d:
        stubs = Stubs(d)
        yield stubs
        stubs.channel.close()


def test_new_file_is_listed_within_a_second_and_removal_too(
    daemon: Stubs, model_files: dict[str, Path]
) -> None:
    dst = daemon.daemon.data_dir / "models" / "fresh.gguf"
    tmp = dst.with_suffix(".part")
    tmp.write_bytes(model_files["tiny"].read_bytes())
    t0 = time.monotonic()
    tmp.rename(dst)
    wait_until(lambda: "fresh" in listed(daemon), timeout=3)
    assert time.monotonic() - t0 < 1.5  # target 1 s; slack for a loaded CI machine
    r = daemon.generate.Generate(
        generate_pb2.GenerateRequest(
            model_id="fresh", prompt="hi", params=common_pb2.GenerationParams(max_tokens=2)
        )
    )
    assert r.usage.completion_tokens == 2
    dst.unlink()
    wait_until(lambda: "fresh" not in listed(daemon), timeout=3)


def test_slow_copy_is_never_served_half_written(
    daemon: Stubs, model_files: dict[str, Path]
) -> None:
    data = model_files["tiny"].read_bytes()
    dst = daemon.daemon.data_dir / "models" / "slowcopy.gguf"
    seen_while_copying: list[str] = []
    errors: list[grpc.StatusCode] = []
    chunks = [data[i : i + len(data) // 8] for i in range(0, len(data), len(data) // 8)]
    with dst.open("wb") as f:
        for chunk in chunks[:-1]:
            f.write(chunk)
            f.flush()
            time.sleep(0.15)  # long enough for the watcher to look at every stage
            seen_while_copying += [m for m in listed(daemon) if m == "slowcopy"]
            try:
                daemon.generate.Generate(
                    generate_pb2.GenerateRequest(model_id="slowcopy", prompt="x")
                )
            except grpc.RpcError as e:
                errors.append(e.code())
        f.write(chunks[-1])
    assert not seen_while_copying
    assert set(errors) == {grpc.StatusCode.NOT_FOUND}
    wait_until(lambda: "slowcopy" in listed(daemon), timeout=3)
    assert listed(daemon)["slowcopy"].state == models_pb2.MODEL_STATE_AVAILABLE


def test_sha256_sidecar_is_checked(daemon: Stubs, model_files: dict[str, Path]) -> None:
    models = daemon.daemon.data_dir / "models"
    data = model_files["tiny"].read_bytes()
    good = models / "signed.gguf"
    (models / "signed.gguf.sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  signed.gguf\n")
    good.write_bytes(data)
    bad = models / "tampered.gguf"
    (models / "tampered.sha256").write_text(hashlib.sha256(b"something else").hexdigest())
    bad.write_bytes(data)
    old = time.time() - 3600  # not a file being copied: a finished, wrong one
    os.utime(bad, (old, old))
    wait_until(lambda: {"signed", "tampered"} <= set(listed(daemon)), timeout=5)
    models_now = listed(daemon)
    assert models_now["signed"].state == models_pb2.MODEL_STATE_AVAILABLE
    assert models_now["tampered"].state == models_pb2.MODEL_STATE_ERROR
    assert "does not match tampered.sha256" in models_now["tampered"].error


def test_watch_models_streams_folder_events(daemon: Stubs, model_files: dict[str, Path]) -> None:
    events: list[tuple[int, str]] = []
    call = daemon.models.WatchModels(models_pb2.WatchModelsRequest())

    def read() -> None:
        try:
            for e in call:
                events.append((e.type, e.model.id))
        except grpc.RpcError:
            pass

    t = threading.Thread(target=read)
    t.start()
    time.sleep(0.2)
    path = daemon.daemon.data_dir / "models" / "w.gguf"
    path.write_bytes(model_files["tiny"].read_bytes())
    wait_until(lambda: (models_pb2.MODEL_EVENT_TYPE_ADDED, "w") in events)
    path.unlink()
    wait_until(lambda: (models_pb2.MODEL_EVENT_TYPE_REMOVED, "w") in events)
    call.cancel()
    t.join(5)

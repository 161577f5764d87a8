"""The daemon as a process: sd_notify, signals, socket permissions, health, reflection."""

from __future__ import annotations

import signal
import socket
import stat
import threading
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from rustaid.api.v1 import (
    common_pb2,
    generate_pb2,
    generate_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    plugins_pb2,
    plugins_pb2_grpc,
)
from rustaid.testing.daemon import run_daemon
from tests.conftest import add_model


def test_ready_status_watchdog_and_stopping_notifications(tmp_path: Path) -> None:
    with run_daemon(tmp_path, env={"WATCHDOG_USEC": "200000"}) as d:
        ready = next(n for n in d.notifications if "READY=1" in n.split("\n"))
        assert "STATUS=serving 0 models" in ready
        assert f"MAINPID={d.proc.pid}" in ready
        time.sleep(0.5)
        d.read_notifications(timeout=0.2)
        assert sum(n == "WATCHDOG=1" for n in d.notifications) >= 3  # every 100 ms
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for("RELOADING=1")
        assert d.stop() == 0
        d.read_notifications(timeout=0.5)
        assert any("STOPPING=1" in n.split("\n") for n in d.notifications)
    # The socket is gone after a clean stop.
    assert not d.socket_path.exists()


def test_unix_socket_is_owner_and_group_only(tmp_path: Path) -> None:
    with run_daemon(tmp_path) as d:
        mode = stat.S_IMODE(d.socket_path.stat().st_mode)
        assert mode == 0o660


def test_second_daemon_on_the_same_socket_refuses(tmp_path: Path) -> None:
    with run_daemon(tmp_path / "a") as first:
        with run_daemon(tmp_path / "b", wait_ready=False) as _:
            pass
        # run_daemon for b used its own socket; start one explicitly on first's socket.
        import subprocess
        import sys

        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "rustaid",
                "serve",
                "--user",
                "--data-dir",
                str(tmp_path / "c"),
                "--listen",
                first.address,
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == 1
        assert "already listening" in r.stderr
        # ...and the first one still answers.
        channel = grpc.insecure_channel(first.address)
        health = health_pb2_grpc.HealthStub(channel)
        assert (
            health.Check(health_pb2.HealthCheckRequest()).status
            == health_pb2.HealthCheckResponse.SERVING
        )
        channel.close()


def test_stale_socket_from_a_killed_daemon_is_replaced(tmp_path: Path) -> None:
    with run_daemon(tmp_path) as d:
        d.proc.kill()
        d.proc.wait()
        assert d.socket_path.exists()  # SIGKILL leaves it behind
        stale = d.socket_path
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.parent.mkdir(parents=True, exist_ok=True)
    sock.bind(str(stale))  # a dead socket file nobody listens on
    sock.close()
    import subprocess
    import sys

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rustaid",
            "serve",
            "--user",
            "--data-dir",
            str(tmp_path),
            "--listen",
            f"unix://{stale}",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        channel = grpc.insecure_channel(f"unix://{stale}")
        grpc.channel_ready_future(channel).result(timeout=20)
        channel.close()
    finally:
        proc.terminate()
        assert proc.wait(20) == 0


def test_invalid_configuration_exits_with_a_clear_message(tmp_path: Path) -> None:
    import subprocess
    import sys

    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "rustaid.toml").write_text('default_max_tokens = "lots"\n')
    r = subprocess.run(
        [sys.executable, "-m", "rustaid", "serve", "--user", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert "rustaid.toml" in r.stderr and "default_max_tokens" in r.stderr


def test_sigterm_during_a_stream_ends_it_and_exits_cleanly(
    tmp_path: Path, model_files: dict[str, Path]
) -> None:
    add_model(tmp_path, model_files["slow"])
    with run_daemon(tmp_path, env={"RUSTAID_SHUTDOWN_GRACE_S": "1"}) as d:
        channel = grpc.insecure_channel(d.address)
        stub = generate_pb2_grpc.GenerateServiceStub(channel)
        params = common_pb2.GenerationParams(max_tokens=3000)
        call = stub.GenerateStream(
            generate_pb2.GenerateStreamRequest(model_id="slow", prompt="hello", params=params)
        )
        got: list[str] = []
        outcome: list[object] = []

        def read() -> None:
            try:
                for r in call:
                    got.append(r.WhichOneof("event"))
            except grpc.RpcError as e:
                outcome.append(e.code())
            else:
                outcome.append("completed")

        t = threading.Thread(target=read)
        t.start()
        while len(got) < 3:
            time.sleep(0.01)
        t0 = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(20) == 0
        stopped_in = time.monotonic() - t0
        t.join(10)
        channel.close()
        # 3000 tokens take ~30 s; the grace period is 1 s, then the stream is cut.
        assert stopped_in < 8
        assert outcome and outcome[0] in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
        assert "stopped" in d.stderr()


def test_health_and_reflection(tmp_path: Path) -> None:
    with run_daemon(tmp_path) as d:
        channel = grpc.insecure_channel(d.address)
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "rustaid.api.v1.GenerateService", "rustaid.api.v1.ModelsService"):
            r = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert r.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:
            health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND

        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        reply = next(
            refl.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
        )
        names = {s.name for s in reply.list_services_response.service}
        assert {
            f"rustaid.api.v1.{s}Service"
            for s in ("Models", "Generate", "Rag", "Tools", "Plugins", "Resources", "Updates")
        } <= names
        assert "grpc.health.v1.Health" in names

        channel.close()


def test_reflection_v1_and_the_error_detail_types(tmp_path: Path) -> None:
    """grpc.reflection.v1 is served beside v1alpha (same messages, another package), and
    the files it sends carry google.rpc's status and error detail types."""
    with run_daemon(tmp_path) as d:
        channel = grpc.insecure_channel(d.address)
        for service in ("grpc.reflection.v1", "grpc.reflection.v1alpha"):
            info = channel.stream_stream(
                f"/{service}.ServerReflection/ServerReflectionInfo",
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
            listed, service_file, detail = info(
                iter(
                    [
                        reflection_pb2.ServerReflectionRequest(list_services=""),
                        reflection_pb2.ServerReflectionRequest(
                            file_containing_symbol="rustaid.api.v1.GenerateService"
                        ),
                        reflection_pb2.ServerReflectionRequest(
                            file_containing_symbol="google.rpc.BadRequest"
                        ),
                    ]
                )
            )
            names = {s.name for s in listed.list_services_response.service}
            assert {"grpc.reflection.v1.ServerReflection", "rustaid.api.v1.GenerateService"} <= (
                names
            )
            files = {
                descriptor_pb2.FileDescriptorProto.FromString(b).name
                for b in service_file.file_descriptor_response.file_descriptor_proto
            }
            assert {"rustaid/api/v1/generate.proto", "google/rpc/error_details.proto",
                    "google/rpc/status.proto"} <= files  # fmt: skip
            (first, *_) = detail.file_descriptor_response.file_descriptor_proto
            assert descriptor_pb2.FileDescriptorProto.FromString(first).name == (
                "google/rpc/error_details.proto"
            )
        channel.close()


def test_model_file_removed_during_a_stream(tmp_path: Path, model_files: dict[str, Path]) -> None:
    path = add_model(tmp_path, model_files["slow"])
    with run_daemon(tmp_path) as d:
        channel = grpc.insecure_channel(d.address)
        stub = generate_pb2_grpc.GenerateServiceStub(channel)
        params = common_pb2.GenerationParams(max_tokens=80)
        stream = iter(
            stub.GenerateStream(
                generate_pb2.GenerateStreamRequest(model_id="slow", prompt="hi", params=params)
            )
        )
        next(stream)
        path.unlink()
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for("STATUS=reloaded")
        rest = list(stream)  # the running request finishes on the model it started with
        assert rest[-1].done.usage.completion_tokens == 80
        with pytest.raises(grpc.RpcError) as info:
            stub.Generate(generate_pb2.GenerateRequest(model_id="slow", prompt="hi"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        channel.close()
        assert d.stop() == 0


def test_replaced_model_file_serves_new_requests_after_the_running_one(
    tmp_path: Path, model_files: dict[str, Path]
) -> None:
    path = add_model(tmp_path, model_files["slow"], "m.gguf")
    with run_daemon(tmp_path) as d:
        channel = grpc.insecure_channel(d.address)
        stub = generate_pb2_grpc.GenerateServiceStub(channel)
        models = models_pb2_grpc.ModelsServiceStub(channel)
        params = common_pb2.GenerationParams(max_tokens=60)
        stream = iter(
            stub.GenerateStream(
                generate_pb2.GenerateStreamRequest(model_id="m", prompt="hi", params=params)
            )
        )
        next(stream)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(model_files["tiny"].read_bytes())
        tmp.replace(path)  # an atomic replacement, as an updater would do
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for("STATUS=reloaded")
        assert list(stream)[-1].done.usage.completion_tokens == 60
        after = models.GetModel(models_pb2.GetModelRequest(id="m")).model
        assert after.metadata.embedding_length == 64  # the new (tiny) file's metadata
        r = stub.Generate(
            generate_pb2.GenerateRequest(
                model_id="m", prompt="hi", params=common_pb2.GenerationParams(max_tokens=2)
            )
        )
        assert r.timings.load_ms > 0  # loaded fresh from the new file
        channel.close()


def test_unloading_the_engine_plugin_unloads_its_models(
    tmp_path: Path, model_files: dict[str, Path]
) -> None:
    add_model(tmp_path, model_files["tiny"])
    with run_daemon(tmp_path) as d:
        channel = grpc.insecure_channel(d.address)
        stub = generate_pb2_grpc.GenerateServiceStub(channel)
        models = models_pb2_grpc.ModelsServiceStub(channel)
        plugins = plugins_pb2_grpc.PluginsServiceStub(channel)
        models.LoadModel(models_pb2.LoadModelRequest(id="tiny"))
        plugins.UnloadPlugin(plugins_pb2.UnloadPluginRequest(id="llama.cpp"))
        # The model is unloaded with its engine, then the rescan that follows marks it:
        # for a moment in between it is only AVAILABLE.
        deadline = time.monotonic() + 5
        while (
            tiny := models.GetModel(models_pb2.GetModelRequest(id="tiny")).model
        ).state != models_pb2.MODEL_STATE_ERROR:
            assert time.monotonic() < deadline, tiny
            time.sleep(0.05)
        assert "no loaded plugin" in tiny.error
        with pytest.raises(grpc.RpcError) as info:
            stub.Generate(generate_pb2.GenerateRequest(model_id="tiny", prompt="hi"))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        plugins.LoadPlugin(plugins_pb2.LoadPluginRequest(id="llama.cpp"))
        deadline = time.monotonic() + 5
        while models.GetModel(models_pb2.GetModelRequest(id="tiny")).model.error:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        r = stub.Generate(
            generate_pb2.GenerateRequest(
                model_id="tiny", prompt="hi", params=common_pb2.GenerationParams(max_tokens=2)
            )
        )
        assert r.usage.completion_tokens == 2
        channel.close()


def test_sighup_applies_a_new_memory_budget(tmp_path: Path, model_files: dict[str, Path]) -> None:
    add_model(tmp_path, model_files["tiny"])
    config = tmp_path / "config" / "rustaid.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("memory_budget_mb = 1\n")
    with run_daemon(tmp_path) as d, grpc.insecure_channel(d.address) as channel:
        models = models_pb2_grpc.ModelsServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            models.LoadModel(models_pb2.LoadModelRequest(id="tiny"))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "memory budget is 1 MiB" in (refused.value.details() or "")
        config.write_text("memory_budget_mb = 800\n")
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for("STATUS=reloaded")
        loaded = models.LoadModel(models_pb2.LoadModelRequest(id="tiny")).model
        assert loaded.state == models_pb2.MODEL_STATE_LOADED


def test_sighup_names_the_changes_that_need_a_restart(tmp_path: Path) -> None:
    config = tmp_path / "config" / "rustaid.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("max_requests_per_client = 8\n[dbus]\nenabled = true\n")
    with run_daemon(tmp_path) as d:
        config.write_text("max_requests_per_client = 4\n[dbus]\nenabled = false\n")
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for("STATUS=reloaded")
        log = (tmp_path / "daemon.log").read_text()
        assert "these changes apply after a restart (systemctl restart rustaid): [dbus]" in log
        # A change a reload applies says nothing more.
        config.write_text(
            "max_requests_per_client = 2\n[dbus]\nenabled = false\n[power]\npoll_idle_s = 10\n"
        )
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while (log := (tmp_path / "daemon.log").read_text()).count("configuration reloaded") < 2:
            assert time.monotonic() < deadline, log
            time.sleep(0.05)
        assert log.count("apply after a restart") == 1

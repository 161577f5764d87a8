"""The metrics endpoint end to end: real daemons, real gRPC calls, real HTTP scrapes on
loopback, parsed with prometheus_client's own parser."""

from __future__ import annotations

import gzip
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)

from rustaid.addresses import parse_metrics_listen
from rustaid.api.v1 import (
    common_pb2,
    generate_pb2,
    generate_pb2_grpc,
    models_pb2,
    updates_pb2,
    updates_pb2_grpc,
)
from rustaid.config import load_settings
from rustaid.errors import InvalidArgument
from rustaid.testing.daemon import run_daemon
from rustaid.testing.synthetic import write_llama_gguf, write_truncated_copy
from rustaid.updates.journal import History, UpdateRecord
from rustaid.updates.publish import generate_key, load_private_key
from tests.conftest import Stubs, add_model
from tests.observability.scrape import Scrape, eventually, get, metrics_port, scrape
from tests.power.fakesys import FakeDevice
from tests.updates.conftest import Key, Publisher, updates_config, write_config
from tests.updates.server import serve

GENERATE = "rustaid.api.v1.GenerateService"
HANDLED = "rustaid_grpc_server_handled_total"
PROMPT = "The secret prompt of a user"


def params(max_tokens: int) -> common_pb2.GenerationParams:
    return common_pb2.GenerationParams(max_tokens=max_tokens, temperature=0.0, seed=1)


class Served(Stubs):
    port: int


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, model_files: dict[str, Path]
) -> Iterator[Served]:
    """A daemon with metrics on (a free port picked by the kernel), serving `tiny`,
    `slow` and a truncated file; it logs its imports."""
    data_dir = tmp_path_factory.mktemp("metrics")
    add_model(data_dir, model_files["tiny"])
    add_model(data_dir, model_files["slow"])
    tiny = model_files["tiny"].read_bytes()
    truncated = data_dir / "models" / "truncated.gguf"
    truncated.write_bytes(tiny[: len(tiny) // 2])
    old = time.time() - 3600  # an aborted download, not a file being copied
    os.utime(truncated, (old, old))
    env = {
        "RUSTAID_METRICS_LISTEN": "127.0.0.1:0",
        "PYTHONPROFILEIMPORTTIME": "1",
        "RUSTAID_PARALLEL": "1",  # one request at a time: the queue gauges see waiting ones
    }
    with run_daemon(data_dir, env=env) as daemon:
        stubs = Served(daemon)
        stubs.port = metrics_port(daemon)
        yield stubs
        stubs.channel.close()


# -- the setting ------------------------------------------------------------------------------


def test_metrics_listen_accepts_loopback_only() -> None:
    assert parse_metrics_listen("") is None
    assert parse_metrics_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_metrics_listen("127.8.9.1:1") == ("127.8.9.1", 1)
    assert parse_metrics_listen("[::1]:9464") == ("::1", 9464)
    assert parse_metrics_listen("localhost:0") == ("127.0.0.1", 0)
    for value, why in [
        ("0.0.0.0:9464", "loopback"),
        ("192.168.1.20:9464", "loopback"),
        ("[::]:9464", "loopback"),
        ("metrics.example.com:9464", "not a host name"),
        ("127.0.0.1", "HOST:PORT"),
        (":9464", "HOST:PORT"),
        ("127.0.0.1:http", "port number"),
        ("127.0.0.1:70000", "port number"),
        ("::1:9464", "brackets"),
    ]:
        with pytest.raises(InvalidArgument) as e:
            parse_metrics_listen(value)
        assert e.value.field == "metrics_listen"
        assert why in e.value.message and repr(value) in e.value.message, e.value.message


def test_non_loopback_setting_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as e:
        load_settings(data_dir=tmp_path, environ={"RUSTAID_METRICS_LISTEN": "0.0.0.0:9464"})
    assert e.value.field == "metrics_listen"
    assert load_settings(data_dir=tmp_path, environ={}).metrics_listen == ""


def test_daemon_refuses_to_start_with_metrics_on_the_network(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.mkdir(parents=True)
    (config / "rustaid.toml").write_text('metrics_listen = "0.0.0.0:9464"\n')
    with pytest.raises(RuntimeError) as e, run_daemon(tmp_path):
        pass
    message = str(e.value)
    assert "daemon exited with 2" in message
    assert "metrics_listen must be a loopback address" in message
    assert "'0.0.0.0:9464'" in message and "127.0.0.1:9464" in message


def test_daemon_reports_a_port_in_use(tmp_path: Path, served: Served) -> None:
    taken = f"127.0.0.1:{served.port}"
    with (
        pytest.raises(RuntimeError) as e,
        run_daemon(tmp_path, env={"RUSTAID_METRICS_LISTEN": taken}),
    ):
        pass
    assert "daemon exited with 1" in str(e.value)
    assert f"metrics_listen {taken}: cannot listen" in str(e.value)


# -- off by default ---------------------------------------------------------------------------


def test_off_by_default_no_port_and_no_prometheus_client(
    tmp_path: Path, model_files: dict[str, Path], served: Served
) -> None:
    add_model(tmp_path, model_files["tiny"])
    env = {"PYTHONPROFILEIMPORTTIME": "1"}
    with run_daemon(tmp_path, env=env) as daemon, grpc.insecure_channel(daemon.address) as ch:
        generate_pb2_grpc.GenerateServiceStub(ch).Generate(
            generate_pb2.GenerateRequest(model_id="tiny", prompt="hi", params=params(4))
        )
        listening = [
            c
            for c in psutil.Process(daemon.proc.pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        ]
        assert listening == []
        log = daemon.stderr()
    assert "import time:" in log  # the import log is there to look at...
    assert "prometheus_client" not in log  # ...and has no prometheus_client
    assert "Prometheus metrics on" not in log
    # The same check finds it in a daemon with metrics on.
    assert re.search(r"^import time: .*\|\s+prometheus_client$", served.daemon.stderr(), re.M)


# -- HTTP -------------------------------------------------------------------------------------


def test_scrape_parses_and_has_every_family(served: Served) -> None:
    r = get(served.port)
    assert r.status == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    s = Scrape(r.body.decode())
    expected = {
        "rustaid_build_info",
        "rustaid_grpc_server_started",
        "rustaid_grpc_server_handled",
        "rustaid_grpc_server_handling_seconds",
        "rustaid_generation_time_to_first_token_seconds",
        "rustaid_generation_tokens_per_second",
        "rustaid_generation_requests",
        "rustaid_generation_errors",
        "rustaid_generation_prompt_tokens",
        "rustaid_generation_completion_tokens",
        "rustaid_generation_energy_joules",
        "rustaid_generation_energy_measured_tokens",
        "rustaid_generation_energy_joules_per_token",
        "rustaid_models_loaded",
        "rustaid_requests_running",
        "rustaid_model_queue_depth",
        "rustaid_model_memory_bytes",
        "rustaid_registry_models",
        "rustaid_model_loads",
        "rustaid_model_load_failures",
        "rustaid_model_unloads",
        "rustaid_model_evictions",
        "rustaid_update_attempts",
        "rustaid_update_phase",
        "rustaid_device_snapshot_timestamp_seconds",
        "rustaid_device_thermal_state",
        "rustaid_device_temperature_celsius",
        "rustaid_device_throttled",
        "rustaid_device_battery_present",
        "rustaid_device_on_battery",
        "rustaid_device_power_profile",
        "rustaid_device_memory_pressure",
        "rustaid_device_memory_total_bytes",
        "rustaid_device_memory_available_bytes",
        "rustaid_device_memory_stall_ratio",
        "rustaid_device_cpu_usage_ratio",
        "process_resident_memory_bytes",
    }
    assert expected <= set(s.families), expected - set(s.families)
    assert {n for n in s.families if not n.startswith("process_")} <= {
        n for n in s.families if n.startswith("rustaid_")
    }
    assert s.value("rustaid_update_attempts_total", outcome="committed") == 0
    assert s.value("rustaid_update_phase", phase="idle") == 1
    assert s.value("rustaid_registry_models", kind="llm", state="error") == 1  # truncated
    # OpenMetrics on request, valid for its stricter parser too.
    r = get(served.port, headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert "rustaid_build_info" in {f.name for f in openmetrics_families(r.body.decode())}


def test_http_refusals(served: Served) -> None:
    assert get(served.port, "/").status == 404
    assert get(served.port, "/metrics/../secret").status == 404
    assert get(served.port, method="POST").status == 405
    # A browser page reaching the port through a DNS name it controls sends its Host.
    r = get(served.port, headers={"Host": f"attacker.example:{served.port}"})
    assert r.status == 403 and b"this machine only" in r.body
    for host in (f"localhost:{served.port}", f"127.0.0.1:{served.port}", "localhost"):
        assert get(served.port, headers={"Host": host}).status == 200
    r = get(served.port, method="HEAD")
    assert r.status == 200 and r.body == b"" and int(r.headers["content-length"]) > 1000
    r = get(served.port, headers={"Accept-Encoding": "gzip"})
    assert r.headers["content-encoding"] == "gzip"
    assert b"rustaid_build_info" in gzip.decompress(r.body)


def test_a_silent_client_does_not_block_scrapes(served: Served) -> None:
    import socket

    idle = [socket.create_connection(("127.0.0.1", served.port)) for _ in range(3)]
    try:
        assert get(served.port).status == 200
    finally:
        for c in idle:
            c.close()


# -- what the metrics say ---------------------------------------------------------------------


def test_generation_moves_counters_and_histograms(served: Served) -> None:
    before = scrape(served.port)
    reply = served.generate.Generate(
        generate_pb2.GenerateRequest(model_id="tiny", prompt=PROMPT, params=params(8))
    )
    chunks = list(
        served.generate.GenerateStream(
            generate_pb2.GenerateStreamRequest(model_id="tiny", prompt=PROMPT, params=params(8))
        )
    )
    done = next(c.done for c in chunks if c.HasField("done"))
    after = eventually(
        served.port,
        lambda s: (
            s.get(HANDLED, grpc_method="GenerateStream", grpc_code="OK")
            > before.get(HANDLED, grpc_method="GenerateStream", grpc_code="OK")
        ),
    )

    def moved(name: str, **labels: str) -> float:
        return after.get(name, **labels) - before.get(name, **labels)

    for method in ("Generate", "GenerateStream"):
        labels = {"grpc_service": GENERATE, "grpc_method": method}
        assert moved(HANDLED, **labels, grpc_code="OK") == 1
        assert moved("rustaid_grpc_server_started_total", **labels) == 1
        assert moved("rustaid_grpc_server_handling_seconds_count", **labels) == 1
        assert moved("rustaid_grpc_server_handling_seconds_bucket", **labels, le="+Inf") == 1
    tiny = {"model": "tiny"}
    assert moved("rustaid_generation_requests_total", **tiny) == 2
    assert moved("rustaid_generation_prompt_tokens_total", **tiny) == (
        reply.usage.prompt_tokens + done.usage.prompt_tokens
    )
    assert moved("rustaid_generation_completion_tokens_total", **tiny) == (
        reply.usage.completion_tokens + done.usage.completion_tokens
    )
    assert moved("rustaid_generation_time_to_first_token_seconds_count", **tiny) == 2
    ttft = moved("rustaid_generation_time_to_first_token_seconds_sum", **tiny)
    expected = (reply.timings.time_to_first_token_ms + done.timings.time_to_first_token_ms) / 1000
    assert ttft == pytest.approx(expected, rel=1e-6)
    assert moved("rustaid_generation_tokens_per_second_count", **tiny) == 2
    assert after.get("rustaid_generation_tokens_per_second_sum", **tiny) > 0
    assert after.value("rustaid_model_loads_total", **tiny) == 1  # loaded once, reused
    assert after.value("rustaid_models_loaded") >= 1
    assert after.value("rustaid_model_queue_depth", **tiny) == 0
    assert after.get("rustaid_model_memory_bytes", **tiny) > 0
    assert after.value("rustaid_requests_running") == 0
    # Nothing from the request itself leaks into labels.
    assert PROMPT not in after.text
    assert after.label_values("grpc_code") <= {c.name for c in grpc.StatusCode}


def test_error_codes_are_counted_under_their_code(served: Served) -> None:
    before = scrape(served.port)
    cases = [
        (generate_pb2.GenerateRequest(model_id="nope", prompt="hi"), "NOT_FOUND"),
        (generate_pb2.GenerateRequest(model_id="tiny", prompt=""), "INVALID_ARGUMENT"),
        (generate_pb2.GenerateRequest(model_id="truncated", prompt="hi"), "FAILED_PRECONDITION"),
    ]
    for request, code in cases:
        with pytest.raises(grpc.RpcError) as e:
            served.generate.Generate(request)
        assert e.value.code().name == code
    # A method nobody serves: counted, without its made-up name as a label.
    with pytest.raises(grpc.RpcError) as e:
        served.channel.unary_unary("/made.up.Service/Whatever")(b"")
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    # A deadline that passes while the slow model generates.
    with pytest.raises(grpc.RpcError) as e:
        served.generate.Generate(
            generate_pb2.GenerateRequest(model_id="slow", prompt="hi", params=params(2000)),
            timeout=0.5,
        )
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    def moved(s: Scrape, code: str, service: str = GENERATE, method: str = "Generate") -> float:
        labels = {"grpc_service": service, "grpc_method": method, "grpc_code": code}
        return s.get(HANDLED, **labels) - before.get(HANDLED, **labels)

    after = eventually(served.port, lambda s: moved(s, "DEADLINE_EXCEEDED") == 1)
    for code in ("NOT_FOUND", "INVALID_ARGUMENT", "FAILED_PRECONDITION"):
        assert moved(after, code) == 1, code
    assert moved(after, "UNIMPLEMENTED", "unknown", "unknown") == 1
    assert "made.up" not in after.text and "Whatever" not in after.text
    # The daemon's failures count against the model; the client's mistakes do not.
    assert after.get("rustaid_generation_errors_total", model="truncated") == 1
    assert after.get("rustaid_generation_errors_total", model="tiny") == before.get(
        "rustaid_generation_errors_total", model="tiny"
    )


def test_running_and_waiting_requests_while_generating(served: Served) -> None:
    request = generate_pb2.GenerateStreamRequest(model_id="slow", prompt="hi", params=params(2000))
    first = served.generate.GenerateStream(request)
    next(first)  # generating (or loading) now
    second = served.generate.GenerateStream(request)
    try:
        s = eventually(
            served.port, lambda s: s.value("rustaid_model_queue_depth", model="slow") == 1
        )
        assert s.value("rustaid_requests_running") == 1
    finally:
        first.cancel()
        second.cancel()
    s = eventually(served.port, lambda s: s.value("rustaid_requests_running") == 0)
    assert s.value("rustaid_model_queue_depth", model="slow") == 0
    cancelled = {"grpc_method": "GenerateStream", "grpc_code": "CANCELLED"}
    eventually(served.port, lambda s: s.get(HANDLED, **cancelled) >= 2)


def test_model_unloads_are_counted(served: Served) -> None:
    served.generate.Generate(
        generate_pb2.GenerateRequest(model_id="tiny", prompt="hi", params=params(2))
    )
    before = scrape(served.port)
    served.models.UnloadModel(models_pb2.UnloadModelRequest(id="tiny"))
    after = eventually(
        served.port,
        lambda s: (
            s.get("rustaid_model_unloads_total", model="tiny")
            > before.get("rustaid_model_unloads_total", model="tiny")
        ),
    )
    assert (
        after.get("rustaid_model_unloads_total", model="tiny")
        - before.get("rustaid_model_unloads_total", model="tiny")
        == 1
    )
    assert after.value("rustaid_model_queue_depth", model="tiny") is None
    assert after.get("rustaid_model_evictions_total", model="tiny") == 0


def test_evictions_are_counted(tmp_path: Path, model_files: dict[str, Path]) -> None:
    for name in ("a", "b", "c"):
        add_model(tmp_path, model_files["tiny"], f"{name}.gguf")
    # Each tiny model needs about 33 MiB of the budget: two fit, not three.
    env = {"RUSTAID_METRICS_LISTEN": "127.0.0.1:0", "RUSTAID_MEMORY_BUDGET_MB": "80"}
    with run_daemon(tmp_path, env=env) as daemon:
        stubs = Stubs(daemon)
        port = metrics_port(daemon)
        for name in ("a", "b", "a", "c"):  # c needs room: b is the least recently used
            stubs.generate.Generate(
                generate_pb2.GenerateRequest(model_id=name, prompt="hi", params=params(2))
            )
        s = eventually(port, lambda s: s.get("rustaid_model_evictions_total", model="b") == 1)
        stubs.channel.close()
    assert s.get("rustaid_model_evictions_total", model="a") == 0
    assert s.get("rustaid_model_unloads_total", model="b") == 1
    assert {m: s.get("rustaid_model_loads_total", model=m) for m in "abc"} == {
        "a": 1, "b": 1, "c": 1,
    }  # fmt: skip
    assert s.value("rustaid_models_loaded") == 2
    assert s.value("rustaid_model_queue_depth", model="b") is None


def test_device_state_from_a_fake_sysfs_tree(tmp_path: Path, model_files: dict[str, Path]) -> None:
    dev = FakeDevice(tmp_path / "device")
    dev.zone(0, "cpu-thermal", 71.5, [("passive", 75.0), ("critical", 90.0)])
    dev.zone(1, "acpitz", 40.0)
    dev.battery(status="Discharging", capacity=42, power_uw=9_000_000)
    dev.mains(online=False)
    dev.meminfo(total_kib=4_000_000, available_kib=3_000_000)
    dev.psi(some=2.5, full=0.5)
    dev.throttled(0x4)  # throttled now
    data = tmp_path / "data"
    add_model(data, model_files["tiny"])
    (data / "config").mkdir(parents=True)
    (data / "config" / "rustaid.toml").write_text(
        'metrics_listen = "127.0.0.1:0"\n\n[power]\n' + dev.toml() + "dbus = false\n"
    )
    with run_daemon(data) as daemon:
        port = metrics_port(daemon)
        s = scrape(port)
        assert s.value("rustaid_device_temperature_celsius", zone="thermal_zone0",
                       type="cpu-thermal") == 71.5  # fmt: skip
        assert s.value("rustaid_device_temperature_celsius", zone="thermal_zone1") == 40.0
        states = {
            st: s.value("rustaid_device_thermal_state", state=st)
            for st in ("nominal", "fair", "serious", "critical")
        }
        assert sum(states.values()) == 1 and states["nominal"] == 0  # 71.5 C, near passive
        assert s.value("rustaid_device_throttled") == 1
        assert s.value("rustaid_device_battery_present") == 1
        assert s.value("rustaid_device_on_battery") == 1
        assert s.value("rustaid_device_battery_charge_ratio") == pytest.approx(0.42)
        assert s.value("rustaid_device_power_draw_watts") == pytest.approx(9.0)
        assert s.value("rustaid_device_memory_total_bytes") == 4_000_000 * 1024
        assert s.value("rustaid_device_memory_stall_ratio", kind="some") == pytest.approx(0.025)
        assert s.value("rustaid_device_memory_pressure", level="normal") == 1
        profiles = {k: v for k, v in _enum(s, "rustaid_device_power_profile", "profile").items()}
        assert sum(profiles.values()) == 1
        assert s.value("rustaid_generation_energy_joules_per_token", model="tiny") is None
        # A generation on battery: its energy is measured.
        stubs = Stubs(daemon)
        reply = stubs.generate.Generate(
            generate_pb2.GenerateRequest(model_id="tiny", prompt="hi", params=params(16))
        )
        stubs.channel.close()
        s = eventually(
            port, lambda s: s.value("rustaid_generation_energy_joules_per_token", model="tiny")
            is not None,
        )  # fmt: skip
        joules = s.get("rustaid_generation_energy_joules_total", model="tiny")
        tokens = s.get("rustaid_generation_energy_measured_tokens_total", model="tiny")
        assert tokens == reply.usage.completion_tokens and joules > 0
        assert s.value("rustaid_generation_energy_joules_per_token", model="tiny") == (
            pytest.approx(joules / tokens)
        )


def _enum(s: Scrape, name: str, label: str) -> dict[str, float]:
    return {x.labels[label]: x.value for x in s.samples if x.name == name}


def test_update_attempts_by_outcome(tmp_path: Path) -> None:

    key_file, pub_file, public = generate_key(tmp_path / "release")
    key = Key(load_private_key(key_file), public, key_file, pub_file)
    v1 = write_llama_gguf(tmp_path / "v1.gguf", seed=11, name="chat-v1")
    broken = write_truncated_copy(
        write_llama_gguf(tmp_path / "v2.gguf", seed=12), tmp_path / "b.gguf", 0.6
    )
    data = tmp_path / "data"
    # An attempt of an earlier run is history, not this daemon's count.
    (data / "state" / "updates").mkdir(parents=True, mode=0o700)
    History(data / "state" / "updates" / "history.jsonl").append(
        UpdateRecord("old", "chat", "model", "", "0.9", "failed", "earlier", 1.0, 2.0)
    )
    (tmp_path / "repo").mkdir()
    with serve(tmp_path / "repo") as server:
        publisher = Publisher(tmp_path / "repo", server, [key])
        section = updates_config(server.url, [key])
        write_config(data, section)
        config = data / "config" / "rustaid.toml"
        config.write_text('metrics_listen = "127.0.0.1:0"\n' + config.read_text())
        with run_daemon(data) as daemon, grpc.insecure_channel(daemon.address) as channel:
            port = metrics_port(daemon)
            assert scrape(port).value("rustaid_update_attempts_total", outcome="failed") == 0
            stub = updates_pb2_grpc.UpdatesServiceStub(channel)
            publisher.release(v1, "1.0")
            stub.ApplyUpdate(updates_pb2.ApplyUpdateRequest(wait=True))
            publisher.release(broken, "2.0")  # fails its health check: rolled back
            stub.ApplyUpdate(updates_pb2.ApplyUpdateRequest(wait=True))
            s = scrape(port)
    counts = {o: s.value("rustaid_update_attempts_total", outcome=o) for o in
              ("committed", "rolled_back", "failed", "deferred")}  # fmt: skip
    assert counts == {"committed": 1, "rolled_back": 1, "failed": 0, "deferred": 0}

"""ResourcesService end to end: a real daemon process reading a fake sysfs/proc tree
and a private system bus with dbusmock's UPower and power-profiles-daemon (and the real
upowerd), driven by the tests, observed through gRPC."""

from __future__ import annotations

import contextlib
import inspect
import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rustaid_client.client import Client, RustaidError

from rustaid.api.v1 import common_pb2, resources_pb2, resources_pb2_grpc
from rustaid.testing.daemon import DaemonProcess, run_daemon
from tests.conftest import add_model
from tests.power.bus import BusDriver, DbusMock, PrivateSystemBus, eventually
from tests.power.fakesys import FakeDevice

Bus = tuple[PrivateSystemBus, BusDriver]
GENERATE = "rustaid.api.v1.GenerateService"
R = resources_pb2


@contextlib.contextmanager
def daemon_on(
    data_dir: Path, dev: FakeDevice, bus: Bus | None = None, **power: object
) -> Iterator[tuple[DaemonProcess, Client]]:
    """A daemon reading `dev`, on `bus` (found through $DBUS_SYSTEM_BUS_ADDRESS)."""
    lines = [dev.toml()]
    if bus is None:
        lines.append("dbus = false\n")
    for key, value in power.items():
        lines.append(f"{key} = {str(value).lower() if isinstance(value, bool) else value!r}\n")
    config = data_dir / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "rustaid.toml").write_text("[power]\n" + "".join(lines).replace("'", '"'))
    env = {"DBUS_SYSTEM_BUS_ADDRESS": bus[0].address} if bus else {}
    with run_daemon(data_dir, env=env) as daemon, Client(daemon.address, timeout=30) as client:
        yield daemon, client


class Watcher:
    """WatchSnapshots in a thread: every snapshot with the time it arrived."""

    def __init__(self, client: Client, min_interval: float = 0.05) -> None:
        self.stream = client.watch_snapshots(min_interval)
        self.seen: list[tuple[float, R.ResourceSnapshot]] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        eventually(lambda: self.seen, 5.0)

    def _run(self) -> None:
        with contextlib.suppress(RustaidError):
            for event in self.stream:
                self.seen.append((time.monotonic(), event.snapshot))

    @property
    def last(self) -> R.ResourceSnapshot:
        return self.seen[-1][1]

    def close(self) -> None:
        self.stream.cancel()
        self.thread.join(5)


def _bad(call: Any) -> RustaidError:
    with pytest.raises(RustaidError) as e:
        call()
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT, e.value
    return e.value


def test_snapshot_of_a_fake_raspberry_pi(tmp_path: Path) -> None:
    dev = FakeDevice(tmp_path / "device")
    dev.zone(0, "cpu-thermal", 61.3, [("critical", 110)])
    dev.throttled(0x20000)  # frequency was capped at some point since boot
    dev.cpufreq(0, 1_500_000, 1_800_000)
    dev.cpufreq(1, 600_000, 1_800_000)
    dev.amdgpu(0, total=1 << 30, used=1 << 28, busy=5)
    dev.meminfo(total_kib=4_000_000, available_kib=3_000_000)
    dev.psi(some=1.25, full=0.0)
    with daemon_on(tmp_path / "data", dev) as (_, client):
        s = client.get_snapshot().snapshot
        assert s.time.seconds > 0
        assert s.thermal.state == R.THERMAL_STATE_NOMINAL
        assert [(z.type, z.temperature_c) for z in s.thermal.zones] == [("cpu-thermal", 61.3)]
        assert [(t.type, t.temperature_c) for t in s.thermal.zones[0].trip_points] == [
            ("critical", 110.0)
        ]
        assert s.thermal.throttling.frequency_capped_occurred
        assert not s.thermal.throttling.frequency_capped
        assert (s.cpu.frequency_mhz, s.cpu.max_frequency_mhz) == (1050.0, 1800.0)
        assert s.cpu.cores >= 1
        assert s.memory.total_bytes == 4_000_000 * 1024
        assert s.memory.pressure == R.PRESSURE_LEVEL_NORMAL and s.memory.psi_some_avg10 == 1.25
        assert [(g.memory_total_bytes, g.utilization_percent) for g in s.gpus] == [(1 << 30, 5.0)]
        assert not s.power.battery_present
        assert s.power_profile == common_pb2.POWER_PROFILE_BALANCED
        assert s.profile_source == R.PROFILE_SOURCE_DEFAULT
        assert {"dbus", "upower", "power-profiles-daemon", "power_supply"} <= set(
            s.unavailable_sources
        )
        # A reading is refreshed on request when older than max_age_s (1 s).
        dev.temp(0, 85.0)
        time.sleep(1.05)
        s = client.get_snapshot().snapshot
        assert s.thermal.state == R.THERMAL_STATE_SERIOUS
        assert "at or above 80 C" in s.thermal.reason


def test_thermal_critical_takes_generation_out_of_service(tmp_path: Path) -> None:
    dev = FakeDevice(tmp_path / "device")
    dev.zone(0, "cpu-thermal", 50.0, [("passive", 80), ("critical", 100)])
    with daemon_on(tmp_path / "data", dev, poll_idle_s=0.2) as (daemon, client):
        channel = grpc.insecure_channel(daemon.address)
        health = health_pb2_grpc.HealthStub(channel)

        def status(service: str) -> int:
            request = health_pb2.HealthCheckRequest(service=service)
            return int(health.Check(request).status)

        serving = health_pb2.HealthCheckResponse.SERVING
        assert status(GENERATE) == serving
        watcher = Watcher(client)
        dev.temp(0, 97.5)
        eventually(lambda: watcher.last.thermal.state == R.THERMAL_STATE_CRITICAL)
        assert "within 5 C of its critical trip 100 C" in watcher.last.thermal.reason
        eventually(lambda: status(GENERATE) == health_pb2.HealthCheckResponse.NOT_SERVING)
        assert status("") == serving and status("rustaid.api.v1.ModelsService") == serving
        assert client.health(GENERATE) == "NOT_SERVING"
        dev.temp(0, 60.0)
        eventually(lambda: status(GENERATE) == serving)
        assert watcher.last.thermal.state == R.THERMAL_STATE_NOMINAL
        # The daemon logged both transitions.
        log = daemon.stderr()
        assert "critically hot" in log and "serving generation again" in log
        watcher.close()
        channel.close()


def test_battery_drop_and_system_profile_end_to_end(
    tmp_path: Path, bus: Bus, upower: DbusMock, ppd: DbusMock
) -> None:
    _, driver = bus
    driver.battery(60)
    dev = FakeDevice(tmp_path / "device")
    with daemon_on(tmp_path / "data", dev, bus) as (_, client):
        eventually(lambda: client.get_snapshot().snapshot.power.source == "upower", 5.0)
        profile = client.get_power_profile()
        assert profile.profile == common_pb2.POWER_PROFILE_BALANCED
        assert profile.source == R.PROFILE_SOURCE_POWER_PROFILES_DAEMON
        assert profile.reason == "the system power profile is balanced"
        watcher = Watcher(client)

        # The system's profile changes (powerprofilesctl set power-saver): ours follows.
        driver.system_profile("power-saver")
        t_event = time.monotonic()
        eventually(lambda: watcher.last.power_profile == common_pb2.POWER_PROFILE_POWER_SAVER)
        arrived = next(t for t, s in watcher.seen
                       if s.power_profile == common_pb2.POWER_PROFILE_POWER_SAVER)  # fmt: skip
        assert arrived - t_event < 1.0
        got = client.get_power_profile()
        assert got.parameters.max_local_tokens == 256 and got.parameters.prefer_remote

        # Without power-profiles-daemon the battery decides: 15 % and discharging.
        ppd.stop()
        eventually(lambda: watcher.last.profile_source == R.PROFILE_SOURCE_BATTERY)
        assert watcher.last.power_profile == common_pb2.POWER_PROFILE_BALANCED  # 60 %
        driver.battery(15)
        t_event = time.monotonic()
        eventually(lambda: watcher.last.power.battery_percent == 15.0)
        arrived = next(t for t, s in watcher.seen if s.power.battery_percent == 15.0)
        assert arrived - t_event < 1.0
        s = watcher.last
        assert s.power_profile == common_pb2.POWER_PROFILE_POWER_SAVER
        assert s.power.battery_state == R.BATTERY_STATE_DISCHARGING and s.power.on_battery
        assert s.power.power_draw_watts == 8.0 and s.power.source == "upower"
        assert s.power.time_to_empty.seconds == 3600
        profile = client.get_power_profile()
        assert profile.reason == "battery at 15 % (low) and discharging"
        watcher.close()


def test_set_power_profile_overrides_until_cleared(
    tmp_path: Path, bus: Bus, upower: DbusMock, ppd: DbusMock
) -> None:
    _, driver = bus
    dev = FakeDevice(tmp_path / "device")
    data = tmp_path / "data"
    with daemon_on(data, dev, bus) as (_, client):
        eventually(lambda: client.get_power_profile().source
                   == R.PROFILE_SOURCE_POWER_PROFILES_DAEMON, 5.0)  # fmt: skip
        r = client.set_power_profile("ultra-saver")
        assert (r.profile, r.source) == (common_pb2.POWER_PROFILE_ULTRA_SAVER,
                                         R.PROFILE_SOURCE_OVERRIDE)  # fmt: skip
        assert r.parameters.threads == 1 and r.parameters.max_local_tokens == 64
        driver.system_profile("performance")
        time.sleep(0.3)
        assert client.get_power_profile().profile == common_pb2.POWER_PROFILE_ULTRA_SAVER
        custom = R.ProfileParameters(threads=1, max_local_tokens=32, batch_size=8,
                                     context_length=512, caching=True)  # fmt: skip
        r = client.set_power_profile("custom", custom)
        assert r.profile == common_pb2.POWER_PROFILE_CUSTOM and r.parameters == custom
        assert client.get_snapshot().snapshot.power_profile == common_pb2.POWER_PROFILE_CUSTOM
    # The override survives a restart.
    with daemon_on(data, dev, bus) as (_, client):
        r = client.get_power_profile()
        assert r.profile == common_pb2.POWER_PROFILE_CUSTOM and r.parameters == custom
        r = client.clear_power_profile()
        assert r.source != R.PROFILE_SOURCE_OVERRIDE
        # Automatic again: the system's profile, once the bus is connected.
        eventually(lambda: client.get_power_profile().source
                   == R.PROFILE_SOURCE_POWER_PROFILES_DAEMON, 5.0)  # fmt: skip
        assert client.get_power_profile().profile == common_pb2.POWER_PROFILE_PERFORMANCE


def test_power_profile_bad_input(tmp_path: Path) -> None:
    dev = FakeDevice(tmp_path / "device")
    with daemon_on(tmp_path / "data", dev) as (daemon, client):
        stub = resources_pb2_grpc.ResourcesServiceStub(grpc.insecure_channel(daemon.address))

        def set_raw(**fields: Any) -> Any:
            try:
                return stub.SetPowerProfile(R.SetPowerProfileRequest(**fields))
            except grpc.RpcError as e:
                raise RustaidError.from_rpc_error(e, daemon.address) from e

        e = _bad(lambda: set_raw(profile=99))
        assert "profile 99 is not a power profile" in e.message
        assert e.field_violations[0][0] == "profile"
        e = _bad(lambda: set_raw())
        assert "give a profile" in e.message
        e = _bad(lambda: set_raw(profile=common_pb2.POWER_PROFILE_CUSTOM))
        assert "needs its parameters" in e.message
        zero = R.ProfileParameters(threads=0, max_local_tokens=10, batch_size=1,
                                   context_length=512)  # fmt: skip
        e = _bad(lambda: set_raw(profile=common_pb2.POWER_PROFILE_CUSTOM, custom=zero))
        message = "custom.threads must be between 1 and 1024 (got 0)"
        assert e.field_violations == (("custom.threads", message),)
        e = _bad(lambda: set_raw(profile=common_pb2.POWER_PROFILE_BALANCED, custom=zero))
        assert "only apply to POWER_PROFILE_CUSTOM" in e.message
        e = _bad(lambda: set_raw(profile=common_pb2.POWER_PROFILE_BALANCED, clear_override=True))
        assert "give no profile" in e.message
        # An unknown profile name never reaches the daemon: the client says what exists.
        with pytest.raises(ValueError, match="use one of performance, balanced"):
            client.set_power_profile("turbo")
        # Nothing changed.
        assert client.get_power_profile().source == R.PROFILE_SOURCE_DEFAULT
        # WatchSnapshots' interval.
        for seconds, nanos in ((-1, 0), (0, -5), (100_000, 0)):
            request = R.WatchSnapshotsRequest()
            request.min_interval.seconds, request.min_interval.nanos = seconds, nanos
            with pytest.raises(grpc.RpcError) as info:
                next(iter(stub.WatchSnapshots(request)))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "min_interval" in info.value.details()


def test_watch_snapshots_respects_min_interval(tmp_path: Path) -> None:
    dev = FakeDevice(tmp_path / "device")
    dev.zone(0, "cpu-thermal", 40.0)
    with daemon_on(tmp_path / "data", dev, poll_idle_s=0.05) as (_, client):
        watcher = Watcher(client, min_interval=0.6)
        t0 = time.monotonic()
        for i in range(20):  # a new whole degree every 50 ms
            dev.temp(0, 41.0 + i)
            time.sleep(0.05)
        eventually(lambda: watcher.last.thermal.zones[0].temperature_c == 60.0, 2.0)
        times = [t for t, _ in watcher.seen if t >= t0]
        # 20 changes in about a second arrive as a few snapshots, >= 0.6 s apart.
        assert 1 <= len(times) <= 1 + (times[-1] - t0) / 0.6, times
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(g >= 0.55 for g in gaps), gaps
        watcher.close()


def test_estimate_cost(tmp_path: Path, model_files: dict[str, Path], bus: Bus,
                       upower: DbusMock) -> None:  # fmt: skip
    _, driver = bus
    data = tmp_path / "data"
    add_model(data, model_files["tiny"])
    add_model(data, model_files["slow"])
    dev = FakeDevice(tmp_path / "device")
    with daemon_on(data, dev, bus) as (_, client):
        c = client.estimate_cost("tiny", prompt_tokens=100, max_tokens=200)
        assert c.max_tokens == 200 and c.duration.ToNanoseconds() > 0
        assert "not measured yet" in c.basis and "an assumed 8 GB/s" in c.basis
        assert "4000 mW declared by plugin llama.cpp" in c.basis
        assert "load 0.00 s first (an assumed 300 MB/s)" in c.basis  # not loaded yet
        assert c.energy_joules == pytest.approx(4.0 * c.duration.ToNanoseconds() / 1e9, rel=1e-3)
        assert c.energy_mwh == pytest.approx(c.energy_joules / 3.6)
        assert c.battery_percent == 0.0  # no battery
        # On battery the measured draw counts, and the share of a full battery.
        driver.battery(50, rate_w=8.0)
        eventually(lambda: client.get_snapshot().snapshot.power.on_battery, 5.0)
        c = client.estimate_cost("tiny", prompt_tokens=100, max_tokens=0)
        assert c.max_tokens == 512  # the default
        assert "measured draw 8.0 W (upower)" in c.basis
        seconds = c.duration.ToNanoseconds() / 1e9
        assert c.energy_joules == pytest.approx(8.0 * seconds, rel=1e-3)
        assert c.battery_percent == pytest.approx(100 * c.energy_joules / (50 * 3600), rel=1e-3)
        # The device's state caps the tokens assumed.
        client.set_power_profile("ultra-saver")
        c = client.estimate_cost("tiny", prompt_tokens=0, max_tokens=500)
        assert c.max_tokens == 64 and "max_tokens 500 -> 64" in c.basis
        # Bad input.
        assert "model_id is empty" in _bad(lambda: client.estimate_cost("")).message
        with pytest.raises(RustaidError) as e:
            client.estimate_cost("no-such-model")
        assert e.value.code == grpc.StatusCode.NOT_FOUND and "tiny" in e.value.message
        e2 = _bad(lambda: client.estimate_cost("tiny", max_tokens=10**9))
        assert e2.field_violations[0][0] == "max_tokens"
        # Once another model ran here, its speed calibrates the estimate for this one.
        client.set_power_profile("performance")
        client.generate("Once upon a time", "slow", max_tokens=16)
        c = client.estimate_cost("tiny", prompt_tokens=10, max_tokens=16)
        assert "GB/s measured on this device (1 models)" in c.basis, c.basis
        assert "MB/s measured here" in c.basis, c.basis


def test_memory_pressure_unloads_idle_models_largest_first(
    tmp_path: Path, model_files: dict[str, Path]
) -> None:
    data = tmp_path / "data"
    add_model(data, model_files["tiny"])
    add_model(data, model_files["slow"])
    dev = FakeDevice(tmp_path / "device")
    with daemon_on(data, dev, poll_idle_s=0.1, eviction_settle_s=0.5) as (daemon, client):
        for model in ("tiny", "slow"):
            client.load_model(model)
        events = client.watch_models()
        unloaded: list[str] = []

        def watch() -> None:
            with contextlib.suppress(RustaidError):
                for event in events:
                    if event.type == 5:  # MODEL_EVENT_TYPE_UNLOADED
                        unloaded.append(event.model.id)

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        dev.psi(some=60.0, full=20.0)
        eventually(lambda: unloaded == ["slow"], 5.0)  # the larger one first
        dev.psi(some=5.0, full=0.0)  # recovered before the next check
        time.sleep(1.0)
        assert unloaded == ["slow"]
        loaded = [m.id for m in client.list_models(loaded_only=True).models]
        assert loaded == ["tiny"]
        # Pinned models stay even when pressure remains critical.
        client.load_model("slow", pin=True)
        dev.psi(some=60.0, full=20.0)
        eventually(lambda: unloaded == ["slow", "tiny"], 6.0)
        time.sleep(0.8)
        assert [m.id for m in client.list_models(loaded_only=True).models] == ["slow"]
        log = daemon.stderr()
        assert "memory pressure critical" in log and "unloading idle model slow" in log
        eventually(lambda: "no idle unpinned model left to unload" in daemon.stderr(), 2.0)
        # Still critical: a model loaded meanwhile goes too.
        client.load_model("tiny")
        eventually(lambda: unloaded == ["slow", "tiny", "tiny"], 6.0)
        assert daemon.stderr().count("no idle unpinned model left to unload") >= 1
        events.cancel()
        thread.join(5)


def _engine_applies_the_policy() -> bool:
    from rustaid.core import engine

    return ".adjust(" in inspect.getsource(engine)


@pytest.mark.skipif(not _engine_applies_the_policy(),
                    reason="the engine does not call InferencePolicy.adjust yet")  # fmt: skip
def test_generate_parameters_follow_the_device(
    tmp_path: Path, model_files: dict[str, Path], bus: Bus, upower: DbusMock
) -> None:
    _, driver = bus
    data = tmp_path / "data"
    add_model(data, model_files["tiny"])
    dev = FakeDevice(tmp_path / "device")
    dev.zone(0, "cpu-thermal", 50.0, [("passive", 80), ("critical", 110)])
    with daemon_on(data, dev, bus) as (_, client):
        eventually(lambda: client.get_snapshot().snapshot.power.source == "upower", 5.0)
        prompt = "Once upon a time"
        r = client.generate(prompt, "tiny", max_tokens=60, temperature=0.0)
        assert list(r.adjustments) == [] and r.usage.completion_tokens <= 60
        # Critically hot (read fresh at the request): no local generation starts; the
        # client is told why and when to retry.
        dev.temp(0, 106.0)
        time.sleep(1.05)
        with pytest.raises(RustaidError) as refused:
            client.generate(prompt, "tiny", max_tokens=60, temperature=0.0)
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE
        assert refused.value.reason == "THERMAL_CRITICAL" and refused.value.retry_after == 30
        assert ("thermal state critical (cpu-thermal at 106.0 C, within 5 C of its critical "
                "trip 110 C)") in refused.value.message  # fmt: skip
        dev.temp(0, 50.0)
        time.sleep(1.05)
        # The battery drops to 15 % while discharging: PowerSaver caps at 256 tokens.
        driver.battery(15)
        t_event = time.monotonic()
        r = client.generate(prompt, "tiny", max_tokens=260, temperature=0.0)
        assert any(a.startswith("max_tokens 260 -> 256: power profile power_saver (battery at "
                                "15 % (low) and discharging)") for a in r.adjustments), (
            r.adjustments, time.monotonic() - t_event)  # fmt: skip
        # Its energy: the battery's measured draw times its compute time.
        seconds = (r.timings.prompt_eval_ms + r.timings.generation_ms) / 1000
        assert r.energy.basis.startswith("measured draw 8.0 W (upower) x "), r.energy.basis
        assert abs(r.energy.joules - 8.0 * seconds) < 0.05 * 8.0 * seconds + 1e-3
        assert r.usage.completion_tokens <= 256
        # A background request waits while the battery is low, and runs once plugged in.
        done: list[Any] = []
        thread = threading.Thread(target=lambda: done.append(
            client.generate(prompt, "tiny", max_tokens=8, priority="background")))  # fmt: skip
        thread.start()
        time.sleep(0.6)
        assert not done
        driver.battery(15, discharging=False)
        eventually(lambda: done, 3.0)
        thread.join(5)
        metrics = client.get_metrics()
        assert metrics.requests >= 3  # the refused one never ran
        assert [m.model_id for m in metrics.models] == ["tiny"]
        m = metrics.models[0]
        assert m.completion_tokens > 0 and m.tokens_per_second > 0
        assert m.energy_joules > 0  # some ran on battery: 8 W x their duration
        client.reset_metrics()
        assert client.get_metrics().requests == 0


async def test_metrics_service(tmp_path: Path) -> None:
    """GetMetrics/ResetMetrics over gRPC, from what the engine records."""
    from rustaid.core.engine import Timings
    from rustaid.providers import CompletionStats, FinishReason
    from rustaid.testing.daemon import isolated_settings, running_daemon

    dev = FakeDevice(tmp_path / "device")
    config = tmp_path / "data" / "config"
    config.mkdir(parents=True)
    (config / "rustaid.toml").write_text("[power]\n" + dev.toml() + "dbus = false\n")
    settings = isolated_settings(tmp_path / "data")
    async with running_daemon(settings) as daemon:
        metrics = daemon.resources.metrics  # type: ignore[attr-defined]
        stats = CompletionStats(FinishReason.STOP, 12, 40, 50.0, 800.0)
        metrics.record("tiny", stats, Timings(time_to_first_token_ms=70.0, tokens_per_second=48.75))
        metrics.record("tiny", stats, Timings(time_to_first_token_ms=90.0, tokens_per_second=48.75))
        metrics.record_error("tiny")
        async with grpc.aio.insecure_channel(settings.listen[0]) as channel:
            stub = resources_pb2_grpc.ResourcesServiceStub(channel)
            got = await stub.GetMetrics(R.GetMetricsRequest())
            assert (got.requests, got.errors) == (3, 1)
            assert got.since.seconds > 0
            [m] = got.models
            assert (m.model_id, m.requests, m.errors) == ("tiny", 3, 1)
            assert (m.prompt_tokens, m.completion_tokens) == (24, 80)
            assert m.tokens_per_second == pytest.approx(50.0)  # 80 tokens in 1.6 s
            assert m.time_to_first_token_ms == pytest.approx(80.0)
            assert m.energy_joules == 0.0 and m.joules_per_token == 0.0  # not on battery
            await stub.ResetMetrics(R.ResetMetricsRequest())
            got = await stub.GetMetrics(R.GetMetricsRequest())
            assert got.requests == 0 and list(got.models) == []


def test_bad_power_settings_stop_start_up(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.mkdir(parents=True)
    (config / "rustaid.toml").write_text('[power]\npoll_idle_s = 0\nsys_root = "relative"\n')
    with pytest.raises(RuntimeError) as e, run_daemon(tmp_path):
        pass
    assert "daemon exited with 1" in str(e.value)
    assert "power.sys_root: expected an absolute path" in str(e.value)


def test_heat_reaches_watchers_within_a_second_while_idle(tmp_path: Path) -> None:
    """No generation runs and the idle poll is 30 s: the quick read still sees a jump
    in temperature (and the health status follows) within about a second."""
    dev = FakeDevice(tmp_path / "device")
    dev.zone(0, "cpu-thermal", 50.0, [("passive", 80), ("critical", 100)])
    with daemon_on(tmp_path / "data", dev) as (_, client):
        watcher = Watcher(client)
        time.sleep(0.3)
        t0 = time.monotonic()
        dev.temp(0, 97.5)
        eventually(lambda: watcher.last.thermal.state == R.THERMAL_STATE_CRITICAL, 3.0)
        seen = next(t for t, s in watcher.seen if s.thermal.state == R.THERMAL_STATE_CRITICAL)
        assert seen - t0 < 2.0, seen - t0  # poll_quick_s is 1 s; the idle poll would be 30
        assert client.health(GENERATE) == "NOT_SERVING"
        watcher.close()

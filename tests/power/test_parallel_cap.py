"""How many requests a model serves at once under the device's state: fewer on battery,
heat or memory pressure, and the memory budget holds the KV of every sequence."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from rustaid.api.v1 import common_pb2, generate_pb2, generate_pb2_grpc
from rustaid.core.parallel import choose_parallel
from rustaid.power.policy import parallel_cap
from rustaid.power.snapshot import PowerProfile, PressureLevel, ThermalState
from rustaid.testing.daemon import run_daemon
from tests.conftest import add_model
from tests.power.fakesys import FakeDevice
from tests.power.test_applied_caps import write_power
from tests.power.test_policy import CONFIG, battery, manager, snap
from tests.services.test_limits import Stream, cancelling


@pytest.mark.parametrize(
    ("state", "cap"),
    [
        (snap(), 0),
        (snap(power=battery(80)), 2),
        (snap(power=battery(5)), 1),
        (snap(thermal=ThermalState.SERIOUS), 2),
        (snap(thermal=ThermalState.CRITICAL), 1),
        (snap(pressure=PressureLevel.WARNING), 2),
        (snap(pressure=PressureLevel.CRITICAL), 1),
    ],
)
def test_the_device_state_caps_requests_at_once(state: object, cap: int) -> None:
    active = manager().resolve(state.power, "")  # type: ignore[attr-defined]
    n, why = parallel_cap(state, active, CONFIG)  # type: ignore[arg-type]
    assert n == cap and bool(why) == bool(cap)


@pytest.mark.parametrize(("profile", "cap"), [(PowerProfile.POWER_SAVER, 2),
                                              (PowerProfile.ULTRA_SAVER, 1)])  # fmt: skip
def test_saving_profiles_cap_requests_at_once(profile: PowerProfile, cap: int) -> None:
    m = manager()
    m.set_override(profile)
    assert parallel_cap(snap(), m.resolve(snap().power, ""), CONFIG)[0] == cap


def test_parallel_defaults_from_cores_and_fits_the_budget() -> None:
    mb = 1 << 20
    assert choose_parallel(0, cores=1, weights_bytes=mb, kv_bytes=mb, budget_bytes=1000 * mb) == 1
    assert choose_parallel(0, cores=2, weights_bytes=mb, kv_bytes=mb, budget_bytes=1000 * mb) == 4
    assert choose_parallel(6, cores=2, weights_bytes=mb, kv_bytes=mb, budget_bytes=1000 * mb) == 6
    # The budget holds the weights and the KV of three sequences only.
    assert choose_parallel(8, cores=8, weights_bytes=100 * mb, kv_bytes=50 * mb,
                           budget_bytes=260 * mb) == 3  # fmt: skip
    assert choose_parallel(8, cores=8, weights_bytes=100 * mb, kv_bytes=500 * mb,
                           budget_bytes=260 * mb) == 1  # fmt: skip


def test_on_battery_a_loaded_model_serves_fewer_at_once(
    tmp_path: Path, model_files: dict[str, Path]
) -> None:
    dev = FakeDevice(tmp_path / "device")
    dev.mains(True)
    data = tmp_path / "data"
    add_model(data, model_files["slow"])
    write_power(data, dev, share_cpu=False)
    (data / "config" / "models.toml").write_text('[[model]]\npath = "slow.gguf"\nparallel = 4\n')
    with run_daemon(data) as daemon, grpc.insecure_channel(daemon.address) as channel:
        stub = generate_pb2_grpc.GenerateServiceStub(channel)

        def stream(max_tokens: int = 3000) -> Stream:
            request = generate_pb2.GenerateStreamRequest(
                model_id="slow", prompt="hello", params=common_pb2.GenerationParams(
                    max_tokens=max_tokens, temperature=0)
            )  # fmt: skip
            return Stream(stub.GenerateStream(request))

        stream(2).finish()  # loaded with four sequences, on mains
        dev.mains(False)
        dev.battery(capacity=80)  # discharging, not low
        deadline = time.monotonic() + 30
        running = [stream().running(), stream().running()]
        third = stream(4).started()
        with cancelling(*running, third):
            while not third.positions() and time.monotonic() < deadline:
                # The battery is seen within a poll: until then the third may have run.
                third.finish()
                third = stream(4).started()
            assert third.positions() == [1]  # two at once on battery
            running[0].cancel()
            third.finish()
            assert third.events[-1].WhichOneof("event") == "done"

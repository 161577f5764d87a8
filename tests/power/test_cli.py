"""`rustaictl resources` and `rustaictl power` against a real daemon on a fake device."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from rustaid_client.cli import main

from rustaid.testing.daemon import DaemonProcess
from tests.power.fakesys import FakeDevice
from tests.power.test_service import daemon_on


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonProcess, FakeDevice]]:
    root = tmp_path_factory.mktemp("cli")
    dev = FakeDevice(root / "device")
    dev.zone(0, "cpu-thermal", 83.0, [("passive", 80), ("critical", 110)])
    dev.mains(False)
    dev.battery(capacity=15, power_uw=6_000_000)
    dev.throttled(0x50000)
    with daemon_on(root / "data", dev) as (daemon, _):
        yield daemon, dev


def run(
    capsys: pytest.CaptureFixture[str], daemon: DaemonProcess, *args: str
) -> tuple[int, str, str]:
    code = main(["--address", daemon.address, *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_resources(
    served: tuple[DaemonProcess, FakeDevice], capsys: pytest.CaptureFixture[str]
) -> None:
    daemon, _ = served
    code, out, _ = run(capsys, daemon, "resources")
    assert code == 0
    fields = dict(line.split(":", 1) for line in out.splitlines())
    assert fields["thermal"].strip().startswith("serious: cpu-thermal at 83.0 C")
    assert fields["zones"].strip() == "cpu-thermal 83.0 C"
    assert fields["power"].strip() == (
        "battery 15 %, discharging, drawing 6.0 W, 1 h 15 min left, on battery (from sysfs)"
    )
    assert fields["profile"].strip() == "power_saver (battery)"
    assert fields["throttling"].strip() == "none now (since boot: under-voltage, throttled)"
    assert "upower" in fields["unavailable"]
    code, out, _ = run(capsys, daemon, "resources", "--json")
    data = json.loads(out)
    assert data["thermal"]["state"] == "THERMAL_STATE_SERIOUS"
    assert data["power"]["batteryPercent"] == 15.0


def test_power(
    served: tuple[DaemonProcess, FakeDevice], capsys: pytest.CaptureFixture[str]
) -> None:
    daemon, _ = served
    code, out, _ = run(capsys, daemon, "power")
    assert code == 0
    assert "profile:          power-saver" in out
    assert "source:           battery: battery at 15 % (low) and discharging" in out
    code, out, _ = run(capsys, daemon, "power", "ultra-saver")
    assert (
        code == 0 and "profile:          ultra-saver" in out and "source:           override" in out
    )
    assert "max local tokens: 64" in out
    code, out, _ = run(capsys, daemon, "power", "custom", "--threads", "2", "--max-tokens", "100",
                       "--batch", "16", "--context", "1024", "--prefer-remote")  # fmt: skip
    assert code == 0 and "threads:          2" in out and "prefer remote:    yes" in out
    code, out, _ = run(capsys, daemon, "power", "--clear")
    assert code == 0 and "profile:          power-saver" in out


def test_power_bad_input(
    served: tuple[DaemonProcess, FakeDevice], capsys: pytest.CaptureFixture[str]
) -> None:
    daemon, _ = served
    code, _, err = run(capsys, daemon, "power", "turbo")
    assert code == 2 and "invalid choice: 'turbo'" in err and "ultra-saver" in err
    code, _, err = run(capsys, daemon, "power", "custom", "--threads", "0", "--max-tokens", "10",
                       "--batch", "1", "--context", "512")  # fmt: skip
    assert code == 1
    assert "INVALID_ARGUMENT: custom.threads must be between 1 and 1024 (got 0)" in err
    code, _, err = run(capsys, daemon, "power", "balanced", "--threads", "2")
    assert code == 2 and "only go with the custom profile" in err
    code, _, err = run(capsys, daemon, "power", "balanced", "--clear")
    assert code == 2 and "not both" in err
    code, out, _ = run(capsys, daemon, "power")
    assert "power-saver" in out  # unchanged by the failures

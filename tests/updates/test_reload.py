"""`[updates]` applied by a reload (SIGHUP) of a real daemon: updates configured after
start, a new check interval re-planning the next check, and new power-gate thresholds,
all observed through gRPC."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from rustaid_client.client import Client, RustaidError

from rustaid.testing.daemon import DaemonProcess, run_daemon
from tests.power.fakesys import FakeDevice
from tests.updates.conftest import Key, Publisher, updates_config


def write(data: Path, updates: dict[str, Any] | None, power: str = "") -> None:
    """config/rustaid.toml with an optional [updates] table and a raw [power] table."""
    lines = []
    if power:
        lines += ["[power]", power]
    if updates is not None:
        lines.append("[updates]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in updates.items()]
    path = data / "config" / "rustaid.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def reload(daemon: DaemonProcess, times: int) -> None:
    """SIGHUP, then wait until the daemon has reloaded `times` times in all."""
    daemon.proc.send_signal(signal.SIGHUP)

    def reloaded() -> bool:
        daemon.read_notifications(timeout=0.2)
        return sum("STATUS=reloaded" in n.split("\n") for n in daemon.notifications) >= times

    eventually(reloaded)


def eventually(probe: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
    return value


def test_reload_configures_updates_and_replans_the_schedule(
    tmp_path: Path, publisher: Publisher, keys: list[Key], models: dict[str, Path]
) -> None:
    publisher.release(models["v1"], "1.0")
    data = tmp_path / "data"
    write(data, None)
    with run_daemon(data) as daemon, Client(daemon.address, timeout=30) as client:
        status = client.get_update_status().status
        assert "updates are not configured" in status.message
        assert not status.HasField("next_check_time")
        # Configured after start: the reload starts the schedule; the first check is
        # due now (jitter 0) and then every hour.
        section = updates_config(
            publisher.url, keys[:1], check_interval="1h", jitter=0, auto_apply=False
        )
        write(data, section)
        reload(daemon, 1)
        status = eventually(
            lambda: (s := client.get_update_status().status).HasField("last_check_time") and s
        )
        assert "not configured" not in status.message
        last = status.last_check_time.seconds
        assert status.next_check_time.seconds == pytest.approx(last + 3600, abs=2)
        assert client.check_updates().updates[0].available_version == "1.0"
        # A new interval re-plans the next check from the last one.
        last = client.get_update_status().status.last_check_time.seconds
        write(data, {**section, "check_interval": "2h"})
        reload(daemon, 2)
        status = client.get_update_status().status
        assert status.next_check_time.seconds == pytest.approx(last + 7200, abs=2)
        # Scheduled checks turned off: no next check any more, and the status says so.
        write(data, {**section, "check_interval": 0})
        reload(daemon, 3)
        status = client.get_update_status().status
        assert not status.HasField("next_check_time")
        assert "scheduled checks are off" in status.message
        assert "apply after a restart" not in daemon.stderr()


def test_reload_applies_new_power_gate_thresholds(
    tmp_path: Path, publisher: Publisher, keys: list[Key], models: dict[str, Path]
) -> None:
    publisher.release(models["v1"], "1.0")
    dev = FakeDevice(tmp_path / "device")
    dev.zone(0, "cpu-thermal", 75.0)  # no trip points: fair from 70 C
    power = dev.toml() + "dbus = false\n"
    data = tmp_path / "data"
    section = updates_config(publisher.url, keys[:1], max_thermal="fair")
    write(data, section, power)
    with run_daemon(data) as daemon, Client(daemon.address, timeout=30) as client:
        with pytest.raises(RustaidError) as refused:
            client.apply_update(["no-such-artifact"])
        assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert refused.value.reason == "POWER_GATE"
        assert "thermal state is fair" in refused.value.message
        write(data, {**section, "max_thermal": "critical"}, power)
        reload(daemon, 1)
        # The gate opens: the request goes on to look for the artifact.
        with pytest.raises(RustaidError) as missing:
            client.apply_update(["no-such-artifact"])
        assert missing.value.code == grpc.StatusCode.NOT_FOUND, missing.value

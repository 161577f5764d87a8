"""Kill -9 the real daemon process inside each update state and restart it, as Mender's
state tests do: the device ends in the old or the new version, whole, never a mix,
and nothing is left in staging.

The daemon, started through rustaid.testing.update_pause, stops at a state (it writes
a marker file and waits there), then gets SIGKILL."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

from rustaid.api.v1 import common_pb2, generate_pb2, generate_pb2_grpc, updates_pb2
from rustaid.api.v1 import updates_pb2_grpc as updates_grpc
from rustaid.testing.daemon import isolated_settings, run_daemon, running_daemon
from rustaid.testing.update_pause import pause_marker
from rustaid.updates.download import sha256_file
from tests.updates.conftest import Publisher, updates_config, write_config

# Where the device must end up after the restart.
EXPECTED = {
    "download": "1.0",
    "verify": "1.0",
    "switch": "1.0",
    "health_check": "1.0",
    "commit": "2.0",
}


def wait_for_file(path: Path, proc_alive: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"the daemon never reached {path.name}"
        assert proc_alive(), "the daemon exited before reaching the pause point"  # type: ignore[operator]
        time.sleep(0.02)


async def install_v1(data: Path) -> None:
    async with running_daemon(isolated_settings(data)) as d:
        _, records = await d.updates.apply(wait=True)  # type: ignore[attr-defined]
        assert [r.outcome for r in records] == ["committed"]


@pytest.mark.parametrize("state", list(EXPECTED))
def test_kill_9_inside_each_update_state(
    state: str, tmp_path: Path, publisher: Publisher, models: dict[str, Path]
) -> None:
    data = tmp_path / "data"
    write_config(data, updates_config(publisher.url, publisher.keys[:1]))
    publisher.release(models["v1"], "1.0")
    asyncio.run(install_v1(data))
    publisher.release(models["v2"], "2.0")
    if state == "download":  # a slow server, so the kill lands mid-file
        publisher.server.fault(publisher.artifact_path("2.0"), "stall", 100_000)

    marker = pause_marker(data, state)
    with run_daemon(data, pause_update_at=state) as d:
        channel = grpc.insecure_channel(d.address)
        updates = updates_grpc.UpdatesServiceStub(channel)
        updates.ApplyUpdate(updates_pb2.ApplyUpdateRequest())  # returns once started
        wait_for_file(marker, lambda: d.proc.poll() is None)
        d.proc.kill()  # SIGKILL: no clean-up code runs
        d.proc.wait()
        channel.close()
    if state == "download":
        part = list((data / "state" / "updates" / "staging").rglob("*.part"))
        assert part and part[0].stat().st_size > 0  # it really died mid-download

    with run_daemon(data) as d:
        channel = grpc.insecure_channel(d.address)
        updates = updates_grpc.UpdatesServiceStub(channel)
        expected = EXPECTED[state]
        status = updates.GetUpdateStatus(updates_pb2.GetUpdateStatusRequest())
        (installed,) = status.installed
        assert installed.version == expected
        file = models["v1"] if expected == "1.0" else models["v2"]
        assert sha256_file((data / "models" / "chat.gguf").resolve()) == sha256_file(file)
        # The version it reports is the one that serves, and it generates.
        stream = generate_pb2_grpc.GenerateServiceStub(channel).Generate(
            generate_pb2.GenerateRequest(
                model_id="chat", prompt="Hello", params=common_pb2.GenerationParams(max_tokens=2)
            )
        )
        assert stream.model_id == "chat"
        (last, *_) = updates.ListHistory(updates_pb2.ListHistoryRequest()).records
        assert last.to_version == "2.0"
        if expected == "1.0":
            assert last.outcome in (
                updates_pb2.UPDATE_PHASE_FAILED,
                updates_pb2.UPDATE_PHASE_ROLLED_BACK,
            )
            assert "the daemon stopped" in last.message and "1.0" in last.message
            assert status.status.message == last.message  # visible in the status too
        else:
            assert last.outcome == updates_pb2.UPDATE_PHASE_COMMITTED
        # Nothing half-done is left behind.
        assert list((data / "state" / "updates" / "staging").iterdir()) == []
        assert not (data / "state" / "updates" / "journal.json").exists()
        assert not marker.exists()
        slots = data / "state" / "updates" / "artifacts" / "chat"
        for slot in ("a", "b"):
            if (slot_dir := slots / slot).exists():
                assert (slot_dir / "slot.json").exists() and (slot_dir / "chat.gguf").exists()
        channel.close()

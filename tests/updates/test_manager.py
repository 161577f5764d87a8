"""The UpdateManager inside a real daemon (in this event loop), against a real HTTP
server, with real keys, real synthetic models and real plugin files.

Every failure case checks what users care about: the old version still serves, the
reason is in the status and the history, and nothing is left in staging."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from rustaid.core.engine import GenerationRequest
from rustaid.daemon import Daemon
from rustaid.errors import InvalidArgument, NotFound, PreconditionFailed
from rustaid.providers import GenerationParams
from rustaid.testing.daemon import isolated_settings, running_daemon
from rustaid.updates.download import sha256_file
from rustaid.updates.manager import Phase, rollout_bucket
from rustaid.updates.metadata import MetadataRejected, document_bytes, sign
from tests.updates.conftest import Key, Publisher, updates_config, write_config


@asynccontextmanager
async def daemon_for(
    data_dir: Path, publisher: Publisher, keys: list[Key] | None = None, **config: Any
) -> AsyncIterator[Daemon]:
    write_config(data_dir, updates_config(publisher.url, keys or publisher.keys[:1], **config))
    async with running_daemon(isolated_settings(data_dir)) as d:
        assert isinstance(d, Daemon)
        yield d


def serving(data_dir: Path, name: str = "chat.gguf", folder: str = "models") -> str:
    """SHA-256 of the file the daemon sees at models/<name> (through the symlinks)."""
    return sha256_file((data_dir / folder / name).resolve())


def staging(data_dir: Path) -> list[Path]:
    return list((data_dir / "state" / "updates" / "staging").iterdir())


async def generates(d: Daemon, model_id: str = "chat") -> bool:
    request = GenerationRequest(
        model_id=model_id, prompt="Hello", params=GenerationParams(max_tokens=3, temperature=0)
    )
    _, done = await d.engine.generate_text(request)
    return done.model_id == model_id


async def install_v1(d: Daemon, publisher: Publisher, models: dict[str, Path]) -> None:
    publisher.release(models["v1"], "1.0")
    _, records = await d.updates.apply(wait=True)
    assert [r.outcome for r in records] == ["committed"]


async def test_update_commits_and_the_new_version_serves(
    tmp_path: Path, publisher: Publisher, models: dict[str, Path]
) -> None:
    data = tmp_path / "data"
    report_url = f"{publisher.url}/report"
    async with daemon_for(data, publisher, report_url=report_url) as d:
        publisher.release(models["v1"], "1.0")
        result = await d.updates.check()
        (available,) = result.updates
        assert (available.artifact.id, available.current_version, available.in_rollout) == (
            "chat",
            "",
            True,
        )
        _, records = await d.updates.apply(wait=True)
        assert [r.outcome for r in records] == ["committed"]
        assert serving(data) == sha256_file(models["v1"])
        assert await generates(d)
        publisher.release(models["v2"], "2.0")
        status, (record,) = await d.updates.apply(wait=True)
        assert status.phase is Phase.COMMITTED and status.version == "2.0"
        assert (record.from_version, record.to_version, record.outcome) == (
            "1.0",
            "2.0",
            "committed",
        )
        assert serving(data) == sha256_file(models["v2"])
        assert await generates(d)
        (installed,) = d.updates.installed()
        assert (installed.version, installed.previous_version, installed.path) == (
            "2.0",
            "1.0",
            "models/chat.gguf",
        )
        assert [r.outcome for r in d.updates.list_history(10)] == ["committed", "committed"]
        assert staging(data) == []
        assert not (data / "state" / "updates" / "journal.json").exists()
        # Nothing newer: the next apply has nothing to do.
        status, records = await d.updates.apply(wait=True)
        assert records == [] and "nothing to update" in status.message
        for _ in range(50):
            if len(publisher.server.reports) >= 2:
                break
            await asyncio.sleep(0.05)
    report = publisher.server.reports[-1]
    assert report["device_id"] == "device-under-test"
    assert report["attempt"]["outcome"] == "committed"
    assert report["attempt"]["to_version"] == "2.0"
    assert report["installed"] == [
        {"artifact_id": "chat", "kind": "model", "version": "2.0", "previous_version": "1.0"}
    ]
    assert report["metadata_version"] == 2


async def test_health_check_failure_rolls_back_automatically(
    tmp_path: Path, publisher: Publisher, models: dict[str, Path]
) -> None:
    data = tmp_path / "data"
    async with daemon_for(data, publisher) as d:
        await install_v1(d, publisher, models)
        await d.engine.load("chat")  # loaded before: it must still be served after
        publisher.release(models["broken"], "2.0")  # signed, hash-correct, does not load
        status, (record,) = await d.updates.apply(wait=True)
        assert record.outcome == "rolled_back"
        assert "failed its health check" in record.message
        assert "GGUF" in record.message and "back on 1.0" in record.message
        assert status.phase is Phase.ROLLED_BACK and status.message == record.message
        assert serving(data) == sha256_file(models["v1"])
        assert "chat" in [e.id for e in d.engine.loaded()]
        assert await generates(d)
        (installed,) = d.updates.installed()
        assert (installed.version, installed.previous_version) == ("1.0", "")  # slot cleared
        assert staging(data) == []
        # Not retried automatically...
        (available,) = (await d.updates.check()).updates
        assert "failed its health check before" in available.note
        _, records = await d.updates.apply(wait=True)
        assert records == []
        # ...but an operator can retry it by name.
        _, (again,) = await d.updates.apply(["chat"], wait=True)
        assert again.outcome == "rolled_back"


async def test_tampered_artifact_is_refused(
    tmp_path: Path, publisher: Publisher, models: dict[str, Path]
) -> None:
    data = tmp_path / "data"
    async with daemon_for(data, publisher) as d:
        await install_v1(d, publisher, models)
        publisher.release(models["v2"], "2.0")
        publisher.server.fault(publisher.artifact_path("2.0"), "flip", 100_000)
        status, (record,) = await d.updates.apply(wait=True)
        assert record.outcome == "failed" and "SHA-256 mismatch" in record.message
        assert "1.0 kept" in record.message
        assert status.phase is Phase.FAILED
        assert serving(data) == sha256_file(models["v1"])
        assert staging(data) == []
        assert d.updates.list_history(1)[0].message == record.message


async def test_artifact_larger_than_declared_is_cut_off(
    tmp_path: Path, publisher: Publisher, models: dict[str, Path]
) -> None:
    data = tmp_path / "data"
    async with daemon_for(data, publisher) as d:
        await install_v1(d, publisher, models)
        publisher.release(models["v2"], "2.0")
        publisher.server.fault(publisher.artifact_path("2.0"), "endless", times=-1)
        _, (record,) = await d.updates.apply(wait=True)
        assert record.outcome == "failed"
        assert "more than the" in record.message and "declares" in record.message
        assert serving(data) == sha256_file(models["v1"])
        assert staging(data) == []


async def test_resume_after_truncation_downloads_only_the_rest(
    tmp_path: Path, publisher: Publisher, models: dict[str, Path]
) -> None:
    data = tmp_path / "data"
    size = models["v2"].stat().st_size
    async with daemon_for(data, publisher) as d:
        await install_v1(d, publisher, models)
        publisher.release(models["v2"], "2.0")
        path = publisher.artifact_path("2.0")
        publisher.server.fault(path, "truncate", size // 2)
        _, (record,) = await d.updates.apply(wait=True)
        assert record.outcome == "committed"
        first, second = publisher.server.requests_for("/" + path)
        assert second.range == f"bytes={size // 2}-"
        assert first.sent + second.sent == size  # nothing downloaded twice


async def test_tampered_metadata_and_unknown_keys_are_rejected_before_any_download(
    tmp_path: Path, publisher: Publisher, models: dict[str, Path], keys: list[Key]
) -> None:
    data = tmp_path / "data"
    async with daemon_for(data, publisher) as d:
        await install_v1(d, publisher, models)
        publisher.release(models["v2"], "2.0")
        doc = publisher.metadata()
        doc["signed"]["channels"]["stable"][0]["rollout"] = 100
        doc["signed"]["channels"]["stable"][0]["size"] += 1  # tampered after signing
        publisher.write_metadata(doc)
        before = len(publisher.server.artifact_requests())
        with pytest.raises(MetadataRejected) as e:
            await d.updates.apply(wait=True)
        assert e.value.reason == "METADATA_SIGNATURE_INVALID"
        status = d.updates.status()
        assert status.phase is Phase.FAILED and "do not match the content" in status.message
        assert "do not match the content" in d.updates.list_history(1)[0].message
        # Signed by a key this device does not trust.
        publisher.release(models["v2"], "2.1", sign_with=[keys[3]])
        with pytest.raises(MetadataRejected, match="does not trust"):
            await d.updates.check()
        assert len(publisher.server.artifact_requests()) == before
        assert serving(data) == sha256_file(models["v1"])
        assert staging(data) == []


async def test_replayed_older_metadata_is_a_rollback_attack(
    tmp_path: Path, publisher: Publisher, models: dict[str, Path]
) -> None:
    data = tmp_path / "data"
    async with daemon_for(data, publisher) as d:
        publisher.release(models["v1"], "1.0")
        old = publisher.repo.metadata_path.read_bytes()
        await d.updates.check()
        publisher.release(models["v2"], "2.0")
        assert (await d.updates.check()).metadata_version == 2
        publisher.repo.metadata_path.write_bytes(old)  # a mirror replays version 1
        with pytest.raises(MetadataRejected) as e:
            await d.updates.check()
        assert e.value.reason == "METADATA_ROLLBACK"
        assert "version 1, older than version 2" in e.value.message
    # The floor survives a restart.
    async with daemon_for(data, publisher) as d:
        with pytest.raises(MetadataRejected, match="older than version 2"):
            await d.updates.check()


async def test_same_version_with_other_content_is_refused(
    tmp_path: Path, publisher: Publisher, models: dict[str, Path]
) -> None:
    data = tmp_path / "data"
    async with daemon_for(data, publisher) as d:
        publisher.release(models["v1"], "1.0")
        await d.updates.check()
        doc = publisher.metadata()
        doc["signed"]["channels"]["stable"][0]["rollout"] = 50
        key = publisher.keys[0].private
        publisher.repo.metadata_path.write_bytes(
            document_bytes(doc["signed"], [sign(doc["signed"], key)])
        )
        with pytest.raises(MetadataRejected) as e:
            await d.updates.check()
        assert e.value.reason == "METADATA_VERSION_REUSED"


async def test_expired_metadata_is_a_freeze_attack(
    tmp_path: Path, publisher: Publisher, models: dict[str, Path]
) -> None:
    data = tmp_path / "data"
    async with daemon_for(data, publisher) as d:
        publisher.release(models["v1"], "1.0")  # expires in 30 days
        d.updates.clock = lambda: time.time() + 31 * 86400  # a device 31 days later
        with pytest.raises(MetadataRejected) as e:
            await d.updates.apply(wait=True)
        assert e.value.reason == "METADATA_EXPIRED"
        assert "re-sign" in e.value.message
        assert publisher.server.artifact_requests() == []
        assert d.updates.installed() == []


async def test_malformed_metadata_and_path_traversal_rejected_before_download(
    tmp_path: Path, publisher: Publisher, models: dict[str, Path]
) -> None:
    data = tmp_path / "data"
    async with daemon_for(data, publisher) as d:
        publisher.release(models["v1"], "1.0")
        doc = publisher.metadata()
        doc["signed"]["channels"]["stable"][0]["id"] = "../../etc/passwd"
        key = publisher.keys[0].private
        publisher.repo.metadata_path.write_bytes(
            document_bytes(doc["signed"], [sign(doc["signed"], key)])  # validly signed
        )
        with pytest.raises(MetadataRejected) as e:
            await d.updates.apply(wait=True)
        assert e.value.reason == "METADATA_MALFORMED"
        assert "'../../etc/passwd' is not a plain name" in e.value.message
        for raw in (b"{oops", b'{"signed": {"version": "one"}, "signatures": []}'):
            publisher.repo.metadata_path.write_bytes(raw)
            with pytest.raises(MetadataRejected):
                await d.updates.check()
        assert publisher.server.artifact_requests() == []
        assert not (tmp_path / "etc").exists() and d.updates.installed() == []
        assert d.updates.list_history(1)[0].outcome == "failed"


async def test_staged_rollout(
    tmp_path: Path, publisher: Publisher, models: dict[str, Path]
) -> None:
    data = tmp_path / "data"
    async with daemon_for(data, publisher) as d:
        publisher.release(models["v1"], "1.0", rollout=0)
        (available,) = (await d.updates.check()).updates
        assert not available.in_rollout and "staged rollout" in available.note
        _, records = await d.updates.apply(wait=True)
        assert records == []
        # Naming the artifact overrides the rollout.
        _, (record,) = await d.updates.apply(["chat"], wait=True)
        assert record.outcome == "committed"
    # The bucket is stable per device and release and spreads devices evenly.
    assert rollout_bucket("d1", "chat", "1.0") == rollout_bucket("d1", "chat", "1.0")
    inside = sum(rollout_bucket(f"device-{i}", "chat", "1.0") < 10 for i in range(2000))
    assert 140 < inside < 260


async def test_power_gate_refuses_then_force_overrides(
    tmp_path: Path, publisher: Publisher, models: dict[str, Path]
) -> None:
    data = tmp_path / "data"
    async with daemon_for(data, publisher) as d:
        publisher.release(models["v1"], "1.0")
        d.updates.power_ok = lambda: (False, "on battery at 12 %, below the 30 % needed")
        with pytest.raises(PreconditionFailed) as e:
            await d.updates.apply(wait=True)
        assert e.value.reason == "POWER_GATE"
        assert "on battery at 12 %" in e.value.message and "force" in e.value.message
        status = d.updates.status()
        assert status.phase is Phase.DEFERRED and "12 %" in status.message
        assert publisher.server.requests == []  # refused before even checking
        _, (record,) = await d.updates.apply(force=True, wait=True)
        assert record.outcome == "committed"


async def test_bad_requests(tmp_path: Path, publisher: Publisher, models: dict[str, Path]) -> None:
    data = tmp_path / "data"
    async with daemon_for(data, publisher) as d:
        publisher.release(models["v1"], "1.0", min_daemon_version="99.0")
        with pytest.raises(InvalidArgument, match=re.escape("artifact id '../x' is not valid")):
            await d.updates.apply(["../x"])
        with pytest.raises(InvalidArgument, match="channel"):
            await d.updates.check("Not A Channel")
        with pytest.raises(NotFound, match="channel 'beta' is not in the release metadata"):
            await d.updates.check("beta")
        with pytest.raises(NotFound, match="'other' is not in channel stable"):
            await d.updates.apply(["other"])
        with pytest.raises(PreconditionFailed, match=re.escape("needs rustaid 99.0 or newer")):
            await d.updates.apply(["chat"])
        with pytest.raises(InvalidArgument, match="artifact_id is empty"):
            await d.updates.rollback("")
        with pytest.raises(NotFound, match="not managed by the updater"):
            await d.updates.rollback("chat")
        publisher.release(models["v1"], "1.1")
        await d.updates.apply(wait=True)
        with pytest.raises(PreconditionFailed, match="no previous version"):
            await d.updates.rollback("chat")


async def test_a_file_the_operator_put_there_is_never_replaced(
    tmp_path: Path, publisher: Publisher, models: dict[str, Path]
) -> None:
    data = tmp_path / "data"
    (data / "models").mkdir(parents=True)
    (data / "models" / "chat.gguf").write_bytes(models["v3"].read_bytes())
    async with daemon_for(data, publisher) as d:
        publisher.release(models["v1"], "1.0")
        (available,) = (await d.updates.check()).updates
        assert "not managed by the updater" in available.note
        with pytest.raises(PreconditionFailed, match="move it away"):
            await d.updates.apply(["chat"], wait=True)
        assert (data / "models" / "chat.gguf").read_bytes() == models["v3"].read_bytes()


async def test_manual_rollback_and_history(
    tmp_path: Path, publisher: Publisher, models: dict[str, Path]
) -> None:
    data = tmp_path / "data"
    async with daemon_for(data, publisher) as d:
        await install_v1(d, publisher, models)
        publisher.release(models["v2"], "2.0")
        await d.updates.apply(wait=True)
        record = await d.updates.rollback("chat")
        assert (record.from_version, record.to_version, record.outcome) == (
            "2.0",
            "1.0",
            "rolled_back",
        )
        assert serving(data) == sha256_file(models["v1"])
        assert await generates(d)
        (installed,) = d.updates.installed()
        assert (installed.version, installed.previous_version) == ("1.0", "2.0")
        history = d.updates.list_history(50)
        assert [r.outcome for r in history] == ["rolled_back", "committed", "committed"]


async def test_plugin_update_reload_and_rollback(
    tmp_path: Path, publisher: Publisher, plugins: dict[str, Path]
) -> None:
    data = tmp_path / "data"

    def greeter() -> Any:
        return next(p for p in d.plugins.list() if p.id == "greeter")

    async with daemon_for(data, publisher) as d:
        publisher.release(plugins["v1"], "1.0", artifact_id="greeter")
        _, (record,) = await d.updates.apply(wait=True)
        assert record.outcome == "committed"
        assert (greeter().state.value, greeter().version) == ("active", "1.0")
        assert (data / "plugins" / "greeter.py").is_symlink()
        publisher.release(plugins["v2"], "2.0", artifact_id="greeter")
        _, (record,) = await d.updates.apply(wait=True)
        assert record.outcome == "committed"
        assert (greeter().state.value, greeter().version) == ("active", "2.0")
        publisher.release(plugins["broken"], "3.0", artifact_id="greeter")
        _, (record,) = await d.updates.apply(wait=True)
        assert record.outcome == "rolled_back"
        assert "greeter 3.0 cannot find its data" in record.message
        assert (greeter().state.value, greeter().version) == ("active", "2.0")
        assert serving(data, "greeter.py", "plugins") == sha256_file(plugins["v2"])
    # After a restart the plugin loads from its slot like any drop-in.
    async with daemon_for(data, publisher) as d:
        assert (greeter().state.value, greeter().version) == ("active", "2.0")


async def test_key_rotation_reaches_devices(
    tmp_path: Path, publisher: Publisher, models: dict[str, Path], keys: list[Key]
) -> None:
    """Devices configured with key 0 follow root/1.json to keys 1 and 2 (threshold 2)."""
    from rustaid.updates.metadata import parse_public_key

    data = tmp_path / "data"
    publisher.repo.rotate([parse_public_key(k.public) for k in keys[1:3]], threshold=2)
    publisher.repo.sign_root([keys[0].private, keys[1].private, keys[2].private])
    async with daemon_for(data, publisher, keys=[keys[0]]) as d:
        publisher.release(models["v1"], "1.0", sign_with=[keys[1]])
        with pytest.raises(MetadataRejected, match="1 valid signature"):
            await d.updates.check()  # the new threshold is 2
        publisher.repo.sign([keys[2].private])
        assert (await d.updates.check()).metadata_version == 1
        publisher.release(models["v2"], "2.0", sign_with=[keys[0]])  # the retired key
        with pytest.raises(MetadataRejected, match="does not trust"):
            await d.updates.check()
    trust = json.loads((data / "state" / "updates" / "trust.json").read_text())
    assert trust["trust"]["version"] == 1 and trust["trust"]["threshold"] == 2


async def test_updates_not_configured(tmp_path: Path) -> None:
    async with running_daemon(isolated_settings(tmp_path / "data")) as d:
        assert isinstance(d, Daemon)
        with pytest.raises(PreconditionFailed) as e:
            await d.updates.check()
        assert e.value.reason == "UPDATES_NOT_CONFIGURED"
        assert "[updates] repository" in e.value.message
        assert d.updates.status().phase is Phase.IDLE


async def test_bad_config_stops_start_up(tmp_path: Path, publisher: Publisher) -> None:
    data = tmp_path / "data"
    for section, expected in (
        ({"trusted_keys": []}, "needs at least one trusted key"),
        ({"threshold": 2}, "threshold must be between 1"),
        ({"check_interval": "often"}, r"\[updates\] check_interval: expected a duration"),
        ({"maintenance_window": "25:00-26:00"}, "HH:MM-HH:MM"),
        ({"trusted_keys": ["/nonexistent.pub"]}, "cannot read key file"),
        ({"colour": "blue"}, "unknown setting"),
    ):
        config = updates_config(publisher.url, publisher.keys[:1])
        config.update(section)
        write_config(data, config)
        with pytest.raises(InvalidArgument, match=expected):
            Daemon(isolated_settings(data))


async def wait_for(predicate: Callable[[], bool], within: float = 30) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_scheduled_check_applies_and_the_clock_survives_restarts(
    tmp_path: Path, publisher: Publisher, models: dict[str, Path]
) -> None:
    data = tmp_path / "data"
    publisher.release(models["v1"], "1.0")
    async with daemon_for(data, publisher, check_interval="1h", jitter=0) as d:
        # No persisted state yet: the first check is due now (jitter 0).
        await wait_for(lambda: d.updates.installed() != [])
        await wait_for(lambda: d.updates.status().phase is Phase.COMMITTED)
        planned = d.updates.status().next_check
        assert 3500 < planned - time.time() <= 3600
    async with daemon_for(data, publisher, check_interval="1h", jitter=0) as d:
        assert d.updates.status().next_check == pytest.approx(planned)  # not reset


async def test_scheduled_update_is_deferred_on_battery(
    tmp_path: Path, publisher: Publisher, models: dict[str, Path]
) -> None:
    data = tmp_path / "data"
    publisher.release(models["v1"], "1.0")
    write_config(
        data,
        updates_config(publisher.url, publisher.keys[:1], check_interval="1h", jitter=0,
                       retry_interval="10m"),
    )  # fmt: skip
    settings = isolated_settings(data)
    d = Daemon(settings)
    d.updates.power_ok = lambda: (False, "on battery at 20 %, below the 30 % needed")
    await d.start()
    try:
        await wait_for(lambda: d.updates.status().phase is Phase.DEFERRED)
        status = d.updates.status()
        assert "update deferred: on battery at 20 %" in status.message
        assert 590 < status.next_check - time.time() <= 600  # rescheduled with the reason
        assert d.updates.list_history(1)[0].outcome == "deferred"
        assert d.updates.installed() == []
    finally:
        await d.stop()


async def test_one_update_at_a_time_and_a_clean_stop_mid_download(
    tmp_path: Path, publisher: Publisher, models: dict[str, Path]
) -> None:
    data = tmp_path / "data"
    publisher.release(models["v1"], "1.0")
    publisher.server.fault(publisher.artifact_path("1.0"), "stall", 1000, times=-1)
    async with daemon_for(data, publisher, download_timeout=30) as d:
        status, records = await d.updates.apply()  # returns once started
        assert records == [] and status.phase is Phase.DOWNLOADING
        with pytest.raises(PreconditionFailed) as e:
            await d.updates.apply(["chat"])
        assert e.value.reason == "UPDATE_IN_PROGRESS"
        with pytest.raises(PreconditionFailed, match="already running"):
            await d.updates.rollback("chat")
        await wait_for(lambda: d.updates.status().bytes_done > 0)
        # A check while it runs does not hide the update's progress.
        await d.updates.check()
        assert d.updates.status().phase is Phase.DOWNLOADING
    # The daemon stopped (SIGTERM path) in the middle of the download.
    (record,) = [r for r in _history(data) if r["to_version"] == "1.0"]
    assert record["outcome"] == "failed" and "the daemon stopped" in record["message"]
    assert staging(data) == []
    assert not (data / "state" / "updates" / "journal.json").exists()


def _history(data: Path) -> list[dict[str, Any]]:
    lines = (data / "state" / "updates" / "history.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


async def test_restart_after_an_interrupted_manual_rollback_keeps_both_versions(
    tmp_path: Path, publisher: Publisher, models: dict[str, Path]
) -> None:
    """A journal left by a rollback that died in its health check: the device goes back
    to the version it had, and the older version (a valid slot) is not thrown away."""
    from rustaid.updates.journal import Journal, JournalEntry
    from rustaid.updates.metadata import ArtifactKind
    from rustaid.updates.slots import ArtifactSlots

    data = tmp_path / "data"
    async with daemon_for(data, publisher) as d:
        await install_v1(d, publisher, models)
        publisher.release(models["v2"], "2.0")
        await d.updates.apply(wait=True)
    root = data / "state" / "updates"
    slots = ArtifactSlots(root / "artifacts", "chat", ArtifactKind.MODEL, data)
    current = slots.current_slot()
    older = "a" if current == "b" else "b"
    Journal(root / "journal.json").write(
        JournalEntry(
            update_id="manual-1", artifact_id="chat", kind="model", from_version="2.0",
            to_version="1.0", sha256="", size=0, url="", step="health_check",
            from_slot=current, to_slot=older, started=time.time(),
        )
    )  # fmt: skip
    slots.switch(older)  # the rollback had switched before it died
    async with daemon_for(data, publisher) as d:
        (installed,) = d.updates.installed()
        assert (installed.version, installed.previous_version) == ("2.0", "1.0")
        assert serving(data) == sha256_file(models["v2"])
        last = d.updates.list_history(1)[0]
        assert last.update_id == "manual-1" and last.outcome == "rolled_back"
        assert "rolled back to 2.0" in last.message


def _with_device(data: Path, dev: Any) -> None:
    """Point the daemon at a fake sysfs tree (no system bus): heat is all it knows."""
    path = data / "config" / "rustaid.toml"
    path.write_text(path.read_text() + f"[power]\n{dev.toml()}dbus = false\n")


async def test_the_power_gate_reads_the_device_now_not_an_old_reading(
    tmp_path: Path, publisher: Publisher, models: dict[str, Path]
) -> None:
    from tests.power.fakesys import FakeDevice

    dev = FakeDevice(tmp_path / "device")
    dev.zone(0, "cpu-thermal", 50.0, [("passive", 80), ("critical", 100)])
    data = tmp_path / "data"
    publisher.release(models["v1"], "1.0")
    write_config(data, updates_config(publisher.url, publisher.keys[:1]))
    _with_device(data, dev)
    async with running_daemon(isolated_settings(data)) as d:
        assert isinstance(d, Daemon)
        dev.temp(0, 85.0)  # serious, an instant before the request: no poll has seen it
        with pytest.raises(PreconditionFailed) as e:
            await d.updates.apply(wait=True)
        assert e.value.reason == "POWER_GATE" and "thermal state is serious" in e.value.message
        assert d.updates.installed() == []


async def test_a_deferred_update_starts_when_the_device_cools_down(
    tmp_path: Path, publisher: Publisher, models: dict[str, Path]
) -> None:
    from tests.power.fakesys import FakeDevice

    dev = FakeDevice(tmp_path / "device")
    dev.zone(0, "cpu-thermal", 85.0, [("passive", 80), ("critical", 100)])  # serious
    data = tmp_path / "data"
    publisher.release(models["v1"], "1.0")
    write_config(
        data,
        updates_config(publisher.url, publisher.keys[:1], check_interval="1h", jitter=0,
                       retry_interval="1h"),
    )  # fmt: skip
    _with_device(data, dev)
    async with running_daemon(isolated_settings(data)) as d:
        assert isinstance(d, Daemon)
        await wait_for(lambda: d.updates.status().phase is Phase.DEFERRED)
        assert "thermal state is serious" in d.updates.status().message
        assert d.updates.status().next_check - time.time() > 3000  # the retry interval
        dev.temp(0, 50.0)  # cooled down: the quick read sees it within a second
        await wait_for(lambda: [r.outcome for r in d.updates.list_history(5)][:1] == ["committed"])
        assert serving(data) == sha256_file(models["v1"])

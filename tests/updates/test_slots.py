"""A/B slots, the journal's history file and the check schedule, on real files."""

from __future__ import annotations

import json
import random
from datetime import datetime
from pathlib import Path

import pytest

from rustaid.errors import InvalidArgument
from rustaid.updates.config import Window, load_config, parse_duration, parse_window
from rustaid.updates.journal import History, UpdateRecord
from rustaid.updates.metadata import ArtifactKind
from rustaid.updates.schedule import (
    ScheduleState,
    ScheduleStore,
    first_check,
    following_check,
    in_window,
    place_in_window,
)
from rustaid.updates.slots import ArtifactSlots, SlotInfo, managed


def info(version: str, update_id: str = "u1") -> SlotInfo:
    return SlotInfo("chat", "model", version, "ab" * 32, 4, 1.0, update_id)


def staged(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "staging" / "chat.gguf.part"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content)
    return path


def test_install_switch_and_entry_symlink(tmp_path: Path) -> None:
    data = tmp_path / "data"
    slots = ArtifactSlots(
        data / "state" / "updates" / "artifacts", "chat", ArtifactKind.MODEL, data
    )
    assert slots.current_slot() is None and slots.entry_is_ours()
    slots.install("a", staged(tmp_path, b"v1"), info("1.0"))
    assert not slots.entry.exists()  # installed is not visible until switched
    slots.switch("a")
    assert slots.entry.read_bytes() == b"v1"
    assert str(slots.entry.readlink()) == "../state/updates/artifacts/chat/current/chat.gguf"
    slots.install("b", staged(tmp_path, b"v2"), info("2.0", "u2"))
    assert slots.entry.read_bytes() == b"v1"
    slots.switch("b")
    assert slots.entry.read_bytes() == b"v2"  # the entry link never changed, `current` did
    assert slots.info("a").version == "1.0" and slots.info("b").version == "2.0"  # type: ignore[union-attr]
    assert [s.artifact_id for s in managed(slots.dir.parent, data)] == ["chat"]
    slots.switch(None)
    assert not slots.entry.is_symlink() and slots.current_slot() is None


def test_a_file_of_the_operator_is_not_ours(tmp_path: Path) -> None:
    data = tmp_path / "data"
    slots = ArtifactSlots(data / "artifacts", "chat", ArtifactKind.MODEL, data)
    slots.entry.parent.mkdir(parents=True)
    slots.entry.write_bytes(b"mine")
    assert not slots.entry_is_ours()
    slots.entry.unlink()
    slots.entry.symlink_to("/somewhere/else.gguf")
    assert not slots.entry_is_ours()


def test_repair_clears_half_filled_slots_and_fixes_the_entry(tmp_path: Path) -> None:
    data = tmp_path / "data"
    slots = ArtifactSlots(data / "artifacts", "chat", ArtifactKind.MODEL, data)
    slots.install("a", staged(tmp_path, b"v1"), info("1.0"))
    slots.switch("a")
    (slots.dir / "b").mkdir()
    (slots.dir / "b" / "chat.gguf").write_bytes(b"half")  # no slot.json: a crash mid-install
    slots.entry.unlink()  # a crash before the entry link was made
    slots.repair()
    assert not (slots.dir / "b").exists()
    assert slots.entry.read_bytes() == b"v1"


def test_history_skips_a_torn_line(tmp_path: Path) -> None:
    history = History(tmp_path / "history.jsonl")
    record = UpdateRecord("u1", "chat", "model", "", "1.0", "committed", "ok", 1.0, 2.0)
    history.append(record)
    with (tmp_path / "history.jsonl").open("a") as f:
        f.write('{"update_id": "u2", "artifact_id": "ch')  # power cut mid-write
    history.append(UpdateRecord("u3", "chat", "model", "1.0", "2.0", "failed", "x", 3.0, 4.0))
    assert [r.update_id for r in history.list(10)] == ["u3", "u1"]
    assert history.has("u1") and not history.has("u2")


def test_windows() -> None:
    window = parse_window("02:00-05:00")
    assert window == Window(datetime(2030, 1, 1, 2).time(), datetime(2030, 1, 1, 5).time())

    def at(hour: int, minute: int = 0) -> float:
        return datetime(2030, 1, 1, hour, minute).timestamp()  # local time

    assert in_window(window, at(3)) and not in_window(window, at(5))
    night = parse_window("22:30-01:00")
    assert in_window(night, at(23)) and in_window(night, at(0, 30)) and not in_window(night, at(12))
    rng = random.Random(1)
    t = place_in_window(window, at(12), 600, rng)
    assert at(2) + 86400 <= t <= at(2, 10) + 86400  # tomorrow, early in the window
    assert place_in_window(window, at(3), 600, rng) == at(3)
    for bad in ("2-5", "25:00-26:00", "02:00-02:00"):
        with pytest.raises(InvalidArgument, match="maintenance_window"):
            parse_window(bad)


def test_schedule_persists_and_spreads(tmp_path: Path) -> None:
    store = ScheduleStore(tmp_path / "schedule.json")
    assert store.load() == ScheduleState()
    store.save(ScheduleState(last_check=10.0, next_check=5000.0))
    assert store.load() == ScheduleState(10.0, 5000.0)
    rng = random.Random(2)
    # A persisted check still ahead is kept; a missed one happens soon, spread by jitter.
    assert first_check(store.load(), 1000.0, jitter=60, window=None, rng=rng) == 5000.0
    soon = first_check(store.load(), 6000.0, jitter=60, window=None, rng=rng)
    assert 6000.0 <= soon <= 6060.0
    times = [
        following_check(0.0, interval=3600, jitter=600, window=None, rng=rng) for _ in range(200)
    ]
    assert all(3000 <= t <= 4200 for t in times) and max(times) - min(times) > 600
    (tmp_path / "schedule.json").write_text("{garbage")
    assert store.load() == ScheduleState()


def test_config_parsing(tmp_path: Path) -> None:
    assert parse_duration("6h", "x") == 21600 and parse_duration(90, "x") == 90
    assert parse_duration("1.5m", "x") == 90
    key = tmp_path / "release.pub"
    key.write_text("ed25519:" + "ab" * 32 + "\n")
    config = load_config(
        {
            "repository": "https://updates.example.com/rustaid/",
            "trusted_keys": ["release.pub", "ed25519:" + "cd" * 32],
            "threshold": 2,
            "max_artifact_size": "2GiB",
            "artifacts": ["chat"],
            "mirrors": ["https://mirror.example.org/rustaid/"],
            "download_min_rate": "1MiB",
            "download_deadline": "2h",
        },
        tmp_path,
    )
    assert config.mirrors == ("https://mirror.example.org/rustaid",)
    assert config.download_min_rate == 1 << 20 and config.download_deadline_s == 7200
    assert load_config({"download_min_rate": 0}, tmp_path).download_min_rate == 0
    assert config.repository == "https://updates.example.com/rustaid"
    assert config.trust is not None and config.trust.threshold == 2 and len(config.trust.keys) == 2
    assert config.max_artifact_bytes == 2 << 30 and config.artifacts == ("chat",)
    for section, field in (
        ({"repository": "ftp://x"}, "updates.repository"),
        ({"channel": "Stable!"}, "updates.channel"),
        ({"min_battery": 120}, "updates.min_battery"),
        ({"max_thermal": "toasty"}, "updates.max_thermal"),
        ({"artifacts": ["../x"]}, "updates.artifacts"),
        ({"auto_apply": "yes"}, "updates.auto_apply"),
        ({"report_url": "file:///tmp/x"}, "updates.report_url"),
        ({"mirrors": "https://m.example.org"}, "updates.mirrors"),
        ({"mirrors": ["file:///srv/mirror"]}, "updates.mirrors"),
        ({"download_min_rate": "fast"}, "updates.download_min_rate"),
        ({"download_deadline": "soon"}, "updates.download_deadline"),
    ):
        with pytest.raises(InvalidArgument) as e:
            load_config(section, tmp_path)
        assert e.value.field == field


def test_record_fields_round_trip(tmp_path: Path) -> None:
    history = History(tmp_path / "h.jsonl")
    record = UpdateRecord(
        "u", "chat", "model", "1", "2", "rolled_back", "why", 1.0, 2.0, "ab", True
    )
    history.append(record)
    assert history.list(1) == [record]
    assert json.loads((tmp_path / "h.jsonl").read_text())["artifact_at_fault"] is True

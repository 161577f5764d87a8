"""The durable update journal and the history of attempts.

The journal (`state/updates/journal.json`) holds the one update in flight and the step
it has reached; it is rewritten atomically (temp file, fsync, rename, fsync of the
folder) *before* each step starts. After a crash, recovery.py reads it and
ends the update in the old version or the new one, never a mix:

    DOWNLOADING, VERIFYING   nothing is visible yet: drop the staging files
    APPLYING, HEALTH_CHECK   the new slot may be current: switch back to the old slot
    COMMITTING               the health check passed: finish the commit

The history (`state/updates/history.jsonl`) has one JSON line per finished attempt;
a line torn by a crash is skipped when read.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from rustaid.updates.atomic import fsync_dir, remove, write_atomic

log = logging.getLogger(__name__)

HISTORY_KEEP = 1000


class Step(StrEnum):
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    APPLYING = "applying"
    HEALTH_CHECK = "health_check"
    COMMITTING = "committing"


class Outcome(StrEnum):
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    DEFERRED = "deferred"


@dataclass(frozen=True)
class JournalEntry:
    update_id: str
    artifact_id: str
    kind: str
    from_version: str
    to_version: str
    sha256: str
    size: int
    url: str
    step: str
    from_slot: str | None
    to_slot: str
    started: float
    # Whether the model/plugin was loaded before the switch (restored on rollback).
    was_loaded: bool = False

    def at(self, step: Step) -> JournalEntry:
        return replace(self, step=step.value)


@dataclass(frozen=True)
class UpdateRecord:
    update_id: str
    artifact_id: str
    kind: str
    from_version: str
    to_version: str
    outcome: str
    message: str
    started: float
    finished: float
    # SHA-256 of the version attempted (to skip automatic retries of a failed one).
    sha256: str = ""
    # True when the version itself was at fault (health check failed or crashed).
    artifact_at_fault: bool = False


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> JournalEntry | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return JournalEntry(**data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as e:
            # Atomic writes make this unreachable short of disk damage; recovery then
            # repairs every artifact folder from what is on disk.
            log.error("unreadable update journal %s (%s); repairing from disk", self.path, e)
            return None

    def exists(self) -> bool:
        return self.path.exists()

    def write(self, entry: JournalEntry) -> None:
        write_atomic(self.path, json.dumps(asdict(entry), indent=2).encode(), mode=0o600)

    def clear(self) -> None:
        remove(self.path)


class History:
    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, record: UpdateRecord) -> None:
        line = json.dumps(asdict(record), ensure_ascii=False) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        try:
            if os.fstat(fd).st_size:
                # A crash can leave a torn last line; never glue a record onto it.
                with open(self.path, "rb") as f:  # noqa: PTH123
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        line = "\n" + line
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self._compact()

    def records(self) -> list[UpdateRecord]:
        """Oldest first."""
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            if not line.strip():
                continue
            with contextlib.suppress(ValueError, TypeError):
                out.append(UpdateRecord(**json.loads(line)))
        return out

    def list(self, limit: int) -> list[UpdateRecord]:
        """Newest first."""
        return list(reversed(self.records()))[:limit]

    def has(self, update_id: str) -> bool:
        return any(r.update_id == update_id for r in self.records())

    def _compact(self) -> None:
        records = self.records()
        if len(records) <= 2 * HISTORY_KEEP:
            return
        keep = records[-HISTORY_KEEP:]
        data = "".join(json.dumps(asdict(r), ensure_ascii=False) + "\n" for r in keep)
        write_atomic(self.path, data.encode(), mode=0o600)
        fsync_dir(self.path.parent)


def new_update_id() -> str:
    """Sortable by time, unique enough for one device: 20261207T021500-a1b2c3."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)

"""What every part of the updater shares: its settings, its folders under
`state/updates/`, the journal and history kept there, the clock and the device's id."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from rustaid.errors import ResourceExhausted
from rustaid.updates.atomic import make_private_dir, write_atomic
from rustaid.updates.config import UpdatesConfig
from rustaid.updates.journal import History, Journal
from rustaid.updates.metadata import ArtifactKind
from rustaid.updates.results import Installed
from rustaid.updates.schedule import ScheduleStore
from rustaid.updates.slots import ArtifactSlots, managed, other


class Workspace:
    def __init__(
        self,
        config: UpdatesConfig,
        root: Path,
        data_dir: Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.root = root
        self.data_dir = data_dir
        # Read through here by every part, so a test can move the whole updater in time.
        self.clock = clock
        self.artifacts_dir = root / "artifacts"
        self.staging_dir = root / "staging"
        self.journal = Journal(root / "journal.json")
        self.history = History(root / "history.jsonl")
        self.schedule = ScheduleStore(root / "schedule.json")
        self._device_id = ""

    def reconfigure(self, config: UpdatesConfig) -> None:
        """New settings (a reload); a new `device_id` is read again."""
        if config.device_id != self.config.device_id:
            self._device_id = ""
        self.config = config

    def slots(self, artifact_id: str, kind: ArtifactKind) -> ArtifactSlots:
        return ArtifactSlots(self.artifacts_dir, artifact_id, kind, self.data_dir)

    def managed(self) -> list[ArtifactSlots]:
        return managed(self.artifacts_dir, self.data_dir)

    def installed_slots(self, artifact_id: str) -> ArtifactSlots | None:
        for slots in self.managed():
            if slots.artifact_id == artifact_id:
                return slots
        return None

    def installed(self) -> list[Installed]:
        out = []
        for slots in self.managed():
            current = slots.current_slot()
            info = slots.info(current)
            if info is None:
                continue
            previous = slots.info(other(current))
            out.append(
                Installed(
                    artifact_id=slots.artifact_id,
                    kind=slots.kind.value,
                    version=info.version,
                    previous_version=previous.version if previous else "",
                    path=str(slots.entry.relative_to(self.data_dir)),
                    installed_time=info.installed_time,
                )
            )
        return out

    @property
    def device_id(self) -> str:
        if not self._device_id:
            self._device_id = self._load_device_id()
        return self._device_id

    def _load_device_id(self) -> str:
        if self.config.device_id:
            return self.config.device_id
        path = self.root / "device-id"
        with contextlib.suppress(OSError):
            stored = path.read_text(encoding="utf-8").strip()
            if stored:
                return stored
        machine = ""
        with contextlib.suppress(OSError):
            machine = Path("/etc/machine-id").read_text(encoding="utf-8").strip()
        # machine-id(5): never expose it as is; derive an application-specific id.
        value = (
            hashlib.sha256(f"rustaid-updates:{machine}".encode()).hexdigest()[:32]
            if machine
            else uuid.uuid4().hex
        )
        make_private_dir(self.root)
        write_atomic(path, value.encode(), mode=0o600)
        return value


def disk_full(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def writing(where: Path) -> Iterator[None]:
    """A full disk while writing the updater's state is RESOURCE_EXHAUSTED (DISK_FULL)."""
    try:
        yield
    except OSError as e:
        if not disk_full(e):
            raise
        raise ResourceExhausted(
            f"the disk is full ({where}: {e.strerror}); free some space and try again",
            reason="DISK_FULL",
            retry_after_s=60.0,
        ) from None

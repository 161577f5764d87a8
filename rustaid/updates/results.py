"""What the updater reports: its phase and status, the updates a check found and the
artifacts it has installed."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from rustaid.updates.journal import Outcome
from rustaid.updates.metadata import Artifact, Release


class Phase(StrEnum):
    IDLE = "idle"
    CHECKING = "checking"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    APPLYING = "applying"
    HEALTH_CHECK = "health_check"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    DEFERRED = "deferred"


OUTCOME_PHASE = {
    Outcome.COMMITTED: Phase.COMMITTED,
    Outcome.ROLLED_BACK: Phase.ROLLED_BACK,
    Outcome.FAILED: Phase.FAILED,
    Outcome.DEFERRED: Phase.DEFERRED,
}


@dataclass(frozen=True)
class UpdateStatus:
    phase: Phase = Phase.IDLE
    artifact_id: str = ""
    version: str = ""
    bytes_done: int = 0
    bytes_total: int = 0
    message: str = ""
    last_check: float = 0.0
    next_check: float = 0.0
    update_id: str = ""


@dataclass(frozen=True)
class AvailableUpdate:
    artifact: Artifact
    channel: str
    current_version: str
    in_rollout: bool
    # Why it is not applied automatically ("" when it is).
    note: str = ""
    # True when it cannot be applied at all here (not even by name).
    blocked: bool = False

    @property
    def automatic(self) -> bool:
        return self.in_rollout and not self.note


@dataclass(frozen=True)
class CheckResult:
    updates: list[AvailableUpdate]
    metadata_version: int
    checked: float
    channel: str
    release: Release


@dataclass(frozen=True)
class Installed:
    artifact_id: str
    kind: str
    version: str
    previous_version: str
    path: str
    installed_time: float

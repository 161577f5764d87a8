"""UpdateManager: checks, downloads, verifies, switches, health-checks and commits
model and plugin updates, or rolls them back.

One update runs at a time, on the daemon's event loop (blocking work in threads).
Each step is written to the journal before it starts (see journal.py), so a kill -9
anywhere ends, after the restart, in the old version or the new one:

    check      root/N.json chain -> metadata.json (signatures, threshold, version
               floor, expiry) -> what is newer, in rollout and allowed here
    download   staging/<update>/<file>.part, Range resume, size cap
    verify     SHA-256 of the staged file == the signed metadata's
    switch     rename into the inactive slot, rename `current` (slots.py)
    health     rescan + load + generate a few tokens / plugin loads ACTIVE
    commit     history, staging removed, journal cleared

Scheduled checks run with apscheduler (interval + jitter, maintenance window, state
persisted in schedule.json); `RUSTAID_UPDATES_PAUSE_AT=<download|verify|switch|
health_check|commit>` is a test hook that stops an update at that step (it writes
`state/updates/paused-at-<step>` and sleeps) so crash tests can kill the daemon there.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import secrets
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urljoin

from rustaid import __version__
from rustaid.core.events import EventBus
from rustaid.errors import InvalidArgument, NotFound, PreconditionFailed, RustaidError
from rustaid.updates.atomic import make_private_dir, remove, write_atomic
from rustaid.updates.config import UpdatesConfig, load_config
from rustaid.updates.download import (
    Cancelled,
    DownloadFailed,
    download,
    fetch_bytes,
    fetch_required,
    sha256_file,
)
from rustaid.updates.gate import PowerOk, always_ok
from rustaid.updates.journal import (
    History,
    Journal,
    JournalEntry,
    Outcome,
    Step,
    UpdateRecord,
)
from rustaid.updates.metadata import (
    Artifact,
    ArtifactKind,
    MetadataRejected,
    Release,
    Trust,
    canonical_bytes,
    check_artifact_id,
    check_channel,
    format_time,
    next_trust,
    parse_document,
    verify_release,
    version_key,
)
from rustaid.updates.schedule import (
    ScheduleState,
    ScheduleStore,
    first_check,
    in_window,
    place_in_window,
)
from rustaid.updates.slots import ArtifactSlots, SlotInfo, managed, other

if TYPE_CHECKING:
    from rustaid.daemon import Daemon

log = logging.getLogger(__name__)

T = TypeVar("T")

PAUSE_ENV = "RUSTAID_UPDATES_PAUSE_AT"
PAUSE_POINTS = ("download", "verify", "switch", "health_check", "commit")
MAX_ROOT_STEPS = 32
PROGRESS_INTERVAL_S = 0.2
REPORT_TIMEOUT_S = 10.0
JOB_ID = "rustaid-updates-check"


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


_OUTCOME_PHASE = {
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


class HealthCheckFailed(Exception):
    pass


class ArtifactRejected(Exception):
    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


def in_daemon_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> asyncio.Future[T]:
    """Run blocking network or hashing work in a daemon thread: unlike the default
    executor, a thread stuck on a stalled server never holds up the daemon's exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        result: T | None = None
        error: BaseException | None = None
        try:
            result = fn(*args, **kwargs)
        except BaseException as e:
            error = e
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, name="rustaid-updates", daemon=True).start()
    return future


def rollout_bucket(device_id: str, artifact_id: str, version: str) -> int:
    """0..99, stable for a device and a release: the device takes the release when the
    bucket is below the rollout percentage."""
    digest = hashlib.sha256(f"{device_id}/{artifact_id}/{version}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def post_json(url: str, payload: dict[str, Any], timeout: float) -> None:
    import urllib.request

    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", "User-Agent": f"rustaid/{__version__}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        response.read(1 << 16)


class UpdateManager:
    def __init__(
        self,
        daemon: Daemon,
        *,
        power_ok: PowerOk | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.daemon = daemon
        settings = daemon.settings
        self.config: UpdatesConfig = load_config(settings.extra.get("updates"), settings.config_dir)
        self.root = settings.state_dir / "updates"
        self.artifacts_dir = self.root / "artifacts"
        self.staging_dir = self.root / "staging"
        self.journal = Journal(self.root / "journal.json")
        self.history = History(self.root / "history.jsonl")
        self.schedule = ScheduleStore(self.root / "schedule.json")
        self.power_ok: PowerOk = power_ok or always_ok
        self.clock = clock
        self.rng = rng or random.Random()
        self.events: EventBus[UpdateStatus] = EventBus()
        # Each successful check, and each update attempt as it ends (history records):
        # for those who announce them (the D-Bus API's UpdateAvailable / UpdateApplied).
        self.checks: EventBus[CheckResult] = EventBus(maxsize=16)
        self.finished: EventBus[UpdateRecord] = EventBus(maxsize=64)
        self._status = UpdateStatus()
        self._busy = False
        self._task: asyncio.Task[list[UpdateRecord]] | None = None
        self._cancel = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduler: Any = None
        self._pending_reports: list[UpdateRecord] = []
        self._background: set[asyncio.Task[None]] = set()
        self._pause_at = os.environ.get(PAUSE_ENV, "")
        if self._pause_at and self._pause_at not in PAUSE_POINTS:
            raise InvalidArgument(
                f"{PAUSE_ENV}={self._pause_at!r}: use one of {', '.join(PAUSE_POINTS)}"
            )
        self._metadata_version = 0
        self._device_id = ""
        self._schedule_state: ScheduleState | None = None
        # Durations of the last switch and automatic rollback, in ms (benchmarks).
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ life cycle

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    def recover(self) -> list[UpdateRecord]:
        """Start-up, before plugins load and models are scanned: finish or undo what a
        crash interrupted, so the daemon only ever sees whole versions."""
        make_private_dir(self.root)
        make_private_dir(self.staging_dir)
        self.artifacts_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        for marker in self.root.glob("paused-at-*"):
            marker.unlink()
        records = []
        entry = self.journal.read()
        if entry is not None:
            records.append(self._recover_entry(entry))
        elif self.journal.exists():
            self.journal.clear()
        for slots in managed(self.artifacts_dir, self.daemon.settings.data_dir):
            slots.repair()
        for leftover in list(self.staging_dir.iterdir()):
            remove(leftover)
        self._metadata_version = self._stored_release_version()
        self._pending_reports.extend(records)
        if records:
            last = records[-1]
            self._set(
                phase=_OUTCOME_PHASE[Outcome(last.outcome)],
                artifact_id=last.artifact_id,
                version=last.to_version,
                message=last.message,
                update_id=last.update_id,
            )
        return records

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for record in self._pending_reports:
            self._spawn(self._report(record))
        self._pending_reports.clear()
        idle = self._status.phase is Phase.IDLE and not self._status.message
        if not self.enabled:
            if idle:
                self._set(message="updates are not configured ([updates] repository is unset)")
            return
        if self.config.check_interval_s <= 0:
            if idle:
                self._set(message="scheduled checks are off (check_interval = 0)")
            return
        first = first_check(
            self._schedule(),
            self.clock(),
            jitter=self.config.jitter_s,
            window=self.config.window,
            rng=self.rng,
        )
        self._save_schedule(next_check=first)
        # apscheduler takes ~0.1 s to import: after READY=1, not before.
        self._spawn(self._start_scheduler(first))

    async def _start_scheduler(self, first: float) -> None:
        from apscheduler.schedulers.asyncio import AsyncIOScheduler
        from apscheduler.triggers.interval import IntervalTrigger

        scheduler = AsyncIOScheduler(event_loop=self._loop, timezone=UTC)
        scheduler.add_job(
            self._scheduled_check,
            IntervalTrigger(
                seconds=self.config.check_interval_s,
                jitter=int(self.config.jitter_s) or None,
                timezone=UTC,
            ),
            id=JOB_ID,
            next_run_time=datetime.fromtimestamp(first, UTC),
            coalesce=True,
            max_instances=1,
            misfire_grace_time=None,
        )
        scheduler.start()
        self._scheduler = scheduler
        self.events.publish(self.status())

    async def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        self._cancel.set()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._task, timeout=30)
        for task in list(self._background):
            task.cancel()

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ status

    def _schedule(self) -> ScheduleState:
        if self._schedule_state is None:
            self._schedule_state = self.schedule.load()
        return self._schedule_state

    def _save_schedule(self, **changes: float) -> None:
        state = replace(self._schedule(), **changes)
        self.schedule.save(state)
        self._schedule_state = state

    def status(self) -> UpdateStatus:
        state = self._schedule()
        return replace(self._status, last_check=state.last_check, next_check=state.next_check)

    def _set(self, **changes: Any) -> None:
        self._status = replace(self._status, **changes)
        self.events.publish(self.status())

    @property
    def metadata_version(self) -> int:
        return self._metadata_version

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

    def installed(self) -> list[Installed]:
        out = []
        for slots in managed(self.artifacts_dir, self.daemon.settings.data_dir):
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
                    path=str(slots.entry.relative_to(self.daemon.settings.data_dir)),
                    installed_time=info.installed_time,
                )
            )
        return out

    def list_history(self, limit: int) -> list[UpdateRecord]:
        return self.history.list(limit)

    # ------------------------------------------------------------------ checking

    def _require_enabled(self) -> None:
        if not self.enabled:
            raise PreconditionFailed(
                "updates are not configured: set [updates] repository and trusted_keys in "
                f"{self.daemon.settings.config_dir / 'rustaid.toml'}",
                reason="UPDATES_NOT_CONFIGURED",
            )

    async def check(self, channel: str = "") -> CheckResult:
        """Fetch and verify the release metadata; what is newer than what is installed."""
        return await self._check(channel, show=not self._busy)

    async def _check(self, channel: str, *, show: bool) -> CheckResult:
        self._require_enabled()
        channel = check_channel(channel) if channel else self.config.channel
        # While an update runs, a concurrent check must not overwrite its status.
        set_status = self._set if show else (lambda **_: None)
        set_status(
            phase=Phase.CHECKING,
            artifact_id="",
            version="",
            bytes_done=0,
            bytes_total=0,
            update_id="",
            message=f"checking {self.config.repository} (channel {channel})",
        )
        started = self.clock()
        try:
            release = await in_daemon_thread(self._fetch_release)
            artifacts = release.channel(channel)
        except RustaidError as e:
            message = f"update check failed: {e.message}"
            set_status(phase=Phase.FAILED, message=message)
            if isinstance(e, MetadataRejected):
                record = self._record(
                    "", "", "", "", Outcome.FAILED, message, started, update_id=_new_id()
                )
                self._finish_record(record)
            raise
        now = self.clock()
        self._save_schedule(last_check=now)
        wanted = set(self.config.artifacts)
        updates = [
            u
            for a in artifacts
            if (not wanted or a.id in wanted) and (u := self._available(a, channel)) is not None
        ]
        automatic = sum(u.automatic for u in updates)
        set_status(
            phase=Phase.IDLE,
            message=(
                f"metadata version {release.version}: {len(updates)} update(s) available"
                f"{f', {automatic} for this device now' if updates else ''}"
            ),
        )
        result = CheckResult(updates, release.version, now, channel, release)
        self.checks.publish(result)
        return result

    def _trust_path(self) -> Path:
        return self.root / "trust.json"

    def _load_trust(self) -> Trust:
        configured = self.config.trust
        assert configured is not None
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError, RustaidError):
            data = json.loads(self._trust_path().read_text(encoding="utf-8"))
            # Rotations apply while the configured keys stay the same; an operator who
            # changes the configured keys starts over from them.
            if data.get("configured") == configured.fingerprint():
                stored = Trust.from_json(data["trust"])
                if stored.version > configured.version:
                    return stored
        return configured

    def _save_trust(self, trust: Trust) -> None:
        configured = self.config.trust
        assert configured is not None
        data = {"configured": configured.fingerprint(), "trust": trust.to_json()}
        write_atomic(self._trust_path(), json.dumps(data, indent=2).encode(), mode=0o600)

    def _stored_release(self) -> tuple[int, bytes] | None:
        path = self.root / "metadata.json"
        try:
            doc = parse_document(path.read_bytes(), str(path))
            version = doc.signed.get("version")
            if isinstance(version, int) and not isinstance(version, bool):
                return version, canonical_bytes(doc.signed)
        except FileNotFoundError:
            return None
        except (OSError, RustaidError) as e:
            log.error("cannot read the stored release metadata %s: %s", path, e)
        return None

    def _stored_release_version(self) -> int:
        stored = self._stored_release()
        return stored[0] if stored else 0

    def _fetch_release(self) -> Release:
        """Blocking: the root chain, then metadata.json, verified."""
        cfg = self.config
        trust = self._load_trust()
        for _ in range(MAX_ROOT_STEPS):
            name = f"root/{trust.version + 1}.json"
            raw = fetch_bytes(
                f"{cfg.repository}/{name}",
                max_bytes=cfg.max_metadata_bytes,
                timeout=cfg.download_timeout_s,
            )
            if raw is None:
                break
            trust = next_trust(trust, raw, name)
            self._save_trust(trust)
            log.info("trusted keys rotated to root version %d", trust.version)
        raw = fetch_required(
            f"{cfg.repository}/metadata.json",
            max_bytes=cfg.max_metadata_bytes,
            timeout=cfg.download_timeout_s,
        )
        stored = self._stored_release()
        floor = stored[0] if stored else 0
        now = datetime.fromtimestamp(self.clock(), UTC)
        release, doc = verify_release(raw, trust, now=now, floor=floor)
        if stored is not None and release.version == stored[0]:
            if canonical_bytes(doc.signed) != stored[1]:
                raise MetadataRejected(
                    f"metadata.json version {release.version} differs from the version "
                    f"{release.version} this device already trusts; a publisher must raise "
                    "the version for every change",
                    reason="METADATA_VERSION_REUSED",
                )
        else:
            write_atomic(self.root / "metadata.json", raw, mode=0o600)
        self._metadata_version = release.version
        return release

    def _slots(self, artifact_id: str, kind: ArtifactKind) -> ArtifactSlots:
        return ArtifactSlots(self.artifacts_dir, artifact_id, kind, self.daemon.settings.data_dir)

    def _installed_kind(self, artifact_id: str) -> ArtifactSlots | None:
        for slots in managed(self.artifacts_dir, self.daemon.settings.data_dir):
            if slots.artifact_id == artifact_id:
                return slots
        return None

    def _available(self, a: Artifact, channel: str) -> AvailableUpdate | None:
        existing = self._installed_kind(a.id)
        slots = existing or self._slots(a.id, a.kind)
        current = slots.info(slots.current_slot())
        current_version = current.version if current else ""
        if current is not None and version_key(a.version) <= version_key(current.version):
            return None
        in_rollout = rollout_bucket(self.device_id, a.id, a.version) < a.rollout
        note = ""
        blocked = True
        if existing is not None and existing.kind is not a.kind:
            note = f"{a.id} is installed as a {existing.kind.value}, not a {a.kind.value}"
        elif a.min_daemon_version and version_key(__version__) < version_key(a.min_daemon_version):
            note = f"needs rustaid {a.min_daemon_version} or newer (this is {__version__})"
        elif not slots.entry_is_ours():
            note = (
                f"{slots.entry} exists and is not managed by the updater; move it away to let "
                "updates manage it"
            )
        elif a.size > self.config.max_artifact_bytes:
            note = (
                f"{a.size} bytes is more than max_artifact_size ({self.config.max_artifact_bytes})"
            )
        elif failed := self._failed_before(a):
            note = (
                f"failed its health check before (update {failed}); name it in ApplyUpdate "
                "to try again"
            )
            blocked = False
        elif not in_rollout:
            note = f"this device is not in the first {a.rollout} % of the staged rollout"
            blocked = False
        else:
            blocked = False
        return AvailableUpdate(a, channel, current_version, in_rollout, note, blocked)

    def _deferred_already(self, a: Artifact) -> bool:
        for r in reversed(self.history.records()):
            if r.artifact_id == a.id:
                return r.outcome == Outcome.DEFERRED and r.sha256 == a.sha256
        return False

    def _failed_before(self, a: Artifact) -> str:
        for r in self.history.records():
            if r.artifact_id == a.id and r.sha256 == a.sha256 and r.artifact_at_fault:
                return r.update_id
        return ""

    # ------------------------------------------------------------------ applying

    def _gate(self) -> tuple[bool, str]:
        try:
            return self.power_ok()
        except Exception as e:
            return False, f"cannot read the power state: {e}"

    async def apply(
        self,
        artifact_ids: Sequence[str] = (),
        channel: str = "",
        *,
        force: bool = False,
        wait: bool = False,
    ) -> tuple[UpdateStatus, list[UpdateRecord]]:
        """Apply available updates (named ones even outside the rollout). Returns when
        they have started, or with `wait` when they have finished, with one record
        per artifact."""
        self._require_enabled()
        ids = list(dict.fromkeys(artifact_ids))
        for i, artifact_id in enumerate(ids):
            check_artifact_id(artifact_id, f"artifact_ids[{i}]")
        if channel:
            check_channel(channel)
        self._claim()
        try:
            if not force:
                ok, why = await asyncio.to_thread(self._gate)
                if not ok:
                    self._set(phase=Phase.DEFERRED, message=f"update refused: {why}")
                    raise PreconditionFailed(
                        f"update refused: {why}; try again later, or set force to apply anyway",
                        reason="POWER_GATE",
                    )
            result = await self._check(channel, show=True)
            plan = self._plan(result, ids)
            if not plan:
                names = f" for {', '.join(ids)}" if ids else ""
                waiting = [u for u in result.updates if not ids or u.artifact.id in ids]
                why = (
                    "; ".join(f"{u.artifact.id} {u.artifact.version}: {u.note}" for u in waiting)
                    if waiting
                    else "everything is up to date"
                )
                self._set(
                    phase=Phase.IDLE,
                    message=f"nothing to update{names} now: {why} "
                    f"(metadata version {result.metadata_version})",
                )
                self._busy = False
                return self.status(), []
            self._cancel.clear()
            self._task = asyncio.ensure_future(self._run(plan))
        except BaseException:
            self._busy = False
            raise
        await asyncio.sleep(0)  # let the task take its first step (status DOWNLOADING)
        if not wait:
            return self.status(), []
        records = await asyncio.shield(self._task)
        return self.status(), records

    def _claim(self) -> None:
        if self._busy:
            s = self._status
            raise PreconditionFailed(
                f"an update is already running ({s.phase.value} {s.artifact_id} {s.version}"
                "); wait for it to finish (WatchUpdates)".replace("  ", " "),
                reason="UPDATE_IN_PROGRESS",
            )
        self._busy = True

    def _plan(self, result: CheckResult, ids: list[str]) -> list[Artifact]:
        if not ids:
            return [u.artifact for u in result.updates if u.automatic]
        by_id = {u.artifact.id: u for u in result.updates}
        listed = {a.id: a for a in result.release.channel(result.channel)}
        plan = []
        for artifact_id in ids:
            update = by_id.get(artifact_id)
            if update is None:
                if artifact_id not in listed:
                    known = ", ".join(sorted(listed)) or "none"
                    raise NotFound(
                        f"artifact {artifact_id!r} is not in channel {result.channel} "
                        f"(metadata version {result.metadata_version}); artifacts: {known}",
                        reason="ARTIFACT_NOT_FOUND",
                    )
                continue  # installed already at this version or newer
            # Naming an artifact overrides the staged rollout and retries a failed one.
            if update.blocked:
                raise PreconditionFailed(
                    f"cannot apply {artifact_id} {update.artifact.version}: {update.note}",
                    reason="UPDATE_NOT_APPLICABLE",
                )
            plan.append(update.artifact)
        return plan

    async def _run(self, plan: list[Artifact]) -> list[UpdateRecord]:
        records = []
        try:
            for artifact in plan:
                records.append(await self._update_one(artifact))
        finally:
            self._busy = False
        return records

    def _record(
        self,
        artifact_id: str,
        kind: str,
        from_version: str,
        to_version: str,
        outcome: Outcome,
        message: str,
        started: float,
        *,
        update_id: str,
        sha256: str = "",
        at_fault: bool = False,
    ) -> UpdateRecord:
        return UpdateRecord(
            update_id=update_id,
            artifact_id=artifact_id,
            kind=kind,
            from_version=from_version,
            to_version=to_version,
            outcome=outcome.value,
            message=message,
            started=started,
            finished=self.clock(),
            sha256=sha256,
            artifact_at_fault=at_fault,
        )

    def _finish_record(self, record: UpdateRecord) -> UpdateRecord:
        if not self.history.has(record.update_id):
            self.history.append(record)
        self.finished.publish(record)
        log_at = log.info if record.outcome == Outcome.COMMITTED else log.warning
        log_at("update %s: %s", record.outcome, record.message)
        if self._loop is not None:
            self._spawn(self._report(record))
        else:
            self._pending_reports.append(record)
        return record

    def _pause(self, point: str) -> None:
        """Test hook (blocking; for worker threads)."""
        if self._pause_at != point:
            return
        (self.root / f"paused-at-{point}").write_text(str(os.getpid()))
        log.warning("%s=%s: the update stops here until the daemon is killed", PAUSE_ENV, point)
        while not self._cancel.is_set():
            time.sleep(0.05)

    async def _apause(self, point: str) -> None:
        if self._pause_at != point:
            return
        (self.root / f"paused-at-{point}").write_text(str(os.getpid()))
        log.warning("%s=%s: the update stops here until the daemon is killed", PAUSE_ENV, point)
        await asyncio.Event().wait()  # until cancelled or killed

    def _progress(self, artifact: Artifact) -> Callable[[int], None]:
        loop = asyncio.get_running_loop()
        last = [0.0]

        def report(done: int) -> None:
            now = time.monotonic()
            if done < artifact.size and now - last[0] < PROGRESS_INTERVAL_S:
                return
            last[0] = now
            loop.call_soon_threadsafe(lambda: self._set(bytes_done=done))

        return report

    async def _update_one(self, a: Artifact) -> UpdateRecord:
        update_id = _new_id()
        started = self.clock()
        slots = self._installed_kind(a.id) or self._slots(a.id, a.kind)
        current_slot = slots.current_slot()
        current = slots.info(current_slot)
        from_version = current.version if current else ""
        kept = f"{from_version} kept" if from_version else "nothing was installed"
        self._set(
            phase=Phase.DOWNLOADING,
            artifact_id=a.id,
            version=a.version,
            bytes_done=0,
            bytes_total=a.size,
            update_id=update_id,
            message=f"downloading {a.id} {a.version} ({a.size} bytes)",
        )

        def fail(message: str, outcome: Outcome = Outcome.FAILED) -> UpdateRecord:
            self._set(phase=_OUTCOME_PHASE[outcome], message=message)
            record = self._record(
                a.id, a.kind.value, from_version, a.version, outcome, message, started,
                update_id=update_id, sha256=a.sha256,
            )  # fmt: skip
            return self._finish_record(record)

        # Checks that need no download.
        if slots.kind is not a.kind:
            return fail(f"{a.id} is installed as a {slots.kind.value}, not a {a.kind.value}")
        if not slots.entry_is_ours():
            return fail(
                f"{slots.entry} exists and is not managed by the updater; move it away to let "
                f"updates manage {a.id}"
            )
        free = shutil.disk_usage(self.staging_dir).free
        if free < a.size + (64 << 20):
            return fail(f"not enough disk space for {a.id} {a.version}: {a.size} bytes needed, "
                        f"{free} free")  # fmt: skip
        to_slot = other(current_slot)
        stage = make_private_dir(self.staging_dir / update_id)
        part = stage / (slots.filename + ".part")
        entry = JournalEntry(
            update_id=update_id,
            artifact_id=a.id,
            kind=a.kind.value,
            from_version=from_version,
            to_version=a.version,
            sha256=a.sha256,
            size=a.size,
            url=urljoin(self.config.repository + "/", a.url),
            step=Step.DOWNLOADING.value,
            from_slot=current_slot,
            to_slot=to_slot,
            started=started,
        )
        self.journal.write(entry)
        try:
            try:
                result = await in_daemon_thread(
                    download,
                    entry.url,
                    part,
                    a.size,
                    timeout=self.config.download_timeout_s,
                    attempts=self.config.download_attempts,
                    backoff=self.config.retry_backoff_s,
                    progress=self._progress(a),
                    cancel=self._cancel,
                    after_first_chunk=lambda: self._pause("download"),
                )
                log.info(
                    "downloaded %s %s: %d bytes in %d request(s)%s",
                    a.id, a.version, result.received, result.requests,
                    f", resumed at byte {result.resumed_from}" if result.resumed_from else "",
                )  # fmt: skip
                entry = entry.at(Step.VERIFYING)
                self.journal.write(entry)
                self._set(
                    phase=Phase.VERIFYING,
                    bytes_done=a.size,
                    message=f"verifying the SHA-256 of {a.id} {a.version}",
                )
                await self._apause("verify")
                digest = await in_daemon_thread(sha256_file, part, cancel=self._cancel)
                if digest != a.sha256:
                    raise ArtifactRejected(
                        f"SHA-256 mismatch: the download hashes to {digest[:16]}..., the signed "
                        f"metadata declares {a.sha256[:16]}... (corrupted or tampered)",
                        "ARTIFACT_HASH_MISMATCH",
                    )
            except (DownloadFailed, ArtifactRejected) as e:
                remove(stage)
                message = f"{a.id} {a.version} not installed: {e}; {kept}"
                record = fail(message)
                self.journal.clear()
                return record
            return await self._switch_and_check(
                entry, slots, a.version, install_from=part, stage=stage
            )
        except (asyncio.CancelledError, Cancelled):
            self._cancel.set()
            self._recover_now()
            raise

    def _recover_now(self) -> None:
        entry = self.journal.read()
        if entry is not None:
            self._recover_entry(entry, crashed=False)

    def _is_active(self, slots: ArtifactSlots) -> bool:
        if slots.kind is ArtifactKind.MODEL:
            return any(e.id == slots.artifact_id for e in self.daemon.engine.loaded())
        record = self._plugin_record(slots)
        return record is not None and record.state.value == "active"

    def _plugin_record(self, slots: ArtifactSlots) -> Any:
        for record in self.daemon.plugins.list():
            if record.path == str(slots.entry):
                return record
        return None

    async def _switch_and_check(
        self,
        entry: JournalEntry,
        slots: ArtifactSlots,
        version: str,
        *,
        install_from: Path | None,
        stage: Path | None,
        manual_rollback: bool = False,
    ) -> UpdateRecord:
        """Switch to entry.to_slot, hot-swap, health-check; commit or switch back."""
        a_id, kind = entry.artifact_id, slots.kind
        entry = replace(entry, step=Step.APPLYING.value, was_loaded=self._is_active(slots))
        self.journal.write(entry)
        self._set(phase=Phase.APPLYING, message=f"switching {a_id} to {version}")
        if install_from is not None:
            info = SlotInfo(
                artifact_id=a_id,
                kind=kind.value,
                version=version,
                sha256=entry.sha256,
                size=entry.size,
                installed_time=self.clock(),
                update_id=entry.update_id,
            )
            await asyncio.to_thread(slots.install, entry.to_slot, install_from, info)
        t0 = time.perf_counter()
        await asyncio.to_thread(slots.switch, entry.to_slot)
        switched_s = time.perf_counter() - t0
        await self._apause("switch")
        entry = entry.at(Step.HEALTH_CHECK)
        self.journal.write(entry)
        self._set(phase=Phase.HEALTH_CHECK, message=f"health check of {a_id} {version}")
        try:
            t0 = time.perf_counter()
            await self._activate(slots)
            # Rename to "the next request gets the new version" (models: the registry
            # has it; loading happens on first use and is not counted).
            self.timings["switch_ms"] = (switched_s + time.perf_counter() - t0) * 1000
            await self._apause("health_check")
            await asyncio.wait_for(
                self._health_check(slots, entry.was_loaded), self.config.health_timeout_s
            )
        except Exception as e:  # whatever goes wrong here, the old version comes back
            why = str(e) or f"no result within {self.config.health_timeout_s:g} s"
            if isinstance(e, RustaidError):
                why = e.message
            elif not isinstance(e, HealthCheckFailed | TimeoutError):
                log.exception("health check of %s %s raised", a_id, version)
                why = f"{type(e).__name__}: {e}"
            back = entry.from_version or "nothing (removed)"
            await self._switch_back(entry, slots, clear=not manual_rollback)
            what = "rollback to" if manual_rollback else "update to"
            message = f"{what} {a_id} {version} failed its health check: {why}; back on {back}"
            # A failed manual rollback leaves things as they were: that is a failure.
            outcome = Outcome.FAILED if manual_rollback else Outcome.ROLLED_BACK
            self._set(phase=_OUTCOME_PHASE[outcome], message=message)
            record = self._record(
                a_id, kind.value, entry.from_version, version, outcome, message,
                entry.started, update_id=entry.update_id, sha256=entry.sha256,
                at_fault=not manual_rollback,
            )  # fmt: skip
            self._finish_record(record)
            if stage is not None:
                remove(stage)
            self.journal.clear()
            return record
        entry = entry.at(Step.COMMITTING)
        self.journal.write(entry)
        await self._apause("commit")
        if manual_rollback:
            message = f"rolled {a_id} back from {entry.from_version} to {version}"
            outcome = Outcome.ROLLED_BACK
        else:
            message = f"{a_id} updated from {entry.from_version or 'nothing'} to {version}"
            outcome = Outcome.COMMITTED
        record = self._record(
            a_id, kind.value, entry.from_version, version, outcome, message, entry.started,
            update_id=entry.update_id, sha256=entry.sha256,
        )  # fmt: skip
        self._finish_record(record)
        if stage is not None:
            remove(stage)
        self.journal.clear()
        self._set(phase=_OUTCOME_PHASE[outcome], message=message)
        return record

    async def _activate(self, slots: ArtifactSlots) -> None:
        """Make the running daemon use what `current` points at now."""
        if slots.kind is ArtifactKind.MODEL:
            await self.daemon.rescan_async()
            return
        record = self._plugin_record(slots)
        plugins = self.daemon.plugins
        if slots.current_slot() is None:
            if record is not None and record.state.value in ("active", "inactive"):
                await asyncio.to_thread(plugins.unload, record.id)
            return
        if record is None:
            record = await asyncio.to_thread(plugins.load, slots.filename)
        elif record.state.value in ("active", "inactive"):
            record = await asyncio.to_thread(plugins.reload, record.id)
        else:
            record = await asyncio.to_thread(plugins.load, record.id)
        if record.state.value != "active":
            raise HealthCheckFailed(f"plugin {record.id} did not start: {record.error}")

    async def _health_check(self, slots: ArtifactSlots, was_loaded: bool) -> None:
        if slots.kind is ArtifactKind.PLUGIN:
            return  # _activate already required ACTIVE (its startup hook passed)
        from rustaid.core.engine import Done, GenerationRequest
        from rustaid.core.registry import ModelState
        from rustaid.core.scheduler import Priority
        from rustaid.providers import GenerationParams

        model_id = slots.artifact_id
        current = slots.current_slot()
        assert current is not None
        st = slots.payload(current).stat()
        try:
            entry = self.daemon.registry.get(model_id)
        except NotFound:
            entry = None
        # The registry must describe the new file, not keep the old entry (it keeps one
        # while a replacement looks incomplete).
        if entry is None or (entry.size_bytes, entry.mtime) != (st.st_size, st.st_mtime):
            problem = _gguf_problem(slots.payload(current))
            raise HealthCheckFailed(
                problem or f"the model registry does not list the new file of {model_id}"
            )
        if entry.state is ModelState.ERROR:
            raise HealthCheckFailed(entry.error)
        request = GenerationRequest(
            model_id=model_id,
            prompt=self.config.health_prompt,
            params=GenerationParams(max_tokens=self.config.health_tokens, temperature=0.0, seed=0),
            priority=Priority.BACKGROUND,
            # Unloaded right after, unless it was loaded before the update.
            keep_alive_s=None if was_loaded else 0.0,
        )
        done = None
        async for event in self.daemon.engine.generate(request):
            if isinstance(event, Done):
                done = event
        if done is None:
            raise HealthCheckFailed("generation ended without a result")

    async def _switch_back(self, entry: JournalEntry, slots: ArtifactSlots, *, clear: bool) -> None:
        t0 = time.perf_counter()
        previous = entry.from_slot if slots.info(entry.from_slot) is not None else None
        if previous is None and slots.kind is ArtifactKind.PLUGIN:
            record = self._plugin_record(slots)
            if record is not None and record.state.value in ("active", "inactive"):
                await asyncio.to_thread(self.daemon.plugins.unload, record.id)
        await asyncio.to_thread(slots.switch, previous)
        if clear:
            await asyncio.to_thread(slots.clear, entry.to_slot)
        try:
            await self._activate(slots)
            self.timings["rollback_ms"] = (time.perf_counter() - t0) * 1000
            if slots.kind is ArtifactKind.MODEL and entry.was_loaded and previous is not None:
                await self.daemon.engine.load(slots.artifact_id)
        except (HealthCheckFailed, RustaidError) as e:
            log.error("the previous version of %s does not come back up: %s", entry.artifact_id, e)

    # ------------------------------------------------------------------ recovery

    def _recover_entry(self, entry: JournalEntry, *, crashed: bool = True) -> UpdateRecord:
        """Filesystem only (no plugins or models are touched): end `entry` in the old
        version or, once its health check has passed, the new one."""
        why = "the daemon stopped (crash, kill or power loss)" if crashed else "the daemon stopped"
        try:
            step = Step(entry.step)
            kind = ArtifactKind(entry.kind)
        except ValueError:
            step, kind = Step.DOWNLOADING, ArtifactKind.MODEL
        slots = self._slots(entry.artifact_id, kind)
        at_fault = False
        if step in (Step.DOWNLOADING, Step.VERIFYING):
            outcome = Outcome.FAILED
            message = (
                f"{entry.artifact_id} {entry.to_version} not installed: {why} while "
                f"{step.value}; {entry.from_version or 'nothing'} kept; it is tried again at "
                "the next check"
            )
        elif step in (Step.APPLYING, Step.HEALTH_CHECK):
            previous = entry.from_slot if slots.info(entry.from_slot) is not None else None
            slots.switch(previous)
            target = slots.info(entry.to_slot)
            if entry.to_slot != previous and (
                target is None or target.update_id == entry.update_id
            ):
                slots.clear(entry.to_slot)
            outcome = Outcome.ROLLED_BACK
            # A version whose health check took the daemon down is not retried
            # automatically (a crash loop otherwise).
            at_fault = step is Step.HEALTH_CHECK and crashed
            during = "the switch" if step is Step.APPLYING else "the health check"
            message = (
                f"{entry.artifact_id} {entry.to_version}: {why} during {during}; rolled back "
                f"to {entry.from_version or 'nothing (removed)'}"
            )
        else:  # COMMITTING: the health check passed
            if slots.current_slot() != entry.to_slot and slots.info(entry.to_slot) is not None:
                slots.switch(entry.to_slot)
            outcome = Outcome.COMMITTED
            message = (
                f"{entry.artifact_id} updated from {entry.from_version or 'nothing'} to "
                f"{entry.to_version} (commit completed after a restart)"
            )
        record = UpdateRecord(
            update_id=entry.update_id,
            artifact_id=entry.artifact_id,
            kind=entry.kind,
            from_version=entry.from_version,
            to_version=entry.to_version,
            outcome=outcome.value,
            message=message,
            started=entry.started,
            finished=self.clock(),
            sha256=entry.sha256,
            artifact_at_fault=at_fault,
        )
        if not self.history.has(record.update_id):
            self.history.append(record)
        remove(self.staging_dir / entry.update_id)
        self.journal.clear()
        log.warning("recovered an interrupted update: %s", message)
        return record

    # ------------------------------------------------------------------ rollback

    async def rollback(self, artifact_id: str) -> UpdateRecord:
        """Switch an artifact back to the version in its other slot (health-checked)."""
        if not artifact_id:
            raise InvalidArgument(
                "artifact_id is empty: give an artifact id from GetUpdateStatus",
                field="artifact_id",
            )
        check_artifact_id(artifact_id, "artifact_id")
        if self._busy:
            self._claim()  # raises UPDATE_IN_PROGRESS with what is running
        slots = self._installed_kind(artifact_id)
        if slots is None:
            everything = managed(self.artifacts_dir, self.daemon.settings.data_dir)
            known = ", ".join(s.artifact_id for s in everything)
            raise NotFound(
                f"artifact {artifact_id!r} is not managed by the updater; managed: "
                f"{known or 'none'}",
                reason="ARTIFACT_NOT_FOUND",
            )
        current_slot = slots.current_slot()
        current = slots.info(current_slot)
        previous = slots.info(other(current_slot))
        if current is None or previous is None:
            raise PreconditionFailed(
                f"{artifact_id} has no previous version to roll back to",
                reason="NO_PREVIOUS_VERSION",
            )
        self._claim()
        try:
            entry = JournalEntry(
                update_id=_new_id(),
                artifact_id=artifact_id,
                kind=slots.kind.value,
                from_version=current.version,
                to_version=previous.version,
                sha256=previous.sha256,
                size=previous.size,
                url="",
                step=Step.APPLYING.value,
                from_slot=current_slot,
                to_slot=other(current_slot),
                started=self.clock(),
            )
            self._set(
                artifact_id=artifact_id,
                version=previous.version,
                update_id=entry.update_id,
                bytes_done=0,
                bytes_total=0,
            )
            return await self._switch_and_check(
                entry, slots, previous.version, install_from=None, stage=None,
                manual_rollback=True,
            )  # fmt: skip
        except asyncio.CancelledError:
            self._recover_now()
            raise
        finally:
            self._busy = False

    # ------------------------------------------------------------------ schedule

    async def _scheduled_check(self) -> None:
        now = self.clock()
        defer_until = 0.0
        try:
            if self._busy:
                return
            try:
                result = await self._check("", show=True)
            except RustaidError:
                return
            plan = [u.artifact for u in result.updates if u.automatic]
            if not plan or not self.config.auto_apply:
                return
            reason = ""
            if not in_window(self.config.window, now):
                reason = f"outside the maintenance window {self.config.window}"
                defer_until = place_in_window(
                    self.config.window, now, self.config.jitter_s, self.rng
                )
            else:
                ok, why = await asyncio.to_thread(self._gate)
                if not ok:
                    reason = why
                    defer_until = now + self.config.retry_interval_s
            if reason:
                when = format_time(datetime.fromtimestamp(defer_until, UTC))
                message = f"update deferred: {reason}; next try at {when}"
                self._set(phase=Phase.DEFERRED, message=message)
                for a in plan:
                    if self._deferred_already(a):
                        continue  # one record per deferred release, not one per retry
                    slots = self._installed_kind(a.id) or self._slots(a.id, a.kind)
                    info = slots.info(slots.current_slot())
                    self._finish_record(
                        self._record(
                            a.id, a.kind.value, info.version if info else "", a.version,
                            Outcome.DEFERRED, message, now, update_id=_new_id(),
                            sha256=a.sha256,
                        )
                    )  # fmt: skip
                return
            self._claim()
            self._cancel.clear()
            self._task = asyncio.ensure_future(self._run(plan))
            await asyncio.shield(self._task)
        finally:
            self._reschedule(defer_until)

    def _reschedule(self, at: float) -> None:
        scheduler = self._scheduler
        job = scheduler.get_job(JOB_ID) if scheduler is not None else None
        if job is None:
            return
        planned = job.next_run_time.timestamp() if job.next_run_time else self.clock()
        target = at or place_in_window(self.config.window, planned, self.config.jitter_s, self.rng)
        if abs(target - planned) > 0.001:
            job.modify(next_run_time=datetime.fromtimestamp(target, UTC))
        self._save_schedule(next_check=target)
        self.events.publish(self.status())

    # ------------------------------------------------------------------ reports

    def report_payload(self, record: UpdateRecord) -> dict[str, Any]:
        def iso(t: float) -> str:
            return format_time(datetime.fromtimestamp(t, UTC)) if t else ""

        attempt = asdict(record)
        attempt["started"] = iso(record.started)
        attempt["finished"] = iso(record.finished)
        return {
            "device_id": self.device_id,
            "daemon_version": __version__,
            "time": iso(self.clock()),
            "channel": self.config.channel,
            "metadata_version": self._metadata_version,
            "attempt": attempt,
            "installed": [
                {
                    "artifact_id": i.artifact_id,
                    "kind": i.kind,
                    "version": i.version,
                    "previous_version": i.previous_version,
                }
                for i in self.installed()
            ],
        }

    async def _report(self, record: UpdateRecord) -> None:
        url = self.config.report_url
        if not url:
            return
        payload = self.report_payload(record)
        try:
            await in_daemon_thread(post_json, url, payload, REPORT_TIMEOUT_S)
        except Exception as e:
            log.warning("could not POST the update report to %s: %s", url, e)


def _gguf_problem(path: Path) -> str:
    from rustaid.core.gguf import GGUFError, read_gguf

    try:
        read_gguf(path)
    except (GGUFError, OSError) as e:
        return f"unreadable GGUF file: {e}"
    return ""


def _new_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)


# Re-exported for the services and tests.
__all__ = [
    "PAUSE_ENV",
    "PAUSE_POINTS",
    "AvailableUpdate",
    "CheckResult",
    "HealthCheckFailed",
    "Installed",
    "Phase",
    "ScheduleState",
    "UpdateManager",
    "UpdateStatus",
    "rollout_bucket",
]

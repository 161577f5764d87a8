"""UpdateManager: the one object the daemon, the services and the D-Bus API use for
updates of models and plugins. It wires the parts, each with one job:

    checker.py    root/N.json chain -> metadata.json (signatures, threshold, version
                  floor, expiry) -> what is newer, in rollout and allowed here
    installer.py  download to staging (Range resume, size cap) -> verify the SHA-256
                  -> switch slots (slots.py) -> health check -> commit, or switch back
    recovery.py   after a crash or a stop: the journal's update ends in the old
                  version or the new one
    scheduler.py  scheduled checks (apscheduler, maintenance window) and the power gate
    reporter.py   status, history, watchers and the report to `report_url`

One update runs at a time, on the daemon's event loop (blocking work in threads).
Each step is written to the journal before it starts (journal.py), so a kill -9
anywhere ends, after the restart, in the old version or the new one.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rustaid.core.events import EventBus
from rustaid.errors import NotFound, PreconditionFailed, ResourceExhausted
from rustaid.updates.checker import Checker, rollout_bucket
from rustaid.updates.config import UpdatesConfig, load_config
from rustaid.updates.gate import PowerOk
from rustaid.updates.installer import (
    PAUSE_POINTS,
    HealthCheckFailed,
    Installer,
    PauseHook,
)
from rustaid.updates.journal import History, Journal, Outcome, UpdateRecord
from rustaid.updates.metadata import Artifact, check_artifact_id, check_channel
from rustaid.updates.recovery import Recovery
from rustaid.updates.reporter import Reporter
from rustaid.updates.results import (
    OUTCOME_PHASE,
    AvailableUpdate,
    CheckResult,
    Installed,
    Phase,
    UpdateStatus,
)
from rustaid.updates.schedule import ScheduleState
from rustaid.updates.scheduler import Scheduler
from rustaid.updates.workspace import Workspace

if TYPE_CHECKING:
    from rustaid.config import Settings
    from rustaid.updates.host import UpdateHost


class UpdateManager:
    def __init__(
        self,
        daemon: UpdateHost,
        *,
        power_ok: PowerOk | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        settings = daemon.settings
        config = load_config(settings.extra.get("updates"), settings.config_dir)
        self._ws = Workspace(config, settings.state_dir / "updates", settings.data_dir, clock)
        self._reporter = Reporter(self._ws, lambda: self._checker.metadata_version)
        self._checker = Checker(self._ws, self._reporter, lambda: daemon.settings)
        self._recovery = Recovery(self._ws)
        self._installer = Installer(
            self._ws,
            self._reporter,
            self._recovery,
            engine=daemon.engine,
            registry=daemon.registry,
            plugins=daemon.plugins,
            rescan=daemon.rescan_async,
        )
        self._scheduler = Scheduler(
            self._ws, self._reporter, self._checker, self._installer, power_ok=power_ok, rng=rng
        )

    # ------------------------------------------------------------------ the parts' state

    @property
    def config(self) -> UpdatesConfig:
        return self._ws.config

    @property
    def enabled(self) -> bool:
        return self._ws.config.enabled

    @property
    def root(self) -> Path:
        return self._ws.root

    @property
    def journal(self) -> Journal:
        return self._ws.journal

    @property
    def history(self) -> History:
        return self._ws.history

    @property
    def clock(self) -> Callable[[], float]:
        return self._ws.clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self._ws.clock = clock

    @property
    def power_ok(self) -> PowerOk:
        return self._scheduler.power_ok

    @power_ok.setter
    def power_ok(self, gate: PowerOk) -> None:
        self._scheduler.power_ok = gate

    @property
    def refresh_device(self) -> Callable[[], Awaitable[object]] | None:
        """Reads the device afresh before the power gate decides (set by the daemon)."""
        return self._scheduler.refresh_device

    @refresh_device.setter
    def refresh_device(self, refresh: Callable[[], Awaitable[object]] | None) -> None:
        self._scheduler.refresh_device = refresh

    @property
    def pause_at(self) -> PauseHook | None:
        """Holds an update at a step (crash tests; see rustaid.testing.update_pause)."""
        return self._installer.pause_at

    @pause_at.setter
    def pause_at(self, hook: PauseHook | None) -> None:
        self._installer.pause_at = hook

    @property
    def events(self) -> EventBus[UpdateStatus]:
        return self._reporter.events

    @property
    def checks(self) -> EventBus[CheckResult]:
        return self._reporter.checks

    @property
    def finished(self) -> EventBus[UpdateRecord]:
        return self._reporter.finished

    @property
    def timings(self) -> dict[str, float]:
        """Durations of the last switch and automatic rollback, in ms (benchmarks)."""
        return self._installer.timings

    @property
    def metadata_version(self) -> int:
        return self._checker.metadata_version

    @property
    def device_id(self) -> str:
        return self._ws.device_id

    # ------------------------------------------------------------------ life cycle

    def recover(self) -> list[UpdateRecord]:
        """Start-up, before plugins load and models are scanned: finish or undo what a
        crash interrupted, so the daemon only ever sees whole versions."""
        records = self._recovery.at_start()
        self._checker.remember_stored_release()
        self._reporter.queue_reports(records)
        if records:
            last = records[-1]
            self._reporter.set(
                phase=OUTCOME_PHASE[Outcome(last.outcome)],
                artifact_id=last.artifact_id,
                version=last.to_version,
                message=last.message,
                update_id=last.update_id,
            )
        return records

    async def start(self) -> None:
        self._reporter.start()
        self._scheduler.start()

    async def stop(self) -> None:
        self._scheduler.stop()
        await self._installer.stop()
        self._reporter.stop()

    def device_changed(self) -> None:
        self._scheduler.device_changed()

    def settings_replaced(self, _old: Settings, new: Settings) -> None:
        """A reload (SettingsSource listener; the section was checked already): the
        new `[updates]` applies to the next check and update, and the schedule is
        re-planned when its interval, jitter, window or repository changed. An update
        that is running finishes with the settings it started with."""
        config = load_config(new.extra.get("updates"), new.config_dir)
        old = self._ws.config
        if config == old:
            return
        self._ws.reconfigure(config)
        self._scheduler.reconfigure(old)

    # ------------------------------------------------------------------ status

    def status(self) -> UpdateStatus:
        return self._reporter.status()

    def installed(self) -> list[Installed]:
        return self._ws.installed()

    def list_history(self, limit: int) -> list[UpdateRecord]:
        return self._reporter.list_history(limit)

    def report_payload(self, record: UpdateRecord) -> dict[str, Any]:
        return self._reporter.report_payload(record)

    # ------------------------------------------------------------------ requests

    async def check(self, channel: str = "") -> CheckResult:
        """Fetch and verify the release metadata; what is newer than what is installed."""
        return await self._checker.check(channel, show=not self._installer.busy)

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
        self._checker.require_enabled()
        ids = list(dict.fromkeys(artifact_ids))
        for i, artifact_id in enumerate(ids):
            check_artifact_id(artifact_id, f"artifact_ids[{i}]")
        if channel:
            check_channel(channel)
        installer = self._installer
        installer.claim()
        try:
            if not force:
                ok, why = await self._scheduler.gate_now()
                if not ok:
                    self._reporter.set(phase=Phase.DEFERRED, message=f"update refused: {why}")
                    raise PreconditionFailed(
                        f"update refused: {why}; try again later, or set force to apply anyway",
                        reason="POWER_GATE",
                    )
            result = await self._checker.check(channel, show=True)
            plan = _plan(result, ids)
            if not plan:
                names = f" for {', '.join(ids)}" if ids else ""
                waiting = [u for u in result.updates if not ids or u.artifact.id in ids]
                why = (
                    "; ".join(f"{u.artifact.id} {u.artifact.version}: {u.note}" for u in waiting)
                    if waiting
                    else "everything is up to date"
                )
                self._reporter.set(
                    phase=Phase.IDLE,
                    message=f"nothing to update{names} now: {why} "
                    f"(metadata version {result.metadata_version})",
                )
                installer.busy = False
                return self.status(), []
            task = installer.start(plan)
        except BaseException:
            installer.busy = False
            raise
        await asyncio.sleep(0)  # let the task take its first step (status DOWNLOADING)
        if not wait:
            return self.status(), []
        records = await asyncio.shield(task)
        if installer.disk_full:
            raise ResourceExhausted(
                f"{installer.disk_full}; free some space and apply again (status: "
                f"{self.status().phase.value})",
                reason="DISK_FULL",
                retry_after_s=60.0,
            )
        return self.status(), records

    async def cancel(self) -> UpdateStatus:
        """Stop the running update while it downloads or verifies: the partial download
        is removed and the installed version stays. Once the switch has begun it ends
        in the old or the new version and cannot be cancelled."""
        self._checker.require_enabled()
        await self._installer.cancel(self._ws.config.download_timeout_s)
        return self.status()

    async def rollback(self, artifact_id: str) -> UpdateRecord:
        """Switch an artifact back to the version in its other slot (health-checked)."""
        return await self._installer.roll_back(artifact_id)


def _plan(result: CheckResult, ids: list[str]) -> list[Artifact]:
    """What to apply: the automatic updates, or the named ones (even outside the rollout,
    and those that failed before)."""
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
        if update.blocked:
            raise PreconditionFailed(
                f"cannot apply {artifact_id} {update.artifact.version}: {update.note}",
                reason="UPDATE_NOT_APPLICABLE",
            )
        plan.append(update.artifact)
    return plan


# Re-exported for the services and tests.
__all__ = [
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

"""Scheduled checks (apscheduler: interval + jitter, maintenance window, state kept in
schedule.json) and the power gate: an automatic update waits for the window, a good
battery and a cool device, and starts as soon as the device allows it."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from rustaid.errors import RustaidError
from rustaid.updates.checker import Checker
from rustaid.updates.config import UpdatesConfig
from rustaid.updates.gate import PowerOk, always_ok
from rustaid.updates.installer import Installer
from rustaid.updates.journal import Outcome, new_update_id
from rustaid.updates.metadata import format_time
from rustaid.updates.reporter import Reporter
from rustaid.updates.results import Phase
from rustaid.updates.schedule import first_check, following_check, in_window, place_in_window
from rustaid.updates.workspace import Workspace

if TYPE_CHECKING:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

log = logging.getLogger(__name__)

JOB_ID = "rustaid-updates-check"
_NOT_CONFIGURED = "updates are not configured ([updates] repository is unset)"
_CHECKS_OFF = "scheduled checks are off (check_interval = 0)"
_OFF_MESSAGES = (_NOT_CONFIGURED, _CHECKS_OFF)


def _plan_of(c: UpdatesConfig) -> tuple[object, ...]:
    """What the schedule of checks depends on."""
    return c.enabled, c.check_interval_s, c.jitter_s, c.window


class Scheduler:
    def __init__(
        self,
        ws: Workspace,
        reporter: Reporter,
        checker: Checker,
        installer: Installer,
        *,
        power_ok: PowerOk | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.ws = ws
        self.reporter = reporter
        self.checker = checker
        self.installer = installer
        self.power_ok: PowerOk = power_ok or always_ok
        # Reads the device afresh before the power gate decides (set by the daemon).
        self.refresh_device: Callable[[], Awaitable[object]] | None = None
        self.rng = rng or random.Random()
        # The power gate deferred the automatic update: retry when the device allows it.
        self._gated = False
        self._started = False
        # Counts stops: a scheduler still being started for an older plan gives up.
        self._plans = 0
        self._scheduler: AsyncIOScheduler | None = None

    # ------------------------------------------------------------------ power gate

    def gate(self) -> tuple[bool, str]:
        try:
            return self.power_ok()
        except Exception as e:
            return False, f"cannot read the power state: {e}"

    async def gate_now(self) -> tuple[bool, str]:
        """The power gate on the device's state read now, never on an old reading."""
        if self.refresh_device is not None:
            try:
                await self.refresh_device()
            except Exception as e:
                return False, f"cannot read the power state: {e}"
        return await asyncio.to_thread(self.gate)

    def device_changed(self) -> None:
        """The device's state changed: an update the power gate deferred starts now if the
        gate opens (charger plugged in, cooled down), not at the next retry interval."""
        if not self._gated or self.installer.busy or self.gate()[0] is False:
            return
        self._gated = False
        log.info("the power gate opened: trying the deferred update now")
        self._reschedule(self.ws.clock())

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        self._started = True
        config = self.ws.config
        idle = self.reporter.current.phase is Phase.IDLE and not self.reporter.current.message
        if not config.enabled:
            if idle:
                self.reporter.set(message=_NOT_CONFIGURED)
            return
        if config.check_interval_s <= 0:
            if idle:
                self.reporter.set(message=_CHECKS_OFF)
            return
        first = first_check(
            self.reporter.schedule(),
            self.ws.clock(),
            jitter=config.jitter_s,
            window=config.window,
            rng=self.rng,
        )
        self.reporter.save_schedule(next_check=first)
        # apscheduler takes ~0.1 s to import: after READY=1, not before.
        self.reporter.spawn(self._start_scheduler(first, self._plans))

    async def _start_scheduler(self, first: float, plan: int) -> None:
        from apscheduler.schedulers.asyncio import AsyncIOScheduler
        from apscheduler.triggers.interval import IntervalTrigger

        if plan != self._plans:
            return  # stopped (or re-planned by a reload) before it could start

        config = self.ws.config
        scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop(), timezone=UTC)
        scheduler.add_job(
            self._scheduled_check,
            IntervalTrigger(
                seconds=config.check_interval_s,
                jitter=int(config.jitter_s) or None,
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
        self.reporter.publish()

    def reconfigure(self, old: UpdatesConfig) -> None:
        """The settings in force changed (a reload): a new interval, jitter, window or
        repository re-plans the next check from the last one (soon if that is already
        past); the other settings are read at each check and apply as they are."""
        new = self.ws.config
        if not self._started or _plan_of(old) == _plan_of(new):
            return
        self.stop()
        current, off = self.reporter.current, not new.enabled or new.check_interval_s <= 0
        if current.phase is Phase.IDLE and (off or current.message in _OFF_MESSAGES):
            self.reporter.set(message="")  # start() says why checks are off, if they are
        state = self.reporter.schedule()
        if new.enabled and new.check_interval_s > 0 and state.last_check > 0:
            planned = following_check(
                state.last_check,
                interval=new.check_interval_s,
                jitter=new.jitter_s,
                window=new.window,
                rng=self.rng,
            )
            self.reporter.save_schedule(next_check=planned)
        elif state.next_check:
            self.reporter.save_schedule(next_check=0.0)
        log.info("update schedule re-planned for the new [updates] settings")
        self.start()
        self.reporter.publish()

    def stop(self) -> None:
        self._plans += 1
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None

    # ------------------------------------------------------------------ the job

    async def _scheduled_check(self) -> None:
        config, reporter = self.ws.config, self.reporter
        now = self.ws.clock()
        defer_until = 0.0
        try:
            if self.installer.busy:
                return
            try:
                result = await self.checker.check("", show=True)
            except RustaidError:
                return
            plan = [u.artifact for u in result.updates if u.automatic]
            if not plan or not config.auto_apply:
                return
            reason = ""
            if not in_window(config.window, now):
                reason = f"outside the maintenance window {config.window}"
                defer_until = place_in_window(config.window, now, config.jitter_s, self.rng)
            else:
                ok, why = await self.gate_now()
                if not ok:
                    reason = why
                    defer_until = now + config.retry_interval_s
                    self._gated = True
            if reason:
                when = format_time(datetime.fromtimestamp(defer_until, UTC))
                message = f"update deferred: {reason}; next try at {when}"
                reporter.set(phase=Phase.DEFERRED, message=message)
                for a in plan:
                    if self.checker.deferred_already(a):
                        continue  # one record per deferred release, not one per retry
                    slots = self.ws.installed_slots(a.id) or self.ws.slots(a.id, a.kind)
                    info = slots.info(slots.current_slot())
                    reporter.finish(
                        reporter.record(
                            a.id, a.kind.value, info.version if info else "", a.version,
                            Outcome.DEFERRED, message, now, update_id=new_update_id(),
                            sha256=a.sha256,
                        )
                    )  # fmt: skip
                return
            self.installer.claim()
            await asyncio.shield(self.installer.start(plan))
        finally:
            self._reschedule(defer_until)

    def _reschedule(self, at: float) -> None:
        scheduler = self._scheduler
        job = scheduler.get_job(JOB_ID) if scheduler is not None else None
        if job is None:
            return
        config = self.ws.config
        planned = job.next_run_time.timestamp() if job.next_run_time else self.ws.clock()
        target = at or place_in_window(config.window, planned, config.jitter_s, self.rng)
        if abs(target - planned) > 0.001:
            job.modify(next_run_time=datetime.fromtimestamp(target, UTC))
        self.reporter.save_schedule(next_check=target)
        self.reporter.publish()

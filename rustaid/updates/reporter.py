"""The updater's status, history and watchers: the current phase (published to
WatchUpdates), the schedule's last and next check, the history of attempts and the
report POSTed to the repository's `report_url` after each one."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Coroutine
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import Any

from rustaid import __version__
from rustaid.core.events import EventBus
from rustaid.updates.journal import Outcome, UpdateRecord
from rustaid.updates.metadata import format_time
from rustaid.updates.results import CheckResult, UpdateStatus
from rustaid.updates.schedule import ScheduleState
from rustaid.updates.threads import in_daemon_thread
from rustaid.updates.workspace import Workspace

log = logging.getLogger(__name__)

REPORT_TIMEOUT_S = 10.0


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


class Reporter:
    def __init__(self, ws: Workspace, metadata_version: Callable[[], int]) -> None:
        self.ws = ws
        self._metadata_version = metadata_version
        self.events: EventBus[UpdateStatus] = EventBus()
        # Each successful check, and each update attempt as it ends (history records):
        # for those who announce them (the D-Bus API's UpdateAvailable / UpdateApplied).
        self.checks: EventBus[CheckResult] = EventBus(maxsize=16)
        self.finished: EventBus[UpdateRecord] = EventBus(maxsize=64)
        self._status = UpdateStatus()
        self._schedule_state: ScheduleState | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Records from before the event loop runs (recovery): reported once it does.
        self._pending_reports: list[UpdateRecord] = []
        self._background: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ status

    @property
    def current(self) -> UpdateStatus:
        """The status without the schedule's times."""
        return self._status

    def status(self) -> UpdateStatus:
        state = self.schedule()
        return replace(self._status, last_check=state.last_check, next_check=state.next_check)

    def set(self, **changes: Any) -> None:
        self._status = replace(self._status, **changes)
        self.events.publish(self.status())

    def publish(self) -> None:
        self.events.publish(self.status())

    def schedule(self) -> ScheduleState:
        if self._schedule_state is None:
            self._schedule_state = self.ws.schedule.load()
        return self._schedule_state

    def save_schedule(self, **changes: float) -> None:
        state = replace(self.schedule(), **changes)
        self._schedule_state = state
        try:
            self.ws.schedule.save(state)
        except OSError as e:  # kept in memory; written again with the next change
            log.warning("cannot save the update schedule: %s", e.strerror or e)

    # ------------------------------------------------------------------ history

    def record(
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
            finished=self.ws.clock(),
            sha256=sha256,
            artifact_at_fault=at_fault,
        )

    def finish(self, record: UpdateRecord) -> UpdateRecord:
        """Write an attempt to the history, tell the watchers and report it."""
        if not self.ws.history.has(record.update_id):
            try:
                self.ws.history.append(record)
            except OSError as e:  # a full disk: the outcome is still in the status and log
                log.warning("cannot write the update history: %s", e.strerror or e)
        self.finished.publish(record)
        log_at = log.info if record.outcome == Outcome.COMMITTED else log.warning
        log_at("update %s: %s", record.outcome, record.message)
        if self._loop is not None:
            self.spawn(self._report(record))
        else:
            self._pending_reports.append(record)
        return record

    def list_history(self, limit: int) -> list[UpdateRecord]:
        return self.ws.history.list(limit)

    # ------------------------------------------------------------------ reports

    def start(self) -> None:
        """On the event loop: report what happened before it ran."""
        self._loop = asyncio.get_running_loop()
        for record in self._pending_reports:
            self.spawn(self._report(record))
        self._pending_reports.clear()

    def queue_reports(self, records: list[UpdateRecord]) -> None:
        self._pending_reports.extend(records)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def stop(self) -> None:
        for task in list(self._background):
            task.cancel()

    def report_payload(self, record: UpdateRecord) -> dict[str, Any]:
        def iso(t: float) -> str:
            return format_time(datetime.fromtimestamp(t, UTC)) if t else ""

        attempt = asdict(record)
        attempt["started"] = iso(record.started)
        attempt["finished"] = iso(record.finished)
        return {
            "device_id": self.ws.device_id,
            "daemon_version": __version__,
            "time": iso(self.ws.clock()),
            "channel": self.ws.config.channel,
            "metadata_version": self._metadata_version(),
            "attempt": attempt,
            "installed": [
                {
                    "artifact_id": i.artifact_id,
                    "kind": i.kind,
                    "version": i.version,
                    "previous_version": i.previous_version,
                }
                for i in self.ws.installed()
            ],
        }

    async def _report(self, record: UpdateRecord) -> None:
        url = self.ws.config.report_url
        if not url:
            return
        payload = self.report_payload(record)
        try:
            await in_daemon_thread(post_json, url, payload, REPORT_TIMEOUT_S)
        except Exception as e:
            log.warning("could not POST the update report to %s: %s", url, e)

"""Installs updates, one at a time: download to staging (resumable) -> verify the
SHA-256 -> switch slots -> health check -> commit, or switch back. Each step is
written to the journal before it starts, so recovery can end a crash anywhere in
the old version or the new one. Manual rollbacks take the same switch and check."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urljoin

from rustaid.errors import InvalidArgument, NotFound, PreconditionFailed, RustaidError
from rustaid.updates.atomic import make_private_dir, remove
from rustaid.updates.download import Cancelled, DownloadFailed, download, sha256_file
from rustaid.updates.journal import JournalEntry, Outcome, Step, UpdateRecord, new_update_id
from rustaid.updates.metadata import Artifact, ArtifactKind, check_artifact_id
from rustaid.updates.recovery import Recovery
from rustaid.updates.reporter import Reporter
from rustaid.updates.results import OUTCOME_PHASE, Phase
from rustaid.updates.slots import ArtifactSlots, SlotInfo, other
from rustaid.updates.threads import in_daemon_thread
from rustaid.updates.workspace import Workspace, disk_full

if TYPE_CHECKING:
    from rustaid.core.engine import Engine
    from rustaid.core.registry import ModelRegistry

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.2
# The steps a pause hook can hold an update at.
PAUSE_POINTS = ("download", "verify", "switch", "health_check", "commit")

# Called as an update reaches each of PAUSE_POINTS; True holds the update there until
# the daemon stops (crash tests kill it there). None in a production daemon.
PauseHook = Callable[[str], bool]


class HealthCheckFailed(Exception):
    pass


class ArtifactRejected(Exception):
    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


class PluginView(Protocol):
    """What the installer reads of a plugin record."""

    @property
    def id(self) -> str: ...
    @property
    def state(self) -> StrEnum: ...
    @property
    def error(self) -> str: ...
    @property
    def path(self) -> str: ...


class Plugins(Protocol):
    """The plugin manager's calls that hot-swap an updated plugin."""

    def list(self) -> Sequence[PluginView]: ...
    def load(self, name: str) -> PluginView: ...
    def reload(self, plugin_id: str) -> PluginView: ...
    def unload(self, plugin_id: str) -> PluginView: ...


def gguf_problem(path: Path) -> str:
    from rustaid.core.gguf import GGUFError, read_gguf

    try:
        read_gguf(path)
    except (GGUFError, OSError) as e:
        return f"unreadable GGUF file: {e}"
    return ""


class Installer:
    def __init__(
        self,
        ws: Workspace,
        reporter: Reporter,
        recovery: Recovery,
        *,
        engine: Engine,
        registry: ModelRegistry,
        plugins: Plugins,
        rescan: Callable[[], Awaitable[None]],
    ) -> None:
        self.ws = ws
        self.reporter = reporter
        self.recovery = recovery
        self.engine = engine
        self.registry = registry
        self.plugins = plugins
        self.rescan = rescan
        self.pause_at: PauseHook | None = None
        self.busy = False
        self.task: asyncio.Task[list[UpdateRecord]] | None = None
        self.cancel_event = threading.Event()
        self.cancel_requested = False
        # Why the last apply failed for lack of disk space ("" if it did not).
        self.disk_full = ""
        # Durations of the last switch and automatic rollback, in ms (benchmarks).
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ one at a time

    def claim(self) -> None:
        if self.busy:
            s = self.reporter.current
            raise PreconditionFailed(
                f"an update is already running ({s.phase.value} {s.artifact_id} {s.version}"
                "); wait for it to finish (WatchUpdates)".replace("  ", " "),
                reason="UPDATE_IN_PROGRESS",
            )
        self.busy = True

    def start(self, plan: list[Artifact]) -> asyncio.Task[list[UpdateRecord]]:
        """Run `plan` (claimed before) in a task of its own."""
        self.cancel_event.clear()
        self.cancel_requested = False
        self.disk_full = ""
        self.task = asyncio.ensure_future(self._run(plan))
        return self.task

    async def _run(self, plan: list[Artifact]) -> list[UpdateRecord]:
        records = []
        try:
            for artifact in plan:
                if self.cancel_requested:
                    break
                records.append(await self._update_one(artifact))
        finally:
            self.busy = False
        return records

    async def cancel(self, download_timeout_s: float) -> None:
        """Stop the running update while it downloads or verifies."""
        task = self.task
        if not self.busy or task is None or task.done():
            raise PreconditionFailed("no update is running", reason="NO_UPDATE_RUNNING")
        status = self.reporter.current
        phase = status.phase
        if phase not in (Phase.DOWNLOADING, Phase.VERIFYING):
            raise PreconditionFailed(
                f"the update of {status.artifact_id} is {phase.value.replace('_', ' ')}: "
                "past that point it cannot be cancelled (it ends in the old or the new "
                "version; Rollback switches back afterwards)",
                reason="UPDATE_NOT_CANCELLABLE",
            )
        self.cancel_requested = True
        self.cancel_event.set()
        # The download stops at its next chunk, or when its read times out.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(task), download_timeout_s + 5)

    async def stop(self) -> None:
        self.cancel_event.set()
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self.task, timeout=30)

    # ------------------------------------------------------------------ pause hook

    def _pause(self, point: str) -> None:
        """Blocking, for worker threads: until the update is cancelled or killed."""
        if self.pause_at is None or not self.pause_at(point):
            return
        log.warning("the update stops before %s (pause hook) until the daemon is killed", point)
        while not self.cancel_event.is_set():
            time.sleep(0.05)

    async def _apause(self, point: str) -> None:
        if self.pause_at is None or not self.pause_at(point):
            return
        log.warning("the update stops before %s (pause hook) until the daemon is killed", point)
        await asyncio.Event().wait()  # until cancelled or killed

    # ------------------------------------------------------------------ download, verify

    def _progress(self, artifact: Artifact) -> Callable[[int], None]:
        loop = asyncio.get_running_loop()
        last = [0.0]

        def report(done: int) -> None:
            now = time.monotonic()
            if done < artifact.size and now - last[0] < PROGRESS_INTERVAL_S:
                return
            last[0] = now
            loop.call_soon_threadsafe(lambda: self.reporter.set(bytes_done=done))

        return report

    async def _update_one(self, a: Artifact) -> UpdateRecord:
        ws, reporter, config = self.ws, self.reporter, self.ws.config
        update_id = new_update_id()
        started = ws.clock()
        slots = ws.installed_slots(a.id) or ws.slots(a.id, a.kind)
        current_slot = slots.current_slot()
        current = slots.info(current_slot)
        from_version = current.version if current else ""
        kept = f"{from_version} kept" if from_version else "nothing was installed"
        reporter.set(
            phase=Phase.DOWNLOADING,
            artifact_id=a.id,
            version=a.version,
            bytes_done=0,
            bytes_total=a.size,
            update_id=update_id,
            message=f"downloading {a.id} {a.version} ({a.size} bytes)",
        )

        def fail(message: str, outcome: Outcome = Outcome.FAILED) -> UpdateRecord:
            reporter.set(phase=OUTCOME_PHASE[outcome], message=message)
            record = reporter.record(
                a.id, a.kind.value, from_version, a.version, outcome, message, started,
                update_id=update_id, sha256=a.sha256,
            )  # fmt: skip
            return reporter.finish(record)

        # Checks that need no download.
        if slots.kind is not a.kind:
            return fail(f"{a.id} is installed as a {slots.kind.value}, not a {a.kind.value}")
        if not slots.entry_is_ours():
            return fail(
                f"{slots.entry} exists and is not managed by the updater; move it away to let "
                f"updates manage {a.id}"
            )
        free = shutil.disk_usage(ws.staging_dir).free
        if free < a.size + (64 << 20):
            self.disk_full = (
                f"not enough disk space for {a.id} {a.version} in {ws.staging_dir}: "
                f"{a.size} bytes and 64 MiB to spare needed, {free} free"
            )
            return fail(f"{self.disk_full}; {kept}")
        to_slot = other(current_slot)
        stage = ws.staging_dir / update_id
        part = stage / (slots.filename + ".part")
        entry = JournalEntry(
            update_id=update_id,
            artifact_id=a.id,
            kind=a.kind.value,
            from_version=from_version,
            to_version=a.version,
            sha256=a.sha256,
            size=a.size,
            url=urljoin(config.repository + "/", a.url),
            step=Step.DOWNLOADING.value,
            from_slot=current_slot,
            to_slot=to_slot,
            started=started,
        )
        try:
            make_private_dir(stage)
            ws.journal.write(entry)
        except OSError as e:
            remove(stage)
            ws.journal.clear()
            if not disk_full(e):
                raise
            self.disk_full = f"{a.id} {a.version} not installed: the disk is full ({e.strerror})"
            return fail(f"{self.disk_full}; {kept}")
        try:
            try:
                result = await in_daemon_thread(
                    download,
                    entry.url,
                    part,
                    a.size,
                    timeout=config.download_timeout_s,
                    min_rate=config.download_min_rate,
                    deadline_s=config.download_deadline_s,
                    mirrors=config.mirrors,
                    attempts=config.download_attempts,
                    backoff=config.retry_backoff_s,
                    progress=self._progress(a),
                    cancel=self.cancel_event,
                    after_first_chunk=lambda: self._pause("download"),
                )
                log.info(
                    "downloaded %s %s: %d bytes in %d request(s)%s",
                    a.id, a.version, result.received, result.requests,
                    f", resumed at byte {result.resumed_from}" if result.resumed_from else "",
                )  # fmt: skip
                entry = entry.at(Step.VERIFYING)
                ws.journal.write(entry)
                reporter.set(
                    phase=Phase.VERIFYING,
                    bytes_done=a.size,
                    message=f"verifying the SHA-256 of {a.id} {a.version}",
                )
                await self._apause("verify")
                digest = await in_daemon_thread(sha256_file, part, cancel=self.cancel_event)
                if digest != a.sha256:
                    raise ArtifactRejected(
                        f"SHA-256 mismatch: the download hashes to {digest[:16]}..., the signed "
                        f"metadata declares {a.sha256[:16]}... (corrupted or tampered)",
                        "ARTIFACT_HASH_MISMATCH",
                    )
            except (DownloadFailed, ArtifactRejected) as e:
                remove(stage)  # first: on a full disk, this frees the space
                if isinstance(e, DownloadFailed) and e.reason == "DISK_FULL":
                    self.disk_full = f"{a.id} {a.version} not installed: {e}"
                message = f"{a.id} {a.version} not installed: {e}; {kept}"
                record = fail(message)
                ws.journal.clear()
                return record
            return await self._switch_and_check(
                entry, slots, a.version, install_from=part, stage=stage
            )
        except Cancelled:
            if not self.cancel_requested:  # the daemon stops
                self.recovery.now()
                raise
            remove(stage)
            record = fail(f"{a.id} {a.version} not installed: cancelled (CancelUpdate); {kept}")
            ws.journal.clear()
            return record
        except asyncio.CancelledError:
            self.cancel_event.set()
            self.recovery.now()
            raise

    # ------------------------------------------------------------------ switch, check

    def _is_active(self, slots: ArtifactSlots) -> bool:
        if slots.kind is ArtifactKind.MODEL:
            return any(e.id == slots.artifact_id for e in self.engine.loaded())
        record = self._plugin_record(slots)
        return record is not None and record.state.value == "active"

    def _plugin_record(self, slots: ArtifactSlots) -> PluginView | None:
        for record in self.plugins.list():
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
        ws, reporter, config = self.ws, self.reporter, self.ws.config
        a_id, kind = entry.artifact_id, slots.kind
        entry = replace(entry, step=Step.APPLYING.value, was_loaded=self._is_active(slots))
        ws.journal.write(entry)
        reporter.set(phase=Phase.APPLYING, message=f"switching {a_id} to {version}")
        if install_from is not None:
            info = SlotInfo(
                artifact_id=a_id,
                kind=kind.value,
                version=version,
                sha256=entry.sha256,
                size=entry.size,
                installed_time=ws.clock(),
                update_id=entry.update_id,
            )
            await asyncio.to_thread(slots.install, entry.to_slot, install_from, info)
        t0 = time.perf_counter()
        await asyncio.to_thread(slots.switch, entry.to_slot)
        switched_s = time.perf_counter() - t0
        await self._apause("switch")
        entry = entry.at(Step.HEALTH_CHECK)
        ws.journal.write(entry)
        reporter.set(phase=Phase.HEALTH_CHECK, message=f"health check of {a_id} {version}")
        try:
            t0 = time.perf_counter()
            await self._activate(slots)
            # Rename to "the next request gets the new version" (models: the registry
            # has it; loading happens on first use and is not counted).
            self.timings["switch_ms"] = (switched_s + time.perf_counter() - t0) * 1000
            await self._apause("health_check")
            await asyncio.wait_for(
                self._health_check(slots, entry.was_loaded), config.health_timeout_s
            )
        except Exception as e:  # whatever goes wrong here, the old version comes back
            why = str(e) or f"no result within {config.health_timeout_s:g} s"
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
            reporter.set(phase=OUTCOME_PHASE[outcome], message=message)
            record = reporter.record(
                a_id, kind.value, entry.from_version, version, outcome, message,
                entry.started, update_id=entry.update_id, sha256=entry.sha256,
                at_fault=not manual_rollback,
            )  # fmt: skip
            reporter.finish(record)
            if stage is not None:
                remove(stage)
            ws.journal.clear()
            return record
        entry = entry.at(Step.COMMITTING)
        ws.journal.write(entry)
        await self._apause("commit")
        if manual_rollback:
            message = f"rolled {a_id} back from {entry.from_version} to {version}"
            outcome = Outcome.ROLLED_BACK
        else:
            message = f"{a_id} updated from {entry.from_version or 'nothing'} to {version}"
            outcome = Outcome.COMMITTED
        record = reporter.record(
            a_id, kind.value, entry.from_version, version, outcome, message, entry.started,
            update_id=entry.update_id, sha256=entry.sha256,
        )  # fmt: skip
        reporter.finish(record)
        if stage is not None:
            remove(stage)
        ws.journal.clear()
        reporter.set(phase=OUTCOME_PHASE[outcome], message=message)
        return record

    async def _activate(self, slots: ArtifactSlots) -> None:
        """Make the running daemon use what `current` points at now."""
        if slots.kind is ArtifactKind.MODEL:
            await self.rescan()
            return
        record = self._plugin_record(slots)
        plugins = self.plugins
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

        config = self.ws.config
        model_id = slots.artifact_id
        current = slots.current_slot()
        assert current is not None
        st = slots.payload(current).stat()
        try:
            entry = self.registry.get(model_id)
        except NotFound:
            entry = None
        # The registry must describe the new file, not keep the old entry (it keeps one
        # while a replacement looks incomplete).
        if entry is None or (entry.size_bytes, entry.mtime) != (st.st_size, st.st_mtime):
            problem = gguf_problem(slots.payload(current))
            raise HealthCheckFailed(
                problem or f"the model registry does not list the new file of {model_id}"
            )
        if entry.state is ModelState.ERROR:
            raise HealthCheckFailed(entry.error)
        request = GenerationRequest(
            model_id=model_id,
            prompt=config.health_prompt,
            params=GenerationParams(max_tokens=config.health_tokens, temperature=0.0, seed=0),
            # Not BACKGROUND: the policy holds background work on a low battery, and an
            # update that passed (or was forced past) the power gate must be judged now.
            priority=Priority.INTERACTIVE,
            # Unloaded right after, unless it was loaded before the update.
            keep_alive_s=None if was_loaded else 0.0,
        )
        done = None
        async for event in self.engine.generate(request):
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
                await asyncio.to_thread(self.plugins.unload, record.id)
        await asyncio.to_thread(slots.switch, previous)
        if clear:
            await asyncio.to_thread(slots.clear, entry.to_slot)
        try:
            await self._activate(slots)
            self.timings["rollback_ms"] = (time.perf_counter() - t0) * 1000
            if slots.kind is ArtifactKind.MODEL and entry.was_loaded and previous is not None:
                await self.engine.load(slots.artifact_id)
        except (HealthCheckFailed, RustaidError) as e:
            log.error("the previous version of %s does not come back up: %s", entry.artifact_id, e)

    # ------------------------------------------------------------------ rollback

    async def roll_back(self, artifact_id: str) -> UpdateRecord:
        """Switch an artifact back to the version in its other slot (health-checked)."""
        if not artifact_id:
            raise InvalidArgument(
                "artifact_id is empty: give an artifact id from GetUpdateStatus",
                field="artifact_id",
            )
        check_artifact_id(artifact_id, "artifact_id")
        if self.busy:
            self.claim()  # raises UPDATE_IN_PROGRESS with what is running
        slots = self.ws.installed_slots(artifact_id)
        if slots is None:
            known = ", ".join(s.artifact_id for s in self.ws.managed())
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
        self.claim()
        try:
            entry = JournalEntry(
                update_id=new_update_id(),
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
                started=self.ws.clock(),
            )
            self.reporter.set(
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
            self.recovery.now()
            raise
        finally:
            self.busy = False

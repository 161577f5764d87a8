"""Recovery after a crash or a stop: ends the update the journal names in the old
version or, once its health check has passed, the new one; repairs every artifact's
slots and empties staging. Filesystem only: no plugin or model is touched, so it runs
at start-up before plugins load and models are scanned."""

from __future__ import annotations

import logging

from rustaid.updates.atomic import make_private_dir, remove
from rustaid.updates.journal import JournalEntry, Outcome, Step, UpdateRecord
from rustaid.updates.metadata import ArtifactKind
from rustaid.updates.workspace import Workspace

log = logging.getLogger(__name__)


class Recovery:
    def __init__(self, ws: Workspace) -> None:
        self.ws = ws

    def at_start(self) -> list[UpdateRecord]:
        """Finish or undo what a crash interrupted, so the daemon only ever sees whole
        versions."""
        ws = self.ws
        make_private_dir(ws.root)
        make_private_dir(ws.staging_dir)
        ws.artifacts_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        records = []
        entry = ws.journal.read()
        if entry is not None:
            records.append(self.end(entry))
        elif ws.journal.exists():
            ws.journal.clear()
        for slots in ws.managed():
            slots.repair()
        for leftover in list(ws.staging_dir.iterdir()):
            remove(leftover)
        return records

    def now(self) -> None:
        """The daemon stops in the middle of an update: end it before it exits."""
        entry = self.ws.journal.read()
        if entry is not None:
            self.end(entry, crashed=False)

    def end(self, entry: JournalEntry, *, crashed: bool = True) -> UpdateRecord:
        """End `entry` in the old version or, once its health check has passed, the new
        one; the attempt goes to the history."""
        ws = self.ws
        why = "the daemon stopped (crash, kill or power loss)" if crashed else "the daemon stopped"
        try:
            step = Step(entry.step)
            kind = ArtifactKind(entry.kind)
        except ValueError:
            step, kind = Step.DOWNLOADING, ArtifactKind.MODEL
        slots = ws.slots(entry.artifact_id, kind)
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
            finished=ws.clock(),
            sha256=entry.sha256,
            artifact_at_fault=at_fault,
        )
        if not ws.history.has(record.update_id):
            ws.history.append(record)
        remove(ws.staging_dir / entry.update_id)
        ws.journal.clear()
        log.warning("recovered an interrupted update: %s", message)
        return record

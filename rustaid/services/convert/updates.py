"""Conversions for updates.proto (UpdatesService)."""

from __future__ import annotations

from rustaid.api.v1 import updates_pb2
from rustaid.services.convert import _timestamp
from rustaid.updates.journal import Outcome, UpdateRecord
from rustaid.updates.manager import AvailableUpdate, CheckResult, Installed, Phase, UpdateStatus
from rustaid.updates.metadata import ArtifactKind

_KIND = {
    ArtifactKind.MODEL.value: updates_pb2.ARTIFACT_KIND_MODEL,
    ArtifactKind.PLUGIN.value: updates_pb2.ARTIFACT_KIND_PLUGIN,
}
_PHASE = {
    Phase.IDLE: updates_pb2.UPDATE_PHASE_IDLE,
    Phase.CHECKING: updates_pb2.UPDATE_PHASE_CHECKING,
    Phase.DOWNLOADING: updates_pb2.UPDATE_PHASE_DOWNLOADING,
    Phase.VERIFYING: updates_pb2.UPDATE_PHASE_VERIFYING,
    Phase.APPLYING: updates_pb2.UPDATE_PHASE_APPLYING,
    Phase.HEALTH_CHECK: updates_pb2.UPDATE_PHASE_HEALTH_CHECK,
    Phase.COMMITTED: updates_pb2.UPDATE_PHASE_COMMITTED,
    Phase.ROLLED_BACK: updates_pb2.UPDATE_PHASE_ROLLED_BACK,
    Phase.FAILED: updates_pb2.UPDATE_PHASE_FAILED,
    Phase.DEFERRED: updates_pb2.UPDATE_PHASE_DEFERRED,
}
_OUTCOME = {
    Outcome.COMMITTED.value: updates_pb2.UPDATE_PHASE_COMMITTED,
    Outcome.ROLLED_BACK.value: updates_pb2.UPDATE_PHASE_ROLLED_BACK,
    Outcome.FAILED.value: updates_pb2.UPDATE_PHASE_FAILED,
    Outcome.DEFERRED.value: updates_pb2.UPDATE_PHASE_DEFERRED,
}


def artifact_kind_to_pb(kind: str) -> updates_pb2.ArtifactKind:
    return _KIND.get(kind, updates_pb2.ARTIFACT_KIND_UNSPECIFIED)


def available_update_to_pb(u: AvailableUpdate) -> updates_pb2.AvailableUpdate:
    return updates_pb2.AvailableUpdate(
        artifact_id=u.artifact.id,
        kind=artifact_kind_to_pb(u.artifact.kind.value),
        current_version=u.current_version,
        available_version=u.artifact.version,
        size_bytes=u.artifact.size,
        channel=u.channel,
        in_rollout=u.in_rollout,
        note=u.note,
    )


def update_status_to_pb(s: UpdateStatus) -> updates_pb2.UpdateStatus:
    return updates_pb2.UpdateStatus(
        phase=_PHASE[s.phase],
        artifact_id=s.artifact_id,
        version=s.version,
        bytes_done=s.bytes_done,
        bytes_total=s.bytes_total,
        message=s.message,
        last_check_time=_timestamp(s.last_check),
        next_check_time=_timestamp(s.next_check),
        update_id=s.update_id,
    )


def installed_artifact_to_pb(i: Installed) -> updates_pb2.InstalledArtifact:
    return updates_pb2.InstalledArtifact(
        artifact_id=i.artifact_id,
        kind=artifact_kind_to_pb(i.kind),
        version=i.version,
        previous_version=i.previous_version,
        path=i.path,
        installed_time=_timestamp(i.installed_time),
    )


def update_record_to_pb(r: UpdateRecord) -> updates_pb2.UpdateRecord:
    return updates_pb2.UpdateRecord(
        update_id=r.update_id,
        artifact_id=r.artifact_id,
        from_version=r.from_version,
        to_version=r.to_version,
        outcome=_OUTCOME.get(r.outcome, updates_pb2.UPDATE_PHASE_UNSPECIFIED),
        message=r.message,
        started_time=_timestamp(r.started),
        finished_time=_timestamp(r.finished),
        kind=artifact_kind_to_pb(r.kind),
    )


def check_updates_response_to_pb(r: CheckResult) -> updates_pb2.CheckUpdatesResponse:
    return updates_pb2.CheckUpdatesResponse(
        updates=[available_update_to_pb(u) for u in r.updates],
        metadata_version=r.metadata_version,
        checked_time=_timestamp(r.checked),
    )

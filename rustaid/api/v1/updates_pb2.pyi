import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ArtifactKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ARTIFACT_KIND_UNSPECIFIED: _ClassVar[ArtifactKind]
    ARTIFACT_KIND_MODEL: _ClassVar[ArtifactKind]
    ARTIFACT_KIND_PLUGIN: _ClassVar[ArtifactKind]

class UpdatePhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UPDATE_PHASE_UNSPECIFIED: _ClassVar[UpdatePhase]
    UPDATE_PHASE_IDLE: _ClassVar[UpdatePhase]
    UPDATE_PHASE_CHECKING: _ClassVar[UpdatePhase]
    UPDATE_PHASE_DOWNLOADING: _ClassVar[UpdatePhase]
    UPDATE_PHASE_VERIFYING: _ClassVar[UpdatePhase]
    UPDATE_PHASE_APPLYING: _ClassVar[UpdatePhase]
    UPDATE_PHASE_HEALTH_CHECK: _ClassVar[UpdatePhase]
    UPDATE_PHASE_COMMITTED: _ClassVar[UpdatePhase]
    UPDATE_PHASE_ROLLED_BACK: _ClassVar[UpdatePhase]
    UPDATE_PHASE_FAILED: _ClassVar[UpdatePhase]
    UPDATE_PHASE_DEFERRED: _ClassVar[UpdatePhase]
ARTIFACT_KIND_UNSPECIFIED: ArtifactKind
ARTIFACT_KIND_MODEL: ArtifactKind
ARTIFACT_KIND_PLUGIN: ArtifactKind
UPDATE_PHASE_UNSPECIFIED: UpdatePhase
UPDATE_PHASE_IDLE: UpdatePhase
UPDATE_PHASE_CHECKING: UpdatePhase
UPDATE_PHASE_DOWNLOADING: UpdatePhase
UPDATE_PHASE_VERIFYING: UpdatePhase
UPDATE_PHASE_APPLYING: UpdatePhase
UPDATE_PHASE_HEALTH_CHECK: UpdatePhase
UPDATE_PHASE_COMMITTED: UpdatePhase
UPDATE_PHASE_ROLLED_BACK: UpdatePhase
UPDATE_PHASE_FAILED: UpdatePhase
UPDATE_PHASE_DEFERRED: UpdatePhase

class AvailableUpdate(_message.Message):
    __slots__ = ("artifact_id", "kind", "current_version", "available_version", "size_bytes", "channel", "in_rollout", "note")
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CURRENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    IN_ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    artifact_id: str
    kind: ArtifactKind
    current_version: str
    available_version: str
    size_bytes: int
    channel: str
    in_rollout: bool
    note: str
    def __init__(self, artifact_id: _Optional[str] = ..., kind: _Optional[_Union[ArtifactKind, str]] = ..., current_version: _Optional[str] = ..., available_version: _Optional[str] = ..., size_bytes: _Optional[int] = ..., channel: _Optional[str] = ..., in_rollout: _Optional[bool] = ..., note: _Optional[str] = ...) -> None: ...

class CheckUpdatesRequest(_message.Message):
    __slots__ = ("channel",)
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    channel: str
    def __init__(self, channel: _Optional[str] = ...) -> None: ...

class CheckUpdatesResponse(_message.Message):
    __slots__ = ("updates", "metadata_version", "checked_time")
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    METADATA_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHECKED_TIME_FIELD_NUMBER: _ClassVar[int]
    updates: _containers.RepeatedCompositeFieldContainer[AvailableUpdate]
    metadata_version: int
    checked_time: _timestamp_pb2.Timestamp
    def __init__(self, updates: _Optional[_Iterable[_Union[AvailableUpdate, _Mapping]]] = ..., metadata_version: _Optional[int] = ..., checked_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class UpdateStatus(_message.Message):
    __slots__ = ("phase", "artifact_id", "version", "bytes_done", "bytes_total", "message", "last_check_time", "next_check_time", "update_id")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LAST_CHECK_TIME_FIELD_NUMBER: _ClassVar[int]
    NEXT_CHECK_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_ID_FIELD_NUMBER: _ClassVar[int]
    phase: UpdatePhase
    artifact_id: str
    version: str
    bytes_done: int
    bytes_total: int
    message: str
    last_check_time: _timestamp_pb2.Timestamp
    next_check_time: _timestamp_pb2.Timestamp
    update_id: str
    def __init__(self, phase: _Optional[_Union[UpdatePhase, str]] = ..., artifact_id: _Optional[str] = ..., version: _Optional[str] = ..., bytes_done: _Optional[int] = ..., bytes_total: _Optional[int] = ..., message: _Optional[str] = ..., last_check_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., next_check_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_id: _Optional[str] = ...) -> None: ...

class InstalledArtifact(_message.Message):
    __slots__ = ("artifact_id", "kind", "version", "previous_version", "path", "installed_time")
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    INSTALLED_TIME_FIELD_NUMBER: _ClassVar[int]
    artifact_id: str
    kind: ArtifactKind
    version: str
    previous_version: str
    path: str
    installed_time: _timestamp_pb2.Timestamp
    def __init__(self, artifact_id: _Optional[str] = ..., kind: _Optional[_Union[ArtifactKind, str]] = ..., version: _Optional[str] = ..., previous_version: _Optional[str] = ..., path: _Optional[str] = ..., installed_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ApplyUpdateRequest(_message.Message):
    __slots__ = ("artifact_ids", "channel", "force", "wait")
    ARTIFACT_IDS_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    artifact_ids: _containers.RepeatedScalarFieldContainer[str]
    channel: str
    force: bool
    wait: bool
    def __init__(self, artifact_ids: _Optional[_Iterable[str]] = ..., channel: _Optional[str] = ..., force: _Optional[bool] = ..., wait: _Optional[bool] = ...) -> None: ...

class ApplyUpdateResponse(_message.Message):
    __slots__ = ("status", "records")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    status: UpdateStatus
    records: _containers.RepeatedCompositeFieldContainer[UpdateRecord]
    def __init__(self, status: _Optional[_Union[UpdateStatus, _Mapping]] = ..., records: _Optional[_Iterable[_Union[UpdateRecord, _Mapping]]] = ...) -> None: ...

class GetUpdateStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetUpdateStatusResponse(_message.Message):
    __slots__ = ("status", "installed", "metadata_version", "channel", "device_id")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    INSTALLED_FIELD_NUMBER: _ClassVar[int]
    METADATA_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    status: UpdateStatus
    installed: _containers.RepeatedCompositeFieldContainer[InstalledArtifact]
    metadata_version: int
    channel: str
    device_id: str
    def __init__(self, status: _Optional[_Union[UpdateStatus, _Mapping]] = ..., installed: _Optional[_Iterable[_Union[InstalledArtifact, _Mapping]]] = ..., metadata_version: _Optional[int] = ..., channel: _Optional[str] = ..., device_id: _Optional[str] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("artifact_id",)
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    artifact_id: str
    def __init__(self, artifact_id: _Optional[str] = ...) -> None: ...

class UpdateRecord(_message.Message):
    __slots__ = ("update_id", "artifact_id", "from_version", "to_version", "outcome", "message", "started_time", "finished_time", "kind")
    UPDATE_ID_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STARTED_TIME_FIELD_NUMBER: _ClassVar[int]
    FINISHED_TIME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    update_id: str
    artifact_id: str
    from_version: str
    to_version: str
    outcome: UpdatePhase
    message: str
    started_time: _timestamp_pb2.Timestamp
    finished_time: _timestamp_pb2.Timestamp
    kind: ArtifactKind
    def __init__(self, update_id: _Optional[str] = ..., artifact_id: _Optional[str] = ..., from_version: _Optional[str] = ..., to_version: _Optional[str] = ..., outcome: _Optional[_Union[UpdatePhase, str]] = ..., message: _Optional[str] = ..., started_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kind: _Optional[_Union[ArtifactKind, str]] = ...) -> None: ...

class RollbackResponse(_message.Message):
    __slots__ = ("record",)
    RECORD_FIELD_NUMBER: _ClassVar[int]
    record: UpdateRecord
    def __init__(self, record: _Optional[_Union[UpdateRecord, _Mapping]] = ...) -> None: ...

class ListHistoryRequest(_message.Message):
    __slots__ = ("limit", "page_size", "page_token")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    limit: int
    page_size: int
    page_token: str
    def __init__(self, limit: _Optional[int] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListHistoryResponse(_message.Message):
    __slots__ = ("records", "next_page_token")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[UpdateRecord]
    next_page_token: str
    def __init__(self, records: _Optional[_Iterable[_Union[UpdateRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelUpdateRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CancelUpdateResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: UpdateStatus
    def __init__(self, status: _Optional[_Union[UpdateStatus, _Mapping]] = ...) -> None: ...

class WatchUpdatesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchUpdatesResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: UpdateStatus
    def __init__(self, status: _Optional[_Union[UpdateStatus, _Mapping]] = ...) -> None: ...

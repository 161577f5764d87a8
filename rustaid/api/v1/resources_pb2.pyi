import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from rustaid.api.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PressureLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRESSURE_LEVEL_UNSPECIFIED: _ClassVar[PressureLevel]
    PRESSURE_LEVEL_NORMAL: _ClassVar[PressureLevel]
    PRESSURE_LEVEL_WARNING: _ClassVar[PressureLevel]
    PRESSURE_LEVEL_CRITICAL: _ClassVar[PressureLevel]

class ThermalState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    THERMAL_STATE_UNSPECIFIED: _ClassVar[ThermalState]
    THERMAL_STATE_NOMINAL: _ClassVar[ThermalState]
    THERMAL_STATE_FAIR: _ClassVar[ThermalState]
    THERMAL_STATE_SERIOUS: _ClassVar[ThermalState]
    THERMAL_STATE_CRITICAL: _ClassVar[ThermalState]

class BatteryState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BATTERY_STATE_UNSPECIFIED: _ClassVar[BatteryState]
    BATTERY_STATE_CHARGING: _ClassVar[BatteryState]
    BATTERY_STATE_DISCHARGING: _ClassVar[BatteryState]
    BATTERY_STATE_EMPTY: _ClassVar[BatteryState]
    BATTERY_STATE_FULL: _ClassVar[BatteryState]
    BATTERY_STATE_NOT_CHARGING: _ClassVar[BatteryState]

class ProfileSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROFILE_SOURCE_UNSPECIFIED: _ClassVar[ProfileSource]
    PROFILE_SOURCE_POWER_PROFILES_DAEMON: _ClassVar[ProfileSource]
    PROFILE_SOURCE_BATTERY: _ClassVar[ProfileSource]
    PROFILE_SOURCE_OVERRIDE: _ClassVar[ProfileSource]
    PROFILE_SOURCE_DEFAULT: _ClassVar[ProfileSource]
PRESSURE_LEVEL_UNSPECIFIED: PressureLevel
PRESSURE_LEVEL_NORMAL: PressureLevel
PRESSURE_LEVEL_WARNING: PressureLevel
PRESSURE_LEVEL_CRITICAL: PressureLevel
THERMAL_STATE_UNSPECIFIED: ThermalState
THERMAL_STATE_NOMINAL: ThermalState
THERMAL_STATE_FAIR: ThermalState
THERMAL_STATE_SERIOUS: ThermalState
THERMAL_STATE_CRITICAL: ThermalState
BATTERY_STATE_UNSPECIFIED: BatteryState
BATTERY_STATE_CHARGING: BatteryState
BATTERY_STATE_DISCHARGING: BatteryState
BATTERY_STATE_EMPTY: BatteryState
BATTERY_STATE_FULL: BatteryState
BATTERY_STATE_NOT_CHARGING: BatteryState
PROFILE_SOURCE_UNSPECIFIED: ProfileSource
PROFILE_SOURCE_POWER_PROFILES_DAEMON: ProfileSource
PROFILE_SOURCE_BATTERY: ProfileSource
PROFILE_SOURCE_OVERRIDE: ProfileSource
PROFILE_SOURCE_DEFAULT: ProfileSource

class MemoryStatus(_message.Message):
    __slots__ = ("total_bytes", "available_bytes", "used_bytes", "pressure", "psi_some_avg10", "psi_full_avg10", "reason")
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    PRESSURE_FIELD_NUMBER: _ClassVar[int]
    PSI_SOME_AVG10_FIELD_NUMBER: _ClassVar[int]
    PSI_FULL_AVG10_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    total_bytes: int
    available_bytes: int
    used_bytes: int
    pressure: PressureLevel
    psi_some_avg10: float
    psi_full_avg10: float
    reason: str
    def __init__(self, total_bytes: _Optional[int] = ..., available_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ..., pressure: _Optional[_Union[PressureLevel, str]] = ..., psi_some_avg10: _Optional[float] = ..., psi_full_avg10: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class CpuStatus(_message.Message):
    __slots__ = ("usage_percent", "frequency_mhz", "max_frequency_mhz", "cores", "others_busy_cores")
    USAGE_PERCENT_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_MHZ_FIELD_NUMBER: _ClassVar[int]
    MAX_FREQUENCY_MHZ_FIELD_NUMBER: _ClassVar[int]
    CORES_FIELD_NUMBER: _ClassVar[int]
    OTHERS_BUSY_CORES_FIELD_NUMBER: _ClassVar[int]
    usage_percent: float
    frequency_mhz: float
    max_frequency_mhz: float
    cores: int
    others_busy_cores: float
    def __init__(self, usage_percent: _Optional[float] = ..., frequency_mhz: _Optional[float] = ..., max_frequency_mhz: _Optional[float] = ..., cores: _Optional[int] = ..., others_busy_cores: _Optional[float] = ...) -> None: ...

class TripPoint(_message.Message):
    __slots__ = ("type", "temperature_c")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_C_FIELD_NUMBER: _ClassVar[int]
    type: str
    temperature_c: float
    def __init__(self, type: _Optional[str] = ..., temperature_c: _Optional[float] = ...) -> None: ...

class ThermalZone(_message.Message):
    __slots__ = ("name", "type", "temperature_c", "trip_points")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_C_FIELD_NUMBER: _ClassVar[int]
    TRIP_POINTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    temperature_c: float
    trip_points: _containers.RepeatedCompositeFieldContainer[TripPoint]
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., temperature_c: _Optional[float] = ..., trip_points: _Optional[_Iterable[_Union[TripPoint, _Mapping]]] = ...) -> None: ...

class ThrottlingStatus(_message.Message):
    __slots__ = ("under_voltage", "frequency_capped", "throttled", "soft_temperature_limit", "under_voltage_occurred", "frequency_capped_occurred", "throttled_occurred", "soft_temperature_limit_occurred")
    UNDER_VOLTAGE_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_CAPPED_FIELD_NUMBER: _ClassVar[int]
    THROTTLED_FIELD_NUMBER: _ClassVar[int]
    SOFT_TEMPERATURE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    UNDER_VOLTAGE_OCCURRED_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_CAPPED_OCCURRED_FIELD_NUMBER: _ClassVar[int]
    THROTTLED_OCCURRED_FIELD_NUMBER: _ClassVar[int]
    SOFT_TEMPERATURE_LIMIT_OCCURRED_FIELD_NUMBER: _ClassVar[int]
    under_voltage: bool
    frequency_capped: bool
    throttled: bool
    soft_temperature_limit: bool
    under_voltage_occurred: bool
    frequency_capped_occurred: bool
    throttled_occurred: bool
    soft_temperature_limit_occurred: bool
    def __init__(self, under_voltage: _Optional[bool] = ..., frequency_capped: _Optional[bool] = ..., throttled: _Optional[bool] = ..., soft_temperature_limit: _Optional[bool] = ..., under_voltage_occurred: _Optional[bool] = ..., frequency_capped_occurred: _Optional[bool] = ..., throttled_occurred: _Optional[bool] = ..., soft_temperature_limit_occurred: _Optional[bool] = ...) -> None: ...

class ThermalStatus(_message.Message):
    __slots__ = ("state", "zones", "throttling", "reason", "rising_state", "rising_reason")
    STATE_FIELD_NUMBER: _ClassVar[int]
    ZONES_FIELD_NUMBER: _ClassVar[int]
    THROTTLING_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RISING_STATE_FIELD_NUMBER: _ClassVar[int]
    RISING_REASON_FIELD_NUMBER: _ClassVar[int]
    state: ThermalState
    zones: _containers.RepeatedCompositeFieldContainer[ThermalZone]
    throttling: ThrottlingStatus
    reason: str
    rising_state: ThermalState
    rising_reason: str
    def __init__(self, state: _Optional[_Union[ThermalState, str]] = ..., zones: _Optional[_Iterable[_Union[ThermalZone, _Mapping]]] = ..., throttling: _Optional[_Union[ThrottlingStatus, _Mapping]] = ..., reason: _Optional[str] = ..., rising_state: _Optional[_Union[ThermalState, str]] = ..., rising_reason: _Optional[str] = ...) -> None: ...

class PowerStatus(_message.Message):
    __slots__ = ("battery_present", "on_battery", "ac_online", "battery_percent", "battery_state", "time_to_empty", "power_draw_watts", "warning_level", "source", "energy_full_wh")
    BATTERY_PRESENT_FIELD_NUMBER: _ClassVar[int]
    ON_BATTERY_FIELD_NUMBER: _ClassVar[int]
    AC_ONLINE_FIELD_NUMBER: _ClassVar[int]
    BATTERY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    BATTERY_STATE_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_EMPTY_FIELD_NUMBER: _ClassVar[int]
    POWER_DRAW_WATTS_FIELD_NUMBER: _ClassVar[int]
    WARNING_LEVEL_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    ENERGY_FULL_WH_FIELD_NUMBER: _ClassVar[int]
    battery_present: bool
    on_battery: bool
    ac_online: bool
    battery_percent: float
    battery_state: BatteryState
    time_to_empty: _duration_pb2.Duration
    power_draw_watts: float
    warning_level: int
    source: str
    energy_full_wh: float
    def __init__(self, battery_present: _Optional[bool] = ..., on_battery: _Optional[bool] = ..., ac_online: _Optional[bool] = ..., battery_percent: _Optional[float] = ..., battery_state: _Optional[_Union[BatteryState, str]] = ..., time_to_empty: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., power_draw_watts: _Optional[float] = ..., warning_level: _Optional[int] = ..., source: _Optional[str] = ..., energy_full_wh: _Optional[float] = ...) -> None: ...

class GpuStatus(_message.Message):
    __slots__ = ("name", "memory_total_bytes", "memory_used_bytes", "utilization_percent")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_PERCENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    memory_total_bytes: int
    memory_used_bytes: int
    utilization_percent: float
    def __init__(self, name: _Optional[str] = ..., memory_total_bytes: _Optional[int] = ..., memory_used_bytes: _Optional[int] = ..., utilization_percent: _Optional[float] = ...) -> None: ...

class ResourceSnapshot(_message.Message):
    __slots__ = ("time", "memory", "cpu", "thermal", "power", "gpus", "power_profile", "unavailable_sources", "profile_source")
    TIME_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    THERMAL_FIELD_NUMBER: _ClassVar[int]
    POWER_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    POWER_PROFILE_FIELD_NUMBER: _ClassVar[int]
    UNAVAILABLE_SOURCES_FIELD_NUMBER: _ClassVar[int]
    PROFILE_SOURCE_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    memory: MemoryStatus
    cpu: CpuStatus
    thermal: ThermalStatus
    power: PowerStatus
    gpus: _containers.RepeatedCompositeFieldContainer[GpuStatus]
    power_profile: _common_pb2.PowerProfile
    unavailable_sources: _containers.RepeatedScalarFieldContainer[str]
    profile_source: ProfileSource
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., memory: _Optional[_Union[MemoryStatus, _Mapping]] = ..., cpu: _Optional[_Union[CpuStatus, _Mapping]] = ..., thermal: _Optional[_Union[ThermalStatus, _Mapping]] = ..., power: _Optional[_Union[PowerStatus, _Mapping]] = ..., gpus: _Optional[_Iterable[_Union[GpuStatus, _Mapping]]] = ..., power_profile: _Optional[_Union[_common_pb2.PowerProfile, str]] = ..., unavailable_sources: _Optional[_Iterable[str]] = ..., profile_source: _Optional[_Union[ProfileSource, str]] = ...) -> None: ...

class GetSnapshotRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetSnapshotResponse(_message.Message):
    __slots__ = ("snapshot",)
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    snapshot: ResourceSnapshot
    def __init__(self, snapshot: _Optional[_Union[ResourceSnapshot, _Mapping]] = ...) -> None: ...

class WatchSnapshotsRequest(_message.Message):
    __slots__ = ("min_interval",)
    MIN_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    min_interval: _duration_pb2.Duration
    def __init__(self, min_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class WatchSnapshotsResponse(_message.Message):
    __slots__ = ("snapshot",)
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    snapshot: ResourceSnapshot
    def __init__(self, snapshot: _Optional[_Union[ResourceSnapshot, _Mapping]] = ...) -> None: ...

class ProfileParameters(_message.Message):
    __slots__ = ("threads", "use_gpu", "prefer_remote", "max_local_tokens", "batch_size", "context_length", "caching", "background_inference")
    THREADS_FIELD_NUMBER: _ClassVar[int]
    USE_GPU_FIELD_NUMBER: _ClassVar[int]
    PREFER_REMOTE_FIELD_NUMBER: _ClassVar[int]
    MAX_LOCAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    CACHING_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_INFERENCE_FIELD_NUMBER: _ClassVar[int]
    threads: int
    use_gpu: bool
    prefer_remote: bool
    max_local_tokens: int
    batch_size: int
    context_length: int
    caching: bool
    background_inference: bool
    def __init__(self, threads: _Optional[int] = ..., use_gpu: _Optional[bool] = ..., prefer_remote: _Optional[bool] = ..., max_local_tokens: _Optional[int] = ..., batch_size: _Optional[int] = ..., context_length: _Optional[int] = ..., caching: _Optional[bool] = ..., background_inference: _Optional[bool] = ...) -> None: ...

class GetPowerProfileRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetPowerProfileResponse(_message.Message):
    __slots__ = ("profile", "source", "parameters", "reason")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    profile: _common_pb2.PowerProfile
    source: ProfileSource
    parameters: ProfileParameters
    reason: str
    def __init__(self, profile: _Optional[_Union[_common_pb2.PowerProfile, str]] = ..., source: _Optional[_Union[ProfileSource, str]] = ..., parameters: _Optional[_Union[ProfileParameters, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class SetPowerProfileRequest(_message.Message):
    __slots__ = ("profile", "clear_override", "custom")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    CLEAR_OVERRIDE_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_FIELD_NUMBER: _ClassVar[int]
    profile: _common_pb2.PowerProfile
    clear_override: bool
    custom: ProfileParameters
    def __init__(self, profile: _Optional[_Union[_common_pb2.PowerProfile, str]] = ..., clear_override: _Optional[bool] = ..., custom: _Optional[_Union[ProfileParameters, _Mapping]] = ...) -> None: ...

class SetPowerProfileResponse(_message.Message):
    __slots__ = ("profile", "source", "parameters", "reason")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    profile: _common_pb2.PowerProfile
    source: ProfileSource
    parameters: ProfileParameters
    reason: str
    def __init__(self, profile: _Optional[_Union[_common_pb2.PowerProfile, str]] = ..., source: _Optional[_Union[ProfileSource, str]] = ..., parameters: _Optional[_Union[ProfileParameters, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class EstimateCostRequest(_message.Message):
    __slots__ = ("model_id", "prompt_tokens", "max_tokens")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    prompt_tokens: int
    max_tokens: int
    def __init__(self, model_id: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., max_tokens: _Optional[int] = ...) -> None: ...

class EstimateCostResponse(_message.Message):
    __slots__ = ("duration", "energy_joules", "battery_percent", "basis", "energy_mwh", "max_tokens")
    DURATION_FIELD_NUMBER: _ClassVar[int]
    ENERGY_JOULES_FIELD_NUMBER: _ClassVar[int]
    BATTERY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    BASIS_FIELD_NUMBER: _ClassVar[int]
    ENERGY_MWH_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    duration: _duration_pb2.Duration
    energy_joules: float
    battery_percent: float
    basis: str
    energy_mwh: float
    max_tokens: int
    def __init__(self, duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., energy_joules: _Optional[float] = ..., battery_percent: _Optional[float] = ..., basis: _Optional[str] = ..., energy_mwh: _Optional[float] = ..., max_tokens: _Optional[int] = ...) -> None: ...

class ModelMetrics(_message.Message):
    __slots__ = ("model_id", "requests", "prompt_tokens", "completion_tokens", "tokens_per_second", "time_to_first_token_ms", "energy_joules", "joules_per_token", "errors")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    ENERGY_JOULES_FIELD_NUMBER: _ClassVar[int]
    JOULES_PER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    tokens_per_second: float
    time_to_first_token_ms: float
    energy_joules: float
    joules_per_token: float
    errors: int
    def __init__(self, model_id: _Optional[str] = ..., requests: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., tokens_per_second: _Optional[float] = ..., time_to_first_token_ms: _Optional[float] = ..., energy_joules: _Optional[float] = ..., joules_per_token: _Optional[float] = ..., errors: _Optional[int] = ...) -> None: ...

class GetMetricsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetMetricsResponse(_message.Message):
    __slots__ = ("requests", "errors", "models", "since")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    requests: int
    errors: int
    models: _containers.RepeatedCompositeFieldContainer[ModelMetrics]
    since: _timestamp_pb2.Timestamp
    def __init__(self, requests: _Optional[int] = ..., errors: _Optional[int] = ..., models: _Optional[_Iterable[_Union[ModelMetrics, _Mapping]]] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ResetMetricsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResetMetricsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from rustaid.api.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PluginState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PLUGIN_STATE_UNSPECIFIED: _ClassVar[PluginState]
    PLUGIN_STATE_DISCOVERED: _ClassVar[PluginState]
    PLUGIN_STATE_VALIDATED: _ClassVar[PluginState]
    PLUGIN_STATE_LOADED: _ClassVar[PluginState]
    PLUGIN_STATE_ACTIVE: _ClassVar[PluginState]
    PLUGIN_STATE_INACTIVE: _ClassVar[PluginState]
    PLUGIN_STATE_UNLOADED: _ClassVar[PluginState]
    PLUGIN_STATE_FAILED: _ClassVar[PluginState]

class PluginSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PLUGIN_SOURCE_UNSPECIFIED: _ClassVar[PluginSource]
    PLUGIN_SOURCE_BUILTIN: _ClassVar[PluginSource]
    PLUGIN_SOURCE_ENTRY_POINT: _ClassVar[PluginSource]
    PLUGIN_SOURCE_DROP_IN: _ClassVar[PluginSource]
PLUGIN_STATE_UNSPECIFIED: PluginState
PLUGIN_STATE_DISCOVERED: PluginState
PLUGIN_STATE_VALIDATED: PluginState
PLUGIN_STATE_LOADED: PluginState
PLUGIN_STATE_ACTIVE: PluginState
PLUGIN_STATE_INACTIVE: PluginState
PLUGIN_STATE_UNLOADED: PluginState
PLUGIN_STATE_FAILED: PluginState
PLUGIN_SOURCE_UNSPECIFIED: PluginSource
PLUGIN_SOURCE_BUILTIN: PluginSource
PLUGIN_SOURCE_ENTRY_POINT: PluginSource
PLUGIN_SOURCE_DROP_IN: PluginSource

class Plugin(_message.Message):
    __slots__ = ("id", "name", "version", "description", "state", "source", "capabilities", "requirements", "error", "path", "loaded_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    REQUIREMENTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    LOADED_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    version: str
    description: str
    state: PluginState
    source: PluginSource
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    requirements: _common_pb2.ResourceRequirements
    error: str
    path: str
    loaded_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[str] = ..., description: _Optional[str] = ..., state: _Optional[_Union[PluginState, str]] = ..., source: _Optional[_Union[PluginSource, str]] = ..., capabilities: _Optional[_Iterable[str]] = ..., requirements: _Optional[_Union[_common_pb2.ResourceRequirements, _Mapping]] = ..., error: _Optional[str] = ..., path: _Optional[str] = ..., loaded_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListPluginsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListPluginsResponse(_message.Message):
    __slots__ = ("plugins", "next_page_token")
    PLUGINS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    plugins: _containers.RepeatedCompositeFieldContainer[Plugin]
    next_page_token: str
    def __init__(self, plugins: _Optional[_Iterable[_Union[Plugin, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetPluginRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetPluginResponse(_message.Message):
    __slots__ = ("plugin",)
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    plugin: Plugin
    def __init__(self, plugin: _Optional[_Union[Plugin, _Mapping]] = ...) -> None: ...

class LoadPluginRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class LoadPluginResponse(_message.Message):
    __slots__ = ("plugin",)
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    plugin: Plugin
    def __init__(self, plugin: _Optional[_Union[Plugin, _Mapping]] = ...) -> None: ...

class UnloadPluginRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class UnloadPluginResponse(_message.Message):
    __slots__ = ("plugin",)
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    plugin: Plugin
    def __init__(self, plugin: _Optional[_Union[Plugin, _Mapping]] = ...) -> None: ...

class ReloadPluginRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ReloadPluginResponse(_message.Message):
    __slots__ = ("plugin",)
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    plugin: Plugin
    def __init__(self, plugin: _Optional[_Union[Plugin, _Mapping]] = ...) -> None: ...

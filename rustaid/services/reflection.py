"""Server reflection for tools such as `buf curl` and `grpcurl`.

Served as `grpc.reflection.v1` (what current tools ask for first) and as
`grpc.reflection.v1alpha`: the two protocols have the same messages under another
package, so one servicer answers both. grpcio-reflection ships v1alpha only.

Every file sent also brings `google/rpc/status.proto` and `google/rpc/error_details.proto`
(and their dependencies), so that a client that decodes an error's details
(`ErrorInfo`, `BadRequest`, `RetryInfo` in `grpc-status-details-bin`) knows these types
without asking for them by name, which `buf curl` does not do.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor
from google.rpc import error_details_pb2, status_pb2
from grpc_reflection.v1alpha import _async, reflection_pb2

V1 = "grpc.reflection.v1.ServerReflection"
V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
METHOD = "ServerReflectionInfo"


def _with_dependencies(files: Iterable[FileDescriptor]) -> list[FileDescriptor]:
    seen: dict[str, FileDescriptor] = {}
    todo = list(files)
    while todo:
        f = todo.pop()
        if f.name not in seen:
            seen[f.name] = f
            todo.extend(f.dependencies)
    return list(seen.values())


# The error detail types, with what they import (duration.proto, any.proto).
DETAIL_FILES = _with_dependencies((status_pb2.DESCRIPTOR, error_details_pb2.DESCRIPTOR))


class Reflection(_async.ReflectionServicer):  # type: ignore[misc]  # untyped base
    """grpcio-reflection's servicer, whose file answers carry the error detail types."""

    def _file_by_filename(self, request: Any, filename: str) -> Any:
        return _add_detail_files(super()._file_by_filename(request, filename))

    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        return _add_detail_files(super()._file_containing_symbol(request, fully_qualified_name))


def _add_detail_files(
    response: reflection_pb2.ServerReflectionResponse,
) -> reflection_pb2.ServerReflectionResponse:
    if not response.HasField("file_descriptor_response"):
        return response
    files = response.file_descriptor_response.file_descriptor_proto
    have = {descriptor_pb2.FileDescriptorProto.FromString(b).name for b in files}
    for f in DETAIL_FILES:
        if f.name not in have:
            proto = descriptor_pb2.FileDescriptorProto()
            f.CopyToProto(proto)
            files.append(proto.SerializeToString())
    return response


def add_reflection(server: grpc.aio.Server, service_names: Iterable[str]) -> None:
    """Serve reflection (v1 and v1alpha) listing `service_names` and itself."""
    servicer = Reflection((*service_names, V1, V1ALPHA))
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    handlers = (grpc.method_handlers_generic_handler(n, {METHOD: handler}) for n in (V1, V1ALPHA))
    server.add_generic_rpc_handlers(tuple(handlers))

"""The gRPC edge: a grpc.aio server with every service, health and reflection."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from rustaid.api.v1 import (
    generate_pb2,
    generate_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    nlu_pb2,
    nlu_pb2_grpc,
    plugins_pb2,
    plugins_pb2_grpc,
    rag_pb2,
    rag_pb2_grpc,
    resources_pb2,
    resources_pb2_grpc,
    tools_pb2,
    tools_pb2_grpc,
    updates_pb2,
    updates_pb2_grpc,
)
from rustaid.services.auth import AuthInterceptor
from rustaid.services.context import AdmissionInterceptor, RequestContextInterceptor
from rustaid.services.errors import ErrorInterceptor
from rustaid.services.generate import GenerateServicer
from rustaid.services.models import ModelsServicer
from rustaid.services.plugins import PluginsServicer
from rustaid.services.rag import RagServicer
from rustaid.services.reflection import add_reflection
from rustaid.services.resources import ResourcesServicer
from rustaid.services.tools import NluServicer, ToolsServicer
from rustaid.services.updates import UpdatesServicer
from rustaid.sockets import check_socket_free, secure_socket, unix_path

if TYPE_CHECKING:
    from rustaid.auth.manager import Auth
    from rustaid.config import CurrentSettings
    from rustaid.core.engine import Engine
    from rustaid.core.folder import ModelFolder
    from rustaid.plugins import PluginManager
    from rustaid.power.manager import ResourceManager
    from rustaid.pull.puller import Puller
    from rustaid.rag.manager import Rag
    from rustaid.tools.nlu import Nlu
    from rustaid.tools.registry import ToolRegistry
    from rustaid.updates.manager import UpdateManager

log = logging.getLogger(__name__)

SERVICE_NAMES = tuple(
    f.services_by_name[name].full_name
    for f, name in (
        (models_pb2.DESCRIPTOR, "ModelsService"),
        (generate_pb2.DESCRIPTOR, "GenerateService"),
        (rag_pb2.DESCRIPTOR, "RagService"),
        (tools_pb2.DESCRIPTOR, "ToolsService"),
        (plugins_pb2.DESCRIPTOR, "PluginsService"),
        (resources_pb2.DESCRIPTOR, "ResourcesService"),
        (updates_pb2.DESCRIPTOR, "UpdatesService"),
        (nlu_pb2.DESCRIPTOR, "NluService"),
    )
)

# Big enough for a long prompt or a document upload, small enough to bound memory
# (the default of the max_message_mb setting).
MAX_MESSAGE_BYTES = 16 << 20


@dataclass(frozen=True)
class GrpcParts:
    """What the gRPC edge serves, built by the composition root (rustaid.daemon); each
    servicer gets only the parts it uses."""

    settings: CurrentSettings
    engine: Engine
    plugins: PluginManager
    rag: Rag
    tools: ToolRegistry
    nlu: Nlu
    updates: UpdateManager
    resources: ResourceManager
    puller: Puller
    folder: ModelFolder
    auth: Auth
    # Interceptors outside the error mapping (the metrics, when they are on).
    interceptors: Sequence[grpc.aio.ServerInterceptor] = ()  # type: ignore[type-arg]


def build_server(parts: GrpcParts) -> tuple[grpc.aio.Server, health_aio.HealthServicer]:
    settings = parts.settings()
    max_message = settings.max_message_mb << 20
    server = grpc.aio.server(
        # Request context first: its id is in every later log line (it changes no status).
        # Metrics next: they count the status code the client receives.
        # Admission last: it limits per caller, so it follows whatever identifies the caller.
        interceptors=[
            RequestContextInterceptor(),
            *parts.interceptors,
            ErrorInterceptor(),
            # Authentication inside the error mapping (its denials are domain errors),
            # before admission (which limits per authenticated caller).
            AuthInterceptor(parts.auth),
            AdmissionInterceptor(parts.engine.admission),
        ],
        options=[
            ("grpc.max_receive_message_length", max_message),
            ("grpc.max_send_message_length", max_message),
            ("grpc.so_reuseport", 0),
        ],
    )
    models = ModelsServicer(parts.engine, parts.rag, parts.puller, parts.folder, parts.settings)
    models_pb2_grpc.add_ModelsServiceServicer_to_server(models, server)
    generate_pb2_grpc.add_GenerateServiceServicer_to_server(
        GenerateServicer(parts.engine, parts.settings), server
    )
    plugins_pb2_grpc.add_PluginsServiceServicer_to_server(PluginsServicer(parts.plugins), server)
    rag_pb2_grpc.add_RagServiceServicer_to_server(RagServicer(parts.rag), server)
    resources_pb2_grpc.add_ResourcesServiceServicer_to_server(
        ResourcesServicer(parts.resources), server
    )
    updates_pb2_grpc.add_UpdatesServiceServicer_to_server(UpdatesServicer(parts.updates), server)
    tools_pb2_grpc.add_ToolsServiceServicer_to_server(
        ToolsServicer(parts.tools, parts.engine), server
    )
    nlu_pb2_grpc.add_NluServiceServicer_to_server(NluServicer(parts.nlu), server)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    add_reflection(server, (*SERVICE_NAMES, health.SERVICE_NAME))
    auth = parts.auth
    auth.prepare()  # token file, groups: refuses to start on an unsafe setting
    for address in settings.listen:
        path = unix_path(address)
        if path is None:
            auth.add_tcp_port(server, address)  # TLS, or plain on loopback if allowed
            continue
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        check_socket_free(path)
        if settings.peer_credentials:
            # The daemon accepts on the socket itself to learn each peer's credentials.
            auth.add_unix_relay(server, path)
            secure_socket(path, settings.socket_mode, settings.socket_group)
            continue
        old = os.umask(0o177)  # no window where the socket is open to others
        try:
            server.add_insecure_port(f"unix://{path}")
        finally:
            os.umask(old)
        secure_socket(path, settings.socket_mode, settings.socket_group)
    return server, health_servicer


async def set_serving(health_servicer: health_aio.HealthServicer, serving: bool) -> None:
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, status)


GENERATE_SERVICE = generate_pb2.DESCRIPTOR.services_by_name["GenerateService"].full_name


async def set_generate_serving(health_servicer: health_aio.HealthServicer, serving: bool) -> None:
    """GenerateService alone: NOT_SERVING while the device is critically hot."""
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    await health_servicer.set(GENERATE_SERVICE, status)

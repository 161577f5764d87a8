"""The gRPC edge: a grpc.aio server with every service, health and reflection."""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

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
from rustaid.auth.interceptor import AuthInterceptor
from rustaid.errors import InvalidArgument, Unavailable
from rustaid.observability import metrics_interceptors
from rustaid.services.context import AdmissionInterceptor, RequestContextInterceptor
from rustaid.services.errors import ErrorInterceptor
from rustaid.services.generate import GenerateServicer
from rustaid.services.models import ModelsServicer
from rustaid.services.plugins import PluginsServicer
from rustaid.services.rag import RagServicer
from rustaid.services.resources import ResourcesServicer
from rustaid.services.tools import NluServicer, ToolsServicer
from rustaid.services.unimplemented import SERVICERS, unimplemented_servicer
from rustaid.services.updates import UpdatesServicer

if TYPE_CHECKING:
    from rustaid.daemon import Daemon

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


def _unix_path(address: str) -> Path | None:
    if address.startswith("unix://"):
        return Path(address.removeprefix("unix://"))
    if address.startswith("unix:"):
        return Path(address.removeprefix("unix:"))
    return None


def _check_socket_free(path: Path) -> None:
    """Refuse to steal the socket of a daemon that is still running; remove a stale one."""
    if not path.exists():
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            path.unlink()  # left by a daemon that died
            return
    raise Unavailable(f"another process is already listening on {path}")


def _secure_socket(path: Path, mode: int, group: str) -> None:
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError as e:
            raise InvalidArgument(f"socket_group {group!r} does not exist") from e
        os.chown(path, -1, gid)
    path.chmod(mode)


def build_server(daemon: Daemon) -> tuple[grpc.aio.Server, health_aio.HealthServicer]:
    max_message = daemon.settings.max_message_mb << 20
    server = grpc.aio.server(
        # Request context first: its id is in every later log line (it changes no status).
        # Metrics next: they count the status code the client receives.
        # Admission last: it limits per caller, so it follows whatever identifies the caller.
        interceptors=[
            RequestContextInterceptor(),
            *metrics_interceptors(daemon),
            ErrorInterceptor(),
            # Authentication inside the error mapping (its denials are domain errors),
            # before admission (which limits per authenticated caller).
            AuthInterceptor(daemon.auth),
            AdmissionInterceptor(daemon.engine.admission),
        ],
        options=[
            ("grpc.max_receive_message_length", max_message),
            ("grpc.max_send_message_length", max_message),
            ("grpc.so_reuseport", 0),
        ],
    )
    models_pb2_grpc.add_ModelsServiceServicer_to_server(ModelsServicer(daemon), server)
    generate_pb2_grpc.add_GenerateServiceServicer_to_server(GenerateServicer(daemon), server)
    plugins_pb2_grpc.add_PluginsServiceServicer_to_server(PluginsServicer(daemon), server)
    rag_pb2_grpc.add_RagServiceServicer_to_server(RagServicer(daemon), server)
    resources_pb2_grpc.add_ResourcesServiceServicer_to_server(
        ResourcesServicer(daemon.resources), server
    )
    updates_pb2_grpc.add_UpdatesServiceServicer_to_server(UpdatesServicer(daemon), server)
    tools_pb2_grpc.add_ToolsServiceServicer_to_server(ToolsServicer(daemon), server)
    nlu_pb2_grpc.add_NluServiceServicer_to_server(NluServicer(daemon), server)
    for base, add, name in SERVICERS:
        add(unimplemented_servicer(base, name), server)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    settings = daemon.settings
    daemon.auth.prepare()  # token file, groups: refuses to start on an unsafe setting
    for address in settings.listen:
        path = _unix_path(address)
        if path is None:
            daemon.auth.add_tcp_port(server, address)  # TLS, or plain on loopback if allowed
            continue
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        _check_socket_free(path)
        if settings.peer_credentials:
            # The daemon accepts on the socket itself to learn each peer's credentials.
            daemon.auth.add_unix_relay(server, path)
            _secure_socket(path, settings.socket_mode, settings.socket_group)
            continue
        old = os.umask(0o177)  # no window where the socket is open to others
        try:
            server.add_insecure_port(f"unix://{path}")
        finally:
            os.umask(old)
        _secure_socket(path, settings.socket_mode, settings.socket_group)
    return server, health_servicer


async def set_serving(health_servicer: health_aio.HealthServicer, serving: bool) -> None:
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    not_served = {service.full_name for _, _, service in SERVICERS}
    for name in ("", *SERVICE_NAMES):
        served = serving and name not in not_served
        await health_servicer.set(
            name,
            status if served else health_pb2.HealthCheckResponse.NOT_SERVING,
        )


GENERATE_SERVICE = generate_pb2.DESCRIPTOR.services_by_name["GenerateService"].full_name


async def set_generate_serving(health_servicer: health_aio.HealthServicer, serving: bool) -> None:
    """GenerateService alone: NOT_SERVING while the device is critically hot."""
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    await health_servicer.set(GENERATE_SERVICE, status)


def remove_sockets(listen: tuple[str, ...]) -> None:
    for address in listen:
        path = _unix_path(address)
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

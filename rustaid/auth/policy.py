"""Who may call what: every RPC of the contract, classified.

Three levels:

- PUBLIC: health checks and reflection. Any peer that can connect may call them (on
  TCP without a token too), so load balancers, `grpc_health_probe` and `buf curl` work.
- USER: uses the daemon without changing it for others: generation, embeddings,
  search, listings, status. Members of the socket's group (group `rustai` for the
  system service), holders of any valid token or client certificate.
- ADMIN: changes the daemon's state for everyone: plugins, updates, the power profile,
  the model cache, collections and their documents, metrics. Root, the daemon's own
  user, `admin_uids`, members of `admin_group`, admin tokens, `admin_cert_names`.

Every method of every service in rustaid.api.v1 must be listed here; a test walks the
service descriptors and fails on an RPC that is not, so a new RPC cannot slip by. An
unlisted method (a newer contract than this table) is treated as ADMIN: closed by
default. docs/security.md carries the same table; a test compares them.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class Access(enum.IntEnum):
    PUBLIC = 0
    USER = 1
    ADMIN = 2


PUBLIC, USER, ADMIN = Access.PUBLIC, Access.USER, Access.ADMIN

PACKAGE = "rustaid.api.v1"

# Services that answer any peer that may connect.
PUBLIC_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)

# service (without the package) -> method -> access. Keep docs/security.md in step.
RPC_ACCESS: Mapping[str, Mapping[str, Access]] = {
    "ModelsService": {
        "ListModels": USER,
        "GetModel": USER,
        # Loading (with pins and keep-alive) and unloading manage the memory every
        # caller shares; a generation still loads the model it needs.
        "LoadModel": ADMIN,
        "UnloadModel": ADMIN,
        "WatchModels": USER,
        "SelectModel": USER,
        # Writes to and removes from the models folder every caller shares.
        "PullModel": ADMIN,
        "DeleteModel": ADMIN,
    },
    "GenerateService": {
        "Generate": USER,
        "GenerateStream": USER,
        "Chat": USER,
        "ChatStream": USER,
        "Tokenize": USER,
        "CountTokens": USER,
    },
    "RagService": {
        "Embed": USER,
        "CreateCollection": ADMIN,
        "ListCollections": USER,
        "DeleteCollection": ADMIN,
        "IndexDocuments": ADMIN,
        # Reads files with the daemon's rights (inside the allowed folders).
        "IndexFile": ADMIN,
        "IndexFileStream": ADMIN,
        "Search": USER,
        "DeleteDocuments": ADMIN,
        "Ask": USER,
    },
    "ToolsService": {
        "ListTools": USER,
        # Tools that reach outside (http_get, code_exec) are off until an administrator
        # enables them in the settings; enabled tools are for every user.
        "ExecuteTool": USER,
        "RunAgent": USER,
    },
    "NluService": {
        "ClassifyIntent": USER,
        "ExtractEntities": USER,
    },
    "PluginsService": {
        "ListPlugins": USER,
        "GetPlugin": USER,
        "LoadPlugin": ADMIN,
        "UnloadPlugin": ADMIN,
        "ReloadPlugin": ADMIN,
    },
    "ResourcesService": {
        "GetSnapshot": USER,
        "WatchSnapshots": USER,
        "GetPowerProfile": USER,
        "SetPowerProfile": ADMIN,
        "EstimateCost": USER,
        "GetMetrics": USER,
        "ResetMetrics": ADMIN,
    },
    "UpdatesService": {
        # Contacts the update server and may start downloads.
        "CheckUpdates": ADMIN,
        "ApplyUpdate": ADMIN,
        "GetUpdateStatus": USER,
        "Rollback": ADMIN,
        "ListHistory": USER,
        "WatchUpdates": USER,
        "CancelUpdate": ADMIN,
    },
}

_BY_PATH: dict[str, Access] = {
    f"/{PACKAGE}.{service}/{method}": access
    for service, methods in RPC_ACCESS.items()
    for method, access in methods.items()
}


def classified_methods() -> dict[str, Access]:
    """Every classified method by its gRPC path ("/rustaid.api.v1.X/Y")."""
    return dict(_BY_PATH)


def access_for(path: str) -> Access:
    """The access level of a gRPC method path; unknown methods are ADMIN."""
    found = _BY_PATH.get(path)
    if found is not None:
        return found
    service = path.lstrip("/").split("/", 1)[0]
    if service in PUBLIC_SERVICES:
        return PUBLIC
    return ADMIN

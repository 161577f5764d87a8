"""UpdatesService: the OTA updater over gRPC."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from rustaid.api.v1 import updates_pb2, updates_pb2_grpc
from rustaid.errors import InvalidArgument
from rustaid.services.convert import updates as convert

if TYPE_CHECKING:
    from rustaid.daemon import Daemon

Context = Any  # grpc.aio.ServicerContext

DEFAULT_HISTORY = 50
MAX_HISTORY = 1000


class UpdatesServicer(updates_pb2_grpc.UpdatesServiceServicer):
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    async def CheckUpdates(
        self, request: updates_pb2.CheckUpdatesRequest, context: Context
    ) -> updates_pb2.CheckUpdatesResponse:
        result = await self.daemon.updates.check(request.channel)
        return convert.check_updates_response_to_pb(result)

    async def ApplyUpdate(
        self, request: updates_pb2.ApplyUpdateRequest, context: Context
    ) -> updates_pb2.ApplyUpdateResponse:
        status, records = await self.daemon.updates.apply(
            list(request.artifact_ids),
            request.channel,
            force=request.force,
            wait=request.wait,
        )
        return updates_pb2.ApplyUpdateResponse(
            status=convert.update_status_to_pb(status),
            records=[convert.update_record_to_pb(r) for r in records],
        )

    async def GetUpdateStatus(
        self, request: updates_pb2.GetUpdateStatusRequest, context: Context
    ) -> updates_pb2.GetUpdateStatusResponse:
        manager = self.daemon.updates
        return updates_pb2.GetUpdateStatusResponse(
            status=convert.update_status_to_pb(manager.status()),
            installed=[convert.installed_artifact_to_pb(i) for i in manager.installed()],
            metadata_version=manager.metadata_version,
            channel=manager.config.channel,
            device_id=manager.device_id,
        )

    async def Rollback(
        self, request: updates_pb2.RollbackRequest, context: Context
    ) -> updates_pb2.RollbackResponse:
        record = await self.daemon.updates.rollback(request.artifact_id)
        return updates_pb2.RollbackResponse(record=convert.update_record_to_pb(record))

    async def ListHistory(
        self, request: updates_pb2.ListHistoryRequest, context: Context
    ) -> updates_pb2.ListHistoryResponse:
        limit = request.limit or DEFAULT_HISTORY
        if limit > MAX_HISTORY:
            raise InvalidArgument(
                f"limit must be at most {MAX_HISTORY} (got {request.limit})", field="limit"
            )
        records = self.daemon.updates.list_history(limit)
        return updates_pb2.ListHistoryResponse(
            records=[convert.update_record_to_pb(r) for r in records]
        )

    async def WatchUpdates(
        self, request: updates_pb2.WatchUpdatesRequest, context: Context
    ) -> AsyncIterator[updates_pb2.WatchUpdatesResponse]:
        manager = self.daemon.updates
        async with manager.events.subscribe() as queue:
            yield updates_pb2.WatchUpdatesResponse(
                status=convert.update_status_to_pb(manager.status())
            )
            while True:
                status = await queue.get()
                yield updates_pb2.WatchUpdatesResponse(status=convert.update_status_to_pb(status))

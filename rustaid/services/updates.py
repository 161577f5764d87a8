"""UpdatesService: the OTA updater over gRPC."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from rustaid.api.v1 import updates_pb2, updates_pb2_grpc
from rustaid.errors import InvalidArgument
from rustaid.services.convert import updates as convert
from rustaid.services.paging import paginate

if TYPE_CHECKING:
    from rustaid.updates.manager import UpdateManager

Context = Any  # grpc.aio.ServicerContext

DEFAULT_HISTORY = 50
MAX_HISTORY = 1000


class UpdatesServicer(updates_pb2_grpc.UpdatesServiceServicer):
    def __init__(self, updates: UpdateManager) -> None:
        self.updates = updates

    async def CheckUpdates(
        self, request: updates_pb2.CheckUpdatesRequest, context: Context
    ) -> updates_pb2.CheckUpdatesResponse:
        result = await self.updates.check(request.channel)
        return convert.check_updates_response_to_pb(result)

    async def ApplyUpdate(
        self, request: updates_pb2.ApplyUpdateRequest, context: Context
    ) -> updates_pb2.ApplyUpdateResponse:
        status, records = await self.updates.apply(
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
        manager = self.updates
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
        record = await self.updates.rollback(request.artifact_id)
        return updates_pb2.RollbackResponse(record=convert.update_record_to_pb(record))

    async def CancelUpdate(
        self, request: updates_pb2.CancelUpdateRequest, context: Context
    ) -> updates_pb2.CancelUpdateResponse:
        status = await self.updates.cancel()
        return updates_pb2.CancelUpdateResponse(status=convert.update_status_to_pb(status))

    async def ListHistory(
        self, request: updates_pb2.ListHistoryRequest, context: Context
    ) -> updates_pb2.ListHistoryResponse:
        limit = request.limit or DEFAULT_HISTORY
        if limit > MAX_HISTORY:
            raise InvalidArgument(
                f"limit must be at most {MAX_HISTORY} (got {request.limit})", field="limit"
            )
        if not (request.page_size or request.page_token):
            records = self.updates.list_history(limit)
            return updates_pb2.ListHistoryResponse(
                records=[convert.update_record_to_pb(r) for r in records]
            )
        # The journal only grows: a record's place in it is its key, newest first.
        newest_first = self.updates.list_history(sys.maxsize)
        keyed = [(f"{len(newest_first) - i:012d}", r) for i, r in enumerate(newest_first)]
        page = paginate(
            keyed, lambda k: k[0], request.page_size, request.page_token, newest_first=True
        )
        return updates_pb2.ListHistoryResponse(
            records=[convert.update_record_to_pb(r) for _, r in page.items],
            next_page_token=page.next_page_token,
        )

    async def WatchUpdates(
        self, request: updates_pb2.WatchUpdatesRequest, context: Context
    ) -> AsyncIterator[updates_pb2.WatchUpdatesResponse]:
        manager = self.updates
        async with manager.events.subscribe() as queue:
            yield updates_pb2.WatchUpdatesResponse(
                status=convert.update_status_to_pb(manager.status())
            )
            while True:
                status = await queue.get()
                yield updates_pb2.WatchUpdatesResponse(status=convert.update_status_to_pb(status))

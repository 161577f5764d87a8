"""PluginsService: the plugin manager over gRPC."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from rustaid.api.v1 import plugins_pb2, plugins_pb2_grpc
from rustaid.errors import InvalidArgument
from rustaid.services import convert
from rustaid.services.paging import paginate

if TYPE_CHECKING:
    from rustaid.plugins import PluginManager

Context = Any  # grpc.aio.ServicerContext


def _require_id(plugin_id: str) -> str:
    if not plugin_id:
        raise InvalidArgument("id is empty: give a plugin id from ListPlugins", field="id")
    return plugin_id


class PluginsServicer(plugins_pb2_grpc.PluginsServiceServicer):
    def __init__(self, plugins: PluginManager) -> None:
        self.plugins = plugins

    async def ListPlugins(
        self, request: plugins_pb2.ListPluginsRequest, context: Context
    ) -> plugins_pb2.ListPluginsResponse:
        page = paginate(self.plugins.list(), lambda p: p.id, request.page_size, request.page_token)
        return plugins_pb2.ListPluginsResponse(
            plugins=[convert.plugin_to_pb(p) for p in page.items],
            next_page_token=page.next_page_token,
        )

    async def GetPlugin(
        self, request: plugins_pb2.GetPluginRequest, context: Context
    ) -> plugins_pb2.GetPluginResponse:
        record = self.plugins.get(_require_id(request.id))
        return plugins_pb2.GetPluginResponse(plugin=convert.plugin_to_pb(record))

    # Loading runs plugin code (imports, start-up hooks): keep it off the event loop.
    async def LoadPlugin(
        self, request: plugins_pb2.LoadPluginRequest, context: Context
    ) -> plugins_pb2.LoadPluginResponse:
        record = await asyncio.to_thread(self.plugins.load, _require_id(request.id))
        return plugins_pb2.LoadPluginResponse(plugin=convert.plugin_to_pb(record))

    async def UnloadPlugin(
        self, request: plugins_pb2.UnloadPluginRequest, context: Context
    ) -> plugins_pb2.UnloadPluginResponse:
        record = await asyncio.to_thread(self.plugins.unload, _require_id(request.id))
        return plugins_pb2.UnloadPluginResponse(plugin=convert.plugin_to_pb(record))

    async def ReloadPlugin(
        self, request: plugins_pb2.ReloadPluginRequest, context: Context
    ) -> plugins_pb2.ReloadPluginResponse:
        record = await asyncio.to_thread(self.plugins.reload, _require_id(request.id))
        return plugins_pb2.ReloadPluginResponse(plugin=convert.plugin_to_pb(record))

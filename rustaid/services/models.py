"""ModelsService: the registry and the loaded models, over gRPC."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from rustaid.api.v1 import models_pb2, models_pb2_grpc
from rustaid.core.registry import ModelEntry, ModelKind, ModelState
from rustaid.errors import InvalidArgument
from rustaid.services import convert

if TYPE_CHECKING:
    from rustaid.daemon import Daemon

Context = Any  # grpc.aio.ServicerContext


def _require_id(model_id: str) -> str:
    if not model_id:
        raise InvalidArgument("id is empty: give a model id from ListModels", field="id")
    return model_id


class ModelsServicer(models_pb2_grpc.ModelsServiceServicer):
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    async def ListModels(
        self, request: models_pb2.ListModelsRequest, context: Context
    ) -> models_pb2.ListModelsResponse:
        kind = convert.model_kind_from_pb(request.kind)
        entries: list[ModelEntry] = self.daemon.registry.list(kind)
        if request.loaded_only:
            entries = [e for e in entries if e.state is ModelState.LOADED]
        return models_pb2.ListModelsResponse(models=[convert.model_to_pb(e) for e in entries])

    async def GetModel(
        self, request: models_pb2.GetModelRequest, context: Context
    ) -> models_pb2.GetModelResponse:
        entry = self.daemon.registry.get(_require_id(request.id))
        return models_pb2.GetModelResponse(model=convert.model_to_pb(entry))

    async def LoadModel(
        self, request: models_pb2.LoadModelRequest, context: Context
    ) -> models_pb2.LoadModelResponse:
        model_id = _require_id(request.id)
        max_ctx = self.daemon.settings.max_context_length
        if request.context_length > max_ctx:
            raise InvalidArgument(
                f"context_length {request.context_length} exceeds the limit {max_ctx} "
                "(setting max_context_length)",
                field="context_length",
            )
        entry, load_ms = await self.daemon.engine.load(
            model_id,
            context_length=request.context_length,
            threads=request.threads,
            pin=request.pin,
        )
        return models_pb2.LoadModelResponse(model=convert.model_to_pb(entry), load_ms=load_ms)

    async def UnloadModel(
        self, request: models_pb2.UnloadModelRequest, context: Context
    ) -> models_pb2.UnloadModelResponse:
        entry = await self.daemon.engine.unload(_require_id(request.id))
        return models_pb2.UnloadModelResponse(model=convert.model_to_pb(entry))

    async def WatchModels(
        self, request: models_pb2.WatchModelsRequest, context: Context
    ) -> AsyncIterator[models_pb2.WatchModelsResponse]:
        async with self.daemon.registry.events.subscribe() as queue:
            if request.include_existing:
                for entry in self.daemon.registry.list():
                    yield models_pb2.WatchModelsResponse(
                        type=models_pb2.MODEL_EVENT_TYPE_ADDED, model=convert.model_to_pb(entry)
                    )
            while True:
                event = await queue.get()
                yield convert.watch_models_response_to_pb(event)

    async def SelectModel(
        self, request: models_pb2.SelectModelRequest, context: Context
    ) -> models_pb2.SelectModelResponse:
        kind = convert.model_kind_from_pb(request.kind) or ModelKind.LLM
        criteria = convert.selection_criteria_from_pb(request.criteria)
        selection = self.daemon.engine.select(criteria, kind)
        return convert.select_model_response_to_pb(selection)

"""ModelsService: the registry and the loaded models, over gRPC."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from rustaid.api.v1 import models_pb2, models_pb2_grpc
from rustaid.core.registry import ModelEntry, ModelKind, ModelState
from rustaid.errors import InvalidArgument, NotFound, PreconditionFailed
from rustaid.pull.puller import PullEvent
from rustaid.pull.stream import pull_events
from rustaid.services import convert
from rustaid.services.paging import paginate

if TYPE_CHECKING:
    from rustaid.config import CurrentSettings
    from rustaid.core.engine import Engine
    from rustaid.core.folder import ModelFolder
    from rustaid.pull.puller import Puller
    from rustaid.rag.manager import Rag

Context = Any  # grpc.aio.ServicerContext


_STAGES = {
    "resolving": models_pb2.PULL_STAGE_RESOLVING,
    "downloading": models_pb2.PULL_STAGE_DOWNLOADING,
    "verifying": models_pb2.PULL_STAGE_VERIFYING,
    "unpacking": models_pb2.PULL_STAGE_UNPACKING,
    "done": models_pb2.PULL_STAGE_DONE,
}


def _pull_event_to_pb(event: PullEvent) -> models_pb2.PullModelResponse:
    return models_pb2.PullModelResponse(
        stage=_STAGES[event.stage],
        completed_bytes=event.done,
        total_bytes=event.total,
        bytes_per_second=event.bytes_per_s,
        file_name=event.file_name,
        sha256=event.sha256,
    )


def _require_id(model_id: str) -> str:
    if not model_id:
        raise InvalidArgument("id is empty: give a model id from ListModels", field="id")
    return model_id


class ModelsServicer(models_pb2_grpc.ModelsServiceServicer):
    def __init__(
        self,
        engine: Engine,
        rag: Rag,
        puller: Puller,
        folder: ModelFolder,
        settings: CurrentSettings,
    ) -> None:
        self.engine = engine
        self.registry = engine.registry
        self.rag = rag
        self.puller = puller
        self.folder = folder
        self.settings = settings

    async def ListModels(
        self, request: models_pb2.ListModelsRequest, context: Context
    ) -> models_pb2.ListModelsResponse:
        kind = convert.model_kind_from_pb(request.kind)
        entries: list[ModelEntry] = self.registry.list(kind)
        if request.loaded_only:
            entries = [e for e in entries if e.state is ModelState.LOADED]
        query = f"kind={kind.value if kind else 'any'},loaded_only={request.loaded_only}"
        page = paginate(entries, lambda e: e.id, request.page_size, request.page_token, query)
        return models_pb2.ListModelsResponse(
            models=[convert.model_to_pb(e) for e in page.items],
            next_page_token=page.next_page_token,
        )

    async def GetModel(
        self, request: models_pb2.GetModelRequest, context: Context
    ) -> models_pb2.GetModelResponse:
        entry = self.registry.get(_require_id(request.id))
        return models_pb2.GetModelResponse(model=convert.model_to_pb(entry))

    async def LoadModel(
        self, request: models_pb2.LoadModelRequest, context: Context
    ) -> models_pb2.LoadModelResponse:
        model_id = _require_id(request.id)
        max_ctx = self.settings().max_context_length
        if request.context_length > max_ctx:
            raise InvalidArgument(
                f"context_length {request.context_length} exceeds the limit {max_ctx} "
                "(setting max_context_length)",
                field="context_length",
            )
        entry, load_ms = await self.engine.load(
            model_id,
            context_length=request.context_length,
            threads=request.threads,
            pin=request.pin,
        )
        return models_pb2.LoadModelResponse(model=convert.model_to_pb(entry), load_ms=load_ms)

    async def UnloadModel(
        self, request: models_pb2.UnloadModelRequest, context: Context
    ) -> models_pb2.UnloadModelResponse:
        model_id = _require_id(request.id)
        if self.registry.get(model_id).kind is ModelKind.EMBEDDING:
            # Embedding models live in the RAG subsystem's cache, not in the engine.
            await self.rag.embedders.unload(model_id)
            entry = self.registry.get(model_id)
        else:
            entry = await self.engine.unload(model_id)
        return models_pb2.UnloadModelResponse(model=convert.model_to_pb(entry))

    async def WatchModels(
        self, request: models_pb2.WatchModelsRequest, context: Context
    ) -> AsyncIterator[models_pb2.WatchModelsResponse]:
        async with self.registry.events.subscribe() as queue:
            if request.include_existing:
                for entry in self.registry.list():
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
        selection = self.engine.select(criteria, kind)
        return convert.select_model_response_to_pb(selection)

    async def PullModel(
        self, request: models_pb2.PullModelRequest, context: Context
    ) -> AsyncIterator[models_pb2.PullModelResponse]:
        events = pull_events(
            self.puller,
            request.reference,
            name=request.name,
            revision=request.revision,
            sha256=request.sha256,
            force=request.force,
        )
        async for event in events:
            response = _pull_event_to_pb(event)
            if event.stage == "done":
                entry = await self.folder.register_pulled(event.file_name)
                if entry is not None:
                    response.model.CopyFrom(convert.model_to_pb(entry))
            yield response

    async def DeleteModel(
        self, request: models_pb2.DeleteModelRequest, context: Context
    ) -> models_pb2.DeleteModelResponse:
        entry = self.registry.get(_require_id(request.id))
        models_dir = self.settings().models_dir
        if entry.path is None or not entry.path.is_relative_to(models_dir):
            raise PreconditionFailed(
                f"model {entry.id!r} is declared in models.toml, not a file in {models_dir}; "
                "remove it from models.toml instead",
                reason="MODEL_NOT_A_FILE",
            )
        await self.engine.unload(entry.id)
        try:
            entry.path.unlink()
        except FileNotFoundError:
            raise NotFound(f"{entry.path} is gone already", reason="MODEL_NOT_FOUND") from None
        entry.path.with_name(entry.path.name + ".sha256").unlink(missing_ok=True)
        await self.folder.rescan_async()
        return models_pb2.DeleteModelResponse(model=convert.model_to_pb(entry))

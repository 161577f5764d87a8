"""RagService: embeddings, collections, indexing, search and grounded answers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import grpc

from rustaid.api.v1 import common_pb2, rag_pb2, rag_pb2_grpc
from rustaid.core.engine import Done, Queued, Text
from rustaid.errors import InvalidArgument, RustaidError
from rustaid.rag.catalogue import check_name
from rustaid.rag.manager import AskInput, CitedHits, normalise_metadata
from rustaid.rag.pipeline import DocumentInput
from rustaid.services import convert
from rustaid.services.convert import rag as rag_convert
from rustaid.services.errors import abort
from rustaid.services.paging import paginate

if TYPE_CHECKING:
    from rustaid.rag.manager import Rag

log = logging.getLogger(__name__)

Context = Any  # grpc.aio.ServicerContext


class RagServicer(rag_pb2_grpc.RagServiceServicer):
    def __init__(self, rag: Rag) -> None:
        self.rag = rag

    async def Embed(self, request: rag_pb2.EmbedRequest, context: Context) -> rag_pb2.EmbedResponse:
        result = await self.rag.embed(request.model_id, list(request.texts))
        return rag_convert.embed_response_to_pb(result)

    async def CreateCollection(
        self, request: rag_pb2.CreateCollectionRequest, context: Context
    ) -> rag_pb2.CreateCollectionResponse:
        view = await self.rag.create_collection(
            request.name,
            request.embedding_model_id,
            rag_convert.distance_from_pb(request.distance),
            request.vector_store,
        )
        return rag_pb2.CreateCollectionResponse(collection=rag_convert.collection_to_pb(view))

    async def ListCollections(
        self, request: rag_pb2.ListCollectionsRequest, context: Context
    ) -> rag_pb2.ListCollectionsResponse:
        views = await self.rag.list_collections()
        page = paginate(views, lambda v: v.record.name, request.page_size, request.page_token)
        return rag_pb2.ListCollectionsResponse(
            collections=[rag_convert.collection_to_pb(v) for v in page.items],
            next_page_token=page.next_page_token,
        )

    async def DeleteCollection(
        self, request: rag_pb2.DeleteCollectionRequest, context: Context
    ) -> rag_pb2.DeleteCollectionResponse:
        await self.rag.delete_collection(request.name)
        return rag_pb2.DeleteCollectionResponse()

    async def IndexDocuments(
        self, request_iterator: AsyncIterator[rag_pb2.IndexDocumentsRequest], context: Context
    ) -> rag_pb2.IndexDocumentsResponse:
        # Client streams are not wrapped by the error interceptor: map errors here.
        try:
            return await self._index_documents(request_iterator)
        except RustaidError as e:
            await abort(context, e)
        except Exception:
            log.exception("bug in RagService.IndexDocuments")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the log")
        raise AssertionError("unreachable")  # context.abort raises

    async def _index_documents(
        self, requests: AsyncIterator[rag_pb2.IndexDocumentsRequest]
    ) -> rag_pb2.IndexDocumentsResponse:
        stream = aiter(requests)
        try:
            first = await anext(stream)
        except StopAsyncIteration:
            raise InvalidArgument(
                "the stream is empty: send at least one message naming the collection",
                field="collection",
            ) from None
        collection = check_name(first.collection, "collection")
        chunking = rag_convert.chunking_options_from_pb(first.chunking)

        async def documents() -> AsyncIterator[tuple[int, DocumentInput]]:
            index = 0
            message: rag_pb2.IndexDocumentsRequest | None = first
            while message is not None:
                if message.collection and message.collection != collection:
                    raise InvalidArgument(
                        f"the stream is for collection {collection!r}; a later message names "
                        f"{message.collection!r}",
                        field="collection",
                    )
                for d in message.documents:
                    yield index, rag_convert.document_from_pb(d, index)
                    index += 1
                message = await anext(stream, None)

        summary = await self.rag.index_stream((collection, chunking), documents())
        return rag_pb2.IndexDocumentsResponse(
            document_ids=summary.document_ids,
            chunks_indexed=summary.chunks,
            documents_indexed=summary.indexed,
            documents_unchanged=summary.unchanged,
            documents_replaced=summary.replaced,
            elapsed_ms=summary.elapsed_ms,
        )

    async def IndexFile(
        self, request: rag_pb2.IndexFileRequest, context: Context
    ) -> rag_pb2.IndexFileResponse:
        return await self._index_file(request)

    async def IndexFileStream(
        self, request: rag_pb2.IndexFileStreamRequest, context: Context
    ) -> AsyncIterator[rag_pb2.IndexFileStreamResponse]:
        # Only the latest count waits to be sent: a slow reader gets fewer updates, not
        # a growing backlog.
        latest: list[tuple[int, int]] = []
        heard = asyncio.Event()

        def progress(done: int, total: int) -> None:
            latest[:] = [(done, total)]
            heard.set()

        task = asyncio.ensure_future(self._index_file(request.file, progress))
        try:
            while not task.done():
                waiter = asyncio.ensure_future(heard.wait())
                await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                heard.clear()
                if latest and not task.done():
                    done, total = latest.pop()
                    yield rag_pb2.IndexFileStreamResponse(
                        progress=rag_convert.index_progress_to_pb(done, total)
                    )
            yield rag_pb2.IndexFileStreamResponse(done=task.result())
        finally:
            task.cancel()  # the client left: stop indexing

    async def _index_file(
        self,
        request: rag_pb2.IndexFileRequest,
        progress: Callable[[int, int], None] | None = None,
    ) -> rag_pb2.IndexFileResponse:
        source = request.WhichOneof("source")
        if source is None:
            raise InvalidArgument(
                "give the file: set path (on the daemon's host) or content (the bytes)",
                field="path",
            )
        metadata = normalise_metadata(rag_convert.struct_from_pb(request.metadata), "metadata")
        result = await self.rag.index_file(
            request.collection,
            path=request.path if source == "path" else "",
            content=request.content if source == "content" else None,
            filename=request.filename,
            mime_type=request.mime_type,
            metadata=metadata,
            chunking=rag_convert.chunking_options_from_pb(request.chunking),
            document_id=request.document_id,
            progress=progress,
        )
        return rag_pb2.IndexFileResponse(
            document_id=result.document_id,
            chunks_indexed=result.chunks,
            parser=result.parser,
            unchanged=result.unchanged,
            replaced=result.replaced,
        )

    async def Search(
        self, request: rag_pb2.SearchRequest, context: Context
    ) -> rag_pb2.SearchResponse:
        result = await self.rag.search(
            request.collection,
            request.query,
            request.top_k,
            rag_convert.filter_from_pb(request.filter),
            request.score_threshold if request.HasField("score_threshold") else None,
            mode=rag_convert.search_mode_from_pb(request.mode),
        )
        return rag_pb2.SearchResponse(
            hits=[rag_convert.search_hit_to_pb(h) for h in result.hits],
            search_ms=result.search_ms,
            embed_ms=result.embed_ms,
            mode=rag_convert.search_mode_to_pb(result.mode),
            rerank_ms=result.rerank_ms,
        )

    async def DeleteDocuments(
        self, request: rag_pb2.DeleteDocumentsRequest, context: Context
    ) -> rag_pb2.DeleteDocumentsResponse:
        deleted = await self.rag.delete_documents(
            request.collection,
            list(request.document_ids),
            rag_convert.filter_from_pb(request.filter),
        )
        return rag_pb2.DeleteDocumentsResponse(deleted=deleted)

    async def Ask(
        self, request: rag_pb2.AskRequest, context: Context
    ) -> AsyncIterator[rag_pb2.AskResponse]:
        ask = AskInput(
            collection=request.collection,
            question=request.question,
            top_k=request.top_k,
            filter=rag_convert.filter_from_pb(request.filter),
            model_id=request.model_id,
            params=convert.generation_params_from_pb(request.params),
            selection=convert.selection_criteria_from_pb(request.selection),
            score_threshold=request.score_threshold
            if request.HasField("score_threshold")
            else None,
            mode=rag_convert.search_mode_from_pb(request.mode),
        )
        async for event in self.rag.ask(ask):
            if isinstance(event, Text):
                yield rag_pb2.AskResponse(
                    chunk=common_pb2.TokenChunk(text=event.text, index=event.index)
                )
            elif isinstance(event, CitedHits):
                yield rag_pb2.AskResponse(citations=rag_convert.citations_to_pb(event))
            elif isinstance(event, Queued):
                yield rag_pb2.AskResponse(queued=convert.queue_status_to_pb(event))
            elif isinstance(event, Done):
                yield rag_pb2.AskResponse(done=convert.generation_done_to_pb(event))

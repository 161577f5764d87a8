"""GenerateService: text generation and chat, unary and streamed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol

from rustaid.api.v1 import common_pb2, generate_pb2, generate_pb2_grpc
from rustaid.core.admission import check_prompt_size
from rustaid.core.engine import Done, GenerationRequest, Queued, Text
from rustaid.core.request_checks import chat_messages
from rustaid.errors import Cancelled, InvalidArgument
from rustaid.providers import CancelToken, LoadedLLM
from rustaid.services import convert
from rustaid.services.convert import tools as convert_tools
from rustaid.tools.calling import CallMade, ToolCall, collect_with_tools, generate_with_tools

if TYPE_CHECKING:
    from rustaid.config import CurrentSettings
    from rustaid.core.engine import Engine

Context = Any  # grpc.aio.ServicerContext

# Tokenize turns token ids into their text pieces this many at a time (a few ms each),
# checking in between whether the client is still there.
PIECES_PER_SLICE = 4096


class _GenerationFields(Protocol):
    # Shared by GenerateRequest/GenerateStreamRequest/ChatRequest/ChatStreamRequest.
    model_id: str
    params: common_pb2.GenerationParams
    selection: common_pb2.SelectionCriteria
    priority: common_pb2.Priority
    keep_alive: common_pb2.KeepAlive

    def HasField(self, field_name: str) -> bool: ...


def _request(
    pb: _GenerationFields, prompt: str = "", messages: Any = (), session_id: str = ""
) -> GenerationRequest:
    keep_alive = pb.keep_alive if pb.HasField("keep_alive") else None
    return GenerationRequest(
        model_id=pb.model_id,
        prompt=prompt,
        messages=messages,
        params=convert.generation_params_from_pb(pb.params),
        selection=convert.selection_criteria_from_pb(pb.selection),
        priority=convert.priority_from_pb(pb.priority),
        keep_alive_s=convert.keep_alive_from_pb(keep_alive) if keep_alive else None,
        session_id=session_id,
    )


def _chat_request(
    pb: generate_pb2.ChatRequest | generate_pb2.ChatStreamRequest,
) -> GenerationRequest:
    messages = convert.chat_messages_from_pb(pb.messages)
    if not pb.session_id:
        messages = chat_messages(messages)  # a stateless chat needs at least one message
    elif not messages:
        raise InvalidArgument("messages is empty: give this turn's message", field="messages")
    return _request(pb, messages=messages, session_id=pb.session_id)


class GenerateServicer(generate_pb2_grpc.GenerateServiceServicer):
    def __init__(self, engine: Engine, settings: CurrentSettings) -> None:
        self.engine = engine
        self.settings = settings

    async def _collect(self, request: GenerationRequest) -> tuple[str, Done]:
        return await self.engine.generate_text(request)

    async def _stream(
        self, request: GenerationRequest, response_type: Any, pb: Any = None
    ) -> AsyncIterator[Any]:
        # Requests with tools go through function calling (rustaid.tools.calling).
        calling = convert_tools.function_calling_from_pb(pb) if pb is not None else None
        events = (
            self.engine.generate(request)
            if calling is None
            else generate_with_tools(self.engine, request, *calling)
        )
        async for event in events:
            if isinstance(event, CallMade):
                yield response_type(tool_call=convert_tools.tool_call_to_pb(event.call))
            elif isinstance(event, Text):
                yield response_type(chunk=common_pb2.TokenChunk(text=event.text, index=event.index))
            elif isinstance(event, Queued):
                yield response_type(queued=convert.queue_status_to_pb(event))
            else:
                yield response_type(done=convert.generation_done_to_pb(event))

    async def Generate(
        self, request: generate_pb2.GenerateRequest, context: Context
    ) -> generate_pb2.GenerateResponse:
        base = _request(request, prompt=request.prompt)
        calling = convert_tools.function_calling_from_pb(request)
        if calling is None:
            text, done = await self._collect(base)
            calls: list[ToolCall] = []
        else:
            text, done, calls = await collect_with_tools(self.engine, base, *calling)
        return generate_pb2.GenerateResponse(
            tool_calls=[convert_tools.tool_call_to_pb(c) for c in calls],
            text=text,
            model_id=done.model_id,
            finish_reason=convert.finish_reason_to_pb(done.stats.finish_reason),
            usage=convert.usage_to_pb(done.stats),
            timings=convert.timings_to_pb(done.timings),
            adjustments=done.adjustments,
            energy=convert.energy_estimate_to_pb(done.energy),
        )

    async def GenerateStream(
        self, request: generate_pb2.GenerateStreamRequest, context: Context
    ) -> AsyncIterator[generate_pb2.GenerateStreamResponse]:
        async for response in self._stream(
            _request(request, prompt=request.prompt), generate_pb2.GenerateStreamResponse, request
        ):
            yield response

    async def Chat(
        self, request: generate_pb2.ChatRequest, context: Context
    ) -> generate_pb2.ChatResponse:
        base = _chat_request(request)
        calling = convert_tools.function_calling_from_pb(request)
        if calling is None:
            text, done = await self._collect(base)
            calls: list[ToolCall] = []
        else:
            text, done, calls = await collect_with_tools(self.engine, base, *calling)
        return generate_pb2.ChatResponse(
            message=convert_tools.chat_reply_to_pb(text, calls),
            model_id=done.model_id,
            finish_reason=convert.finish_reason_to_pb(done.stats.finish_reason),
            usage=convert.usage_to_pb(done.stats),
            timings=convert.timings_to_pb(done.timings),
            adjustments=done.adjustments,
            energy=convert.energy_estimate_to_pb(done.energy),
        )

    async def ChatStream(
        self, request: generate_pb2.ChatStreamRequest, context: Context
    ) -> AsyncIterator[generate_pb2.ChatStreamResponse]:
        async for response in self._stream(
            _chat_request(request), generate_pb2.ChatStreamResponse, request
        ):
            yield response

    async def Tokenize(
        self, request: generate_pb2.TokenizeRequest, context: Context
    ) -> generate_pb2.TokenizeResponse:
        model_id = _require_model(request.model_id)
        check_prompt_size([request.text], self.settings().max_prompt_bytes, "text")
        cancel = CancelToken()

        def tokenize(model: LoadedLLM) -> tuple[list[int], list[str]]:
            ids = model.tokenize(request.text, request.add_special)
            pieces: list[str] = []
            # In slices, so a client that left stops the work within one slice.
            for i in range(0, len(ids), PIECES_PER_SLICE):
                if cancel.cancelled:
                    raise Cancelled("the client went away")
                pieces += model.token_pieces(ids[i : i + PIECES_PER_SLICE])
            return ids, pieces

        ids, pieces = await self.engine.run_on_model(model_id, tokenize, cancel)
        return generate_pb2.TokenizeResponse(token_ids=ids, pieces=pieces)

    async def CountTokens(
        self, request: generate_pb2.CountTokensRequest, context: Context
    ) -> generate_pb2.CountTokensResponse:
        model_id = _require_model(request.model_id)
        if request.text and request.messages:
            raise InvalidArgument("give either text or messages, not both", field="messages")
        limit = self.settings().max_prompt_bytes
        if request.messages:
            messages = convert.chat_messages_from_pb(request.messages)
            check_prompt_size([m.content for m in messages], limit, "messages")
            count = await self.engine.run_on_model(
                model_id, lambda m: m.count_chat_tokens(messages)
            )
        else:
            check_prompt_size([request.text], limit, "text")
            count = await self.engine.run_on_model(
                model_id, lambda m: len(m.tokenize(request.text, True))
            )
        ctx = self.engine.registry.get(model_id).context_length
        return generate_pb2.CountTokensResponse(count=count, context_length=ctx)


def _require_model(model_id: str) -> str:
    if not model_id:
        raise InvalidArgument("model_id is empty: tokens depend on the model", field="model_id")
    return model_id

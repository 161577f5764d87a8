"""OpenAI-compatible routes under /v1: models, chat completions, completions and
embeddings, in the shapes the `openai` SDKs read (streams as server-sent events ending
with `data: [DONE]`). rustaid's own request fields are documented extras (docs/http-api.md);
what the device policy changed comes back in `x-rustaid-adjustments` and the `rustaid`
field of the reply."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from json.encoder import encode_basestring
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from rustaid.core import request_id
from rustaid.core.engine import Done, GenerationRequest, Queued, Text, Timings
from rustaid.core.registry import ModelEntry, ModelKind
from rustaid.http import generation as gen
from rustaid.http.body import Body
from rustaid.http.respond import (
    json_bytes,
    json_response,
    read_body,
    sse_error,
    unless_disconnected,
)
from rustaid.providers import CompletionStats, FinishReason, GenerationParams
from rustaid.tools.calling import CallMade, ToolCall

if TYPE_CHECKING:
    from rustaid.http.parts import HttpParts

_FINISH = {
    FinishReason.STOP: "stop",
    FinishReason.STOP_SEQUENCE: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.CANCELLED: "stop",
}
# Fields of the OpenAI API this version does not do: refused with a message rather than
# silently ignored, so a client does not read results it did not get.
_UNSUPPORTED = {
    "logprobs": "log probabilities are not returned",
    "top_logprobs": "log probabilities are not returned",
    "logit_bias": "logit_bias is not supported",
    "audio": "audio output is not supported",
    "prediction": "predicted outputs are not supported",
}


def _params(body: Body) -> GenerationParams:
    max_tokens = body.integer("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.integer("max_tokens")
    format_schema = _response_format(body)
    grammar = body.text("grammar")
    return GenerationParams(
        max_tokens=max_tokens,
        temperature=body.number("temperature"),
        top_p=body.number("top_p"),
        top_k=body.integer("top_k"),
        min_p=body.number("min_p"),
        repeat_penalty=body.number("repeat_penalty"),
        seed=body.integer("seed"),
        stop=body.strings("stop"),
        grammar=grammar,
        json_schema=format_schema,
    )


def _response_format(body: Body) -> str:
    """`response_format` as the JSON Schema the reply is held to ("" for text)."""
    rf = body.object("response_format")
    if rf is None:
        return ""
    kind = rf.text("type", "text")
    if kind == "text":
        return ""
    if kind == "json_object":
        return json.dumps({"type": "object"})
    if kind == "json_schema":
        spec = rf.object("json_schema")
        if spec is None or spec.raw("schema") is None:
            raise rf.bad("json_schema", 'must be {"name": ..., "schema": {...}}')
        return gen.json_schema_text(spec.raw("schema"), spec.where("schema"))
    raise rf.bad("type", f"must be text, json_object or json_schema (got {kind!r})")


def _base(body: Body) -> GenerationRequest:
    n = body.integer("n")
    if n is not None and n != 1:
        raise body.bad("n", f"must be 1: one choice per request (got {n})")
    for key, why in _UNSUPPORTED.items():
        value = body.raw(key)
        if value not in (None, False, 0, {}):
            raise body.bad(key, f"is not supported: {why}")
    body.text("user")  # accepted (a string) and not used
    return GenerationRequest(
        model_id=body.text("model"),
        params=_params(body),
        selection=gen.selection(body),
        priority=gen.priority(body),
        keep_alive_s=gen.keep_alive_s(body.raw("keep_alive"), "keep_alive"),
        session_id=body.text("session_id"),
    )


def _stream_options(body: Body) -> bool:
    options = body.object("stream_options")
    return options.flag("include_usage") if options is not None else False


def _usage(stats: CompletionStats) -> dict[str, int]:
    return {
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.completion_tokens,
        "total_tokens": stats.prompt_tokens + stats.completion_tokens,
    }


def _timings(t: Timings) -> dict[str, float]:
    return {k: round(v, 3) for k, v in t.__dict__.items()}


def _extension(done: Done) -> dict[str, Any]:
    return {"adjustments": list(done.adjustments), "timings": _timings(done.timings)}


def _adjustment_headers(done: Done | None) -> dict[str, str]:
    if done is None or not done.adjustments:
        return {}
    text = "; ".join(done.adjustments)
    return {"x-rustaid-adjustments": text.encode("ascii", "replace").decode()}


def _tool_call(call: ToolCall, index: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments_json},
    }
    if index is not None:
        out["index"] = index
    return out


def _id(prefix: str) -> str:
    return f"{prefix}-{request_id.current_id() or request_id.new_id()}"


class OpenAIRoutes:
    def __init__(self, parts: HttpParts) -> None:
        self.parts = parts

    async def _body(self, request: Request) -> Body:
        return await read_body(request, self.parts.settings().max_message_mb << 20)

    # -- models ---------------------------------------------------------------------------

    def _model(self, entry: ModelEntry) -> dict[str, Any]:
        return {
            "id": entry.id,
            "object": "model",
            "created": int(entry.mtime),
            "owned_by": "rustaid",
        }

    def _served(self) -> list[ModelEntry]:
        kinds = (ModelKind.LLM, ModelKind.EMBEDDING)
        return [e for e in self.parts.engine.registry.list() if e.kind in kinds]

    async def models(self, request: Request) -> Response:
        return json_response({"object": "list", "data": [self._model(e) for e in self._served()]})

    async def model(self, request: Request) -> Response:
        entry = self.parts.engine.registry.get(request.path_params["model"])
        return json_response(self._model(entry))

    # -- chat completions -------------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        body = await self._body(request)
        parsed = gen.chat_request(_base(body), body)
        return await self._run(request, body, parsed, chat=True)

    async def completions(self, request: Request) -> Response:
        body = await self._body(request)
        prompts = body.strings("prompt")
        if len(prompts) != 1:
            raise body.bad("prompt", "must be one string (or an array of one)")
        for key in ("echo", "suffix"):
            if body.raw(key) not in (None, False, ""):
                raise body.bad(key, "is not supported")
        best_of = body.integer("best_of")
        if best_of is not None and best_of != 1:
            raise body.bad("best_of", "must be 1")
        parsed = gen.Parsed(replace(_base(body), prompt=prompts[0]))
        return await self._run(request, body, parsed, chat=False)

    async def _run(
        self, request: Request, body: Body, parsed: gen.Parsed, *, chat: bool
    ) -> Response:
        gen.check_serving(self.parts.resources)
        stream = body.flag("stream")
        include_usage = _stream_options(body)
        first = gen.started(gen.events(self.parts.engine, parsed))
        events = await unless_disconnected(request, first)
        if stream:
            kind = "chat.completion.chunk" if chat else "text_completion"
            frames = _Frames(
                _id("chatcmpl" if chat else "cmpl"), kind, parsed.request.model_id, chat
            )
            return StreamingResponse(
                _stream(events, frames, include_usage),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
            )
        text, calls, done = await unless_disconnected(request, gen.collect(events))
        finish = "tool_calls" if calls else _FINISH[done.stats.finish_reason]
        if chat:
            message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
            if calls:
                message["tool_calls"] = [_tool_call(c) for c in calls]
            choice: dict[str, Any] = {"index": 0, "message": message}
            obj, prefix = "chat.completion", "chatcmpl"
        else:
            choice = {"index": 0, "text": "".join(text)}
            obj, prefix = "text_completion", "cmpl"
        choice.update(finish_reason=finish, logprobs=None)
        return json_response(
            {
                "id": _id(prefix),
                "object": obj,
                "created": int(time.time()),
                "model": done.model_id,
                "choices": [choice],
                "usage": _usage(done.stats),
                "system_fingerprint": None,
                "rustaid": _extension(done),
            },
            headers=_adjustment_headers(done),
        )

    # -- embeddings -------------------------------------------------------------------------

    async def embeddings(self, request: Request) -> Response:
        body = await self._body(request)
        texts = body.strings("input")
        if not body.has("input"):
            raise body.bad("input", "is missing: give a string or an array of strings")
        encoding = body.text("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise body.bad("encoding_format", f"must be float or base64 (got {encoding!r})")
        if body.integer("dimensions") is not None:
            raise body.bad("dimensions", "is not supported: the model's own size is used")
        with self.parts.engine.admission.admit("embed"):
            embedded = await self.parts.rag.embed(body.text("model"), texts)
        vectors: list[Any]
        if encoding == "base64":  # the rows as packed little-endian float32, as OpenAI does
            row = embedded.dimension * 4
            packed = embedded.packed
            vectors = [
                base64.b64encode(packed[i * row : (i + 1) * row]).decode()
                for i in range(embedded.count)
            ]
        else:
            vectors = embedded.vectors()
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        return json_response(
            {
                "object": "list",
                "data": data,
                "model": embedded.model_id,
                "usage": {"prompt_tokens": 0, "total_tokens": 0},
            }
        )


# -- streams ---------------------------------------------------------------------------------

# Stands for the text in a pre-encoded chunk: JSON-encoding the text alone is most of what
# a streamed token costs here, and the event loop shares the GIL with the generation.
_MARK = json.dumps("\x00")


class _Frames:
    """The server-sent events of one stream (chat or completion)."""

    def __init__(self, cid: str, kind: str, model: str, chat: bool) -> None:
        self.cid, self.kind, self.chat = cid, kind, chat
        self.created = int(time.time())
        self.model = ""
        self.head = self.tail = b""
        self.set_model(model)

    def set_model(self, model: str) -> None:
        if model == self.model and self.head:
            return
        self.model = model
        text = json.dumps(self.chunk([self.choice({"content": "\x00"}, "\x00")]))
        head, tail = text.split(_MARK)
        self.head, self.tail = b"data: " + head.encode(), tail.encode() + b"\n\n"

    def choice(self, delta: dict[str, Any], text: str, finish: str | None = None) -> Any:
        if self.chat:
            return {"index": 0, "delta": delta, "finish_reason": finish}
        return {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}

    def chunk(self, choices: list[Any]) -> dict[str, Any]:
        return {
            "id": self.cid,
            "object": self.kind,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "system_fingerprint": None,
        }

    def text(self, text: str) -> bytes:
        return self.head + encode_basestring(text).encode() + self.tail

    @staticmethod
    def event(data: dict[str, Any]) -> bytes:
        return b"data: " + json_bytes(data) + b"\n\n"


async def _stream(
    events: AsyncIterator[Any], frames: _Frames, include_usage: bool
) -> AsyncIterator[bytes]:
    role_sent = not frames.chat
    called = False
    try:
        async for event in events:
            if isinstance(event, Text):
                if not role_sent:
                    role_sent = True
                    yield frames.event(
                        frames.chunk([frames.choice({"role": "assistant", "content": ""}, "")])
                    )
                yield frames.text(event.text)
            elif isinstance(event, Queued):
                frames.set_model(event.model_id)
                yield f": queued at position {event.position}\n\n".encode()
            elif isinstance(event, CallMade):
                called = True
                if not role_sent:
                    role_sent = True
                    yield frames.event(
                        frames.chunk([frames.choice({"role": "assistant", "content": ""}, "")])
                    )
                delta = {"tool_calls": [_tool_call(event.call, 0)]}
                yield frames.event(frames.chunk([frames.choice(delta, "")]))
            elif isinstance(event, Done):
                gen.finished(event)
                frames.set_model(event.model_id)
                finish = "tool_calls" if called else _FINISH[event.stats.finish_reason]
                last = frames.chunk([frames.choice({}, "", finish)])
                last["rustaid"] = _extension(event)
                yield frames.event(last)
                if include_usage:
                    yield frames.event({**frames.chunk([]), "usage": _usage(event.stats)})
    except Exception as e:  # after the status was sent: the error travels as an event
        yield b"data: " + sse_error(e) + b"\n\n"
        return
    yield b"data: [DONE]\n\n"

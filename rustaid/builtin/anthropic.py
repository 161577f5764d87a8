"""Built-in plugin: Anthropic's Messages API (POST /v1/messages, streamed).

Chat messages go out as `messages`, system messages as the top-level `system` field; a
plain completion (Generate) is sent as one user message, since the Messages API has no
raw-completion endpoint. See docs/remote.md for keys, mapping, errors and limits.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rustaid.builtin.remote_http import RemoteClient, RemoteSettings, Retry, remote_settings
from rustaid.errors import (
    InvalidArgument,
    PreconditionFailed,
    RustaidError,
    Unavailable,
)
from rustaid.hookspecs import hookimpl
from rustaid.providers import (
    CancelToken,
    ChatMessage,
    CompletionStats,
    EmitText,
    FinishReason,
    GenerationParams,
    LLMProvider,
    LoadedLLM,
    LoadOptions,
    ModelSpec,
    PluginInfo,
    ResourceRequirements,
    Role,
)

PLUGIN = PluginInfo(
    name="anthropic",
    version="0.1.0",
    description="Claude models through Anthropic's Messages API, streamed.",
    requirements=ResourceRequirements(battery_draw_mw=500, thermal_impact=5),
)

log = logging.getLogger(__name__)

API_VERSION = "2023-06-01"
# The Messages API requires max_tokens; used when a request sets none.
DEFAULT_MAX_TOKENS = 512

_STOP_REASONS = {
    "end_turn": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "stop_sequence": FinishReason.STOP_SEQUENCE,
}
# Error types of the API (https://docs.anthropic.com/en/api/errors) worth a retry.
_RETRYABLE = {"overloaded_error", "api_error", "rate_limit_error", "timeout_error"}
_STATUS_OF_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def check_params(params: GenerationParams) -> None:
    for name in ("grammar", "json_schema"):
        if getattr(params, name):
            raise InvalidArgument(
                f"params.{name} cannot be honoured by the anthropic provider: the Messages "
                "API takes no grammar or JSON schema (use a local or openai-compatible model)",
                field=f"params.{name}",
            )


def messages_json(messages: Sequence[ChatMessage]) -> tuple[str, list[dict[str, str]]]:
    """(system prompt, conversation) in the API's shape."""
    system: list[str] = []
    turns: list[dict[str, str]] = []
    for i, m in enumerate(messages):
        if m.role is Role.SYSTEM:
            system.append(m.content)
        elif m.role is Role.TOOL:
            raise InvalidArgument(
                f"messages[{i}]: the anthropic provider does not take tool messages (the "
                "Messages API needs tool_use ids this request does not carry)",
                field=f"messages[{i}].role",
            )
        else:
            turns.append({"role": m.role.value, "content": m.content})
    return "\n\n".join(system), turns


@dataclass
class _Progress:
    emitted: bool = False
    deltas: int = 0
    input_tokens: int | None = None
    output_tokens: int | None = None
    stop_reason: str | None = None
    done: bool = False
    cancelled: bool = False
    t_first: float = 0.0


class AnthropicModel(LoadedLLM):
    def __init__(self, settings: RemoteSettings, client: RemoteClient, api: str) -> None:
        self.settings = settings
        self.client = client
        self.context_length = 0  # the API does not state it
        self.threads = 0
        self._api = api  # request path prefix, ".../v1"

    def validate_params(self, params: GenerationParams) -> None:
        check_params(params)

    def complete(
        self, prompt: str, params: GenerationParams, emit: EmitText, cancel: CancelToken
    ) -> CompletionStats:
        return self.chat([ChatMessage(Role.USER, prompt)], params, emit, cancel)

    def chat(
        self,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        emit: EmitText,
        cancel: CancelToken,
    ) -> CompletionStats:
        check_params(params)
        system, turns = messages_json(messages)
        body: dict[str, Any] = {
            "model": self.settings.remote_model,
            "max_tokens": params.max_tokens or DEFAULT_MAX_TOKENS,
            "messages": turns,
            "stream": True,
        }
        if system:
            body["system"] = system
        for name in ("temperature", "top_p", "top_k"):
            if (value := getattr(params, name)) is not None:
                body[name] = value
        if params.stop:
            body["stop_sequences"] = list(params.stop)
        # seed, min_p and repeat_penalty have no counterpart in the API: not sent.
        return self._generate(body, emit, cancel)

    def _generate(
        self, body: Mapping[str, Any], emit: EmitText, cancel: CancelToken
    ) -> CompletionStats:
        t0 = time.perf_counter()
        p = _Progress()

        def attempt() -> None:
            nonlocal p
            p = _Progress()
            if cancel.cancelled:
                p.cancelled = True
                return
            with self.client.open_stream(self._api + "/messages", body, cancel) as stream:
                if stream is None:
                    p.cancelled = True
                    return
                if not stream.is_event_stream:
                    raise self.client.malformed(
                        f"expected text/event-stream, got {stream.content_type or 'no type'}"
                    )
                for event in stream.events():
                    self._take_event(event.event, event.data, p, emit)
                    if p.done or cancel.cancelled:
                        break
            if cancel.cancelled:
                p.cancelled = True
            elif not p.done:
                raise Retry(self.client.dropped_error("the answer stopped before message_stop"))

        self.client.with_retries(attempt, cancel, may_retry=lambda: not p.emitted)
        t_end = time.perf_counter()
        if p.cancelled:
            finish = FinishReason.CANCELLED
        else:
            finish = _STOP_REASONS.get(p.stop_reason or "", FinishReason.STOP)
        t_first = p.t_first or t_end
        return CompletionStats(
            finish_reason=finish,
            prompt_tokens=p.input_tokens or 0,
            completion_tokens=p.deltas if p.output_tokens is None else p.output_tokens,
            prompt_eval_ms=(t_first - t0) * 1000,
            generation_ms=(t_end - t_first) * 1000,
        )

    def _take_event(self, name: str, data: str, p: _Progress, emit: EmitText) -> None:
        doc = self.client.parse_json(data.encode())
        if not isinstance(doc, dict):
            raise self.client.malformed(f"event data is not a JSON object: {data[:80]!r}")
        kind = doc.get("type", name)
        if kind == "message_start":
            message = doc.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            if isinstance(usage, dict):
                # Cached prompt parts are counted apart from input_tokens.
                parts = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
                p.input_tokens = sum(v for k in parts if isinstance(v := usage.get(k), int))
        elif kind == "content_block_delta":
            delta = doc.get("delta")
            if not isinstance(delta, dict):
                raise self.client.malformed("content_block_delta without a delta object")
            if delta.get("type") == "text_delta":
                text = delta.get("text")
                if not isinstance(text, str):
                    raise self.client.malformed("text_delta without text")
                p.deltas += 1
                if text:
                    if not p.emitted:
                        p.emitted, p.t_first = True, time.perf_counter()
                    emit(text)
            # thinking_delta, input_json_delta...: not text of the answer.
        elif kind == "message_delta":
            delta = doc.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
                p.stop_reason = delta["stop_reason"]
            usage = doc.get("usage")
            if isinstance(usage, dict) and isinstance(usage.get("output_tokens"), int):
                p.output_tokens = usage["output_tokens"]
        elif kind == "message_stop":
            p.done = True
        elif kind == "error":
            raise self._stream_error(doc)
        # ping, content_block_start/stop and event types added later: nothing to do.

    def _stream_error(self, doc: Mapping[str, Any]) -> RustaidError | Retry:
        err = doc.get("error")
        err_type = err.get("type") if isinstance(err, dict) else None
        status = _STATUS_OF_TYPE.get(err_type if isinstance(err_type, str) else "", 500)
        error = self.client.status_error(status, json.dumps(doc).encode())
        if isinstance(error, Unavailable) and err_type in _RETRYABLE:
            return Retry(error)
        return error

    # -- tokens ------------------------------------------------------------------------

    def _no_tokenizer(self) -> PreconditionFailed:
        return PreconditionFailed(
            f"{self.client.where} does not expose tokenization: the Messages API only "
            "counts the tokens of messages (CountTokens with messages works)",
            reason="TOKENIZE_UNSUPPORTED",
        )

    def tokenize(self, text: str, add_special: bool) -> list[int]:
        raise self._no_tokenizer()

    def token_pieces(self, token_ids: Sequence[int]) -> list[str]:
        raise self._no_tokenizer()

    def count_chat_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Exact count from POST /v1/messages/count_tokens."""
        system, turns = messages_json(messages)
        body: dict[str, Any] = {"model": self.settings.remote_model, "messages": turns}
        if system:
            body["system"] = system
        doc = self.client.call_json("POST", self._api + "/messages/count_tokens", body)
        count = doc.get("input_tokens") if isinstance(doc, dict) else None
        if not isinstance(count, int):
            raise self.client.malformed("count_tokens gave no input_tokens")
        return count

    def close(self) -> None:
        pass


class AnthropicProvider(LLMProvider):
    name = "anthropic"
    remote = True  # serves no model files (declares no suffixes)

    def load(self, spec: ModelSpec, options: LoadOptions) -> LoadedLLM:
        settings = remote_settings(spec, self.name)
        headers = {"anthropic-version": API_VERSION}
        if settings.api_key:
            headers["x-api-key"] = settings.api_key
        client = RemoteClient(settings, headers)
        # "https://api.anthropic.com" and "https://api.anthropic.com/v1" both work.
        api = settings.endpoint.path.removesuffix("/v1") + "/v1"
        # Reach the endpoint now: a wrong URL or key shows at load, not mid-request.
        client.call_json("GET", api + "/models", optional=True)
        log.info("connected %s to %s (%s)", spec.id, settings.endpoint.url, settings.remote_model)
        return AnthropicModel(settings, client, api)


@hookimpl
def register_llm_providers(register: Any) -> None:
    register(AnthropicProvider())

"""Built-in plugin: language models behind an OpenAI-compatible HTTP API.

One provider, "openai", covers OpenAI itself, Ollama's /v1, vLLM, LocalAI, llama.cpp's
server (and llama-cpp-python's), LM Studio: streamed /v1/completions (Generate) and
/v1/chat/completions (Chat) with Server-Sent Events. See docs/remote.md for the
models.toml keys, what maps to what, the error mapping and the limits.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rustaid.builtin.llama_cpp import StopScanner
from rustaid.builtin.remote_http import RemoteClient, RemoteSettings, Retry, remote_settings
from rustaid.errors import InvalidArgument, PreconditionFailed, RustaidError, Unavailable
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
)

PLUGIN = PluginInfo(
    name="openai",
    version="0.1.0",
    description=(
        "Language models behind an OpenAI-compatible API (OpenAI, Ollama, vLLM, LocalAI, "
        "llama.cpp server, LM Studio), streamed."
    ),
    requirements=ResourceRequirements(battery_draw_mw=500, thermal_impact=5),
)

log = logging.getLogger(__name__)

# Used when a request sets no max_tokens (the engine normally fills in its default).
DEFAULT_MAX_TOKENS = 512
# Pieces of token ids this endpoint returned, kept to answer token_pieces().
MAX_KNOWN_PIECES = 200_000
_ROOT_RULE = re.compile(r"(?m)^\s*root\s*::=")

# Tokenizer endpoints, by server family.
LLAMA_SERVER = "llama.cpp server"  # POST /tokenize, /detokenize, /apply-template
LLAMA_CPP_PYTHON = "llama-cpp-python server"  # POST /extras/tokenize, /extras/detokenize
NO_TOKENIZER = ""

_FINISH = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH}


def check_params(params: GenerationParams) -> dict[str, Any] | None:
    """Raise InvalidArgument for params no endpoint can take; returns the JSON schema."""
    if params.grammar and params.json_schema:
        raise InvalidArgument(
            "give params.grammar or params.json_schema, not both", field="params.grammar"
        )
    if params.grammar and not _ROOT_RULE.search(params.grammar):
        raise InvalidArgument(
            "params.grammar is not a GBNF grammar: it must define a 'root' rule (root ::= ...)",
            field="params.grammar",
        )
    if not params.json_schema:
        return None
    try:
        schema = json.loads(params.json_schema)
    except (ValueError, RecursionError) as e:  # not JSON, or nested past the recursion limit
        raise InvalidArgument(
            f"params.json_schema is not valid JSON: {e}", field="params.json_schema"
        ) from e
    if not isinstance(schema, dict):
        raise InvalidArgument(
            "params.json_schema must be a JSON object (a JSON Schema)", field="params.json_schema"
        )
    return schema


def sampling_fields(params: GenerationParams) -> dict[str, Any]:
    """Request fields for the sampling params that are set. max_tokens, temperature,
    top_p and seed are OpenAI's own; top_k, min_p, repeat_penalty (also sent as vLLM's
    repetition_penalty) and grammar are extensions of llama.cpp's and vLLM's servers,
    sent only when set, since OpenAI itself rejects them."""
    body: dict[str, Any] = {"max_tokens": params.max_tokens or DEFAULT_MAX_TOKENS}
    for name in ("temperature", "top_p", "seed", "top_k", "min_p"):
        value = getattr(params, name)
        if value is not None:
            body[name] = value
    if params.repeat_penalty is not None:
        body["repeat_penalty"] = params.repeat_penalty
        body["repetition_penalty"] = params.repeat_penalty
    if params.grammar:
        body["grammar"] = params.grammar
    return body


def message_json(m: ChatMessage) -> dict[str, str]:
    out = {"role": m.role.value, "content": m.content}
    if m.name:
        out["name"] = m.name
    return out


@dataclass
class _Progress:
    """What one generation has produced so far (reset for each attempt)."""

    emitted: bool = False
    chunks: int = 0  # streamed token chunks: the completion count when no usage comes
    finish: FinishReason | None = None
    server_finish: str | None = None
    done: bool = False
    usage: tuple[int, int] | None = None
    t_first: float = 0.0


class OpenAIModel(LoadedLLM):
    def __init__(self, settings: RemoteSettings, client: RemoteClient, context_length: int) -> None:
        self.settings = settings
        self.client = client
        self.context_length = context_length
        self.threads = 0
        # The llama.cpp family's server tokenizer, found on first use.
        self._tokenizer: str | None = None
        self._pieces: dict[int, str] = {}
        self._bos: list[int] | None = None
        # The response_format shape this endpoint takes for JSON schemas: OpenAI's
        # {"type": "json_schema", ...}, or llama-cpp-python's {"type": "json_object", "schema"}.
        self._schema_form: str | None = None

    # -- requests ----------------------------------------------------------------------

    def _root_path(self, path: str) -> str:
        """`path` beside the API: tokenizer endpoints live at the server root, not in /v1."""
        return self.settings.endpoint.path.removesuffix("/v1") + path

    def validate_params(self, params: GenerationParams) -> None:
        check_params(params)

    def complete(
        self, prompt: str, params: GenerationParams, emit: EmitText, cancel: CancelToken
    ) -> CompletionStats:
        if check_params(params) is not None:
            raise InvalidArgument(
                "the openai provider takes params.json_schema with chat only (Chat, "
                "ChatStream): /v1/completions has no response_format on most servers; use "
                "params.grammar with a llama.cpp server instead",
                field="params.json_schema",
            )
        body = {"model": self.settings.remote_model, "prompt": prompt, **sampling_fields(params)}
        return self._generate(
            "/completions", body, params, emit, cancel,
            piece=lambda choice: choice.get("text"),
            count_prompt=lambda: len(self.tokenize(prompt, add_special=True)),
        )  # fmt: skip

    def chat(
        self,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        emit: EmitText,
        cancel: CancelToken,
    ) -> CompletionStats:
        schema = check_params(params)
        body: dict[str, Any] = {
            "model": self.settings.remote_model,
            "messages": [message_json(m) for m in messages],
            **sampling_fields(params),
        }

        def run() -> CompletionStats:
            return self._generate(
                "/chat/completions", body, params, emit, cancel,
                piece=lambda choice: _delta(choice).get("content"),
                count_prompt=lambda: self.count_chat_tokens(messages),
            )  # fmt: skip

        if schema is None:
            return run()
        forms = [self._schema_form] if self._schema_form else ["json_schema", "json_object"]
        for i, form in enumerate(forms):
            body["response_format"] = (
                {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
                if form == "json_schema"
                else {"type": "json_object", "schema": schema}
            )
            try:
                stats = run()
            except InvalidArgument as e:
                if i + 1 < len(forms) and "response_format" in e.message:
                    log.info(
                        "%s: response_format json_schema refused; trying json_object",
                        self.settings.model_id,
                    )
                    continue
                raise
            self._schema_form = form
            return stats
        raise AssertionError("unreachable")

    def _generate(
        self,
        path: str,
        body: dict[str, Any],
        params: GenerationParams,
        emit: EmitText,
        cancel: CancelToken,
        *,
        piece: Callable[[Mapping[str, Any]], Any],
        count_prompt: Callable[[], int],
    ) -> CompletionStats:
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        t0 = time.perf_counter()
        p = _Progress()

        def send(text: str) -> None:
            if not p.emitted:
                p.emitted, p.t_first = True, time.perf_counter()
            emit(text)

        def attempt() -> None:
            nonlocal p
            p = _Progress()
            stops = StopScanner(params.stop)
            if cancel.cancelled:
                p.finish = FinishReason.CANCELLED
                return
            with self.client.open_stream(self.client.path(path), body, cancel) as stream:
                if stream is None:
                    p.finish = FinishReason.CANCELLED
                    return
                if stream.content_type == "application/json":
                    # A server that ignores "stream": the whole answer at once.
                    self._take_chunk(stream.read_json(), p, stops, send, piece)
                    p.done = True
                elif not stream.is_event_stream:
                    raise self.client.malformed(
                        f"expected text/event-stream, got {stream.content_type or 'no type'}"
                    )
                else:
                    for event in stream.events():
                        if event.data.strip() == "[DONE]":
                            p.done = True
                            break
                        doc = self.client.parse_json(event.data.encode())
                        self._take_chunk(doc, p, stops, send, piece)
                        if p.finish is not None or cancel.cancelled:
                            break
            if cancel.cancelled:
                p.finish = FinishReason.CANCELLED
            if p.finish is None:
                if not p.done and p.server_finish is None:
                    raise Retry(self.client.dropped_error("the answer stopped before its end"))
                if rest := stops.flush():
                    send(rest)

        self.client.with_retries(attempt, cancel, may_retry=lambda: not p.emitted)
        t_end = time.perf_counter()
        finish = p.finish or _FINISH.get(p.server_finish or "", FinishReason.STOP)
        if p.usage is not None:
            prompt_tokens, completion_tokens = p.usage
        else:
            completion_tokens = p.chunks
            prompt_tokens = 0 if finish is FinishReason.CANCELLED else self._quiet(count_prompt)
        t_first = p.t_first or t_end
        return CompletionStats(
            finish_reason=finish,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            prompt_eval_ms=(t_first - t0) * 1000,
            generation_ms=(t_end - t_first) * 1000,
        )

    def _take_chunk(
        self,
        doc: Any,
        p: _Progress,
        stops: StopScanner,
        send: EmitText,
        piece: Callable[[Mapping[str, Any]], Any],
    ) -> None:
        """One streamed chunk (or a whole non-streamed answer)."""
        if not isinstance(doc, dict):
            raise self.client.malformed(f"expected a JSON object, got {type(doc).__name__}")
        if "error" in doc:
            raise self._stream_error(doc)
        usage = doc.get("usage")
        if isinstance(usage, dict):
            pt, ct = usage.get("prompt_tokens"), usage.get("completion_tokens")
            if isinstance(pt, int) and isinstance(ct, int):
                p.usage = (pt, ct)
        choices = doc.get("choices", [])
        if not isinstance(choices, list):
            raise self.client.malformed("'choices' is not a list")
        for choice in choices:
            if not isinstance(choice, dict):
                raise self.client.malformed("a choice is not an object")
            if choice.get("index", 0) != 0:
                continue
            text = piece(choice)
            if text is not None and not isinstance(text, str):
                raise self.client.malformed("the text of a choice is not a string")
            reason = choice.get("finish_reason")
            if isinstance(text, str) and reason is None:
                p.chunks += 1
            if text:
                out, hit = stops.feed(text)
                if out:
                    send(out)
                if hit:
                    p.finish = FinishReason.STOP_SEQUENCE
                    return
            if isinstance(reason, str):
                p.server_finish = reason

    def _stream_error(self, doc: Mapping[str, Any]) -> RustaidError | Retry:
        """An error the server reports inside the stream (vLLM, llama.cpp server)."""
        err = doc.get("error")
        code = err.get("code") if isinstance(err, dict) else None
        status = code if isinstance(code, int) and 400 <= code < 600 else 500
        return self.client.status_error(status, json.dumps(doc).encode())

    @staticmethod
    def _quiet(count: Callable[[], int]) -> int:
        try:
            return count()
        except RustaidError as e:
            log.debug("prompt tokens not counted: %s", e)
            return 0

    # -- tokens ------------------------------------------------------------------------

    def _which_tokenizer(self) -> str:
        if self._tokenizer is None:
            probe = self.client.call_json(
                "POST", self._root_path("/tokenize"), {"content": "a"}, optional=True
            )
            if isinstance(probe, dict) and isinstance(probe.get("tokens"), list):
                self._tokenizer = LLAMA_SERVER
            else:
                probe = self.client.call_json(
                    "POST", self._root_path("/extras/tokenize"),
                    {"input": "a", "model": self.settings.remote_model}, optional=True,
                )  # fmt: skip
                ok = isinstance(probe, dict) and isinstance(probe.get("tokens"), list)
                self._tokenizer = LLAMA_CPP_PYTHON if ok else NO_TOKENIZER
            log.debug(
                "%s: tokenizer endpoint: %s", self.settings.model_id, self._tokenizer or "none"
            )
        if not self._tokenizer:
            raise PreconditionFailed(
                f"{self.client.where} does not expose tokenization (OpenAI's API has none; "
                "llama.cpp's server and llama-cpp-python's do); token counts of generations "
                "come from the server's usage report",
                reason="TOKENIZE_UNSUPPORTED",
            )
        return self._tokenizer

    def _ids(self, doc: Any, key: str = "tokens") -> list[Any]:
        items = doc.get(key) if isinstance(doc, dict) else None
        if not isinstance(items, list):
            raise self.client.malformed(f"the tokenizer's answer has no '{key}' list")
        return items

    def _remember(self, ids: Sequence[int], pieces: Sequence[str] | None = None) -> None:
        if len(self._pieces) > MAX_KNOWN_PIECES:
            self._pieces.clear()
        for i, t in enumerate(ids):
            if pieces is not None:
                self._pieces[t] = pieces[i]
            else:
                self._pieces.setdefault(t, "")

    def tokenize(self, text: str, add_special: bool) -> list[int]:
        kind = self._which_tokenizer()
        if kind == LLAMA_SERVER:
            doc = self.client.call_json(
                "POST", self._root_path("/tokenize"),
                {"content": text, "add_special": add_special, "with_pieces": True},
            )  # fmt: skip
            ids: list[int] = []
            pieces: list[str] = []
            for item in self._ids(doc):
                if isinstance(item, int):
                    ids.append(item)
                    pieces.append("")
                elif isinstance(item, dict) and isinstance(item.get("id"), int):
                    ids.append(item["id"])
                    raw = item.get("piece", "")
                    # Pieces that are not whole UTF-8 characters come as lists of bytes.
                    pieces.append(
                        bytes(raw).decode("utf-8", errors="replace")
                        if isinstance(raw, list)
                        else str(raw)
                    )
                else:
                    raise self.client.malformed("a token is neither an id nor {id, piece}")
            self._remember(ids, pieces if any(pieces) else None)
            return ids
        doc = self.client.call_json(
            "POST", self._root_path("/extras/tokenize"),
            {"input": text, "model": self.settings.remote_model},
        )  # fmt: skip
        ids = [t for t in self._ids(doc) if isinstance(t, int)]
        if not add_special:  # this server always adds them: drop what it adds to ""
            if self._bos is None:
                empty = self.client.call_json(
                    "POST", self._root_path("/extras/tokenize"),
                    {"input": "", "model": self.settings.remote_model},
                )  # fmt: skip
                self._bos = [t for t in self._ids(empty) if isinstance(t, int)]
            if self._bos and ids[: len(self._bos)] == self._bos:
                ids = ids[len(self._bos) :]
        self._remember(ids)
        return ids

    def token_pieces(self, token_ids: Sequence[int]) -> list[str]:
        kind = self._which_tokenizer()
        unknown = [t for t in token_ids if t not in self._pieces]
        if unknown:
            # An id the server's vocabulary lacks can crash llama.cpp-based servers.
            raise InvalidArgument(
                f"token ids {unknown[:5]} did not come from this endpoint's tokenizer; "
                "pieces are only given for ids it returned",
                field="token_ids",
            )
        out: list[str] = []
        for t in token_ids:
            if self._pieces[t] or kind == LLAMA_SERVER:
                out.append(self._pieces[t])
                continue
            try:
                doc = self.client.call_json(
                    "POST", self._root_path("/extras/detokenize"),
                    {"tokens": [t], "model": self.settings.remote_model}, retries=False,
                )  # fmt: skip
            except Unavailable as e:
                if e.reason != "REMOTE_UNAVAILABLE":
                    raise
                # The server fails on pieces that are not whole UTF-8 characters.
                doc = {"text": "\ufffd"}
            text = doc.get("text") if isinstance(doc, dict) else None
            if not isinstance(text, str):
                raise self.client.malformed("the detokenizer's answer has no 'text'")
            self._pieces[t] = text
            out.append(text)
        return out

    def count_chat_tokens(self, messages: Sequence[ChatMessage]) -> int:
        kind = self._which_tokenizer()
        payload = [message_json(m) for m in messages]
        if kind == LLAMA_SERVER:
            doc = self.client.call_json(
                "POST", self._root_path("/apply-template"), {"messages": payload}
            )
            prompt = doc.get("prompt") if isinstance(doc, dict) else None
            if not isinstance(prompt, str):
                raise self.client.malformed("/apply-template gave no 'prompt'")
            return len(self.tokenize(prompt, add_special=True))
        # llama-cpp-python's server has no template endpoint: it reports the prompt's
        # exact size in the usage of a one-token (non-streamed) answer.
        doc = self.client.call_json(
            "POST", self.client.path("/chat/completions"),
            {"model": self.settings.remote_model, "messages": payload, "max_tokens": 1},
        )  # fmt: skip
        usage = doc.get("usage") if isinstance(doc, dict) else None
        count = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        if not isinstance(count, int):
            raise self.client.malformed("the answer has no usage.prompt_tokens")
        return count

    def close(self) -> None:
        self._pieces.clear()


def _delta(choice: Mapping[str, Any]) -> Mapping[str, Any]:
    delta = choice.get("delta", choice.get("message", {}))
    return delta if isinstance(delta, dict) else {}


def _context_length(listing: Any, remote_model: str) -> int:
    """The context size an endpoint states for the model (vLLM: max_model_len)."""
    data = listing.get("data") if isinstance(listing, dict) else None
    for m in data if isinstance(data, list) else []:
        if isinstance(m, dict) and m.get("id") == remote_model:
            for key in ("max_model_len", "context_length"):
                if isinstance(m.get(key), int):
                    return int(m[key])
    return 0


class OpenAICompatProvider(LLMProvider):
    name = "openai"
    remote = True  # serves no model files (declares no suffixes)

    def load(self, spec: ModelSpec, options: LoadOptions) -> LoadedLLM:
        settings = remote_settings(spec, self.name)
        if not settings.endpoint.path:  # "http://host:port" means the usual /v1 base
            settings = _with_path(settings, "/v1")
        headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
        client = RemoteClient(settings, headers)
        # llama-cpp-python's server answers request validation errors with HTTP 500.
        client.validation_markers = ("validation error",)
        # Reach the endpoint now: a wrong URL or key shows at load, not mid-request.
        listing = client.call_json("GET", client.path("/models"), optional=True)
        log.info("connected %s to %s (%s)", spec.id, settings.endpoint.url, settings.remote_model)
        return OpenAIModel(settings, client, _context_length(listing, settings.remote_model))


def _with_path(settings: RemoteSettings, path: str) -> RemoteSettings:
    from dataclasses import replace

    return replace(settings, endpoint=replace(settings.endpoint, path=path))


@hookimpl
def register_llm_providers(register: Any) -> None:
    register(OpenAICompatProvider())

"""Built-in plugin: the llama.cpp engine (llama-cpp-python) for GGUF models.

llama_cpp (and numpy with it) is imported on the first load, never at daemon start-up.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from rustaid.builtin.llama_cpp_loop import Pieces, Sampling, generate
from rustaid.errors import InvalidArgument, PreconditionFailed
from rustaid.hookspecs import hookimpl
from rustaid.providers import (
    CancelToken,
    ChatMessage,
    CompletionStats,
    EmitText,
    GenerationParams,
    LLMProvider,
    LoadedLLM,
    LoadOptions,
    ModelSpec,
    PluginInfo,
    ResourceRequirements,
)

if TYPE_CHECKING:
    import llama_cpp
    from llama_cpp.llama_grammar import LlamaGrammar

PLUGIN = PluginInfo(
    name="llama.cpp",
    version="0.1.0",
    description="Runs GGUF language models locally with llama.cpp (llama-cpp-python).",
    requirements=ResourceRequirements(
        min_memory_bytes=64 << 20, cores=1, battery_draw_mw=4000, thermal_impact=70
    ),
)

log = logging.getLogger(__name__)

# Used when a model has no chat template of its own.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# llama-cpp-python's own defaults, written out so a request sees stable behaviour.
DEFAULTS = {"temperature": 0.8, "top_p": 0.95, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.0}


# llama.cpp parses GBNF recursively, several C stack frames per nested ( ) group: a
# grammar nested some thousands of groups deep overflows the thread's stack and kills
# the daemon (SIGSEGV). Real grammars nest a handful of levels.
MAX_GRAMMAR_NESTING = 256


def grammar_nesting(text: str) -> int:
    """Deepest nesting of ( ) groups in GBNF text (not counting literals, character
    classes and comments)."""
    depth = deepest = i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c in '"[':
            close = '"' if c == '"' else "]"
            i += 1
            while i < n and text[i] != close:
                i += 2 if text[i] == "\\" else 1
        elif c == "#":
            while i < n and text[i] not in "\r\n":
                i += 1
        elif c == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif c == ")":
            depth -= 1
        i += 1
    return deepest


def _check_nesting(text: str, field: str) -> str:
    depth = grammar_nesting(text)
    if depth > MAX_GRAMMAR_NESTING:
        raise InvalidArgument(
            f"{field} nests ( ) groups {depth} deep; at most {MAX_GRAMMAR_NESTING} are "
            "allowed: name the inner parts as rules instead",
            field=field,
        )
    return text


def grammar_text(params: GenerationParams) -> str:
    """GBNF text for params.grammar or params.json_schema ("" when unconstrained)."""
    if not params.json_schema:
        return _check_nesting(params.grammar, "params.grammar")
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        schema = json.loads(params.json_schema)
    except (ValueError, RecursionError) as e:  # not JSON, nested too deep, too long a number
        why = str(e).split("; use sys.", 1)[0]  # Python's advice is not for the client
        raise InvalidArgument(
            f"params.json_schema is not valid JSON: {why}", field="params.json_schema"
        ) from e
    if not isinstance(schema, dict):
        raise InvalidArgument(
            "params.json_schema must be a JSON object (a JSON Schema)", field="params.json_schema"
        )
    try:
        text = str(json_schema_to_gbnf(json.dumps(schema)))
    except Exception as e:  # the converter raises several types
        raise InvalidArgument(
            f"params.json_schema cannot be turned into a grammar: {e}", field="params.json_schema"
        ) from e
    return _check_nesting(text, "params.json_schema")


class StopScanner:
    """Holds back text that may be the start of a stop sequence, so a stop string
    never reaches the client even when it arrives split over several tokens."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.keep = max((len(s) for s in self.stops), default=1) - 1
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Return (text safe to emit, stop found)."""
        if not self.stops:
            return text, False
        self.pending += text
        cut = min((i for s in self.stops if (i := self.pending.find(s)) >= 0), default=-1)
        if cut >= 0:
            out, self.pending = self.pending[:cut], ""
            return out, True
        split = max(0, len(self.pending) - self.keep)
        out, self.pending = self.pending[:split], self.pending[split:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class LlamaModel(LoadedLLM):
    def __init__(self, llm: llama_cpp.Llama, path: Path, threads: int, chat_format: str) -> None:
        self.llm = llm
        self.path = path
        self.threads = threads
        self.context_length = llm.n_ctx()
        self._formatter = self._make_formatter(llm.metadata, chat_format)
        self._pieces = Pieces(llm)
        self._cache_enabled = False

    def enable_prompt_cache(self, capacity_bytes: int) -> None:
        # llama-cpp-python reuses the longest evaluated prefix by itself; the RAM cache
        # also keeps states of other conversations so interleaved sessions stay fast.
        if self._cache_enabled or capacity_bytes <= 0:
            return
        # Our cache counts every byte a saved state holds (LlamaRAMCache counts only the
        # context state, not its logits copy) and keeps just what restoring needs.
        from functools import partial

        from rustaid.builtin.llama_cpp_cache import PromptCache, snapshot

        llm = self.llm
        llm.set_cache(PromptCache(capacity_bytes, llm.n_ctx(), llm._logits_all))
        llm.save_state = partial(snapshot, llm)  # type: ignore[method-assign]
        self._cache_enabled = True

    def _make_formatter(self, meta: dict[str, str], chat_format: str) -> Any:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        def token_text(key: str) -> str:
            tid = meta.get(key)
            if tid is None:
                return ""
            return self.llm._model.token_get_text(int(tid))

        return Jinja2ChatFormatter(
            template=CHATML_TEMPLATE
            if chat_format == "chatml"
            else meta.get("tokenizer.chat_template") or CHATML_TEMPLATE,
            eos_token=token_text("tokenizer.ggml.eos_token_id"),
            bos_token=token_text("tokenizer.ggml.bos_token_id"),
        )

    def validate_params(self, params: GenerationParams) -> None:
        # llama.cpp only reports a bad grammar by crashing at the first sample, so parse it
        # here against this model's vocabulary first (read-only: safe during a generation).
        text = grammar_text(params)
        if not text:
            return
        import llama_cpp

        sampler = llama_cpp.llama_sampler_init_grammar(
            self.llm._model.vocab, text.encode("utf-8"), b"root"
        )
        if not sampler:
            field = "params.json_schema" if params.json_schema else "params.grammar"
            raise InvalidArgument(
                f"{field} is not a valid GBNF grammar (it must define a 'root' rule; rule "
                "names use letters, digits and '-')",
                field=field,
            )
        llama_cpp.llama_sampler_free(sampler)

    # -- prompts ----------------------------------------------------------------------

    def _chat_prompt(self, messages: Sequence[ChatMessage]) -> tuple[list[int], list[str]]:
        try:
            rendered = self._formatter(
                messages=[
                    {"role": m.role.value, "content": m.content}
                    | ({"name": m.name} if m.name else {})
                    for m in messages
                ]
            )
        except Exception as e:  # a template error is the request's fault (roles, order)
            raise InvalidArgument(
                f"messages cannot be rendered with the model's chat template: {e}",
                field="messages",
            ) from e
        stops = rendered.stop if isinstance(rendered.stop, list) else [rendered.stop or ""]
        add_bos = not getattr(rendered, "added_special", False)
        tokens = self.llm.tokenize(rendered.prompt.encode("utf-8"), add_bos=add_bos, special=True)
        return tokens, [s for s in stops if s]

    def tokenize(self, text: str, add_special: bool) -> list[int]:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=True))

    def token_pieces(self, token_ids: Sequence[int]) -> list[str]:
        n_vocab = self.llm.n_vocab()
        bad = [t for t in token_ids if not 0 <= t < n_vocab]
        if bad:
            raise InvalidArgument(f"token ids out of range 0..{n_vocab - 1}: {bad[:5]}")
        return [
            self.llm.detokenize([t], special=True).decode("utf-8", errors="replace")
            for t in token_ids
        ]

    def count_chat_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return len(self._chat_prompt(messages)[0])

    # -- generation -------------------------------------------------------------------

    def complete(
        self, prompt: str, params: GenerationParams, emit: EmitText, cancel: CancelToken
    ) -> CompletionStats:
        tokens = self.tokenize(prompt, add_special=True)
        return self._run(tokens, [], params, emit, cancel, field="prompt")

    def chat(
        self,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        emit: EmitText,
        cancel: CancelToken,
    ) -> CompletionStats:
        tokens, template_stops = self._chat_prompt(messages)
        return self._run(tokens, template_stops, params, emit, cancel, field="messages")

    def _run(
        self,
        tokens: list[int],
        extra_stops: list[str],
        params: GenerationParams,
        emit: EmitText,
        cancel: CancelToken,
        field: str,
    ) -> CompletionStats:
        n_prompt = len(tokens)
        if n_prompt == 0:
            raise InvalidArgument(f"{field} has no tokens: give it some text", field=field)
        room = self.context_length - n_prompt
        if room < 1:
            raise InvalidArgument(
                f"prompt is {n_prompt} tokens but the model is loaded with a context of "
                f"{self.context_length}: shorten it or load the model with a larger context",
                field=field,
            )
        sampling = Sampling(
            temperature=_pick(params.temperature, "temperature"),
            top_p=_pick(params.top_p, "top_p"),
            top_k=_pick(params.top_k, "top_k"),
            min_p=_pick(params.min_p, "min_p"),
            repeat_penalty=_pick(params.repeat_penalty, "repeat_penalty"),
            seed=params.seed,
            grammar=self._grammar(params),
        )
        # Samples the tokens create_completion would, with a cost per token that does not
        # grow with the text (see llama_cpp_loop).
        out = generate(
            self.llm,
            tokens,
            sampling,
            max_tokens=min(params.max_tokens or 512, room),
            pieces=self._pieces,
            stops=StopScanner([*params.stop, *extra_stops]),
            emit=emit,
            cancel=cancel,
        )
        return CompletionStats(
            finish_reason=out.finish,
            prompt_tokens=n_prompt,
            completion_tokens=out.sampled,
            prompt_eval_ms=(out.t_first - out.t_start) * 1000,
            generation_ms=(out.t_end - out.t_first) * 1000,
        )

    def _grammar(self, params: GenerationParams) -> LlamaGrammar | None:
        text = grammar_text(params)
        if not text:
            return None
        from llama_cpp.llama_grammar import LlamaGrammar

        return LlamaGrammar.from_string(text, verbose=False)

    def close(self) -> None:
        self.llm.close()


def _pick(value: float | int | None, name: str) -> Any:
    return DEFAULTS[name] if value is None else value


class LlamaCppProvider(LLMProvider):
    name = "llama.cpp"

    def handles(self, path: Path) -> bool:
        return path.suffix.lower() == ".gguf"

    def load(self, spec: ModelSpec, options: LoadOptions) -> LoadedLLM:
        import llama_cpp

        load_cpu_backends(Path(llama_cpp.__file__).parent / "lib")
        if spec.path is None:
            raise PreconditionFailed(f"model {spec.id!r}: llama.cpp needs a local .gguf file")
        path = spec.path
        threads = options.threads or psutil.cpu_count(logical=False) or 1
        try:
            llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=options.context_length or 0,
                n_threads=threads,
                n_threads_batch=threads,
                n_batch=options.batch_size or 512,
                n_gpu_layers=options.gpu_layers,
                verbose=False,
            )
        except (ValueError, RuntimeError) as e:
            raise PreconditionFailed(
                f"llama.cpp could not load {path.name}: {e}", reason="MODEL_LOAD_FAILED"
            ) from e
        log.info("loaded %s (context %d, %d threads)", path.name, llm.n_ctx(), threads)
        return LlamaModel(llm, path, threads, options.chat_format)


def load_cpu_backends(lib_dir: Path) -> None:
    """A portable build (GGML_BACKEND_DL, as in the Debian package) ships one CPU backend
    per instruction set (libggml-cpu-haswell.so, ...-skylakex.so...): load the best one
    for this CPU, once. Other builds have their backend linked in: nothing to do."""
    import ctypes

    if not any(lib_dir.glob("libggml-cpu-*.so")):
        return
    # The libggml that libllama links (by its soname, next to it), not another copy.
    ggml = ctypes.CDLL(str(lib_dir / "libggml.so.0"))
    ggml.ggml_backend_reg_count.restype = ctypes.c_size_t
    if ggml.ggml_backend_reg_count() == 0:
        ggml.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
        ggml.ggml_backend_load_all_from_path(str(lib_dir).encode())


@hookimpl
def register_llm_providers(register: Any) -> None:
    register(LlamaCppProvider())

"""Built-in plugin: the llama.cpp engine (llama-cpp-python) for GGUF models.

llama_cpp (and numpy with it) is imported on the first load, never at daemon start-up.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from rustaid.builtin.llama_batch import BatchEngine, BatchSequence
from rustaid.builtin.llama_cpp_loop import Outcome, Pieces, Sampling, generate
from rustaid.core.admission import check_grammar_size
from rustaid.core.gguf import describe_gguf
from rustaid.errors import InvalidArgument, PreconditionFailed
from rustaid.hookspecs import hookimpl
from rustaid.providers import (
    CancelToken,
    ChatMessage,
    CompletionStats,
    EmitText,
    GenerationParams,
    GrammarLimits,
    LLMProvider,
    LoadedLLM,
    LoadOptions,
    ModelMetadata,
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

# The context of the high-level Llama object when the model batches: it then serves only
# tokenizing, and the sequences have a context of their own.
SMALL_CONTEXT = 256

# llama-cpp-python's own defaults, written out so a request sees stable behaviour.
DEFAULTS = {"temperature": 0.8, "top_p": 0.95, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.0}


# llama.cpp parses GBNF recursively, several C stack frames per nested ( ) group: a
# grammar nested some thousands of groups deep overflows the thread's stack and kills
# the daemon (SIGSEGV). Real grammars nest a handful of levels.
MAX_GRAMMAR_NESTING = 256
# Choices (alternatives `|`, optional and repeated items `? * + {m,n}`) are what
# llama.cpp's grammar set-up spends its time on, superlinearly: 16,000 of them (64 KiB
# of `[a]|[a]|...`) take ~1 s, 2048 of them ~30 ms. (`x{0,n}` nests its copies, so it
# counts once.) A reply grammar of 40 tools has a few hundred.
MAX_GRAMMAR_CHOICES = 2048


def grammar_shape(text: str) -> tuple[int, int]:
    """(deepest nesting of ( ) groups, choices) in GBNF text, not counting literals,
    character classes and comments."""
    depth = deepest = choices = i = 0
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
        elif c in "|?*+{":
            choices += 1
        i += 1
    return deepest, choices


def grammar_nesting(text: str) -> int:
    """Deepest nesting of ( ) groups in GBNF text."""
    return grammar_shape(text)[0]


def _check_nesting(text: str, field: str) -> str:
    depth, choices = grammar_shape(text)
    if depth > MAX_GRAMMAR_NESTING:
        raise InvalidArgument(
            f"{field} nests ( ) groups {depth} deep; at most {MAX_GRAMMAR_NESTING} are "
            "allowed: name the inner parts as rules instead",
            field=field,
        )
    if choices > MAX_GRAMMAR_CHOICES:
        raise InvalidArgument(
            f"{field} has {choices} choices (alternatives |, items with ? * + {{m,n}}); at "
            f"most {MAX_GRAMMAR_CHOICES} are allowed: simplify it",
            field=field,
            reason="GRAMMAR_TOO_LARGE",
        )
    return text


def grammar_text(params: GenerationParams, limits: GrammarLimits | None = None) -> str:
    """GBNF text for params.grammar or params.json_schema ("" when unconstrained),
    within `limits` (the grammar a schema becomes, too)."""
    limits = limits or GrammarLimits()
    if not params.json_schema:
        check_grammar_size(params.grammar, limits, "params.grammar")
        return _check_nesting(params.grammar, "params.grammar")
    check_grammar_size(params.json_schema, limits, "params.json_schema")
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
    try:
        check_grammar_size(text, limits, "params.json_schema")
    except InvalidArgument as e:
        raise InvalidArgument(
            f"the grammar made from {e}", field="params.json_schema", reason="GRAMMAR_TOO_LARGE"
        ) from None
    return _check_nesting(text, "params.json_schema")


class StopScanner:
    """Holds back text that may be the start of a stop sequence, so a stop string
    never reaches the client even when it arrives split over several tokens. Only an
    end that a stop sequence starts with is held back: the rest goes out at once (a
    chat's "<|im_end|>" would otherwise hold every reply's first 9 characters, two or
    three tokens, before the first one reaches the client)."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.keep = max((len(s) for s in self.stops), default=1) - 1
        self.pending = ""

    def _held(self) -> int:
        """The length of the longest end of the pending text that a stop starts with."""
        for n in range(min(self.keep, len(self.pending)), 0, -1):
            tail = self.pending[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0

    def feed(self, text: str) -> tuple[str, bool]:
        """Return (text safe to emit, stop found)."""
        if not self.stops:
            return text, False
        self.pending += text
        cut = min((i for s in self.stops if (i := self.pending.find(s)) >= 0), default=-1)
        if cut >= 0:
            out, self.pending = self.pending[:cut], ""
            return out, True
        split = len(self.pending) - self._held()
        out, self.pending = self.pending[:split], self.pending[split:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class LlamaModel(LoadedLLM):
    def __init__(
        self,
        llm: llama_cpp.Llama,
        path: Path,
        threads: int,
        chat_format: str,
        grammar_limits: GrammarLimits | None = None,
        parallel: int = 1,
        context_length: int = 0,
        batch_size: int = 512,
    ) -> None:
        self.llm = llm
        self.grammar_limits = grammar_limits or GrammarLimits()
        # The last JSON Schema turned into GBNF and its grammar: the check before the
        # request queues converts it, generation reuses it (converting costs up to ~1 s).
        self._converted: tuple[str, str] = ("", "")
        self.path = path
        self.threads = threads
        self._threads_in_force = threads
        self.context_length = llm.n_ctx()
        self._formatter = self._make_formatter(llm.metadata, chat_format)
        self._pieces = Pieces(llm)
        self._cache_enabled = False
        # Several requests at once: one context with a sequence per request, decoded
        # together on the batch's own thread (llm's own context then goes unused).
        self.batch: BatchEngine | None = None
        if parallel > 1:
            self.context_length = context_length or llm._model.n_ctx_train()
            self.batch = BatchEngine(
                llm,
                self._pieces,
                parallel=parallel,
                context_length=self.context_length,
                batch_size=batch_size,
                threads=threads,
            )
            self.parallel = parallel

    def _between_tokens(self, cancel: CancelToken) -> None:
        if cancel.threads is not None:
            self.use_threads(cancel.threads)
        cancel.rest()

    def use_threads(self, threads: int) -> int:
        # llama.cpp changes a context's thread count between decode calls; no reload.
        wanted = threads or self.threads
        if self.batch is not None:
            return wanted  # one count per batch: each request's cap goes in its CancelToken
        if wanted != self._threads_in_force:
            self.llm._ctx.set_n_threads(wanted, wanted)
            self.llm.n_threads = self.llm.n_threads_batch = wanted
            self._threads_in_force = wanted
        return wanted

    def enable_prompt_cache(self, capacity_bytes: int) -> None:
        # llama-cpp-python reuses the longest evaluated prefix by itself; the RAM cache
        # also keeps states of other conversations so interleaved sessions stay fast.
        if self._cache_enabled or capacity_bytes <= 0 or self.batch is not None:
            return  # batched: each sequence's KV stays for the next turn (prefix reuse)
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
        text = self._grammar_text(params)
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
        with self._coming():
            tokens = self.tokenize(prompt, add_special=True)
            return self._run(tokens, [], params, emit, cancel, field="prompt")

    def chat(
        self,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        emit: EmitText,
        cancel: CancelToken,
    ) -> CompletionStats:
        with self._coming():
            tokens, template_stops = self._chat_prompt(messages)
            return self._run(tokens, template_stops, params, emit, cancel, field="messages")

    def _coming(self) -> contextlib.AbstractContextManager[None]:
        return self.batch.coming() if self.batch is not None else contextlib.nullcontext()

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
        stops = StopScanner([*params.stop, *extra_stops])
        max_tokens = min(params.max_tokens or 512, room)
        if self.batch is not None:
            out = self.batch.run(BatchSequence(tokens, sampling, max_tokens, stops, emit, cancel))
            return _stats(out, n_prompt)
        # Samples the tokens create_completion would, with a cost per token that does not
        # grow with the text (see llama_cpp_loop).
        out = generate(
            self.llm,
            tokens,
            sampling,
            max_tokens=max_tokens,
            pieces=self._pieces,
            stops=stops,
            emit=emit,
            cancel=cancel,
            between=lambda: self._between_tokens(cancel),
        )
        return _stats(out, n_prompt)

    def _grammar_text(self, params: GenerationParams) -> str:
        if not params.json_schema:
            return grammar_text(params, self.grammar_limits)
        schema, text = self._converted  # one read: another thread may replace it
        if schema != params.json_schema:
            text = grammar_text(params, self.grammar_limits)
            self._converted = (params.json_schema, text)
        return text

    def _grammar(self, params: GenerationParams) -> LlamaGrammar | None:
        text = self._grammar_text(params)
        if not text:
            return None
        from llama_cpp.llama_grammar import LlamaGrammar

        return LlamaGrammar.from_string(text, verbose=False)

    def close(self) -> None:
        if self.batch is not None:
            self.batch.close()
        self.llm.close()


def _stats(out: Outcome, n_prompt: int) -> CompletionStats:
    return CompletionStats(
        finish_reason=out.finish,
        prompt_tokens=n_prompt,
        completion_tokens=out.sampled,
        prompt_eval_ms=(out.t_first - out.t_start) * 1000,
        generation_ms=(out.t_end - out.t_first) * 1000,
    )


def _pick(value: float | int | None, name: str) -> Any:
    return DEFAULTS[name] if value is None else value


class LlamaCppProvider(LLMProvider):
    name = "llama.cpp"
    # Its model files, read by the GGUF reader (which proves them complete).
    suffixes = (".gguf",)
    checks_completeness = True

    def describe(self, path: Path) -> ModelMetadata:
        return describe_gguf(path)

    def load(self, spec: ModelSpec, options: LoadOptions) -> LoadedLLM:
        import llama_cpp

        load_cpu_backends(Path(llama_cpp.__file__).parent / "lib")
        if spec.path is None:
            raise PreconditionFailed(f"model {spec.id!r}: llama.cpp needs a local .gguf file")
        path = spec.path
        threads = options.threads or psutil.cpu_count(logical=False) or 1
        parallel = max(1, options.parallel)
        batch = options.batch_size or 512
        try:
            llm = llama_cpp.Llama(
                model_path=str(path),
                # Batched, the sequences get a context of their own (see BatchEngine).
                n_ctx=(options.context_length or 0) if parallel == 1 else SMALL_CONTEXT,
                n_threads=threads,
                n_threads_batch=threads,
                n_batch=batch if parallel == 1 else SMALL_CONTEXT,
                n_gpu_layers=options.gpu_layers,
                flash_attn=parallel > 1
                if options.flash_attention is None
                else options.flash_attention,
                verbose=False,
            )
        except (ValueError, RuntimeError) as e:
            raise PreconditionFailed(
                f"llama.cpp could not load {path.name}: {e}", reason="MODEL_LOAD_FAILED"
            ) from e
        try:
            model = LlamaModel(
                llm, path, threads, options.chat_format, options.grammar_limits,
                parallel=parallel, context_length=options.context_length, batch_size=batch,
            )  # fmt: skip
        except MemoryError as e:
            llm.close()
            raise PreconditionFailed(
                f"llama.cpp could not load {path.name} for {parallel} requests at once: {e}; "
                "lower `parallel` or the context length",
                reason="MODEL_LOAD_FAILED",
            ) from e
        log.info(
            "loaded %s (context %d, %d threads, %d at once)",
            path.name, model.context_length, threads, parallel,
        )  # fmt: skip
        return model


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

"""`rustaictl`: the command line for the rustaid daemon.

Exit status: 0 success, 1 the daemon (or the connection) reported an error, 2 usage
error, 130 interrupted (Ctrl-C cancels a running generation).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC
from pathlib import Path
from typing import Any, NoReturn, TextIO

from google.protobuf import json_format
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from rustaid.api.v1 import common_pb2, generate_pb2, models_pb2, plugins_pb2
from rustaid_client.client import (
    ChatInput,
    Client,
    GenerationOptions,
    ResponseStream,
    RustaidError,
)

PROG = "rustaictl"
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

Command = Callable[[Client, argparse.Namespace], int]
StreamEvent = generate_pb2.GenerateStreamResponse | generate_pb2.ChatStreamResponse


class UsageError(Exception):
    """A mistake in the command line found after parsing (exit status 2)."""


# ---------------------------------------------------------------------------- output


def _stdout() -> TextIO:
    return sys.stdout


def _stderr() -> TextIO:
    return sys.stderr


def _print(text: str = "") -> None:
    print(text, file=_stdout())


def _note(text: str) -> None:
    print(text, file=_stderr())


def _to_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


def _print_json(message: Message, *, compact: bool = False) -> None:
    data = _to_dict(message)
    text = json.dumps(data, ensure_ascii=False, indent=None if compact else 2)
    out = _stdout()
    out.write(text + "\n")
    out.flush()


def friendly(wrapper: EnumTypeWrapper, value: int) -> str:
    """`MODEL_STATE_LOADED` -> `loaded`; unspecified -> `-`."""
    try:
        name = wrapper.Name(value)
    except ValueError:
        return str(value)
    prefix = next(
        (
            v.name.removesuffix("UNSPECIFIED")
            for v in wrapper.DESCRIPTOR.values
            if v.name.endswith("_UNSPECIFIED")
        ),
        "",
    )
    if name.endswith("_UNSPECIFIED"):
        return "-"
    return name.removeprefix(prefix).lower()


def human_size(n: int) -> str:
    """1536 -> `1.5 KiB`."""
    if n < 1024:
        return f"{n} B"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        size /= 1024
        if size < 1024 or unit == "TiB":
            break
    return f"{size:.1f} {unit}"


def _time(ts: Timestamp) -> str:
    if ts.seconds == 0 and ts.nanos == 0:
        return "never"
    return ts.ToDatetime(tzinfo=UTC).astimezone().isoformat(timespec="seconds")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    cells = [list(headers), *([c or "-" for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        line = "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
        _print(line.rstrip())


def _fields(pairs: Sequence[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in pairs) + 1
    for key, value in pairs:
        _print(f"{key + ':':<{width}} {value or '-'}")


# ---------------------------------------------------------------------------- models


def _model_context(model: models_pb2.Model) -> str:
    # The context in force while loaded, else the one the model was trained with.
    loaded = model.state == models_pb2.MODEL_STATE_LOADED
    ctx = (model.context_length if loaded else 0) or model.metadata.context_length
    return str(ctx) if ctx else ""


def _model_row(model: models_pb2.Model) -> list[str]:
    return [
        model.id,
        friendly(common_pb2.ModelKind, model.kind),
        friendly(models_pb2.ModelState, model.state),
        human_size(model.size_bytes) if model.size_bytes else "",
        model.metadata.quantization,
        _model_context(model),
        model.error,
    ]


def cmd_models_list(client: Client, args: argparse.Namespace) -> int:
    response = client.list_models(kind=args.kind, loaded_only=args.loaded)
    if args.json:
        _print_json(response)
        return 0
    headers = ["ID", "KIND", "STATE", "SIZE", "QUANT", "CONTEXT", "ERROR"]
    _table(headers, [_model_row(m) for m in response.models])
    return 0


def _show_model(model: models_pb2.Model) -> None:
    meta = model.metadata
    pairs = [
        ("id", model.id),
        ("kind", friendly(common_pb2.ModelKind, model.kind)),
        ("state", friendly(models_pb2.ModelState, model.state)),
        ("error", model.error),
        ("provider", model.provider),
        ("path", model.path),
        ("size", human_size(model.size_bytes) if model.size_bytes else ""),
        ("architecture", meta.architecture),
        ("name", meta.name),
        ("parameters", f"{meta.parameter_count:,}" if meta.parameter_count else ""),
        ("quantization", meta.quantization),
        ("trained context", str(meta.context_length or "")),
        ("embedding length", str(meta.embedding_length or "")),
        ("layers", str(meta.block_count or "")),
        ("vocabulary", str(meta.vocab_size or "")),
        ("chat template", "yes" if meta.chat_template else "no"),
        ("tags", ", ".join(model.tags)),
        ("priority", str(model.priority)),
        ("modified", _time(model.modified_time)),
        ("last used", _time(model.last_used_time)),
    ]
    if model.state == models_pb2.MODEL_STATE_LOADED:
        pairs += [
            ("context", str(model.context_length or "")),
            ("threads", str(model.threads or "")),
            ("memory", human_size(model.memory_bytes) if model.memory_bytes else ""),
            ("pinned", "yes" if model.pinned else "no"),
        ]
    _fields(pairs)


def cmd_models_show(client: Client, args: argparse.Namespace) -> int:
    response = client.get_model(args.id)
    if args.json:
        _print_json(response.model)
    else:
        _show_model(response.model)
    return 0


def cmd_models_load(client: Client, args: argparse.Namespace) -> int:
    response = client.load_model(
        args.id, context_length=args.context, threads=args.threads, pin=args.pin
    )
    if args.json:
        _print_json(response)
        return 0
    model = response.model
    kept = [
        f"{what} {have} (asked {asked})"
        for what, asked, have in (
            ("context", args.context, model.context_length),
            ("threads", args.threads, model.threads),
        )
        if asked and have and asked != have
    ]
    if kept:
        _note(
            f"{PROG}: warning: {model.id} was already loaded with {', '.join(kept)}; "
            "unload it first to change that"
        )
    pinned = ", pinned" if model.pinned else ""
    _print(
        f"loaded {model.id} in {response.load_ms:.0f} ms "
        f"(context {model.context_length}, {model.threads} threads{pinned})"
    )
    return 0


def cmd_models_unload(client: Client, args: argparse.Namespace) -> int:
    response = client.unload_model(args.id)
    if args.json:
        _print_json(response)
    else:
        _print(f"unloaded {response.model.id}")
    return 0


def cmd_models_select(client: Client, args: argparse.Namespace) -> int:
    response = client.select_model(
        prefer_local=args.prefer_local,
        prefer_speed=args.prefer_speed,
        prefer_quality=args.prefer_quality,
        battery_sensitive=args.battery_sensitive,
        max_latency_ms=args.max_latency_ms,
        required_tags=args.tag,
        kind=args.kind,
    )
    if args.json:
        _print_json(response)
        return 0
    _print(f"selected: {response.model_id or '(none)'}")
    if response.candidates:
        _print()
        rows = [
            [
                c.model_id,
                f"{c.score:g}",
                "excluded" if c.excluded else "",
                "; ".join(c.reasons),
            ]
            for c in response.candidates
        ]
        _table(["MODEL", "SCORE", "EXCLUDED", "REASONS"], rows)
    return 0


# ------------------------------------------------------------------------ generation


def _read_file(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read the {what} file {path!r}: {e.strerror or e}") from e


def _options(args: argparse.Namespace) -> GenerationOptions:
    options = GenerationOptions()
    if args.max_tokens is not None:
        options["max_tokens"] = args.max_tokens
    if args.temperature is not None:
        options["temperature"] = args.temperature
    if args.top_p is not None:
        options["top_p"] = args.top_p
    if args.top_k is not None:
        options["top_k"] = args.top_k
    if args.min_p is not None:
        options["min_p"] = args.min_p
    if args.repeat_penalty is not None:
        options["repeat_penalty"] = args.repeat_penalty
    if args.seed is not None:
        options["seed"] = args.seed
    if args.stop:
        options["stop"] = list(args.stop)
    if args.grammar_file:
        options["grammar"] = _read_file(args.grammar_file, "grammar")
    if args.json_schema_file:
        options["json_schema"] = _read_file(args.json_schema_file, "JSON schema")
    if args.priority:
        options["priority"] = args.priority
    return options


def _stats_line(
    model_id: str,
    finish_reason: int,
    usage: common_pb2.Usage,
    timings: common_pb2.Timings,
) -> str:
    return (
        f"[model {model_id}, {usage.completion_tokens} tokens "
        f"(prompt {usage.prompt_tokens}), {timings.tokens_per_second:.1f} tokens/s, "
        f"TTFT {timings.time_to_first_token_ms:.0f} ms, "
        f"finish {friendly(common_pb2.FinishReason, finish_reason)}]"
    )


def _print_stats(done: common_pb2.GenerationDone) -> None:
    _note(_stats_line(done.model_id, done.finish_reason, done.usage, done.timings))


def _consume(
    stream: ResponseStream[generate_pb2.GenerateStreamResponse]
    | ResponseStream[generate_pb2.ChatStreamResponse],
    args: argparse.Namespace,
) -> tuple[str, common_pb2.GenerationDone | None]:
    """Write a generation stream to stdout as it arrives; return its text and `done`."""
    out = _stdout()
    parts: list[str] = []
    done: common_pb2.GenerationDone | None = None
    with stream:  # cancels the call on Ctrl-C or any other early exit
        event: StreamEvent
        for event in stream:
            kind = event.WhichOneof("event")
            if args.json:
                _print_json(event, compact=True)
            if kind == "chunk":
                parts.append(event.chunk.text)
                if not args.json:
                    out.write(event.chunk.text)
                    out.flush()
            elif kind == "done":
                done = event.done
            elif kind == "queued" and not args.json and _stderr().isatty():
                position = event.queued.position
                _note(f"{PROG}: waiting for {event.queued.model_id} (position {position})")
    if not args.json:
        out.write("\n")
        out.flush()
    if args.stats and done is not None:
        _print_stats(done)
    return "".join(parts), done


def _prompt(value: str) -> str:
    return sys.stdin.read() if value == "-" else value


def cmd_generate(client: Client, args: argparse.Namespace) -> int:
    prompt = _prompt(args.prompt)
    options = _options(args)
    if args.no_stream:
        response = client.generate(prompt, args.model, **options)
        if args.json:
            _print_json(response)
        else:
            _print(response.text)
        if args.stats:
            _note(
                _stats_line(
                    response.model_id, response.finish_reason, response.usage, response.timings
                )
            )
        return 0
    _consume(client.generate_stream(prompt, args.model, **options), args)
    return 0


def _chat_once(
    client: Client, history: list[ChatInput], args: argparse.Namespace, options: GenerationOptions
) -> str:
    if args.no_stream:
        response = client.chat(history, args.model, **options)
        if args.json:
            _print_json(response, compact=True)
        else:
            _print(response.message.content)
        if args.stats:
            _note(
                _stats_line(
                    response.model_id, response.finish_reason, response.usage, response.timings
                )
            )
        return response.message.content
    text, _ = _consume(client.chat_stream(history, args.model, **options), args)
    return text


def _read_line(interactive: bool) -> str | None:
    if interactive:
        try:
            return input("> ")
        except EOFError:
            _print()
            return None
    line = sys.stdin.readline()
    return line.removesuffix("\n") if line else None


def cmd_chat(client: Client, args: argparse.Namespace) -> int:
    options = _options(args)
    history: list[ChatInput] = []
    if args.system:
        history.append(("system", args.system))
    if args.message is not None:
        history.append(("user", _prompt(args.message)))
        _chat_once(client, history, args, options)
        return 0
    interactive = sys.stdin.isatty()
    while (line := _read_line(interactive)) is not None:
        if not line.strip():
            continue
        history.append(("user", line))
        try:
            reply = _chat_once(client, history, args, options)
        except RustaidError as e:
            if not interactive:
                raise
            _note(f"{PROG}: {e}")
            history.pop()
            continue
        history.append(("assistant", reply))
    return 0


def cmd_tokenize(client: Client, args: argparse.Namespace) -> int:
    response = client.tokenize(_prompt(args.text), args.model, add_special=args.add_special)
    if args.json:
        _print_json(response)
        return 0
    rows = [
        [str(token_id), json.dumps(piece, ensure_ascii=False)]
        for token_id, piece in zip(response.token_ids, response.pieces, strict=False)
    ]
    _table(["ID", "PIECE"], rows)
    _note(f"{len(response.token_ids)} tokens")
    return 0


# --------------------------------------------------------------------------- plugins


def _plugin_row(plugin: plugins_pb2.Plugin) -> list[str]:
    return [
        plugin.id,
        plugin.version,
        friendly(plugins_pb2.PluginState, plugin.state),
        friendly(plugins_pb2.PluginSource, plugin.source),
        ", ".join(plugin.capabilities),
        plugin.error,
    ]


def cmd_plugins_list(client: Client, args: argparse.Namespace) -> int:
    response = client.list_plugins()
    if args.json:
        _print_json(response)
        return 0
    headers = ["ID", "VERSION", "STATE", "SOURCE", "CAPABILITIES", "ERROR"]
    _table(headers, [_plugin_row(p) for p in response.plugins])
    return 0


def _show_plugin(plugin: plugins_pb2.Plugin) -> None:
    req = plugin.requirements
    _fields(
        [
            ("id", plugin.id),
            ("name", plugin.name),
            ("version", plugin.version),
            ("description", plugin.description),
            ("state", friendly(plugins_pb2.PluginState, plugin.state)),
            ("error", plugin.error),
            ("source", friendly(plugins_pb2.PluginSource, plugin.source)),
            ("path", plugin.path),
            ("capabilities", ", ".join(plugin.capabilities)),
            ("loaded", _time(plugin.loaded_time)),
            ("min memory", human_size(req.min_memory_bytes) if req.min_memory_bytes else ""),
            (
                "recommended memory",
                human_size(req.recommended_memory_bytes) if req.recommended_memory_bytes else "",
            ),
            ("cores", str(req.cores or "")),
            ("gpu", "yes" if req.gpu else "no"),
            ("battery draw", f"{req.battery_draw_mw} mW" if req.battery_draw_mw else ""),
            ("thermal impact", f"{req.thermal_impact}/100"),
            ("background capable", "yes" if req.background_capable else "no"),
        ]
    )


def _plugin_command(action: str) -> Command:
    def run(client: Client, args: argparse.Namespace) -> int:
        plugin: plugins_pb2.Plugin
        response: Message
        if action == "show":
            got = client.get_plugin(args.id)
            response, plugin = got, got.plugin
        elif action == "load":
            loaded = client.load_plugin(args.id)
            response, plugin = loaded, loaded.plugin
        elif action == "unload":
            unloaded = client.unload_plugin(args.id)
            response, plugin = unloaded, unloaded.plugin
        else:
            reloaded = client.reload_plugin(args.id)
            response, plugin = reloaded, reloaded.plugin
        if args.json:
            _print_json(plugin if action == "show" else response)
        elif action == "show":
            _show_plugin(plugin)
        else:
            state = friendly(plugins_pb2.PluginState, plugin.state)
            error = f": {plugin.error}" if plugin.error else ""
            _print(f"plugin {plugin.id}: {state}{error}")
        # The call worked but the plugin did not come up: a script should notice.
        failed = action in ("load", "reload") and plugin.state == plugins_pb2.PLUGIN_STATE_FAILED
        return 1 if failed else 0

    return run


# ---------------------------------------------------------------------------- health


def cmd_health(client: Client, args: argparse.Namespace) -> int:
    status = client.health(args.service)
    if args.json:
        _stdout().write(json.dumps({"status": status}) + "\n")
    else:
        _print(status)
    return 0 if status == "SERVING" else EXIT_ERROR


# ---------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(_stderr())
        self.exit(EXIT_USAGE, f"{PROG}: error: {message}\n")


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 (got {text})")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (got {text})")
    return value


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    # The same options on the top-level parser (with defaults) and on every command
    # (suppressed), so `rustaictl --json models list` and `rustaictl models list --json`
    # both work.
    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--address",
        default=default(None),
        help="daemon address, e.g. unix:///run/rustaid/rustaid.sock "
        "(default: $RUSTAID_ADDRESS, the per-user socket, then the system socket)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="machine-readable output (one JSON object per line for streams)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=default(None),
        metavar="SECONDS",
        help="deadline of each call",
    )


def _generation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", "-m", default="", metavar="ID", help="model id (default: the router picks)"
    )
    parser.add_argument("--max-tokens", "-n", type=_count, metavar="N")
    parser.add_argument("--temperature", "-t", type=float, metavar="T")
    parser.add_argument("--top-p", type=float, metavar="P")
    parser.add_argument("--top-k", type=_count, metavar="K")
    parser.add_argument("--min-p", type=float, metavar="P")
    parser.add_argument("--repeat-penalty", type=float, metavar="R")
    parser.add_argument("--seed", type=_count, metavar="S")
    parser.add_argument(
        "--stop", action="append", default=[], metavar="S", help="stop sequence (repeatable)"
    )
    constraint = parser.add_mutually_exclusive_group()
    constraint.add_argument("--grammar-file", metavar="F", help="GBNF grammar for the output")
    constraint.add_argument("--json-schema-file", metavar="F", help="JSON Schema for the output")
    parser.add_argument("--priority", choices=["interactive", "background"])
    parser.add_argument(
        "--no-stream", action="store_true", help="wait for the whole answer (unary call)"
    )
    parser.add_argument(
        "--stats",
        action="store_true",
        help="print model, tokens, tokens/s, time to first token and finish reason to stderr",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Control the rustaid daemon: models, generation, chat and plugins.",
    )
    _global_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(
        group: argparse._SubParsersAction[_Parser], name: str, func: Command, help_: str
    ) -> _Parser:
        sub = group.add_parser(name, help=help_, description=help_)
        _global_options(sub, suppress=True)
        sub.set_defaults(func=func)
        return sub

    # models
    models = commands.add_parser("models", help="list, inspect, load and unload models")
    models_cmds = models.add_subparsers(dest="models_command", metavar="COMMAND", required=True)
    p = command(models_cmds, "list", cmd_models_list, "list the models the daemon knows")
    p.add_argument("--kind", choices=["llm", "embedding", "nlu"])
    p.add_argument("--loaded", action="store_true", help="only loaded models")
    p = command(models_cmds, "show", cmd_models_show, "show one model")
    p.add_argument("id", metavar="ID")
    p = command(models_cmds, "load", cmd_models_load, "load a model into memory")
    p.add_argument("id", metavar="ID")
    p.add_argument("--context", type=_count, default=0, metavar="N", help="context length")
    p.add_argument("--threads", type=_count, default=0, metavar="N")
    p.add_argument("--pin", action="store_true", help="never evict while pinned")
    p = command(models_cmds, "unload", cmd_models_unload, "unload a model from memory")
    p.add_argument("id", metavar="ID")
    p = command(models_cmds, "select", cmd_models_select, "which model the router would pick")
    p.add_argument("--prefer-local", action="store_true")
    p.add_argument("--prefer-speed", action="store_true")
    p.add_argument("--prefer-quality", action="store_true")
    p.add_argument("--battery-sensitive", action="store_true")
    p.add_argument("--max-latency-ms", type=_count, default=0, metavar="MS")
    p.add_argument(
        "--tag", action="append", default=[], metavar="T", help="required tag (repeatable)"
    )
    p.add_argument("--kind", choices=["llm", "embedding", "nlu"])

    # generation
    p = command(commands, "generate", cmd_generate, "continue a prompt, streaming the text")
    p.add_argument("prompt", metavar="PROMPT", help="the prompt; - reads it from stdin")
    _generation_options(p)
    p = command(
        commands,
        "chat",
        cmd_chat,
        "chat with a model: one exchange, or a conversation read line by line from stdin",
    )
    p.add_argument(
        "message",
        nargs="?",
        metavar="MESSAGE",
        help="one message (- reads stdin); omit to converse",
    )
    p.add_argument("--system", metavar="TEXT", help="system prompt")
    _generation_options(p)
    p = command(commands, "tokenize", cmd_tokenize, "split text into the model's tokens")
    p.add_argument("text", metavar="TEXT", help="the text; - reads it from stdin")
    p.add_argument("--model", "-m", required=True, metavar="ID")
    p.add_argument("--add-special", action="store_true", help="add the BOS token")

    # plugins
    plugins = commands.add_parser("plugins", help="list, inspect, load and unload plugins")
    plugin_cmds = plugins.add_subparsers(dest="plugins_command", metavar="COMMAND", required=True)
    command(plugin_cmds, "list", cmd_plugins_list, "list the plugins")
    for action, help_ in (
        ("show", "show one plugin"),
        ("load", "load a plugin (id, or a file/folder name in the plugins folder)"),
        ("unload", "unload a plugin"),
        ("reload", "unload, re-read and load a plugin again"),
    ):
        p = command(plugin_cmds, action, _plugin_command(action), help_)
        p.add_argument("id", metavar="ID")

    # health
    p = command(commands, "health", cmd_health, "check the daemon's health (exit 0 if SERVING)")
    p.add_argument("--service", default="", help="one service, e.g. rustaid.api.v1.ModelsService")
    return parser


# ------------------------------------------------------------------------------ main


def main(argv: Sequence[str] | None = None) -> int:
    """Run `rustaictl` with `argv` (default: sys.argv[1:]); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error (already printed)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    func: Command | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(_stderr())
        return EXIT_USAGE
    try:
        with Client(args.address, args.timeout) as client:
            return func(client, args)
    except UsageError as e:
        _note(f"{PROG}: error: {e}")
        return EXIT_USAGE
    except RustaidError as e:
        _note(f"{PROG}: {e}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        _note("")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (e.g. `| head`); don't let Python complain at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())

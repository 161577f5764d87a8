"""`rustaictl generate`, `chat` and `tokenize`: streamed generation, one exchange or
a conversation (the REPL on a terminal), and the model's tokens."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rustaid.api.v1 import (
    common_pb2,
    generate_pb2,
)
from rustaid_client import repl
from rustaid_client.cli import output
from rustaid_client.cli.arguments import Subparsers, command, generation_options
from rustaid_client.cli.output import PROG, UsageError, echo, friendly, note, print_json, table
from rustaid_client.client import (
    ChatInput,
    Client,
    GenerationOptions,
    ResponseStream,
    RustaidError,
)

StreamEvent = generate_pb2.GenerateStreamResponse | generate_pb2.ChatStreamResponse


def _read_file(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read the {what} file {path!r}: {e.strerror or e}") from e


def options_from_args(args: argparse.Namespace) -> GenerationOptions:
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


def stats_line(
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


def print_stats(done: common_pb2.GenerationDone) -> None:
    note(stats_line(done.model_id, done.finish_reason, done.usage, done.timings))
    for adjustment in done.adjustments:
        note(f"[adjusted: {adjustment}]")


def _consume(
    stream: ResponseStream[generate_pb2.GenerateStreamResponse]
    | ResponseStream[generate_pb2.ChatStreamResponse],
    args: argparse.Namespace,
) -> tuple[str, common_pb2.GenerationDone | None]:
    """Write a generation stream to stdout as it arrives; return its text and `done`."""
    out = output.stdout()
    parts: list[str] = []
    done: common_pb2.GenerationDone | None = None
    with stream:  # cancels the call on Ctrl-C or any other early exit
        event: StreamEvent
        for event in stream:
            kind = event.WhichOneof("event")
            if args.json:
                print_json(event, compact=True)
            if kind == "chunk":
                parts.append(event.chunk.text)
                if not args.json:
                    out.write(event.chunk.text)
                    out.flush()
            elif kind == "done":
                done = event.done
            elif kind == "queued" and not args.json:
                note_queued(event.queued)
    if not args.json:
        out.write("\n")
        out.flush()
    if args.stats and done is not None:
        print_stats(done)
    return "".join(parts), done


def note_queued(queued: common_pb2.QueueStatus) -> None:
    """On a terminal: a stream's request waits behind others for its model."""
    if output.stderr().isatty():
        note(f"{PROG}: waiting for {queued.model_id} (position {queued.position})")


def read_prompt(value: str) -> str:
    return sys.stdin.read() if value == "-" else value


def cmd_generate(client: Client, args: argparse.Namespace) -> int:
    prompt = read_prompt(args.prompt)
    options = options_from_args(args)
    if args.no_stream:
        response = client.generate(prompt, args.model, **options)
        if args.json:
            print_json(response)
        else:
            echo(response.text)
        if args.stats:
            note(
                stats_line(
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
            print_json(response, compact=True)
        else:
            echo(response.message.content)
        if args.stats:
            note(
                stats_line(
                    response.model_id, response.finish_reason, response.usage, response.timings
                )
            )
        return response.message.content
    text, _ = _consume(client.chat_stream(history, args.model, **options), args)
    return text


def _repl_answer(client: Client, conversation: repl.Conversation) -> tuple[str, str]:
    """Stream one answer to the terminal: (its text, its stats line). Ctrl-C stops it:
    the call is cancelled (the model is free at once) and the text so far is kept."""
    out = output.stdout()
    parts: list[str] = []
    stats = ""
    try:  # Ctrl-C may come before the first token too
        stream = client.chat_stream(
            conversation.request(), conversation.model, **conversation.options
        )
        with stream:
            for event in stream:
                kind = event.WhichOneof("event")
                if kind == "chunk":
                    parts.append(event.chunk.text)
                    out.write(event.chunk.text)
                    out.flush()
                elif kind == "done":
                    d = event.done
                    stats = stats_line(d.model_id, d.finish_reason, d.usage, d.timings)
                elif kind == "queued":
                    note_queued(event.queued)
    except KeyboardInterrupt:
        out.write("\n")
        note("[stopped]")
        return "".join(parts), ""
    out.write("\n")
    return "".join(parts), stats


def _read_line(interactive: bool) -> str | None:
    if interactive:
        try:
            return input("> ")
        except EOFError:
            echo()
            return None
    line = sys.stdin.readline()
    return line.removesuffix("\n") if line else None


def cmd_chat(client: Client, args: argparse.Namespace) -> int:
    options = options_from_args(args)
    history: list[ChatInput] = []
    if args.system:
        history.append(("system", args.system))
    if args.message is not None:
        history.append(("user", read_prompt(args.message)))
        _chat_once(client, history, args, options)
        return 0
    interactive = sys.stdin.isatty()
    if interactive:
        conversation = repl.Conversation(
            model=args.model, system=args.system or "", options=options, stats=args.stats
        )
        return repl.Repl(client, conversation, _repl_answer, output.stdout(), output.stderr()).run()
    while (line := _read_line(interactive)) is not None:
        if not line.strip():
            continue
        history.append(("user", line))
        try:
            reply = _chat_once(client, history, args, options)
        except RustaidError as e:
            if not interactive:
                raise
            note(f"{PROG}: {e}")
            history.pop()
            continue
        history.append(("assistant", reply))
    return 0


def cmd_tokenize(client: Client, args: argparse.Namespace) -> int:
    model = args.model
    if not model:  # the model a generation without --model would use
        model = client.select_model().model_id
        note(f"{PROG}: model {model} (picked by the router; --model chooses)")
    response = client.tokenize(read_prompt(args.text), model, add_special=args.add_special)
    if args.json:
        print_json(response)
        return 0
    rows = [
        [str(token_id), json.dumps(piece, ensure_ascii=False)]
        for token_id, piece in zip(response.token_ids, response.pieces, strict=False)
    ]
    table(["ID", "PIECE"], rows)
    note(f"{len(response.token_ids)} tokens")
    return 0


def add_commands(commands: Subparsers) -> None:
    p = command(commands, "generate", cmd_generate, "continue a prompt, streaming the text")
    p.add_argument("prompt", metavar="PROMPT", help="the prompt; - reads it from stdin")
    generation_options(p)
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
    generation_options(p)
    p = command(commands, "tokenize", cmd_tokenize, "split text into the model's tokens")
    p.add_argument("text", metavar="TEXT", help="the text; - reads it from stdin")
    p.add_argument(
        "--model", "-m", default="", metavar="ID", help="model id (default: the router picks)"
    )
    p.add_argument("--add-special", action="store_true", help="add the BOS token")

"""`rustaictl`: the command line for the rustaid daemon.

Exit status: 0 success, 1 the daemon (or the connection) reported an error, 2 usage
error, 130 interrupted (Ctrl-C cancels a running generation).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC
from pathlib import Path
from typing import Any, NoReturn, TextIO

from google.protobuf import json_format
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from rustaid.api.v1 import (
    common_pb2,
    generate_pb2,
    models_pb2,
    plugins_pb2,
    rag_pb2,
    resources_pb2,
    tools_pb2,
    updates_pb2,
)
from rustaid_client.client import (
    ChatInput,
    Client,
    GenerationOptions,
    ResponseStream,
    RustaidError,
    parse_filter,
    read_token_file,
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
    for adjustment in done.adjustments:
        _note(f"[adjusted: {adjustment}]")


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
            elif kind == "queued" and not args.json:
                _note_queued(event.queued)
    if not args.json:
        out.write("\n")
        out.flush()
    if args.stats and done is not None:
        _print_stats(done)
    return "".join(parts), done


def _note_queued(queued: common_pb2.QueueStatus) -> None:
    """On a terminal: a stream's request waits behind others for its model."""
    if _stderr().isatty():
        _note(f"{PROG}: waiting for {queued.model_id} (position {queued.position})")


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


# --------------------------------------------------------------------------- updates

_TERMINAL_PHASES = (
    updates_pb2.UPDATE_PHASE_COMMITTED,
    updates_pb2.UPDATE_PHASE_ROLLED_BACK,
    updates_pb2.UPDATE_PHASE_FAILED,
)


def _phase(value: int) -> str:
    return friendly(updates_pb2.UpdatePhase, value).replace("_", " ")


class ProgressBar:
    """Update progress on stderr: a redrawn bar on a terminal, else one line per step."""

    WIDTH = 30

    def __init__(self, out: TextIO, tty: bool) -> None:
        self.out = out
        self.tty = tty
        self._last_key: tuple[int, str, str] | None = None
        self._last_quarter = -1
        self._open_line = False

    def _line(self, s: updates_pb2.UpdateStatus) -> str:
        what = f"{_phase(s.phase)} {s.artifact_id} {s.version}".rstrip()
        if s.phase == updates_pb2.UPDATE_PHASE_DOWNLOADING and s.bytes_total:
            fraction = min(1.0, s.bytes_done / s.bytes_total)
            filled = int(fraction * self.WIDTH)
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            return (
                f"{what} [{bar}] {fraction * 100:3.0f}% "
                f"{human_size(s.bytes_done)}/{human_size(s.bytes_total)}"
            )
        return f"{what}: {s.message}" if s.message else what

    def update(self, s: updates_pb2.UpdateStatus) -> None:
        key = (s.phase, s.artifact_id, s.version)
        new_step = key != self._last_key
        self._last_key = key
        if self.tty:
            if new_step and self._open_line:
                self.out.write("\n")
            self.out.write("\r\x1b[K" + self._line(s))
            self._open_line = True
        else:  # a log: each step, and downloads at 0, 25, 50, 75 and 100 %
            quarter = -1
            if s.phase == updates_pb2.UPDATE_PHASE_DOWNLOADING and s.bytes_total:
                quarter = int(4 * s.bytes_done / s.bytes_total)
            if new_step or quarter > self._last_quarter:
                self.out.write(self._line(s) + "\n")
                self._last_quarter = quarter
        self.out.flush()

    def close(self) -> None:
        if self.tty and self._open_line:
            self.out.write("\n")
            self.out.flush()
        self._open_line = False


def cmd_updates_check(client: Client, args: argparse.Namespace) -> int:
    response = client.check_updates(args.channel)
    if args.json:
        _print_json(response)
        return 0
    if not response.updates:
        _print(f"up to date (release metadata version {response.metadata_version})")
        return 0
    rows = [
        [
            u.artifact_id,
            friendly(updates_pb2.ArtifactKind, u.kind),
            u.current_version,
            u.available_version,
            human_size(u.size_bytes),
            u.channel,
            "yes" if u.in_rollout else "no",
            u.note,
        ]
        for u in response.updates
    ]
    _table(["ARTIFACT", "KIND", "CURRENT", "AVAILABLE", "SIZE", "CHANNEL", "ROLLOUT", "NOTE"], rows)
    return 0


def _record_line(r: updates_pb2.UpdateRecord) -> str:
    versions = f"{r.from_version or '-'} -> {r.to_version or '-'}"
    return f"{r.artifact_id or 'metadata'} {versions}: {_phase(r.outcome)}: {r.message}"


def cmd_updates_apply(client: Client, args: argparse.Namespace) -> int:
    ids = list(args.ids)
    if args.no_wait:
        response = client.apply_update(ids, channel=args.channel, force=args.force)
        if args.json:
            _print_json(response)
        else:
            _print(f"{_phase(response.status.phase)}: {response.status.message}")
        return 0
    err = _stderr()
    bar = ProgressBar(err, err.isatty())
    with client.watch_updates() as stream:
        next(stream)  # subscribed: no progress is missed from here on
        import threading

        def follow() -> None:
            try:
                for event in stream:
                    if event.status.update_id:
                        bar.update(event.status)
            except RustaidError:
                pass  # cancelled when the update is done

        watcher = threading.Thread(target=follow, daemon=True)
        watcher.start()
        try:
            response = client.apply_update(ids, channel=args.channel, force=args.force, wait=True)
        finally:
            stream.cancel()
            watcher.join(5)
            bar.close()
    if args.json:
        _print_json(response)
    elif not response.records:
        _print(response.status.message)
    for record in response.records if not args.json else ():
        _print(_record_line(record))
    failed = [r for r in response.records if r.outcome != updates_pb2.UPDATE_PHASE_COMMITTED]
    return EXIT_ERROR if failed else 0


def cmd_updates_status(client: Client, args: argparse.Namespace) -> int:
    response = client.get_update_status()
    if args.json:
        _print_json(response)
        return 0
    s = response.status
    pairs = [
        ("phase", _phase(s.phase)),
        ("update", f"{s.artifact_id} {s.version}".strip()),
        ("message", s.message),
        ("channel", response.channel),
        ("metadata version", str(response.metadata_version or "")),
        ("device id", response.device_id),
        ("last check", _time(s.last_check_time)),
        ("next check", _time(s.next_check_time) if s.HasField("next_check_time") else "-"),
    ]
    if s.phase == updates_pb2.UPDATE_PHASE_DOWNLOADING and s.bytes_total:
        pairs.append(("progress", f"{human_size(s.bytes_done)}/{human_size(s.bytes_total)}"))
    _fields(pairs)
    if response.installed:
        _print()
        rows = [
            [
                i.artifact_id,
                friendly(updates_pb2.ArtifactKind, i.kind),
                i.version,
                i.previous_version,
                i.path,
                _time(i.installed_time),
            ]
            for i in response.installed
        ]
        _table(["ARTIFACT", "KIND", "VERSION", "PREVIOUS", "PATH", "INSTALLED"], rows)
    return 0


def cmd_updates_history(client: Client, args: argparse.Namespace) -> int:
    response = client.update_history(args.limit)
    if args.json:
        _print_json(response)
        return 0
    rows = [
        [
            _time(r.finished_time),
            r.artifact_id or "metadata",
            r.from_version,
            r.to_version,
            _phase(r.outcome),
            r.message,
        ]
        for r in response.records
    ]
    _table(["FINISHED", "ARTIFACT", "FROM", "TO", "OUTCOME", "MESSAGE"], rows)
    return 0


def cmd_updates_rollback(client: Client, args: argparse.Namespace) -> int:
    response = client.rollback_update(args.id)
    if args.json:
        _print_json(response)
    else:
        _print(_record_line(response.record))
    ok = response.record.outcome == updates_pb2.UPDATE_PHASE_ROLLED_BACK
    return 0 if ok else EXIT_ERROR


# --------------------------------------------------------------------------- release


def _offline(func: Callable[[argparse.Namespace], int]) -> Command:
    """A command that works on local files, not the daemon (the publisher's tools)."""

    def run(client: Client, args: argparse.Namespace) -> int:
        from rustaid.errors import InvalidArgument
        from rustaid.errors import RustaidError as DomainError

        try:
            return func(args)
        except InvalidArgument as e:
            raise UsageError(e.message) from e
        except DomainError as e:
            _note(f"{PROG}: {e.message}")
            return EXIT_ERROR

    return run


def _release_keygen(args: argparse.Namespace) -> int:
    from rustaid.updates.metadata import key_id, parse_public_key
    from rustaid.updates.publish import generate_key

    private, public, text = generate_key(Path(args.name), overwrite=args.force)
    if args.json:
        data = {"private": str(private), "public": str(public), "key": text,
                "keyid": key_id(parse_public_key(text))}  # fmt: skip
        _stdout().write(json.dumps(data) + "\n")
        return 0
    _print(f"private key: {private} (keep it secret; mode 0600)")
    _print(f"public key:  {public}")
    _print(f'trust it on devices with [updates] trusted_keys = ["{text}"]')
    return 0


def _release_add(args: argparse.Namespace) -> int:
    from rustaid.updates.metadata import ArtifactKind
    from rustaid.updates.publish import Repository, parse_expiry, parse_rollout

    artifact = Repository(Path(args.repo)).add(
        Path(args.artifact),
        channel=args.channel,
        version=args.version,
        artifact_id=args.id or "",
        kind=ArtifactKind(args.kind) if args.kind else None,
        rollout=parse_rollout(args.rollout),
        min_daemon_version=args.min_daemon_version or "",
        base_url=args.base_url or "",
        expires_in=parse_expiry(args.expires),
    )
    if args.json:
        _stdout().write(json.dumps(artifact.to_json()) + "\n")
        return 0
    _print(
        f"added {artifact.kind.value} {artifact.id} {artifact.version} to channel "
        f"{args.channel} ({human_size(artifact.size)}, rollout {artifact.rollout}%, "
        f"sha256 {artifact.sha256[:16]}...)"
    )
    _print(f"the metadata is now unsigned: run `{PROG} release sign --repo {args.repo} --key ...`")
    return 0


def _release_sign(args: argparse.Namespace) -> int:
    from rustaid.updates.publish import Repository, load_private_key, parse_expiry

    repo = Repository(Path(args.repo))
    keys = [load_private_key(Path(k)) for k in args.key]
    if args.root:
        path = repo.sign_root(keys)
        _print(f"signed {path}")
        return 0
    draft = repo.sign(keys, expires_in=parse_expiry(args.expires) if args.expires else None)
    _print(
        f"signed {repo.metadata_path}: version {draft.release.version}, "
        f"{len(draft.signatures)} signature(s), expires "
        f"{draft.release.expires.isoformat(timespec='seconds')}"
    )
    return 0


def _trust(specs: Sequence[str], threshold: int) -> Any:
    from rustaid.updates.metadata import Trust
    from rustaid.updates.publish import load_public_key

    if not specs:
        raise UsageError(
            "give the trusted public keys with --key (the ones devices have in "
            "[updates] trusted_keys)"
        )
    return Trust.from_keys([load_public_key(k) for k in specs], threshold)


def _release_verify(args: argparse.Namespace) -> int:
    from rustaid.updates.publish import Repository

    lines = Repository(Path(args.dir)).verify(_trust(args.key, args.threshold))
    for line in lines:
        _print(line)
    _print("ok: devices trusting these keys will accept this repository")
    return 0


def _release_rotate(args: argparse.Namespace) -> int:
    from rustaid.updates.publish import Repository, load_public_key

    path = Repository(Path(args.repo)).rotate(
        [load_public_key(k) for k in args.key], args.threshold
    )
    _print(
        f"wrote {path}: sign it with a threshold of the current keys and of the new ones "
        f"(`{PROG} release sign --root --key ...`)"
    )
    return 0


# ------------------------------------------------------------------------------- rag

DEFAULT_COLLECTION = "default"
# Files picked up when walking a folder (named files are always sent).
DOCUMENT_SUFFIXES = frozenset(
    (".txt", ".text", ".md", ".markdown", ".mdown", ".mkd", ".rst", ".org", ".log", ".csv",
     ".tsv", ".html", ".htm", ".xhtml", ".pdf", ".docx")
)  # fmt: skip


def _collection_row(c: rag_pb2.Collection) -> list[str]:
    building = " (indexing)" if c.index_building else ""
    return [
        c.name,
        c.embedding_model_id,
        str(c.dimension),
        friendly(rag_pb2.Distance, c.distance),
        c.vector_store,
        f"{c.points_count}",
        f"{c.indexed_points_count}{building}",
        c.error,
    ]


def cmd_rag_collections(client: Client, args: argparse.Namespace) -> int:
    response = client.list_collections()
    if args.json:
        _print_json(response)
        return 0
    headers = ["NAME", "MODEL", "DIM", "DISTANCE", "STORE", "CHUNKS", "INDEXED", "ERROR"]
    _table(headers, [_collection_row(c) for c in response.collections])
    return 0


def cmd_rag_create(client: Client, args: argparse.Namespace) -> int:
    response = client.create_collection(
        args.name, args.model, distance=args.distance, vector_store=args.store
    )
    if args.json:
        _print_json(response)
    else:
        c = response.collection
        _print(
            f"created {c.name} ({c.embedding_model_id}, {c.dimension} dimensions, {c.vector_store})"
        )
    return 0


def cmd_rag_delete_collection(client: Client, args: argparse.Namespace) -> int:
    client.delete_collection(args.name)
    if args.json:
        _stdout().write(json.dumps({"deleted": args.name}) + "\n")
    else:
        _print(f"deleted collection {args.name}")
    return 0


def _files(paths: Sequence[str]) -> list[Path]:
    """Named files, and the document files found under named folders (hidden ones
    skipped), in a stable order."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(names):
                    child = Path(root) / name
                    if not name.startswith(".") and child.suffix.lower() in DOCUMENT_SUFFIXES:
                        found.append(child)
        elif path.exists():
            found.append(path)
        else:
            raise UsageError(f"no such file or folder: {raw}")
    return found


class Progress:
    """A one-line progress bar on stderr (only when it is a terminal)."""

    WIDTH = 24

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self.done = 0
        self.chunks = 0
        self.start = time.monotonic()

    def update(self, name: str, chunks: int) -> None:
        self.done += 1
        self.chunks += chunks
        if not self.enabled:
            return
        filled = self.WIDTH * self.done // max(1, self.total)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        elapsed = time.monotonic() - self.start
        line = (
            f"[{bar}] {self.done}/{self.total} files, {self.chunks} chunks, {elapsed:.1f} s  {name}"
        )
        columns = shutil.get_terminal_size((100, 20)).columns
        err = _stderr()
        err.write("\r" + line[: columns - 1].ljust(columns - 1))
        err.flush()

    def finish(self) -> None:
        if self.enabled and self.total:
            _stderr().write("\n")
            _stderr().flush()


def _ensure_collection(client: Client, args: argparse.Namespace) -> None:
    names = {c.name for c in client.list_collections().collections}
    if args.collection in names:
        return
    if args.no_create:
        raise UsageError(f"collection {args.collection!r} does not exist (and --no-create)")
    created = client.create_collection(args.collection, args.model).collection
    _note(
        f"{PROG}: created collection {created.name} with embedding model "
        f"{created.embedding_model_id}"
    )


def _metadata(pairs: Sequence[str]) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--meta takes KEY=VALUE (got {pair!r})")
        metadata[key] = value
    return metadata


def cmd_rag_index(client: Client, args: argparse.Namespace) -> int:
    files = _files(args.paths)
    if not files:
        raise UsageError(
            f"no document files found (supported: {', '.join(sorted(DOCUMENT_SUFFIXES))})"
        )
    _ensure_collection(client, args)
    metadata = _metadata(args.meta)
    progress = Progress(len(files), enabled=not args.json and _stderr().isatty())
    indexed = unchanged = failed = 0
    try:
        for path in files:
            absolute = path.resolve()
            try:
                if args.by_path:
                    response = client.index_file(
                        args.collection, absolute, metadata=metadata,
                        chunk_size=args.chunk_size, chunk_overlap=args.chunk_overlap,
                    )  # fmt: skip
                else:
                    try:
                        content = absolute.read_bytes()
                    except OSError as e:
                        raise UsageError(f"cannot read {path}: {e.strerror or e}") from e
                    response = client.index_file(
                        args.collection, content=content, filename=absolute.name,
                        document_id=str(absolute), metadata=metadata,
                        chunk_size=args.chunk_size, chunk_overlap=args.chunk_overlap,
                    )  # fmt: skip
            except (RustaidError, UsageError) as e:
                if isinstance(e, RustaidError) and e.code_name not in (
                    "INVALID_ARGUMENT",
                    "PERMISSION_DENIED",
                    "NOT_FOUND",
                ):
                    raise  # the daemon or the collection is in trouble: stop here
                failed += 1
                progress.update(path.name, 0)
                if args.json:
                    _stdout().write(json.dumps({"file": str(path), "error": str(e)}) + "\n")
                else:
                    if progress.enabled:
                        _stderr().write("\n")
                    _note(f"{PROG}: {path}: {e}")
                continue
            if response.unchanged:
                unchanged += 1
            else:
                indexed += 1
            progress.update(path.name, response.chunks_indexed)
            if args.json:
                data = _to_dict(response) | {"file": str(path)}
                _stdout().write(json.dumps(data) + "\n")
    finally:
        progress.finish()
    if not args.json:
        elapsed = time.monotonic() - progress.start
        _print(
            f"{args.collection}: {indexed} indexed ({progress.chunks} chunks), "
            f"{unchanged} unchanged, {failed} failed, in {elapsed:.1f} s"
        )
    return EXIT_ERROR if failed else 0


def _where(hit: rag_pb2.SearchHit) -> str:
    where = hit.source or hit.title or hit.document_id
    details = []
    if hit.page:
        details.append(f"page {hit.page}")
    if hit.heading_path:
        details.append(" > ".join(hit.heading_path))
    return f"{where} ({'; '.join(details)})" if details else where


def _snippet(text: str, width: int = 100) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def _filter_args(args: argparse.Namespace) -> rag_pb2.Filter | None:
    if not args.where:
        return None
    try:
        return parse_filter(args.where)
    except ValueError as e:
        raise UsageError(str(e)) from e


def cmd_rag_search(client: Client, args: argparse.Namespace) -> int:
    response = client.search(
        args.collection, _prompt(args.query), top_k=args.top_k, filter=_filter_args(args),
        score_threshold=args.threshold,
    )  # fmt: skip
    if args.json:
        _print_json(response)
        return 0
    for i, hit in enumerate(response.hits, start=1):
        _print(f"[{i}] {hit.score:.3f}  {_where(hit)}")
        _print(f"    {_snippet(hit.text)}")
    if not response.hits:
        _note(f"{PROG}: no matching passage")
    return 0


def cmd_rag_ask(client: Client, args: argparse.Namespace) -> int:
    options = _options(args)
    options.pop("priority", None)
    stream = client.ask(
        args.collection, _prompt(args.question), args.model, passages=args.top_k,
        filter=_filter_args(args), **options,
    )  # fmt: skip
    out = _stdout()
    citations: rag_pb2.Citations | None = None
    done: common_pb2.GenerationDone | None = None
    with stream:
        for event in stream:
            kind = event.WhichOneof("event")
            if args.json:
                _print_json(event, compact=True)
            elif kind == "chunk":
                out.write(event.chunk.text)
                out.flush()
            elif kind == "queued":
                _note_queued(event.queued)
            if kind == "citations":
                citations = event.citations
            elif kind == "done":
                done = event.done
    if args.json:
        return 0
    out.write("\n")
    if citations is not None:
        if citations.hits:
            _print("\nSources:")
            for i, hit in enumerate(citations.hits, start=1):
                _print(f"  [{i}] {_where(hit)}  (score {hit.score:.3f})")
        else:
            _print("\nSources: none matched the question")
        if citations.dropped:
            _note(f"{PROG}: {citations.dropped} more passages did not fit the model's context")
    if args.stats and done is not None:
        _print_stats(done)
    return 0


def cmd_rag_embed(client: Client, args: argparse.Namespace) -> int:
    response = client.embed([_prompt(t) for t in args.texts], args.model)
    if args.json:
        _print_json(response)
        return 0
    _note(f"{response.model_id}: {response.dimension} dimensions, max {response.max_tokens} tokens")
    for text, embedding in zip(args.texts, response.embeddings, strict=False):
        head = ", ".join(f"{v:.4f}" for v in embedding.values[:6])
        _print(f"{_snippet(text, 40)}: [{head}, ...]")
    for index in response.truncated:
        _note(f"{PROG}: text {index + 1} was truncated to {response.max_tokens} tokens")
    return 0


def cmd_rag_delete(client: Client, args: argparse.Namespace) -> int:
    if not args.document and not args.where:
        raise UsageError("give --document ID and/or --where EXPR")
    response = client.delete_documents(args.collection, args.document, filter=_filter_args(args))
    if args.json:
        _print_json(response)
    else:
        _print(f"deleted {response.deleted} chunks")
    return 0


# ------------------------------------------------------------------------- resources


def _duration_text(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def _power_text(p: resources_pb2.PowerStatus) -> str:
    source = f" (from {p.source})" if p.source else ""
    if not p.battery_present:
        if not p.source:
            return "unknown: no UPower and no power supply in sysfs"
        return f"no battery, {'on AC power' if p.ac_online else 'AC offline'}{source}"
    parts = [
        f"battery {p.battery_percent:.0f} %",
        friendly(resources_pb2.BatteryState, p.battery_state),
    ]
    if p.power_draw_watts:
        parts.append(f"drawing {p.power_draw_watts:.1f} W")
    left = p.time_to_empty.ToTimedelta().total_seconds()
    if left > 0:
        parts.append(f"{_duration_text(left)} left")
    parts.append("on battery" if p.on_battery else "on AC power")
    return ", ".join(parts) + source


def _throttling_text(t: resources_pb2.ThrottlingStatus) -> str:
    now = [
        name
        for name, on in (
            ("under-voltage", t.under_voltage),
            ("frequency capped", t.frequency_capped),
            ("throttled", t.throttled),
            ("soft temperature limit", t.soft_temperature_limit),
        )
        if on
    ]
    before = [
        name
        for name, on in (
            ("under-voltage", t.under_voltage_occurred),
            ("frequency capped", t.frequency_capped_occurred),
            ("throttled", t.throttled_occurred),
            ("soft temperature limit", t.soft_temperature_limit_occurred),
        )
        if on
    ]
    text = ", ".join(now) if now else "none now"
    return text + (f" (since boot: {', '.join(before)})" if before else "")


def _show_snapshot(s: resources_pb2.ResourceSnapshot) -> None:
    m, c, t = s.memory, s.cpu, s.thermal
    zones = ", ".join(f"{z.type or z.name} {z.temperature_c:.1f} C" for z in t.zones)
    thermal = friendly(resources_pb2.ThermalState, t.state)
    pressure = friendly(resources_pb2.PressureLevel, m.pressure)
    cpu = f"{c.cores} cores, {c.usage_percent:.0f} % busy"
    if c.frequency_mhz:
        cpu += f", {c.frequency_mhz:.0f} / {c.max_frequency_mhz:.0f} MHz"
    pairs = [
        ("time", _time(s.time)),
        ("thermal", f"{thermal}" + (f": {t.reason}" if t.reason else "")),
        ("zones", zones),
        (
            "memory",
            f"{human_size(m.available_bytes)} of {human_size(m.total_bytes)} available, "
            f"pressure {pressure} (PSI some {m.psi_some_avg10:.1f} %, full "
            f"{m.psi_full_avg10:.1f} %)" + (f": {m.reason}" if m.reason else ""),
        ),
        ("cpu", cpu),
        ("power", _power_text(s.power)),
        (
            "profile",
            f"{friendly(common_pb2.PowerProfile, s.power_profile)} "
            f"({friendly(resources_pb2.ProfileSource, s.profile_source)})",
        ),
    ]
    if any(
        f.name.endswith("_occurred") and getattr(t.throttling, f.name)
        for f in t.throttling.DESCRIPTOR.fields
    ):
        pairs.append(("throttling", _throttling_text(t.throttling)))
    for g in s.gpus:
        pairs.append(
            (
                "gpu",
                f"{g.name}: {human_size(g.memory_used_bytes)} of "
                f"{human_size(g.memory_total_bytes)}, "
                f"{g.utilization_percent:.0f} % busy",
            )
        )
    pairs.append(("unavailable", ", ".join(s.unavailable_sources)))
    _fields(pairs)


def cmd_resources(client: Client, args: argparse.Namespace) -> int:
    if not args.watch:
        response = client.get_snapshot()
        if args.json:
            _print_json(response.snapshot)
        else:
            _show_snapshot(response.snapshot)
        return 0
    with client.watch_snapshots(args.interval) as stream:
        for i, event in enumerate(stream):
            if args.json:
                _print_json(event.snapshot, compact=True)
                continue
            if i:
                _print()
            _show_snapshot(event.snapshot)
            _stdout().flush()
    return 0


_PROFILES = ("performance", "balanced", "power-saver", "ultra-saver", "custom")


def _show_profile(
    response: resources_pb2.GetPowerProfileResponse | resources_pb2.SetPowerProfileResponse,
) -> None:
    p = response.parameters
    source = friendly(resources_pb2.ProfileSource, response.source).replace("_", "-")
    _fields(
        [
            ("profile", friendly(common_pb2.PowerProfile, response.profile).replace("_", "-")),
            ("source", source + (f": {response.reason}" if response.reason else "")),
            ("threads", str(p.threads)),
            ("gpu", "yes" if p.use_gpu else "no"),
            ("prefer remote", "yes" if p.prefer_remote else "no"),
            ("max local tokens", str(p.max_local_tokens)),
            ("batch size", str(p.batch_size)),
            ("context length", str(p.context_length)),
            ("caching", "yes" if p.caching else "no"),
            ("background", "yes" if p.background_inference else "no"),
        ]
    )


def cmd_power(client: Client, args: argparse.Namespace) -> int:
    custom_flags = [args.threads, args.max_tokens, args.batch, args.context]
    if args.profile != "custom" and (
        any(v is not None for v in custom_flags)
        or args.gpu
        or args.prefer_remote
        or args.no_cache
        or args.background
    ):
        raise UsageError(
            "--threads, --max-tokens, --batch, --context and the switches "
            "only go with the custom profile"
        )
    response: resources_pb2.GetPowerProfileResponse | resources_pb2.SetPowerProfileResponse
    if args.clear:
        if args.profile:
            raise UsageError("give a profile or --clear, not both")
        response = client.clear_power_profile()
    elif args.profile == "custom":
        custom = resources_pb2.ProfileParameters(
            threads=args.threads or 0,
            use_gpu=args.gpu,
            prefer_remote=args.prefer_remote,
            max_local_tokens=args.max_tokens or 0,
            batch_size=args.batch or 0,
            context_length=args.context or 0,
            caching=not args.no_cache,
            background_inference=args.background,
        )
        response = client.set_power_profile("custom", custom)
    elif args.profile:
        response = client.set_power_profile(args.profile)
    else:
        response = client.get_power_profile()
    if args.json:
        _print_json(response)
    else:
        _show_profile(response)
    return 0


# ----------------------------------------------------------------------------- tools


def cmd_tools_list(client: Client, args: argparse.Namespace) -> int:
    response = client.list_tools()
    if args.json:
        _print_json(response)
        return 0
    rows = [
        [
            t.name,
            t.plugin,
            "yes" if t.enabled else "no",
            str(t.metrics.calls),
            str(t.metrics.failures),
            t.description if len(t.description) <= 60 else t.description[:59] + "…",
        ]
        for t in response.tools
    ]
    _table(["NAME", "PLUGIN", "ENABLED", "CALLS", "FAILED", "DESCRIPTION"], rows)
    for module in response.wasm_modules:
        if module.error:
            _note(f"{PROG}: WebAssembly plugin {module.path} refused: {module.error}")
    return 0


def _arguments(text: str) -> str:
    text = sys.stdin.read() if text == "-" else text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"the arguments are not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise UsageError('the arguments must be a JSON object, e.g. \'{"expression": "1+1"}\'')
    return text


def cmd_tools_run(client: Client, args: argparse.Namespace) -> int:
    response = client.execute_tool(args.name, _arguments(args.arguments), timeout=args.tool_timeout)
    if args.json:
        _print_json(response)
    elif response.status == tools_pb2.TOOL_CALL_STATUS_OK:
        _print(json.dumps(json.loads(response.output_json), ensure_ascii=False, indent=2))
    status = friendly(tools_pb2.ToolCallStatus, response.status)
    if response.status != tools_pb2.TOOL_CALL_STATUS_OK:
        if not args.json:
            _note(f"{PROG}: {args.name}: {status}: {response.error}")
        return EXIT_ERROR
    return 0


def cmd_agent(client: Client, args: argparse.Namespace) -> int:
    options = GenerationOptions()
    if args.max_tokens is not None:
        options["max_tokens"] = args.max_tokens
    if args.temperature is not None:
        options["temperature"] = args.temperature
    if args.seed is not None:
        options["seed"] = args.seed
    stream = client.run_agent(
        _prompt(args.prompt),
        args.tool,
        args.model,
        max_steps=args.max_steps,
        system_prompt=args.system or "",
        **options,
    )
    out = _stdout()
    done: tools_pb2.AgentDone | None = None
    with stream:
        for event in stream:
            if args.json:
                _print_json(event, compact=True)
            kind = event.WhichOneof("step")
            if kind == "done":
                done = event.done
            elif args.json:
                continue
            elif kind == "tool_call":
                _note(f"-> {event.tool_call.name} {event.tool_call.arguments_json}")
            elif kind == "tool_result":
                result = event.tool_result
                if result.status == tools_pb2.TOOL_CALL_STATUS_OK:
                    _note(f"<- {result.output_json}")
                else:
                    status = friendly(tools_pb2.ToolCallStatus, result.status)
                    _note(f"<- {status}: {result.error}")
            elif kind == "chunk":
                out.write(event.chunk.text)
                out.flush()
            elif kind == "queued":
                _note_queued(event.queued)
    if done is None or args.json:
        return 0
    out.write("\n")
    if done.stop_reason != tools_pb2.AGENT_STOP_REASON_ANSWER:
        reason = friendly(tools_pb2.AgentStopReason, done.stop_reason)
        _note(f"{PROG}: the agent stopped without an answer ({reason}, {done.steps} steps)")
        return EXIT_ERROR
    if args.stats:
        g = done.generation
        _note(_stats_line(g.model_id, g.finish_reason, g.usage, g.timings)[:-1]
              + f", {done.steps} steps]")  # fmt: skip
    return 0


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
    # Credentials for TCP listeners. The token is read from a file or $RUSTAID_TOKEN,
    # never taken on the command line (where `ps` and shell history would show it).
    parser.add_argument(
        "--token-file",
        default=default(None),
        metavar="FILE",
        help="bearer token for a TCP listener, read from FILE (default: $RUSTAID_TOKEN)",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        default=default(False),
        help="TLS to a TCP address (implied by --tls-ca and --tls-cert)",
    )
    parser.add_argument(
        "--tls-ca",
        default=default(None),
        metavar="FILE",
        help="PEM CA that signed the daemon's certificate (default: the system's CAs)",
    )
    parser.add_argument(
        "--tls-cert", default=default(None), metavar="FILE", help="PEM client certificate"
    )
    parser.add_argument(
        "--tls-key", default=default(None), metavar="FILE", help="PEM client private key"
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

    # updates
    updates = commands.add_parser("updates", help="check, apply and roll back OTA updates")
    update_cmds = updates.add_subparsers(dest="updates_command", metavar="COMMAND", required=True)
    p = command(update_cmds, "check", cmd_updates_check, "what the release repository offers")
    p.add_argument("--channel", default="", help="default: the configured channel")
    p = command(
        update_cmds,
        "apply",
        cmd_updates_apply,
        "download, verify, switch and health-check updates, with a progress bar "
        "(exit 1 if one failed or was rolled back)",
    )
    p.add_argument("ids", nargs="*", metavar="ID", help="artifacts (default: all in rollout)")
    p.add_argument("--channel", default="", help="default: the configured channel")
    p.add_argument("--force", action="store_true", help="even on a low battery or a hot device")
    p.add_argument("--no-wait", action="store_true", help="return once the update started")
    command(update_cmds, "status", cmd_updates_status, "the updater's state and what it installed")
    p = command(update_cmds, "history", cmd_updates_history, "past update attempts, newest first")
    p.add_argument("--limit", type=_count, default=0, metavar="N", help="default 50")
    p = command(
        update_cmds, "rollback", cmd_updates_rollback, "switch back to the previous version"
    )
    p.add_argument("id", metavar="ID")

    # release (publisher side: local files, no daemon)
    release = commands.add_parser(
        "release", help="publish signed releases: keys, artifacts, signatures (no daemon)"
    )
    release_cmds = release.add_subparsers(dest="release_command", metavar="COMMAND", required=True)
    p = command(
        release_cmds, "keygen", _offline(_release_keygen), "make an ed25519 key pair NAME.key/.pub"
    )
    p.add_argument("name", metavar="NAME", help="path prefix, e.g. keys/release-1")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p = command(
        release_cmds,
        "add",
        _offline(_release_add),
        "add a model (.gguf) or plugin (.py) to a channel; the metadata becomes unsigned",
    )
    p.add_argument("artifact", metavar="ARTIFACT")
    p.add_argument("--channel", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--id", help="artifact id (default: the file name without suffix)")
    p.add_argument("--kind", choices=["model", "plugin"], help="default: from the suffix")
    p.add_argument("--rollout", default="100%", help="share of devices, e.g. 10%% (default 100%%)")
    p.add_argument("--min-daemon-version", metavar="V")
    p.add_argument("--base-url", metavar="URL", help="absolute artifact URLs (e.g. a CDN)")
    p.add_argument("--expires", default="30d", help="metadata lifetime (default 30d)")
    p.add_argument("--repo", default=".", metavar="DIR", help="repository folder (default .)")
    p = command(release_cmds, "sign", _offline(_release_sign), "add signatures to the metadata")
    p.add_argument("--key", action="append", required=True, metavar="FILE.key")
    p.add_argument("--expires", help="set the lifetime first (only before the first signature)")
    p.add_argument("--root", action="store_true", help="sign the newest root/N.json instead")
    p.add_argument("--repo", default=".", metavar="DIR")
    p = command(release_cmds, "verify", _offline(_release_verify), "check a repository folder")
    p.add_argument("dir", nargs="?", default=".", metavar="DIR")
    p.add_argument("--key", action="append", default=[], metavar="KEY",
                   help="trusted public key: FILE.pub or ed25519:HEX (repeatable)")  # fmt: skip
    p.add_argument("--threshold", type=int, default=1)
    p = command(
        release_cmds, "rotate", _offline(_release_rotate), "start a key rotation (root/N.json)"
    )
    p.add_argument("--key", action="append", required=True, metavar="NEW.pub")
    p.add_argument("--threshold", type=int, required=True)
    p.add_argument("--repo", default=".", metavar="DIR")

    # rag
    rag = commands.add_parser(
        "rag", help="collections, indexing, search and grounded answers over your documents"
    )
    rag_cmds = rag.add_subparsers(dest="rag_command", metavar="COMMAND", required=True)

    def collection_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--collection", "-c", default=DEFAULT_COLLECTION, metavar="NAME",
            help=f"collection (default: {DEFAULT_COLLECTION})",
        )  # fmt: skip

    def where_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--where", "-w", action="append", default=[], metavar="EXPR",
            help="filter (repeatable, all must hold): KEY=VALUE, KEY=A|B, KEY!=VALUE, "
            "KEY>=N, KEY<N...; keys: source, page, document_id, title, heading, metadata.KEY",
        )  # fmt: skip

    command(rag_cmds, "collections", cmd_rag_collections, "list the collections")
    p = command(rag_cmds, "create", cmd_rag_create, "create an empty collection")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--model", "-m", default="", metavar="ID", help="embedding model")
    p.add_argument("--distance", choices=["cosine", "dot", "euclid"])
    p.add_argument("--store", default="", help="vector store (default: the daemon's)")
    p = command(rag_cmds, "drop", cmd_rag_delete_collection, "delete a collection and its data")
    p.add_argument("name", metavar="NAME")
    p = command(
        rag_cmds, "index", cmd_rag_index,
        "index files and folders (text, Markdown, HTML, PDF, DOCX) with a progress bar",
    )  # fmt: skip
    p.add_argument("paths", nargs="+", metavar="PATH")
    collection_option(p)
    p.add_argument(
        "--model", "-m", default="", metavar="ID",
        help="embedding model of the collection if it has to be created",
    )  # fmt: skip
    p.add_argument("--no-create", action="store_true", help="fail if the collection is missing")
    p.add_argument(
        "--by-path", action="store_true",
        help="let the daemon read the files (they must be under its [rag] allowed_folders) "
        "instead of uploading them",
    )  # fmt: skip
    p.add_argument("--chunk-size", type=_count, default=0, metavar="TOKENS")
    p.add_argument("--chunk-overlap", type=_count, default=None, metavar="TOKENS")
    p.add_argument(
        "--meta", action="append", default=[], metavar="KEY=VALUE",
        help="metadata stored with every chunk (repeatable)",
    )  # fmt: skip
    p = command(rag_cmds, "search", cmd_rag_search, "find the passages closest to a query")
    p.add_argument("query", metavar="QUERY", help="the query; - reads it from stdin")
    collection_option(p)
    where_option(p)
    p.add_argument("--top-k", "-k", type=_count, default=0, metavar="N", help="hits (default 5)")
    p.add_argument("--threshold", type=float, default=None, metavar="SCORE")
    p = command(rag_cmds, "ask", cmd_rag_ask, "answer a question from a collection, citing sources")
    p.add_argument("question", metavar="QUESTION", help="the question; - reads it from stdin")
    collection_option(p)
    where_option(p)
    p.add_argument(
        "--passages", dest="top_k", type=_count, default=0, metavar="N",
        help="passages to retrieve (default 5; those that fit the context are used)",
    )  # fmt: skip
    _generation_options(p)
    p = command(rag_cmds, "embed", cmd_rag_embed, "embed texts (prints the first values)")
    p.add_argument("texts", nargs="+", metavar="TEXT")
    p.add_argument("--model", "-m", default="", metavar="ID", help="embedding model")
    p = command(rag_cmds, "delete", cmd_rag_delete, "delete documents from a collection")
    collection_option(p)
    where_option(p)
    p.add_argument(
        "--document", "-d", action="append", default=[], metavar="ID",
        help="document id (repeatable)",
    )  # fmt: skip

    # resources
    p = command(
        commands,
        "resources",
        cmd_resources,
        "the device's state: heat, memory, CPU, battery and the power profile",
    )
    p.add_argument("--watch", action="store_true", help="print a new snapshot on every change")
    p.add_argument(
        "--interval",
        type=_positive_float,
        metavar="SECONDS",
        help="with --watch: at most one snapshot per interval (default 1 s)",
    )
    p = command(
        commands, "power", cmd_power, "show the power profile, set one until cleared, or --clear it"
    )
    p.add_argument(
        "profile",
        nargs="?",
        choices=_PROFILES,
        metavar="PROFILE",
        help=f"one of {', '.join(_PROFILES)}",
    )
    p.add_argument("--clear", action="store_true", help="back to the automatic profile")
    custom = p.add_argument_group("custom profile")
    custom.add_argument("--threads", type=_count, metavar="N")
    custom.add_argument("--max-tokens", type=_count, metavar="N", help="max local tokens")
    custom.add_argument("--batch", type=_count, metavar="N", help="batch size")
    custom.add_argument("--context", type=_count, metavar="N", help="context length")
    custom.add_argument("--gpu", action="store_true", help="use the GPU")
    custom.add_argument("--prefer-remote", action="store_true")
    custom.add_argument("--no-cache", action="store_true", help="no prompt/model caching")
    custom.add_argument("--background", action="store_true", help="run background requests")

    # tools
    tools = commands.add_parser("tools", help="list and run tools")
    tool_cmds = tools.add_subparsers(dest="tools_command", metavar="COMMAND", required=True)
    command(tool_cmds, "list", cmd_tools_list, "list the tools (and refused WebAssembly plugins)")
    p = command(tool_cmds, "run", cmd_tools_run, "run a tool with JSON arguments")
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "arguments", nargs="?", default="{}", metavar="JSON", help="a JSON object; - reads stdin"
    )
    p.add_argument(
        "--tool-timeout", type=_positive_float, metavar="SECONDS", help="the call's timeout"
    )
    p = command(commands, "agent", cmd_agent, "let a model call tools until it answers")
    p.add_argument("prompt", metavar="PROMPT", help="the task; - reads it from stdin")
    p.add_argument(
        "--tool", action="append", default=[], metavar="NAME", help="allowed tool (repeatable)"
    )
    p.add_argument("--model", "-m", default="", metavar="ID")
    p.add_argument("--max-steps", type=_count, default=0, metavar="N", help="model turns (8)")
    p.add_argument("--system", metavar="TEXT", help="instructions for the model")
    p.add_argument("--max-tokens", "-n", type=_count, metavar="N", help="per turn")
    p.add_argument("--temperature", "-t", type=float, metavar="T")
    p.add_argument("--seed", type=_count, metavar="S")
    p.add_argument("--stats", action="store_true", help="print usage and steps to stderr")

    # health
    p = command(commands, "health", cmd_health, "check the daemon's health (exit 0 if SERVING)")
    p.add_argument("--service", default="", help="one service, e.g. rustaid.api.v1.ModelsService")
    return parser


# ------------------------------------------------------------------------------ main


def _connect(args: argparse.Namespace) -> Client:
    try:
        token = read_token_file(args.token_file) if args.token_file else None
        return Client(
            args.address,
            args.timeout,
            token=token,
            tls=True if args.tls else None,
            tls_ca=args.tls_ca,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
        )
    except ValueError as e:
        raise UsageError(str(e)) from e


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
        with _connect(args) as client:
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

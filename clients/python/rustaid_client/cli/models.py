"""`rustaictl models list|show|load|unload|select` (and `pull`/`rm`, models_pull.py)."""

from __future__ import annotations

import argparse

from rustaid.api.v1 import (
    common_pb2,
    models_pb2,
)
from rustaid_client.cli import models_pull
from rustaid_client.cli.arguments import Subparsers, command, count
from rustaid_client.cli.output import (
    PROG,
    echo,
    fields,
    friendly,
    human_size,
    note,
    print_json,
    table,
    time_text,
)
from rustaid_client.client import (
    Client,
)


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
        print_json(response)
        return 0
    headers = ["ID", "KIND", "STATE", "SIZE", "QUANT", "CONTEXT", "ERROR"]
    table(headers, [_model_row(m) for m in response.models])
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
        ("modified", time_text(model.modified_time)),
        ("last used", time_text(model.last_used_time)),
    ]
    if model.state == models_pb2.MODEL_STATE_LOADED:
        pairs += [
            ("context", str(model.context_length or "")),
            ("threads", str(model.threads or "")),
            ("at once", str(model.parallel or "")),
            ("memory", human_size(model.memory_bytes) if model.memory_bytes else ""),
            ("pinned", "yes" if model.pinned else "no"),
        ]
    fields(pairs)


def cmd_models_show(client: Client, args: argparse.Namespace) -> int:
    response = client.get_model(args.id)
    if args.json:
        print_json(response.model)
    else:
        _show_model(response.model)
    return 0


def cmd_models_load(client: Client, args: argparse.Namespace) -> int:
    response = client.load_model(
        args.id, context_length=args.context, threads=args.threads, pin=args.pin
    )
    if args.json:
        print_json(response)
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
        note(
            f"{PROG}: warning: {model.id} was already loaded with {', '.join(kept)}; "
            "unload it first to change that"
        )
    pinned = ", pinned" if model.pinned else ""
    echo(
        f"loaded {model.id} in {response.load_ms:.0f} ms "
        f"(context {model.context_length}, {model.threads} threads{pinned})"
    )
    return 0


def cmd_models_unload(client: Client, args: argparse.Namespace) -> int:
    response = client.unload_model(args.id)
    if args.json:
        print_json(response)
    else:
        echo(f"unloaded {response.model.id}")
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
        print_json(response)
        return 0
    echo(f"selected: {response.model_id or '(none)'}")
    if response.candidates:
        echo()
        rows = [
            [
                c.model_id,
                f"{c.score:g}",
                "excluded" if c.excluded else "",
                "; ".join(c.reasons),
            ]
            for c in response.candidates
        ]
        table(["MODEL", "SCORE", "EXCLUDED", "REASONS"], rows)
    return 0


def add_commands(commands: Subparsers) -> None:
    models = commands.add_parser("models", help="list, pull, inspect, load and unload models")
    models_cmds = models.add_subparsers(dest="models_command", metavar="COMMAND", required=True)
    p = command(models_cmds, "list", cmd_models_list, "list the models the daemon knows")
    p.add_argument("--kind", choices=["llm", "embedding", "nlu"])
    p.add_argument("--loaded", action="store_true", help="only loaded models")
    p = command(models_cmds, "show", cmd_models_show, "show one model")
    p.add_argument("id", metavar="ID")
    p = command(models_cmds, "load", cmd_models_load, "load a model into memory")
    p.add_argument("id", metavar="ID")
    p.add_argument("--context", type=count, default=0, metavar="N", help="context length")
    p.add_argument("--threads", type=count, default=0, metavar="N")
    p.add_argument("--pin", action="store_true", help="never evict while pinned")
    p = command(models_cmds, "unload", cmd_models_unload, "unload a model from memory")
    p.add_argument("id", metavar="ID")
    p = command(models_cmds, "select", cmd_models_select, "which model the router would pick")
    p.add_argument("--prefer-local", action="store_true")
    p.add_argument("--prefer-speed", action="store_true")
    p.add_argument("--prefer-quality", action="store_true")
    p.add_argument("--battery-sensitive", action="store_true")
    p.add_argument("--max-latency-ms", type=count, default=0, metavar="MS")
    p.add_argument(
        "--tag", action="append", default=[], metavar="T", help="required tag (repeatable)"
    )
    p.add_argument("--kind", choices=["llm", "embedding", "nlu"])
    models_pull.add_commands(models_cmds)

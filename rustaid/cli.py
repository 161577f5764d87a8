"""`rustaid` command: serve the daemon, print its version, quantise an embedding model."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rustaid import __version__
from rustaid.config import LOG_LEVELS, Settings, load_settings
from rustaid.errors import RustaidError
from rustaid.log import setup_logging

if TYPE_CHECKING:
    from rustaid.daemon import Daemon


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rustaid", description="Local AI daemon.")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the daemon in the foreground")
    serve.add_argument("--data-dir", type=Path, help="holds models/, plugins/, config/, state/")
    serve.add_argument(
        "--listen",
        action="append",
        metavar="ADDRESS",
        help="unix:///path/to.sock or HOST:PORT (repeatable); default: the user or system socket",
    )
    serve.add_argument("--log-level", choices=LOG_LEVELS)
    mode = serve.add_mutually_exclusive_group()
    mode.add_argument("--system", dest="system", action="store_true", default=None,
                      help="system service paths (/var/lib/rustaid, /run/rustaid)")  # fmt: skip
    mode.add_argument("--user", dest="system", action="store_false",
                      help="per-user paths (XDG)")  # fmt: skip
    sub.add_parser("version", help="print the version")
    quantize = sub.add_parser(
        "quantize",
        help="write an int8 copy of an fp32 ONNX embedding model folder",
        description="Write an int8 copy of an fp32 ONNX embedding model folder (weights "
        "per output channel; activations per token when the daemon loads it). About 1.6x "
        "the fp32 model's speed on x86 CPUs, and close to its vectors.",
    )
    quantize.add_argument(
        "folder", type=Path, help="e.g. ~/.local/share/rustaid/models/embeddings/minilm"
    )
    quantize.add_argument(
        "--output", type=Path, metavar="FOLDER", help="default: FOLDER-int8 beside it"
    )
    from rustaid.auth.cli import add_token_parser

    add_token_parser(sub)
    return p


def _say_which_instance(settings: Settings, *, chosen: bool) -> None:
    """Log which instance this is: root without --system/--user is told what it got."""
    kind = "the system service" if settings.system else "a per-user instance"
    where = f"data {settings.data_dir}, listening on {', '.join(settings.listen)}"
    log = logging.getLogger("rustaid")
    if os.getuid() == 0 and not chosen:
        log.warning(
            "running as root without --system: %s (%s); the system service is "
            "`rustaid serve --system` (`systemctl start rustaid`)",
            kind,
            where,
        )
    else:
        log.info("%s (%s)", kind, where)


def _quantize(folder: Path, output: Path | None) -> int:
    import time

    from rustaid.builtin.onnx_quantization import quantize_folder

    # onnxruntime's quantiser advises on the root logger about pre-processing that a
    # transformer does not need.
    logging.getLogger().setLevel(logging.ERROR)
    started = time.monotonic()
    try:
        target = quantize_folder(
            folder.expanduser(),
            output.expanduser() if output else None,
            say=lambda line: print(line, file=sys.stderr),
        )
    except ValueError as e:
        print(f"rustaid: {e}", file=sys.stderr)
        return 2
    size = (target / "model.onnx").stat().st_size / 2**20
    print(f"{target}: int8, {size:.1f} MiB, in {time.monotonic() - started:.1f} s")
    return 0


def main(argv: list[str] | None = None, *, prepare: Callable[[Daemon], None] | None = None) -> int:
    """`prepare` sees the daemon before it runs (rustaid.testing's entry points)."""
    args = _parser().parse_args(argv)
    if args.command == "token":
        from rustaid.auth.cli import run_token_command

        return run_token_command(args)
    if args.command == "version":
        print(f"rustaid {__version__}")
        return 0
    if args.command == "quantize":
        return _quantize(args.folder, args.output)
    try:
        settings = load_settings(
            data_dir=args.data_dir,
            system=args.system,
            overrides={"listen": args.listen, "log_level": args.log_level},
        )
    except RustaidError as e:
        print(f"rustaid: {e}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    _say_which_instance(settings, chosen=args.system is not None)
    from rustaid.daemon import Daemon

    try:
        daemon = Daemon(settings)
        if prepare is not None:
            prepare(daemon)
        asyncio.run(daemon.run())
    except RustaidError as e:
        logging.getLogger("rustaid").error("%s", e)
        return 1
    return 0

"""`rustaid` command: serve the daemon, print its version."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from rustaid import __version__
from rustaid.config import LOG_LEVELS, load_settings
from rustaid.errors import RustaidError
from rustaid.log import setup_logging


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
    from rustaid.auth.cli import add_token_parser

    add_token_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "token":
        from rustaid.auth.cli import run_token_command

        return run_token_command(args)
    if args.command == "version":
        print(f"rustaid {__version__}")
        return 0
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
    from rustaid.daemon import Daemon

    try:
        asyncio.run(Daemon(settings).run())
    except RustaidError as e:
        logging.getLogger("rustaid").error("%s", e)
        return 1
    return 0

"""`rustaid` command: serve the daemon, print its version."""

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


def main(argv: list[str] | None = None, *, prepare: Callable[[Daemon], None] | None = None) -> int:
    """`prepare` sees the daemon before it runs (rustaid.testing's entry points)."""
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

"""`rustaid token add|list|remove`: bearer tokens for TCP clients.

    rustaid token add ci [--admin] [--expires 30d]   # prints the token, once
    rustaid token list
    rustaid token remove ci

The daemon re-reads the token file when it changes: no restart is needed.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from rustaid.auth import tls, tokens
from rustaid.config import load_settings
from rustaid.errors import RustaidError


def add_token_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    token = sub.add_parser(
        "token",
        help="manage bearer tokens for TCP clients",
        description="Bearer tokens for clients on TCP listeners. The token file holds "
        "only hashes; a token is shown once, when it is added.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", type=Path, help="the daemon's data folder")
    common.add_argument(
        "--token-file", type=Path, help="the token file (default: the daemon's token_file)"
    )
    mode = common.add_mutually_exclusive_group()
    mode.add_argument("--system", dest="system", action="store_true", default=None,
                      help="the system service's settings")  # fmt: skip
    mode.add_argument("--user", dest="system", action="store_false",
                      help="the per-user daemon's settings")  # fmt: skip
    actions = token.add_subparsers(dest="token_command", required=True)
    add = actions.add_parser("add", parents=[common], help="create a token and print it once")
    add.add_argument("name", help="who or what uses it, e.g. ci or alice@laptop")
    add.add_argument("--admin", action="store_true", help="may call the changing RPCs")
    add.add_argument(
        "--expires",
        metavar="WHEN",
        help="a duration (30d, 12h, 90m, 2w) or a date (2030-01-31, 2030-01-31T12:00Z); "
        "default: never",
    )
    actions.add_parser("list", parents=[common], help="list tokens (names, never secrets)")
    remove = actions.add_parser("remove", parents=[common], help="revoke a token")
    remove.add_argument("name")


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "never"


def run_token_command(args: argparse.Namespace) -> int:
    try:
        if args.token_file is not None:
            path = args.token_file.expanduser().absolute()
        else:
            settings = load_settings(data_dir=args.data_dir, system=args.system)
            path = tls.token_path(settings)
        if args.token_command == "add":
            expires = None
            if args.expires:
                try:
                    expires = tokens.parse_expiry(args.expires)
                except ValueError as e:
                    print(f"rustaid: {e}", file=sys.stderr)
                    return 2
            token, entry = tokens.add_token(path, args.name, admin=args.admin, expires=expires)
            print(token)
            kind = "admin token" if entry.admin else "token"
            print(
                f"rustaid: {kind} {entry.name!r} added to {path} (expires: "
                f"{_when(entry.expires)}). It is shown only now: keep it in a file only you "
                "can read and pass it with `rustaictl --token-file FILE` or RUSTAID_TOKEN.",
                file=sys.stderr,
            )
            return 0
        if args.token_command == "remove":
            tokens.remove_token(path, args.name)
            print(f"rustaid: token {args.name!r} removed from {path}", file=sys.stderr)
            return 0
        entries = tokens.list_tokens(path)
        if not entries:
            print(f"rustaid: no tokens in {path}", file=sys.stderr)
            return 0
        now = datetime.now(UTC)
        rows = [("NAME", "ADMIN", "EXPIRES", "CREATED", "STATE")] + [
            (
                e.name,
                "yes" if e.admin else "no",
                _when(e.expires),
                _when(e.created),
                "expired" if e.expired(now) else "valid",
            )
            for e in entries
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        return 0
    except RustaidError as e:
        print(f"rustaid: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"rustaid: {e}", file=sys.stderr)
        return 1

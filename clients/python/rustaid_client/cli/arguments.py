"""The argument parser's parts every command group uses: the parser class, the global
options, the generation options and `command()`, which adds one command."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

from rustaid_client.cli import output
from rustaid_client.cli.output import EXIT_USAGE, PROG
from rustaid_client.client import (
    Client,
)

if TYPE_CHECKING:
    from typing import TypeAlias

    Subparsers: TypeAlias = "argparse._SubParsersAction[Parser]"
else:  # not subscriptable at run time
    Subparsers = argparse._SubParsersAction

Command = Callable[[Client, argparse.Namespace], int]


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(output.stderr())
        self.exit(EXIT_USAGE, f"{PROG}: error: {message}\n")


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 (got {text})")
    return value


def count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (got {text})")
    return value


def global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
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
        type=positive_float,
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


def generation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", "-m", default="", metavar="ID", help="model id (default: the router picks)"
    )
    parser.add_argument("--max-tokens", "-n", type=count, metavar="N")
    parser.add_argument("--temperature", "-t", type=float, metavar="T")
    parser.add_argument("--top-p", type=float, metavar="P")
    parser.add_argument("--top-k", type=count, metavar="K")
    parser.add_argument("--min-p", type=float, metavar="P")
    parser.add_argument("--repeat-penalty", type=float, metavar="R")
    parser.add_argument("--seed", type=count, metavar="S")
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


def command(group: Subparsers, name: str, func: Command, help_: str) -> Parser:
    """Add command `name` running `func` to `group` (it takes the global options too)."""
    sub = group.add_parser(name, help=help_, description=help_)
    global_options(sub, suppress=True)
    sub.set_defaults(func=func)
    return sub

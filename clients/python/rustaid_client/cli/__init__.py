"""`rustaictl`: the command line for the rustaid daemon.

Exit status: 0 success, 1 the daemon (or the connection) reported an error, 2 usage
error, 130 interrupted (Ctrl-C cancels a running generation).

One module per command group (models, generate, plugins, updates, release, rag,
resources, tools, health), each with its `cmd_*` functions and `add_commands()`;
output.py and arguments.py hold what they share.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from rustaid_client import completion
from rustaid_client.cli import (
    generate,
    health,
    models,
    output,
    plugins,
    rag,
    release,
    resources,
    tools,
    updates,
)
from rustaid_client.cli.arguments import Command, Parser, command, global_options
from rustaid_client.cli.output import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    PROG,
    UsageError,
    friendly,
    human_size,
    note,
)
from rustaid_client.cli.rag import Progress
from rustaid_client.cli.updates import ProgressBar
from rustaid_client.client import Client, RustaidError, read_token_file

# Imported from here by users and tests.
__all__ = ["Progress", "ProgressBar", "build_parser", "friendly", "human_size", "main"]


def cmd_completion(client: Client, args: argparse.Namespace) -> int:
    raise AssertionError("main() prints completion scripts without a daemon")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG,
        description="Control the rustaid daemon: models, generation, chat and plugins.",
    )
    global_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    # In the order `--help` lists them.
    for group in (models, generate, plugins, updates, release, rag, resources, tools):
        group.add_commands(commands)
    p = command(
        commands, "completion", cmd_completion, "print a shell completion script (bash, zsh, fish)"
    )
    p.add_argument("shell", choices=completion.SHELLS)
    p.epilog = (
        "bash: source <(rustaictl completion bash) in ~/.bashrc; zsh: the same in ~/.zshrc; "
        "fish: rustaictl completion fish > ~/.config/fish/completions/rustaictl.fish"
    )
    health.add_commands(commands)
    return parser


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
        parser.print_help(output.stderr())
        return EXIT_USAGE
    if args.command == "completion":  # needs no daemon
        output.stdout().write(completion.script(parser, args.shell))
        return 0
    try:
        with _connect(args) as client:
            return func(client, args)
    except UsageError as e:
        note(f"{PROG}: error: {e}")
        return EXIT_USAGE
    except RustaidError as e:
        note(f"{PROG}: {e}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        note("")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (e.g. `| head`); don't let Python complain at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())

"""`rustaictl health`: the daemon's gRPC health (exit 0 if SERVING)."""

from __future__ import annotations

import argparse
import json

from rustaid_client.cli import output
from rustaid_client.cli.arguments import Subparsers, command
from rustaid_client.cli.output import EXIT_ERROR, echo
from rustaid_client.client import (
    Client,
)


def cmd_health(client: Client, args: argparse.Namespace) -> int:
    status = client.health(args.service)
    if args.json:
        output.stdout().write(json.dumps({"status": status}) + "\n")
    else:
        echo(status)
    return 0 if status == "SERVING" else EXIT_ERROR


def add_commands(commands: Subparsers) -> None:
    p = command(commands, "health", cmd_health, "check the daemon's health (exit 0 if SERVING)")
    p.add_argument("--service", default="", help="one service, e.g. rustaid.api.v1.ModelsService")

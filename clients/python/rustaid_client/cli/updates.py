"""`rustaictl updates check|apply|status|history|rollback|cancel`, with a progress bar."""

from __future__ import annotations

import argparse
from typing import TextIO

from rustaid.api.v1 import (
    updates_pb2,
)
from rustaid_client.cli import output
from rustaid_client.cli.arguments import Subparsers, command, count
from rustaid_client.cli.output import (
    EXIT_ERROR,
    echo,
    fields,
    friendly,
    human_size,
    print_json,
    table,
    time_text,
)
from rustaid_client.client import (
    Client,
    RustaidError,
)

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
        print_json(response)
        return 0
    if not response.updates:
        echo(f"up to date (release metadata version {response.metadata_version})")
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
    table(["ARTIFACT", "KIND", "CURRENT", "AVAILABLE", "SIZE", "CHANNEL", "ROLLOUT", "NOTE"], rows)
    return 0


def _record_line(r: updates_pb2.UpdateRecord) -> str:
    versions = f"{r.from_version or '-'} -> {r.to_version or '-'}"
    return f"{r.artifact_id or 'metadata'} {versions}: {_phase(r.outcome)}: {r.message}"


def cmd_updates_apply(client: Client, args: argparse.Namespace) -> int:
    ids = list(args.ids)
    if args.no_wait:
        response = client.apply_update(ids, channel=args.channel, force=args.force)
        if args.json:
            print_json(response)
        else:
            echo(f"{_phase(response.status.phase)}: {response.status.message}")
        return 0
    err = output.stderr()
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
        print_json(response)
    elif not response.records:
        echo(response.status.message)
    for record in response.records if not args.json else ():
        echo(_record_line(record))
    failed = [r for r in response.records if r.outcome != updates_pb2.UPDATE_PHASE_COMMITTED]
    return EXIT_ERROR if failed else 0


def cmd_updates_status(client: Client, args: argparse.Namespace) -> int:
    response = client.get_update_status()
    if args.json:
        print_json(response)
        return 0
    s = response.status
    pairs = [
        ("phase", _phase(s.phase)),
        ("update", f"{s.artifact_id} {s.version}".strip()),
        ("message", s.message),
        ("channel", response.channel),
        ("metadata version", str(response.metadata_version or "")),
        ("device id", response.device_id),
        ("last check", time_text(s.last_check_time)),
        ("next check", time_text(s.next_check_time) if s.HasField("next_check_time") else "-"),
    ]
    if s.phase == updates_pb2.UPDATE_PHASE_DOWNLOADING and s.bytes_total:
        pairs.append(("progress", f"{human_size(s.bytes_done)}/{human_size(s.bytes_total)}"))
    fields(pairs)
    if response.installed:
        echo()
        rows = [
            [
                i.artifact_id,
                friendly(updates_pb2.ArtifactKind, i.kind),
                i.version,
                i.previous_version,
                i.path,
                time_text(i.installed_time),
            ]
            for i in response.installed
        ]
        table(["ARTIFACT", "KIND", "VERSION", "PREVIOUS", "PATH", "INSTALLED"], rows)
    return 0


def cmd_updates_history(client: Client, args: argparse.Namespace) -> int:
    response = client.update_history(args.limit)
    if args.json:
        print_json(response)
        return 0
    rows = [
        [
            time_text(r.finished_time),
            r.artifact_id or "metadata",
            r.from_version,
            r.to_version,
            _phase(r.outcome),
            r.message,
        ]
        for r in response.records
    ]
    table(["FINISHED", "ARTIFACT", "FROM", "TO", "OUTCOME", "MESSAGE"], rows)
    return 0


def cmd_updates_rollback(client: Client, args: argparse.Namespace) -> int:
    response = client.rollback_update(args.id)
    if args.json:
        print_json(response)
    else:
        echo(_record_line(response.record))
    ok = response.record.outcome == updates_pb2.UPDATE_PHASE_ROLLED_BACK
    return 0 if ok else EXIT_ERROR


def cmd_updates_cancel(client: Client, args: argparse.Namespace) -> int:
    response = client.cancel_update()
    if args.json:
        print_json(response)
    else:
        echo(f"{_phase(response.status.phase)}: {response.status.message}")
    return 0


def add_commands(commands: Subparsers) -> None:
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
    p.add_argument("--limit", type=count, default=0, metavar="N", help="default 50")
    p = command(
        update_cmds, "rollback", cmd_updates_rollback, "switch back to the previous version"
    )
    p.add_argument("id", metavar="ID")
    command(update_cmds, "cancel", cmd_updates_cancel, "stop the running update (download, verify)")

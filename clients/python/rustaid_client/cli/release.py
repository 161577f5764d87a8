"""`rustaictl release`: the publisher's side of updates (keys, artifacts, signed
metadata, key rotation), on local files without a daemon."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rustaid_client.cli import output
from rustaid_client.cli.arguments import Command, Subparsers, command
from rustaid_client.cli.output import EXIT_ERROR, PROG, UsageError, echo, human_size, note
from rustaid_client.client import (
    Client,
)


def _offline(func: Callable[[argparse.Namespace], int]) -> Command:
    """A command that works on local files, not the daemon (the publisher's tools)."""

    def run(client: Client, args: argparse.Namespace) -> int:
        from rustaid.errors import InvalidArgument
        from rustaid.errors import RustaidError as DomainError

        try:
            return func(args)
        except InvalidArgument as e:
            raise UsageError(e.message) from e
        except DomainError as e:
            note(f"{PROG}: {e.message}")
            return EXIT_ERROR

    return run


def _release_keygen(args: argparse.Namespace) -> int:
    from rustaid.updates.metadata import key_id, parse_public_key
    from rustaid.updates.publish import generate_key

    private, public, text = generate_key(Path(args.name), overwrite=args.force)
    if args.json:
        data = {"private": str(private), "public": str(public), "key": text,
                "keyid": key_id(parse_public_key(text))}  # fmt: skip
        output.stdout().write(json.dumps(data) + "\n")
        return 0
    echo(f"private key: {private} (keep it secret; mode 0600)")
    echo(f"public key:  {public}")
    echo(f'trust it on devices with [updates] trusted_keys = ["{text}"]')
    return 0


def _release_add(args: argparse.Namespace) -> int:
    from rustaid.updates.metadata import ArtifactKind
    from rustaid.updates.publish import Repository, parse_expiry, parse_rollout

    artifact = Repository(Path(args.repo)).add(
        Path(args.artifact),
        channel=args.channel,
        version=args.version,
        artifact_id=args.id or "",
        kind=ArtifactKind(args.kind) if args.kind else None,
        rollout=parse_rollout(args.rollout),
        min_daemon_version=args.min_daemon_version or "",
        base_url=args.base_url or "",
        expires_in=parse_expiry(args.expires),
    )
    if args.json:
        output.stdout().write(json.dumps(artifact.to_json()) + "\n")
        return 0
    echo(
        f"added {artifact.kind.value} {artifact.id} {artifact.version} to channel "
        f"{args.channel} ({human_size(artifact.size)}, rollout {artifact.rollout}%, "
        f"sha256 {artifact.sha256[:16]}...)"
    )
    echo(f"the metadata is now unsigned: run `{PROG} release sign --repo {args.repo} --key ...`")
    return 0


def _release_sign(args: argparse.Namespace) -> int:
    from rustaid.updates.publish import Repository, load_private_key, parse_expiry

    repo = Repository(Path(args.repo))
    keys = [load_private_key(Path(k)) for k in args.key]
    if args.root:
        path = repo.sign_root(keys)
        echo(f"signed {path}")
        return 0
    draft = repo.sign(keys, expires_in=parse_expiry(args.expires) if args.expires else None)
    echo(
        f"signed {repo.metadata_path}: version {draft.release.version}, "
        f"{len(draft.signatures)} signature(s), expires "
        f"{draft.release.expires.isoformat(timespec='seconds')}"
    )
    return 0


def _trust(specs: Sequence[str], threshold: int) -> Any:
    from rustaid.updates.metadata import Trust
    from rustaid.updates.publish import load_public_key

    if not specs:
        raise UsageError(
            "give the trusted public keys with --key (the ones devices have in "
            "[updates] trusted_keys)"
        )
    return Trust.from_keys([load_public_key(k) for k in specs], threshold)


def _release_verify(args: argparse.Namespace) -> int:
    from rustaid.updates.publish import Repository

    lines = Repository(Path(args.dir)).verify(_trust(args.key, args.threshold))
    for line in lines:
        echo(line)
    echo("ok: devices trusting these keys will accept this repository")
    return 0


def _release_rotate(args: argparse.Namespace) -> int:
    from rustaid.updates.publish import Repository, load_public_key

    path = Repository(Path(args.repo)).rotate(
        [load_public_key(k) for k in args.key], args.threshold
    )
    echo(
        f"wrote {path}: sign it with a threshold of the current keys and of the new ones "
        f"(`{PROG} release sign --root --key ...`)"
    )
    return 0


def add_commands(commands: Subparsers) -> None:
    release = commands.add_parser(
        "release", help="publish signed releases: keys, artifacts, signatures (no daemon)"
    )
    release_cmds = release.add_subparsers(dest="release_command", metavar="COMMAND", required=True)
    p = command(
        release_cmds, "keygen", _offline(_release_keygen), "make an ed25519 key pair NAME.key/.pub"
    )
    p.add_argument("name", metavar="NAME", help="path prefix, e.g. keys/release-1")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p = command(
        release_cmds,
        "add",
        _offline(_release_add),
        "add a model (.gguf) or plugin (.py) to a channel; the metadata becomes unsigned",
    )
    p.add_argument("artifact", metavar="ARTIFACT")
    p.add_argument("--channel", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--id", help="artifact id (default: the file name without suffix)")
    p.add_argument("--kind", choices=["model", "plugin"], help="default: from the suffix")
    p.add_argument("--rollout", default="100%", help="share of devices, e.g. 10%% (default 100%%)")
    p.add_argument("--min-daemon-version", metavar="V")
    p.add_argument("--base-url", metavar="URL", help="absolute artifact URLs (e.g. a CDN)")
    p.add_argument("--expires", default="30d", help="metadata lifetime (default 30d)")
    p.add_argument("--repo", default=".", metavar="DIR", help="repository folder (default .)")
    p = command(release_cmds, "sign", _offline(_release_sign), "add signatures to the metadata")
    p.add_argument("--key", action="append", required=True, metavar="FILE.key")
    p.add_argument("--expires", help="set the lifetime first (only before the first signature)")
    p.add_argument("--root", action="store_true", help="sign the newest root/N.json instead")
    p.add_argument("--repo", default=".", metavar="DIR")
    p = command(release_cmds, "verify", _offline(_release_verify), "check a repository folder")
    p.add_argument("dir", nargs="?", default=".", metavar="DIR")
    p.add_argument("--key", action="append", default=[], metavar="KEY",
                   help="trusted public key: FILE.pub or ed25519:HEX (repeatable)")  # fmt: skip
    p.add_argument("--threshold", type=int, default=1)
    p = command(
        release_cmds, "rotate", _offline(_release_rotate), "start a key rotation (root/N.json)"
    )
    p.add_argument("--key", action="append", required=True, metavar="NEW.pub")
    p.add_argument("--threshold", type=int, required=True)
    p.add_argument("--repo", default=".", metavar="DIR")

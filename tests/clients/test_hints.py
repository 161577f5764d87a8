"""Hints that name a command are right: each test gets the error a user would see, runs
the command the hint names (with the test's own address or paths where the hint says
PATH) and checks that the problem is gone."""

from __future__ import annotations

import contextlib
import io
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from rustaid.testing.daemon import run_daemon
from tests.conftest import add_model
from tests.rag.conftest import link_embedding_model

BIN = Path(sys.executable).parent


def rustaictl(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "rustaictl"), "--address", address, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def commands(message: str) -> list[str]:
    """The commands a message names, in backquotes."""
    return re.findall(r"`([^`]+)`", message)


def test_missing_collection_hints_run(
    tmp_path: Path, tiny_models: dict[str, Path], model_files: dict[str, Path]
) -> None:
    data_dir = tmp_path / "data"
    link_embedding_model(data_dir, tiny_models["tiny"], "tiny")
    add_model(data_dir, model_files["tiny"])
    note = tmp_path / "note.txt"
    note.write_text("The router resets when you hold its button for ten seconds.")
    with run_daemon(data_dir) as daemon:
        r = rustaictl(daemon.address, "rag", "search", "reset", "-c", "notes")
        assert r.returncode != 0
        assert "CreateCollection" not in r.stderr  # the hint is for people, not a gRPC method
        index, create = commands(r.stderr)
        assert index == "rustaictl rag index PATH... -c notes"
        assert create == "rustaictl rag create notes"
        r = rustaictl(daemon.address, *create.split()[1:])
        assert r.returncode == 0, r.stderr
        r = rustaictl(daemon.address, *index.replace("PATH...", str(note)).split()[1:])
        assert r.returncode == 0, r.stderr
        r = rustaictl(daemon.address, "rag", "search", "reset", "-c", "notes")
        assert r.returncode == 0 and "ten seconds" in r.stdout, r.stderr


def test_unreachable_hint_runs(tmp_path: Path) -> None:
    sock_dir = Path(tempfile.mkdtemp(prefix="rustaid-hint-", dir="/tmp"))
    address = f"unix://{sock_dir}/rustaid.sock"
    r = rustaictl(address, "models", "list")
    assert r.returncode != 0
    assert commands(r.stderr) == [
        "systemctl --user start rustaid",
        "sudo systemctl start rustaid",
        "rustaid serve",
    ]
    # (systemd is not on this machine: the unit runs `rustaid serve`, as the hint does.)
    with run_daemon(tmp_path / "data", "--listen", address):
        r = rustaictl(address, "models", "list")
        assert r.returncode == 0, r.stderr


def test_updates_configured_after_start_apply_on_reload(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with run_daemon(data_dir) as daemon:
        (data_dir / "config").mkdir(exist_ok=True)
        (data_dir / "config" / "rustaid.toml").write_text(
            '[updates]\nrepository = "http://127.0.0.1:9/"\n'
            f'trusted_keys = ["ed25519:{"cd" * 32}"]\n'
        )
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for("STATUS=reloaded")
        # The new repository is asked at once (nothing listens there): no restart hint.
        r = rustaictl(daemon.address, "updates", "check")
        assert r.returncode != 0
        assert "UNAVAILABLE" in r.stderr and "http://127.0.0.1:9/" in r.stderr, r.stderr
        assert "restart" not in r.stderr, r.stderr


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.rag.models import write_model

    root = tmp_path_factory.mktemp("onnx")
    return {"tiny": write_model(root / "tiny", dim=16, seed=1)}


# A command a message names, in backquotes, from the daemon's and the client's sources.
HINTED = re.compile(r"`(rustaictl [^`]+)`")
PLACEHOLDERS = {"PATH...": "/tmp/x", "NAME": "x", "N": "2", "REF": "pypi:x==1", "ID": "x"}


def hinted_commands() -> list[tuple[str, str]]:
    root = Path(__file__).resolve().parents[2]
    found = []
    for folder in (root / "rustaid", root / "clients" / "python" / "rustaid_client"):
        for source in sorted(folder.rglob("*.py")):
            for line in source.read_text().splitlines():
                if line.lstrip().startswith(('"""', "#")):
                    continue  # docstrings and comments are not messages
                for command in HINTED.findall(line):
                    found.append((f"{source.relative_to(root)}", command))
    return found


@pytest.mark.parametrize(("source", "command"), hinted_commands())
def test_every_command_a_message_names_exists(source: str, command: str) -> None:
    """Commands named in messages (with their placeholders filled in) are ones
    rustaictl's parser accepts: no hint names a command that does not exist."""
    from rustaid_client.cli import build_parser

    words = []
    for word in command.split()[1:]:
        word = re.sub(r"\{[^}]*\}", "x", word)  # an f-string's value
        if word != "...":  # "and so on"
            words.append(PLACEHOLDERS.get(word, word))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            build_parser().parse_args(words)
        except SystemExit:
            # A hint may name a command without all its arguments: the command itself
            # must exist (its --help works), and what it names must parse.
            try:
                build_parser().parse_args([*words, "--help"])
            except SystemExit as e:
                if e.code != 0:
                    pytest.fail(f"{source}: `{command}` is not a rustaictl command")


def test_the_hinted_commands_are_found() -> None:
    commands = {c for _, c in hinted_commands()}
    assert "rustaictl rag create {name}" in commands
    assert "rustaictl power custom --threads N" in commands

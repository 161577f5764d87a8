"""Fixtures for the tools tests: a synthetic model with room for tool prompts, real
daemons, and WebAssembly modules compiled from the text format at test time."""

from __future__ import annotations

import os
import shutil
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from rustaid.api.v1 import (
    generate_pb2_grpc,
    nlu_pb2_grpc,
    plugins_pb2_grpc,
    tools_pb2_grpc,
)
from rustaid.testing.daemon import DaemonProcess, run_daemon
from rustaid.testing.synthetic import ModelShape, write_llama_gguf
from rustaid.tools.subprocess import DEFAULT_USER
from tests.accounts import temporary_accounts

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_WAT = ROOT / "rustaid" / "tools" / "examples" / "word_count.wat"
# TINY's shapes with a context long enough for tool descriptions.
TOOL_MODEL = ModelShape(context_length=4096)


@pytest.fixture(scope="session")
def tool_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_llama_gguf(tmp_path_factory.mktemp("tools-gguf") / "tiny.gguf", TOOL_MODEL, seed=1)


def compile_wat(text: str, path: Path) -> Path:
    import wasmtime

    path.write_bytes(wasmtime.wat2wasm(textwrap.dedent(text)))
    path.chmod(0o644)
    return path


@pytest.fixture(scope="session")
def word_count_wasm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped example tool, built from its source."""
    return compile_wat(EXAMPLE_WAT.read_text(), tmp_path_factory.mktemp("wasm") / "wc.wasm")


def make_data_dir(root: Path, model: Path | None, toml: str = "") -> Path:
    for sub in ("models", "plugins", "config"):
        (root / sub).mkdir(parents=True, exist_ok=True, mode=0o755)
        (root / sub).chmod(0o755)
    if model is not None:
        shutil.copyfile(model, root / "models" / "tiny.gguf")
    if toml:
        (root / "config" / "rustaid.toml").write_text(textwrap.dedent(toml))
    return root


class ToolStubs:
    def __init__(self, daemon: DaemonProcess) -> None:
        self.daemon = daemon
        self.channel = grpc.insecure_channel(daemon.address)
        self.tools = tools_pb2_grpc.ToolsServiceStub(self.channel)
        self.generate = generate_pb2_grpc.GenerateServiceStub(self.channel)
        self.nlu = nlu_pb2_grpc.NluServiceStub(self.channel)
        self.plugins = plugins_pb2_grpc.PluginsServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()


StartDaemon = Callable[..., ToolStubs]


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[StartDaemon]:
    """Start a daemon on a fresh data dir: start_daemon(model, toml, wasm=[...])."""
    running: list[tuple[object, ToolStubs]] = []

    def start(model: Path | None = None, toml: str = "", wasm: tuple[Path, ...] = ()) -> ToolStubs:
        data = make_data_dir(tmp_path / f"d{len(running)}", model, toml)
        for path in wasm:
            dst = data / "plugins" / path.name
            shutil.copyfile(path, dst)
            dst.chmod(0o644)
        context = run_daemon(data)
        stubs = ToolStubs(context.__enter__())
        running.append((context, stubs))
        return stubs

    yield start
    for context, stubs in reversed(running):
        stubs.close()
        context.__exit__(None, None, None)  # type: ignore[attr-defined]


@pytest.fixture(scope="session", autouse=True)
def sandbox_user() -> Iterator[str]:
    """code_exec's dedicated user (what systemd-sysusers creates on a real system)."""
    if os.geteuid() != 0:
        yield DEFAULT_USER
        return
    with temporary_accounts() as accounts:
        accounts.user(DEFAULT_USER)
        yield DEFAULT_USER

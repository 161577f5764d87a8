"""Fixtures for the updater tests: real ed25519 keys, real synthetic models, real
plugin files, a release repository built with the publisher's own code and served by
a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rustaid.testing.synthetic import write_llama_gguf, write_truncated_copy
from rustaid.updates.publish import Repository, generate_key, load_private_key
from tests.updates.server import RepoServer, serve


@dataclass(frozen=True)
class Key:
    private: Any  # Ed25519PrivateKey
    public: str  # "ed25519:<hex>"
    key_file: Path
    pub_file: Path


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> list[Key]:
    root = tmp_path_factory.mktemp("keys")
    out = []
    for i in range(4):
        key_file, pub_file, public = generate_key(root / f"release-{i}")
        out.append(Key(load_private_key(key_file), public, key_file, pub_file))
    return out


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three versions of a tiny model and a broken one (truncated: fails to load)."""
    root = tmp_path_factory.mktemp("update-models")
    v1 = write_llama_gguf(root / "v1.gguf", seed=11, name="chat-v1")
    v2 = write_llama_gguf(root / "v2.gguf", seed=12, name="chat-v2")
    v3 = write_llama_gguf(root / "v3.gguf", seed=13, name="chat-v3")
    broken = write_truncated_copy(v2, root / "broken.gguf", 0.6)
    return {"v1": v1, "v2": v2, "v3": v3, "broken": broken}


PLUGIN_SOURCE = '''"""Greeter plugin {version}."""
from rustaid.hookspecs import hookimpl
from rustaid.providers import PluginInfo

PLUGIN = PluginInfo(name="greeter", version="{version}", description="says hello")


@hookimpl
def startup(daemon):
    {startup}
'''


@pytest.fixture(scope="session")
def plugins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("update-plugins")
    out = {}
    for name, version, startup in (
        ("v1", "1.0", "pass"),
        ("v2", "2.0", "pass"),
        ("broken", "3.0", 'raise RuntimeError("greeter 3.0 cannot find its data")'),
    ):
        path = root / name / "greeter.py"
        path.parent.mkdir()
        path.write_text(PLUGIN_SOURCE.format(version=version, startup=startup))
        out[name] = path
    return out


class Publisher:
    """A release repository folder, served over HTTP, edited with the publisher code."""

    def __init__(self, folder: Path, server: RepoServer, keys: Sequence[Key]) -> None:
        self.folder = folder
        self.server = server
        self.keys = list(keys)
        self.repo = Repository(folder)

    @property
    def url(self) -> str:
        return self.server.url

    def release(
        self,
        file: Path,
        version: str,
        *,
        artifact_id: str = "chat",
        channel: str = "stable",
        rollout: int = 100,
        sign_with: Sequence[Key] | None = None,
        **kwargs: Any,
    ) -> None:
        self.repo.add(
            file,
            channel=channel,
            version=version,
            artifact_id=artifact_id,
            rollout=rollout,
            **kwargs,
        )
        self.repo.sign([k.private for k in (sign_with or self.keys[:1])])

    def metadata(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.repo.metadata_path.read_text())
        return data

    def write_metadata(self, data: dict[str, Any]) -> None:
        self.repo.metadata_path.write_text(json.dumps(data))

    def artifact_path(self, version: str, artifact_id: str = "chat", suffix: str = ".gguf") -> str:
        return f"artifacts/{artifact_id}/{version}/{artifact_id}{suffix}"


@pytest.fixture
def publisher(tmp_path: Path, keys: list[Key]) -> Iterator[Publisher]:
    folder = tmp_path / "repo"
    folder.mkdir()
    with serve(folder) as server:
        yield Publisher(folder, server, keys)


def updates_config(
    url: str, keys: Sequence[Key], *, threshold: int = 1, **overrides: Any
) -> dict[str, Any]:
    section: dict[str, Any] = {
        "repository": url,
        "trusted_keys": [k.public for k in keys],
        "threshold": threshold,
        "check_interval": 0,
        "device_id": "device-under-test",
        "download_timeout": 5,
        "retry_backoff": 0.05,
        "health_timeout": 60,
    }
    section.update(overrides)
    return section


def write_config(data_dir: Path, section: dict[str, Any]) -> Path:
    """config/rustaid.toml with an [updates] table (values: str, int, bool, lists)."""

    def toml(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return repr(value)
        if isinstance(value, list):
            return "[" + ", ".join(toml(v) for v in value) + "]"
        return json.dumps(value)

    path = data_dir / "config" / "rustaid.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["[updates]", *(f"{k} = {toml(v)}" for k, v in section.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of `size` (e.g. "2m") mounted on `path`, to fill up (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> Path:
    """Write a file in `path` until its file system is full."""
    filler = path / "filler"
    with filler.open("ab", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(bytes(1 << 16))
    return filler

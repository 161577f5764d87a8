"""Plugins get the daemon's typed, versioned API in startup()/shutdown(): a real
daemon, a drop-in plugin that uses every member of DaemonAPI version 1."""

from __future__ import annotations

import json
from pathlib import Path

import grpc

from rustaid import __version__
from rustaid.api.v1 import (
    common_pb2,
    generate_pb2,
    generate_pb2_grpc,
    plugins_pb2,
    plugins_pb2_grpc,
)
from rustaid.daemon_api import API_VERSION
from rustaid.testing.daemon import run_daemon
from tests.conftest import add_model

OBSERVER = """\
import json

from rustaid.daemon_api import DaemonAPI
from rustaid.hookspecs import hookimpl

seen = {"models": [], "requests": []}
stops = []


@hookimpl
def startup(daemon: DaemonAPI) -> None:
    seen["is_api"] = isinstance(daemon, DaemonAPI)
    seen["api_version"] = daemon.api_version
    seen["version"] = daemon.version
    seen["keep_alive_s"] = daemon.settings.keep_alive_s
    seen["known"] = sorted(m.id for m in daemon.models())
    stops.append(daemon.on_model_event(
        lambda e: seen["models"].append([e.type.value, e.model.id, e.reason])
    ))
    stops.append(daemon.on_request(
        lambda r: seen["requests"].append([r.model_id, r.stats.completion_tokens])
    ))
    seen["data_dir"] = str(daemon.data_dir)


@hookimpl
def shutdown(daemon: DaemonAPI) -> None:
    for stop in stops:
        stop()
    (daemon.data_dir / "observed.json").write_text(json.dumps(seen))
"""


def test_a_plugin_uses_the_daemon_api(tmp_path: Path, model_files: dict[str, Path]) -> None:
    add_model(tmp_path, model_files["tiny"])
    plugins = tmp_path / "plugins"
    plugins.mkdir(mode=0o755)
    (plugins / "observer.py").write_text(OBSERVER)
    config = tmp_path / "config" / "rustaid.toml"
    config.parent.mkdir(parents=True)
    config.write_text("keep_alive_s = 42\n")
    with run_daemon(tmp_path) as d, grpc.insecure_channel(d.address) as channel:
        generate = generate_pb2_grpc.GenerateServiceStub(channel)
        params = common_pb2.GenerationParams(max_tokens=2)
        generate.Generate(generate_pb2.GenerateRequest(model_id="tiny", prompt="hi", params=params))
    seen = json.loads((tmp_path / "observed.json").read_text())
    assert seen["is_api"] is True
    assert (seen["api_version"], seen["version"]) == (API_VERSION, __version__)
    assert seen["keep_alive_s"] == 42
    assert seen["data_dir"] == str(tmp_path.absolute())
    assert seen["requests"] == [["tiny", 2]]
    # Plugins start before the models folder is scanned: the model arrives as an event.
    assert seen["known"] == []
    assert ["added", "tiny", ""] in seen["models"]
    assert ["loaded", "tiny", ""] in seen["models"]
    assert seen["models"][-1] == ["unloaded", "tiny", "stopping"]


def _python_blocks(doc: Path, after: str) -> list[str]:
    text = doc.read_text().split(after, 1)[1]
    return [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]


def test_the_plugin_examples_in_the_docs_run(tmp_path: Path) -> None:
    doc = Path(__file__).parent.parent / "docs" / "plugins.md"
    word_count = _python_blocks(doc, "Save this as `word_count.py`")[0]
    listener = _python_blocks(doc, "### The daemon API")[0]
    plugins = tmp_path / "plugins"
    plugins.mkdir(mode=0o755)
    (plugins / "word_count.py").write_text(word_count)
    (plugins / "listener.py").write_text(listener)
    with run_daemon(tmp_path) as d, grpc.insecure_channel(d.address) as channel:
        found = plugins_pb2_grpc.PluginsServiceStub(channel).ListPlugins(
            plugins_pb2.ListPluginsRequest()
        )
        states = {p.id: p.state for p in found.plugins}
        assert states["word-count"] == plugins_pb2.PLUGIN_STATE_ACTIVE
        assert states["listener"] == plugins_pb2.PLUGIN_STATE_ACTIVE
    assert f"word-count ready in rustaid {__version__}" in d.stderr()


def test_version_1_keeps_its_members() -> None:
    """Within API_VERSION 1 members may be added, never removed or renamed: a plugin
    written against the first release of version 1 must keep working."""
    from rustaid.daemon_api import DaemonAPI, PluginHost

    first = {
        "api_version", "version", "settings", "data_dir", "models", "on_model_event",
        "on_request",
    }  # fmt: skip
    members = {name for name in vars(DaemonAPI) if not name.startswith("_")}
    assert API_VERSION == 1
    assert first <= members
    assert members <= set(vars(PluginHost))  # the daemon's host implements every one

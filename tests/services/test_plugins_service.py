"""PluginsService over gRPC: list, get, load a drop-in at runtime, unload, reload."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from rustaid.api.v1 import plugins_pb2
from rustaid.testing.daemon import run_daemon
from tests.conftest import Stubs
from tests.services.test_generate import error_of, field_violations

TOOL_PLUGIN = """
from rustaid.hookspecs import hookimpl
from rustaid.providers import PluginInfo, ResourceRequirements, Tool

PLUGIN = PluginInfo(name="greeter", version="{version}", description="says hi",
                    requirements=ResourceRequirements(min_memory_bytes=1024, thermal_impact=5))

class Greet(Tool):
    name = "greet{version}"
    description = "greets"
    parameters_schema = {{"type": "object"}}

    def run(self, arguments):
        return "hi"

@hookimpl
def register_tools(register):
    register(Greet())
"""

RAISING_PLUGIN = "raise RuntimeError('cannot find libfoo.so')\n"


@pytest.fixture(scope="module")
def plugged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stubs]:
    data_dir = tmp_path_factory.mktemp("plugged")
    plugins = data_dir / "plugins"
    plugins.mkdir(mode=0o755)
    (plugins / "broken.py").write_text(RAISING_PLUGIN)
    with run_daemon(data_dir) as daemon:
        stubs = Stubs(daemon)
        yield stubs
        stubs.channel.close()


def plugins_by_id(stubs: Stubs) -> dict[str, plugins_pb2.Plugin]:
    return {p.id: p for p in stubs.plugins.ListPlugins(plugins_pb2.ListPluginsRequest()).plugins}


def test_builtin_llama_plugin_is_active_with_requirements(plugged: Stubs) -> None:
    llama = plugins_by_id(plugged)["llama.cpp"]
    assert llama.state == plugins_pb2.PLUGIN_STATE_ACTIVE
    assert llama.source == plugins_pb2.PLUGIN_SOURCE_BUILTIN
    assert "llm:llama.cpp" in llama.capabilities
    assert llama.requirements.min_memory_bytes > 0
    assert llama.requirements.thermal_impact > 0
    assert llama.loaded_time.seconds > 0


def test_plugin_raising_on_load_is_failed_and_daemon_serves(plugged: Stubs) -> None:
    broken = plugins_by_id(plugged)["broken"]
    assert broken.state == plugins_pb2.PLUGIN_STATE_FAILED
    assert "cannot find libfoo.so" in broken.error
    assert broken.source == plugins_pb2.PLUGIN_SOURCE_DROP_IN
    got = plugged.plugins.GetPlugin(plugins_pb2.GetPluginRequest(id="broken")).plugin
    assert got.error == broken.error


def test_load_unload_reload_a_drop_in_at_runtime(plugged: Stubs) -> None:
    path: Path = plugged.daemon.data_dir / "plugins" / "greeter.py"
    path.write_text(TOOL_PLUGIN.format(version="1"))
    loaded = plugged.plugins.LoadPlugin(plugins_pb2.LoadPluginRequest(id="greeter.py")).plugin
    assert loaded.id == "greeter"
    assert loaded.state == plugins_pb2.PLUGIN_STATE_ACTIVE
    assert loaded.capabilities == ["tool:greet1"]
    assert loaded.version == "1"
    assert loaded.requirements.min_memory_bytes == 1024

    path.write_text(TOOL_PLUGIN.format(version="2"))
    reloaded = plugged.plugins.ReloadPlugin(plugins_pb2.ReloadPluginRequest(id="greeter")).plugin
    assert reloaded.version == "2"
    assert reloaded.capabilities == ["tool:greet2"]

    unloaded = plugged.plugins.UnloadPlugin(plugins_pb2.UnloadPluginRequest(id="greeter")).plugin
    assert unloaded.state == plugins_pb2.PLUGIN_STATE_UNLOADED
    assert unloaded.capabilities == []
    again = plugged.plugins.LoadPlugin(plugins_pb2.LoadPluginRequest(id="greeter")).plugin
    assert again.state == plugins_pb2.PLUGIN_STATE_ACTIVE


def test_writable_drop_in_is_refused(plugged: Stubs) -> None:
    path = plugged.daemon.data_dir / "plugins" / "unsafe.py"
    path.write_text(TOOL_PLUGIN.format(version="9"))
    path.chmod(0o666)
    record = plugged.plugins.LoadPlugin(plugins_pb2.LoadPluginRequest(id="unsafe.py")).plugin
    assert record.state == plugins_pb2.PLUGIN_STATE_FAILED
    assert "chmod" in record.error


def test_bad_plugin_requests(plugged: Stubs) -> None:
    p = plugged.plugins
    for call, code, field in (
        (
            lambda: p.GetPlugin(plugins_pb2.GetPluginRequest(id="")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "id",
        ),
        (
            lambda: p.GetPlugin(plugins_pb2.GetPluginRequest(id="nope")),
            grpc.StatusCode.NOT_FOUND,
            None,
        ),
        (
            lambda: p.LoadPlugin(plugins_pb2.LoadPluginRequest(id="")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "id",
        ),
        (
            lambda: p.LoadPlugin(plugins_pb2.LoadPluginRequest(id="missing.py")),
            grpc.StatusCode.NOT_FOUND,
            None,
        ),
        (
            lambda: p.LoadPlugin(plugins_pb2.LoadPluginRequest(id="../../etc/evil.py")),
            grpc.StatusCode.INVALID_ARGUMENT,
            None,
        ),
        (
            lambda: p.LoadPlugin(plugins_pb2.LoadPluginRequest(id="/etc/passwd")),
            grpc.StatusCode.INVALID_ARGUMENT,
            None,
        ),
        (
            lambda: p.LoadPlugin(plugins_pb2.LoadPluginRequest(id="llama.cpp")),
            grpc.StatusCode.ALREADY_EXISTS,
            None,
        ),
        (
            lambda: p.UnloadPlugin(plugins_pb2.UnloadPluginRequest(id="nope")),
            grpc.StatusCode.NOT_FOUND,
            None,
        ),
        (
            lambda: p.UnloadPlugin(plugins_pb2.UnloadPluginRequest(id="")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "id",
        ),
        (
            lambda: p.ReloadPlugin(plugins_pb2.ReloadPluginRequest(id="nope")),
            grpc.StatusCode.NOT_FOUND,
            None,
        ),
        (
            lambda: p.ReloadPlugin(plugins_pb2.ReloadPluginRequest(id="")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "id",
        ),
    ):
        err = error_of(call)
        assert err.code() == code, err.details()
        if field:
            assert field_violations(err) == [field]

"""Plugin manager: real plugin files in temporary folders, real imports, no mocks."""

from __future__ import annotations

import dataclasses
import os
import pwd
import shutil
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from textwrap import dedent

import pytest

from rustaid.config import Settings, load_settings
from rustaid.errors import AlreadyExists, InvalidArgument, NotFound, PreconditionFailed
from rustaid.plugins import (
    BUILTIN_PLUGINS,
    DROP_IN_MODULE_PREFIX,
    PluginConflict,
    PluginManager,
    PluginSource,
    PluginState,
)
from rustaid.providers import LLMProvider, Tool
from tests.accounts import temporary_accounts

FIXTURES = Path(__file__).parent / "plugins"
GOOD = "tests.plugins.good_plugin"

# A drop-in registering one tool; startup/shutdown are recorded on the daemon object.
# v1 and v2 of a plugin written from this template have the same size on purpose:
# reload must not be fooled by bytecode cached for a same-size file in the same second.
TOOL_PLUGIN = '''\
"""Drop-in {plugin_id}."""

from rustaid.hookspecs import hookimpl
from rustaid.providers import PluginInfo, Tool

PLUGIN = PluginInfo(name={plugin_id!r}, version={version!r})


class T(Tool):
    name = {tool!r}
    description = "test tool"
    parameters_schema = {{}}

    def run(self, arguments):
        return {version!r}


@hookimpl
def register_tools(register):
    register(T())


@hookimpl
def startup(daemon):
    daemon.events.append("startup:" + PLUGIN.name)


@hookimpl
def shutdown(daemon):
    daemon.events.append("shutdown:" + PLUGIN.name)
'''


class Daemon:
    """What plugins receive in startup(daemon) / shutdown(daemon)."""

    def __init__(self) -> None:
        self.events: list[str] = []


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = dataclasses.replace(
        load_settings(data_dir=tmp_path / "data", environ={}), entry_point_plugins=False
    )
    s.ensure_dirs()
    s.plugins_dir.chmod(0o755)
    return s


@pytest.fixture
def plugins_dir(settings: Settings) -> Path:
    return settings.plugins_dir


@pytest.fixture
def daemon() -> Daemon:
    return Daemon()


MakeManager = Callable[..., PluginManager]


@pytest.fixture
def make_manager(settings: Settings, daemon: Daemon) -> Iterator[MakeManager]:
    made: list[PluginManager] = []

    def make(
        builtins: Sequence[str] = (),
        on_change: Callable[[], None] | None = None,
        settings_: Settings | None = None,
    ) -> PluginManager:
        manager = PluginManager(
            settings_ or settings, builtins=builtins, daemon=daemon, on_change=on_change
        )
        made.append(manager)
        return manager

    yield make
    for manager in made:
        manager.stop()


def write(path: Path, source: str, mode: int = 0o644) -> Path:
    path.write_text(dedent(source), encoding="utf-8")
    path.chmod(mode)
    return path


def tool_plugin(folder: Path, filename: str, plugin_id: str, tool: str, version: str = "1") -> Path:
    return write(
        folder / filename, TOOL_PLUGIN.format(plugin_id=plugin_id, tool=tool, version=version)
    )


def copy_fixture(name: str, folder: Path) -> Path:
    src = FIXTURES / name
    dst = folder / name
    if src.is_dir():
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        dst.chmod(0o755)
        for path in dst.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
    else:
        shutil.copyfile(src, dst)
        dst.chmod(0o644)
    return dst


def ids(manager: PluginManager) -> list[str]:
    return [r.id for r in manager.list()]


# --- built-ins ------------------------------------------------------------------------


def test_default_builtins_name_the_llama_cpp_plugin() -> None:
    assert BUILTIN_PLUGINS[0] == "rustaid.builtin.llama_cpp"
    assert len(set(BUILTIN_PLUGINS)) == len(BUILTIN_PLUGINS)


def test_builtin_registered_like_any_plugin(make_manager: MakeManager, daemon: Daemon) -> None:
    manager = make_manager(builtins=(GOOD,))
    manager.start()

    record = manager.get("good")
    assert record.source is PluginSource.BUILTIN
    assert record.state is PluginState.ACTIVE
    assert record.name == "good"
    assert record.version == "1.2.3"
    assert record.description == "Fixture plugin for the plugin manager tests"
    assert record.capabilities == ["llm:null-llm", "tool:echo"]
    assert record.requirements.min_memory_bytes == 1024
    assert record.requirements.thermal_impact == 5
    assert record.error == ""
    assert record.path.endswith("good_plugin.py")
    assert record.loaded_at is not None
    assert ids(manager) == ["good"]

    tools = manager.tools()
    assert list(tools) == ["echo"]
    assert isinstance(tools["echo"], Tool)
    assert tools["echo"].run({"a": 1}) == {"a": 1}
    providers = manager.llm_providers()
    assert list(providers) == ["null-llm"]
    assert isinstance(providers["null-llm"], LLMProvider)
    assert manager.embedding_providers() == {}
    assert manager.vector_stores() == {}
    assert manager.document_parsers() == {}
    assert manager.resource_monitors() == {}
    assert daemon.events == ["startup:good"]

    manager.stop()
    assert daemon.events == ["startup:good", "shutdown:good"]
    assert manager.get("good").state is PluginState.UNLOADED
    assert manager.tools() == {}
    assert manager.llm_providers() == {}


def test_records_are_snapshots(make_manager: MakeManager) -> None:
    manager = make_manager(builtins=(GOOD,))
    manager.start()
    record = manager.get("good")
    record.capabilities.clear()
    record.state = PluginState.FAILED
    assert manager.get("good").capabilities == ["llm:null-llm", "tool:echo"]
    assert manager.get("good").state is PluginState.ACTIVE


def test_missing_builtin_fails_without_stopping_the_others(make_manager: MakeManager) -> None:
    manager = make_manager(builtins=("tests.plugins.does_not_exist", GOOD))
    manager.start()

    missing = manager.get("tests.plugins.does_not_exist")
    assert missing.state is PluginState.FAILED
    assert missing.error.startswith("ModuleNotFoundError: ")
    assert "tests.plugins.does_not_exist" in missing.error
    assert manager.get("good").state is PluginState.ACTIVE


def test_reload_builtin_module(make_manager: MakeManager, daemon: Daemon) -> None:
    manager = make_manager(builtins=(GOOD,))
    manager.start()
    record = manager.reload("good")
    assert record.state is PluginState.ACTIVE
    assert record.capabilities == ["llm:null-llm", "tool:echo"]
    assert daemon.events == ["startup:good", "shutdown:good", "startup:good"]
    # The registry holds the objects of the reloaded code.
    assert type(manager.tools()["echo"]) is sys.modules[GOOD].EchoTool


# --- drop-ins -------------------------------------------------------------------------


def test_drop_in_file_and_package(
    make_manager: MakeManager, plugins_dir: Path, daemon: Daemon
) -> None:
    copy_fixture("pkg_plugin", plugins_dir)
    tool_plugin(plugins_dir, "calc.py", "calc", "add")
    manager = make_manager()
    manager.start()

    assert ids(manager) == ["calc", "pkg"]
    calc = manager.get("calc")
    assert calc.source is PluginSource.DROP_IN
    assert calc.state is PluginState.ACTIVE
    assert calc.capabilities == ["tool:add"]
    assert calc.path == str(plugins_dir / "calc.py")
    assert calc.description == "Drop-in calc."

    pkg = manager.get("pkg")
    assert pkg.state is PluginState.ACTIVE
    assert pkg.version == "0.1"
    assert pkg.capabilities == ["tool:upper"]
    assert pkg.path == str(plugins_dir / "pkg_plugin")

    tools = manager.tools()
    assert sorted(tools) == ["add", "upper"]
    assert tools["upper"].run({"text": "hi"}) == "HI"
    # Imported under private names: no clash with installed modules.
    assert type(tools["upper"]).__module__ == f"{DROP_IN_MODULE_PREFIX}pkg_plugin.tools"
    assert type(tools["add"]).__module__ == f"{DROP_IN_MODULE_PREFIX}calc"
    assert "calc" not in sys.modules
    assert daemon.events == ["startup:calc"]


def test_ignored_entries_in_plugins_folder(make_manager: MakeManager, plugins_dir: Path) -> None:
    tool_plugin(plugins_dir, "_private.py", "private", "p1")
    tool_plugin(plugins_dir, ".hidden.py", "hidden", "p2")
    write(plugins_dir / "module.wasm", "not python")
    write(plugins_dir / "notes.txt", "not a plugin")
    (plugins_dir / "data").mkdir(mode=0o755)
    tool_plugin(plugins_dir / "data", "inner.py", "inner", "p3")
    manager = make_manager()
    manager.start()
    assert manager.list() == []


def test_drop_in_without_plugin_info_is_named_after_its_file(
    make_manager: MakeManager, plugins_dir: Path
) -> None:
    write(
        plugins_dir / "plain.py",
        '''\
        """Plain plugin without metadata.

        More text.
        """
        ''',
    )
    manager = make_manager()
    manager.start()
    record = manager.get("plain")
    assert record.state is PluginState.ACTIVE
    assert record.version == "0"
    assert record.description == "Plain plugin without metadata."
    assert record.capabilities == []


def test_import_error_marks_plugin_failed_and_others_keep_running(
    make_manager: MakeManager, plugins_dir: Path
) -> None:
    copy_fixture("raising_plugin.py", plugins_dir)
    tool_plugin(plugins_dir, "calc.py", "calc", "add")
    manager = make_manager(builtins=(GOOD,))
    manager.start()

    failed = manager.get("raising_plugin")
    assert failed.state is PluginState.FAILED
    assert failed.error == "RuntimeError: boom at import"
    assert failed.capabilities == []
    assert failed.loaded_at is None
    assert f"{DROP_IN_MODULE_PREFIX}raising_plugin" not in sys.modules
    assert manager.get("calc").state is PluginState.ACTIVE
    assert manager.get("good").state is PluginState.ACTIVE
    assert sorted(manager.tools()) == ["add", "echo"]


def test_startup_error_marks_plugin_failed_and_drops_its_capabilities(
    make_manager: MakeManager, plugins_dir: Path
) -> None:
    write(
        plugins_dir / "grumpy.py",
        """\
        from rustaid.hookspecs import hookimpl
        from rustaid.providers import Tool


        class T(Tool):
            name = "grumpy-tool"
            description = ""
            parameters_schema = {}

            def run(self, arguments):
                return None


        @hookimpl
        def register_tools(register):
            register(T())


        @hookimpl
        def startup(daemon):
            raise ValueError("no device")
        """,
    )
    tool_plugin(plugins_dir, "calc.py", "calc", "add")
    manager = make_manager()
    manager.start()

    grumpy = manager.get("grumpy")
    assert grumpy.state is PluginState.FAILED
    assert grumpy.error == "ValueError: no device"
    assert grumpy.capabilities == []
    assert "grumpy-tool" not in manager.tools()
    assert manager.get("calc").state is PluginState.ACTIVE


@pytest.mark.parametrize(
    ("source", "error_start", "error_part"),
    [
        pytest.param(
            """\
            from rustaid.hookspecs import hookimpl
            from rustaid.providers import Tool


            class T(Tool):
                name = "half"
                description = ""
                parameters_schema = {}

                def run(self, arguments):
                    return None


            @hookimpl
            def register_tools(register):
                register(T())
                raise KeyError("second tool")
            """,
            "KeyError: ",
            "second tool",
            id="raises-in-register-hook",
        ),
        pytest.param(
            """\
            from rustaid.hookspecs import hookimpl


            @hookimpl
            def register_tools(register, extra):
                pass
            """,
            "PluginValidationError: ",
            "extra",
            id="wrong-hook-signature",
        ),
        pytest.param(
            """\
            from rustaid.hookspecs import hookimpl


            @hookimpl
            def register_tool(register):
                pass
            """,
            "PluginValidationError: ",
            "unknown hook 'register_tool'",
            id="unknown-hook",
        ),
        pytest.param(
            """\
            from rustaid.hookspecs import hookimpl


            @hookimpl
            def register_tools(register):
                register(object())
            """,
            "TypeError: ",
            "Tool",
            id="registers-wrong-type",
        ),
        pytest.param(
            """\
            import sys

            sys.exit(3)
            """,
            "SystemExit: ",
            "3",
            id="exits-at-import",
        ),
        pytest.param(
            """\
            PLUGIN = "not plugin info"
            """,
            "TypeError: ",
            "PluginInfo",
            id="bad-plugin-info",
        ),
    ],
)
def test_broken_plugins_fail_cleanly(
    make_manager: MakeManager,
    plugins_dir: Path,
    source: str,
    error_start: str,
    error_part: str,
) -> None:
    write(plugins_dir / "broken.py", source)
    manager = make_manager(builtins=(GOOD,))
    manager.start()

    broken = manager.get("broken")
    assert broken.state is PluginState.FAILED
    assert broken.error.startswith(error_start)
    assert error_part in broken.error
    assert broken.capabilities == []
    assert sorted(manager.tools()) == ["echo"]
    # The same manager can still load and unload the healthy plugin.
    assert manager.unload("good").state is PluginState.UNLOADED
    assert manager.load("good").state is PluginState.ACTIVE


def test_failed_plugin_loads_after_its_file_is_fixed(
    make_manager: MakeManager, plugins_dir: Path
) -> None:
    write(plugins_dir / "flaky.py", 'raise ImportError("missing dependency")\n')
    manager = make_manager()
    manager.start()
    assert manager.get("flaky").error == "ImportError: missing dependency"

    tool_plugin(plugins_dir, "flaky.py", "flaky", "fixed")
    record = manager.load("flaky")
    assert record.state is PluginState.ACTIVE
    assert record.error == ""
    assert list(manager.tools()) == ["fixed"]


# --- unload / load / reload -----------------------------------------------------------


def test_unload_calls_shutdown_and_drops_capabilities(
    make_manager: MakeManager, plugins_dir: Path, daemon: Daemon
) -> None:
    tool_plugin(plugins_dir, "calc.py", "calc", "add")
    manager = make_manager()
    manager.start()
    assert list(manager.tools()) == ["add"]

    record = manager.unload("calc")
    assert record.state is PluginState.UNLOADED
    assert record.capabilities == []
    assert record.loaded_at is None
    assert manager.tools() == {}
    assert daemon.events == ["startup:calc", "shutdown:calc"]

    with pytest.raises(PreconditionFailed, match="not active"):
        manager.unload("calc")

    record = manager.load("calc")
    assert record.state is PluginState.ACTIVE
    assert record.capabilities == ["tool:add"]
    assert list(manager.tools()) == ["add"]
    assert daemon.events == ["startup:calc", "shutdown:calc", "startup:calc"]

    with pytest.raises(AlreadyExists, match="already active"):
        manager.load("calc")


def test_reload_picks_up_a_changed_file(
    make_manager: MakeManager,
    plugins_dir: Path,
    daemon: Daemon,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # as on a real device
    path = tool_plugin(plugins_dir, "calc.py", "calc", "v1tool", version="1")
    manager = make_manager()
    manager.start()
    assert manager.get("calc").version == "1"
    assert manager.tools()["v1tool"].run({}) == "1"

    before = path.stat()
    tool_plugin(plugins_dir, "calc.py", "calc", "v2tool", version="2")
    # An edit within the same second with the same size: cached bytecode would look
    # valid, so drop-ins must be compiled from source.
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size

    record = manager.reload("calc")
    assert record.state is PluginState.ACTIVE
    assert record.version == "2"
    assert record.capabilities == ["tool:v2tool"]
    assert list(manager.tools()) == ["v2tool"]
    assert manager.tools()["v2tool"].run({}) == "2"
    assert daemon.events == ["startup:calc", "shutdown:calc", "startup:calc"]


def test_reload_package_rereads_its_submodules(
    make_manager: MakeManager, plugins_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    pkg = copy_fixture("pkg_plugin", plugins_dir)
    manager = make_manager()
    manager.start()
    assert manager.tools()["upper"].run({"text": "Hi"}) == "HI"
    assert not (pkg / "__pycache__").exists()  # drop-ins are never byte-compiled

    tools_py = pkg / "tools.py"
    before = tools_py.stat()
    tools_py.write_text(tools_py.read_text().replace(".upper()", ".lower()"))
    os.utime(tools_py, ns=(before.st_atime_ns, before.st_mtime_ns))
    manager.reload("pkg")
    assert manager.tools()["upper"].run({"text": "Hi"}) == "hi"


def test_reload_with_a_new_id_renames_the_plugin(
    make_manager: MakeManager, plugins_dir: Path
) -> None:
    tool_plugin(plugins_dir, "calc.py", "calc", "add")
    manager = make_manager()
    manager.start()
    tool_plugin(plugins_dir, "calc.py", "calculator", "add")
    record = manager.reload("calc")
    assert record.id == "calculator"
    assert record.state is PluginState.ACTIVE
    assert ids(manager) == ["calculator"]
    with pytest.raises(NotFound):
        manager.get("calc")


def test_reload_of_a_deleted_file_fails(make_manager: MakeManager, plugins_dir: Path) -> None:
    path = tool_plugin(plugins_dir, "calc.py", "calc", "add")
    manager = make_manager()
    manager.start()
    path.unlink()
    record = manager.reload("calc")
    assert record.state is PluginState.FAILED
    assert record.error.startswith("FileNotFoundError: ")
    assert manager.tools() == {}


def test_load_by_file_or_folder_name_after_start(
    make_manager: MakeManager, plugins_dir: Path, daemon: Daemon
) -> None:
    manager = make_manager(builtins=(GOOD,))
    manager.start()

    tool_plugin(plugins_dir, "late.py", "late-plugin", "late-tool")
    record = manager.load("late.py")
    assert record.id == "late-plugin"
    assert record.source is PluginSource.DROP_IN
    assert record.state is PluginState.ACTIVE
    assert "late-tool" in manager.tools()

    tool_plugin(plugins_dir, "later.py", "later", "later-tool")
    assert manager.load("later").state is PluginState.ACTIVE  # stem of later.py

    copy_fixture("pkg_plugin", plugins_dir)
    assert manager.load("pkg_plugin").id == "pkg"
    assert ids(manager) == ["good", "late-plugin", "later", "pkg"]
    assert sorted(manager.tools()) == ["echo", "late-tool", "later-tool", "upper"]

    # The same file again, by file name or by id: already active.
    with pytest.raises(AlreadyExists):
        manager.load("late.py")
    with pytest.raises(AlreadyExists):
        manager.load("pkg_plugin")
    assert daemon.events == ["startup:good", "startup:late-plugin", "startup:later"]


def test_unknown_plugin_is_not_found(make_manager: MakeManager) -> None:
    manager = make_manager(builtins=(GOOD,))
    manager.start()
    with pytest.raises(NotFound, match=r"no plugin with id 'nope'.*known plugins: good"):
        manager.get("nope")
    with pytest.raises(NotFound, match="nope"):
        manager.load("nope")
    with pytest.raises(NotFound, match="nope"):
        manager.unload("nope")
    with pytest.raises(NotFound, match="nope"):
        manager.reload("nope")


@pytest.mark.parametrize(
    "name", ["../evil.py", "../evil", "sub/evil.py", "..", "", ".hidden.py", "_private.py"]
)
def test_load_rejects_paths_outside_the_plugins_folder(
    make_manager: MakeManager, plugins_dir: Path, name: str
) -> None:
    tool_plugin(plugins_dir.parent, "evil.py", "evil", "evil-tool")
    (plugins_dir / "sub").mkdir(mode=0o755)
    tool_plugin(plugins_dir / "sub", "evil.py", "evil", "evil-tool")
    manager = make_manager()
    manager.start()
    with pytest.raises(InvalidArgument):
        manager.load(name)
    assert manager.list() == []


def test_load_rejects_absolute_paths(make_manager: MakeManager, plugins_dir: Path) -> None:
    path = tool_plugin(plugins_dir, "calc.py", "calc", "add")
    manager = make_manager()
    with pytest.raises(InvalidArgument):
        manager.load(str(path))
    assert manager.list() == []


def test_load_rejects_non_plugins(make_manager: MakeManager, plugins_dir: Path) -> None:
    write(plugins_dir / "module.wasm", "")
    write(plugins_dir / "notes.txt", "")
    (plugins_dir / "nopkg").mkdir(mode=0o755)
    manager = make_manager()
    for name in ("module.wasm", "notes.txt", "nopkg"):
        with pytest.raises(InvalidArgument):
            manager.load(name)


def test_load_works_before_start_and_without_start(
    make_manager: MakeManager, plugins_dir: Path
) -> None:
    tool_plugin(plugins_dir, "calc.py", "calc", "add")
    manager = make_manager()
    assert manager.load("calc.py").state is PluginState.ACTIVE
    with pytest.raises(PreconditionFailed):
        manager.start()


# --- drop-in security -----------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666])
def test_group_or_world_writable_drop_in_is_refused(
    make_manager: MakeManager, plugins_dir: Path, mode: int
) -> None:
    path = tool_plugin(plugins_dir, "calc.py", "calc", "add")
    path.chmod(mode)
    tool_plugin(plugins_dir, "safe.py", "safe", "safe-tool")
    manager = make_manager()
    manager.start()

    refused = manager.get("calc")
    assert refused.state is PluginState.FAILED
    assert refused.error.startswith("PermissionDenied: ")
    assert f"chmod go-w {path}" in refused.error
    assert manager.get("safe").state is PluginState.ACTIVE
    assert list(manager.tools()) == ["safe-tool"]
    assert f"{DROP_IN_MODULE_PREFIX}calc" not in sys.modules

    # Once fixed, it loads.
    path.chmod(0o644)
    assert manager.load("calc").state is PluginState.ACTIVE


def test_writable_plugins_folder_refuses_every_drop_in(
    make_manager: MakeManager, plugins_dir: Path
) -> None:
    tool_plugin(plugins_dir, "calc.py", "calc", "add")
    plugins_dir.chmod(0o777)
    manager = make_manager(builtins=(GOOD,))
    manager.start()
    record = manager.get("calc")
    assert record.state is PluginState.FAILED
    assert f"chmod go-w {plugins_dir}" in record.error
    assert manager.get("good").state is PluginState.ACTIVE


def test_writable_file_inside_a_package_is_refused(
    make_manager: MakeManager, plugins_dir: Path
) -> None:
    pkg = copy_fixture("pkg_plugin", plugins_dir)
    (pkg / "tools.py").chmod(0o666)
    manager = make_manager()
    manager.start()
    record = manager.get("pkg_plugin")
    assert record.state is PluginState.FAILED
    assert f"chmod go-w {pkg / 'tools.py'}" in record.error


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_drop_in_owned_by_another_user_is_refused(
    make_manager: MakeManager, plugins_dir: Path
) -> None:
    path = tool_plugin(plugins_dir, "calc.py", "calc", "add")
    os.chown(path, 65534, -1)
    manager = make_manager()
    manager.start()
    record = manager.get("calc")
    assert record.state is PluginState.FAILED
    assert "owned by uid 65534" in record.error
    assert "chown" in record.error


@pytest.mark.skipif(os.geteuid() != 0, reason="creating a user needs root")
def test_linked_folder_inside_a_package_is_refused(
    make_manager: MakeManager, plugins_dir: Path, tmp_path: Path
) -> None:
    """A root-owned folder elsewhere holding another user's module, linked into a
    package: the walk of the package does not enter the link, so it must refuse it."""
    with temporary_accounts() as accounts:
        accounts.user("rustaid-t-other")
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir(mode=0o755)
        theirs = elsewhere / "tools.py"
        shutil.copyfile(FIXTURES / "pkg_plugin" / "tools.py", theirs)
        theirs.chmod(0o644)
        os.chown(theirs, pwd.getpwnam("rustaid-t-other").pw_uid, -1)
        pkg = copy_fixture("pkg_plugin", plugins_dir)
        (pkg / "tools.py").unlink()
        (pkg / "sub").symlink_to(elsewhere, target_is_directory=True)
        init = pkg / "__init__.py"
        init.write_text(init.read_text().replace("from .tools import", "from .sub.tools import"))
        manager = make_manager()
        manager.start()
        record = manager.get("pkg_plugin")
        assert record.state is PluginState.FAILED
        assert f"{pkg / 'sub'} is a symbolic link" in record.error
        assert "replace it with the files themselves" in record.error
        assert f"{DROP_IN_MODULE_PREFIX}pkg_plugin.sub.tools" not in sys.modules


# --- conflicts ------------------------------------------------------------------------


def test_duplicate_ids_at_start_fail_loudly(
    make_manager: MakeManager, plugins_dir: Path, daemon: Daemon
) -> None:
    first = tool_plugin(plugins_dir, "one.py", "same", "t1")
    second = tool_plugin(plugins_dir, "two.py", "same", "t2")
    manager = make_manager()
    with pytest.raises(PluginConflict) as info:
        manager.start()
    message = str(info.value)
    assert "duplicate plugin id 'same'" in message
    assert str(first) in message
    assert str(second) in message
    assert manager.list() == []
    assert manager.tools() == {}
    assert daemon.events == []


def test_drop_in_reusing_a_builtin_id_fails_at_start(
    make_manager: MakeManager, plugins_dir: Path
) -> None:
    path = tool_plugin(plugins_dir, "impostor.py", "good", "t1")
    manager = make_manager(builtins=(GOOD,))
    with pytest.raises(PluginConflict) as info:
        manager.start()
    assert GOOD in str(info.value)
    assert str(path) in str(info.value)


def test_duplicate_provider_name_at_start_fails_loudly(
    make_manager: MakeManager, plugins_dir: Path, daemon: Daemon
) -> None:
    path = tool_plugin(plugins_dir, "copycat.py", "copycat", "echo")
    manager = make_manager(builtins=(GOOD,))
    with pytest.raises(PluginConflict, match="tool 'echo'") as info:
        manager.start()
    assert str(path) in str(info.value)
    assert manager.list() == []
    assert daemon.events == []
    # Nothing was left registered: a clean start without the copycat works.
    path.unlink()
    manager.start()
    assert manager.get("good").state is PluginState.ACTIVE


def test_duplicate_provider_name_at_runtime_fails_the_newcomer(
    make_manager: MakeManager, plugins_dir: Path
) -> None:
    manager = make_manager(builtins=(GOOD,))
    manager.start()
    good_echo = manager.tools()["echo"]

    tool_plugin(plugins_dir, "copycat.py", "copycat", "echo")
    record = manager.load("copycat.py")
    assert record.state is PluginState.FAILED
    assert record.error.startswith("PluginConflict: ")
    assert "'echo'" in record.error
    assert "'good'" in record.error
    assert manager.tools()["echo"] is good_echo

    # Once the other plugin is gone, the newcomer can take the name.
    manager.unload("good")
    assert manager.load("copycat").state is PluginState.ACTIVE
    assert manager.get("good").state is PluginState.UNLOADED
    assert manager.load("good").state is PluginState.FAILED


def test_duplicate_id_at_runtime_is_refused(make_manager: MakeManager, plugins_dir: Path) -> None:
    manager = make_manager(builtins=(GOOD,))
    manager.start()
    tool_plugin(plugins_dir, "impostor.py", "good", "other")
    with pytest.raises(AlreadyExists, match="'good'"):
        manager.load("impostor.py")
    assert ids(manager) == ["good"]
    assert sorted(manager.tools()) == ["echo"]


# --- whole-set behaviour --------------------------------------------------------------


def test_stop_runs_shutdown_in_reverse_order(
    make_manager: MakeManager, plugins_dir: Path, daemon: Daemon
) -> None:
    tool_plugin(plugins_dir, "a.py", "a", "ta")
    tool_plugin(plugins_dir, "b.py", "b", "tb")
    manager = make_manager(builtins=(GOOD,))
    manager.start()
    manager.stop()
    assert daemon.events == [
        "startup:good",
        "startup:a",
        "startup:b",
        "shutdown:b",
        "shutdown:a",
        "shutdown:good",
    ]
    assert {r.state for r in manager.list()} == {PluginState.UNLOADED}


def test_on_change_called_after_each_state_change(
    make_manager: MakeManager, plugins_dir: Path
) -> None:
    calls: list[list[str]] = []
    manager: PluginManager

    def on_change() -> None:
        # Called outside the lock with the new state visible.
        calls.append([f"{r.id}={r.state}" for r in manager.list()])

    tool_plugin(plugins_dir, "calc.py", "calc", "add")
    manager = make_manager(on_change=on_change)
    manager.start()
    manager.unload("calc")
    manager.load("calc")
    manager.reload("calc")
    manager.stop()
    assert calls == [
        ["calc=active"],
        ["calc=unloaded"],
        ["calc=active"],
        ["calc=active"],
        ["calc=unloaded"],
    ]


def test_on_change_errors_do_not_break_the_manager(make_manager: MakeManager) -> None:
    def on_change() -> None:
        raise RuntimeError("listener bug")

    manager = make_manager(builtins=(GOOD,), on_change=on_change)
    manager.start()
    assert manager.get("good").state is PluginState.ACTIVE


def test_entry_point_plugins(
    make_manager: MakeManager,
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    site = tmp_path / "site"
    dist_info = site / "rustaid_demo_plugin-4.5.6.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: rustaid-demo-plugin\nVersion: 4.5.6\n"
        "Summary: Demo plugin from an installed distribution\n"
    )
    (dist_info / "entry_points.txt").write_text("[rustaid]\ndemo = rustaid_demo_ep_module\n")
    # No PLUGIN: the id is the entry point's name, the version the distribution's.
    write(
        site / "rustaid_demo_ep_module.py",
        """\
        from rustaid.hookspecs import hookimpl
        from rustaid.providers import Tool


        class T(Tool):
            name = "demo-tool"
            description = ""
            parameters_schema = {}

            def run(self, arguments):
                return None


        @hookimpl
        def register_tools(register):
            register(T())
        """,
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "rustaid_demo_ep_module", raising=False)
    try:
        manager = make_manager(settings_=dataclasses.replace(settings, entry_point_plugins=True))
        manager.start()
        record = manager.get("demo")
        assert record.source is PluginSource.ENTRY_POINT
        assert record.state is PluginState.ACTIVE
        assert record.version == "4.5.6"
        assert record.description == "Demo plugin from an installed distribution"
        assert record.capabilities == ["tool:demo-tool"]
        assert record.path == str(site / "rustaid_demo_ep_module.py")
        assert manager.reload("demo").state is PluginState.ACTIVE

        # Disabled in the settings: not discovered.
        quiet = make_manager()
        quiet.start()
        assert quiet.list() == []
    finally:
        sys.modules.pop("rustaid_demo_ep_module", None)


def test_concurrent_readers_and_writers(make_manager: MakeManager, plugins_dir: Path) -> None:
    tool_plugin(plugins_dir, "calc.py", "calc", "add")
    manager = make_manager(builtins=(GOOD,))
    manager.start()
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                assert "echo" in manager.tools()
                assert {r.id for r in manager.list()} == {"good", "calc"}
        except BaseException as exc:
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(4)]
    for t in readers:
        t.start()
    try:
        for _ in range(20):
            manager.unload("calc")
            manager.load("calc")
            manager.reload("calc")
    finally:
        stop.set()
        for t in readers:
            t.join()
    assert errors == []
    assert manager.get("calc").state is PluginState.ACTIVE


ENGINE_PLUGIN = """\
from rustaid.hookspecs import hookimpl
from rustaid.providers import SimpleLLM


class Engine(SimpleLLM):
    name = "odd"
    suffixes = {suffixes}
    folder_markers = {markers}

    def generate(self, model, prompt, params):
        yield "x"


@hookimpl
def register_llm_providers(register):
    register(Engine())
"""


@pytest.mark.parametrize(
    ("suffixes", "markers", "error"),
    [
        ('(".chain", ".chain2")', "()", ""),
        ('(".bin",)', '("model.bin",)', ""),
        ('(".tar.gz",)', "()", "Engine.suffixes must be a tuple"),
        ('".chain"', "()", "Engine.suffixes must be a tuple of lower-case suffixes"),
        ('("chain",)', "()", "like (\".gguf\",); got ('chain',)"),
        ('(".Chain",)', "()", "Engine.suffixes must be a tuple"),
        ("(1,)", "()", "Engine.suffixes must be a tuple"),
        ("()", '("a/model.onnx",)', "Engine.folder_markers must be a tuple of file names"),
        ("()", '("",)', "Engine.folder_markers must be a tuple of file names"),
    ],
)
def test_an_engine_declaring_malformed_formats_fails_saying_what_to_fix(
    make_manager: MakeManager, plugins_dir: Path, suffixes: str, markers: str, error: str
) -> None:
    write(plugins_dir / "odd.py", ENGINE_PLUGIN.format(suffixes=suffixes, markers=markers))
    manager = make_manager()
    manager.start()
    record = manager.get("odd")
    if not error:
        assert record.state is PluginState.ACTIVE, record.error
        assert record.capabilities == ["llm:odd"]
        return
    assert record.state is PluginState.FAILED
    assert record.error.startswith("ValueError: register_llm_providers: Engine.")
    assert error in record.error
    assert manager.llm_providers() == {}

"""The D-Bus service's life in the daemon: which bus, no bus, a taken name, shutdown,
the signals other subsystems emit, and the pieces (options, errors, conversion)."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from dbus_next.errors import DBusError
from dbus_next.signature import Variant

from rustaid import errors
from rustaid.config import Settings
from rustaid.core import caller as core_caller
from rustaid.core.scheduler import Priority
from rustaid.dbus import convert
from rustaid.dbus.errors import ALL_NAMES, NAMES, error_name
from rustaid.dbus.interface import BUS_NAME, OBJECT_PATH
from rustaid.dbus.options import OPTIONS, generation_request
from rustaid.dbus.service import DBusConfig, bus_address, dbus_config
from rustaid.power.manager import ResourceManager
from rustaid.power.profiles import ProfileParameters, parse_profile_name
from rustaid.power.snapshot import PowerProfile
from rustaid.testing.daemon import isolated_settings, run_daemon, running_daemon
from rustaid.testing.dbus import PrivateBus
from tests.conftest import add_model
from tests.dbus.conftest import Client, run_tool


def write_config(data_dir: Path, text: str) -> None:
    (data_dir / "config").mkdir(parents=True, exist_ok=True)
    (data_dir / "config" / "rustaid.toml").write_text(text)


def settings_on(bus: PrivateBus, data_dir: Path) -> Settings:
    write_config(data_dir, f'[dbus]\naddress = "{bus.address}"\n')
    return isolated_settings(data_dir)


# -- configuration ------------------------------------------------------------------------


def test_bus_follows_the_mode_and_the_environment(tmp_path: Path) -> None:
    user = isolated_settings(tmp_path / "u")
    assert dbus_config(user) == DBusConfig(enabled=True, bus="session", address="")
    system = dataclasses.replace(user, system=True)
    assert dbus_config(system).bus == "system"
    env = {"DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/x", "DBUS_SESSION_BUS_ADDRESS": "unix:path=/y"}
    assert bus_address(dbus_config(system), env) == "unix:path=/x"
    assert bus_address(dbus_config(system), {}) == "unix:path=/run/dbus/system_bus_socket"
    assert bus_address(dbus_config(user), env) == "unix:path=/y"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "bus").touch()
    assert bus_address(dbus_config(user), {"XDG_RUNTIME_DIR": str(tmp_path / "run")}) == (
        f"unix:path={tmp_path}/run/bus"
    )
    with pytest.raises(errors.Unavailable, match="no session bus"):
        bus_address(dbus_config(user), {})


@pytest.mark.parametrize(
    ("toml", "field"),
    [
        ("[dbus]\nbus = 'desktop'\n", "dbus.bus"),
        ("[dbus]\nenabled = 'yes'\n", "dbus.enabled"),
        ("[dbus]\naddress = 5\n", "dbus.address"),
        ("[dbus]\nadress = 'unix:path=/x'\n", "dbus.adress"),
        ("dbus = 1\n", "dbus"),
    ],
)
def test_bad_dbus_settings_are_rejected(tmp_path: Path, toml: str, field: str) -> None:
    write_config(tmp_path, toml)
    with pytest.raises(errors.InvalidArgument) as e:
        dbus_config(isolated_settings(tmp_path))
    assert e.value.field == field
    assert field in e.value.message


def test_bad_dbus_settings_stop_the_daemon_with_a_message(tmp_path: Path) -> None:
    write_config(tmp_path, "[dbus]\nbus = 'desktop'\n")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "rustaid",
            "serve",
            "--user",
            "--data-dir",
            str(tmp_path),
            "--listen",
            f"unix://{tmp_path}/s.sock",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1
    assert "dbus.bus must be 'system' or 'session'" in r.stderr


# -- degrading gracefully -------------------------------------------------------------


def test_no_bus_logs_a_warning_and_grpc_still_serves(tmp_path: Path) -> None:
    env = {"DBUS_SESSION_BUS_ADDRESS": f"unix:path={tmp_path}/nobody-listens"}
    with run_daemon(tmp_path, env=env) as d:
        assert d.proc.poll() is None
    log = d.stderr()
    assert "WARNING rustaid.dbus.service: D-Bus API not available on the session bus" in log
    assert d.proc.returncode == 0


def test_disabled_in_the_settings(tmp_path: Path, session_bus: PrivateBus) -> None:
    write_config(tmp_path, "[dbus]\nenabled = false\n")
    with run_daemon(tmp_path, env=session_bus.env()):
        r = run_tool(session_bus, "busctl", f"--address={session_bus.address}", "status", BUS_NAME)
        assert r.returncode != 0
    assert "D-Bus API disabled" in (tmp_path / "daemon.log").read_text()


def test_a_second_daemon_leaves_the_name_to_the_first(
    tmp_path: Path, session_bus: PrivateBus
) -> None:
    with (
        run_daemon(tmp_path / "a", env=session_bus.env()) as first,
        run_daemon(tmp_path / "b", env=session_bus.env()) as second,
    ):
        assert "owned by another process" in second.stderr()
        r = run_tool(session_bus, "busctl", f"--address={session_bus.address}", "status", BUS_NAME)
        assert f"PID={first.proc.pid}" in r.stdout


def test_start_up_stays_fast_with_the_bus(tmp_path: Path, session_bus: PrivateBus) -> None:
    with run_daemon(tmp_path, env=session_bus.env()) as d:
        pass
    ready = [line for line in d.stderr().splitlines() if " ready in " in line]
    ms = float(ready[0].split(" ready in ")[1].split(" ms")[0])
    assert ms < 1000, ready


# -- shutdown -------------------------------------------------------------------------


async def test_stop_fails_running_generations_with_unavailable(
    tmp_path: Path, model_files: dict[str, Path], session_bus: PrivateBus, connect: Any
) -> None:
    add_model(tmp_path, model_files["slow"])
    env = {**session_bus.env(), "RUSTAID_SHUTDOWN_GRACE_S": "0.3"}
    with run_daemon(tmp_path, env=env) as d:
        client: Client = await connect()
        await client.match(
            f"type='signal',interface='org.freedesktop.DBus.Properties',path='{OBJECT_PATH}'"
        )
        options = {"model": Variant("s", "slow"), "max_tokens": Variant("u", 8000)}
        (gen_id,) = await client.call("StartGeneration", "sa{sv}", "Once upon a time", options)
        await client.next_signal("Token")
        d.proc.send_signal(signal.SIGTERM)
        _, end = await client.until_finished(gen_id)
        assert end.member == "Failed"
        assert end.body[1:] == [
            "org.rustai.Daemon1.Error.Unavailable",
            "the daemon is shutting down",
        ]
        assert await asyncio.to_thread(d.proc.wait, 30) == 0
    states = [
        m.body[1]["State"].value
        for m in client.history
        if m.member == "PropertiesChanged" and "State" in m.body[1]
    ]
    assert "stopping" in states


# -- in the daemon's own event loop: who the core sees calling --------------------------


async def test_calls_run_as_their_dbus_caller(
    tmp_path: Path, session_bus: PrivateBus, connect: Any, model_files: dict[str, Path]
) -> None:
    """rustaid.core.caller is set for every method call, and for the generation that
    StartGeneration leaves running after its reply: the core keys per-client limits on
    it. (The engine's generate is wrapped to note the caller, then runs as usual.)"""
    add_model(tmp_path, model_files["tiny"])
    async with running_daemon(settings_on(session_bus, tmp_path)) as daemon:
        engine = daemon.engine  # type: ignore[attr-defined]
        seen: list[core_caller.Caller] = []
        generate = engine.generate

        def noting_generate(request: Any) -> Any:
            seen.append(core_caller.current())
            return generate(request)

        engine.generate = noting_generate
        first, second = await connect(), await connect()
        options = {"model": Variant("s", "tiny"), "max_tokens": Variant("u", 2)}
        await first.call("Generate", "sa{sv}", "Hi", options)
        (gen_id,) = await second.call("StartGeneration", "sa{sv}", "Hi", options)
        _, end = await second.until_finished(gen_id)
        assert end.member == "Finished"
        uid = os.getuid()
        assert seen == [
            core_caller.Caller(f"dbus:{first.name}", "dbus", uid, admin=True),
            core_caller.Caller(f"dbus:{second.name}", "dbus", uid, admin=True),
        ]
        # Outside of a call, the daemon's own work stays internal.
        assert core_caller.current() is core_caller.INTERNAL


async def test_each_connection_has_its_own_request_limit(
    tmp_path: Path, model_files: dict[str, Path], session_bus: PrivateBus, connect: Any
) -> None:
    """max_requests_per_client counts a D-Bus connection's calls and the generations it
    started, like a gRPC client's requests; other connections are not affected."""
    add_model(tmp_path, model_files["slow"])
    env = {**session_bus.env(), "RUSTAID_MAX_REQUESTS_PER_CLIENT": "1"}
    with run_daemon(tmp_path, env=env):
        busy, other = await connect(), await connect()
        long = {"model": Variant("s", "slow"), "max_tokens": Variant("u", 4000)}
        (gen_id,) = await busy.call("StartGeneration", "sa{sv}", "Once upon a time", long)
        await busy.next_signal("Token")
        short = {"model": Variant("s", "slow"), "max_tokens": Variant("u", 2)}
        with pytest.raises(DBusError) as e:
            await busy.call("Generate", "sa{sv}", "Hi", short)
        assert e.value.type == "org.rustai.Daemon1.Error.ResourceExhausted"
        assert f"caller 'dbus:{busy.name}' already has 1 requests in flight" in e.value.text
        with pytest.raises(DBusError) as e:  # Search counts too (refused before the RAG core)
            await busy.call("Search", "ssu", "docs", "x", 1)
        assert e.value.type == "org.rustai.Daemon1.Error.ResourceExhausted"
        with pytest.raises(DBusError) as e:  # another connection: past admission
            await other.call("Search", "ssu", "docs", "x", 1)
        assert e.value.type == "org.rustai.Daemon1.Error.NotFound"
        await busy.call("Cancel", "s", gen_id)
        _, end = await busy.until_finished(gen_id)
        assert end.member == "Failed"
        with pytest.raises(DBusError) as e:  # its place is free again
            await busy.call("Search", "ssu", "docs", "x", 1)
        assert e.value.type == "org.rustai.Daemon1.Error.NotFound"


async def test_reserved_methods_check_the_caller_on_the_system_bus(
    tmp_path: Path, session_bus: PrivateBus, connect: Any
) -> None:
    """With bus = "system" the daemon asks the bus for the caller's uid: root (these
    tests' user) and the daemon's own user are admins and pass the check."""
    write_config(tmp_path, f'[dbus]\nbus = "system"\naddress = "{session_bus.address}"\n')
    async with running_daemon(isolated_settings(tmp_path)) as daemon:
        client: Client = await connect()
        await client.call("SetPowerProfile", "s", "performance")
        assert await client.prop("PowerProfile") == "performance"
        with pytest.raises(DBusError) as e:
            await client.call("CheckUpdates")  # past the check: no repository configured
        assert e.value.type == "org.rustai.Daemon1.Error.PreconditionFailed"
        who = await daemon.dbus._caller(client.name)  # type: ignore[attr-defined]
        assert (who.key, who.transport, who.uid) == (f"dbus:{client.name}", "dbus", os.getuid())
        assert who.admin  # the daemon's own user (and root)
        await client.call("SetPowerProfile", "s", "auto")
        assert daemon.resources.monitor.active_profile.source.value != "override"  # type: ignore[attr-defined]


# -- the pieces ---------------------------------------------------------------------------


def test_profile_names_and_clearing_are_checked_by_the_core(tmp_path: Path) -> None:
    """What SetPowerProfile (D-Bus) and ResourcesService.SetPowerProfile (gRPC) share."""
    assert parse_profile_name("power-saver") is PowerProfile.POWER_SAVER
    assert parse_profile_name("ultra_saver") is PowerProfile.ULTRA_SAVER
    assert parse_profile_name("auto") is None and parse_profile_name("") is None
    for bad in ("turbo", "Balanced", " balanced", "power saver"):
        with pytest.raises(errors.InvalidArgument, match="is not a power profile") as e:
            parse_profile_name(bad)
        assert e.value.field == "profile"
    resources = ResourceManager(isolated_settings(tmp_path))
    active = resources.set_power_profile(PowerProfile.ULTRA_SAVER)
    assert (active.profile, active.source.value) == (PowerProfile.ULTRA_SAVER, "override")
    custom = ProfileParameters(1, False, False, 32, 8, 512, True, False)
    with pytest.raises(errors.InvalidArgument, match="takes no custom parameters") as e:
        resources.set_power_profile(None, custom)
    assert e.value.field == "custom"
    assert resources.monitor.active_profile.profile is PowerProfile.ULTRA_SAVER  # unchanged
    assert resources.set_power_profile(None).source.value != "override"
    assert resources.set_power_profile(PowerProfile.CUSTOM, custom).parameters == custom


def test_every_domain_error_has_a_dbus_name() -> None:
    def subclasses(cls: type) -> set[type]:
        return {cls} | {s for c in cls.__subclasses__() for s in subclasses(c)}

    for cls in subclasses(errors.RustaidError) - {errors.RustaidError}:
        if cls.__module__ == "rustaid.errors":
            assert cls in NAMES, f"{cls.__name__} has no D-Bus error name"
    assert error_name(errors.ResourceExhausted("x")) == "org.rustai.Daemon1.Error.ResourceExhausted"
    assert error_name(errors.RustaidError("x")) == "org.rustai.Daemon1.Error.Failed"
    assert all(n.startswith("org.rustai.Daemon1.Error.") for n in ALL_NAMES)
    assert len(set(ALL_NAMES)) == len(ALL_NAMES)


def test_options_accept_every_integer_type_and_ints_for_numbers() -> None:
    for sig in "ynqiuxt":
        assert generation_request("x", {"max_tokens": Variant(sig, 5)}).params.max_tokens == 5
    r = generation_request("x", {"temperature": Variant("i", 1), "top_p": Variant("d", 0.5)})
    assert (r.params.temperature, r.params.top_p) == (1.0, 0.5)
    assert isinstance(r.params.temperature, float)
    r = generation_request(
        "x",
        {
            "model": Variant("s", "tiny"),
            "stop": Variant("as", ["\n"]),
            "seed": Variant("x", -1),
            "priority": Variant("s", "background"),
            "prefer_speed": Variant("b", True),
            "required_tags": Variant("as", ["fast"]),
            "max_latency_ms": Variant("u", 50),
            "grammar": Variant("s", "root ::= [a-z]+"),
        },
    )
    assert r.model_id == "tiny" and r.params.stop == ("\n",) and r.params.seed == -1
    assert r.priority is Priority.BACKGROUND
    assert r.selection.prefer_speed and r.selection.required_tags == ("fast",)
    assert r.selection.max_latency_ms == 50 and r.params.grammar


def test_options_reject_booleans_for_integers_and_unknown_names() -> None:
    with pytest.raises(errors.InvalidArgument, match="'max_tokens' must be an integer"):
        generation_request("x", {"max_tokens": Variant("b", True)})
    with pytest.raises(errors.InvalidArgument, match="unknown option 'maxTokens'") as e:
        generation_request("x", {"maxTokens": Variant("u", 1)})
    assert e.value.field == "options.maxTokens"
    assert set(OPTIONS) >= {"model", "max_tokens", "temperature", "stop", "priority"}


class Color(enum.StrEnum):
    RED = "red"


@dataclasses.dataclass
class Nested:
    name: str
    score: float
    tags: tuple[str, ...]
    extra: dict[str, Any]
    color: Color
    path: Path
    missing: str | None = None
    ok: bool = True


def test_records_become_variant_dictionaries() -> None:
    out = convert.record_to_dbus(
        Nested("a", 0.5, ("x", "y"), {"n": 3, "inner": {"b": False}}, Color.RED, Path("/m"))
    )
    assert {k: v.signature for k, v in out.items()} == {
        "name": "s",
        "score": "d",
        "tags": "as",
        "extra": "a{sv}",
        "color": "s",
        "path": "s",
        "ok": "b",
    }
    assert out["extra"].value["inner"].value["b"].value is False
    assert out["color"].value == "red" and "missing" not in out
    assert convert.to_variant([1, "a"]).signature == "av"  # type: ignore[union-attr]
    with pytest.raises(TypeError):
        convert.to_variant(object())


def test_nul_characters_never_reach_the_bus() -> None:
    body = ["a\x00b", {"k": Variant("s", "\x00")}, [Variant("as", ["x\x00"])], 3]
    assert convert.safe_body(body) == [
        "a\ufffdb",
        {"k": Variant("s", "\ufffd")},
        [Variant("as", ["x\ufffd"])],
        3,
    ]
    assert convert.to_variant("\x00").value == "\ufffd"  # type: ignore[union-attr]


def test_introspection_names_every_argument() -> None:
    from rustaid.dbus.interface import Daemon1

    data = Daemon1(None).introspect()  # type: ignore[arg-type]
    for member in [*data.methods, *data.signals]:
        for arg in [
            *getattr(member, "in_args", []),
            *getattr(member, "out_args", []),
            *getattr(member, "args", []),
        ]:
            assert arg.name, f"{member.name} has an unnamed argument"


SUBSYSTEMS = "rustaid.rag.manager, rustaid.power.manager, rustaid.updates.manager"


def test_startup_import_cost_is_small() -> None:
    code = (
        "import time; t = time.perf_counter(); import rustaid.dbus.service; "
        "print(time.perf_counter() - t)"
    )
    r = subprocess.run(
        # What the daemon has imported before it builds its D-Bus service: the cost
        # measured is the D-Bus layer's own (dbus-next and rustaid.dbus).
        [sys.executable, "-c", f"import rustaid.core.engine, {SUBSYSTEMS}; " + code],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert float(r.stdout) < 0.25, r.stdout
    time.sleep(0)


def test_search_mode_options() -> None:
    from rustaid.dbus.options import ask_request, search_options
    from rustaid.providers import SearchMode

    assert ask_request("c", "q", {"mode": Variant("s", "keyword")}).mode is SearchMode.KEYWORD
    assert ask_request("c", "q", {}).mode is None
    found = search_options({"mode": Variant("s", "hybrid"), "top_k": Variant("u", 7)})
    assert found.mode is SearchMode.HYBRID and found.top_k == 7
    with pytest.raises(errors.InvalidArgument, match="dense, keyword or hybrid"):
        search_options({"mode": Variant("s", "semantic")})
    with pytest.raises(errors.InvalidArgument, match="unknown option 'max_tokens'"):
        search_options({"max_tokens": Variant("u", 7)})

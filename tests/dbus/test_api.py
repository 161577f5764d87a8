"""org.rustai.Daemon1 on a real bus: every method, property, signal and error, called
with dbus-next, gdbus and busctl."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import grpc
import pytest
from dbus_next.errors import DBusError
from dbus_next.signature import Variant

from rustaid.api.v1 import common_pb2, generate_pb2, generate_pb2_grpc, models_pb2, models_pb2_grpc
from rustaid.dbus.interface import BUS_NAME, INTERFACE, OBJECT_PATH
from rustaid.testing.daemon import DaemonProcess
from rustaid.testing.dbus import PrivateBus
from tests.dbus.conftest import Client, need, run_tool

REPO = Path(__file__).resolve().parents[2]
GREEDY = {"temperature": Variant("d", 0.0), "seed": Variant("i", 7)}


def gdbus_call(bus: PrivateBus, method: str, *args: str) -> subprocess.CompletedProcess[str]:
    need("gdbus")
    return run_tool(
        bus,
        "gdbus",
        "call",
        "--session",
        "--dest",
        BUS_NAME,
        "--object-path",
        OBJECT_PATH,
        "--method",
        f"{INTERFACE}.{method}",
        *args,
    )


def busctl(bus: PrivateBus, *args: str) -> subprocess.CompletedProcess[str]:
    need("busctl")
    return run_tool(bus, "busctl", f"--address={bus.address}", *args)


async def error_of(coro: Any) -> DBusError:
    with pytest.raises(DBusError) as e:
        await coro
    return e.value


# -- introspection ----------------------------------------------------------------------


def _interface_xml(xml: str) -> ET.Element:
    node = ET.fromstring(xml)
    (iface,) = [i for i in node.iter("interface") if i.get("name") == INTERFACE]
    return iface


def _shape(iface: ET.Element) -> list[tuple[str, str, tuple[tuple[str, str, str], ...]]]:
    """Members with their arguments (name, type, direction), order-independent."""
    out = []
    for member in iface:
        args = tuple(
            (a.get("name", ""), a.get("type", ""), a.get("direction", ""))
            for a in member.iter("arg")
        )
        out.append(
            (
                member.tag,
                member.get("name", ""),
                (*args, (member.get("type", ""), member.get("access", ""), "")),
            )
        )
    return sorted(out)


def test_gdbus_introspection_matches_the_documented_xml(
    served: DaemonProcess, session_bus: PrivateBus
) -> None:
    need("gdbus")
    r = run_tool(
        session_bus,
        "gdbus",
        "introspect",
        "--session",
        "--xml",
        "--dest",
        BUS_NAME,
        "--object-path",
        OBJECT_PATH,
    )
    assert r.returncode == 0, r.stderr
    live = _interface_xml(r.stdout)
    doc = (REPO / "docs" / "dbus.md").read_text()
    block = re.search(r"```xml\n(.*?)```", doc, re.S)
    assert block, "docs/dbus.md has no ```xml block"
    assert _shape(_interface_xml(block.group(1))) == _shape(live), "docs/dbus.md is out of date"
    names = {m.get("name") for m in live}
    assert {
        "Generate",
        "Chat",
        "StartGeneration",
        "StartChat",
        "Cancel",
        "ListModels",
        "Search",
        "Ask",
        "SetPowerProfile",
        "CheckUpdates",
        "Token",
        "Finished",
        "Failed",
        "ModelsChanged",
        "UpdateAvailable",
        "UpdateApplied",
        "ResourceStateChanged",
        "Version",
        "State",
        "ActiveModels",
        "PowerProfile",
        "ThermalState",
        "OnBattery",
        "QueueLength",
    } <= names


def test_busctl_introspect_and_properties(served: DaemonProcess, session_bus: PrivateBus) -> None:
    r = busctl(session_bus, "introspect", BUS_NAME, OBJECT_PATH, INTERFACE)
    assert r.returncode == 0, r.stderr
    assert re.search(r"\.StartGeneration\s+method\s+sa\{sv\}\s+s", r.stdout)
    r = busctl(
        session_bus,
        "get-property",
        BUS_NAME,
        OBJECT_PATH,
        INTERFACE,
        "Version",
        "PowerProfile",
        "ThermalState",
        "OnBattery",
    )
    assert r.returncode == 0, r.stderr
    # A device without battery or thermal zones (the fake sysfs tree of `served`).
    assert r.stdout.split("\n")[:4] == ['s "0.1.0"', 's "balanced"', 's "nominal"', "b false"]


# -- properties ---------------------------------------------------------------------------


async def test_properties_get_all(served: DaemonProcess, client: Client) -> None:
    (props,) = await client.call(
        "GetAll", "s", INTERFACE, interface="org.freedesktop.DBus.Properties"
    )
    values = {k: v.value for k, v in props.items()}
    assert values["Version"] == "0.1.0"
    assert values["State"] in ("ready", "busy")
    assert isinstance(values["ActiveModels"], list)
    assert values["QueueLength"] == 0
    assert (values["PowerProfile"], values["ThermalState"], values["OnBattery"]) == (
        "balanced",
        "nominal",
        False,
    )


async def test_properties_are_read_only(served: DaemonProcess, client: Client) -> None:
    e = await error_of(
        client.call(
            "Set",
            "ssv",
            INTERFACE,
            "State",
            Variant("s", "busy"),
            interface="org.freedesktop.DBus.Properties",
        )
    )
    assert e.type == "org.freedesktop.DBus.Error.PropertyReadOnly"
    assert await client.prop("State") != "busy"


async def test_properties_changed_follows_generation_and_loading(
    served: DaemonProcess, connect: Any
) -> None:
    watcher, caller = await connect(), await connect()
    await watcher.match(
        f"type='signal',interface='org.freedesktop.DBus.Properties',path='{OBJECT_PATH}'"
    )
    # Concurrent requests on one model: one runs, the others wait in its queue.
    calls = [
        caller.call(
            "Generate",
            "sa{sv}",
            "Once upon",
            {"model": Variant("s", "slow"), "max_tokens": Variant("u", 24)},
        )
        for _ in range(3)
    ]
    results = await asyncio.gather(*calls)
    assert all(r[0] for r in results)
    seen: dict[str, list[Any]] = {}
    while not watcher.signals.empty():
        msg = watcher.signals.get_nowait()
        if msg.member == "PropertiesChanged":
            assert msg.body[0] == INTERFACE
            for k, v in msg.body[1].items():
                seen.setdefault(k, []).append(v.value)
    assert "busy" in seen["State"] and seen["State"][-1] == "ready"
    assert max(seen["QueueLength"]) >= 1 and seen["QueueLength"][-1] == 0
    assert "slow" in await caller.prop("ActiveModels")


# -- ListModels -----------------------------------------------------------------------


def test_list_models_with_gdbus(served: DaemonProcess, session_bus: PrivateBus) -> None:
    r = gdbus_call(session_bus, "ListModels")
    assert r.returncode == 0, r.stderr
    assert "'id': <'tiny'>" in r.stdout and "'id': <'slow'>" in r.stdout
    assert "'kind': <'llm'>" in r.stdout


async def test_list_models_reports_broken_files(served: DaemonProcess, client: Client) -> None:
    (models,) = await client.call("ListModels")
    by_id = {m["id"].value: m for m in models}
    assert {"tiny", "slow", "truncated"} <= set(by_id)
    assert by_id["truncated"]["state"].value == "error"
    assert "truncated" in by_id["truncated"]["error"].value
    assert by_id["tiny"]["architecture"].value == "llama"
    assert by_id["tiny"]["size_bytes"].signature == "t"


# -- Generate -------------------------------------------------------------------------


async def test_generate_matches_grpc_generate(served: DaemonProcess, client: Client) -> None:
    """Same request over both edges, same engine: the same greedy text."""
    options = {"model": Variant("s", "tiny"), "max_tokens": Variant("u", 12), **GREEDY}
    (text,) = await client.call("Generate", "sa{sv}", "The cat", options)
    assert text
    with grpc.insecure_channel(served.address) as channel:
        stub = generate_pb2_grpc.GenerateServiceStub(channel)
        params = common_pb2.GenerationParams(max_tokens=12, temperature=0.0, seed=7)
        reply = stub.Generate(
            generate_pb2.GenerateRequest(model_id="tiny", prompt="The cat", params=params)
        )
    assert reply.text == text


NUL_PROMPT = "what user said to the assistant: can you answer this question about the rust daemon"


async def test_generated_nul_characters_do_not_break_the_connection(
    served: DaemonProcess, client: Client
) -> None:
    """The tiny model generates U+0000 for this prompt; D-Bus strings cannot carry it (a
    bus drops a connection that sends one), so it arrives as U+FFFD, and the daemon
    stays on the bus."""
    options = {"model": Variant("s", "tiny"), "max_tokens": Variant("u", 100), **GREEDY}
    with grpc.insecure_channel(served.address) as channel:
        stub = generate_pb2_grpc.GenerateServiceStub(channel)
        params = common_pb2.GenerationParams(max_tokens=100, temperature=0.0, seed=7)
        grpc_text = stub.Generate(
            generate_pb2.GenerateRequest(model_id="tiny", prompt=NUL_PROMPT, params=params)
        ).text
    assert "\x00" in grpc_text
    (text,) = await client.call("Generate", "sa{sv}", NUL_PROMPT, options)
    assert text == grpc_text.replace("\x00", "\ufffd")
    (gen_id,) = await client.call("StartGeneration", "sa{sv}", NUL_PROMPT, options)
    tokens, end = await client.until_finished(gen_id)
    assert end.member == "Finished" and "".join(tokens) == text
    assert await client.prop("State") in ("ready", "busy")  # still connected


def test_generate_with_gdbus_and_busctl(served: DaemonProcess, session_bus: PrivateBus) -> None:
    r = gdbus_call(
        session_bus,
        "Generate",
        "The cat",
        "{'model': <'tiny'>, 'max_tokens': <uint32 6>, 'temperature': <0.0>}",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("('") or r.stdout.startswith('("')
    r2 = busctl(
        session_bus,
        "--json=short",
        "call",
        BUS_NAME,
        OBJECT_PATH,
        INTERFACE,
        "Generate",
        "sa{sv}",
        "The cat",
        "3",
        "model",
        "s",
        "tiny",
        "max_tokens",
        "u",
        "6",
        "temperature",
        "d",
        "0",
    )
    assert r2.returncode == 0, r2.stderr
    text = json.loads(r2.stdout)["data"][0]
    assert text and text in r.stdout  # same greedy text from both tools


@pytest.mark.parametrize(
    ("options", "name", "words"),
    [
        ({"bogus": Variant("i", 1)}, "InvalidArgument", ["unknown option 'bogus'", "max_tokens"]),
        ({"max_tokens": Variant("s", "9")}, "InvalidArgument", ["'max_tokens'", "integer"]),
        ({"temperature": Variant("s", "hot")}, "InvalidArgument", ["'temperature'", "number"]),
        ({"stop": Variant("s", "x")}, "InvalidArgument", ["'stop'", "array of strings"]),
        ({"prefer_speed": Variant("i", 1)}, "InvalidArgument", ["'prefer_speed'", "boolean"]),
        ({"priority": Variant("s", "urgent")}, "InvalidArgument", ["interactive", "background"]),
        ({"max_tokens": Variant("u", 0)}, "InvalidArgument", ["max_tokens", "between 1"]),
        ({"temperature": Variant("d", -1.0)}, "InvalidArgument", ["temperature", ">= 0"]),
        ({"model": Variant("s", "nope")}, "NotFound", ["nope", "tiny"]),
        ({"model": Variant("s", "truncated")}, "PreconditionFailed", ["truncated"]),
    ],
)
async def test_generate_bad_options(
    served: DaemonProcess,
    client: Client,
    options: dict[str, Variant],
    name: str,
    words: list[str],
) -> None:
    e = await error_of(client.call("Generate", "sa{sv}", "Hello", options))
    assert e.type == f"org.rustai.Daemon1.Error.{name}"
    for word in words:
        assert word in e.text


async def test_generate_empty_and_huge_prompts(served: DaemonProcess, client: Client) -> None:
    e = await error_of(client.call("Generate", "sa{sv}", "", {}))
    assert (e.type, "prompt is empty" in e.text) == (
        "org.rustai.Daemon1.Error.InvalidArgument",
        True,
    )
    # 200 KB: more tokens than the model's context (512).
    e = await error_of(
        client.call("Generate", "sa{sv}", "word " * 40_000, {"model": Variant("s", "tiny")})
    )
    assert e.type == "org.rustai.Daemon1.Error.InvalidArgument"
    assert "context" in e.text


def test_wrong_argument_types(served: DaemonProcess, session_bus: PrivateBus) -> None:
    r = busctl(session_bus, "call", BUS_NAME, OBJECT_PATH, INTERFACE, "Generate", "si", "x", "3")
    assert r.returncode != 0
    assert "takes arguments of type (sa{sv}), not (si)" in r.stderr
    r = busctl(session_bus, "call", BUS_NAME, OBJECT_PATH, INTERFACE, "Cancel", "i", "42")
    assert "takes arguments of type (s), not (i)" in r.stderr
    need("gdbus")  # gdbus names the error
    r = run_tool(
        session_bus,
        "gdbus",
        "call",
        "--session",
        "--dest",
        BUS_NAME,
        "--object-path",
        OBJECT_PATH,
        "--method",
        f"{INTERFACE}.ListModels",
        "extra",
    )
    assert "org.freedesktop.DBus.Error.InvalidArgs" in r.stderr
    r = busctl(session_bus, "call", BUS_NAME, OBJECT_PATH, INTERFACE, "NoSuchMethod")
    assert r.returncode != 0 and "NoSuchMethod" in r.stderr


# -- StartGeneration, signals, Cancel ---------------------------------------------------


async def test_start_generation_streams_tokens_to_the_caller_only(
    served: DaemonProcess, connect: Any
) -> None:
    caller, other = await connect(), await connect()
    # Another connection listening to every signal of the interface sees none of them.
    await other.match(f"type='signal',interface='{INTERFACE}'")
    options = {"model": Variant("s", "tiny"), "max_tokens": Variant("u", 16), **GREEDY}
    (gen_id,) = await caller.call("StartGeneration", "sa{sv}", "The cat", options)
    tokens, end = await caller.until_finished(gen_id)
    assert end.member == "Finished"
    assert end.destination == caller.name
    stats = {k: v.value for k, v in end.body[1].items()}
    assert stats["model_id"] == "tiny"
    assert stats["finish_reason"] == "length" and stats["completion_tokens"] == 16
    assert stats["total_ms"] > 0
    (text,) = await caller.call("Generate", "sa{sv}", "The cat", options)
    assert "".join(tokens) == text
    await asyncio.sleep(0.2)
    leaked = [m for m in other.history if m.interface == INTERFACE]
    assert not [m for m in leaked if m.member in ("Token", "Finished", "Failed")]


async def test_start_generation_errors(served: DaemonProcess, client: Client) -> None:
    e = await error_of(
        client.call("StartGeneration", "sa{sv}", "Hi", {"model": Variant("s", "missing")})
    )
    assert e.type == "org.rustai.Daemon1.Error.NotFound"
    e = await error_of(client.call("StartGeneration", "sa{sv}", "Hi", {"top_k": Variant("d", 1.5)}))
    assert e.type == "org.rustai.Daemon1.Error.InvalidArgument" and "'top_k'" in e.text
    # A failure after the id was handed out arrives as Failed.
    (gen_id,) = await client.call(
        "StartGeneration", "sa{sv}", "word " * 40_000, {"model": Variant("s", "tiny")}
    )
    _, end = await client.until_finished(gen_id)
    assert end.member == "Failed"
    assert end.body[1] == "org.rustai.Daemon1.Error.InvalidArgument" and "context" in end.body[2]


async def test_cancel_only_by_the_caller(served: DaemonProcess, connect: Any) -> None:
    owner, intruder = await connect(), await connect()
    options = {"model": Variant("s", "slow"), "max_tokens": Variant("u", 2000)}
    (gen_id,) = await owner.call("StartGeneration", "sa{sv}", "Once upon a time", options)
    await owner.next_signal("Token")
    e = await error_of(intruder.call("Cancel", "s", gen_id))
    assert e.type == "org.rustai.Daemon1.Error.PermissionDenied"
    assert "another connection" in e.text
    e = await error_of(intruder.call("Cancel", "s", "0123456789abcdef"))
    assert e.type == "org.rustai.Daemon1.Error.NotFound"
    t0 = time.monotonic()
    await owner.call("Cancel", "s", gen_id)
    _, end = await owner.until_finished(gen_id)
    assert end.member == "Failed"
    assert end.body[1:] == ["org.rustai.Daemon1.Error.Cancelled", "cancelled by the caller"]
    assert time.monotonic() - t0 < 5
    e = await error_of(owner.call("Cancel", "s", gen_id))  # already over
    assert e.type == "org.rustai.Daemon1.Error.NotFound"
    # The model is free again: a new request is not stuck behind the cancelled one.
    (text,) = await owner.call(
        "Generate", "sa{sv}", "Hi", {"model": Variant("s", "slow"), "max_tokens": Variant("u", 4)}
    )
    assert text


async def _wait_state(client: Client, state: str, wait_s: float = 10.0) -> None:
    deadline = time.monotonic() + wait_s
    while await client.prop("State") != state:
        assert time.monotonic() < deadline, f"State did not become {state!r}"
        await asyncio.sleep(0.05)


async def test_caller_leaving_stops_its_generation(served: DaemonProcess, connect: Any) -> None:
    leaver, observer = await connect(), await connect()
    options = {"model": Variant("s", "slow"), "max_tokens": Variant("u", 4000)}
    (_gen_id,) = await leaver.call("StartGeneration", "sa{sv}", "Once upon a time", options)
    await leaver.next_signal("Token")
    assert await observer.prop("State") == "busy"
    name = leaver.name
    leaver.bus.disconnect()
    await _wait_state(observer, "ready")
    served.read_notifications()
    assert f"D-Bus caller {name} left" in served.stderr()


def test_blocking_generate_stops_when_the_caller_is_killed(
    served: DaemonProcess, session_bus: PrivateBus
) -> None:
    need("gdbus")
    proc = subprocess.Popen(
        [
            "gdbus",
            "call",
            "--session",
            "--dest",
            BUS_NAME,
            "--object-path",
            OBJECT_PATH,
            "--method",
            f"{INTERFACE}.Generate",
            "Once upon a time",
            "{'model': <'slow'>, 'max_tokens': <uint32 4000>}",
        ],
        env={**__import__("os").environ, **session_bus.env()},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while (
            "busy"
            not in busctl(
                session_bus, "get-property", BUS_NAME, OBJECT_PATH, INTERFACE, "State"
            ).stdout
        ):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while (
            "ready"
            not in busctl(
                session_bus, "get-property", BUS_NAME, OBJECT_PATH, INTERFACE, "State"
            ).stdout
        ):
            assert time.monotonic() < deadline, "the generation kept running"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


# -- ModelsChanged, and the subsystem methods without data ------------------------------


async def test_models_changed_on_load_and_unload(served: DaemonProcess, client: Client) -> None:
    await client.match(f"type='signal',interface='{INTERFACE}',member='ModelsChanged'")
    with grpc.insecure_channel(served.address) as channel:
        models = models_pb2_grpc.ModelsServiceStub(channel)
        models.LoadModel(models_pb2.LoadModelRequest(id="tiny"))
        models.UnloadModel(models_pb2.UnloadModelRequest(id="tiny"))
        assert "tiny" not in await client.prop("ActiveModels")
        models.LoadModel(models_pb2.LoadModelRequest(id="tiny"))
    changes: list[list[str]] = []
    while (
        ["loaded", "tiny"] not in changes[changes.index(["unloaded", "tiny"]) :]
        if ["unloaded", "tiny"] in changes
        else True
    ):
        changes.append((await client.next_signal("ModelsChanged")).body)
    assert "tiny" in await client.prop("ActiveModels")


async def test_models_changed_when_a_file_appears(
    served: DaemonProcess, client: Client, model_files: dict[str, Path]
) -> None:
    await client.match(f"type='signal',interface='{INTERFACE}',member='ModelsChanged'")
    (served.data_dir / "models" / "added.gguf").write_bytes(model_files["tiny"].read_bytes())
    served.proc.send_signal(signal.SIGHUP)  # a rescan (the folder watcher may be first)
    while True:
        body = (await client.next_signal("ModelsChanged")).body
        if body == ["added", "added"]:
            break


@pytest.mark.parametrize(
    ("method", "signature", "args", "name", "words"),
    [
        ("Search", "ssu", ["docs", "what is rustaid", 3], "NotFound", ["'docs'", "create it"]),
        ("Search", "ssu", ["../etc", "x", 3], "InvalidArgument", ["not a valid collection"]),
        ("Ask", "ssa{sv}", ["docs", "what is rustaid", {}], "NotFound", ["'docs'"]),
        ("Ask", "ssa{sv}", ["docs", "q", {"top_k": Variant("s", "3")}], "InvalidArgument",
         ["'top_k'", "integer"]),
        ("CheckUpdates", "", [], "PreconditionFailed", ["not configured", "[updates]"]),
        ("SetPowerProfile", "s", ["turbo"], "InvalidArgument", ["'turbo'", "power_saver", "auto"]),
    ],
)  # fmt: skip
async def test_subsystem_methods_without_data_answer_named_errors(
    served: DaemonProcess,
    client: Client,
    method: str,
    signature: str,
    args: list[Any],
    name: str,
    words: list[str],
) -> None:
    """This daemon has no collection and no update repository: each method says what is
    missing with a named error (tests/dbus/test_subsystems.py has them with data)."""
    e = await error_of(client.call(method, signature, *args))
    assert e.type == f"org.rustai.Daemon1.Error.{name}"
    for word in words:
        assert word in e.text

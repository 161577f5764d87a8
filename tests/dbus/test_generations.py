"""Chat, StartChat, bounded answers and detached generations (objects of their own
listed by the ObjectManager) on a real bus, with dbus-next, gdbus and busctl."""

from __future__ import annotations

import asyncio
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from dbus_next.errors import DBusError
from dbus_next.signature import Variant

from rustaid.dbus.generations import GENERATION_INTERFACE, GENERATIONS_PATH
from rustaid.dbus.interface import BUS_NAME, CALL_MAX_TOKENS, OBJECT_PATH
from rustaid.testing.daemon import DaemonProcess
from rustaid.testing.dbus import PrivateBus
from tests.dbus.conftest import Client, need, run_tool
from tests.dbus.test_api import _shape, error_of

REPO = Path(__file__).resolve().parents[2]
GREEDY = {"temperature": Variant("d", 0.0), "seed": Variant("i", 7)}
MANAGER = "org.freedesktop.DBus.ObjectManager"
PROPS = "org.freedesktop.DBus.Properties"


async def gen_call(client: Client, gen_id: str, member: str) -> list[Any]:
    return await _call(client, f"{GENERATIONS_PATH}/{gen_id}", GENERATION_INTERFACE, member)


async def gen_prop(client: Client, gen_id: str, name: str) -> Any:
    path = f"{GENERATIONS_PATH}/{gen_id}"
    (v,) = await _call(client, path, PROPS, "Get", "ss", GENERATION_INTERFACE, name)
    return v.value


async def _call(
    client: Client, path: str, interface: str, member: str, sig: str = "", *body: Any
) -> list[Any]:
    from dbus_next.constants import MessageType
    from dbus_next.message import Message

    reply = await client.bus.call(
        Message(
            destination=BUS_NAME,
            path=path,
            interface=interface,
            member=member,
            signature=sig,
            body=list(body),
        )
    )
    assert reply is not None
    if reply.message_type is MessageType.ERROR:
        raise DBusError(reply.error_name, reply.body[0] if reply.body else "")
    return list(reply.body)


async def wait_ended(client: Client, gen_id: str, wait_s: float = 60.0) -> str:
    deadline = time.monotonic() + wait_s
    while (state := await gen_prop(client, gen_id, "State")) == "running":
        assert time.monotonic() < deadline, f"generation {gen_id} did not end"
        await asyncio.sleep(0.05)
    return str(state)


async def test_chat_answers_and_keeps_a_session(served: DaemonProcess, client: Client) -> None:
    options = {"model": Variant("s", "tiny"), "max_tokens": Variant("u", 8), **GREEDY}
    (text,) = await client.call("Chat", "a(ss)a{sv}", [["user", "Hi"]], options)
    assert text
    # StartChat streams the same reply.
    (gen_id,) = await client.call("StartChat", "a(ss)a{sv}", [["user", "Hi"]], options)
    tokens, end = await client.until_finished(gen_id)
    assert end.member == "Finished" and "".join(tokens) == text
    # A session: the second turn sees the first (its prompt is longer).
    session = {**options, "session_id": Variant("s", "s1")}
    sizes = []
    for _ in range(2):
        (gen_id,) = await client.call("StartChat", "a(ss)a{sv}", [["user", "Hi"]], session)
        _, end = await client.until_finished(gen_id)
        sizes.append(end.body[1]["prompt_tokens"].value)
    assert sizes[1] > sizes[0]
    # Detached, the same reply ends up in the object's Text.
    detached = {**options, "detach": Variant("b", True)}
    (gen_id,) = await client.call("StartChat", "a(ss)a{sv}", [["user", "Hi"]], detached)
    assert await gen_prop(client, gen_id, "Kind") == "chat"
    assert await wait_ended(client, gen_id) == "finished"
    assert await gen_prop(client, gen_id, "Text") == text


async def test_chat_bad_input_names_what_to_fix(served: DaemonProcess, client: Client) -> None:
    e = await error_of(client.call("Chat", "a(ss)a{sv}", [], {}))
    assert e.type == "org.rustai.Daemon1.Error.InvalidArgument" and "('user', 'Hi')" in e.text
    e = await error_of(client.call("Chat", "a(ss)a{sv}", [["robot", "Hi"]], {}))
    assert e.type == "org.rustai.Daemon1.Error.InvalidArgument"
    assert "messages[0]" in e.text and "user" in e.text
    e = await error_of(
        client.call("Chat", "a(ss)a{sv}", [["user", "Hi"]], {"x": Variant("b", True)})
    )
    assert "unknown option 'x'" in e.text and "session_id" in e.text
    # detach belongs to the Start methods only, and must be a boolean.
    e = await error_of(
        client.call("Chat", "a(ss)a{sv}", [["user", "Hi"]], {"detach": Variant("b", True)})
    )
    assert "unknown option 'detach'" in e.text
    e = await error_of(
        client.call("StartGeneration", "sa{sv}", "Hi", {"detach": Variant("s", "yes")})
    )
    assert e.type == "org.rustai.Daemon1.Error.InvalidArgument" and "'detach'" in e.text


async def test_calls_that_answer_at_the_end_are_bounded(
    served: DaemonProcess, client: Client
) -> None:
    """Without max_tokens, Generate stops after CALL_MAX_TOKENS: the reply comes within
    the bus' timeout (a started generation runs to default_max_tokens)."""
    options = {"model": Variant("s", "tiny"), **GREEDY}
    (text,) = await client.call("Generate", "sa{sv}", "The cat", options)
    (gen_id,) = await client.call("StartGeneration", "sa{sv}", "The cat", options)
    tokens, end = await client.until_finished(gen_id)
    assert end.body[1]["completion_tokens"].value > CALL_MAX_TOKENS
    (bounded_id,) = await client.call(
        "StartGeneration", "sa{sv}", "The cat", {**options, "max_tokens": Variant("u", 128)}
    )
    bounded, _ = await client.until_finished(bounded_id)
    assert text == "".join(bounded) != "".join(tokens)


async def test_detached_generation_outlives_its_caller(served: DaemonProcess, connect: Any) -> None:
    starter, watcher = await connect(), await connect()
    await watcher.match(f"type='signal',sender='{BUS_NAME}',path_namespace='{OBJECT_PATH}'")
    options = {
        "model": Variant("s", "slow"),
        "max_tokens": Variant("u", 24),
        "detach": Variant("b", True),
        **GREEDY,
    }
    (gen_id,) = await starter.call("StartGeneration", "sa{sv}", "Once upon a time", options)
    path = f"{GENERATIONS_PATH}/{gen_id}"
    starter.bus.disconnect()  # a one-shot caller: gdbus call exits here
    # The ObjectManager announced it, from its own path, and lists it.
    added = await watcher.next_signal("InterfacesAdded")
    assert added.path == OBJECT_PATH and added.interface == MANAGER
    assert added.body[0] == path and GENERATION_INTERFACE in added.body[1]
    (objects,) = await _call(watcher, OBJECT_PATH, MANAGER, "GetManagedObjects")
    assert objects[path][GENERATION_INTERFACE]["Id"].value == gen_id
    # Its signals are broadcast from its path; it runs to the end.
    tokens: list[str] = []
    async with asyncio.timeout(60):
        while True:
            msg = await watcher.signals.get()
            if msg.path != path or msg.interface != GENERATION_INTERFACE:
                continue
            if msg.member == "Token":
                tokens.append(msg.body[0])
            elif msg.member in ("Finished", "Failed"):
                break
    assert msg.member == "Finished", msg.body
    assert msg.body[0]["completion_tokens"].value == 24
    assert await wait_ended(watcher, gen_id) == "finished"
    assert await gen_prop(watcher, gen_id, "Text") == "".join(tokens)
    assert await gen_prop(watcher, gen_id, "Model") == "slow"
    assert await gen_prop(watcher, gen_id, "Kind") == "generate"
    # Cancelling an ended one says so; Release drops it (InterfacesRemoved).
    e = await error_of(gen_call(watcher, gen_id, "Cancel"))
    assert e.type == "org.rustai.Daemon1.Error.PreconditionFailed" and "Release" in e.text
    await gen_call(watcher, gen_id, "Release")
    removed = await watcher.next_signal("InterfacesRemoved")
    assert removed.body == [path, [GENERATION_INTERFACE]] and removed.path == OBJECT_PATH
    (objects,) = await _call(watcher, OBJECT_PATH, MANAGER, "GetManagedObjects")
    assert path not in objects
    e = await error_of(gen_prop(watcher, gen_id, "State"))
    assert e.type.startswith("org.freedesktop.DBus.Error.")


async def test_detached_generation_cancel(served: DaemonProcess, client: Client) -> None:
    options = {
        "model": Variant("s", "slow"),
        "max_tokens": Variant("u", 4000),
        "detach": Variant("b", True),
    }
    (gen_id,) = await client.call("StartGeneration", "sa{sv}", "Once upon a time", options)
    deadline = time.monotonic() + 30
    while not await gen_prop(client, gen_id, "Text"):  # it has started
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    await gen_call(client, gen_id, "Cancel")
    assert await wait_ended(client, gen_id, 10) == "cancelled"
    assert await gen_prop(client, gen_id, "Error") == "org.rustai.Daemon1.Error.Cancelled"
    await gen_call(client, gen_id, "Release")


def test_generation_object_introspection_matches_the_docs(
    served: DaemonProcess, session_bus: PrivateBus
) -> None:
    need("gdbus")
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
        "org.rustai.Daemon1.StartGeneration",
        "Hi",
        "{'model': <'tiny'>, 'max_tokens': <uint32 4>, 'detach': <true>}",
    )
    assert r.returncode == 0, r.stderr
    gen_id = r.stdout.split("'")[1]
    r = run_tool(
        session_bus,
        "gdbus",
        "introspect",
        "--session",
        "--xml",
        "--dest",
        BUS_NAME,
        "--object-path",
        f"{GENERATIONS_PATH}/{gen_id}",
    )
    assert r.returncode == 0, r.stderr
    (live,) = [
        i
        for i in ET.fromstring(r.stdout).iter("interface")
        if i.get("name") == GENERATION_INTERFACE
    ]
    blocks = re.findall(r"```xml\n(.*?)```", (REPO / "docs" / "dbus.md").read_text(), re.S)
    documented = [ET.fromstring(b) for b in blocks]
    (doc,) = [d for d in documented if d.get("name") == GENERATION_INTERFACE]
    assert _shape(doc) == _shape(live), "docs/dbus.md is out of date"
    # The manager object says it is one.
    r = run_tool(
        session_bus,
        "gdbus",
        "introspect",
        "--session",
        "--dest",
        BUS_NAME,
        "--object-path",
        OBJECT_PATH,
    )
    assert "generations" in r.stdout

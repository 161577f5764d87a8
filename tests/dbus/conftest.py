"""A real dbus-daemon (private session bus) and a real rustaid daemon on it, serving
synthetic llama.cpp models and reading a fake sysfs tree (a device without battery or
thermal zones: the same answers on every machine); clients are dbus-next, gdbus and
busctl."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from dbus_next.aio.message_bus import MessageBus
from dbus_next.constants import MessageType
from dbus_next.errors import DBusError
from dbus_next.message import Message

from rustaid.dbus.interface import BUS_NAME, INTERFACE, OBJECT_PATH
from rustaid.testing.daemon import DaemonProcess, run_daemon
from rustaid.testing.dbus import PrivateBus, private_bus
from tests.conftest import add_model
from tests.power.fakesys import FakeDevice


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (make system-deps installs it)")
    return path


@pytest.fixture(scope="package")
def session_bus() -> Iterator[PrivateBus]:
    need("dbus-daemon")
    with private_bus() as bus:
        yield bus


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
    model_files: dict[str, Path],
    session_bus: PrivateBus,
) -> Iterator[DaemonProcess]:
    """`rustaid serve` owning org.rustai.Daemon1 on the private session bus, with the
    models tiny, slow and a truncated (broken) one."""
    data_dir = tmp_path_factory.mktemp("dbus-daemon")
    add_model(data_dir, model_files["tiny"])
    add_model(data_dir, model_files["slow"])
    tiny = model_files["tiny"].read_bytes()
    truncated = data_dir / "models" / "truncated.gguf"
    truncated.write_bytes(tiny[: len(tiny) // 2])
    old = time.time() - 3600  # an aborted download lying there, not a file being copied
    os.utime(truncated, (old, old))
    write_config(data_dir, power_section(FakeDevice(data_dir / "device")))
    # One request at a time: the queue properties see requests waiting.
    with run_daemon(data_dir, env={**session_bus.env(), "RUSTAID_PARALLEL": "1"}) as daemon:
        yield daemon


def power_section(dev: FakeDevice, poll_s: float = 30.0) -> str:
    """[power] reading `dev` only (no system bus, udev or PSI trigger), polled every
    `poll_s` seconds."""
    return (
        f"[power]\n{dev.toml()}dbus = false\nudev = false\npsi_trigger = false\n"
        f"poll_idle_s = {poll_s}\npoll_active_s = {poll_s}\n"
    )


def write_config(data_dir: Path, text: str) -> None:
    (data_dir / "config").mkdir(parents=True, exist_ok=True)
    (data_dir / "config" / "rustaid.toml").write_text(text)


class Client:
    """A dbus-next connection to the private bus calling org.rustai.Daemon1."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus
        self.signals: asyncio.Queue[Message] = asyncio.Queue()
        self.history: list[Message] = []  # every signal received, in order
        bus.add_message_handler(self._on_message)

    def _on_message(self, msg: Message) -> bool:
        if msg.message_type is MessageType.SIGNAL:
            self.signals.put_nowait(msg)
            self.history.append(msg)
        return False

    @property
    def name(self) -> str:
        return str(self.bus.unique_name)

    async def call(
        self, member: str, signature: str = "", *body: Any, interface: str = INTERFACE
    ) -> list[Any]:
        """The reply's body; raises DBusError with the error name the daemon sent."""
        reply = await self.bus.call(
            Message(
                destination=BUS_NAME,
                path=OBJECT_PATH,
                interface=interface,
                member=member,
                signature=signature,
                body=list(body),
            )
        )
        assert reply is not None
        if reply.message_type is MessageType.ERROR:
            raise DBusError(reply.error_name, reply.body[0] if reply.body else "")
        return list(reply.body)

    async def prop(self, name: str) -> Any:
        (variant,) = await self.call(
            "Get", "ss", INTERFACE, name, interface="org.freedesktop.DBus.Properties"
        )
        return variant.value

    async def match(self, rule: str) -> None:
        reply = await self.bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="AddMatch",
                signature="s",
                body=[rule],
            )
        )
        assert reply is not None and reply.message_type is MessageType.METHOD_RETURN

    async def next_signal(self, member: str, wait_s: float = 30.0) -> Message:
        """The next signal named `member` (others received meanwhile are dropped)."""
        async with asyncio.timeout(wait_s):
            while True:
                msg = await self.signals.get()
                if msg.member == member:
                    return msg

    async def until_finished(self, gen_id: str, wait_s: float = 60.0) -> tuple[list[str], Message]:
        """Token texts of generation `gen_id`, then its Finished or Failed signal."""
        tokens: list[str] = []
        async with asyncio.timeout(wait_s):
            while True:
                msg = await self.signals.get()
                if msg.interface != INTERFACE or not msg.body or msg.body[0] != gen_id:
                    continue
                if msg.member == "Token":
                    tokens.append(msg.body[1])
                elif msg.member in ("Finished", "Failed"):
                    return tokens, msg


@pytest.fixture
async def connect(session_bus: PrivateBus) -> AsyncIterator[Any]:
    """connect() -> a new Client on the private bus (disconnected after the test)."""
    clients: list[Client] = []

    async def make() -> Client:
        bus = await MessageBus(bus_address=session_bus.address).connect()
        client = Client(bus)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.bus.disconnect()


@pytest.fixture
async def client(connect: Any) -> Client:
    c: Client = await connect()
    return c


def run_tool(bus: PrivateBus, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run gdbus/busctl against the private bus (as the session bus)."""
    env = {**os.environ, **bus.env()}
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)

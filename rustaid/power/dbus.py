"""A system-bus connection (dbus-next) that follows services through their signals.

Each `BusWatcher` names the services it follows. The client subscribes with explicit
match rules (not introspection, which some implementations get wrong), asks who owns
each name, lets the watcher read the current state, then only listens:
`PropertiesChanged` updates it, `NameOwnerChanged` says when a service leaves or comes
back. When the bus itself goes away, the client reconnects with backoff.

dbus-next is imported when the client starts, after the daemon is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

DBUS_NAME = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"
PROPERTIES = "org.freedesktop.DBus.Properties"
# Reconnect backoff, seconds.
FIRST_RETRY_S = 0.25
MAX_RETRY_S = 30.0
CALL_TIMEOUT_S = 5.0
MAX_REREADS = 5


def _close_socket(bus: Any) -> None:
    # dbus-next never closes its socket (nor the file object made from it) itself.
    for name in ("_stream", "_sock"):
        with contextlib.suppress(Exception):
            getattr(bus, name).close()


async def close_bus(bus: Any) -> None:
    """Disconnect and close the socket: dbus-next only shuts it down, which would leak
    a file descriptor per reconnect."""
    with contextlib.suppress(Exception):
        bus.disconnect()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(2.0):
            await bus.wait_for_disconnect()
    _close_socket(bus)


async def connect(address: str) -> Any:
    """A connected dbus-next MessageBus; no socket is left open when it fails."""
    from dbus_next.aio.message_bus import MessageBus

    class _MessageBus(MessageBus):
        def _setup_socket(self) -> None:
            try:
                super()._setup_socket()  # type: ignore[no-untyped-call]
            except BaseException:
                _close_socket(self)
                raise

    bus = _MessageBus(bus_address=address)
    try:
        return await bus.connect()
    except BaseException:
        _close_socket(bus)
        raise


class BusError(Exception):
    """A D-Bus call failed (error reply, timeout or no connection)."""


def signal_rule(sender: str, path: str) -> str:
    return (
        f"type='signal',sender='{sender}',interface='{PROPERTIES}',"
        f"member='PropertiesChanged',path='{path}'"
    )


def owner_rule(name: str) -> str:
    return (
        f"type='signal',sender='{DBUS_NAME}',interface='{DBUS_NAME}',"
        f"member='NameOwnerChanged',arg0='{name}'"
    )


def unwrap(value: Any) -> Any:
    """dbus-next Variants (possibly nested in lists/dicts) to plain Python values."""
    inner = getattr(value, "value", value) if type(value).__name__ == "Variant" else value
    if isinstance(inner, dict):
        return {k: unwrap(v) for k, v in inner.items()}
    if isinstance(inner, list):
        return [unwrap(v) for v in inner]
    return inner


class BusWatcher(ABC):
    """Follows one service (under one or more well-known names)."""

    # Well-known names, in order of preference.
    names: tuple[str, ...] = ()
    # Object paths whose PropertiesChanged signals matter, per name.
    paths: dict[str, tuple[str, ...]] = {}

    def __init__(self) -> None:
        self.client: SystemBusClient | None = None

    @abstractmethod
    async def appeared(self, name: str) -> None:
        """`name` has an owner (at start-up or later): read the current state."""

    @abstractmethod
    def vanished(self, name: str) -> None:
        """`name` lost its owner, or the bus went away."""

    @abstractmethod
    def properties_changed(
        self, name: str, path: str, interface: str, changed: dict[str, Any]
    ) -> None:
        """A PropertiesChanged signal from the owner of `name`."""


class SystemBusClient:
    def __init__(
        self,
        address: str,
        watchers: list[BusWatcher],
        on_status: Callable[[], None],
    ) -> None:
        self.address = address
        self.watchers = watchers
        self.on_status = on_status
        for w in watchers:
            w.client = self
        self.bus: Any = None
        self.error = "not connected yet"
        # Well-known name -> unique name of its current owner.
        self.owners: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None
        self._reads: set[asyncio.Task[None]] = set()
        # PropertiesChanged signals handled, per name (see _appeared).
        self._signals: dict[str, int] = {}
        self._stopping = False
        # Set once the first attempt ended: every service on the bus read, or no bus.
        self.first_read = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self.bus is not None and bool(getattr(self.bus, "connected", False))

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        self._stopping = True
        for task in list(self._reads):
            task.cancel()
        if self.bus is not None:
            with contextlib.suppress(Exception):
                self.bus.disconnect()
        if self._task is not None:
            # Connected: the loop sees the disconnect, closes the socket and ends.
            # Not connected: it only waits to retry.
            if self.bus is not None:
                await asyncio.wait([self._task], timeout=2.0)
            if not self._task.done():
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self) -> None:
        delay = FIRST_RETRY_S
        while not self._stopping:
            try:
                self.bus = await connect(self.address)
            except Exception as e:  # no socket, refused, auth failure, bad address
                self.bus = None
                error = f"cannot connect to the system bus at {self.address}: {e}"
                if error != self.error:
                    log.warning("%s; retrying in the background", error)
                    self.error = error
                    self.on_status()
                self.first_read.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_S)
                continue
            log.info("connected to the system bus at %s", self.address)
            self.error = ""
            self.bus.add_message_handler(self._on_message)
            try:
                await self._attach()
                self.on_status()
                self.first_read.set()
                delay = FIRST_RETRY_S
                with contextlib.suppress(Exception):
                    await self.bus.wait_for_disconnect()
            except Exception as e:
                log.warning("system bus: %s", e)
            finally:
                self.first_read.set()
                await self._detach()
            if not self._stopping:
                self.error = "the system bus connection was lost"
                log.warning("%s; reconnecting", self.error)
                self.on_status()
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_S)

    async def _attach(self) -> None:
        for w in self.watchers:
            for name in w.names:
                await self._add_match(owner_rule(name))
                for path in w.paths.get(name, ()):
                    await self._add_match(signal_rule(name, path))
        for w in self.watchers:
            for name in w.names:
                owner = await self._owner(name)
                if owner:
                    self.owners[name] = owner
                    await self._appeared(w, name)

    async def _detach(self) -> None:
        bus, self.bus = self.bus, None
        if bus is not None:
            with contextlib.suppress(Exception):
                bus.remove_message_handler(self._on_message)
            await close_bus(bus)
        owned, self.owners = self.owners, {}
        for w in self.watchers:
            for name in w.names:
                if name in owned:
                    w.vanished(name)

    async def _appeared(self, w: BusWatcher, name: str) -> None:
        """Read the service's state. A signal handled while the reads were in flight may
        be newer than what they returned (or be overwritten by it): read again then."""
        try:
            for _ in range(MAX_REREADS):
                seen = self._signals.get(name, 0)
                await w.appeared(name)
                if self._signals.get(name, 0) == seen:
                    break
        except BusError as e:
            log.warning("%s appeared but could not be read: %s", name, e)
        except Exception:
            log.exception("reading %s failed", name)

    async def _add_match(self, rule: str) -> None:
        await self.call(DBUS_NAME, DBUS_PATH, DBUS_NAME, "AddMatch", "s", [rule])

    async def _owner(self, name: str) -> str:
        try:
            body = await self.call(DBUS_NAME, DBUS_PATH, DBUS_NAME, "GetNameOwner", "s", [name])
        except BusError:
            return ""  # NameHasNoOwner
        return str(body[0]) if body else ""

    async def call(
        self,
        destination: str,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        body: list[Any] | None = None,
    ) -> list[Any]:
        """A method call; its reply's body, or BusError."""
        from dbus_next.constants import MessageType
        from dbus_next.message import Message

        bus = self.bus
        if bus is None:
            raise BusError("not connected to the system bus")
        message = Message(
            destination=destination,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=body or [],
        )
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                reply = await bus.call(message)
        except TimeoutError as e:
            raise BusError(f"{destination} did not answer {member} in {CALL_TIMEOUT_S:g} s") from e
        except Exception as e:
            raise BusError(f"{member} on {destination}: {e}") from e
        if reply is None:
            raise BusError(f"{member} on {destination}: no reply")
        if reply.message_type == MessageType.ERROR:
            detail = reply.body[0] if reply.body else ""
            raise BusError(f"{member} on {destination}: {reply.error_name}: {detail}")
        return list(reply.body)

    async def get_all(self, destination: str, path: str, interface: str) -> dict[str, Any]:
        body = await self.call(destination, path, PROPERTIES, "GetAll", "s", [interface])
        props = body[0] if body else {}
        return {k: unwrap(v) for k, v in props.items()}

    def _on_message(self, msg: Any) -> None:
        from dbus_next.constants import MessageType

        if msg.message_type != MessageType.SIGNAL:
            return
        if msg.interface == DBUS_NAME and msg.member == "NameOwnerChanged":
            if msg.sender != DBUS_NAME:
                return
            name, _old, new = msg.body
            for w in self.watchers:
                if name in w.names:
                    self._owner_changed(w, name, new)
            return
        if msg.interface == PROPERTIES and msg.member == "PropertiesChanged":
            for w in self.watchers:
                for name in w.names:
                    if self.owners.get(name) == msg.sender and msg.path in w.paths.get(name, ()):
                        interface, changed, invalidated = msg.body
                        self._signals[name] = self._signals.get(name, 0) + 1
                        try:
                            w.properties_changed(
                                name,
                                msg.path,
                                interface,
                                {k: unwrap(v) for k, v in changed.items()},
                            )
                        except Exception:
                            log.exception("handling a signal from %s failed", name)
                        if invalidated:  # values not sent: read them again
                            self._read_later(w, name)
                        self.on_status()

    def _read_later(self, w: BusWatcher, name: str) -> None:
        async def read() -> None:
            await self._appeared(w, name)
            self.on_status()

        task = asyncio.ensure_future(read())
        self._reads.add(task)
        task.add_done_callback(self._reads.discard)

    def _owner_changed(self, w: BusWatcher, name: str, new_owner: str) -> None:
        if new_owner:
            log.info("%s appeared on the system bus", name)
            self.owners[name] = new_owner
            self._read_later(w, name)
        elif self.owners.pop(name, None) is not None:
            log.warning("%s left the system bus", name)
            w.vanished(name)
            self.on_status()

"""Detached generations: `StartGeneration`/`StartChat` with option `detach` run as an
object of their own, `/org/rustai/Daemon1/generations/ID` with the interface
`org.rustai.Daemon1.Generation`.

Unlike a plain StartGeneration (unicast signals, cancelled when its caller leaves the
bus), a detached generation outlives a one-shot caller such as `gdbus call`: its
signals are broadcast from its own path (so `gdbus monitor` shows them), its text and
stats stay readable as properties for KEEP_S seconds after it ends, and the
ObjectManager at `/org/rustai/Daemon1` lists the live ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from dbus_next.aio.message_bus import MessageBus
from dbus_next.message import Message
from dbus_next.service import ServiceInterface

from rustaid.dbus import convert
from rustaid.dbus.interface import (
    OBJECT_PATH,
    NamedInterface,
    dbus_method,
    dbus_readonly,
    dbus_signal,
)


class Detached(Protocol):
    """What a generation object asks of the service that exports it (DBusService)."""

    def cancel_detached(self, obj: GenerationObject) -> None: ...
    def release_detached(self, obj: GenerationObject) -> None: ...


GENERATION_INTERFACE = "org.rustai.Daemon1.Generation"
GENERATIONS_PATH = OBJECT_PATH + "/generations"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
# An ended generation stays readable this long (or until Release).
KEEP_S = 300.0
# Ended generations kept at most; the oldest go first.
MAX_KEPT = 64


def generation_path(gen_id: str) -> str:
    return f"{GENERATIONS_PATH}/{gen_id}"


class GenerationObject(NamedInterface):
    """One detached generation. Its methods are dispatched by DBusService (it knows the
    caller); properties and signals are dbus-next's."""

    def __init__(self, service: Detached, gen_id: str, uid: int | None, kind: str) -> None:
        super().__init__(GENERATION_INTERFACE)
        self._service = service
        self.gen_id = gen_id
        self.uid = uid  # who started it: only this user (or an admin) may cancel it
        self.kind = kind  # "generate" or "chat"
        self.state = "running"
        self.parts: list[str] = []
        self.stats: convert.VariantDict = {}
        self.error = ""
        self.error_message = ""
        self.model_id = ""

    @property
    def path(self) -> str:
        return generation_path(self.gen_id)

    @property
    def ended(self) -> bool:
        return self.state != "running"

    def token(self, text: str) -> None:
        self.parts.append(text)
        self.Token(text)

    def finish(self, model_id: str, stats: convert.VariantDict) -> None:
        self.state, self.model_id, self.stats = "finished", model_id, stats
        self.Finished(stats)
        self._changed("State", "Text", "Stats", "Model")

    def fail(self, error: str, message: str, *, cancelled: bool = False) -> None:
        self.state = "cancelled" if cancelled else "failed"
        self.error, self.error_message = error, message
        self.Failed(error, message)
        self._changed("State", "Text", "Error", "ErrorMessage")

    def _changed(self, *names: str) -> None:
        values = {
            "State": self.state,
            "Text": convert.safe_text("".join(self.parts)),
            "Stats": self.stats,
            "Model": self.model_id,
            "Error": self.error,
            "ErrorMessage": self.error_message,
        }
        self.emit_properties_changed({n: values[n] for n in names})

    # -- properties ---------------------------------------------------------------------

    @dbus_readonly("s")
    def Id(self) -> str:
        return self.gen_id

    @dbus_readonly("s")
    def Kind(self) -> str:
        """generate (StartGeneration) or chat (StartChat)."""
        return self.kind

    @dbus_readonly("s")
    def State(self) -> str:
        """running, finished, failed or cancelled."""
        return self.state

    @dbus_readonly("s")
    def Text(self) -> str:
        """The text generated so far (all of it once ended)."""
        return convert.safe_text("".join(self.parts))

    @dbus_readonly("s")
    def Model(self) -> str:
        return self.model_id

    @dbus_readonly("a{sv}")
    def Stats(self) -> convert.VariantDict:
        """Finished's statistics once finished; empty before."""
        return self.stats

    @dbus_readonly("s")
    def Error(self) -> str:
        return self.error

    @dbus_readonly("s")
    def ErrorMessage(self) -> str:
        return self.error_message

    # -- methods (dispatched by DBusService, which knows the caller) ---------------------

    @dbus_method()
    async def Cancel(self) -> None:
        """Stop it within one token; it ends with Failed(Cancelled)."""
        self._service.cancel_detached(self)

    @dbus_method()
    async def Release(self) -> None:
        """Drop the object now (a running generation is cancelled first)."""
        self._service.release_detached(self)

    # -- signals (broadcast from the object's path) -------------------------------------

    @dbus_signal("text:s")
    def Token(self, text: str) -> str:
        return convert.safe_text(text)

    @dbus_signal("stats:a{sv}")
    def Finished(self, stats: convert.VariantDict) -> convert.VariantDict:
        return stats

    @dbus_signal("error:s", "message:s")
    def Failed(self, error: str, message: str) -> list[str]:
        return [error, convert.safe_text(message)]


class ManagedBus(MessageBus):
    """A MessageBus whose ObjectManager signals come from the manager's path
    (`/org/rustai/Daemon1`), as the ObjectManager specification says, rather than from
    the object's own path."""

    def _emit_interface_added(self, path: str, interface: ServiceInterface) -> None:
        if not path.startswith(GENERATIONS_PATH + "/") or self._disconnected:
            return
        body = {interface.name: _properties(interface)}
        self.send(
            Message.new_signal(
                OBJECT_PATH, OBJECT_MANAGER, "InterfacesAdded", "oa{sa{sv}}", [path, body]
            )
        )

    def _emit_interface_removed(self, path: str, removed_interfaces: list[str]) -> None:
        if not path.startswith(GENERATIONS_PATH + "/") or self._disconnected:
            return
        self.send(
            Message.new_signal(
                OBJECT_PATH, OBJECT_MANAGER, "InterfacesRemoved", "oas", [path, removed_interfaces]
            )
        )


def _properties(interface: ServiceInterface) -> dict[str, Any]:
    result: dict[str, Any] = {}
    callback: Callable[..., None] = lambda _i, values, _u, _e: result.update(values or {})  # noqa: E731
    ServiceInterface._get_all_property_values(interface, callback)  # synchronous getters
    return result

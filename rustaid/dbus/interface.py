"""The `org.rustai.Daemon1` interface: every method, property and signal with its D-Bus
signature. Introspection is generated from these declarations (docs/dbus.md shows it).

Methods are coroutines run by DBusService's dispatcher, which knows the caller (see
`current_call`, and rustaid.core.caller for the core's view of it), maps domain errors
to named D-Bus errors and stops a caller's work when it leaves the bus. The logic behind
each method lives in the daemon's core (engine, registry, RAG, resource manager, update
manager) that the gRPC services use as well: the methods here only convert.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from dbus_next import introspection as intr
from dbus_next.constants import PropertyAccess
from dbus_next.service import ServiceInterface, dbus_property, method, signal
from dbus_next.signature import Variant

from rustaid import __version__
from rustaid.core.engine import GenerationRequest, Text
from rustaid.dbus import convert
from rustaid.dbus.options import (
    ask_request,
    bounded,
    chat_request,
    generation_request,
    search_options,
    split_start_options,
)
from rustaid.errors import InvalidArgument
from rustaid.power.profiles import parse_profile_name
from rustaid.power.snapshot import PowerProfile
from rustaid.rag.manager import CitedHits

if TYPE_CHECKING:
    from rustaid.dbus.parts import DBusParts

BUS_NAME = "org.rustai.Daemon1"
OBJECT_PATH = "/org/rustai/Daemon1"
INTERFACE = "org.rustai.Daemon1"

F = TypeVar("F", bound=Callable[..., Any])

# Methods that answer when the text is complete (Generate, Chat, Ask) generate at most
# this many tokens unless the caller sets max_tokens: D-Bus clients give up on a call
# after 25 s by default. Longer texts: StartGeneration/StartChat.
CALL_MAX_TOKENS = 128


class Service(Protocol):
    """What the interface asks of the service that exports it (DBusService): the parts
    it serves, and what needs the service's own state (callers, generations)."""

    parts: DBusParts

    def state(self) -> str: ...
    def active_models(self) -> list[str]: ...
    def resource_state(self) -> convert.ResourceState: ...
    def start_generation(self, call: Call, request: GenerationRequest, detach: bool) -> str: ...
    def cancel_generation(self, call: Call, gen_id: str) -> None: ...
    def require_privileged(self, what: str) -> None: ...


@dataclass
class Call:
    """The method call being served: who sent it, and what to do once it is answered."""

    sender: str
    after_reply: list[Callable[[], None]] = field(default_factory=list)


CALL: ContextVar[Call] = ContextVar("rustaid_dbus_call")


def current_call() -> Call:
    return CALL.get()


def _declare(fn: F, args: tuple[str, ...], returns: str) -> F:
    """Give `fn` D-Bus signatures as annotations (what dbus-next reads), keeping the
    Python annotations out of it: `args` are "name:signature" per parameter."""
    names = list(inspect.signature(fn).parameters)[1:]
    sigs = dict(a.split(":", 1) for a in args)
    if names != list(sigs):
        raise TypeError(f"{fn.__name__}: D-Bus arguments {list(sigs)} != parameters {names}")
    fn.__annotations__ = {**sigs, "return": returns}
    return fn


# Attribute holding the names of a method's results or a signal's arguments (dbus-next
# leaves them unnamed in introspection; Daemon1.introspect adds them).
_OUT_NAMES = "_rustaid_dbus_out_names"


def dbus_method(*args: str, returns: str = "", out: tuple[str, ...] = ()) -> Callable[[F], F]:
    """A D-Bus method: `args` "name:signature" per parameter, `returns` the result's
    signature and `out` the results' names."""

    def decorate(fn: F) -> F:
        decorated: F = method()(_declare(fn, args, returns))
        setattr(decorated, _OUT_NAMES, out)
        return decorated

    return decorate


def dbus_signal(*args: str) -> Callable[[F], F]:
    """A D-Bus signal with arguments "name:signature"."""

    def decorate(fn: F) -> F:
        # dbus-next reads a signal's arguments from the return annotation.
        fn.__annotations__ = {"return": "".join(a.split(":", 1)[1] for a in args)}
        decorated: F = signal()(fn)
        setattr(decorated, _OUT_NAMES, tuple(a.split(":", 1)[0] for a in args))
        return decorated

    return decorate


def dbus_readonly(signature: str) -> Callable[[Callable[[Any], Any]], Any]:
    def decorate(fn: Callable[[Any], Any]) -> Any:
        fn.__annotations__ = {"return": signature}
        return dbus_property(access=PropertyAccess.READ)(fn)

    return decorate


class NamedInterface(ServiceInterface):
    """A ServiceInterface whose introspection names its results and signal arguments."""

    def introspect(self) -> intr.Interface:
        """dbus-next's introspection, with the names of results and signal arguments
        (docs/dbus.md shows it)."""
        data = super().introspect()
        names = {
            getattr(m, "__name__", ""): getattr(m, _OUT_NAMES)
            for m in vars(type(self)).values()
            if hasattr(m, _OUT_NAMES)
        }
        for member in data.methods:
            for arg, name in zip(member.out_args, names.get(member.name, ()), strict=False):
                arg.name = name
        for sig in data.signals:
            for arg, name in zip(sig.args, names.get(sig.name, ()), strict=False):
                arg.name = name
                arg.direction = None  # type: ignore[assignment]  # signal args have no direction
        return data


class Daemon1(NamedInterface):
    """org.rustai.Daemon1: text generation, models and status for desktop apps."""

    def __init__(self, service: Service) -> None:
        super().__init__(INTERFACE)
        self._service = service

    # -- properties (read-only; PropertiesChanged is emitted when they change) -----------

    @dbus_readonly("s")
    def Version(self) -> str:
        return __version__

    @dbus_readonly("s")
    def State(self) -> str:
        """ready (idle), busy (generating), stopping."""
        return self._service.state()

    @dbus_readonly("as")
    def ActiveModels(self) -> list[str]:
        """Ids of the models loaded in memory."""
        return self._service.active_models()

    @dbus_readonly("s")
    def PowerProfile(self) -> str:
        """performance, balanced, power-saver, ultra-saver or custom."""
        return self._service.resource_state().power_profile

    @dbus_readonly("s")
    def ThermalState(self) -> str:
        """nominal, fair, serious or critical."""
        return self._service.resource_state().thermal_state

    @dbus_readonly("b")
    def OnBattery(self) -> bool:
        return self._service.resource_state().on_battery

    @dbus_readonly("u")
    def QueueLength(self) -> int:
        """Requests waiting for a model (not counting the ones generating)."""
        return self._service.parts.engine.queue_length()

    # -- methods ----------------------------------------------------------------------

    @dbus_method(returns="aa{sv}", out=("models",))
    async def ListModels(self) -> list[convert.VariantDict]:
        return [convert.model_to_dbus(e) for e in self._service.parts.engine.registry.list()]

    @dbus_method("prompt:s", "options:a{sv}", returns="s", out=("text",))
    async def Generate(self, prompt: str, options: dict[str, Variant]) -> str:
        """Continue `prompt`; answers when the text is complete (max_tokens defaults to
        CALL_MAX_TOKENS so that the answer comes within the bus' call timeout)."""
        request = generation_request(prompt, options)
        return await self._answer(request)

    @dbus_method("messages:a(ss)", "options:a{sv}", returns="s", out=("text",))
    async def Chat(self, messages: list[list[str]], options: dict[str, Variant]) -> str:
        """The assistant's reply to `messages` (role, content); bounded like Generate."""
        return await self._answer(chat_request(messages, options))

    async def _answer(self, request: GenerationRequest) -> str:
        limit = min(CALL_MAX_TOKENS, self._service.parts.settings().default_max_tokens)
        request = replace(request, params=bounded(request.params, limit))
        text, _ = await self._service.parts.engine.generate_text(request)
        return text

    @dbus_method("prompt:s", "options:a{sv}", returns="s", out=("id",))
    async def StartGeneration(self, prompt: str, options: dict[str, Variant]) -> str:
        """Start a generation and return its id at once (see docs/dbus.md for the
        signals, and option `detach`)."""
        rest, detach = split_start_options(options)
        request = generation_request(prompt, rest)
        return self._service.start_generation(current_call(), request, detach)

    @dbus_method("messages:a(ss)", "options:a{sv}", returns="s", out=("id",))
    async def StartChat(self, messages: list[list[str]], options: dict[str, Variant]) -> str:
        """Chat's StartGeneration: the reply arrives as signals."""
        rest, detach = split_start_options(options)
        request = chat_request(messages, rest)
        return self._service.start_generation(current_call(), request, detach)

    @dbus_method("id:s")
    async def Cancel(self, id: str) -> None:
        self._service.cancel_generation(current_call(), id)

    @dbus_method("collection:s", "query:s", "top_k:u", returns="aa{sv}", out=("hits",))
    async def Search(self, collection: str, query: str, top_k: int) -> list[convert.VariantDict]:
        """The `top_k` passages of `collection` closest to `query` (0: 5), best first."""
        result = await self._service.parts.rag.search(collection, query, top_k)
        return [convert.hit_to_dbus(h) for h in result.hits]

    @dbus_method("collection:s", "query:s", "options:a{sv}", returns="aa{sv}", out=("hits",))
    async def SearchWithOptions(
        self, collection: str, query: str, options: dict[str, Variant]
    ) -> list[convert.VariantDict]:
        """Search with options: top_k, mode (dense, keyword, hybrid), score_threshold,
        filter."""
        o = search_options(options)
        result = await self._service.parts.rag.search(
            collection, query, o.top_k, o.filter, o.score_threshold, mode=o.mode
        )
        return [convert.hit_to_dbus(h) for h in result.hits]

    @dbus_method(
        "collection:s", "question:s", "options:a{sv}", returns="saa{sv}", out=("answer", "sources")
    )
    async def Ask(self, collection: str, question: str, options: dict[str, Variant]) -> list[Any]:
        """An answer grounded in passages of `collection`, and those passages (the
        answer cites them as [number])."""
        request = ask_request(collection, question, options)
        limit = min(CALL_MAX_TOKENS, self._service.parts.settings().default_max_tokens)
        request = replace(request, params=bounded(request.params, limit))
        answer: list[str] = []
        sources: list[convert.VariantDict] = []
        async for event in self._service.parts.rag.ask(request):
            if isinstance(event, CitedHits):
                sources = [convert.hit_to_dbus(h, i + 1) for i, h in enumerate(event.hits)]
            elif isinstance(event, Text):
                answer.append(event.text)
        return ["".join(answer), sources]

    @dbus_method("profile:s")
    async def SetPowerProfile(self, profile: str) -> None:
        """Use `profile` until cleared; "" or "auto": back to the automatic profile."""
        self._service.require_privileged("SetPowerProfile")
        chosen = parse_profile_name(profile)
        if chosen is PowerProfile.CUSTOM:
            raise InvalidArgument(
                "the custom profile needs its parameters, which SetPowerProfile does not "
                "take: set it over gRPC (`rustaictl power custom --threads N`)",
                field="profile",
            )
        self._service.parts.resources.set_power_profile(chosen)

    @dbus_method(returns="aa{sv}", out=("updates",))
    async def CheckUpdates(self) -> list[convert.VariantDict]:
        """Fetch and verify the release metadata now: the updates newer than what is
        installed (this downloads no artifact and installs nothing)."""
        self._service.require_privileged("CheckUpdates")
        result = await self._service.parts.updates.check("")
        return [convert.available_update_to_dbus(u) for u in result.updates]

    # -- signals ------------------------------------------------------------------------
    # Broadcast: calling one of these sends it to every listener.

    @dbus_signal("change:s", "model_id:s")
    def ModelsChanged(self, change: str, model_id: str) -> list[str]:
        return [change, model_id]

    @dbus_signal("update:a{sv}")
    def UpdateAvailable(self, update: convert.VariantDict) -> convert.VariantDict:
        return update

    @dbus_signal("update:a{sv}")
    def UpdateApplied(self, update: convert.VariantDict) -> convert.VariantDict:
        return update

    @dbus_signal("state:a{sv}")
    def ResourceStateChanged(self, state: convert.VariantDict) -> convert.VariantDict:
        return state

    # Unicast: sent only to the caller of StartGeneration (DBusService.send_to), never
    # through these methods, which would broadcast them.

    @dbus_signal("id:s", "text:s")
    def Token(self, id: str, text: str) -> list[str]:
        raise AssertionError("Token is unicast: use DBusService.send_to")

    @dbus_signal("id:s", "stats:a{sv}")
    def Finished(self, id: str, stats: convert.VariantDict) -> list[Any]:
        raise AssertionError("Finished is unicast: use DBusService.send_to")

    @dbus_signal("id:s", "error:s", "message:s")
    def Failed(self, id: str, error: str, message: str) -> list[str]:
        raise AssertionError("Failed is unicast: use DBusService.send_to")

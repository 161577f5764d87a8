"""The daemon's D-Bus API on the bus: connects, exports `org.rustai.Daemon1` at
`/org/rustai/Daemon1`, owns the name, dispatches method calls and follows the daemon's
state for properties and signals.

Which bus (`[dbus]` section of rustaid.toml)::

    [dbus]
    enabled = true        # false: no D-Bus API
    bus = "system"        # default: "system" for the system service, "session" otherwise
    address = "unix:path=/run/dbus/system_bus_socket"   # default: from the environment

Without `address`, the standard variables are used: DBUS_SYSTEM_BUS_ADDRESS (default
`unix:path=/run/dbus/system_bus_socket`) or DBUS_SESSION_BUS_ADDRESS (default
`$XDG_RUNTIME_DIR/bus` when that socket exists). When no bus can be reached or the name
is taken, the daemon logs a warning and serves gRPC only.

Method calls are dispatched here rather than by dbus-next so that each handler knows
its caller (a contextvar, and rustaid.core.caller for the core: `dbus:<unique name>`,
its uid, admin when root or the daemon's own user on the system bus, always on a session
bus), arguments of the wrong type get InvalidArgs naming the expected signature, domain
errors become named D-Bus errors (rustaid.dbus.errors), and the work of a caller that
leaves the bus (NameOwnerChanged) is cancelled. Detached generations
(rustaid.dbus.generations) are objects of their own below `/org/rustai/Daemon1`, which
their caller's leaving does not stop; their methods are dispatched here too.

Signals and properties follow the subsystems: models (registry events), activity
(engine), the device (resource monitor listener: PowerProfile, ThermalState, OnBattery,
ResourceStateChanged) and updates (the update manager's `checks` and `finished` buses:
UpdateAvailable, UpdateApplied).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dbus_next.constants import BusType, MessageFlag, MessageType, NameFlag, RequestNameReply
from dbus_next.errors import DBusError
from dbus_next.message import Message
from dbus_next.service import ServiceInterface

from rustaid import errors
from rustaid.core import caller as core_caller
from rustaid.core.engine import Done, GenerationRequest, Text
from rustaid.core.registry import ModelEventType
from rustaid.dbus import convert
from rustaid.dbus.convert import ResourceState
from rustaid.dbus.errors import (
    CANCELLED,
    INTERNAL,
    INVALID_ARGS,
    UNAVAILABLE,
    error_name,
    to_dbus_error,
)
from rustaid.dbus.generations import (
    GENERATION_INTERFACE,
    GENERATIONS_PATH,
    KEEP_S,
    MAX_KEPT,
    GenerationObject,
    ManagedBus,
)
from rustaid.dbus.interface import BUS_NAME, CALL, INTERFACE, OBJECT_PATH, Call, Daemon1

if TYPE_CHECKING:
    from rustaid.config import Settings
    from rustaid.dbus.parts import DBusParts
    from rustaid.power.snapshot import ResourceSnapshot

log = logging.getLogger(__name__)

DBUS = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"
CONNECT_TIMEOUT_S = 5.0
# At most this many generations started with StartGeneration run per caller at once.
MAX_GENERATIONS_PER_CALLER = 16
# Methods that run inference: each call holds one of its caller's places
# (max_requests_per_client) while it runs, as their gRPC twins do (services/context.py).
# A generation started with StartGeneration holds one in the engine until it ends.
COUNTED_METHODS = frozenset({"Generate", "Chat", "Search", "SearchWithOptions", "Ask"})


@dataclass(frozen=True)
class DBusConfig:
    enabled: bool
    bus: str  # "system" or "session"
    address: str  # "" : from the environment


def dbus_config(settings: Settings) -> DBusConfig:
    """The `[dbus]` section, checked; raises InvalidArgument naming the bad key."""
    section = settings.extra.get("dbus", {})
    if not isinstance(section, dict):
        raise errors.InvalidArgument("rustaid.toml: [dbus] must be a table", field="dbus")
    unknown = sorted(set(section) - {"enabled", "bus", "address"})
    if unknown:
        raise errors.InvalidArgument(
            f"rustaid.toml: unknown setting dbus.{unknown[0]} (known: enabled, bus, address)",
            field=f"dbus.{unknown[0]}",
        )
    enabled = section.get("enabled", True)
    if not isinstance(enabled, bool):
        raise errors.InvalidArgument(
            f"rustaid.toml: dbus.enabled must be true or false (got {enabled!r})",
            field="dbus.enabled",
        )
    bus = section.get("bus", "system" if settings.system else "session")
    if bus not in ("system", "session"):
        raise errors.InvalidArgument(
            f"rustaid.toml: dbus.bus must be 'system' or 'session' (got {bus!r})",
            field="dbus.bus",
        )
    address = section.get("address", "")
    if not isinstance(address, str):
        raise errors.InvalidArgument(
            f"rustaid.toml: dbus.address must be a D-Bus address string (got {address!r})",
            field="dbus.address",
        )
    return DBusConfig(enabled, bus, address)


def bus_address(config: DBusConfig, environ: dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    if config.address:
        return config.address
    if config.bus == "system":
        return env.get("DBUS_SYSTEM_BUS_ADDRESS") or "unix:path=/run/dbus/system_bus_socket"
    address = env.get("DBUS_SESSION_BUS_ADDRESS", "")
    if not address and env.get("XDG_RUNTIME_DIR"):
        user_bus = Path(env["XDG_RUNTIME_DIR"]) / "bus"
        if user_bus.exists():
            address = f"unix:path={user_bus}"
    if not address:
        raise errors.Unavailable("no session bus: DBUS_SESSION_BUS_ADDRESS is not set")
    return address


@dataclass
class Generation:
    id: str
    owner: str
    task: asyncio.Task[None] | None = None
    # Why it was cancelled: (error name, message) sent in Failed; None: caller left.
    cancel_reason: tuple[str, str] | None = None


@dataclass
class Caller:
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)


def _methods_of(interface: ServiceInterface) -> dict[str, Any]:
    return {m.name: m for m in ServiceInterface._get_methods(interface)}


def _match_rule(name: str) -> str:
    return (
        f"type='signal',sender='{DBUS}',path='{DBUS_PATH}',interface='{DBUS}',"
        f"member='NameOwnerChanged',arg0='{name}'"
    )


class DBusService:
    """Owned by the Daemon: start() after gRPC is up, stop() before it goes down."""

    def __init__(self, parts: DBusParts) -> None:
        self.parts = parts
        self.config = dbus_config(parts.settings())
        self.bus: ManagedBus | None = None
        self.interface = Daemon1(self)
        self._methods = {m.name: m for m in ServiceInterface._get_methods(self.interface)}
        self._signals = {s.name: s for s in ServiceInterface._get_signals(self.interface)}
        self._callers: dict[str, Caller] = {}
        self._watched: set[str] = set()
        self._generations: dict[str, Generation] = {}
        # Detached generations by id, running or ended (exported until released).
        self._detached: dict[str, GenerationObject] = {}
        self._detached_tasks: dict[str, asyncio.Task[None]] = {}
        self._detached_reasons: dict[str, tuple[str, str]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._published: dict[str, Any] = {}
        self._flush_pending = False
        # Unix user of each caller on the bus (asked once per connection).
        self._uids: dict[str, int] = {}
        # The last ResourceStateChanged sent; updates announced (id, version, sha256).
        self._sent_state: ResourceState | None = None
        self._announced: set[tuple[str, str, str]] = set()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, export and own the name; on failure log a warning and carry on."""
        if not self.config.enabled:
            log.info("D-Bus API disabled (dbus.enabled = false)")
            return
        try:
            address = bus_address(self.config)
            await asyncio.wait_for(self._connect(address), CONNECT_TIMEOUT_S)
        except Exception as e:  # no bus, refused, name taken...: gRPC still serves
            log.warning("D-Bus API not available on the %s bus: %s", self.config.bus, e)
            self._disconnect()
            return
        self._published = self._properties()
        self._sent_state = self.resource_state()
        self._spawn(self._follow_models())
        self._spawn(self._follow_activity())
        self._spawn(self._follow_checks())
        self._spawn(self._follow_updates())
        self.parts.resources.monitor.add_listener(self._resources_changed)
        log.info("D-Bus API %s on the %s bus (%s)", BUS_NAME, self.config.bus, address)

    async def _connect(self, address: str) -> None:
        bus_type = BusType.SYSTEM if self.config.bus == "system" else BusType.SESSION
        self.bus = ManagedBus(bus_address=address, bus_type=bus_type)
        await self.bus.connect()
        self.bus.add_message_handler(self._on_message)
        self.bus.export(OBJECT_PATH, self.interface)
        reply = await self.bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
        if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            raise errors.Unavailable(f"the name {BUS_NAME} is owned by another process")

    async def stop(self, grace: float = 0.0) -> None:
        """Stop taking calls (the name is released), give running work `grace` seconds,
        cancel what is left (its callers get Unavailable), then disconnect."""
        if self.bus is None:
            return
        self._stopping = True
        self._emit_changes()  # State: stopping
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.bus.release_name(BUS_NAME), 2.0)
        pending = [t for c in self._callers.values() for t in c.tasks]
        if pending and grace > 0:
            await asyncio.wait(pending, timeout=grace)
        for gen in list(self._generations.values()):
            gen.cancel_reason = (UNAVAILABLE, "the daemon is shutting down")
        for obj in list(self._detached.values()):
            task = self._detached_tasks.get(obj.gen_id)
            if task is not None:
                self._detached_reasons[obj.gen_id] = (UNAVAILABLE, "the daemon is shutting down")
                task.cancel()
        if self._detached_tasks:
            await asyncio.wait(list(self._detached_tasks.values()), timeout=5.0)
        for caller in list(self._callers.values()):
            for task in list(caller.tasks):
                task.cancel()
        pending = [t for c in self._callers.values() for t in c.tasks]
        if pending:
            await asyncio.wait(pending, timeout=5.0)
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.wait(list(self._background), timeout=2.0)
        # A round trip to the bus: every reply and signal queued before it has been sent.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._bus_call("GetId", ""), 2.0)
        self._disconnect()

    def _disconnect(self) -> None:
        if self.bus is not None:
            with contextlib.suppress(Exception):
                self.bus.disconnect()
            self.bus = None

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background_done)
        return task

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, DBusError | ConnectionError):
            log.error("D-Bus background task failed", exc_info=exc)

    # -- state behind the properties ------------------------------------------------------

    def state(self) -> str:
        if self._stopping:
            return "stopping"
        return "busy" if self.parts.engine.running() else "ready"

    def active_models(self) -> list[str]:
        return sorted(e.id for e in self.parts.engine.loaded())

    def resource_state(self) -> ResourceState:
        resources = self.parts.resources
        return convert.resource_state(resources.snapshot, resources.generate_serving)

    def _properties(self) -> dict[str, Any]:
        device = self.resource_state()
        return {
            "State": self.state(),
            "ActiveModels": self.active_models(),
            "QueueLength": self.parts.engine.queue_length(),
            "PowerProfile": device.power_profile,
            "ThermalState": device.thermal_state,
            "OnBattery": device.on_battery,
        }

    def _emit_changes(self) -> None:
        """PropertiesChanged with the properties whose value differs from the last one sent."""
        if self.bus is None:
            return
        now = self._properties()
        changed = {k: v for k, v in now.items() if self._published.get(k) != v}
        self._published = now
        if changed:
            self.interface.emit_properties_changed(changed)

    def _schedule_changes(self) -> None:
        # Several changes in one loop iteration (a request queued and started...) make
        # one PropertiesChanged.
        if not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        self._emit_changes()

    async def _follow_models(self) -> None:
        async with self.parts.engine.registry.events.subscribe() as events:
            while True:
                event = await events.get()
                if self.bus is not None:
                    self.interface.ModelsChanged(event.type.value, event.model.id)
                if event.type in (
                    ModelEventType.LOADED,
                    ModelEventType.UNLOADED,
                    ModelEventType.REMOVED,
                ):
                    self._schedule_changes()

    async def _follow_activity(self) -> None:
        async with self.parts.engine.activity.subscribe() as activity:
            while True:
                await activity.get()
                self._schedule_changes()

    # -- the device and updates ------------------------------------------------------------

    def _resources_changed(self, old: ResourceSnapshot, new: ResourceSnapshot) -> None:
        """Monitor listener (on the event loop): ResourceStateChanged when what the API
        tells about the device changed, and PropertiesChanged for its properties."""
        if self.bus is None:
            return
        state = self.resource_state()
        if state != self._sent_state:
            self._sent_state = state
            self.interface.ResourceStateChanged(convert.record_to_dbus(state))
        self._schedule_changes()

    async def _follow_checks(self) -> None:
        """UpdateAvailable once per update a check finds (each version once)."""
        async with self.parts.updates.checks.subscribe() as checks:
            while True:
                result = await checks.get()
                for update in result.updates:
                    a = update.artifact
                    key = (a.id, a.version, a.sha256)
                    if key in self._announced:
                        continue
                    self._announced.add(key)
                    if self.bus is not None:
                        self.interface.UpdateAvailable(convert.available_update_to_dbus(update))

    async def _follow_updates(self) -> None:
        """UpdateApplied when an update attempt ends: committed, rolled back or failed
        (deferred attempts and failed checks are not applications)."""
        async with self.parts.updates.finished.subscribe() as finished:
            while True:
                record = await finished.get()
                if not record.artifact_id or record.outcome == "deferred":
                    continue
                if self.bus is not None:
                    self.interface.UpdateApplied(convert.update_record_to_dbus(record))

    def send_to(self, destination: str, member: str, *body: Any) -> None:
        """A signal of org.rustai.Daemon1 for one connection only (unicast)."""
        if self.bus is None:
            return
        self.bus.send(
            Message(
                message_type=MessageType.SIGNAL,
                destination=destination,
                path=OBJECT_PATH,
                interface=INTERFACE,
                member=member,
                signature=self._signals[member].signature,
                body=convert.safe_body(list(body)),
            )
        )

    # -- dispatch ---------------------------------------------------------------------

    def _on_message(self, msg: Message) -> bool:
        if msg.message_type is MessageType.SIGNAL:
            self._on_signal(msg)
            return False
        if msg.message_type is not MessageType.METHOD_CALL:
            return False
        target: ServiceInterface = self.interface
        if msg.path == OBJECT_PATH and msg.interface in (INTERFACE, None):
            method = self._methods.get(msg.member)
        elif msg.path.startswith(GENERATIONS_PATH + "/") and msg.interface in (
            GENERATION_INTERFACE,
            None,
        ):
            detached = self._detached.get(msg.path.rsplit("/", 1)[1])
            method = _methods_of(detached).get(msg.member) if detached else None
            if detached is None or method is None:
                return False  # UnknownObject / UnknownMethod from dbus-next
            target = detached
        else:
            return False  # Introspectable, Properties, Peer, ObjectManager: dbus-next answers
        if method is None:
            return False  # UnknownMethod from dbus-next
        if msg.signature != method.in_signature:
            self._reply(
                msg,
                Message.new_error(
                    msg,
                    INVALID_ARGS,
                    f"{msg.member} takes arguments of type ({method.in_signature}), "
                    f"not ({msg.signature})",
                ),
            )
            return True
        if self._stopping:
            self._reply(msg, Message.new_error(msg, UNAVAILABLE, "the daemon is shutting down"))
            return True
        call = Call(sender=msg.sender)
        token = CALL.set(call)
        try:  # the task copies the context: the handler sees its Call
            task = asyncio.ensure_future(self._invoke(call, target, method, msg.body))
        finally:
            CALL.reset(token)
        self._track(msg.sender, task)
        task.add_done_callback(functools.partial(self._answer, msg, method, call))
        return True

    async def _invoke(
        self, call: Call, target: ServiceInterface, method: Any, body: list[Any]
    ) -> Any:
        """Run a method with the core's caller set (in the call's own task)."""
        core_caller.set_current(await self._caller(call.sender))
        if target is self.interface and method.name in COUNTED_METHODS:
            with self.parts.engine.admission.admit(method.name):
                return await method.fn(target, *body)
        return await method.fn(target, *body)

    async def _caller(self, sender: str) -> core_caller.Caller:
        """Who `sender` is for the core. On the system bus the bus policy has let it
        through; root and the daemon's own user are admins (the changing methods are
        theirs). A session bus admits only its user."""
        uid = self._uids.get(sender)
        if uid is None:
            try:
                uid = int(await self._bus_call("GetConnectionUnixUser", "s", sender))
            except DBusError as e:
                if self.config.bus == "system":
                    raise errors.Unavailable(f"cannot tell who the caller is: {e.text}") from e
                uid = os.getuid()
            if sender in self._watched:  # forgotten when it leaves the bus
                self._uids[sender] = uid
        admin = self.config.bus != "system" or uid in (0, os.getuid())
        return core_caller.Caller(key=f"dbus:{sender}", transport="dbus", uid=uid, admin=admin)

    def _answer(self, msg: Message, method: Any, call: Call, task: asyncio.Task[Any]) -> None:
        try:
            if task.cancelled():
                if self._stopping:
                    self._reply(
                        msg, Message.new_error(msg, UNAVAILABLE, "the daemon is shutting down")
                    )
                else:
                    self._reply(msg, Message.new_error(msg, CANCELLED, "the call was cancelled"))
                return
            exc = task.exception()
            if exc is None:
                try:
                    body, fds = ServiceInterface._fn_result_to_body(
                        convert.safe_body(task.result()), method.out_signature_tree
                    )
                    reply = Message.new_method_return(msg, method.out_signature, body, fds)
                except Exception as e:
                    exc = e
            if exc is not None:
                self._reply(msg, self._error(msg, exc))
                return
            self._reply(msg, reply)
            for fn in call.after_reply:
                fn()
        finally:
            self._untrack(msg.sender, task)

    def _error(self, msg: Message, exc: BaseException) -> Message:
        if isinstance(exc, errors.RustaidError):
            err = to_dbus_error(exc)
        elif isinstance(exc, DBusError):
            err = exc
        else:
            log.error("bug in D-Bus method %s", msg.member, exc_info=exc)
            err = DBusError(INTERNAL, "internal error; see the daemon's log")
        return Message.new_error(msg, err.type, convert.safe_text(err.text))

    def _reply(self, msg: Message, reply: Message) -> None:
        if self.bus is not None and not msg.flags & MessageFlag.NO_REPLY_EXPECTED:
            self.bus.send(reply)

    # -- callers ------------------------------------------------------------------------

    def _track(self, sender: str, task: asyncio.Task[Any]) -> None:
        self._callers.setdefault(sender, Caller()).tasks.add(task)
        if sender not in self._watched:
            # Watched until it leaves the bus: one match rule per connected caller.
            self._watched.add(sender)
            self._spawn(self._watch(sender))

    def _untrack(self, sender: str, task: asyncio.Task[Any]) -> None:
        caller = self._callers.get(sender)
        if caller is not None:
            caller.tasks.discard(task)
            if not caller.tasks:
                del self._callers[sender]

    async def _bus_call(self, member: str, signature: str, *body: Any) -> Any:
        if self.bus is None:
            return None
        reply = await self.bus.call(
            Message(
                destination=DBUS,
                path=DBUS_PATH,
                interface=DBUS,
                member=member,
                signature=signature,
                body=list(body),
            )
        )
        if reply is None or reply.message_type is MessageType.ERROR:
            raise DBusError(
                reply.error_name if reply else INTERNAL,
                str(reply.body[0]) if reply and reply.body else member,
            )
        return reply.body[0] if reply.body else None

    async def _watch(self, sender: str) -> None:
        """Be told when `sender` leaves the bus (and check it has not already left)."""
        try:
            await self._bus_call("AddMatch", "s", _match_rule(sender))
            if not await self._bus_call("NameHasOwner", "s", sender):
                self._caller_left(sender)
        except DBusError as e:
            self._watched.discard(sender)
            log.warning("cannot watch D-Bus caller %s: %s", sender, e)

    def _on_signal(self, msg: Message) -> None:
        if (
            msg.sender == DBUS
            and msg.member == "NameOwnerChanged"
            and msg.interface == DBUS
            and len(msg.body) == 3
            and not msg.body[2]
            and msg.body[0] in self._watched
        ):
            self._caller_left(msg.body[0])

    def _caller_left(self, sender: str) -> None:
        self._watched.discard(sender)
        self._uids.pop(sender, None)
        self._spawn(self._bus_call("RemoveMatch", "s", _match_rule(sender)))
        caller = self._callers.get(sender)
        if caller is None:
            return
        log.info("D-Bus caller %s left: cancelling its %d call(s)", sender, len(caller.tasks))
        for task in list(caller.tasks):
            task.cancel()

    # -- generations (StartGeneration / Cancel) -------------------------------------------

    def start_generation(self, call: Call, request: GenerationRequest, detach: bool) -> str:
        """Check the request, return its id; it starts once the reply is sent, so the
        caller knows the id before the first Token arrives."""
        engine = self.parts.engine
        engine.validate(request)
        engine.resolve(request.model_id, request.selection)
        if detach:
            return self._start_detached(call, request)
        running = sum(1 for g in self._generations.values() if g.owner == call.sender)
        if running >= MAX_GENERATIONS_PER_CALLER:
            raise errors.ResourceExhausted(
                f"this connection already runs {running} generations "
                f"(limit {MAX_GENERATIONS_PER_CALLER}); wait for one to finish",
                reason="TOO_MANY_GENERATIONS",
            )
        gen = Generation(id=secrets.token_hex(8), owner=call.sender)
        self._generations[gen.id] = gen
        who = core_caller.current()

        def launch() -> None:
            if self._stopping:
                self._generations.pop(gen.id, None)
                self.send_to(
                    gen.owner, "Failed", gen.id, UNAVAILABLE, "the daemon is shutting down"
                )
                return
            gen.task = asyncio.ensure_future(self._generate(gen, request, who))
            self._track(gen.owner, gen.task)
            gen.task.add_done_callback(functools.partial(self._generation_done, gen))

        call.after_reply.append(launch)
        return gen.id

    def _generation_done(self, gen: Generation, task: asyncio.Task[None]) -> None:
        self._generations.pop(gen.id, None)
        self._untrack(gen.owner, task)

    async def _generate(
        self, gen: Generation, request: GenerationRequest, who: core_caller.Caller
    ) -> None:
        core_caller.set_current(who)  # this task's own context: the caller's generation
        try:
            async for event in self.parts.engine.generate(request):
                if isinstance(event, Text):
                    self.send_to(gen.owner, "Token", gen.id, event.text)
                elif isinstance(event, Done):
                    self.send_to(gen.owner, "Finished", gen.id, convert.done_to_dbus(event))
        except asyncio.CancelledError:
            if gen.cancel_reason is not None:  # not sent when the caller left the bus
                self.send_to(gen.owner, "Failed", gen.id, *gen.cancel_reason)
        except errors.RustaidError as e:
            self.send_to(gen.owner, "Failed", gen.id, error_name(e), e.message)
        except Exception:
            log.exception("bug in D-Bus generation %s", gen.id)
            self.send_to(
                gen.owner, "Failed", gen.id, INTERNAL, "internal error; see the daemon's log"
            )

    def cancel_generation(self, call: Call, gen_id: str) -> None:
        gen = self._generations.get(gen_id)
        if gen is None:
            raise errors.NotFound(
                f"no running generation with id {gen_id!r} (finished, or never started)",
                reason="GENERATION_NOT_FOUND",
            )
        if gen.owner != call.sender:
            raise errors.PermissionDenied(
                f"generation {gen_id!r} was started by another connection; only it may cancel it"
            )
        gen.cancel_reason = (CANCELLED, "cancelled by the caller")
        if gen.task is not None:
            gen.task.cancel()

    # -- access ---------------------------------------------------------------------------

    def require_privileged(self, what: str) -> None:
        """On the system bus, changing methods are for root and the daemon's own user
        (the bus policy says the same; this holds even with a lax policy)."""
        who = core_caller.current()
        if not who.admin:
            raise errors.PermissionDenied(f"{what} is reserved to root (caller uid {who.uid})")

    # -- detached generations (option detach: objects of their own) -----------------------

    def _start_detached(self, call: Call, request: GenerationRequest) -> str:
        who = core_caller.current()
        running = sum(1 for o in self._detached.values() if o.uid == who.uid and not o.ended)
        if running >= MAX_GENERATIONS_PER_CALLER:
            raise errors.ResourceExhausted(
                f"user {who.uid} already runs {running} detached generations "
                f"(limit {MAX_GENERATIONS_PER_CALLER}); wait for one to finish or Cancel one",
                reason="TOO_MANY_GENERATIONS",
            )
        kind = "chat" if request.messages else "generate"
        obj = GenerationObject(self, secrets.token_hex(8), who.uid, kind)
        self._detached[obj.gen_id] = obj
        assert self.bus is not None
        self.bus.export(obj.path, obj)

        def launch() -> None:
            task = asyncio.ensure_future(self._generate_detached(obj, request, who))
            self._detached_tasks[obj.gen_id] = task
            task.add_done_callback(functools.partial(self._detached_done, obj))

        call.after_reply.append(launch)
        return obj.gen_id

    async def _generate_detached(
        self, obj: GenerationObject, request: GenerationRequest, who: core_caller.Caller
    ) -> None:
        core_caller.set_current(who)
        try:
            if self._stopping:
                raise errors.Unavailable("the daemon is shutting down")
            async for event in self.parts.engine.generate(request):
                if isinstance(event, Text):
                    obj.token(event.text)
                elif isinstance(event, Done):
                    obj.finish(event.model_id, convert.done_to_dbus(event))
        except errors.RustaidError as e:
            obj.fail(error_name(e), e.message)
        except Exception:
            log.exception("bug in D-Bus generation %s", obj.gen_id)
            obj.fail(INTERNAL, "internal error; see the daemon's log")

    def _detached_done(self, obj: GenerationObject, task: asyncio.Task[None]) -> None:
        self._detached_tasks.pop(obj.gen_id, None)
        if not obj.ended:  # cancelled (possibly before it started)
            reason = self._detached_reasons.pop(obj.gen_id, (CANCELLED, "cancelled"))
            obj.fail(*reason, cancelled=reason[0] == CANCELLED)
        self._ended(obj)

    def _ended(self, obj: GenerationObject) -> None:
        """Keep an ended generation readable for KEEP_S seconds, and at most MAX_KEPT."""
        asyncio.get_running_loop().call_later(KEEP_S, self._release, obj)
        ended = [o for o in self._detached.values() if o.ended]
        for old in ended[: max(0, len(ended) - MAX_KEPT)]:
            self._release(old)

    def _release(self, obj: GenerationObject) -> None:
        if self._detached.pop(obj.gen_id, None) is not None and self.bus is not None:
            self.bus.unexport(obj.path, obj)

    def _may_change(self, obj: GenerationObject, what: str) -> None:
        who = core_caller.current()
        if who.uid != obj.uid and not who.admin:
            raise errors.PermissionDenied(
                f"generation {obj.gen_id} was started by user {obj.uid}; only that user "
                f"or root may {what} it"
            )

    def cancel_detached(self, obj: GenerationObject) -> None:
        self._may_change(obj, "cancel")
        task = self._detached_tasks.get(obj.gen_id)
        if task is None:
            raise errors.PreconditionFailed(
                f"generation {obj.gen_id} has already ended ({obj.state}); "
                "Release drops the object",
                reason="GENERATION_ENDED",
            )
        self._detached_reasons[obj.gen_id] = (CANCELLED, "cancelled by the caller")
        task.cancel()

    def release_detached(self, obj: GenerationObject) -> None:
        self._may_change(obj, "release")
        task = self._detached_tasks.get(obj.gen_id)
        if task is not None:
            self._detached_reasons[obj.gen_id] = (CANCELLED, "released by the caller")
            task.cancel()
        self._release(obj)

"""The daemon survives any D-Bus input: random arguments of the right and of the wrong
types, and random `a{sv}` options, to every method org.rustai.Daemon1 declares (read
from the daemon's introspection at test time, so new methods are fuzzed unlisted), and
to the standard Properties interface.

Every reply is a method return or an error with a name: org.rustai.Daemon1.Error.* (never
org.rustai.Daemon1.Error.Internal, which means a bug) or one of the bus's standard errors for
bad arguments, unknown members and read-only properties. The daemon never dies, and a
call the client gives up on does not leave the daemon generating.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from dbus_next import introspection as intr
from dbus_next.aio.message_bus import MessageBus
from dbus_next.constants import MessageType
from dbus_next.message import Message
from dbus_next.signature import SignatureTree, Variant
from hypothesis import given, settings
from hypothesis import strategies as st

from rustaid.dbus import options as dbus_options
from rustaid.dbus.interface import BUS_NAME, INTERFACE, OBJECT_PATH
from rustaid.testing.proto_strategies import INTERESTING_STRINGS
from tests.fuzz.conftest import COLLECTION, LLM, Target, examples, short

# Named errors a client may get besides org.rustai.Daemon1.Error.* (from the daemon's dispatcher
# or from dbus-next for the standard interfaces).
STANDARD_ERRORS = frozenset(
    f"org.freedesktop.DBus.Error.{n}"
    for n in ("InvalidArgs", "UnknownMethod", "UnknownInterface", "UnknownProperty",
              "PropertyReadOnly", "NotSupported", "AccessDenied")
)  # fmt: skip
BUG = "org.rustai.Daemon1.Error.Internal"
CALL_TIMEOUT_S = 5.0
# After a call the client gave up on (and left the bus), a one-token generation must get
# through within this time: it would queue behind work the daemon failed to stop.

# -- values of a D-Bus type ----------------------------------------------------------------

SIGNATURES = ("y", "b", "n", "q", "i", "u", "x", "t", "d", "s", "o", "g", "as", "ai", "ad",
              "a{sv}", "a{ss}", "(si)", "v", "av", "aa{sv}", "ay")  # fmt: skip
_RANGES = {"y": (0, 255), "n": (-(1 << 15), (1 << 15) - 1), "q": (0, (1 << 16) - 1),
           "i": (-(1 << 31), (1 << 31) - 1), "u": (0, (1 << 32) - 1),
           "x": (-(1 << 63), (1 << 63) - 1), "t": (0, (1 << 64) - 1)}  # fmt: skip
# D-Bus strings are UTF-8 without NUL.
_TEXT = st.one_of(
    st.sampled_from([s for s in INTERESTING_STRINGS if "\x00" not in s]),
    st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=40),
    st.integers(1_000, 200_000).map(lambda n: "x" * n),
)


def _ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    edges = sorted({v for v in (0, 1, -1, lo, hi, 1 << 31, 1 << 32, 32769) if lo <= v <= hi})
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi))


def values(signature: str, depth: int = 0) -> st.SearchStrategy[Any]:
    """Values dbus-next marshals as `signature` (one complete type)."""
    (tree,) = SignatureTree(signature).types
    return _values(tree, depth)


def _values(t: Any, depth: int) -> st.SearchStrategy[Any]:
    token = t.token
    if token in _RANGES:
        return _ints(*_RANGES[token])
    if token == "b":
        return st.booleans()
    if token == "d":
        return st.one_of(st.floats(), st.sampled_from([float("nan"), float("inf"), -1.0, 0.0]))
    if token == "s":
        return _TEXT
    if token == "o":
        return st.sampled_from(["/", "/a", OBJECT_PATH, "/org/rustai/Daemon1/x"])
    if token == "g":
        return st.sampled_from(["", "s", "a{sv}", "(ii)"])
    if token == "v":
        if depth > 2:
            return st.just(Variant("s", ""))
        return st.sampled_from(SIGNATURES).flatmap(
            lambda sig: values(sig, depth + 1).map(lambda v, sig=sig: Variant(sig, v))
        )
    if token == "(":
        return st.tuples(*(_values(c, depth + 1) for c in t.children)).map(list)
    if token == "a":
        child = t.children[0]
        if child.token == "{":
            key, value = child.children
            return st.dictionaries(_values(key, depth + 1), _values(value, depth + 1), max_size=4)
        if child.token == "y":
            return st.binary(max_size=64)
        return st.lists(_values(child, depth + 1), max_size=4)
    raise ValueError(f"no strategy for D-Bus type {t.signature!r}")


def _option_names() -> list[str]:
    """Every option name of every options table the D-Bus API documents."""
    names: set[str] = set()
    for table in vars(dbus_options).values():
        if (
            isinstance(table, dict)
            and table
            and all(isinstance(v, dbus_options.Option) for v in table.values())
        ):
            names.update(table)
    return sorted(names)


_GOOD_OPTION = {  # a value of the right kind, often at its edges
    "int": st.sampled_from("yqunixt").flatmap(lambda s: values(s).map(lambda v: Variant(s, v))),
    "float": st.one_of(
        values("d").map(lambda v: Variant("d", v)), st.integers(0, 3).map(lambda v: Variant("u", v))
    ),
    "bool": st.booleans().map(lambda v: Variant("b", v)),
    "str": st.one_of(
        st.sampled_from([LLM, "interactive", "background", 'root ::= "a"', '{"type":"object"}']),
        _TEXT,
    ).map(lambda v: Variant("s", v)),
    "strs": st.lists(_TEXT, max_size=20).map(lambda v: Variant("as", v)),
}


def options() -> st.SearchStrategy[dict[str, Variant]]:
    """Random a{sv} options: known names with values of the right kind (edges included)
    or of any type, and unknown names. `model` and a small max_tokens part of the time."""
    names = _option_names()
    kinds = {
        k: o.kind
        for table in vars(dbus_options).values()
        if isinstance(table, dict)
        for k, o in table.items()
        if isinstance(o, dbus_options.Option)
    }

    def value_for(name: str) -> st.SearchStrategy[Variant]:
        any_type = values("v")
        good = _GOOD_OPTION.get(kinds.get(name, ""), any_type)
        return st.one_of(good, any_type)

    known = st.sampled_from(names).flatmap(lambda n: value_for(n).map(lambda v: (n, v)))
    unknown = st.tuples(_TEXT, values("v"))
    pairs = st.lists(st.one_of(known, known, unknown), max_size=6).map(dict)
    sane = st.fixed_dictionaries(
        {"max_tokens": st.integers(1, 8).map(lambda v: Variant("u", v))},
        optional={"model": st.sampled_from([LLM, "nope"]).map(lambda v: Variant("s", v))},
    )
    return st.one_of(pairs, st.builds(lambda a, b: {**a, **b}, pairs, sane))


_SEEDED_ARGS = {
    "collection": st.sampled_from([COLLECTION, "nope", ""]),
    "profile": st.sampled_from(
        ["performance", "balanced", "power-saver", "ultra-saver", "custom", "auto", ""]
    ),
    "prompt": st.sampled_from(["hello", "the cat"]),
    "question": st.sampled_from(["what is the capital of France?"]),
    "query": st.sampled_from(["cat"]),
}


def arguments(method: intr.Method) -> st.SearchStrategy[tuple[str, list[Any]]]:
    """(signature, body): the declared signature with random values (seeded part of the
    time), or a random signature with values of it."""
    declared_sig = "".join(a.signature for a in method.in_args)

    def arg(a: intr.Arg) -> st.SearchStrategy[Any]:
        base = options() if a.signature == "a{sv}" else values(a.signature)
        seed = _SEEDED_ARGS.get(a.name or "")
        return st.one_of(seed, base) if seed is not None else base

    declared = st.tuples(*(arg(a) for a in method.in_args)).map(
        lambda body: (declared_sig, list(body))
    )
    wrong = st.lists(st.sampled_from(SIGNATURES), max_size=3).flatmap(
        lambda sigs: st.tuples(*(values(s) for s in sigs)).map(
            lambda body, sigs=sigs: ("".join(sigs), list(body))
        )
    )
    return st.one_of(declared, declared, wrong)


# -- a client with its own event loop (hypothesis tests are synchronous) --------------------


class Client:
    def __init__(self, address: str) -> None:
        self.address = address
        self.loop = asyncio.new_event_loop()
        self.bus = self._connect()

    def _connect(self) -> MessageBus:
        async def connect() -> MessageBus:  # the bus binds to the loop it is created in
            return await MessageBus(bus_address=self.address).connect()

        return self.loop.run_until_complete(connect())

    def reconnect(self) -> None:
        """Leave the bus (the daemon cancels this connection's work) and come back."""
        self.bus.disconnect()
        self.loop.run_until_complete(self.bus.wait_for_disconnect())
        self.bus = self._connect()

    def call(self, member: str, signature: str, body: list[Any], **kw: Any) -> Message | None:
        """The reply, or None when there was none within CALL_TIMEOUT_S."""
        msg = Message(
            destination=BUS_NAME,
            path=kw.get("path", OBJECT_PATH),
            interface=kw.get("interface", INTERFACE),
            member=member,
            signature=signature,
            body=body,
        )
        try:
            return self.loop.run_until_complete(
                asyncio.wait_for(self.bus.call(msg), CALL_TIMEOUT_S)
            )
        except TimeoutError:
            return None

    def introspect(self) -> intr.Node:
        reply = self.call("Introspect", "", [], interface="org.freedesktop.DBus.Introspectable")
        assert reply is not None and reply.message_type is MessageType.METHOD_RETURN
        return intr.Node.parse(reply.body[0])

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.bus.disconnect()
            self.loop.run_until_complete(self.bus.wait_for_disconnect())
        self.loop.close()


@pytest.fixture(scope="module")
def client(target: Target) -> Iterator[Client]:
    if target.bus is None:
        pytest.skip("dbus-daemon is not installed (make system-deps installs it)")
    c = Client(target.bus.address)
    yield c
    c.close()


@pytest.fixture(scope="module")
def interface(client: Client) -> intr.Interface:
    node = client.introspect()
    (iface,) = [i for i in node.interfaces if i.name == INTERFACE]
    return iface


def _method_names() -> list[str]:
    """Parametrization happens before the daemon runs: the names come from the class;
    test_every_declared_method_is_fuzzed checks them against the live introspection."""
    from rustaid.dbus.interface import Daemon1

    return sorted(
        name
        for name, member in vars(Daemon1).items()
        if "__DBUS_METHOD" in getattr(member, "__dict__", {})
    )


METHODS = _method_names()


def check(target: Target, client: Client, member: str, reply: Message | None, what: str) -> None:
    name = f"Daemon1.{member}"
    assert target.alive(), f"the daemon died on {name} with {what}:\n{target.log_tail()}"
    if reply is None:
        target.record(name, "NO_REPLY", "", CALL_TIMEOUT_S, what)
        client.reconnect()
        target.assert_model_free(
            f"{name} gave no answer in {CALL_TIMEOUT_S} s for {what} and its caller left"
        )
        return
    if reply.message_type is MessageType.ERROR:
        error = str(reply.error_name)
        text = str(reply.body[0]) if reply.body else ""
        target.record(name, error.rsplit(".", 1)[-1], text, 0.0, what)
        assert error != BUG, (
            f"{name} failed with {error} ({text!r}) for {what}\n{target.log_tail()}"
        )
        assert error.startswith("org.rustai.Daemon1.Error.") or error in STANDARD_ERRORS, (
            f"{name} answered an unnamed or unexpected error {error} ({text!r}) for {what}"
        )
        assert text.strip(), f"{name}: {error} without a message"
    else:
        target.record(name, "OK", "", 0.0, what)


# -- the fuzz targets ----------------------------------------------------------------------


def test_every_declared_method_is_fuzzed(interface: intr.Interface) -> None:
    declared = sorted(m.name for m in interface.methods)
    assert declared == METHODS


@pytest.mark.parametrize("member", METHODS)
@settings(max_examples=examples(40))
@given(data=st.data())
def test_random_arguments(
    target: Target, client: Client, interface: intr.Interface, member: str, data: st.DataObject
) -> None:
    (method,) = [m for m in interface.methods if m.name == member]
    signature, body = data.draw(arguments(method), label="arguments")
    reply = client.call(member, signature, body)
    check(target, client, member, reply, f"({signature}) {short(body)}")
    if (
        member in ("StartGeneration", "StartChat")
        and reply is not None
        and reply.message_type is MessageType.METHOD_RETURN
    ):
        # Do not let it run on: cancel it (it may have finished already), or release it
        # when it was detached (an object of its own, which Cancel does not know).
        gen_id = reply.body[0]
        cancel = client.call("Cancel", "s", [gen_id])
        check(target, client, "Cancel", cancel, f"the id {member} returned")
        release = client.call(
            "Release",
            "",
            [],
            path=f"{OBJECT_PATH}/generations/{gen_id}",
            interface="org.rustai.Daemon1.Generation",
        )
        assert release is not None


PROPERTIES = "org.freedesktop.DBus.Properties"


@settings(max_examples=examples(60))
@given(
    member=st.sampled_from(["Get", "Set", "GetAll"]),
    interface_name=st.sampled_from([INTERFACE, "org.nope", ""]),
    prop=st.sampled_from(
        ["State", "Version", "QueueLength", "ActiveModels", "PowerProfile", "Nope", ""]
    ),
    value=values("v"),
)
def test_properties(
    target: Target, client: Client, member: str, interface_name: str, prop: str, value: Variant
) -> None:
    """Get/Set/GetAll with any names: properties are read-only, unknown ones are named
    errors, and the daemon survives all of it."""
    body: list[Any] = {
        "Get": [interface_name, prop],
        "Set": [interface_name, prop, value],
        "GetAll": [interface_name],
    }[member]
    signature = {"Get": "ss", "Set": "ssv", "GetAll": "s"}[member]
    reply = client.call(member, signature, body, interface=PROPERTIES)
    check(target, client, f"Properties.{member}", reply, short(body))
    if member == "Set" and reply is not None and interface_name == INTERFACE:
        assert reply.message_type is MessageType.ERROR, f"Set({prop}) was accepted"


def test_zz_still_serving_on_dbus(target: Target, client: Client) -> None:
    """After the fuzzing: the properties answer and no generation is left running."""
    reply = client.call("GetAll", "s", [INTERFACE], interface=PROPERTIES)
    assert reply is not None and reply.message_type is MessageType.METHOD_RETURN
    assert reply.body[0]["State"].value in ("ready", "busy")
    reply = client.call("ListModels", "", [])
    assert reply is not None and reply.message_type is MessageType.METHOD_RETURN
    target.assert_model_free("all of the D-Bus fuzzing")

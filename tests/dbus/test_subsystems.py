"""Search, Ask, SetPowerProfile and CheckUpdates over D-Bus, with the device's
properties and the UpdateAvailable / UpdateApplied / ResourceStateChanged signals: a real
daemon on a private bus with the real all-MiniLM-L6-v2 over a tiny corpus in the embedded
vector store, a fake sysfs tree it polls, and a signed release repository served over
HTTP on 127.0.0.1. Each method is checked against its gRPC twin (same core, same answer)
and with bad input."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dbus_next.errors import DBusError
from dbus_next.message import Message
from dbus_next.signature import Variant
from rustaid_client.client import Client as GrpcClient

from rustaid.api.v1 import common_pb2, resources_pb2, updates_pb2
from rustaid.dbus.interface import BUS_NAME, INTERFACE, OBJECT_PATH
from rustaid.testing.daemon import DaemonProcess, run_daemon
from rustaid.testing.dbus import PrivateBus
from rustaid.testing.synthetic import write_llama_gguf, write_truncated_copy
from rustaid.updates.publish import generate_key, load_private_key
from tests.conftest import add_model
from tests.dbus.conftest import Client, need, power_section, run_tool, write_config
from tests.power.fakesys import FakeDevice
from tests.rag.conftest import MINILM, link_embedding_model, needs_minilm
from tests.updates.conftest import Key, Publisher, updates_config
from tests.updates.server import serve

pytestmark = needs_minilm

CORPUS = [
    {"id": "cities", "text": "Paris is the capital of France. Berlin is the capital of Germany.",
     "source": "cities.txt", "metadata": {"lang": "en", "year": 2021}},
    {"id": "pets", "text": "Cats sleep most of the day. Dogs like long walks in the park.",
     "source": "pets.txt", "metadata": {"lang": "en", "year": 2022}},
    {"id": "music", "text": "The violin and the piano are played in an orchestra.",
     "source": "music.txt", "metadata": {"lang": "de", "year": 2023}},
    {"id": "food", "text": "Bread, cheese and apples make a simple lunch.",
     "source": "food.txt", "metadata": {"lang": "fr", "year": 2024}},
]  # fmt: skip
QUESTION = "What is the capital of France?"
GREEDY = {
    "model": Variant("s", "tiny"),
    "max_tokens": Variant("u", 8),
    "temperature": Variant("d", 0.0),
    "seed": Variant("i", 7),
}


@dataclass
class Served:
    daemon: DaemonProcess
    grpc: GrpcClient
    device: FakeDevice
    publisher: Publisher
    bus: PrivateBus


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)  # strings and lists of strings are the same in TOML


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
    model_files: dict[str, Path],
    session_bus: PrivateBus,
) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("dbus-subsystems")
    data = root / "data"
    add_model(data, model_files["tiny"])
    link_embedding_model(data, MINILM, "minilm")
    # A laptop on AC power: battery charging at 80 %, one thermal zone at 40 C.
    device = FakeDevice(root / "device")
    device.mains(True)
    device.battery(status="Charging", capacity=80)
    device.zone(0, "x86_pkg_temp", 40.0, [("passive", 80.0), ("critical", 100.0)])
    key_file, pub_file, public = generate_key(root / "release")
    key = Key(load_private_key(key_file), public, key_file, pub_file)
    (root / "repo").mkdir()
    with serve(root / "repo") as server:
        publisher = Publisher(root / "repo", server, [key])
        publisher.release(write_llama_gguf(root / "chat-v1.gguf", seed=11), "1.0")
        section = updates_config(server.url, [key])
        write_config(
            data,
            power_section(device, poll_s=0.2)
            + '[rag]\nembedding_model = "embeddings/minilm"\nembedding_threads = 1\n'
            + "[updates]\n"
            + "".join(f"{k} = {_toml(v)}\n" for k, v in section.items()),
        )
        with (
            run_daemon(data, env=session_bus.env()) as daemon,
            GrpcClient(daemon.address, timeout=60) as grpc_client,
        ):
            grpc_client.create_collection("notes")
            grpc_client.index_documents("notes", CORPUS)
            yield Served(daemon, grpc_client, device, publisher, session_bus)


def values(d: dict[str, Variant]) -> dict[str, Any]:
    return {k: v.value for k, v in d.items()}


async def error_of(coro: Any) -> DBusError:
    with pytest.raises(DBusError) as e:
        await coro
    return e.value


async def listener(connect: Any) -> Client:
    """A connection receiving every signal the daemon broadcasts."""
    c: Client = await connect()
    await c.match(f"type='signal',sender='{BUS_NAME}',path='{OBJECT_PATH}'")
    return c


async def changed_to(client: Client, name: str, value: Any, wait_s: float = 15.0) -> Message:
    """The PropertiesChanged that sets property `name` to `value`."""
    async with asyncio.timeout(wait_s):
        while True:
            msg = await client.next_signal("PropertiesChanged", wait_s)
            if name in msg.body[1] and msg.body[1][name].value == value:
                assert msg.body[0] == INTERFACE
                return msg


async def state_where(client: Client, wait_s: float = 15.0, **expected: Any) -> dict[str, Any]:
    """The next ResourceStateChanged whose state has the `expected` values."""
    async with asyncio.timeout(wait_s):
        while True:
            state = values((await client.next_signal("ResourceStateChanged", wait_s)).body[0])
            if all(state[k] == v for k, v in expected.items()):
                return state


async def tool(bus: PrivateBus, *argv: str) -> Any:
    need(argv[0])
    return await asyncio.to_thread(run_tool, bus, *argv)


def gdbus(method: str, *args: str) -> list[str]:
    return [
        "gdbus", "call", "--session", "--dest", BUS_NAME, "--object-path", OBJECT_PATH,
        "--method", f"{INTERFACE}.{method}", *args,
    ]  # fmt: skip


def busctl(bus: PrivateBus, *args: str) -> list[str]:
    return ["busctl", f"--address={bus.address}", *args]


# -- Search --------------------------------------------------------------------------------


async def test_search_matches_grpc_search(served: Served, client: Client) -> None:
    (hits,) = await client.call("Search", "ssu", "notes", QUESTION, 3)
    assert len(hits) == 3
    first = values(hits[0])
    assert first["document_id"] == "cities" and "Paris" in first["text"]
    assert first["source"] == "cities.txt"
    assert values(first["metadata"]) == {"lang": "en", "year": 2021}
    assert {k: v.signature for k, v in hits[0].items()} == {
        "document_id": "s", "chunk_id": "s", "text": "s", "score": "d", "metadata": "a{sv}",
        "source": "s", "title": "s", "page": "u", "heading_path": "as", "chunk_index": "u",
    }  # fmt: skip
    scores = [h["score"].value for h in hits]
    assert scores == sorted(scores, reverse=True)
    grpc_hits = (await asyncio.to_thread(served.grpc.search, "notes", QUESTION, top_k=3)).hits
    assert [(h.document_id, h.chunk_id) for h in grpc_hits] == [
        (h["document_id"].value, h["chunk_id"].value) for h in hits
    ]
    assert [round(h.score, 4) for h in grpc_hits] == [round(s, 4) for s in scores]
    # top_k 0 means the default (5; the corpus has 4 chunks).
    (hits,) = await client.call("Search", "ssu", "notes", QUESTION, 0)
    assert len(hits) == len(CORPUS)


async def test_search_with_gdbus_and_busctl(served: Served) -> None:
    r = await tool(served.bus, *gdbus("Search", "notes", "cats and dogs", "1"))
    assert r.returncode == 0, r.stderr
    assert "'document_id': <'pets'>" in r.stdout and "'score': <" in r.stdout
    r = await tool(
        served.bus,
        *busctl(served.bus, "--json=short", "call", BUS_NAME, OBJECT_PATH, INTERFACE,
                "Search", "ssu", "notes", "violin orchestra", "1"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    (hit,) = json.loads(r.stdout)["data"][0]
    assert hit["document_id"]["data"] == "music"


@pytest.mark.parametrize(
    ("args", "name", "words"),
    [
        (["missing", "x", 3], "NotFound", ["'missing'", "collections: notes"]),
        (["", "x", 3], "InvalidArgument", ["collection is empty"]),
        (["../notes", "x", 3], "InvalidArgument", ["not a valid collection name"]),
        (["notes", "", 3], "InvalidArgument", ["query is empty"]),
        (["notes", "   ", 3], "InvalidArgument", ["query is empty"]),
        (["notes", "x", 1001], "InvalidArgument", ["top_k must be between 1 and 1000", "1001"]),
        (["notes", "x", 2**32 - 1], "InvalidArgument", ["top_k must be between 1 and 1000"]),
    ],
)
async def test_search_bad_input(
    served: Served, client: Client, args: list[Any], name: str, words: list[str]
) -> None:
    e = await error_of(client.call("Search", "ssu", *args))
    assert e.type == f"org.rustai.Daemon1.Error.{name}"
    for word in words:
        assert word in e.text


async def test_search_with_wrong_argument_types(served: Served) -> None:
    r = await tool(
        served.bus,
        *busctl(served.bus, "call", BUS_NAME, OBJECT_PATH, INTERFACE, "Search", "ssi",
                "notes", "x", "3"),
    )  # fmt: skip
    assert r.returncode != 0
    assert "takes arguments of type (ssu), not (ssi)" in r.stderr


KEYWORD_OPTIONS = "{'top_k': <uint32 3>, 'mode': <'keyword'>}"


async def test_search_with_options_picks_the_mode(served: Served, client: Client) -> None:
    keyword = {"mode": Variant("s", "keyword"), "top_k": Variant("u", 3)}
    (hits,) = await client.call("SearchWithOptions", "ssa{sv}", "notes", "violin", keyword)
    assert [values(h)["document_id"] for h in hits] == ["music"]  # the only one with the word
    grpc_hits = (
        await asyncio.to_thread(served.grpc.search, "notes", "violin", top_k=3, mode="keyword")
    ).hits
    assert [h.chunk_id for h in grpc_hits] == [values(h)["chunk_id"] for h in hits]
    only_pets = {"filter": Variant("a{sv}", {"document_id": Variant("s", "pets")})}
    (hits,) = await client.call("SearchWithOptions", "ssa{sv}", "notes", QUESTION, only_pets)
    assert {values(h)["document_id"] for h in hits} == {"pets"}
    # The command line of docs/dbus.md.
    r = await tool(
        served.bus,
        *gdbus("SearchWithOptions", "notes", "violin", KEYWORD_OPTIONS),
    )
    assert r.returncode == 0, r.stderr
    assert "'document_id': <'music'>" in r.stdout and "'pets'" not in r.stdout
    e = await error_of(
        client.call("SearchWithOptions", "ssa{sv}", "notes", "x", {"mode": Variant("s", "fuzzy")})
    )
    assert e.type == "org.rustai.Daemon1.Error.InvalidArgument"
    assert "dense, keyword or hybrid" in e.text
    e = await error_of(
        client.call("SearchWithOptions", "ssa{sv}", "notes", "x", {"model": Variant("s", "m")})
    )
    assert e.type == "org.rustai.Daemon1.Error.InvalidArgument"
    assert "unknown option 'model'" in e.text


# -- Ask -----------------------------------------------------------------------------------


async def test_ask_matches_grpc_ask(served: Served, client: Client) -> None:
    options = {**GREEDY, "top_k": Variant("u", 2)}
    answer, sources = await client.call("Ask", "ssa{sv}", "notes", QUESTION, options)
    assert answer
    assert [s["number"].value for s in sources] == [1, 2]
    assert sources[0]["document_id"].value == "cities"

    def grpc_ask() -> tuple[str, list[str]]:
        text, cited = [], []
        for event in served.grpc.ask(
            "notes", QUESTION, "tiny", passages=2, max_tokens=8, temperature=0.0, seed=7
        ):
            if event.HasField("citations"):
                cited = [h.document_id for h in event.citations.hits]
            elif event.HasField("chunk"):
                text.append(event.chunk.text)
        return "".join(text), cited

    grpc_answer, grpc_cited = await asyncio.to_thread(grpc_ask)
    assert answer == grpc_answer.replace("\x00", "\ufffd")
    assert [s["document_id"].value for s in sources] == grpc_cited


async def test_ask_filter_and_score_threshold(served: Served, client: Client) -> None:
    options = {
        **GREEDY,
        "filter": Variant("a{sv}", {"metadata.lang": Variant("as", ["de", "fr"])}),
    }
    _, sources = await client.call("Ask", "ssa{sv}", "notes", QUESTION, options)
    assert {s["document_id"].value for s in sources} == {"music", "food"}
    options = {**GREEDY, "filter": Variant("a{sv}", {"metadata.year": Variant("x", 2022)})}
    _, sources = await client.call("Ask", "ssa{sv}", "notes", QUESTION, options)
    assert [s["document_id"].value for s in sources] == ["pets"]
    # The same from the command line, as docs/dbus.md writes it.
    r = await tool(
        served.bus,
        *gdbus(
            "Ask", "notes", QUESTION,
            "{'model': <'tiny'>, 'top_k': <uint32 3>, 'filter': <{'metadata.lang': <'en'>}>, "
            "'max_tokens': <uint32 4>}",
        ),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "'number': <uint32 2>" in r.stdout and "'number': <uint32 3>" not in r.stdout
    assert "'document_id': <'cities'>" in r.stdout and "'document_id': <'pets'>" in r.stdout
    # Cosine similarity: nothing is closer than 1.
    options = {**GREEDY, "score_threshold": Variant("d", 1.01)}
    answer, sources = await client.call("Ask", "ssa{sv}", "notes", QUESTION, options)
    assert sources == [] and answer


@pytest.mark.parametrize(
    ("collection", "question", "options", "name", "words"),
    [
        ("notes", QUESTION, {"bogus": Variant("b", True)}, "InvalidArgument",
         ["unknown option 'bogus'", "score_threshold", "filter"]),
        ("notes", QUESTION, {"priority": Variant("s", "background")}, "InvalidArgument",
         ["unknown option 'priority'"]),
        ("notes", QUESTION, {"top_k": Variant("d", 2.0)}, "InvalidArgument",
         ["'top_k' must be an integer"]),
        ("notes", QUESTION, {"top_k": Variant("u", 101)}, "InvalidArgument",
         ["top_k must be between 1 and 100"]),
        ("notes", QUESTION, {"filter": Variant("s", "lang=en")}, "InvalidArgument",
         ["'filter' must be a dictionary"]),
        ("notes", QUESTION, {"filter": Variant("a{sv}", {"metadata.lang": Variant("d", 1.5)})},
         "InvalidArgument", ["'metadata.lang'", "array of strings"]),
        ("notes", QUESTION, {"filter": Variant("a{sv}", {"colour": Variant("s", "red")})},
         "InvalidArgument", ["unknown field 'colour'", "metadata.KEY"]),
        ("notes", QUESTION, {"score_threshold": Variant("d", float("nan"))}, "InvalidArgument",
         ["score_threshold must be a finite number"]),
        ("notes", QUESTION, {"max_tokens": Variant("u", 0)}, "InvalidArgument", ["max_tokens"]),
        ("notes", QUESTION, {"model": Variant("s", "nope")}, "NotFound", ["'nope'"]),
        ("notes", "", {}, "InvalidArgument", ["question is empty"]),
        ("missing", QUESTION, {}, "NotFound", ["'missing'"]),
    ],
)  # fmt: skip
async def test_ask_bad_input(
    served: Served,
    client: Client,
    collection: str,
    question: str,
    options: dict[str, Variant],
    name: str,
    words: list[str],
) -> None:
    e = await error_of(client.call("Ask", "ssa{sv}", collection, question, options))
    assert e.type == f"org.rustai.Daemon1.Error.{name}", e.text
    for word in words:
        assert word in e.text


# -- the device: properties, ResourceStateChanged, SetPowerProfile --------------------------


async def test_device_properties_and_resource_state_changed(served: Served, connect: Any) -> None:
    dev = served.device
    watcher, client = await listener(connect), await connect()
    assert (
        await client.prop("PowerProfile"),
        await client.prop("ThermalState"),
        await client.prop("OnBattery"),
    ) == ("balanced", "nominal", False)
    try:
        # Unplugged, battery low: on battery, and the battery picks the power-saver profile.
        dev.mains(False)
        dev.battery(status="Discharging", capacity=15)
        state = await state_where(watcher, on_battery=True, power_profile="power-saver")
        assert state == {
            "power_profile": "power-saver",
            "profile_source": "battery",
            "thermal_state": "nominal",
            "on_battery": True,
            "critical": False,
            "memory_pressure": "normal",
        }
        await changed_to(watcher, "OnBattery", True)
        assert await client.prop("PowerProfile") == "power-saver"
        # Critically hot (within 5 C of the critical trip).
        dev.temp(0, 97.0)
        state = await state_where(watcher, thermal_state="critical")
        assert state["critical"] is True
        await changed_to(watcher, "ThermalState", "critical")
        dev.temp(0, 40.0)
        state = await state_where(watcher, thermal_state="nominal")
        assert state["critical"] is False
    finally:
        dev.temp(0, 40.0)
        dev.mains(True)
        dev.battery(status="Charging", capacity=80)
    await state_where(watcher, on_battery=False, power_profile="balanced", thermal_state="nominal")
    await changed_to(watcher, "OnBattery", False)


async def test_set_power_profile_with_busctl_gdbus_and_dbus_next(
    served: Served, connect: Any
) -> None:
    watcher, client = await listener(connect), await connect()
    r = await tool(
        served.bus,
        *busctl(served.bus, "call", BUS_NAME, OBJECT_PATH, INTERFACE, "SetPowerProfile", "s",
                "ultra-saver"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    state = await state_where(watcher, power_profile="ultra-saver")
    assert state["profile_source"] == "override"
    await changed_to(watcher, "PowerProfile", "ultra-saver")
    active = await asyncio.to_thread(served.grpc.get_power_profile)
    assert (active.profile, active.source) == (
        common_pb2.POWER_PROFILE_ULTRA_SAVER,
        resources_pb2.PROFILE_SOURCE_OVERRIDE,
    )
    # power-profiles-daemon's spelling and rustaid's are both understood.
    r = await tool(served.bus, *gdbus("SetPowerProfile", "power_saver"))
    assert r.returncode == 0, r.stderr
    await changed_to(watcher, "PowerProfile", "power-saver")
    await client.call("SetPowerProfile", "s", "performance")
    await changed_to(watcher, "PowerProfile", "performance")
    # "auto" (or "") returns to the automatic profile: on AC with a battery, balanced.
    await client.call("SetPowerProfile", "s", "auto")
    state = await state_where(watcher, profile_source="battery")
    assert state["power_profile"] == "balanced"
    await client.call("SetPowerProfile", "s", "")
    assert await client.prop("PowerProfile") == "balanced"
    active = await asyncio.to_thread(served.grpc.get_power_profile)
    assert active.source == resources_pb2.PROFILE_SOURCE_BATTERY


@pytest.mark.parametrize(
    ("profile", "words"),
    [
        ("turbo", ["'turbo' is not a power profile", "power_saver", "'auto'"]),
        ("Performance", ["'Performance' is not a power profile"]),
        ("custom", ["custom profile needs its parameters", "gRPC"]),
        ("x" * 10_000, ["is not a power profile"]),
    ],
)
async def test_set_power_profile_bad_input(
    served: Served, client: Client, profile: str, words: list[str]
) -> None:
    before = await client.prop("PowerProfile")
    e = await error_of(client.call("SetPowerProfile", "s", profile))
    assert e.type == "org.rustai.Daemon1.Error.InvalidArgument"
    for word in words:
        assert word in e.text
    assert len(e.text) < 400
    assert await client.prop("PowerProfile") == before


async def test_set_power_profile_with_a_wrong_argument_type(served: Served) -> None:
    r = await tool(
        served.bus,
        *busctl(served.bus, "call", BUS_NAME, OBJECT_PATH, INTERFACE, "SetPowerProfile", "u",
                "1"),
    )  # fmt: skip
    assert r.returncode != 0 and "takes arguments of type (s), not (u)" in r.stderr


# -- updates: CheckUpdates, UpdateAvailable, UpdateApplied ------------------------------------


async def test_check_updates_and_update_signals(
    served: Served, connect: Any, tmp_path: Path
) -> None:
    watcher, client = await listener(connect), await connect()
    r = await tool(served.bus, *gdbus("CheckUpdates"))
    assert r.returncode == 0, r.stderr
    assert "'artifact_id': <'chat'>" in r.stdout and "'available_version': <'1.0'>" in r.stdout
    announced = values((await watcher.next_signal("UpdateAvailable")).body[0])
    (updates,) = await client.call("CheckUpdates")
    (update,) = [values(u) for u in updates]
    assert update == announced
    assert {k: update[k] for k in ("artifact_id", "kind", "current_version", "available_version",
                                   "channel", "in_rollout", "automatic", "blocked", "note")} == {
        "artifact_id": "chat", "kind": "model", "current_version": "", "available_version": "1.0",
        "channel": "stable", "in_rollout": True, "automatic": True, "blocked": False, "note": "",
    }  # fmt: skip
    assert update["size_bytes"] > 0 and len(update["sha256"]) == 64
    # Each version is announced once, however often it is found again.
    await asyncio.to_thread(served.grpc.check_updates)
    await client.call("Ping", interface="org.freedesktop.DBus.Peer")
    await asyncio.sleep(0.3)
    assert [m.member for m in watcher.history].count("UpdateAvailable") == 1

    # Applied (over gRPC: the same update manager): UpdateApplied says how it ended.
    applied = await asyncio.to_thread(served.grpc.apply_update, wait=True, force=True)
    assert [r.outcome for r in applied.records] == [updates_pb2.UPDATE_PHASE_COMMITTED]
    record = values((await watcher.next_signal("UpdateApplied")).body[0])
    assert {k: record[k] for k in ("artifact_id", "kind", "from_version", "to_version",
                                   "outcome")} == {
        "artifact_id": "chat", "kind": "model", "from_version": "", "to_version": "1.0",
        "outcome": "committed",
    }  # fmt: skip
    assert record["update_id"] and record["finished_time"] >= record["started_time"] > 0
    assert await client.call("CheckUpdates") == [[]]

    # A release that fails its health check: announced, then applied and rolled back.
    good = write_llama_gguf(tmp_path / "v2.gguf", seed=12)
    served.publisher.release(write_truncated_copy(good, tmp_path / "broken.gguf", 0.6), "2.0")
    (updates,) = await client.call("CheckUpdates")
    assert [u["available_version"].value for u in updates] == ["2.0"]
    assert values((await watcher.next_signal("UpdateAvailable")).body[0])["current_version"] == (
        "1.0"
    )
    await asyncio.to_thread(served.grpc.apply_update, wait=True, force=True)
    record = values((await watcher.next_signal("UpdateApplied")).body[0])
    assert (record["from_version"], record["to_version"]) == ("1.0", "2.0")
    assert record["outcome"] in ("rolled_back", "failed") and record["message"]

    # Metadata that fails verification: a named error, and nothing is announced.
    metadata = served.publisher.metadata()
    metadata["signed"]["version"] += 1  # changed after signing
    served.publisher.write_metadata(metadata)
    e = await error_of(client.call("CheckUpdates"))
    assert e.type == "org.rustai.Daemon1.Error.PreconditionFailed" and "signature" in e.text
    assert [m.member for m in watcher.history].count("UpdateAvailable") == 2

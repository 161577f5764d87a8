"""Fuzzing fixtures: hypothesis profiles and one real daemon for the gRPC, D-Bus and HTTP
fuzz tests, sandboxed in a temporary data folder.

The daemon serves a synthetic llama.cpp model, a truncated (broken) one, the real
all-MiniLM-L6-v2 embeddings (a tiny ONNX model when the shared folder is missing), a
WebAssembly tool and a collection with documents, so that random requests seeded with
these names get past "not found". IndexFile may read only `<tmp>/allowed`; the power
subsystem reads /sys and /proc but does not talk to the system bus or udev.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

from rustaid.api.v1 import (
    common_pb2,
    generate_pb2,
    generate_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    plugins_pb2,
    plugins_pb2_grpc,
    rag_pb2,
    rag_pb2_grpc,
    tools_pb2,
    tools_pb2_grpc,
)
from rustaid.testing.daemon import DaemonProcess, run_daemon
from rustaid.testing.dbus import PrivateBus, private_bus
from rustaid.testing.synthetic import ModelShape, write_llama_gguf
from tests.rag.conftest import MINILM, link_embedding_model
from tests.rag.documents import make_docx, make_pdf
from tests.rag.models import write_model
from tests.tools.conftest import EXAMPLE_WAT, compile_wat

# -- hypothesis ------------------------------------------------------------------------
# "fuzz" (default): derandomized (the same examples every run, so a CI failure
# reproduces locally), no example database written anywhere, no per-example deadline
# (calls into a real daemon on a shared machine vary). "long": random seeds (printed
# on failure with the blob to reproduce it) and many more examples; select it with
# `--hypothesis-profile=long` (when pytest is pointed at tests/fuzz) or
# RUSTAID_FUZZ_PROFILE=long.
_COMMON = {
    "database": None,
    "deadline": None,
    "print_blob": True,
    "suppress_health_check": [
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
    ],
}
# Hypothesis still caches Unicode tables and source constants on disk: in the user's
# cache folder, not in the repository.
if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    _cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    set_hypothesis_home_dir(_cache / "rustaid" / "hypothesis")
settings.register_profile("fuzz", derandomize=True, **_COMMON)  # type: ignore[arg-type]
settings.register_profile("long", derandomize=False, max_examples=500, **_COMMON)  # type: ignore[arg-type]
if os.environ.get("RUSTAID_FUZZ_PROFILE"):
    settings.load_profile(os.environ["RUSTAID_FUZZ_PROFILE"])
elif settings.get_current_profile_name() == "default":
    settings.load_profile("fuzz")


def examples(default: int) -> int:
    """Examples per fuzz target: RUSTAID_FUZZ_EXAMPLES, else the profile's count when a
    profile other than "fuzz" was chosen, else `default` (sized for the CI budget)."""
    env = os.environ.get("RUSTAID_FUZZ_EXAMPLES")
    if env:
        return max(1, int(env))
    if settings.get_current_profile_name() not in ("fuzz", "default"):
        return int(settings.default.max_examples)
    return default


# -- the daemon under fuzz ---------------------------------------------------------------

LLM = "tiny"
# TINY's shapes with room for an agent's tool descriptions in the context.
LLM_SHAPE = ModelShape(context_length=2048)
BROKEN = "broken"
EMBEDDINGS = "embeddings/minilm"
COLLECTION = "docs"
DOCUMENT_IDS = ("animals", "cities")
WASM_TOOL_FILE = "word_count.wasm"
# A generation after a fuzzed call must be served within this (the model is free again).
PROBE_DEADLINE_S = 20.0


def short(value: Any, limit: int = 600) -> str:
    """A fuzzed value for a message: its repr, cut when long."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


class Target:
    """The daemon under fuzz and the real names to seed requests with."""

    def __init__(
        self, daemon: DaemonProcess, channel: grpc.Channel, allowed: Path, bus: PrivateBus | None
    ) -> None:
        self.daemon = daemon
        self.channel = channel
        self.allowed = allowed
        self.bus = bus
        self.model_ids: tuple[str, ...] = ()
        self.plugin_ids: tuple[str, ...] = ()
        self.tool_names: tuple[str, ...] = ()
        self.files: tuple[str, ...] = ()
        self.contents: tuple[bytes, ...] = ()  # of the regular files among them
        self.baseline_fds: list[str] = []
        self.active_plugins: frozenset[str] = frozenset()
        # Status codes seen per target, for the summary printed at the end.
        self.outcomes: dict[str, Counter[str]] = defaultdict(Counter)
        # One error message per target and status code (shown with -v).
        self.samples: dict[tuple[str, str], str] = {}
        # (seconds, target, request) of the slowest calls (shown with -v).
        self.slowest: list[tuple[float, str, str]] = []

    def record(self, name: str, code: str, details: str, seconds: float, what: str) -> None:
        self.outcomes[name][code] += 1
        self.samples.setdefault((name, code), details[:200])
        self.slowest = sorted([*self.slowest, (seconds, name, what[:300])], reverse=True)[:8]

    def __repr__(self) -> str:
        return f"<daemon pid {self.pid} at {self.daemon.address}>"

    @property
    def pid(self) -> int:
        return self.daemon.proc.pid

    def alive(self) -> bool:
        return self.daemon.proc.poll() is None

    def log_tail(self, lines: int = 40, width: int = 300) -> str:
        """The end of the daemon's log, long lines cut (fuzzed names can be huge)."""
        tail = self.daemon.stderr().splitlines()[-lines:]
        return "\n".join(line if len(line) <= width else line[:width] + " [...]" for line in tail)

    def assert_model_free(self, after: str) -> None:
        """A one-token generation is served within PROBE_DEADLINE_S: the daemon stopped
        working for a caller that gave up or left (`after` says what happened)."""
        stub = generate_pb2_grpc.GenerateServiceStub(self.channel)
        request = generate_pb2.GenerateRequest(
            model_id=LLM, prompt="hi", params=common_pb2.GenerationParams(max_tokens=1)
        )
        try:
            stub.Generate(request, timeout=PROBE_DEADLINE_S)
        except grpc.RpcError as e:
            raise AssertionError(
                f"after {after}, a one-token generation got {e.code().name} within "  # type: ignore[attr-defined]
                f"{PROBE_DEADLINE_S} s: the daemon keeps working for a caller that left\n"
                f"{self.log_tail()}"
            ) from None

    def fds(self) -> list[str]:
        """What the daemon's file descriptors point at (sockets, pipes, files...)."""
        out = []
        for fd in Path(f"/proc/{self.pid}/fd").iterdir():
            with contextlib.suppress(OSError):  # closed meanwhile
                out.append(str(fd.readlink()))
        return sorted(out)

    def restore(self) -> None:
        """Undo what a fuzz target may have changed that later targets rely on: plugins
        unloaded, the seeded collection deleted."""
        plugins = plugins_pb2_grpc.PluginsServiceStub(self.channel)
        active = plugins_pb2.PLUGIN_STATE_ACTIVE
        for p in plugins.ListPlugins(plugins_pb2.ListPluginsRequest(), timeout=30).plugins:
            if p.id in self.active_plugins and p.state != active:
                plugins.LoadPlugin(plugins_pb2.LoadPluginRequest(id=p.id), timeout=60)
        rag = rag_pb2_grpc.RagServiceStub(self.channel)
        names = {
            c.name
            for c in rag.ListCollections(rag_pb2.ListCollectionsRequest(), timeout=30).collections
        }
        if COLLECTION not in names:
            seed_collection(self.channel)


def seed_collection(channel: grpc.Channel) -> None:
    rag = rag_pb2_grpc.RagServiceStub(channel)
    rag.CreateCollection(rag_pb2.CreateCollectionRequest(name=COLLECTION), timeout=60)
    docs = [
        rag_pb2.Document(id="animals", text="The cat and the dog sleep by the fire."),
        rag_pb2.Document(id="cities", text="Paris is the capital of France."),
    ]
    rag.IndexDocuments(
        iter([rag_pb2.IndexDocumentsRequest(collection=COLLECTION, documents=docs)]), timeout=60
    )


def _old(path: Path) -> None:
    old = time.time() - 3600  # not a file still being copied
    os.utime(path, (old, old))


def _data_dir(root: Path, allowed: Path) -> Path:
    data = root / "data"
    for sub in ("models", "plugins", "config"):
        (data / sub).mkdir(parents=True, mode=0o755)
        (data / sub).chmod(0o755)
    model = write_llama_gguf(data / "models" / f"{LLM}.gguf", LLM_SHAPE, seed=1)
    broken = data / "models" / f"{BROKEN}.gguf"
    broken.write_bytes(model.read_bytes()[:5000])
    _old(broken)
    if (MINILM / "model.onnx").is_file():
        link_embedding_model(data, MINILM, "minilm")
    else:  # the real weights are not on this machine: a tiny real ONNX model instead
        link_embedding_model(data, write_model(root / "tiny-onnx", dim=16), "minilm")
    compile_wat(EXAMPLE_WAT.read_text(), data / "plugins" / WASM_TOOL_FILE)
    (data / "config" / "rustaid.toml").write_text(
        # The HTTP API too (tests/fuzz/test_http.py), on a free loopback port.
        'http_listen = ["127.0.0.1:0"]\n'
        "[rag]\n"
        f'embedding_model = "{EMBEDDINGS}"\n'
        f'allowed_folders = ["{allowed}"]\n'
        "embedding_threads = 1\n"
        "[power]\n"
        "dbus = false\n"
        "udev = false\n"
    )
    return data


def _allowed(root: Path) -> Path:
    allowed = root / "allowed"
    allowed.mkdir()
    (allowed / "notes.txt").write_text("The cat sat on the mat.\nIt was warm.\n")
    (allowed / "guide.md").write_text("# Install\n\nCopy the model into the folder.\n")
    (allowed / "page.html").write_text("<html><body><h1>Hi</h1><p>Paris.</p></body></html>")
    (allowed / "doc.pdf").write_bytes(make_pdf([["Page one text."], ["Page two text."]]))
    (allowed / "doc.docx").write_bytes(make_docx([("h1", "Title"), ("p", "Body text.")]))
    (allowed / "empty.txt").write_bytes(b"")
    (allowed / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (allowed / "sub").mkdir()
    (allowed / "escape").symlink_to("/etc/hostname")  # a symlink out of the allowed folder
    return allowed


TARGET = pytest.StashKey["Target"]()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """How many calls each fuzzed method got, by status code."""
    target = config.stash.get(TARGET, None)
    if target is None or not target.outcomes:
        return
    terminalreporter.section("fuzzed calls by status")
    for name in sorted(target.outcomes):
        counts = target.outcomes[name]
        detail = ", ".join(f"{code} {n}" for code, n in counts.most_common())
        terminalreporter.write_line(f"{name}: {sum(counts.values())} ({detail})")
        if config.get_verbosity() > 0:
            for code in counts:
                if (name, code) in target.samples:
                    terminalreporter.write_line(f"    {code}: {target.samples[name, code]}")
    if config.get_verbosity() > 0:
        terminalreporter.write_line("slowest calls:")
        for seconds, name, what in target.slowest:
            terminalreporter.write_line(f"  {seconds:6.2f} s {name}: {what}")


@pytest.fixture(scope="package")
def target(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[Target]:
    root = tmp_path_factory.mktemp("fuzz")
    allowed = _allowed(root)
    data = _data_dir(root, allowed)
    with _maybe_bus() as bus:
        env = bus.env() if bus is not None else {}
        with run_daemon(data, env=env) as daemon:
            channel = grpc.insecure_channel(
                daemon.address,
                options=[
                    ("grpc.max_send_message_length", 64 << 20),
                    ("grpc.max_receive_message_length", 64 << 20),
                ],
            )
            t = Target(daemon, channel, allowed, bus)
            pytestconfig.stash[TARGET] = t
            _warm_up(t)
            yield t
            channel.close()


class _maybe_bus:
    """A private session bus when dbus-daemon is installed, else None."""

    def __enter__(self) -> PrivateBus | None:
        self._cm = private_bus() if shutil.which("dbus-daemon") else None
        return self._cm.__enter__() if self._cm is not None else None

    def __exit__(self, *exc: object) -> None:
        if self._cm is not None:
            self._cm.__exit__(*exc)  # type: ignore[arg-type]


def _warm_up(t: Target) -> None:
    """Open what the daemon opens lazily (model, embeddings, store, WASM engine), then
    record the names to seed requests with and the descriptor count to compare with."""
    ch = t.channel
    seed_collection(ch)
    models = models_pb2_grpc.ModelsServiceStub(ch)
    models.LoadModel(models_pb2.LoadModelRequest(id=LLM), timeout=60)
    rag = rag_pb2_grpc.RagServiceStub(ch)
    rag.Search(rag_pb2.SearchRequest(collection=COLLECTION, query="cat"), timeout=60)
    tools = tools_pb2_grpc.ToolsServiceStub(ch)
    listed = tools.ListTools(tools_pb2.ListToolsRequest(), timeout=30)
    tools.ExecuteTool(
        tools_pb2.ExecuteToolRequest(name="word_count", arguments_json='{"text": "a b"}'),
        timeout=30,
    )
    plugins = plugins_pb2_grpc.PluginsServiceStub(ch)
    records = plugins.ListPlugins(plugins_pb2.ListPluginsRequest(), timeout=30).plugins
    listed_models = models.ListModels(models_pb2.ListModelsRequest(), timeout=30).models
    t.model_ids = tuple(m.id for m in listed_models)
    t.plugin_ids = tuple(p.id for p in records)
    t.active_plugins = frozenset(
        p.id for p in records if p.state == plugins_pb2.PLUGIN_STATE_ACTIVE
    )
    t.tool_names = tuple(tool.name for tool in listed.tools)
    t.files = tuple(str(p) for p in sorted(t.allowed.rglob("*")))
    t.contents = tuple(
        p.read_bytes() for p in sorted(t.allowed.rglob("*")) if p.is_file() and not p.is_symlink()
    )
    assert LLM in t.model_ids and EMBEDDINGS in t.model_ids, t.model_ids
    t.baseline_fds = t.fds()

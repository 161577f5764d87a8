"""Soak: many concurrent clients against one daemon for a long time, a mixed workload.

    .venv/bin/python tests/bench/soak.py [--duration 600] [--clients 32] [--warmup 60]
                                         [--workers 1] [--channels 8] [--json out.json]
                                         [--hostile]

One `rustaid serve` child serves a small synthetic llama GGUF (4 layers, n_embd 256: a
32-token generation takes tens of milliseconds), the real all-MiniLM-L6-v2 (int8) for
embeddings and a Qdrant Edge collection of --chunks indexed chunks. --clients clients
(grpc.aio, spread over --channels channels, each its own connection, in --workers
processes) each run a closed loop for --warmup + --duration seconds, picking a request
at random by the weights of --mix:

| kind | request |
|---|---|
| list_models | ModelsService.ListModels |
| embed | RagService.Embed, 1-8 sentences |
| search | RagService.Search, top_k 5 |
| index | RagService.IndexDocuments, one document replacing one of 20 |
| generate | GenerateService.Generate, max_tokens 16 |
| stream | GenerateService.GenerateStream, max_tokens 32, read to the end |
| stream_cancel | GenerateStream, max_tokens 128, cancelled by the client after 2-6 chunks |
| chat | GenerateService.ChatStream in a session of 3 turns (only the new message sent) |
| ask | RagService.Ask, top_k 3, max_tokens 16 |
| tool_bomb | ToolsService.ExecuteTool: code_exec running a fork bomb (hostile) |

tool_bomb is not in the default mix: add it (`--mix ...,tool_bomb=2`). It turns
code_exec on, whose sandbox needs the soak to run as root with the rustaid-tool user.

Outcomes are counted by status code. RESOURCE_EXHAUSTED (admission control, a full
queue) is expected under overload: it is counted apart, and the client waits the
RetryInfo delay the daemon sent (or backs off exponentially without one) and retries.
Client-cancelled streams are expected. Everything else is an error.

Every --sample seconds the daemon's resident memory, open file descriptors and threads
are read from /proc/PID. Pass criteria (the exit status is 1 when one fails):
- the daemon never exits; no INTERNAL or UNKNOWN; no other unexpected status;
- resident memory after warm-up grows less than --max-rss-growth (5 %): the median of
  the last window of samples against the median of the first window after warm-up;
- open file descriptors do not grow (the last window's max <= the first window's max);
- every kind of request succeeded at least once;
- at the end the daemon is healthy (grpc.health.v1 SERVING, a Generate and a Search
  answer), logged no tracebacks, and exits 0 on SIGTERM.
Throughput, p50/p99 latency per kind (and time to the first chunk of streams) are for
the period after warm-up.

--hostile (needs root: the daemon's data goes on a tmpfs of its own): the measured
period is split in two halves, quiet then hostile. In the hostile half a process of its
own sends huge and costliest grammars and floods the socket with idle connections, and
the disk fills up in the middle of it (tests/bench/hostile.py). Further pass criteria:
the legitimate clients' p99 latency of each kind in the hostile half is within 2x of
the quiet half's, and the hostile requests never got INTERNAL or UNKNOWN (the huge
grammar always INVALID_ARGUMENT).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `tests` and `rustaid` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench import common

MODEL_NAME = "soak-synthetic"
COLLECTION = "soak"
REPLACED_DOCUMENTS = 20
CHAT_TURNS = 3
DEFAULT_MIX = (
    "list_models=8,embed=14,search=16,index=3,generate=14,stream=14,stream_cancel=10,chat=12,ask=6"
)
# Hostile kinds, added to the mix by name (e.g. --mix ...,tool_bomb=2).
HOSTILE_KINDS = ("tool_bomb",)
KINDS = tuple(k.split("=")[0] for k in DEFAULT_MIX.split(",")) + HOSTILE_KINDS
FORK_BOMB = "import os\ntry:\n    while True:\n        os.fork()\nexcept OSError:\n    pass\n"
# Outcomes that are not errors: RESOURCE_EXHAUSTED is admission control doing its job.
OK = "OK"
CLIENT_CANCELLED = "CANCELLED_BY_CLIENT"
EXHAUSTED = "RESOURCE_EXHAUSTED"
EXPECTED = {OK, CLIENT_CANCELLED, EXHAUSTED}
BUG_CODES = {"INTERNAL", "UNKNOWN"}
# Back-off after RESOURCE_EXHAUSTED without RetryInfo: 50 ms doubling, at most 2 s.
BACKOFF_S = 0.05
BACKOFF_MAX_S = 2.0
RETRY_WAIT_MAX_S = 10.0


def model_shape() -> Any:
    """Small enough that a generation is short, large enough that llama.cpp does work."""
    from rustaid.testing.synthetic import ModelShape

    return ModelShape(n_embd=256, n_layer=4, n_head=4, n_head_kv=2, n_ff=512, context_length=2048)


def parse_mix(text: str) -> dict[str, float]:
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, _, weight = part.partition("=")
        if kind not in KINDS:
            raise SystemExit(f"--mix: unknown kind {kind!r}; known: {', '.join(KINDS)}")
        try:
            mix[kind] = float(weight)
        except ValueError:
            raise SystemExit(f"--mix: {part!r} is not KIND=WEIGHT") from None
    if not any(w > 0 for w in mix.values()):
        raise SystemExit("--mix: at least one kind needs a positive weight")
    return {k: w for k, w in mix.items() if w > 0}


# -- clients (run in worker processes) ---------------------------------------------------


@dataclass
class WorkerPlan:
    index: int
    address: str
    clients: int
    channels: int
    start_at: float  # time.time() of the common start
    stop_at: float
    mix: dict[str, float]
    model_id: str
    timeout_s: float
    max_retries: int
    seed: int


@dataclass
class Records:
    """One row per attempt: end time (s since the start), kind, outcome, latency and time
    to the first chunk (ms; -1 when not a stream)."""

    t: list[float] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)
    outcome: list[str] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)
    retry_info: int = 0  # RESOURCE_EXHAUSTED answers that carried RetryInfo
    retry_wait_s: float = 0.0
    gave_up: int = 0  # requests still RESOURCE_EXHAUSTED after max_retries
    client_errors: list[str] = field(default_factory=list)
    loop_lag_ms: list[float] = field(default_factory=list)


def retry_delay(error: Any) -> float | None:
    """The RetryInfo delay of a status, in seconds, or None."""
    from google.rpc import error_details_pb2, status_pb2

    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    info = error_details_pb2.RetryInfo()
                    detail.Unpack(info)
                    return float(info.retry_delay.ToTimedelta().total_seconds())
    return None


class Client:
    """One simulated client: a closed loop of requests on its channel."""

    def __init__(self, plan: WorkerPlan, channel: Any, number: int, rec: Records) -> None:
        from rustaid.api.v1 import (
            generate_pb2_grpc,
            models_pb2_grpc,
            rag_pb2_grpc,
            tools_pb2_grpc,
        )
        from tests.bench.rag import sentences

        self.plan = plan
        self.rec = rec
        self.rng = random.Random(plan.seed * 1000 + number)
        self.name = f"w{plan.index}c{number}"
        self.models = models_pb2_grpc.ModelsServiceStub(channel)
        self.gen = generate_pb2_grpc.GenerateServiceStub(channel)
        self.rag = rag_pb2_grpc.RagServiceStub(channel)
        self.tools = tools_pb2_grpc.ToolsServiceStub(channel)
        self.texts = sentences(200, seed=3 + number)
        self.session = ""
        self.session_turns = 0
        self.sessions = 0
        self.ops: dict[str, Callable[[], Awaitable[tuple[str, float]]]] = {
            "list_models": self.list_models,
            "embed": self.embed,
            "search": self.search,
            "index": self.index,
            "generate": self.generate,
            "stream": self.stream,
            "stream_cancel": self.stream_cancel,
            "chat": self.chat,
            "ask": self.ask,
            "tool_bomb": self.tool_bomb,
        }

    def params(self, max_tokens: int) -> Any:
        from rustaid.api.v1 import common_pb2

        return common_pb2.GenerationParams(
            max_tokens=max_tokens, temperature=0.7, seed=self.rng.randrange(1 << 30)
        )

    def prompt(self) -> str:
        return self.rng.choice(self.texts)

    # Each returns (outcome, time to the first chunk in ms or -1).
    async def list_models(self) -> tuple[str, float]:
        from rustaid.api.v1 import models_pb2

        r = await self.models.ListModels(
            models_pb2.ListModelsRequest(), timeout=self.plan.timeout_s
        )
        if not any(m.id == self.plan.model_id for m in r.models):
            raise AssertionError(f"ListModels lacks {self.plan.model_id}")
        return OK, -1.0

    async def embed(self) -> tuple[str, float]:
        from rustaid.api.v1 import rag_pb2

        texts = self.rng.sample(self.texts, self.rng.randint(1, 8))
        r = await self.rag.Embed(rag_pb2.EmbedRequest(texts=texts), timeout=self.plan.timeout_s)
        if len(r.embeddings) != len(texts) or len(r.embeddings[0].values) != r.dimension:
            raise AssertionError("Embed returned the wrong number or size of vectors")
        return OK, -1.0

    async def search(self) -> tuple[str, float]:
        from rustaid.api.v1 import rag_pb2

        r = await self.rag.Search(
            rag_pb2.SearchRequest(collection=COLLECTION, query=self.prompt(), top_k=5),
            timeout=self.plan.timeout_s,
        )
        if len(r.hits) != 5:
            raise AssertionError(f"Search returned {len(r.hits)} hits, not 5")
        return OK, -1.0

    async def index(self) -> tuple[str, float]:
        from rustaid.api.v1 import rag_pb2

        doc = rag_pb2.Document(
            id=f"replaced-{self.rng.randrange(REPLACED_DOCUMENTS)}",
            text=" ".join(self.rng.sample(self.texts, 3)),
            source="soak",
        )

        async def requests() -> Any:
            yield rag_pb2.IndexDocumentsRequest(collection=COLLECTION, documents=[doc])

        r = await self.rag.IndexDocuments(requests(), timeout=self.plan.timeout_s)
        if r.documents_indexed + r.documents_unchanged + r.documents_replaced < 1:
            raise AssertionError(f"IndexDocuments indexed nothing: {r}")
        return OK, -1.0

    async def generate(self) -> tuple[str, float]:
        from rustaid.api.v1 import generate_pb2

        request = generate_pb2.GenerateRequest(
            model_id=self.plan.model_id, prompt=self.prompt(), params=self.params(16)
        )
        r = await self.gen.Generate(request, timeout=self.plan.timeout_s)
        if r.model_id != self.plan.model_id:
            raise AssertionError(f"Generate answered with model {r.model_id!r}")
        return OK, -1.0

    async def _read_stream(self, call: Any, t0: float, cancel_after: int = 0) -> tuple[str, float]:
        first = -1.0
        chunks = 0
        done = False
        async for r in call:
            event = r.WhichOneof("event")
            if event == "chunk":
                chunks += 1
                if first < 0:
                    first = (time.perf_counter() - t0) * 1000
                if cancel_after and chunks >= cancel_after:
                    call.cancel()
                    return CLIENT_CANCELLED, first
            elif event == "done":
                done = True
        if cancel_after:  # it finished before the cancel: a normal end
            return OK, first
        if not done:
            raise AssertionError("the stream ended without GenerationDone")
        return OK, first

    async def stream(self) -> tuple[str, float]:
        from rustaid.api.v1 import generate_pb2

        request = generate_pb2.GenerateStreamRequest(
            model_id=self.plan.model_id, prompt=self.prompt(), params=self.params(32)
        )
        t0 = time.perf_counter()
        return await self._read_stream(
            self.gen.GenerateStream(request, timeout=self.plan.timeout_s), t0
        )

    async def stream_cancel(self) -> tuple[str, float]:
        from rustaid.api.v1 import generate_pb2

        request = generate_pb2.GenerateStreamRequest(
            model_id=self.plan.model_id, prompt=self.prompt(), params=self.params(128)
        )
        t0 = time.perf_counter()
        call = self.gen.GenerateStream(request, timeout=self.plan.timeout_s)
        return await self._read_stream(call, t0, cancel_after=self.rng.randint(2, 6))

    async def chat(self) -> tuple[str, float]:
        from rustaid.api.v1 import generate_pb2

        if not self.session or self.session_turns >= CHAT_TURNS:
            self.sessions += 1
            self.session = f"{self.name}-s{self.sessions}"
            self.session_turns = 0
        message = generate_pb2.ChatMessage(role=generate_pb2.ROLE_USER, content=self.prompt())
        request = generate_pb2.ChatStreamRequest(
            model_id=self.plan.model_id,
            messages=[message],
            params=self.params(16),
            session_id=self.session,
        )
        t0 = time.perf_counter()
        outcome = await self._read_stream(
            self.gen.ChatStream(request, timeout=self.plan.timeout_s), t0
        )
        self.session_turns += 1
        return outcome

    async def ask(self) -> tuple[str, float]:
        from rustaid.api.v1 import rag_pb2

        request = rag_pb2.AskRequest(
            collection=COLLECTION,
            question=self.prompt(),
            top_k=3,
            model_id=self.plan.model_id,
            params=self.params(16),
        )
        t0 = time.perf_counter()
        return await self._read_stream(self.rag.Ask(request, timeout=self.plan.timeout_s), t0)

    async def tool_bomb(self) -> tuple[str, float]:
        """A fork bomb through code_exec: its sandbox must contain it, and the call must
        end (at the process limit, or at its wall-time limit) without hurting others."""
        import json

        from rustaid.api.v1 import tools_pb2

        request = tools_pb2.ExecuteToolRequest(
            name="code_exec", arguments_json=json.dumps({"code": FORK_BOMB})
        )
        r = await self.tools.ExecuteTool(request, timeout=self.plan.timeout_s)
        contained = (
            tools_pb2.TOOL_CALL_STATUS_OK,
            tools_pb2.TOOL_CALL_STATUS_LIMIT_EXCEEDED,
            tools_pb2.TOOL_CALL_STATUS_TIMEOUT,
        )
        assert r.status in contained, f"code_exec: {r.status} {r.error}"
        return OK, -1.0

    async def run(self) -> None:
        import grpc

        kinds, weights = zip(*self.plan.mix.items(), strict=True)
        rec = self.rec
        while time.time() < self.plan.stop_at:
            kind = self.rng.choices(kinds, weights)[0]
            for attempt in range(self.plan.max_retries + 1):
                t0 = time.perf_counter()
                delay: float | None = None
                try:
                    outcome, ttft = await self.ops[kind]()
                except grpc.aio.AioRpcError as e:
                    outcome, ttft = e.code().name, -1.0
                    delay = (
                        retry_delay(e) if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else None
                    )
                except AssertionError as e:  # a wrong answer with status OK
                    outcome, ttft, delay = "WRONG_ANSWER", -1.0, None
                    rec.client_errors.append(f"{kind}: {e}")
                latency = (time.perf_counter() - t0) * 1000
                rec.t.append(time.time() - self.plan.start_at)
                rec.kind.append(kind)
                rec.outcome.append(outcome)
                rec.latency_ms.append(latency)
                rec.ttft_ms.append(ttft)
                if outcome != EXHAUSTED:
                    break
                if delay is not None:
                    rec.retry_info += 1
                    wait = min(delay, RETRY_WAIT_MAX_S)
                else:
                    wait = min(BACKOFF_S * 2**attempt, BACKOFF_MAX_S)
                wait *= self.rng.uniform(1.0, 1.2)  # jitter: the clients do not retry in step
                wait = max(0.0, min(wait, self.plan.stop_at - time.time()))
                rec.retry_wait_s += wait
                await asyncio.sleep(wait)
                if time.time() >= self.plan.stop_at:
                    break
            else:
                rec.gave_up += 1


async def _loop_lag(rec: Records, stop_at: float) -> None:
    """How late the event loop wakes up: large values mean this process, not the daemon,
    limits the clients."""
    while time.time() < stop_at:
        t0 = time.perf_counter()
        await asyncio.sleep(0.1)
        rec.loop_lag_ms.append((time.perf_counter() - t0 - 0.1) * 1000)


async def _worker(plan: WorkerPlan) -> Records:
    import grpc

    rec = Records()
    # Distinct channel arguments and a local subchannel pool: one connection per channel.
    channels = [
        grpc.aio.insecure_channel(
            plan.address,
            options=[("grpc.use_local_subchannel_pool", 1), ("rustaid.soak.channel", i)],
        )
        for i in range(plan.channels)
    ]
    try:
        for ch in channels:
            await asyncio.wait_for(ch.channel_ready(), 30)
        clients = [Client(plan, channels[i % len(channels)], i, rec) for i in range(plan.clients)]
        await asyncio.sleep(max(0.0, plan.start_at - time.time()))
        await asyncio.gather(_loop_lag(rec, plan.stop_at), *(c.run() for c in clients))
    finally:
        for ch in channels:
            await ch.close()
    return rec


def worker_main(plan: dict[str, Any], conn: Any) -> None:
    """Entry point of a client process: run the plan, send the records back (plain data:
    the script's classes are not importable under the same name in both processes)."""
    try:
        rec = asyncio.run(_worker(WorkerPlan(**plan)))
        conn.send(("ok", vars(rec)))
    except BaseException as e:  # report anything, the parent decides
        import traceback

        conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
    finally:
        conn.close()


# -- the daemon ----------------------------------------------------------------------------


def proc_sample(pid: int) -> dict[str, float]:
    """Resident memory (MB), open fds, threads and CPU seconds of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = {line.split(":")[0]: line.split(":", 1)[1].split() for line in status.splitlines()}
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    hz = os.sysconf("SC_CLK_TCK")
    return {
        "rss_mb": int(fields["VmRSS"][0]) / 1024,
        "fds": sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir()),
        "threads": int(fields["Threads"][0]),
        "cpu_s": (int(stat[11]) + int(stat[12])) / hz,
    }


def cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def setup_data_dir(root: Path, threads: int, code_exec: bool = False) -> tuple[Path, str]:
    """models/ with the synthetic GGUF, the MiniLM folders, the [rag] config, and
    [tools] with code_exec when the mix has tool calls."""
    from rustaid.core.registry import model_id_for
    from tests.bench.rag import model_folders

    model = common.synthetic_model(model_shape(), MODEL_NAME, "F32")
    (root / "models").mkdir(parents=True)
    (root / "models" / model.name).symlink_to(model)
    model_folders(root)
    (root / "config").mkdir()
    (root / "config" / "rustaid.toml").write_text(
        "[rag]\n"
        f'embedding_model = "embeddings/minilm-int8"\nembedding_threads = {threads}\n'
        "embedding_batch_size = 64\n"
        + ('[tools]\nenable = ["code_exec"]\n[tools.code_exec]\nwall_s = 5\n' if code_exec else "")
    )
    return model, model_id_for(Path(model.name))


def fill_collection(address: str, chunks: int) -> float:
    """Index `chunks` one-chunk documents into the soak collection, wait until searchable."""
    import grpc

    from rustaid.api.v1 import rag_pb2, rag_pb2_grpc
    from tests.bench.rag import sentences, wait_indexed

    t0 = time.perf_counter()
    with grpc.insecure_channel(address) as channel:
        stub = rag_pb2_grpc.RagServiceStub(channel)
        stub.CreateCollection(rag_pb2.CreateCollectionRequest(name=COLLECTION))
        corpus = sentences(chunks, seed=1)

        def requests() -> Any:
            for i in range(0, len(corpus), 100):
                docs = [
                    rag_pb2.Document(id=f"d{i + k}", text=t, source="soak")
                    for k, t in enumerate(corpus[i : i + 100])
                ]
                yield rag_pb2.IndexDocumentsRequest(collection=COLLECTION, documents=docs)

        stub.IndexDocuments(requests(), timeout=900)
        wait_indexed(stub, COLLECTION)
    return time.perf_counter() - t0


def final_checks(address: str, model_id: str) -> dict[str, Any]:
    """Health, one Generate and one Search on a fresh connection after the soak."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from rustaid.api.v1 import (
        common_pb2,
        generate_pb2,
        generate_pb2_grpc,
        rag_pb2,
        rag_pb2_grpc,
    )

    out: dict[str, Any] = {}
    with grpc.insecure_channel(address) as channel:
        try:
            h = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
            out["health"] = health_pb2.HealthCheckResponse.ServingStatus.Name(h.status)
        except grpc.RpcError as e:
            out["health"] = f"error {e.code().name}"
        try:
            t0 = time.perf_counter()
            r = generate_pb2_grpc.GenerateServiceStub(channel).Generate(
                generate_pb2.GenerateRequest(
                    model_id=model_id,
                    prompt="hello",
                    params=common_pb2.GenerationParams(max_tokens=8, temperature=0),
                ),
                timeout=60,
            )
            out["generate"] = "ok" if r.usage.completion_tokens > 0 else "no tokens"
            out["generate_ms"] = (time.perf_counter() - t0) * 1000
        except grpc.RpcError as e:
            out["generate"] = f"error {e.code().name}: {e.details()}"
        try:
            t0 = time.perf_counter()
            s = rag_pb2_grpc.RagServiceStub(channel).Search(
                rag_pb2.SearchRequest(collection=COLLECTION, query="the battery", top_k=5),
                timeout=60,
            )
            out["search"] = "ok" if len(s.hits) == 5 else f"{len(s.hits)} hits"
            out["search_ms"] = (time.perf_counter() - t0) * 1000
        except grpc.RpcError as e:
            out["search"] = f"error {e.code().name}: {e.details()}"
    out["healthy"] = (
        out["health"] == "SERVING" and out["generate"] == "ok" and out["search"] == "ok"
    )
    return out


def log_problems(text: str) -> dict[str, Any]:
    lines = text.splitlines()
    tracebacks = [i for i, line in enumerate(lines) if line.startswith("Traceback")]
    errors = [line for line in lines if " ERROR " in line or " CRITICAL " in line]
    warnings = Counter(line.split(" WARNING ", 1)[1][:100] for line in lines if " WARNING " in line)
    return {
        "tracebacks": len(tracebacks),
        "error_lines": len(errors),
        "first_errors": errors[:10],
        "first_traceback": "\n".join(lines[tracebacks[0] : tracebacks[0] + 30])
        if tracebacks
        else "",
        "warnings": dict(warnings.most_common(10)),
    }


# -- analysis ----------------------------------------------------------------------------------


def pct(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return float(values[0])
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


def window_stats(samples: list[dict[str, float]], t0: float, t1: float, key: str) -> list[float]:
    return [s[key] for s in samples if t0 <= s["t"] <= t1]


def analyse(
    recs: list[Records],
    samples: list[dict[str, float]],
    warmup: float,
    end: float,
    mix: dict[str, float],
    max_growth_pct: float,
    sample_s: float,
) -> dict[str, Any]:
    measured = end - warmup
    t = [x for r in recs for x in r.t]
    kind = [x for r in recs for x in r.kind]
    outcome = [x for r in recs for x in r.outcome]
    lat = [x for r in recs for x in r.latency_ms]
    ttft = [x for r in recs for x in r.ttft_ms]
    by_kind: dict[str, Any] = {}
    codes_all: Counter[str] = Counter(outcome)
    for k in mix:
        idx = [i for i in range(len(t)) if kind[i] == k]
        after = [i for i in idx if t[i] >= warmup]
        good = [i for i in after if outcome[i] in (OK, CLIENT_CANCELLED)]
        firsts = [ttft[i] for i in good if ttft[i] >= 0]
        by_kind[k] = {
            "outcomes": dict(Counter(outcome[i] for i in idx)),
            "outcomes_after_warmup": dict(Counter(outcome[i] for i in after)),
            "ok_after_warmup": len(good),
            "throughput_per_s": len(good) / measured if measured > 0 else float("nan"),
            "attempts_per_s": len(after) / measured if measured > 0 else float("nan"),
            "p50_ms": pct([lat[i] for i in good], 50),
            "p99_ms": pct([lat[i] for i in good], 99),
            "max_ms": max((lat[i] for i in good), default=float("nan")),
            "ttft_p50_ms": pct(firsts, 50),
            "ttft_p99_ms": pct(firsts, 99),
            "exhausted_p50_ms": pct([lat[i] for i in after if outcome[i] == EXHAUSTED], 50),
        }
    # Time series for the plots: per 10 s window, per kind, count and latency percentiles.
    step = 10.0
    series: dict[str, list[list[float]]] = defaultdict(list)
    buckets: dict[tuple[str, int], list[float]] = defaultdict(list)
    exhausted: Counter[int] = Counter()
    for i in range(len(t)):
        if t[i] >= end:  # the last calls, finishing after the clients stopped starting new ones
            continue
        if outcome[i] in (OK, CLIENT_CANCELLED):
            buckets[(kind[i], int(t[i] // step))].append(lat[i])
        elif outcome[i] == EXHAUSTED:
            exhausted[int(t[i] // step)] += 1
    for (k, b), values in sorted(buckets.items()):
        series[k].append(
            [b * step + step / 2, len(values) / step, pct(values, 50), pct(values, 99)]
        )

    # Memory and descriptors: first window after warm-up against the last window.
    w = max(min(60.0, measured / 10), 3 * sample_s)
    rss_first = window_stats(samples, warmup, warmup + w, "rss_mb")
    rss_last = window_stats(samples, end - w, end, "rss_mb")
    fds_first = window_stats(samples, warmup, warmup + w, "fds")
    fds_last = window_stats(samples, end - w, end, "fds")
    after = [s for s in samples if s["t"] >= warmup]
    rss_base = statistics.median(rss_first) if rss_first else float("nan")
    rss_end = statistics.median(rss_last) if rss_last else float("nan")
    slope = float("nan")
    if len(after) >= 3:
        xs = [s["t"] for s in after]
        ys = [s["rss_mb"] for s in after]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        den = sum((x - mx) ** 2 for x in xs)
        slope = (
            sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den * 3600
            if den
            else 0.0
        )
    memory = {
        "window_s": w,
        "rss_mb_at_warmup_end": rss_base,
        "rss_mb_at_end": rss_end,
        "rss_growth_pct": (rss_end - rss_base) / rss_base * 100 if rss_base else float("nan"),
        "rss_mb_max": max((s["rss_mb"] for s in samples), default=float("nan")),
        "rss_mb_slope_per_hour": slope,
        "fds_at_warmup_end": max(fds_first, default=float("nan")),
        "fds_at_end": max(fds_last, default=float("nan")),
        "fds_min_after_warmup": min((s["fds"] for s in after), default=float("nan")),
        "fds_max_after_warmup": max((s["fds"] for s in after), default=float("nan")),
        "threads_min_after_warmup": min((s["threads"] for s in after), default=float("nan")),
        "threads_max_after_warmup": max((s["threads"] for s in after), default=float("nan")),
        "max_growth_pct": max_growth_pct,
    }
    lags = sorted(x for r in recs for x in r.loop_lag_ms)
    return {
        "by_kind": by_kind,
        "outcomes": dict(codes_all),
        "series": dict(series),
        "exhausted_series": [[b * step + step / 2, n / step] for b, n in sorted(exhausted.items())],
        "memory": memory,
        "retry_info_seen": sum(r.retry_info for r in recs),
        "retry_wait_s": sum(r.retry_wait_s for r in recs),
        "gave_up": sum(r.gave_up for r in recs),
        "client_errors": [e for r in recs for e in r.client_errors][:20],
        "client_loop_lag_ms": {
            "p50": pct(lags, 50),
            "p99": pct(lags, 99),
            "max": max(lags, default=float("nan")),
        },
    }


# -- main ----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=float, default=600, help="seconds measured after warm-up")
    ap.add_argument("--warmup", type=float, default=60, help="seconds of load before measuring")
    ap.add_argument("--clients", type=int, default=32, help="concurrent clients")
    ap.add_argument(
        "--workers", type=int, default=1, help="client processes (the clients are split)"
    )
    ap.add_argument("--channels", type=int, default=0, help="gRPC channels (default clients/4)")
    ap.add_argument("--mix", default=DEFAULT_MIX, help="KIND=WEIGHT,... (default: %(default)s)")
    ap.add_argument("--chunks", type=int, default=2000, help="chunks in the searched collection")
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp and ONNX Runtime threads")
    ap.add_argument(
        "--prompt-cache-mb",
        type=int,
        default=32,
        help="the daemon's prompt cache for chat sessions (its default, 256, takes minutes to "
        "fill; a cache that fills during the warm-up lets growth after it show leaks)",
    )
    ap.add_argument("--timeout", type=float, default=120, help="deadline of each request (s)")
    ap.add_argument("--max-retries", type=int, default=8, help="retries after RESOURCE_EXHAUSTED")
    ap.add_argument("--sample", type=float, default=2.0, help="seconds between /proc samples")
    ap.add_argument("--max-rss-growth", type=float, default=5.0, help="pass limit, percent")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a daemon setting (as RUSTAID_KEY), e.g. --set max_requests_per_client=32",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--hostile",
        action="store_true",
        help="quiet half, then a hostile half (needs root); see the description",
    )
    ap.add_argument("--tmpfs-mb", type=int, default=1024, help="--hostile: the data's tmpfs")
    args = common.parse_args(
        ap, argv, quick={"duration": 30, "warmup": 15, "clients": 8, "chunks": 300}
    )
    mix = parse_mix(args.mix)
    if args.clients < 1 or args.workers < 1 or args.workers > args.clients:
        raise SystemExit("need 1 <= --workers <= --clients")
    channels = args.channels or max(1, args.clients // 4)
    channels = max(channels, args.workers)
    minilm = common.REPO_ROOT.parent / "shared" / "models" / "all-minilm-l6-v2"
    minilm = Path(os.environ.get("RUSTAID_MINILM", minilm))
    if not (minilm / "model.onnx").is_file():
        print(f"the real all-MiniLM-L6-v2 is not at {minilm} (set RUSTAID_MINILM)", file=sys.stderr)
        return 2

    import multiprocessing

    from rustaid.testing.daemon import run_daemon

    if args.hostile and os.geteuid() != 0:
        raise SystemExit("--hostile needs root (it mounts a tmpfs to fill up)")
    machine_start = common.machine()
    root = Path(tempfile.mkdtemp(prefix="rustaid-bench-soak-"))
    if args.hostile:
        import subprocess

        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={args.tmpfs_mb}m,mode=0700", "tmpfs", str(root)],
            check=True,
        )
    model, model_id = setup_data_dir(root, args.threads, code_exec="tool_bomb" in mix)
    settings = {"threads": str(args.threads), "log_level": "warning"}
    if args.hostile:  # the flood comes from another user (nobody), who may connect
        settings["socket_mode"] = "0o666"
    settings["prompt_cache_mb"] = str(args.prompt_cache_mb)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        settings[key.strip().lower()] = value
    env = common.child_env(**{f"RUSTAID_{k.upper()}": v for k, v in settings.items()})
    result: dict[str, Any] = {
        "benchmark": "soak",
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "clients": args.clients,
            "workers": args.workers,
            "channels": channels,
            "mix": mix,
            "chunks": args.chunks,
            "threads": args.threads,
            "prompt_cache_mb": args.prompt_cache_mb,
            "daemon_settings": settings,
            "timeout_s": args.timeout,
            "max_retries": args.max_retries,
            "sample_s": args.sample,
            "model": {"file": model.name, "shape": vars(model_shape()), "file_type": "F32"},
        },
    }
    samples: list[dict[str, float]] = []
    recs: list[Records] = []
    worker_errors: list[str] = []
    crashed = False
    exit_code: int | None = None
    try:
        with run_daemon(root, env=env) as d:
            pid = d.proc.pid
            print(f"daemon pid {pid}; indexing {args.chunks} chunks...", file=sys.stderr)
            result["setup_s"] = fill_collection(d.address, args.chunks)
            result["rss_mb_before_load"] = proc_sample(pid)["rss_mb"]
            ctx = multiprocessing.get_context("spawn")
            start_at = time.time() + 3.0  # the workers connect first
            stop_at = start_at + args.warmup + args.duration
            procs = []
            for w in range(args.workers):
                share = args.clients // args.workers + (w < args.clients % args.workers)
                plan = WorkerPlan(
                    index=w,
                    address=d.address,
                    clients=share,
                    channels=channels // args.workers + (w < channels % args.workers),
                    start_at=start_at,
                    stop_at=stop_at,
                    mix=mix,
                    model_id=model_id,
                    timeout_s=args.timeout,
                    max_retries=args.max_retries,
                    seed=args.seed * 100 + w,
                )
                parent, child = ctx.Pipe(duplex=False)
                p = ctx.Process(target=worker_main, args=(vars(plan), child), daemon=True)
                p.start()
                child.close()
                procs.append((p, parent))
            print(
                f"{args.clients} clients in {args.workers} process(es) on {channels} channels: "
                f"{args.warmup:g} s warm-up + {args.duration:g} s measured",
                file=sys.stderr,
            )
            mid = start_at + args.warmup + args.duration / 2
            hostile_proc = filler = None
            if args.hostile:
                from tests.bench.hostile import DiskFiller, hostile_main

                d.socket_path.parent.chmod(0o711)  # nobody may reach the socket
                plan_h = {"address": d.address, "model_id": model_id}
                plan_h |= {"start_at": mid, "stop_at": stop_at}
                parent, child = ctx.Pipe(duplex=False)
                hp = ctx.Process(target=hostile_main, args=(plan_h, child), daemon=True)
                hp.start()
                child.close()
                hostile_proc = (hp, parent)
                half = args.duration / 2
                filler = DiskFiller(root, mid + 0.25 * half, mid + 0.6 * half)
            cpu0 = {p.pid: cpu_seconds(p.pid) for p, _ in procs}
            next_print = start_at + 30
            while time.time() < stop_at + 1:
                now = time.time()
                if filler is not None:
                    filler.tick(now)
                if d.proc.poll() is not None:
                    crashed = True
                    print(f"DAEMON EXITED with {d.proc.returncode}", file=sys.stderr)
                    break
                try:
                    s = proc_sample(pid)
                except (OSError, KeyError):
                    crashed = d.proc.poll() is not None
                    break
                s["t"] = now - start_at
                s["client_cpu_s"] = sum(cpu_seconds(p.pid) - cpu0[p.pid] for p, _ in procs)
                s["load1"] = os.getloadavg()[0]
                if now >= start_at:
                    samples.append(s)
                if now >= next_print:
                    next_print += 30
                    print(
                        f"  {s['t']:5.0f} s  RSS {s['rss_mb']:6.1f} MB  fds {s['fds']:3.0f}  "
                        f"threads {s['threads']:3.0f}  load {s['load1']:.1f}",
                        file=sys.stderr,
                    )
                time.sleep(max(0.0, min(args.sample, stop_at + 1 - time.time())))
            for p, conn in procs:
                remaining = max(args.timeout + 30, 60)
                if conn.poll(remaining):
                    status, payload = conn.recv()
                    if status == "ok":
                        recs.append(Records(**payload))
                    else:
                        worker_errors.append(payload)
                else:
                    worker_errors.append(f"worker {p.pid} sent nothing in {remaining} s")
                p.join(10)
                if p.is_alive():
                    p.kill()
            if filler is not None:
                filler.tick(float("inf"))  # freed, whatever happened
            if hostile_proc is not None:
                hp, conn = hostile_proc
                if conn.poll(60):
                    status, payload = conn.recv()
                    if status == "ok":
                        result["hostile"] = payload
                    else:
                        worker_errors.append(f"hostile: {payload}")
                else:
                    worker_errors.append("the hostile process sent nothing in 60 s")
                hp.join(10)
                if hp.is_alive():
                    hp.kill()
            if crashed:
                result["final"] = {"healthy": False, "health": "daemon exited"}
            else:
                tail = proc_sample(pid)
                tail["t"] = time.time() - start_at
                samples.append(tail | {"client_cpu_s": float("nan"), "load1": os.getloadavg()[0]})
                result["final"] = final_checks(d.address, model_id)
                t_stop = time.perf_counter()
                exit_code = d.stop(signal.SIGTERM, timeout=60)
                result["stop_s"] = time.perf_counter() - t_stop
            result["daemon_exit_code"] = d.proc.returncode if crashed else exit_code
            result["log"] = log_problems(d.stderr())
    finally:
        if args.hostile:
            import subprocess

            subprocess.run(["umount", "-l", str(root)], check=False)
        shutil.rmtree(root, ignore_errors=True)
    end = args.warmup + args.duration
    if crashed and samples:
        end = samples[-1]["t"]
    a = analyse(recs, samples, args.warmup, end, mix, args.max_rss_growth, args.sample)
    result |= a
    result["samples"] = samples
    result["worker_errors"] = worker_errors
    result["crashed"] = crashed
    result["machine_start"] = machine_start
    result["machine"] = common.machine()
    wall = samples[-1]["t"] if samples else 0.0
    client_cpu = max(
        (s["client_cpu_s"] for s in samples if s["client_cpu_s"] == s["client_cpu_s"]), default=0.0
    )
    result["client_cores"] = client_cpu / wall if wall else float("nan")
    daemon_cpu = samples[-1]["cpu_s"] - samples[0]["cpu_s"] if len(samples) > 1 else float("nan")
    result["daemon_cores"] = (
        daemon_cpu / (samples[-1]["t"] - samples[0]["t"]) if len(samples) > 1 else float("nan")
    )

    outcomes: Counter[str] = Counter(a["outcomes"])
    bugs = sum(n for c, n in outcomes.items() if c in BUG_CODES)
    unexpected = sum(n for c, n in outcomes.items() if c not in EXPECTED)
    mem = a["memory"]
    final = result.get("final", {})
    idle_kinds = [k for k, v in a["by_kind"].items() if v["ok_after_warmup"] == 0]
    checks = {
        "no crash": not crashed and not worker_errors,
        "no INTERNAL/UNKNOWN": bugs == 0,
        "no other unexpected status": unexpected - bugs == 0,
        f"RSS growth < {args.max_rss_growth:g} %": mem["rss_growth_pct"] == mem["rss_growth_pct"]
        and mem["rss_growth_pct"] < args.max_rss_growth,
        "no fd growth": mem["fds_at_end"] <= mem["fds_at_warmup_end"],
        "every kind succeeded": not idle_kinds,
        "healthy at the end": bool(final.get("healthy")),
        "no tracebacks logged": result["log"]["tracebacks"] == 0 if "log" in result else False,
        "exit 0 on SIGTERM": result.get("daemon_exit_code") == 0,
    }
    if args.hostile:
        checks |= hostile_checks(result, recs, args.warmup, args.warmup + args.duration / 2, end)
    result["checks"] = checks
    result["passed"] = all(checks.values())

    # Report.
    rows = []
    for k, v in a["by_kind"].items():
        oc = v["outcomes"]
        rows.append(
            [
                k,
                f"{v['throughput_per_s']:.2f}",
                f"{v['p50_ms']:.1f}",
                f"{v['p99_ms']:.1f}",
                f"{v['ttft_p50_ms']:.1f} / {v['ttft_p99_ms']:.1f}"
                if v["ttft_p50_ms"] == v["ttft_p50_ms"]
                else "",
                oc.get(OK, 0) + oc.get(CLIENT_CANCELLED, 0),
                oc.get(EXHAUSTED, 0),
                sum(n for c, n in oc.items() if c not in EXPECTED),
            ]
        )
    print()
    print(
        f"soak: {args.clients} clients, {args.warmup:g} s warm-up + {args.duration:g} s, "
        f"{channels} channels, {args.workers} client process(es)"
    )
    print(
        common.table(
            [
                "kind",
                "ok/s",
                "p50 ms",
                "p99 ms",
                "first chunk p50/p99",
                "ok",
                "exhausted",
                "errors",
            ],
            rows,
        )
    )
    print(f"outcomes (whole run): {dict(sorted(outcomes.items()))}")
    print(
        f"RESOURCE_EXHAUSTED: {outcomes.get(EXHAUSTED, 0)} ({a['retry_info_seen']} with RetryInfo; "
        f"{a['retry_wait_s']:.0f} s waited in all; {a['gave_up']} gave up after "
        f"{args.max_retries} retries)"
    )
    if a["client_errors"]:
        print(f"wrong answers: {a['client_errors'][:5]}")
    print(
        f"daemon RSS {mem['rss_mb_at_warmup_end']:.1f} MB after warm-up -> "
        f"{mem['rss_mb_at_end']:.1f} MB "
        f"at the end ({mem['rss_growth_pct']:+.2f} %; max {mem['rss_mb_max']:.1f} MB; "
        f"trend {mem['rss_mb_slope_per_hour']:+.1f} MB/h); fds {mem['fds_at_warmup_end']:.0f} -> "
        f"{mem['fds_at_end']:.0f} (range {mem['fds_min_after_warmup']:.0f}-"
        f"{mem['fds_max_after_warmup']:.0f}); threads {mem['threads_min_after_warmup']:.0f}-"
        f"{mem['threads_max_after_warmup']:.0f}"
    )
    lag = a["client_loop_lag_ms"]
    print(
        f"CPU: daemon {result['daemon_cores']:.2f} cores, clients {result['client_cores']:.2f} "
        f"cores; client event-loop lag p50 {lag['p50']:.1f} ms, p99 {lag['p99']:.1f} ms; "
        f"load average {machine_start['loadavg'][0]:.1f} -> {result['machine']['loadavg'][0]:.1f}"
    )
    print(
        f"final: {final}; log: {result['log']['tracebacks']} tracebacks, "
        f"{result['log']['error_lines']} error lines"
    )
    if "hostile_p99" in result:
        print("quiet half vs hostile half, legitimate clients' p99 (ms):")
        rows_h = [
            [k, f"{v['quiet']:.1f}", f"{v['hostile']:.1f}", f"{v['ratio']:.2f}",
             f"{v['n_quiet']}/{v['n_hostile']}"]
            for k, v in result["hostile_p99"].items()
        ]  # fmt: skip
        header = ["kind", "quiet p99", "hostile p99", "ratio", "ok quiet/hostile"]
        print(common.table(header, rows_h))
        print(f"hostile requests: {result.get('hostile', {}).get('codes')}")
        held = result.get("hostile", {}).get("flood_held", [])
        print(f"flood: connections it managed to open per round: {held[:10]}")
    for e in worker_errors:
        print(f"WORKER ERROR: {e}")
    for name, ok in checks.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    common.write_json(args.json, result, figures(result, args))
    print("PASS" if result["passed"] else "FAIL")
    return 0 if result["passed"] else 1


def hostile_checks(
    result: dict[str, Any], recs: list[Records], warmup: float, mid: float, end: float
) -> dict[str, bool]:
    """The legitimate clients' p99 per kind, quiet half against hostile half (kinds with
    at least 20 answers in each), and what the hostile requests got."""
    rows = [
        (t, k, o, lat)
        for r in recs
        for t, k, o, lat in zip(r.t, r.kind, r.outcome, r.latency_ms, strict=True)
        if o in (OK, CLIENT_CANCELLED)
    ]
    table: dict[str, dict[str, float]] = {}
    for kind in sorted({k for _, k, _, _ in rows}):
        quiet = [lat for t, k, _, lat in rows if k == kind and warmup <= t < mid]
        hostile = [lat for t, k, _, lat in rows if k == kind and mid <= t < end]
        if len(quiet) >= 20 and len(hostile) >= 20:
            q, h = pct(quiet, 99), pct(hostile, 99)
            table[kind] = {"quiet": q, "hostile": h, "ratio": h / q if q else float("nan")}
            table[kind] |= {"n_quiet": len(quiet), "n_hostile": len(hostile)}
    result["hostile_p99"] = table
    codes = Counter(result.get("hostile", {}).get("codes", {}))
    huge = {c.split(" ", 1)[1] for c in codes if c.startswith(("huge_grammar ", "dense_grammar "))}
    return {
        "hostile: legitimate p99 within 2x of quiet": bool(table)
        and all(v["ratio"] <= 2.0 for v in table.values()),
        "hostile: no INTERNAL/UNKNOWN": bool(codes)
        and not any(c.split(" ", 1)[1] in BUG_CODES for c in codes),
        "hostile: huge grammars refused (INVALID_ARGUMENT)": huge == {"INVALID_ARGUMENT"},
    }


def figures(result: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    f = common.figure
    mem = result["memory"]
    outcomes = Counter(result["outcomes"])
    bugs = sum(n for c, n in outcomes.items() if c in BUG_CODES)
    out = [
        f(
            "daemon RSS growth after warm-up",
            mem["rss_growth_pct"],
            "%",
            target=f"< {args.max_rss_growth:g}",
            note=f"{mem['rss_mb_at_warmup_end']:.1f} -> {mem['rss_mb_at_end']:.1f} MB",
        ),
        f(
            "daemon RSS at the end",
            mem["rss_mb_at_end"],
            "MB",
            peer="after warm-up",
            peer_value=mem["rss_mb_at_warmup_end"],
        ),
        f(
            "open fds at the end",
            mem["fds_at_end"],
            "",
            peer="after warm-up",
            peer_value=mem["fds_at_warmup_end"],
            target="<= 0",
            on="difference",
        ),
        f("INTERNAL + UNKNOWN", bugs, "", target="<= 0"),
        f(
            "other unexpected statuses",
            sum(n for c, n in outcomes.items() if c not in EXPECTED) - bugs,
            "",
            target="<= 0",
        ),
        f("daemon crashes", int(result["crashed"]), "", target="<= 0"),
        f(
            "RESOURCE_EXHAUSTED (expected under overload)",
            outcomes.get(EXHAUSTED, 0),
            "",
            note=f"{result['retry_info_seen']} with RetryInfo",
        ),
        f(
            "healthy at the end",
            int(bool(result.get("final", {}).get("healthy"))),
            "",
            target=">= 1",
        ),
    ]
    for k, v in result["by_kind"].items():
        out.append(f(f"{k}: throughput", v["throughput_per_s"], "req/s"))
        out.append(f(f"{k}: latency p50", v["p50_ms"], "ms"))
        out.append(f(f"{k}: latency p99", v["p99_ms"], "ms"))
    return out


if __name__ == "__main__":
    raise SystemExit(main())

"""Nothing heavy runs on the daemon's event loop: while the most expensive request of
each kind that the limits admit is being worked on (each takes 1-13 s here), the health
service keeps answering: half its answers within 100 ms and none stuck behind the work
(a wedged loop holds an answer for as long as the work, a second or more); what is over
the limits is refused at once with the limit to respect.

A real daemon with the real SmolLM2 model (its 49k-token vocabulary is what makes
compiling a grammar cost something) and real gRPC clients."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rustaid.api.v1 import common_pb2, generate_pb2, generate_pb2_grpc, tools_pb2
from rustaid.builtin.llama_cpp import MAX_GRAMMAR_CHOICES, grammar_shape
from rustaid.testing import real_model as real
from rustaid.testing.daemon import DaemonProcess, run_daemon
from tests.services.test_limits import error_of, reason

CODE = grpc.StatusCode
P = common_pb2.GenerationParams
MODEL = real.MODEL_ID
HEALTH_BOUND_S = 0.1  # what the median answer takes at most
WEDGED_S = 0.5  # an answer this late waited behind work on the loop (noise here: <0.25 s)
GRAMMAR_LIMIT = 256 << 10  # the default max_grammar_bytes
RULES_LIMIT = 4096  # the default max_grammar_rules
DENSE = 64 << 10  # bytes of one-character alternatives: ~1 s to set up


def alternatives_grammar(size: int) -> str:
    """The costliest grammar per byte we know for llama.cpp's set-up: one rule with as
    many one-character alternatives as fit in `size` bytes (its time grows with their
    square: ~1 s at 64 KiB here; the choices limit refuses it)."""
    return "root ::= " + "|".join(["[a]"] * ((size - 9) // 4))


def costliest_admitted_grammar() -> str:
    """As many alternatives as the daemon admits (MAX_GRAMMAR_CHOICES)."""
    return "root ::= " + "|".join(["[a]"] * (MAX_GRAMMAR_CHOICES + 1))


def wide_schema(props: int) -> str:
    """A JSON Schema of `props` optional properties (a wide object)."""
    return json.dumps(
        {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(props)}}
    )


def largest_wide_schema() -> str:
    """The widest such schema whose grammar stays within the default limits."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    def fits(n: int) -> bool:
        try:
            text = str(json_schema_to_gbnf(wide_schema(n)))
        except RecursionError:  # the converter recurses once per optional property
            return False
        return (
            len(text.encode()) <= GRAMMAR_LIMIT
            and text.count("::=") <= RULES_LIMIT
            and grammar_shape(text)[1] <= MAX_GRAMMAR_CHOICES
        )

    lo, hi = 1, 2048
    while lo < hi:  # the widest n that fits
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return wide_schema(lo)


class HealthProbe:
    """Asks the health service again and again from a thread of its own, keeping how
    long each answer took."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = health_pb2_grpc.HealthStub(self.channel)
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                self.stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            except grpc.RpcError as e:
                self.failures.append(f"{e.code()}: {e.details()}")
            self.latencies.append(time.perf_counter() - t0)
            self._stop.wait(0.01)

    def __enter__(self) -> HealthProbe:
        self.stub.Check(health_pb2.HealthCheckRequest(), timeout=5)  # connected
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.channel.close()

    def wedged(self) -> list[float]:
        return sorted(round(t, 3) for t in self.latencies if t > WEDGED_S)

    def assert_responsive(self, allowed: int) -> None:
        """A wedged loop shows as one late answer per blocking (the probe waits for each
        answer), so every run of a blocking request adds one; the machine's own noise
        (other processes on 2 cores) may add `allowed`. Noise makes single answers slow
        (0.1-0.25 s seen), not the typical one: the median stays within HEALTH_BOUND_S."""
        assert not self.failures, self.failures
        assert len(self.latencies) >= 3, self.latencies
        assert len(self.wedged()) <= allowed, (self.wedged(), len(self.latencies))
        median = sorted(self.latencies)[len(self.latencies) // 2]
        assert median <= HEALTH_BOUND_S, (median, len(self.latencies))


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, real_model: Path) -> Iterator[DaemonProcess]:
    data_dir = tmp_path_factory.mktemp("loop")
    real.place(real_model, data_dir / "models")
    with run_daemon(data_dir) as d:
        yield d


@pytest.fixture(scope="module")
def stub(daemon: DaemonProcess) -> Iterator[generate_pb2_grpc.GenerateServiceStub]:
    with grpc.insecure_channel(daemon.address) as channel:
        s = generate_pb2_grpc.GenerateServiceStub(channel)
        # Loaded once, so what the probe measures is the request, not the load.
        warm = generate_pb2.GenerateRequest(model_id=MODEL, prompt="Hi", params=P(max_tokens=1))
        s.Generate(warm)
        yield s


def while_probing(daemon: DaemonProcess, call: Callable[[], object], runs: int = 4) -> None:
    """Health keeps answering while `call` runs `runs` times. A request that blocks the
    loop gives one late answer per run; the machine's own noise may give a few: up to
    half as many are let pass."""
    with HealthProbe(daemon.address) as probe:
        for _ in range(runs):
            call()
    probe.assert_responsive(allowed=runs // 2)


def test_health_answers_while_the_costliest_grammars_are_checked(
    daemon: DaemonProcess, stub: generate_pb2_grpc.GenerateServiceStub
) -> None:
    admitted = generate_pb2.GenerateRequest(
        model_id=MODEL,
        prompt="Say a word:",
        params=P(max_tokens=2, grammar=costliest_admitted_grammar()),
    )
    # Within the byte limit, but with 16,381 alternatives: set up, it takes ~1 s.
    refused = generate_pb2.GenerateRequest(
        model_id=MODEL, prompt="x", params=P(grammar=alternatives_grammar(DENSE))
    )

    def both() -> None:
        stub.Generate(admitted, timeout=60)
        err = error_of(lambda: stub.Generate(refused, timeout=60))
        assert err.code() == CODE.INVALID_ARGUMENT, err.details()
        assert reason(err) == "GRAMMAR_TOO_LARGE"
        assert f"params.grammar has 16380 choices (alternatives |, items with ? * + {{m,n}}); " \
            f"at most {MAX_GRAMMAR_CHOICES} are allowed: simplify it" in err.details()  # fmt: skip

    while_probing(daemon, both)


def test_health_answers_while_the_largest_json_schema_compiles(
    daemon: DaemonProcess, stub: generate_pb2_grpc.GenerateServiceStub
) -> None:
    schema = largest_wide_schema()
    request = generate_pb2.GenerateRequest(
        model_id=MODEL, prompt="JSON:", params=P(max_tokens=2, json_schema=schema)
    )
    while_probing(daemon, lambda: stub.Generate(request, timeout=60))


def test_health_answers_while_the_largest_text_is_tokenized(
    daemon: DaemonProcess, stub: generate_pb2_grpc.GenerateServiceStub
) -> None:
    text = "hello world " * ((1 << 20) // 12)  # just under max_prompt_bytes (1 MiB)
    tokenize = generate_pb2.TokenizeRequest(model_id=MODEL, text=text)
    count = generate_pb2.CountTokensRequest(model_id=MODEL, text=text)
    while_probing(daemon, lambda: stub.Tokenize(tokenize, timeout=60))
    while_probing(daemon, lambda: stub.CountTokens(count, timeout=60))


def test_a_huge_grammar_is_refused_at_once_with_the_limit(
    stub: generate_pb2_grpc.GenerateServiceStub,
) -> None:
    # 100,000 alternatives (1.09 MB): compiling it stopped every RPC for ~40 s.
    grammar = "root ::= " + " | ".join(f'"w{i}"' for i in range(100_000))
    for call in (
        lambda: stub.Generate(
            generate_pb2.GenerateRequest(model_id=MODEL, prompt="x", params=P(grammar=grammar)),
            timeout=10,
        ),
        lambda: list(
            stub.GenerateStream(
                generate_pb2.GenerateStreamRequest(
                    model_id=MODEL, prompt="x", params=P(grammar=grammar)
                ),
                timeout=10,
            )
        ),
    ):
        err = error_of(call)
        assert err.code() == CODE.INVALID_ARGUMENT, err.details()
        assert reason(err) == "GRAMMAR_TOO_LARGE"
        assert f"params.grammar is {len(grammar)} bytes, more than the 262144 bytes" in (
            err.details()
        )
        assert "max_grammar_bytes" in err.details()


def test_grammars_with_too_many_rules_and_huge_schemas_are_refused(
    stub: generate_pb2_grpc.GenerateServiceStub,
) -> None:
    rules = "root ::= r0\n" + "".join(f'r{i} ::= "a"\n' for i in range(RULES_LIMIT + 76))
    err = error_of(
        lambda: stub.Generate(
            generate_pb2.GenerateRequest(model_id=MODEL, prompt="x", params=P(grammar=rules)),
            timeout=10,
        )
    )
    assert err.code() == CODE.INVALID_ARGUMENT
    assert f"params.grammar has {RULES_LIMIT + 77} rules, more than the {RULES_LIMIT}" in (
        err.details()
    )
    assert "max_grammar_rules" in err.details()
    huge = wide_schema(40_000)
    err = error_of(
        lambda: stub.Generate(
            generate_pb2.GenerateRequest(model_id=MODEL, prompt="x", params=P(json_schema=huge)),
            timeout=10,
        )
    )
    assert err.code() == CODE.INVALID_ARGUMENT
    assert reason(err) == "GRAMMAR_TOO_LARGE"
    assert f"params.json_schema is {len(huge)} bytes" in err.details()
    # Small itself, but the grammar it turns into has too many choices.
    dense = json.dumps({"enum": [f"v{i}" for i in range(3000)]})
    err = error_of(
        lambda: stub.Generate(
            generate_pb2.GenerateRequest(model_id=MODEL, prompt="x", params=P(json_schema=dense)),
            timeout=30,
        )
    )
    assert err.code() == CODE.INVALID_ARGUMENT
    assert reason(err) == "GRAMMAR_TOO_LARGE"
    assert "params.json_schema has 30" in err.details() and "choices" in err.details()


def test_tokenize_and_count_tokens_honour_max_prompt_bytes(
    stub: generate_pb2_grpc.GenerateServiceStub,
) -> None:
    huge = "hello world " * ((8 << 20) // 12)  # 8 MiB held the model 19 s
    for call in (
        lambda: stub.Tokenize(generate_pb2.TokenizeRequest(model_id=MODEL, text=huge), timeout=10),
        lambda: stub.CountTokens(
            generate_pb2.CountTokensRequest(model_id=MODEL, text=huge), timeout=10
        ),
    ):
        err = error_of(call)
        assert err.code() == CODE.INVALID_ARGUMENT
        assert reason(err) == "PROMPT_TOO_LARGE"
        assert f"text is {len(huge)} bytes, more than the 1048576 bytes" in err.details()
    message = generate_pb2.ChatMessage(role=generate_pb2.ROLE_USER, content="é" * (600 << 10))
    err = error_of(
        lambda: stub.CountTokens(
            generate_pb2.CountTokensRequest(model_id=MODEL, messages=[message]), timeout=10
        )
    )
    assert err.code() == CODE.INVALID_ARGUMENT
    assert "messages is 1228800 bytes" in err.details()


def test_a_tokenize_past_its_deadline_gives_the_model_back(
    stub: generate_pb2_grpc.GenerateServiceStub,
) -> None:
    text = "hello world " * ((1 << 20) // 12)
    tokenize = generate_pb2.TokenizeRequest(model_id=MODEL, text=text)
    for _ in range(3):  # each would run ~1.5 s; their deadlines pass long before
        err = error_of(lambda: stub.Tokenize(tokenize, timeout=0.3))
        assert err.code() == CODE.DEADLINE_EXCEEDED
    # The abandoned calls stopped within a slice of their pieces: the model's next
    # caller is served at once rather than after all three whole calls.
    t0 = time.perf_counter()
    small = stub.Tokenize(generate_pb2.TokenizeRequest(model_id=MODEL, text="Hi"), timeout=30)
    waited = time.perf_counter() - t0
    assert small.token_ids
    one_call = _duration(lambda: stub.Tokenize(tokenize, timeout=60))
    assert waited < one_call, (waited, one_call)


def _duration(call: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


def tools_of(count: int, props: int) -> list[tools_pb2.Tool]:
    schema = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(props)}}
    return [
        tools_pb2.Tool(name=f"tool_{n}", description="d", parameters_schema=json.dumps(schema))
        for n in range(count)
    ]


def test_health_answers_while_the_largest_tools_turn_into_a_grammar(
    daemon: DaemonProcess, stub: generate_pb2_grpc.GenerateServiceStub
) -> None:
    tools = tools_of(128, 8)  # the most tools, their schemas together just under 32 KiB
    assert sum(len(t.parameters_schema) for t in tools) <= GRAMMAR_LIMIT // 8
    request = generate_pb2.GenerateRequest(
        model_id=MODEL, prompt="Pick one", params=P(max_tokens=2), tools=tools
    )

    def call() -> None:
        with contextlib.suppress(grpc.RpcError):  # the grammar they make may be refused
            stub.Generate(request, timeout=120)

    while_probing(daemon, call)


def test_tools_whose_schemas_are_too_large_are_refused(
    stub: generate_pb2_grpc.GenerateServiceStub,
) -> None:
    tools = tools_of(128, 200)
    size = sum(len(t.parameters_schema) for t in tools)
    err = error_of(
        lambda: stub.Generate(
            generate_pb2.GenerateRequest(model_id=MODEL, prompt="x", tools=tools), timeout=30
        )
    )
    assert err.code() == CODE.INVALID_ARGUMENT
    assert reason(err) == "GRAMMAR_TOO_LARGE"
    assert f"tools: the parameter schemas are {size} bytes together" in err.details()

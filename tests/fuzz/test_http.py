"""The daemon survives any HTTP input: random JSON bodies (seeded with real model names
and the fields each route reads, with wrong types, out-of-range numbers and odd
shapes), raw bytes and random paths, on the OpenAI and Ollama routes.

For every request: never a 5xx (500 means a bug; 503 would mean the daemon is
stopping or hot, which it is not here), a JSON error body of the route family's shape,
and for a 200 stream, no `server_error` event. A request that runs into the client's
timeout must leave the model free. At the end the daemon is alive and still generates.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.conftest import BROKEN, EMBEDDINGS, LLM, Target, examples, short

TIMEOUT_S = 10.0
POST_ROUTES = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/api/chat",
    "/api/generate",
    "/api/embed",
    "/api/embeddings",
    "/api/show",
)
GET_ROUTES = ("/v1/models", "/api/tags", "/api/ps", "/api/version", "/health", "/")

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
models = st.sampled_from([LLM, EMBEDDINGS, BROKEN, "no-such-model", ""])
roles = st.sampled_from(["system", "user", "assistant", "tool", "developer", "wizard", ""])
messages = st.lists(
    st.fixed_dictionaries(
        {"role": roles},
        optional={
            "content": st.one_of(
                st.text(max_size=40),
                st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": st.text()})),
                json_values,
            ),
            "tool_calls": json_values,
            "tool_call_id": st.text(max_size=8),
        },
    ),
    max_size=3,
)
schemas = st.one_of(
    json_values,
    st.just({"type": "object", "properties": {"a": {"type": "integer"}}}),
    st.just({"type": "banana"}),
)
tools = st.lists(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["function", "other"])},
        optional={
            "function": st.fixed_dictionaries(
                {"name": st.sampled_from(["get_weather", "bad name", ""])},
                optional={"parameters": schemas, "description": st.text(max_size=10)},
            )
        },
    ),
    max_size=2,
)
numbers = st.one_of(st.integers(-5, 5000), st.floats(-2, 3, allow_nan=False), json_values)
fields = {
    "model": st.one_of(models, json_values),
    "messages": st.one_of(messages, json_values),
    "prompt": st.one_of(st.text(max_size=40), json_values),
    "input": st.one_of(st.text(max_size=40), st.lists(st.text(max_size=20), max_size=3)),
    "stream": st.one_of(st.booleans(), json_values),
    "max_tokens": numbers,
    "max_completion_tokens": numbers,
    "temperature": numbers,
    "top_p": numbers,
    "seed": numbers,
    "n": numbers,
    "stop": st.one_of(st.text(max_size=5), st.lists(st.text(max_size=5), max_size=20)),
    "stream_options": st.one_of(
        st.fixed_dictionaries({"include_usage": st.booleans()}), json_values
    ),
    "tools": st.one_of(tools, json_values),
    "tool_choice": st.one_of(st.sampled_from(["auto", "none", "required", "x"]), json_values),
    "response_format": st.one_of(
        st.fixed_dictionaries(
            {"type": st.sampled_from(["text", "json_object", "json_schema", "xml"])},
            optional={"json_schema": st.fixed_dictionaries({"name": st.text(), "schema": schemas})},
        ),
        json_values,
    ),
    "format": st.one_of(st.just("json"), schemas),
    "options": st.one_of(
        st.fixed_dictionaries({}, optional={"num_predict": numbers, "temperature": numbers}),
        json_values,
    ),
    "keep_alive": st.one_of(st.sampled_from(["5m", "0", "-1", "soon"]), numbers),
    "encoding_format": st.sampled_from(["float", "base64", "hex"]),
    "priority": st.sampled_from(["interactive", "background", "urgent"]),
    "selection": json_values,
    "grammar": st.sampled_from(["", 'root ::= "a"', "root ::= (", "nonsense"]),
    "session_id": st.text(max_size=8),
    "raw": st.booleans(),
}
# A request that works, for each route family, with up to three fields drawn at random
# on top (so most requests get past the first check), or only random fields.
VALID = {
    "model": LLM,
    "messages": [{"role": "user", "content": "hi"}],
    "prompt": "hi",
    "input": "hi",
}


def _some_fields(names: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({n: fields[n] for n in names})


some_fields = st.lists(st.sampled_from(sorted(fields)), max_size=3, unique=True).flatmap(
    _some_fields
)
bodies = st.one_of(
    some_fields.map(lambda extra: {**VALID, **extra}),
    st.fixed_dictionaries({}, optional=fields),
)


@pytest.fixture(scope="module")
def http(target: Target) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=target.daemon.http_url(), timeout=TIMEOUT_S) as client:
        yield client


def check(target: Target, http: httpx.Client, method: str, path: str, **kw: Any) -> None:
    what = f"{method} {path} {short(kw)}"
    try:
        with http.stream(method, path, **kw) as reply:
            text = reply.read().decode("utf-8", "replace")
    except httpx.TimeoutException:
        target.assert_model_free(f"{what} timed out on the client")
        return
    assert target.alive(), f"the daemon died on {what}\n{target.log_tail()}"
    assert reply.status_code < 500, f"{reply.status_code} for {what}: {text[:500]}"
    kind = reply.headers.get("content-type", "")
    target.record(f"{method} {path}", str(reply.status_code), text, 0.0, what)
    if reply.status_code >= 400:
        error = json.loads(text)["error"]
        if path.startswith("/api/"):
            assert isinstance(error, str) and error
        else:
            assert error["message"] and error["type"] != "server_error"
    elif "event-stream" in kind:
        assert text.rstrip().endswith(("data: [DONE]", "}")), text[-300:]
        assert '"server_error"' not in text, text[-500:]
    elif "ndjson" in kind:
        last = json.loads(text.strip().splitlines()[-1])
        assert last.get("done") is True or isinstance(last.get("error"), str), last


@settings(max_examples=examples(150))
@given(path=st.sampled_from(POST_ROUTES), body=bodies)
def test_routes_never_fail_with_5xx(
    target: Target, http: httpx.Client, path: str, body: Any
) -> None:
    if isinstance(body.get("max_tokens"), int):
        body["max_tokens"] = min(body["max_tokens"], 64)  # keep the run short
    body.setdefault("max_tokens", 16)
    options = body.get("options")
    if isinstance(options, dict) and isinstance(options.get("num_predict"), int):
        options["num_predict"] = min(options["num_predict"], 64)
    check(target, http, "POST", path, json=body)


@settings(max_examples=examples(60))
@given(
    path=st.one_of(
        st.sampled_from(POST_ROUTES),
        st.text(alphabet="/abcv1piz.%-_", min_size=1, max_size=30).map(lambda p: "/" + p),
    ),
    raw=st.binary(max_size=200),
    method=st.sampled_from(["POST", "GET", "PUT", "DELETE"]),
)
def test_raw_bytes_and_paths(
    target: Target, http: httpx.Client, path: str, raw: bytes, method: str
) -> None:
    check(target, http, method, path, content=raw)


def test_listings_and_the_daemon_after_fuzzing(target: Target, http: httpx.Client) -> None:
    for path in GET_ROUTES:
        assert http.get(path).status_code == 200, path
    target.assert_model_free("the HTTP fuzzing")

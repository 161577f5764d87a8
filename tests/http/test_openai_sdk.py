"""The official `openai` Python package against the daemon's /v1 routes: sync and
async, streamed and not, tools, response formats, embeddings and errors, on the real
SmolLM2 model and the real MiniLM."""

from __future__ import annotations

import json
import math

import httpx
import jsonschema
import openai
import pytest

from tests.http.conftest import CHAT, EMBED, SLOW, HttpDaemon
from tests.power.bus import eventually

HELLO = [{"role": "user", "content": "Say hello to Ada in one short sentence."}]


@pytest.fixture
def client(http_daemon: HttpDaemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=http_daemon.v1, api_key="unused", max_retries=0)


def test_models_lists_chat_and_embedding_models(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {CHAT, EMBED} <= ids
    assert client.models.retrieve(CHAT).id == CHAT


def test_chat_completion_answers_with_usage_and_timings(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=CHAT, messages=HELLO, max_tokens=24, temperature=0, seed=7, user="tests"
    )
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert reply.model == CHAT
    assert reply.usage is not None
    assert reply.usage.completion_tokens <= 24 < reply.usage.total_tokens
    extra = reply.model_extra or {}
    assert extra["rustaid"]["timings"]["tokens_per_second"] > 0


def test_seed_and_temperature_zero_repeat_the_same_text(client: openai.OpenAI) -> None:
    texts = {
        client.chat.completions.create(
            model=CHAT, messages=HELLO, max_completion_tokens=12, temperature=0.9, seed=42
        )
        .choices[0]
        .message.content
        for _ in range(2)
    }
    assert len(texts) == 1


def test_max_tokens_and_stop_end_the_reply(client: openai.OpenAI) -> None:
    short = client.chat.completions.create(model=CHAT, messages=HELLO, max_tokens=3)
    assert short.choices[0].finish_reason == "length"
    assert short.usage is not None and short.usage.completion_tokens == 3
    counted = client.chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": "Count from 1 to 10, separated by commas."}],
        max_tokens=40,
        temperature=0,
        stop=["4"],
    )
    assert "4" not in (counted.choices[0].message.content or "")
    assert counted.choices[0].finish_reason == "stop"


def test_streamed_chat_ends_with_usage_when_asked(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=CHAT,
            messages=HELLO,
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length") and not any(finishes[:-1])
    assert not chunks[-1].choices and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens <= 16
    assert len({c.id for c in chunks}) == 1


def test_completions_continue_a_prompt(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=CHAT, prompt="The capital of France is", max_tokens=8)
    assert reply.choices[0].text
    streamed = list(
        client.completions.create(model=CHAT, prompt="Once upon a time", max_tokens=8, stream=True)
    )
    assert "".join(c.choices[0].text for c in streamed).strip()
    assert streamed[-1].choices[0].finish_reason in ("stop", "length")


async def test_async_client_streams_and_answers(http_daemon: HttpDaemon) -> None:
    client = openai.AsyncOpenAI(base_url=http_daemon.v1, api_key="unused", max_retries=0)
    async with client:
        reply = await client.chat.completions.create(model=CHAT, messages=HELLO, max_tokens=8)
        assert reply.choices[0].message.content
        stream = await client.chat.completions.create(
            model=CHAT, messages=HELLO, max_tokens=8, stream=True
        )
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        assert "".join(parts).strip()


def test_json_schema_response_format_is_followed(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    reply = client.chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": "Invent a person: name and age, as JSON."}],
        max_tokens=60,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": schema, "strict": True},
        },
    )
    value = json.loads(reply.choices[0].message.content or "")
    jsonschema.validate(value, schema)


def test_json_object_response_format_gives_an_object(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": "Give a JSON object with a colour."}],
        max_tokens=40,
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def test_required_tool_choice_returns_a_tool_call(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    reply = client.chat.completions.create(
        model=CHAT, messages=messages, tools=[WEATHER], tool_choice="required", max_tokens=40
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = (choice.message.tool_calls or [])[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    # The result goes back as a tool message; the model then answers.
    follow = client.chat.completions.create(
        model=CHAT,
        messages=[
            *messages,
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "sunny", "c": 21}'},
        ],
        tools=[WEATHER],
        tool_choice="none",
        max_tokens=30,
    )
    assert follow.choices[0].message.content


def test_streamed_tool_call_arrives_as_a_delta(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=CHAT,
            messages=[{"role": "user", "content": "Weather in Oslo?"}],
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            max_tokens=40,
            stream=True,
        )
    )
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert calls and calls[0].function and calls[0].function.name == "get_weather"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_embeddings_of_a_string_and_a_list(client: openai.OpenAI) -> None:
    one = client.embeddings.create(model=EMBED, input="A cat sits on the mat.")
    assert len(one.data) == 1 and len(one.data[0].embedding) == 384
    many = client.embeddings.create(
        model=EMBED,
        input=["A cat sits on the mat.", "A kitten rests on a rug.", "Stock prices fell."],
        encoding_format="float",
    )
    cat, kitten, stocks = (d.embedding for d in many.data)
    assert _cosine(cat, one.data[0].embedding) > 0.999  # base64 and float agree
    assert _cosine(cat, kitten) > _cosine(cat, stocks)


# -- errors ---------------------------------------------------------------------------------


def test_unknown_model_is_404_naming_the_known_ones(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    assert CHAT in info.value.message


@pytest.mark.parametrize(
    ("extra", "param", "says"),
    [
        ({"messages": []}, "messages", "empty"),
        ({"n": 2}, "n", "must be 1"),
        ({"temperature": -1}, "params.temperature", ">= 0"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role", "one of"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "banana"}},
                }
            },
            "response_format.json_schema.schema",
            "not a valid JSON Schema",
        ),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools", ""),
    ],
)
def test_bad_requests_are_400_naming_the_field(
    client: openai.OpenAI, extra: dict[str, object], param: str, says: str
) -> None:
    body: dict[str, object] = {"model": CHAT, "messages": HELLO, "max_tokens": 4, **extra}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**body)  # type: ignore[call-overload]
    error = info.value.body
    assert isinstance(error, dict)
    assert str(error["param"]).startswith(param)
    assert says in info.value.message


def test_malformed_json_and_wrong_types_are_400(http_daemon: HttpDaemon) -> None:
    url = http_daemon.v1 + "/chat/completions"
    bad = httpx.post(url, content=b'{"model": ', headers={"content-type": "application/json"})
    assert bad.status_code == 400
    assert "not valid JSON" in bad.json()["error"]["message"]
    wrong = httpx.post(url, json={"model": CHAT, "messages": "hello"})
    assert wrong.status_code == 400
    assert wrong.json()["error"]["param"] == "messages"
    array = httpx.post(url, json=[1, 2])
    assert array.status_code == 400 and "JSON object" in array.json()["error"]["message"]


def test_a_body_over_the_limit_is_413(http_daemon: HttpDaemon) -> None:
    big = "x" * (1 << 20)  # the fixture's max_message_mb is 1
    reply = httpx.post(
        http_daemon.v1 + "/chat/completions",
        json={"model": CHAT, "messages": [{"role": "user", "content": big}]},
    )
    assert reply.status_code == 413
    assert "max_message_mb" in reply.json()["error"]["message"]


def test_unknown_routes_and_methods_get_openai_errors(http_daemon: HttpDaemon) -> None:
    missing = httpx.get(http_daemon.v1 + "/nothing")
    assert missing.status_code == 404 and "error" in missing.json()
    wrong = httpx.get(http_daemon.v1 + "/chat/completions")
    assert wrong.status_code == 405 and "GET" in wrong.json()["error"]["message"]


def test_request_id_is_echoed(http_daemon: HttpDaemon) -> None:
    reply = httpx.get(http_daemon.v1 + "/models", headers={"x-request-id": "trace-me-42"})
    assert reply.headers["x-request-id"] == "trace-me-42"
    fresh = httpx.get(http_daemon.v1 + "/models")
    assert len(fresh.headers["x-request-id"]) == 16


# -- rustaid's own fields ------------------------------------------------------------------


def test_grammar_extension_constrains_the_reply(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": "Is the sky blue?"}],
        max_tokens=5,
        extra_body={"grammar": 'root ::= "yes" | "no"'},
    )
    assert reply.choices[0].message.content in ("yes", "no")


def test_keep_alive_zero_unloads_after_the_request(
    client: openai.OpenAI, http_daemon: HttpDaemon
) -> None:
    client.completions.create(model=SLOW, prompt="Once", max_tokens=2, extra_body={"keep_alive": 0})

    def unloaded() -> bool:
        ps = httpx.get(http_daemon.url + "/api/ps").json()["models"]
        return SLOW not in {m["model"] for m in ps}

    eventually(unloaded, timeout=10)


def test_selection_and_priority_extensions(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="",
            messages=HELLO,
            extra_body={"selection": {"required_tags": ["no-such-tag"]}},
        )
    assert "no-such-tag" in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=CHAT, messages=HELLO, extra_body={"priority": "now"})
    assert info.value.body["param"] == "priority"  # type: ignore[index]
    reply = client.chat.completions.create(
        model=CHAT, messages=HELLO, max_tokens=4, extra_body={"priority": "background"}
    )
    assert reply.choices[0].message.content is not None

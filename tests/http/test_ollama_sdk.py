"""The `ollama` Python package against the daemon's /api routes: list, show, ps, chat
and generate (streamed and not), format, tools, embed and errors, on the real SmolLM2
model and the real MiniLM."""

from __future__ import annotations

import json

import httpx
import ollama
import pytest

from tests.http.conftest import CHAT, EMBED, HttpDaemon

HELLO = [{"role": "user", "content": "Say hello to Ada in one short sentence."}]


@pytest.fixture
def client(http_daemon: HttpDaemon) -> ollama.Client:
    return ollama.Client(host=http_daemon.url)


def test_list_show_and_version(client: ollama.Client, http_daemon: HttpDaemon) -> None:
    names = {m.model for m in client.list().models}
    assert {CHAT, EMBED} <= names
    shown = client.show(CHAT)
    assert shown.details is not None and shown.details.family == "llama"
    assert shown.capabilities and "completion" in shown.capabilities
    assert httpx.get(http_daemon.url + "/api/version").json()["version"]


def test_chat_answers_and_ps_shows_the_loaded_model(client: ollama.Client) -> None:
    reply = client.chat(model=CHAT, messages=HELLO, options={"num_predict": 16, "seed": 1})
    assert reply.message.role == "assistant" and reply.message.content.strip()
    assert reply.done and reply.done_reason in ("stop", "length")
    assert reply.eval_count is not None and 0 < reply.eval_count <= 16
    assert reply.prompt_eval_count and reply.total_duration and reply.total_duration > 0
    assert CHAT in {m.model for m in client.ps().models}


def test_streamed_chat_ends_with_one_done(client: ollama.Client) -> None:
    parts = list(client.chat(model=CHAT, messages=HELLO, stream=True, options={"num_predict": 12}))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(p.message.content for p in parts).strip()


def test_generate_streamed_and_not(client: ollama.Client) -> None:
    reply = client.generate(
        model=CHAT, prompt="Name a colour.", system="Answer in one word.",
        options={"num_predict": 8, "temperature": 0},
    )  # fmt: skip
    assert reply.response.strip() and reply.done
    parts = list(client.generate(model=CHAT, prompt="Hi", stream=True, options={"num_predict": 6}))
    assert parts[-1].done and "".join(p.response for p in parts).strip()


def test_format_json_and_schema(client: ollama.Client) -> None:
    schema = {
        "type": "object",
        "properties": {"colour": {"type": "string", "maxLength": 12}},
        "required": ["colour"],
    }
    for fmt in ("json", schema):
        reply = client.chat(
            model=CHAT,
            messages=[{"role": "user", "content": 'Reply {"colour": "red"} in JSON.'}],
            format=fmt,
            options={"num_predict": 60, "temperature": 0},
        )
        value = json.loads(reply.message.content)
        assert isinstance(value, dict)
        if fmt == schema:
            assert isinstance(value["colour"], str)


def test_tools_give_tool_calls(client: ollama.Client) -> None:
    def get_weather(city: str) -> str:
        """The current weather in a city.

        Args:
          city: the city's name
        """
        return "sunny"

    reply = client.chat(
        model=CHAT,
        messages=[{"role": "user", "content": "Use get_weather for Paris. Call it now."}],
        tools=[get_weather],
        options={"num_predict": 40, "temperature": 0},
    )
    calls = reply.message.tool_calls or []
    if calls:  # the model may answer instead (tool choice is automatic in Ollama)
        assert calls[0].function.name == "get_weather"
        assert isinstance(calls[0].function.arguments["city"], str)
    else:
        assert reply.message.content


def test_embed_one_and_many(client: ollama.Client) -> None:
    one = client.embed(model=EMBED, input="A cat sits on the mat.")
    assert len(one.embeddings) == 1 and len(one.embeddings[0]) == 384
    many = client.embed(model=EMBED, input=["first text", "second text"])
    assert len(many.embeddings) == 2
    legacy = client.embeddings(model=EMBED, prompt="A cat sits on the mat.")
    assert list(legacy.embedding) == pytest.approx(one.embeddings[0], abs=1e-6)


def test_errors_have_ollama_shape(client: ollama.Client, http_daemon: HttpDaemon) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="no-such-model", messages=HELLO)
    assert info.value.status_code == 404 and CHAT in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model=CHAT, messages=[])
    assert info.value.status_code == 400 and "messages" in info.value.error
    bad = httpx.post(http_daemon.url + "/api/chat", content=b"{nope")
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]
    wrong = httpx.post(
        http_daemon.url + "/api/generate",
        json={"model": CHAT, "prompt": "x", "options": {"temperature": "hot"}},
    )
    assert wrong.status_code == 400 and "options.temperature" in wrong.json()["error"]
    schema = httpx.post(
        http_daemon.url + "/api/chat",
        json={"model": CHAT, "messages": HELLO, "format": {"type": 5}, "stream": False},
    )
    assert schema.status_code == 400 and "JSON Schema" in schema.json()["error"]

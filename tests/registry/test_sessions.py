"""Chat sessions: the daemon keeps the history; a client sends only each new turn."""

from __future__ import annotations

import grpc
import pytest

from rustaid.api.v1 import common_pb2, generate_pb2
from tests.conftest import Stubs

USER = generate_pb2.ROLE_USER


def turn(s: Stubs, session: str, text: str, **kw: object) -> generate_pb2.ChatResponse:
    return s.generate.Chat(
        generate_pb2.ChatRequest(
            model_id="tiny",
            session_id=session,
            messages=[generate_pb2.ChatMessage(role=USER, content=text)],
            params=common_pb2.GenerationParams(max_tokens=6, temperature=0),
            **kw,
        )
    )


def test_history_is_kept_between_turns(served: Stubs) -> None:
    first = turn(served, "s1", "hello")
    second = turn(served, "s1", "world")
    full = [
        generate_pb2.ChatMessage(role=USER, content="hello"),
        generate_pb2.ChatMessage(role=generate_pb2.ROLE_ASSISTANT, content=first.message.content),
        generate_pb2.ChatMessage(role=USER, content="world"),
    ]
    counted = served.generate.CountTokens(
        generate_pb2.CountTokensRequest(model_id="tiny", messages=full)
    )
    assert second.usage.prompt_tokens == counted.count  # the whole conversation was the prompt
    stateless = served.generate.Chat(
        generate_pb2.ChatRequest(
            model_id="tiny",
            messages=full,
            params=common_pb2.GenerationParams(max_tokens=6, temperature=0),
        )
    )
    assert stateless.message.content == second.message.content  # same answer as sending it all
    # Another session does not see it.
    other = turn(served, "s2", "world")
    assert other.usage.prompt_tokens < second.usage.prompt_tokens


def test_stream_in_a_session(served: Stubs) -> None:
    turn(served, "s3", "hello")
    events = list(
        served.generate.ChatStream(
            generate_pb2.ChatStreamRequest(
                model_id="tiny",
                session_id="s3",
                messages=[generate_pb2.ChatMessage(role=USER, content="again")],
                params=common_pb2.GenerationParams(max_tokens=4),
            )
        )
    )
    assert events[-1].done.usage.prompt_tokens > 15


@pytest.mark.parametrize(
    ("session", "messages"), [("x" * 200, ["hi"]), ("bad\x00id", ["hi"]), ("s4", [])]
)
def test_bad_session_requests(served: Stubs, session: str, messages: list[str]) -> None:
    with pytest.raises(grpc.RpcError) as info:
        served.generate.Chat(
            generate_pb2.ChatRequest(
                model_id="tiny",
                session_id=session,
                messages=[generate_pb2.ChatMessage(role=USER, content=m) for m in messages],
            )
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

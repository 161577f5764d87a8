"""The typed client library against a real daemon serving a real (synthetic) model."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from rustaid_client import (
    ChatInput,
    Client,
    DaemonUnavailableError,
    RustaidError,
    chat_message,
    default_address,
    normalize_address,
)

from rustaid.api.v1 import common_pb2, generate_pb2, models_pb2, plugins_pb2
from tests.accounts import temporary_accounts


@pytest.fixture
def client(address: str) -> Iterator[Client]:
    with Client(address, timeout=30) as c:
        yield c


# ---------------------------------------------------------------------- addresses


def test_default_address_prefers_the_environment() -> None:
    env = {"RUSTAID_ADDRESS": "unix:///tmp/a.sock", "XDG_RUNTIME_DIR": "/nonexistent"}
    assert default_address(env) == "unix:///tmp/a.sock"
    assert default_address({"RUSTAID_ADDRESS": "/tmp/b.sock"}) == "unix:///tmp/b.sock"


def test_default_address_uses_the_user_socket_when_it_exists(tmp_path: Path) -> None:
    env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    assert default_address(env) == "unix:///run/rustaid/rustaid.sock"
    (tmp_path / "rustaid").mkdir()
    path = tmp_path / "rustaid" / "rustaid.sock"
    path.touch()  # a bound socket would do too, but AF_UNIX paths are short
    assert default_address(env) == f"unix://{path}"


def test_normalize_address() -> None:
    assert normalize_address("/run/x.sock") == "unix:///run/x.sock"
    assert normalize_address("localhost:50051") == "localhost:50051"


def test_client_uses_default_address(monkeypatch: pytest.MonkeyPatch, address: str) -> None:
    monkeypatch.setenv("RUSTAID_ADDRESS", address)
    with Client() as c:
        assert c.address == address
        assert c.health() == "SERVING"


# ------------------------------------------------------------------------- models


def test_list_and_get_models(client: Client) -> None:
    models = {m.id: m for m in client.list_models().models}
    assert {"tiny", "slow"} <= set(models)
    tiny = models["tiny"]
    assert tiny.kind == common_pb2.MODEL_KIND_LLM
    assert tiny.provider == "llama.cpp"
    assert tiny.metadata.architecture == "llama"
    assert [m.id for m in client.list_models(kind="embedding").models] == []
    assert "tiny" in [m.id for m in client.list_models(kind="llm").models]
    assert client.get_model("tiny").model.size_bytes == tiny.size_bytes


def test_load_and_unload_model(client: Client) -> None:
    client.unload_model("tiny")
    loaded = client.load_model("tiny", context_length=256, threads=1).model
    assert loaded.state == models_pb2.MODEL_STATE_LOADED
    assert (loaded.context_length, loaded.threads) == (256, 1)
    assert "tiny" in [m.id for m in client.list_models(loaded_only=True).models]
    unloaded = client.unload_model("tiny").model
    assert unloaded.state == models_pb2.MODEL_STATE_AVAILABLE


def test_select_model(client: Client) -> None:
    response = client.select_model(prefer_local=True)
    assert response.model_id in {"tiny", "slow"}
    assert {c.model_id for c in response.candidates} >= {"tiny", "slow"}


def test_watch_models_starts_with_existing(client: Client) -> None:
    with client.watch_models(include_existing=True) as events:
        first = next(events)
    assert first.type == models_pb2.MODEL_EVENT_TYPE_ADDED


# --------------------------------------------------------------------- generation


def test_generate_is_reproducible_with_a_seed(client: Client) -> None:
    first = client.generate("Hello", "tiny", max_tokens=8, seed=7, temperature=0.8)
    again = client.generate("Hello", "tiny", max_tokens=8, seed=7, temperature=0.8)
    assert first.text == again.text
    assert first.model_id == "tiny"
    assert 0 < first.usage.completion_tokens <= 8
    assert first.finish_reason in (common_pb2.FINISH_REASON_LENGTH, common_pb2.FINISH_REASON_STOP)


def test_generate_stream_ends_with_done(client: Client) -> None:
    events = list(client.generate_stream("Hello", "tiny", max_tokens=8, seed=1))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[-1] == "done"
    assert kinds.count("done") == 1
    chunks = [e.chunk for e in events if e.HasField("chunk")]
    assert chunks
    assert [c.index for c in chunks] == list(range(len(chunks)))
    done = events[-1].done
    assert done.model_id == "tiny"
    assert done.usage.completion_tokens <= 8
    unary = client.generate("Hello", "tiny", max_tokens=8, seed=1)
    assert "".join(c.text for c in chunks) == unary.text


def test_grammar_and_json_schema_constrain_the_output(client: Client) -> None:
    answer = client.generate("Answer:", "tiny", max_tokens=8, grammar='root ::= "yes" | "no"')
    assert answer.text in {"yes", "no"}
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    data = client.generate("JSON:", "tiny", max_tokens=32, json_schema=json.dumps(schema))
    assert isinstance(json.loads(data.text)["ok"], bool)


def test_chat_accepts_tuples_dicts_and_messages(client: Client) -> None:
    messages: list[ChatInput] = [
        ("system", "Be brief."),
        {"role": "user", "content": "hello"},
        generate_pb2.ChatMessage(role=generate_pb2.ROLE_ASSISTANT, content="hi"),
        ("user", "how are you"),
    ]
    reply = client.chat(messages, "tiny", max_tokens=6, priority="background")
    assert reply.message.role == generate_pb2.ROLE_ASSISTANT
    assert reply.usage.prompt_tokens > 10  # the template renders every message
    events = list(client.chat_stream(messages, "tiny", max_tokens=6, stop=["\n"]))
    assert events[-1].HasField("done")


def test_tokenize_and_count_tokens(client: Client) -> None:
    tokens = client.tokenize("hello world", "tiny")
    assert len(tokens.token_ids) == len(tokens.pieces) == 2
    assert "".join(tokens.pieces).strip() == "hello world"
    with_bos = client.tokenize("hello world", "tiny", add_special=True)
    assert len(with_bos.token_ids) == 3
    count = client.count_tokens("hello world", "tiny")
    assert count.context_length == 512
    assert count.count == 3
    chat_count = client.count_tokens([("user", "hello world")], "tiny")
    assert chat_count.count > count.count


def test_cancelling_a_stream_stops_the_generation(client: Client) -> None:
    with client.generate_stream("Once upon a time", "slow", max_tokens=4000) as stream:
        first = next(stream)
        assert first.HasField("chunk")
        stream.cancel()
        with pytest.raises(RustaidError) as info:
            list(stream)
    assert info.value.code == grpc.StatusCode.CANCELLED
    # The model is free again at once: a new request does not queue behind 4000 tokens.
    after = client.generate("hi", "slow", max_tokens=1)
    assert after.timings.queue_ms < 1000


# ------------------------------------------------------------------------ plugins


def test_plugins(client: Client) -> None:
    plugins = {p.id: p for p in client.list_plugins().plugins}
    llama = plugins["llama.cpp"]
    assert llama.state == plugins_pb2.PLUGIN_STATE_ACTIVE
    assert llama.source == plugins_pb2.PLUGIN_SOURCE_BUILTIN
    assert "llm:llama.cpp" in llama.capabilities
    assert client.get_plugin("llama.cpp").plugin.version == llama.version
    reloaded = client.reload_plugin("llama.cpp").plugin
    assert reloaded.state == plugins_pb2.PLUGIN_STATE_ACTIVE


def test_health(client: Client) -> None:
    assert client.health() == "SERVING"
    assert client.health("rustaid.api.v1.ModelsService") == "SERVING"


# ------------------------------------------------------------------------- errors


def test_not_found_is_a_typed_error(client: Client) -> None:
    with pytest.raises(RustaidError) as info:
        client.get_model("no-such-model")
    error = info.value
    assert error.code == grpc.StatusCode.NOT_FOUND
    assert error.code_name == "NOT_FOUND"
    assert "no-such-model" in error.details
    assert str(error) == f"NOT_FOUND: {error.message}"
    for call in (
        lambda: client.generate("hi", "no-such-model"),
        lambda: list(client.generate_stream("hi", "no-such-model")),
        lambda: client.get_plugin("no-such-plugin"),
        lambda: client.load_plugin("no-such-plugin"),
    ):
        with pytest.raises(RustaidError) as info:
            call()
        assert info.value.code == grpc.StatusCode.NOT_FOUND


def test_invalid_argument_names_the_field(client: Client) -> None:
    with pytest.raises(RustaidError) as info:
        client.generate("", "tiny")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "prompt" in info.value.message
    with pytest.raises(RustaidError) as info:
        client.generate("hi", "tiny", temperature=-1.0)
    assert info.value.code_name == "INVALID_ARGUMENT"
    assert [f for f, _ in info.value.field_violations] == ["params.temperature"]


def test_unreachable_daemon(unreachable: str) -> None:
    with Client(unreachable, timeout=5) as c, pytest.raises(DaemonUnavailableError) as info:
        c.list_models()
    error = info.value
    assert isinstance(error, RustaidError)
    assert error.code == grpc.StatusCode.UNAVAILABLE
    assert error.message == (
        f"cannot reach the rustaid daemon at {unreachable}: is it running? Start it with "
        "`systemctl --user start rustaid` (`sudo systemctl start rustaid` for the system "
        "service), or run `rustaid serve` in a terminal"
    )
    assert error.details  # gRPC's own words are kept
    with Client(unreachable, timeout=5) as c, pytest.raises(DaemonUnavailableError):
        list(c.generate_stream("hi"))


@pytest.mark.skipif(os.geteuid() != 0, reason="running a client as another user needs root")
def test_a_socket_the_user_may_not_open_names_its_group() -> None:
    """The hint names the group that owns the socket (the packaged service's `rustai`)."""
    with temporary_accounts() as accounts:
        accounts.group("rustai-t-sock")
        accounts.user("rustaid-t-outsider")
        outsider = pwd.getpwnam("rustaid-t-outsider")
        folder = Path(tempfile.mkdtemp(prefix="rustaid-", dir="/tmp"))
        try:
            folder.chmod(0o755)
            path = folder / "rustaid.sock"
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
                listener.bind(str(path))
                listener.listen()
                os.chown(path, 0, grp.getgrnam("rustai-t-sock").gr_gid)
                path.chmod(0o660)
                probe = (
                    "import sys; from rustaid_client import Client, DaemonUnavailableError\n"
                    "try:\n"
                    "    Client(sys.argv[1], timeout=5).list_models()\n"
                    "except DaemonUnavailableError as e:\n"
                    "    print(e.message)\n"
                )
                out = subprocess.run(
                    ["setpriv", f"--reuid={outsider.pw_uid}", f"--regid={outsider.pw_gid}",
                     "--clear-groups", "--", sys.executable, "-c", probe, f"unix://{path}"],
                    capture_output=True, text=True, timeout=60, check=True,
                )  # fmt: skip
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    assert out.stdout.strip() == (
        f"cannot reach the rustaid daemon at unix://{path}: permission denied "
        "(is your user in the `rustai-t-sock` group?)"
    ), out.stderr


def test_bad_arguments_fail_before_the_call(client: Client) -> None:
    with pytest.raises(ValueError, match="chat role"):
        chat_message(("robot", "beep"))
    with pytest.raises(ValueError, match="llm, embedding, nlu"):
        client.list_models(kind="vision")
    with pytest.raises(TypeError, match="unknown generation option"):
        client.generate("hi", "tiny", temprature=0.5)  # type: ignore[call-arg]

"""config/models.toml: priorities, tags, per-model settings, overrides by path; bad
entries reported with file, line and reason while the rest load."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from rustaid.api.v1 import common_pb2, generate_pb2, models_pb2
from rustaid.core.models_toml import load_models_toml, parse_duration, parse_size
from rustaid.testing.daemon import run_daemon
from tests.conftest import Stubs, add_model
from tests.helpers import wait_until

GOOD = """
[[model]]
id = "fast"
path = "a.gguf"
priority = 5
tags = ["chat", "fast"]
context_length = 256
threads = 1
keep_alive = "10m"
min_memory = "1 MB"

[[model]]
path = "b.gguf"
tags = ["chat"]
quality = 8

[[model]]
id = "remote-mini"
provider = "llama.cpp"
url = "http://127.0.0.1:9/v1"
"""

BAD = """
[[model]]
id = "ok"
path = "a.gguf"

[[model]]
id = "no-such-engine"
provider = "vllm-turbo"
url = "http://127.0.0.1:9/v1"

[[model]]
id = "bad-priority"
path = "b.gguf"
priority = "high"

[[model]]
id = "both"
path = "b.gguf"
url = "http://x"
"""


def test_parse_sizes_and_durations() -> None:
    assert parse_size("1.5 GB") == 1_500_000_000
    assert parse_size("512MiB") == 512 << 20
    assert parse_size(1024) == 1024
    assert parse_duration("10m") == 600
    assert parse_duration(-1) == -1
    for bad in ("lots", -5, "1 parsec"):
        with pytest.raises(ValueError):
            parse_size(bad) if bad != -5 else parse_duration(-5)


def test_bad_entries_name_file_line_and_reason(tmp_path: Path) -> None:
    (tmp_path / "models.toml").write_text(BAD)
    entries, problems = load_models_toml(tmp_path / "models.toml", tmp_path, ["llama.cpp"])
    assert [e.id for e in entries] == ["ok"]
    messages = [p.message(tmp_path / "models.toml") for p in problems]
    assert (
        messages[0].startswith("models.toml:6:") and "unknown provider 'vllm-turbo'" in messages[0]
    )
    assert (
        messages[1].startswith("models.toml:11:") and "priority must be an integer" in messages[1]
    )
    assert messages[2].startswith("models.toml:16:") and "exactly one of path" in messages[2]


def test_parallel_is_read_and_checked(tmp_path: Path) -> None:
    (tmp_path / "models.toml").write_text(
        '[[model]]\nid = "a"\npath = "a.gguf"\nparallel = 3\n\n'
        '[[model]]\nid = "b"\npath = "b.gguf"\nparallel = 65\n\n'
        '[[model]]\nid = "c"\npath = "c.gguf"\nparallel = -1\n'
    )
    entries, problems = load_models_toml(tmp_path / "models.toml", tmp_path, ["llama.cpp"])
    assert [(e.id, e.config.parallel) for e in entries] == [("a", 3)]
    messages = [p.message(tmp_path / "models.toml") for p in problems]
    assert "parallel must be at most 64 (got 65)" in messages[0]
    assert "parallel must be an integer >= 0 (got -1)" in messages[1]


def test_syntax_error_is_reported_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "models.toml").write_text('[[model]]\nid = "x"\npath = \n')
    entries, problems = load_models_toml(tmp_path / "models.toml", tmp_path, [])
    assert entries == []
    assert problems[0].line == 3 and "not valid TOML" in problems[0].reason


@pytest.fixture
def configured(tmp_path: Path, model_files: dict[str, Path]) -> Stubs:
    add_model(tmp_path, model_files["tiny"], "a.gguf")
    add_model(tmp_path, model_files["tiny"], "b.gguf")
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "models.toml").write_text(GOOD)
    with run_daemon(tmp_path) as d:
        stubs = Stubs(d)
        yield stubs  # type: ignore[misc]
        stubs.channel.close()


def models(s: Stubs) -> dict[str, models_pb2.Model]:
    return {m.id: m for m in s.models.ListModels(models_pb2.ListModelsRequest()).models}


def test_entries_override_discovered_files(configured: Stubs) -> None:
    listed = models(configured)
    assert set(listed) == {"fast", "b", "remote-mini"}  # a.gguf renamed to "fast"
    assert listed["fast"].priority == 5
    assert list(listed["fast"].tags) == ["chat", "fast"]
    assert list(listed["b"].tags) == ["chat"]
    assert listed["remote-mini"].path == "http://127.0.0.1:9/v1"
    loaded = configured.models.LoadModel(models_pb2.LoadModelRequest(id="fast")).model
    assert loaded.context_length == 256 and loaded.threads == 1  # per-model config applied


def test_selection_uses_priority_tags_and_quality(configured: Stubs) -> None:
    def pick(**criteria: object) -> models_pb2.SelectModelResponse:
        return configured.models.SelectModel(
            models_pb2.SelectModelRequest(criteria=common_pb2.SelectionCriteria(**criteria))
        )

    assert pick(prefer_local=True).model_id == "fast"  # priority 5
    assert pick(prefer_quality=True, prefer_local=True).model_id == "b"  # quality 8 -> +16
    fast_only = pick(required_tags=["fast"])
    assert fast_only.model_id == "fast"
    excluded = {c.model_id: c.reasons for c in fast_only.candidates if c.excluded}
    assert "missing required tags: fast" in excluded["b"]
    # A request without a model id goes where the router says.
    r = configured.generate.Generate(
        generate_pb2.GenerateRequest(
            prompt="hi",
            selection=common_pb2.SelectionCriteria(prefer_local=True, required_tags=["chat"]),
            params=common_pb2.GenerationParams(max_tokens=2),
        )
    )
    assert r.model_id == "fast"


def test_measured_speed_counts_when_prefer_speed(
    tmp_path: Path, model_files: dict[str, Path]
) -> None:
    add_model(tmp_path, model_files["tiny"], "quick.gguf")
    add_model(tmp_path, model_files["slow"], "sluggish.gguf")
    with run_daemon(tmp_path) as d:
        s = Stubs(d)
        for model_id in ("quick", "sluggish"):
            s.generate.Generate(
                generate_pb2.GenerateRequest(
                    model_id=model_id,
                    prompt="hi",
                    params=common_pb2.GenerationParams(max_tokens=16),
                )
            )
        r = s.models.SelectModel(
            models_pb2.SelectModelRequest(criteria=common_pb2.SelectionCriteria(prefer_speed=True))
        )
        assert r.model_id == "quick"
        assert any("measured" in why and "tokens/s" in why for why in r.candidates[0].reasons)
        s.channel.close()


def test_invalid_entries_are_listed_with_their_error_and_the_rest_load(
    tmp_path: Path, model_files: dict[str, Path]
) -> None:
    add_model(tmp_path, model_files["tiny"], "a.gguf")
    add_model(tmp_path, model_files["tiny"], "b.gguf")
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "models.toml").write_text(BAD)
    with run_daemon(tmp_path) as d:
        s = Stubs(d)
        listed = models(s)
        assert listed["ok"].state == models_pb2.MODEL_STATE_AVAILABLE
        assert listed["no-such-engine"].state == models_pb2.MODEL_STATE_ERROR
        assert "models.toml:6" in listed["no-such-engine"].error
        with pytest.raises(grpc.RpcError) as info:
            s.generate.Generate(
                generate_pb2.GenerateRequest(model_id="no-such-engine", prompt="hi")
            )
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "models.toml:11" in d.stderr()  # logged too
        # Fixing the file is picked up without a restart.
        (tmp_path / "config" / "models.toml").write_text(
            '[[model]]\nid = "renamed"\npath = "a.gguf"\n'
        )
        wait_until(lambda: "renamed" in models(s), timeout=5)
        s.channel.close()

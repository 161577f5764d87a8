"""Streams cut short and per-client limits: a client that disconnects mid-stream frees
its place and the model at once; a client over max_requests_per_client gets 429 with
Retry-After."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rustaid.testing.daemon import run_daemon
from tests.conftest import add_model
from tests.http.conftest import SLOW, HttpDaemon
from tests.rag.conftest import write_config

LONG = 4000  # tokens: the slow model needs many seconds for them


@pytest.fixture(scope="module")
def limited(
    tmp_path_factory: pytest.TempPathFactory, model_files: dict[str, Path]
) -> Iterator[HttpDaemon]:
    data_dir = tmp_path_factory.mktemp("http-limits")
    add_model(data_dir, model_files["slow"], "slow.gguf")
    write_config(data_dir, 'http_listen = ["127.0.0.1:0"]\nmax_requests_per_client = 1\n')
    with run_daemon(data_dir) as daemon:
        yield HttpDaemon(daemon, daemon.http_url())


def _complete(url: str, max_tokens: int) -> httpx.Response:
    return httpx.post(
        url + "/v1/completions",
        json={"model": SLOW, "prompt": "Once", "max_tokens": max_tokens, "temperature": 1},
        timeout=60,
    )


def test_over_the_limit_429_then_a_disconnect_frees_the_place(limited: HttpDaemon) -> None:
    warm = _complete(limited.url, 64)
    assert warm.status_code == 200
    tps = warm.json()["rustaid"]["timings"]["tokens_per_second"]
    # Seed 2 runs to the token cap with no end token: the stream is still running below.
    body = {"model": SLOW, "prompt": "Once", "max_tokens": LONG, "stream": True, "seed": 2,
            "temperature": 1}  # fmt: skip
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", limited.url + "/v1/completions", json=body) as stream:
            lines = stream.iter_lines()
            assert [next(lines) for _ in range(3)]  # generating
            busy = _complete(limited.url, 1)
            assert busy.status_code == 429
            assert int(busy.headers["retry-after"]) >= 1
            assert busy.json()["error"]["type"] == "rate_limit_error"
            assert busy.json()["error"]["code"] == "too_many_requests"
        # Stream closed mid-way: generation stops within a token and the place is free.
        t0 = time.monotonic()
        while (reply := _complete(limited.url, 1)).status_code == 429:
            time.sleep(0.05)
            assert time.monotonic() - t0 < LONG / tps
        freed_after = time.monotonic() - t0
    assert reply.status_code == 200
    # Far sooner than the rest of the long generation would have taken.
    assert freed_after < 0.25 * LONG / tps


def test_ollama_stream_cut_short_also_frees_the_place(limited: HttpDaemon) -> None:
    options = {"num_predict": LONG, "seed": 2, "temperature": 1}  # runs to the cap
    body = {"model": SLOW, "prompt": "Once", "raw": True, "options": options}
    url = limited.url + "/api/generate"
    with httpx.Client(timeout=60) as client, client.stream("POST", url, json=body) as stream:
        lines = stream.iter_lines()
        assert '"done":false' in next(lines)
        busy = client.post(url, json={**body, "stream": False})
        assert busy.status_code == 429 and "max_requests_per_client" in busy.json()["error"]
    deadline = time.monotonic() + 30
    while (reply := _complete(limited.url, 1)).status_code == 429:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert reply.status_code == 200


def test_a_client_gone_before_a_unary_reply_frees_the_place(limited: HttpDaemon) -> None:
    warm = _complete(limited.url, 64)
    tps = warm.json()["rustaid"]["timings"]["tokens_per_second"]
    # Seed 2 runs to the token cap (1024 here) with no end token: ~2 s of work.
    body = {"model": SLOW, "prompt": "Once", "max_tokens": LONG, "seed": 2, "temperature": 1}
    for _ in range(100):
        try:  # the client gives up and closes the connection
            early = httpx.post(limited.url + "/v1/completions", json=body, timeout=0.5)
        except httpx.ReadTimeout:
            break
        # The warm-up's place is given back just after its reply reached the client.
        assert early.status_code == 429, early.text
        time.sleep(0.05)
    else:
        pytest.fail("the long request never started")
    t0 = time.monotonic()
    while (reply := _complete(limited.url, 1)).status_code == 429:
        time.sleep(0.05)
        assert time.monotonic() - t0 < LONG / tps
    assert reply.status_code == 200
    assert time.monotonic() - t0 < 0.25 * LONG / tps


def test_a_stream_running_at_shutdown_ends_with_an_error_event(
    tmp_path: Path, model_files: dict[str, Path]
) -> None:
    data = tmp_path / "data"
    add_model(data, model_files["slow"], "slow.gguf")
    write_config(data, 'http_listen = ["127.0.0.1:0"]\nshutdown_grace_s = 1\n')
    # Seed 2 runs to the token cap with no end token (unseeded, the reply could end within
    # the second of grace and close with [DONE]).
    body = {"model": SLOW, "prompt": "Once", "max_tokens": LONG, "stream": True, "seed": 2,
            "temperature": 1}  # fmt: skip
    with run_daemon(data) as daemon:
        url = daemon.http_url()
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as stream:
            lines = stream.iter_lines()
            assert next(lines).startswith("data: {")
            assert daemon.stop() == 0  # SIGTERM: 1 s of grace, then generation stops
            rest = [line for line in lines if line]
        log = daemon.stderr()
    error = json.loads(rest[-1].removeprefix("data: "))["error"]
    assert error["code"] == "shutting_down" and "retry" in error["message"]
    assert "Traceback" not in log and "ERROR" not in log

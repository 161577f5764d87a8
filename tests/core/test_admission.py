"""Admission control in the core: per-client limits (for any transport: gRPC, D-Bus),
prompt size before tokenization, retry delays of a full queue, queue positions."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rustaid.config import load_settings
from rustaid.core import caller as caller_mod
from rustaid.core.admission import (
    RETRY_MAX_S,
    RETRY_MIN_S,
    Admission,
    check_prompt_size,
    retry_delay,
)
from rustaid.core.engine import Done, GenerationRequest, Queued
from rustaid.core.scheduler import ModelQueue, Priority
from rustaid.errors import InvalidArgument, ResourceExhausted
from rustaid.providers import ChatMessage, GenerationParams, Role
from rustaid.testing.daemon import isolated_settings, running_daemon
from tests.conftest import add_model


def as_caller(key: str, transport: str = "dbus") -> None:
    caller_mod.set_current(caller_mod.Caller(key=key, transport=transport))


async def test_limit_per_caller_key_and_release() -> None:
    limit = [2]
    admission = Admission(lambda: limit[0])
    as_caller("dbus::1.7")
    with admission.admit("generate"):
        with admission.admit("generate"):
            pass  # nested in the same request: one place, not two
        assert admission.in_flight("dbus::1.7") == 1

    entered = asyncio.Event()
    leave = asyncio.Event()

    async def hold(key: str) -> None:
        as_caller(key)
        with admission.admit("generate"):
            entered.set()
            await leave.wait()

    tasks = [asyncio.create_task(hold("dbus::1.7")) for _ in range(2)]
    other = asyncio.create_task(hold("dbus::1.8"))
    await asyncio.sleep(0.01)
    assert admission.clients() == {"dbus::1.7": 2, "dbus::1.8": 1}
    with pytest.raises(ResourceExhausted) as info, admission.admit("generate"):
        pass
    err = info.value
    assert err.reason == "TOO_MANY_REQUESTS"
    assert "'dbus::1.7' already has 2 requests in flight" in err.message
    assert "max_requests_per_client is 2" in err.message
    assert RETRY_MIN_S <= err.retry_after_s <= RETRY_MAX_S

    limit[0] = 0  # a reload to "no limit" applies to the next request at once
    with admission.admit("generate"):
        assert admission.in_flight("dbus::1.7") == 3
    limit[0] = 2

    leave.set()
    await asyncio.gather(*tasks, other)
    assert admission.in_flight() == 0 and admission.clients() == {}
    with admission.admit("generate"):  # places came back
        pass


async def test_a_failing_request_gives_its_place_back() -> None:
    admission = Admission(lambda: 1)
    as_caller("uid:1000", "unix")
    with pytest.raises(RuntimeError), admission.admit("generate"):
        raise RuntimeError("boom")
    assert admission.in_flight() == 0
    with admission.admit("generate"):
        pass


async def test_the_daemons_own_work_is_not_limited() -> None:
    admission = Admission(lambda: 1)
    caller_mod.set_current(caller_mod.INTERNAL)
    with admission.admit("generate"), admission.admit("other"):
        assert admission.in_flight() == 0


async def test_retry_delay_follows_recent_durations() -> None:
    admission = Admission(lambda: 1)
    as_caller("token:ci")
    for _ in range(3):
        with admission.admit("generate"):
            await asyncio.sleep(0.6)
    running = asyncio.Event()
    done = asyncio.Event()

    async def hold() -> None:
        with admission.admit("generate"):
            running.set()
            await done.wait()

    task = asyncio.create_task(hold())
    await running.wait()
    with pytest.raises(ResourceExhausted) as info, admission.admit("generate"):
        pass
    done.set()
    await task
    # A request takes ~0.6 s and the running one just started: retry in about that.
    assert 0.4 <= info.value.retry_after_s <= 1.0, info.value.retry_after_s


def test_retry_delay_bounds() -> None:
    assert retry_delay(0.0) == RETRY_MIN_S
    assert retry_delay(-5) == RETRY_MIN_S
    assert retry_delay(float("nan")) == RETRY_MIN_S
    assert retry_delay(1e9) == RETRY_MAX_S
    assert retry_delay(3.25) == 3.25


def test_prompt_size_counts_utf8_bytes_and_names_the_limit() -> None:
    check_prompt_size(["a" * 100], 100, "prompt")
    check_prompt_size(["é" * 50], 100, "prompt")  # 100 bytes exactly
    with pytest.raises(InvalidArgument) as info:
        check_prompt_size(["é" * 51], 100, "prompt")
    e = info.value
    assert e.field == "prompt" and e.reason == "PROMPT_TOO_LARGE"
    assert "prompt is 102 bytes, more than the 100 bytes" in e.message
    assert "(max_prompt_bytes): shorten it" in e.message
    with pytest.raises(InvalidArgument, match="messages is 120 bytes"):
        check_prompt_size(["a" * 60, "b" * 60], 100, "messages")
    with pytest.raises(InvalidArgument, match="prompt is 101 characters, more than the 100"):
        check_prompt_size(["é" * 101], 100, "prompt")
    check_prompt_size(["a" * 10_000], 0, "prompt")  # 0: no limit


def test_a_huge_prompt_is_refused_without_encoding_it() -> None:
    huge = "é" * (16 << 20)  # 16 Mi characters, 32 MiB of UTF-8
    t0 = time.perf_counter()
    for _ in range(100):
        with pytest.raises(InvalidArgument):
            check_prompt_size([huge], 1 << 20, "prompt")
    per_call = (time.perf_counter() - t0) / 100
    t0 = time.perf_counter()
    len(huge.encode())
    encode = time.perf_counter() - t0
    assert per_call < encode / 10, (per_call, encode)


# -- the model queue -------------------------------------------------------------------


async def test_full_queue_suggests_when_it_will_have_drained() -> None:
    q = ModelQueue("m", max_waiting=2)
    for _ in range(2):  # two turns of ~0.3 s
        t = q.join(Priority.INTERACTIVE)
        await asyncio.sleep(0.3)
        q.leave(t)
    assert 0.25 <= q.turns.seconds <= 0.6
    running = q.join(Priority.INTERACTIVE)
    waiting = [q.join(Priority.INTERACTIVE) for _ in range(2)]
    with pytest.raises(ResourceExhausted) as info:
        q.join(Priority.INTERACTIVE)
    assert info.value.reason == "QUEUE_FULL"
    # What is left of the running turn plus one turn for each of the 2 waiting.
    assert 0.75 <= info.value.retry_after_s <= 1.8, info.value.retry_after_s
    for t in (running, *waiting):
        q.leave(t)


async def test_full_queue_before_any_turn_finished() -> None:
    q = ModelQueue("m", max_waiting=0)
    q.join(Priority.INTERACTIVE)
    with pytest.raises(ResourceExhausted) as info:
        q.join(Priority.INTERACTIVE)
    assert info.value.retry_after_s == RETRY_MIN_S


async def test_waiters_are_woken_on_every_change() -> None:
    q = ModelQueue("m", max_waiting=10)
    running = q.join(Priority.INTERACTIVE)
    bg = q.join(Priority.BACKGROUND)
    moved = q.moved()
    assert not moved.done()
    ahead = q.join(Priority.INTERACTIVE)  # jumps ahead of the background one
    assert moved.done() and q.position(bg) == 2
    moved = q.moved()
    q.leave(ahead)
    assert moved.done() and q.position(bg) == 1
    q.leave(running)
    q.leave(bg)


# -- the engine: limits for callers that do not come through gRPC ------------------------


@contextlib.asynccontextmanager
async def daemon_with(
    tmp_path: Path, model_files: dict[str, Path], **settings: object
) -> AsyncIterator[object]:
    add_model(tmp_path, model_files["slow"])
    settings = {"threads": 1, "parallel": 1, **settings}  # one at a time: callers wait
    async with running_daemon(isolated_settings(tmp_path, **settings)) as daemon:
        yield daemon


async def test_engine_limits_each_dbus_caller(tmp_path: Path, model_files: dict[str, Path]) -> None:
    async with daemon_with(tmp_path, model_files, max_requests_per_client=2) as daemon:
        engine = daemon.engine  # type: ignore[attr-defined]
        started = asyncio.Queue[str]()

        async def generate(key: str, max_tokens: int) -> list[object]:
            as_caller(key)
            request = GenerationRequest(
                model_id="slow", prompt="hello", params=GenerationParams(max_tokens=max_tokens)
            )
            events = []
            async for event in engine.generate(request):
                if not events:
                    await started.put(key)
                events.append(event)
            return events

        long = [asyncio.create_task(generate("dbus::1.1", 400)) for _ in range(2)]
        for _ in long:
            await asyncio.wait_for(started.get(), 30)
        # The third from the same caller is refused; another caller is queued and served.
        with pytest.raises(ResourceExhausted) as info:
            await generate("dbus::1.1", 2)
        assert info.value.reason == "TOO_MANY_REQUESTS"
        assert RETRY_MIN_S <= info.value.retry_after_s <= RETRY_MAX_S
        other = asyncio.create_task(generate("dbus::1.2", 2))
        await asyncio.wait_for(started.get(), 30)
        assert engine.admission.clients() == {"dbus::1.1": 2, "dbus::1.2": 1}
        for task in long:
            task.cancel()
        events = await asyncio.wait_for(other, 60)
        assert isinstance(events[0], Queued) and isinstance(events[-1], Done)
        await asyncio.gather(*long, return_exceptions=True)
        assert engine.admission.in_flight() == 0
        # The engine's own bad-input check comes before the limit, and costs no place.
        as_caller("dbus::1.1")
        with pytest.raises(InvalidArgument, match="max_prompt_bytes"):
            async for _ in engine.generate(
                GenerationRequest(
                    model_id="slow",
                    messages=(ChatMessage(Role.USER, "x" * ((1 << 20) + 1)),),
                )
            ):
                pass
        assert engine.admission.in_flight() == 0


def test_settings_validation(tmp_path: Path) -> None:
    def load(**overrides: object) -> object:
        return load_settings(data_dir=tmp_path, overrides=overrides, environ={})

    s = load_settings(data_dir=tmp_path, environ={})
    assert (s.max_requests_per_client, s.max_prompt_bytes, s.max_message_mb) == (8, 1 << 20, 16)
    assert s.log_format == "text"
    s = load_settings(
        data_dir=tmp_path,
        environ={"RUSTAID_LOG_FORMAT": "json", "RUSTAID_MAX_REQUESTS_PER_CLIENT": "0"},
    )
    assert (s.log_format, s.max_requests_per_client) == ("json", 0)
    for key, value, message in (
        ("log_format", "xml", "log_format must be one of text, json"),
        ("max_requests_per_client", -1, "max_requests_per_client must be >= 0"),
        ("max_prompt_bytes", -1, "max_prompt_bytes must be >= 0"),
        ("max_message_mb", 0, "max_message_mb must be between 1 and 2047"),
        ("max_message_mb", 4096, "max_message_mb must be between 1 and 2047"),
        ("max_message_mb", "big", "setting 'max_message_mb'"),
        ("parallel", -1, r"parallel must be between 0 \(automatic\) and 64 \(got -1\)"),
        ("parallel", 65, r"parallel must be between 0 \(automatic\) and 64 \(got 65\)"),
    ):
        with pytest.raises(InvalidArgument, match=message) as info:
            load(**{key: value})
        assert info.value.field == key

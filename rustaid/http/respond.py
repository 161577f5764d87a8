"""Small pieces every route uses: reading a bounded JSON body, JSON answers, errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from rustaid.errors import Cancelled, RustaidError
from rustaid.http import errors as http_errors
from rustaid.http.body import Body, parse_json_object

log = logging.getLogger(__name__)
T = TypeVar("T")


def json_bytes(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json_bytes(data), status, headers, media_type="application/json")


async def read_body(request: Request, limit: int) -> Body:
    """The request's JSON object; BodyTooLarge past `limit` bytes (checked as it arrives,
    whatever Content-Length said)."""
    parts = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise http_errors.BodyTooLarge(limit)
        parts.append(chunk)
    return parse_json_object(b"".join(parts))


def log_unexpected(error: BaseException) -> None:
    if not isinstance(error, RustaidError):
        log.error("HTTP request failed", exc_info=error)


def sse_error(error: BaseException) -> bytes:
    """An error after a stream began, as OpenAI streams send it."""
    log_unexpected(error)
    return json_bytes(http_errors.openai_body(error))


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """`work`, cancelled when the client disconnects first (a generation then stops
    within one token and frees its place, as a stream cut short does). The body must
    have been read: after it, the server's next message is the disconnect."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise Cancelled("the client disconnected")
    return task.result()

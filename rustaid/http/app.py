"""The routes of the HTTP front end (Starlette), with errors mapped in one place."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from rustaid.errors import NotFound
from rustaid.http.edge import RESPONSE_HEADERS, error_response
from rustaid.http.ollama import OllamaRoutes
from rustaid.http.openai import OpenAIRoutes
from rustaid.http.respond import json_response, log_unexpected

if TYPE_CHECKING:
    from rustaid.http.parts import HttpParts

Endpoint = Callable[[Request], Awaitable[Response]]


def error_answer(path: str, error: BaseException) -> Response:
    log_unexpected(error)
    status, headers, body = error_response(path, error)
    return Response(body, status, headers, media_type="application/json")


def with_context(request: Request, response: Response) -> Response:
    """The response with the request's own headers (request id, CORS) from the Guard."""
    for key, value in request.scope.get(RESPONSE_HEADERS, ()):
        response.headers.append(key, value)
    return response


def guarded(endpoint: Endpoint) -> Endpoint:
    """The endpoint, its errors answered in the shape of its route family."""

    async def call(request: Request) -> Response:
        try:
            response = await endpoint(request)
        except Exception as e:
            response = error_answer(request.url.path, e)
        return with_context(request, response)

    return call


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 and 405, in the shape of the route family."""
    path = request.url.path
    if getattr(exc, "status_code", 404) == 405:
        answer = error_answer(path, NotFound(f"{request.method} is not served on {path}"))
        answer.status_code = 405
    else:
        answer = error_answer(path, NotFound(f"no route {path}: see docs/http-api.md"))
    return with_context(request, answer)


def build_app(parts: HttpParts) -> Starlette:
    o = OpenAIRoutes(parts)
    ol = OllamaRoutes(parts)

    async def root(request: Request) -> Response:
        return Response("rustaid is running", media_type="text/plain")

    async def health(request: Request) -> Response:
        serving = parts.resources.generate_serving
        return json_response({"status": "ok" if serving else "too hot"}, 200 if serving else 503)

    routes = [
        Route("/", guarded(root), methods=["GET", "HEAD"]),
        Route("/health", guarded(health), methods=["GET"]),
        Route("/v1/models", guarded(o.models), methods=["GET"]),
        Route("/v1/models/{model:path}", guarded(o.model), methods=["GET"]),
        Route("/v1/chat/completions", guarded(o.chat_completions), methods=["POST"]),
        Route("/v1/completions", guarded(o.completions), methods=["POST"]),
        Route("/v1/embeddings", guarded(o.embeddings), methods=["POST"]),
        *[Route(path, guarded(fn), methods=methods) for path, fn, methods in ol.routes()],
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_error})

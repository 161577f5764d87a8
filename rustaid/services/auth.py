"""The gRPC server interceptor that authenticates and authorises every call.

It runs inside ErrorInterceptor (services/errors.py), so its denials (domain errors
Unauthenticated and PermissionDenied) become status codes with ErrorInfo details there,
and before admission control, which limits per caller. An allowed call runs with its
caller set (rustaid.core.caller).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from rustaid.auth.manager import Auth
from rustaid.auth.policy import access_for
from rustaid.core import caller as caller_mod
from rustaid.services.context import wrap_handler

Handler = Any  # grpc.RpcMethodHandler (generic only in the type stubs)


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, auth: Auth) -> None:
        self.auth = auth

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        access = access_for(method)
        auth = self.auth

        @contextlib.asynccontextmanager
        async def around(context: Any) -> AsyncIterator[None]:
            # Before the handler reads anything: a denied client-streaming call never
            # has its requests consumed.
            caller_mod.set_current(auth.authenticate(method, access, context.peer(), context))
            yield

        return wrap_handler(handler, around)

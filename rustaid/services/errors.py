"""Maps domain errors to gRPC status codes, once, in a server interceptor.

Each error carries google.rpc.Status details a client can act on: ErrorInfo (reason),
BadRequest (the field to fix), RetryInfo (when to retry).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from rustaid import errors

log = logging.getLogger(__name__)

Handler = Any  # grpc.RpcMethodHandler (generic only in the type stubs)

DOMAIN = "rustaid"

CODES: dict[type[errors.RustaidError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.PreconditionFailed: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
    errors.NotImplementedYet: grpc.StatusCode.UNIMPLEMENTED,
}


def status_code(error: errors.RustaidError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in CODES:
            return CODES[cls]
    return grpc.StatusCode.INTERNAL


def _pack(msg: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(msg)
    return packed


def status_details(error: errors.RustaidError, code: grpc.StatusCode) -> bytes:
    details = []
    if error.reason:
        details.append(_pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN)))
    if isinstance(error, errors.InvalidArgument) and error.field:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=error.field, description=error.message
        )
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[violation])))
    if isinstance(error, errors.ResourceExhausted | errors.Unavailable) and error.retry_after_s:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(error.retry_after_s * 1000))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    status = status_pb2.Status(code=code.value[0], message=error.message, details=details)
    return bytes(status.SerializeToString())


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: errors.RustaidError) -> None:
    code = status_code(error)
    await context.abort(
        code,
        error.message,
        trailing_metadata=(("grpc-status-details-bin", status_details(error, code)),),
    )


class ErrorInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Turns RustaidError into its status code; anything else is a bug (INTERNAL, logged)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: Any) -> Any:
                try:
                    return await inner_uu(request, context)
                except errors.RustaidError as e:
                    await abort(context, e)
                except Exception:
                    log.exception("bug in %s", method)
                    await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the log")

            return grpc.unary_unary_rpc_method_handler(
                unary_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_us: Any = handler.unary_stream

            async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                try:
                    async for response in inner_us(request, context):
                        yield response
                except errors.RustaidError as e:
                    await abort(context, e)
                except Exception:
                    log.exception("bug in %s", method)
                    await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the log")

            return grpc.unary_stream_rpc_method_handler(
                unary_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            inner_su = handler.stream_unary

            async def stream_unary(requests: Any, context: Any) -> Any:
                try:
                    return await inner_su(requests, context)
                except errors.RustaidError as e:
                    await abort(context, e)
                except Exception:
                    log.exception("bug in %s", method)
                    await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the log")

            return grpc.stream_unary_rpc_method_handler(
                stream_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

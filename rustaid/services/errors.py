"""Maps domain errors to gRPC status codes, once, in a server interceptor.

Each error carries google.rpc.Status details a client can act on: ErrorInfo (reason),
BadRequest (the field to fix), RetryInfo (when to retry).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from rustaid import errors
from rustaid.core.messages import bounded, internal_error_message

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
    errors.DataLoss: grpc.StatusCode.DATA_LOSS,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
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
        violations = [
            error_details_pb2.BadRequest.FieldViolation(field=f, description=bounded(m))
            for f, m in error.violations
        ]
        details.append(_pack(error_details_pb2.BadRequest(field_violations=violations)))
    if isinstance(error, errors.ResourceExhausted | errors.Unavailable) and error.retry_after_s:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(error.retry_after_s * 1000))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    status = status_pb2.Status(code=code.value[0], message=bounded(error.message), details=details)
    return bytes(status.SerializeToString())


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: errors.RustaidError) -> None:
    code = status_code(error)
    await context.abort(
        code,
        bounded(error.message),
        trailing_metadata=(("grpc-status-details-bin", status_details(error, code)),),
    )


@dataclass(frozen=True)
class Undecodable:
    """Stands in for a request message whose bytes do not parse (see `lenient`)."""

    error: errors.InvalidArgument


def lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """The request deserializer, returning Undecodable instead of raising: grpc would
    answer a message that does not parse with UNKNOWN, outside of any handler."""
    if deserializer is None:
        return None
    message_type = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    name = getattr(message_type, "full_name", "") or "request"

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # protobuf's DecodeError, whatever its implementation raises
            return Undecodable(
                errors.InvalidArgument(
                    f"the request is not a valid {name} message ({len(data)} bytes that do "
                    "not parse as protobuf): send a message encoded from the daemon's "
                    "proto files (proto/rustaid/api/v1)",
                    reason="MALFORMED_REQUEST",
                )
            )

    return deserialize


def decoded(request: Any) -> Any:
    if isinstance(request, Undecodable):
        raise request.error
    return request


async def decoded_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield decoded(request)


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
                    return await inner_uu(decoded(request), context)
                except errors.RustaidError as e:
                    await abort(context, e)
                except grpc.aio.AbortError:
                    raise  # the handler set its status itself
                except Exception:
                    log.exception("bug in %s", method)
                    await context.abort(grpc.StatusCode.INTERNAL, internal_error_message())

            return grpc.unary_unary_rpc_method_handler(
                unary_unary,
                request_deserializer=lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_us: Any = handler.unary_stream

            async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                try:
                    result = inner_us(decoded(request), context)
                    if inspect.isawaitable(result):  # writes with context.write() (Health.Watch)
                        await result
                        return
                    async for response in result:
                        yield response
                except errors.RustaidError as e:
                    await abort(context, e)
                except grpc.aio.AbortError:
                    raise  # the handler set its status itself
                except Exception:
                    log.exception("bug in %s", method)
                    await context.abort(grpc.StatusCode.INTERNAL, internal_error_message())

            return grpc.unary_stream_rpc_method_handler(
                unary_stream,
                request_deserializer=lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            inner_su = handler.stream_unary

            async def stream_unary(requests: Any, context: Any) -> Any:
                try:
                    return await inner_su(decoded_stream(requests), context)
                except errors.RustaidError as e:
                    await abort(context, e)
                except grpc.aio.AbortError:
                    raise  # the handler set its status itself
                except Exception:
                    log.exception("bug in %s", method)
                    await context.abort(grpc.StatusCode.INTERNAL, internal_error_message())

            return grpc.stream_unary_rpc_method_handler(
                stream_unary,
                request_deserializer=lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return handler

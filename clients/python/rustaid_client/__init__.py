"""Typed Python client for the rustaid daemon, and the `rustaictl` command line."""

from rustaid_client.client import (
    ADDRESS_ENV,
    SYSTEM_ADDRESS,
    ChatInput,
    Client,
    DaemonUnavailableError,
    GenerationOptions,
    ResponseStream,
    RustaidError,
    chat_message,
    default_address,
    make_channel,
    normalize_address,
    read_token_file,
)

__all__ = [
    "ADDRESS_ENV",
    "SYSTEM_ADDRESS",
    "ChatInput",
    "Client",
    "DaemonUnavailableError",
    "GenerationOptions",
    "ResponseStream",
    "RustaidError",
    "chat_message",
    "default_address",
    "make_channel",
    "normalize_address",
    "read_token_file",
]

__version__ = "0.1.0"

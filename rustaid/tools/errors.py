"""How a sandboxed tool can fail besides its own errors (raised by the sandboxes, mapped
to outcomes by the tool registry)."""

from __future__ import annotations

from rustaid.providers import ToolError


class LimitExceeded(ToolError):
    """A sandbox limit (memory, fuel, CPU time) stopped the tool."""


class SandboxTimeout(ToolError):
    """A sandboxed tool was stopped at its deadline."""


class InvalidOutput(ToolError):
    """The tool's output is not JSON (raised by sandboxes that read raw output)."""


class OutputTooLarge(ToolError):
    """The tool's output is larger than allowed (raised before reading it)."""

"""The tool registry and executor.

Tools come from plugins (`register_tools`) and from WebAssembly modules in the plugins
folder. Executing one:

1. look it up (NotFound), check it is enabled and available (PreconditionFailed);
2. parse the arguments and validate them against its JSON Schema: InvalidArgument
   lists every violation;
3. run it in a worker thread with a deadline; a tool that does not finish in time is
   reported as TIMEOUT (its thread is abandoned and keeps a slot of `max_concurrent`
   until it returns; sandboxed tools stop themselves at the deadline);
4. serialise the result as JSON, refusing non-JSON, results over `max_result_bytes`
   and results that violate the tool's result schema;
5. record the execution in the tool's metrics.

Failures of step 3 and 4 are outcomes (a ToolOutcome with a status and an error), not
exceptions: a tool that crashes, hangs or answers garbage never fails the RPC.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rustaid.config import Settings
from rustaid.errors import (
    InvalidArgument,
    NotFound,
    PreconditionFailed,
    ResourceExhausted,
    RustaidError,
)
from rustaid.providers import (
    CancelToken,
    Tool,
    ToolContext,
    ToolError,
    ToolHost,
    call_with_tool_context,
)
from rustaid.tools import schema as schemas
from rustaid.tools.config import ToolsConfig
from rustaid.tools.errors import InvalidOutput, LimitExceeded, OutputTooLarge, SandboxTimeout

if TYPE_CHECKING:
    from rustaid.plugin_discovery import PluginRecord
    from rustaid.tools.wasm import WasmModuleInfo, WasmTools

log = logging.getLogger(__name__)


class ToolCallStatus(StrEnum):
    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    LIMIT_EXCEEDED = "limit_exceeded"
    INVALID_OUTPUT = "invalid_output"
    OUTPUT_TOO_LARGE = "output_too_large"
    # Agent only: refusals the model is told about instead of an RPC error.
    NOT_ALLOWED = "not_allowed"
    INVALID_ARGUMENTS = "invalid_arguments"
    UNAVAILABLE = "unavailable"


_EXCEPTION_STATUS: tuple[tuple[type[BaseException], ToolCallStatus], ...] = (
    (LimitExceeded, ToolCallStatus.LIMIT_EXCEEDED),
    (SandboxTimeout, ToolCallStatus.TIMEOUT),
    (InvalidOutput, ToolCallStatus.INVALID_OUTPUT),
    (OutputTooLarge, ToolCallStatus.OUTPUT_TOO_LARGE),
    (MemoryError, ToolCallStatus.LIMIT_EXCEEDED),
)


@dataclass(frozen=True)
class ToolOutcome:
    name: str
    status: ToolCallStatus
    # JSON text of the result; "" unless status is OK.
    output_json: str = ""
    error: str = ""
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status is ToolCallStatus.OK


@dataclass(frozen=True)
class ToolMetrics:
    calls: int = 0
    ok: int = 0
    failures: int = 0
    timeouts: int = 0
    total_s: float = 0.0
    max_s: float = 0.0
    last_error: str = ""
    # time.time() of the last call; 0: never called.
    last_call: float = 0.0


@dataclass(frozen=True)
class ToolInfo:
    """What ListTools shows about one tool."""

    name: str
    description: str
    parameters_schema: Mapping[str, Any]
    result_schema: Mapping[str, Any] | None
    plugin: str
    enabled: bool
    disabled_reason: str
    timeout_s: float
    metrics: ToolMetrics


@dataclass(frozen=True)
class _Entry:
    tool: Tool
    plugin: str


@dataclass(frozen=True)
class _Prepared:
    """A tool's schemas, checked and compiled once per tool object."""

    tool: Tool
    problem: str
    parameters: Any = None  # jsonschema validators
    result: Any = None


def tool_plugins(records: Collection[PluginRecord]) -> dict[str, str]:
    """Tool name -> id of the plugin that registered it, from PluginRecords."""
    return {
        cap.removeprefix("tool:"): record.id
        for record in records
        for cap in record.capabilities
        if cap.startswith("tool:")
    }


class ToolRegistry:
    """Every tool the daemon can run, with their settings, limits and metrics."""

    def __init__(
        self,
        *,
        settings: Callable[[], Settings],
        plugin_tools: Callable[[], Mapping[str, Tool]],
        plugin_names: Callable[[], Mapping[str, str]] = dict,
        host: ToolHost | None = None,
    ) -> None:
        self._settings = settings
        self._plugin_tools = plugin_tools
        self._plugin_names = plugin_names
        # What tools see of the daemon (tool_context().host); None outside a daemon.
        self.host = host
        self._config: tuple[int, ToolsConfig] | None = None
        self._metrics: dict[str, ToolMetrics] = {}
        self._lock = threading.Lock()
        # Threads still running a tool, including abandoned (timed-out) ones.
        self._running = 0
        self._cancels: set[CancelToken] = set()
        self._wasm: WasmTools | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._prepared: dict[int, _Prepared] = {}
        self._workers = _Workers()
        self._scan: asyncio.Future[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Check the settings (a bad [tools] section stops start-up) and start loading
        the WebAssembly tools of the plugins folder (in the background: a slow module
        does not delay start-up; ListTools and calls of unknown tools wait for it)."""
        self._loop = asyncio.get_running_loop()
        self._config = None
        self.config()
        self._scan = asyncio.ensure_future(self._first_scan())

    async def _first_scan(self) -> None:
        try:
            await self.rescan()
        except Exception:
            log.exception("loading the WebAssembly plugins failed")

    async def rescan(self) -> None:
        """Re-read the plugins folder's `.wasm` files (start-up, SIGHUP, unknown tool)."""
        settings = self._settings()
        folder = settings.plugins_dir
        wanted = settings.drop_in_plugins and folder.is_dir() and _has_wasm(folder)
        if not wanted and self._wasm is None:
            return  # wasmtime stays unimported
        if self._wasm is None:
            from rustaid.tools.wasm import WasmTools

            self._wasm = WasmTools()
        wasm = self._wasm
        limits = self.config().wasm
        taken = set(self._plugin_tools())
        try:
            await asyncio.to_thread(wasm.scan, folder if wanted else None, limits, taken)
        except OSError as e:  # the folder went away or cannot be read: keep what we have
            log.error("cannot read WebAssembly plugins in %s: %s", folder, e)

    def stop(self) -> None:
        if self._scan is not None:
            self._scan.cancel()
        for token in list(self._cancels):
            token.cancel()
        if self._wasm is not None:
            self._wasm.close()
        self._loop = None

    # -- settings -------------------------------------------------------------------------

    def config(self) -> ToolsConfig:
        """[tools] of the current settings; after a reload with a bad section, the last
        good one (the problem is logged)."""
        settings = self._settings()
        key = id(settings)
        if self._config is not None and self._config[0] == key:
            return self._config[1]
        try:
            config = ToolsConfig.from_settings(settings)
        except InvalidArgument as e:
            if self._config is None:
                raise
            log.error("keeping the previous [tools] settings: %s", e)
            config = self._config[1]
        self._config = (key, config)
        return config

    # -- listing --------------------------------------------------------------------------

    def _entries(self) -> dict[str, _Entry]:
        names = self._plugin_names()
        entries = {n: _Entry(t, names.get(n, "")) for n, t in self._plugin_tools().items()}
        if self._wasm is not None:
            for name, (tool, plugin) in self._wasm.tools().items():
                entries.setdefault(name, _Entry(tool, plugin))
        return entries

    def _disabled_reason(self, tool: Tool, config: ToolsConfig) -> str:
        if tool.name in config.disable:
            return (
                f"disabled by `disable` in [tools] of rustaid.toml; remove {tool.name!r} "
                "from it to enable the tool"
            )
        if not tool.enabled_by_default and tool.name not in config.enable:
            return (
                f"off by default; enable it with `enable = [{json.dumps(tool.name)}]` in "
                "[tools] of rustaid.toml"
            )
        return ""

    def _unavailable(self, tool: Tool, config: ToolsConfig) -> str:
        """Why an enabled tool cannot run here (its availability check), or ""."""
        context = self._context(tool, min(tool.timeout_s, config.max_timeout_s), CancelToken())
        try:
            call_with_tool_context(context, tool.check_available)
        except RustaidError as e:
            return e.message
        except Exception as e:  # a bug in the tool's check: reported when it is called
            return f"its availability check failed: {type(e).__name__}: {e}"
        return ""

    def list(self) -> list[ToolInfo]:
        config = self.config()
        out = []
        for name, entry in sorted(self._entries().items()):
            tool = entry.tool
            reason = self._disabled_reason(tool, config) or self._unavailable(tool, config)
            out.append(
                ToolInfo(
                    name=name,
                    description=tool.description,
                    parameters_schema=tool.parameters_schema,
                    result_schema=tool.result_schema,
                    plugin=entry.plugin,
                    enabled=not reason,
                    disabled_reason=reason,
                    timeout_s=min(tool.timeout_s, config.max_timeout_s),
                    metrics=self._metrics.get(name, ToolMetrics()),
                )
            )
        return out

    def wasm_modules(self) -> builtins.list[WasmModuleInfo]:
        return self._wasm.modules() if self._wasm is not None else []

    def known(self) -> str:
        return ", ".join(sorted(self._entries())) or "none"

    def get(self, name: str) -> Tool:
        """The tool called `name`; NotFound lists the known tools."""
        entry = self._entries().get(name)
        if entry is None:
            raise NotFound(
                f"no tool named {name!r}; known tools: {self.known()}", reason="TOOL_NOT_FOUND"
            )
        return entry.tool

    async def lookup(self, name: str) -> Tool:
        """Like get(), but looks at the plugins folder again before giving up, so a
        `.wasm` file dropped there is found without a reload."""
        if name not in self._entries():
            await self.rescan()
        return self.get(name)

    def _prepare(self, tool: Tool) -> _Prepared:
        prepared = self._prepared.get(id(tool))
        if prepared is not None and prepared.tool is tool:
            return prepared
        problem = schemas.schema_problem(tool.parameters_schema, object_only=True)
        if not problem and tool.result_schema is not None:
            problem = schemas.schema_problem(tool.result_schema, object_only=False)
        if problem:
            prepared = _Prepared(tool, problem)
        else:
            prepared = _Prepared(
                tool,
                "",
                schemas.validator(tool.parameters_schema),
                schemas.validator(tool.result_schema) if tool.result_schema is not None else None,
            )
        if len(self._prepared) > 1024:  # tools come and go with plugins
            self._prepared.clear()
        self._prepared[id(tool)] = prepared
        return prepared

    def check_usable(self, tool: Tool) -> None:
        """PreconditionFailed if the tool is disabled or its schemas are broken."""
        reason = self._disabled_reason(tool, self.config())
        if reason:
            raise PreconditionFailed(f"tool {tool.name!r} is {reason}", reason="TOOL_DISABLED")
        problem = self._prepare(tool).problem
        if problem:
            raise PreconditionFailed(
                f"tool {tool.name!r} cannot be used: its schema is broken: {problem}",
                reason="TOOL_BROKEN",
            )

    # -- execution ------------------------------------------------------------------------

    def parse_arguments(self, tool: Tool, arguments: str | Mapping[str, Any]) -> dict[str, Any]:
        """Arguments as a dict, validated against the tool's schema; InvalidArgument
        lists every violation."""
        if isinstance(arguments, str):
            args = schemas.load_json_object(arguments or "{}", "arguments_json", "the arguments")
        else:
            args = dict(arguments)
        checker = self._prepare(tool).parameters
        found = schemas.violations(checker or tool.parameters_schema, args)
        if found:
            raise InvalidArgument(
                f"arguments do not match the schema of tool {tool.name!r} "
                f"({len(found)} problem{'s' * (len(found) != 1)}): {schemas.describe(found)}",
                reason="TOOL_ARGUMENTS_INVALID",
                field="arguments_json",
            )
        return args

    def timeout_for(self, tool: Tool, requested_s: float | None) -> float:
        config = self.config()
        if requested_s is None or requested_s == 0:
            return min(tool.timeout_s, config.max_timeout_s)
        if not 0 < requested_s <= config.max_timeout_s:
            raise InvalidArgument(
                f"timeout must be between 0 and {config.max_timeout_s:g} s "
                f"(max_timeout_s in [tools]); got {requested_s:g} s",
                field="timeout",
            )
        return requested_s

    async def execute(
        self,
        name: str,
        arguments: str | Mapping[str, Any],
        *,
        timeout_s: float | None = None,
        cancel: CancelToken | None = None,
    ) -> ToolOutcome:
        """Validate and run one call. Raises NotFound / InvalidArgument /
        PreconditionFailed / ResourceExhausted when the call cannot start; everything
        that happens once it runs is in the returned outcome."""
        tool = await self.lookup(name)
        self.check_usable(tool)
        args = self.parse_arguments(tool, arguments)
        timeout = self.timeout_for(tool, timeout_s)
        return await self.run(tool, args, timeout, cancel=cancel)

    def _context(self, tool: Tool, timeout: float, cancel: CancelToken) -> ToolContext:
        return ToolContext(
            tool=tool.name,
            settings=self.config().table(tool.name),
            deadline=time.monotonic() + timeout,
            cancel=cancel,
            host=self.host,
            loop=self._loop,
            max_result_bytes=self.config().max_result_bytes,
        )

    async def run(
        self,
        tool: Tool,
        args: Mapping[str, Any],
        timeout_s: float,
        *,
        cancel: CancelToken | None = None,
    ) -> ToolOutcome:
        """Run a validated call (see execute)."""
        timeout = timeout_s
        config = self.config()
        token = CancelToken()
        context = self._context(tool, timeout, token)
        try:
            call_with_tool_context(context, tool.check_available)
        except RustaidError:
            raise
        except Exception as e:  # a bug in the tool: its plugin's problem, not the daemon's
            log.exception("tool %s: check_available raised", tool.name)
            raise PreconditionFailed(
                f"tool {tool.name!r} cannot run: its availability check failed: "
                f"{type(e).__name__}: {e}",
                reason="TOOL_BROKEN",
            ) from e
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._running >= config.max_concurrent:
                raise ResourceExhausted(
                    f"{self._running} tool calls are running (max_concurrent in [tools] is "
                    f"{config.max_concurrent}; calls that timed out hold a slot until they "
                    "return); retry later",
                    reason="TOOLS_BUSY",
                )
            self._running += 1
        done: asyncio.Future[tuple[bool, Any]] = loop.create_future()

        def settle(value: tuple[bool, Any]) -> None:
            if not done.done():
                done.set_result(value)

        def work() -> None:
            try:
                value: tuple[bool, Any] = (
                    True,
                    call_with_tool_context(context, lambda: tool.run(args)),
                )
            except BaseException as e:
                value = (False, e)
            finally:
                with self._lock:
                    self._running -= 1
            with contextlib.suppress(RuntimeError):  # the event loop is gone (daemon stopped)
                loop.call_soon_threadsafe(settle, value)

        self._cancels.add(token)
        t0 = time.perf_counter()
        try:
            self._workers.submit(work)
            try:
                ok, value = await _wait(done, timeout, cancel)
            except TimeoutError:
                token.cancel()
                outcome = ToolOutcome(
                    tool.name,
                    ToolCallStatus.TIMEOUT,
                    error=f"tool {tool.name!r} did not finish within {timeout:g} s",
                )
            else:
                outcome = self._outcome(tool, ok, value, config.max_result_bytes)
        finally:
            token.cancel()  # no-op when finished: asks a still-running tool to stop
            self._cancels.discard(token)
        outcome = replace(outcome, duration_s=time.perf_counter() - t0)
        self._record(outcome)
        return outcome

    def _outcome(self, tool: Tool, ok: bool, value: Any, limit: int) -> ToolOutcome:
        name = tool.name
        if not ok:
            status = next(
                (s for cls, s in _EXCEPTION_STATUS if isinstance(value, cls)),
                ToolCallStatus.ERROR,
            )
            if isinstance(value, ToolError | RustaidError):
                message = str(value)
            else:
                message = f"{type(value).__name__}: {value}" if str(value) else type(value).__name__
                if status is ToolCallStatus.ERROR:
                    log.info("tool %s raised", name, exc_info=value)
            return ToolOutcome(name, status, error=f"tool {name!r} failed: {message}")
        try:
            text = serialize(value, limit)
        except OutputTooLarge as e:
            return ToolOutcome(name, ToolCallStatus.OUTPUT_TOO_LARGE, error=f"tool {name!r}: {e}")
        except (TypeError, ValueError, RecursionError) as e:
            return ToolOutcome(
                name,
                ToolCallStatus.INVALID_OUTPUT,
                error=f"tool {name!r} returned something that is not JSON: {e}",
            )
        checker = self._prepare(tool).result
        if checker is not None:
            found = schemas.violations(checker, json.loads(text))
            if found:
                return ToolOutcome(
                    name,
                    ToolCallStatus.INVALID_OUTPUT,
                    error=f"tool {name!r} returned a result that violates its result schema: "
                    + schemas.describe(found),
                )
        return ToolOutcome(name, ToolCallStatus.OK, output_json=text)

    def _record(self, outcome: ToolOutcome) -> None:
        m = self._metrics.get(outcome.name, ToolMetrics())
        failed = not outcome.ok
        self._metrics[outcome.name] = ToolMetrics(
            calls=m.calls + 1,
            ok=m.ok + (not failed),
            failures=m.failures + failed,
            timeouts=m.timeouts + (outcome.status is ToolCallStatus.TIMEOUT),
            total_s=m.total_s + outcome.duration_s,
            max_s=max(m.max_s, outcome.duration_s),
            last_error=outcome.error if failed else m.last_error,
            last_call=time.time(),
        )
        level = logging.DEBUG if outcome.ok else logging.INFO
        log.log(
            level,
            "tool %s: %s in %.1f ms%s",
            outcome.name,
            outcome.status.value,
            outcome.duration_s * 1000,
            f" ({outcome.error})" if outcome.error else "",
        )

    def record_refusal(self, outcome: ToolOutcome) -> None:
        """Count a call the agent refused (not allowed, bad arguments...)."""
        self._record(outcome)


class _Workers:
    """Daemon threads that run tool calls. A thread stuck in a tool that never returns
    stays busy (the call timed out; its slot is counted by the registry); the others are
    reused. Daemon threads: a stuck tool never holds up the daemon's exit."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1  # that idle thread takes this job
        if spawn:
            threading.Thread(target=self._serve, name="rustaid-tool", daemon=True).start()
        self._jobs.put(job)

    def _serve(self) -> None:
        while True:
            self._jobs.get()()
            with self._lock:
                self._idle += 1


async def _wait(
    done: asyncio.Future[tuple[bool, Any]], timeout_s: float, cancel: CancelToken | None
) -> tuple[bool, Any]:
    if cancel is None:
        return await asyncio.wait_for(asyncio.shield(done), timeout_s)
    deadline = time.monotonic() + timeout_s
    while True:  # the agent's cancel token (client gone) is polled
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        try:
            return await asyncio.wait_for(asyncio.shield(done), min(left, 0.05))
        except TimeoutError:
            if cancel.cancelled:
                raise asyncio.CancelledError from None


def serialize(value: Any, limit: int) -> str:
    """Compact JSON text of `value`; OutputTooLarge past `limit` bytes (checked while
    encoding, so a huge result is refused without building all of its text)."""
    encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    parts: list[str] = []
    chars = 0
    for chunk in encoder.iterencode(value):
        chars += len(chunk)
        if chars > limit:
            raise OutputTooLarge(
                f"result is larger than {limit} bytes (max_result_bytes in [tools])"
            )
        parts.append(chunk)
    text = "".join(parts)
    size = len(text.encode("utf-8"))
    if size > limit:
        raise OutputTooLarge(
            f"result is {size} bytes; the limit is {limit} (max_result_bytes in [tools])"
        )
    return text


def _has_wasm(folder: Path) -> bool:
    try:
        return any(p.suffix == ".wasm" for p in folder.iterdir())
    except OSError:
        return False

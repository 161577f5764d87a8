"""WebAssembly tool plugins: `plugins/*.wasm`, run with wasmtime in a sandbox.

The sandbox: no WASI at all (no files, clock, randomness, environment or network); the
only import a module may have is the host function we grant, `rustaid.log`; a module
importing anything else is refused before it is instantiated. Every call gets a fresh
store and instance with a memory cap, a fuel budget (about one unit per instruction)
and an epoch deadline (wall-clock time); a trap ends only that call.

The ABI (see docs/tools.md for the details and an example in the text format):

    export memory
    export alloc(size: i32) -> i32                       the host writes inputs there
    export tool_definitions() -> i64                     (ptr << 32) | len of UTF-8 JSON:
        [{"name", "description", "parameters": schema, "result"?: schema}, ...]
    export tool_call(name_ptr, name_len, args_ptr, args_len: i32) -> i64
        (ptr << 32) | len of UTF-8 JSON: {"ok": result} or {"error": "message"}
    import rustaid.log(ptr: i32, len: i32)               optional; one line to the log

wasmtime is imported when the first `.wasm` file is found.

    python -m rustaid.tools.wasm compile tool.wat tool.wasm    # text format -> binary
    python -m rustaid.tools.wasm check tool.wasm                # load it, list its tools
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import stat
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rustaid.providers import Tool, ToolError, tool_context
from rustaid.tools import schema as schemas
from rustaid.tools.config import WasmLimits
from rustaid.tools.errors import InvalidOutput, LimitExceeded, OutputTooLarge, SandboxTimeout

if TYPE_CHECKING:
    import wasmtime

log = logging.getLogger(__name__)


def one_line(text: str) -> str:
    """`text` as one line of printable characters: newlines, carriage returns, escape
    sequences and other controls are shown as escapes, so what a module logs cannot
    pass for lines, prefixes or colours of the daemon's own."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


MAGIC = b"\0asm"
HOST_MODULE = "rustaid"
# Host functions a module may import: name -> (params, results) as value type names.
GRANTED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {"log": (("i32", "i32"), ())}
REQUIRED_EXPORTS = ("memory", "alloc", "tool_definitions", "tool_call")
EPOCH_TICK_S = 0.01
MAX_TOOLS = 64
MAX_DEFINITIONS_BYTES = 1 << 20
MAX_LOG_LINES = 100
MAX_LOG_BYTES = 1024


class WasmRefused(Exception):
    """A `.wasm` file that is not loaded; the message says why."""


@dataclass(frozen=True)
class WasmModuleInfo:
    path: Path
    tools: tuple[str, ...]
    error: str
    sha256: str


class _Runtime:
    """One wasmtime engine for every module, and the thread that advances its epoch
    while calls run (epoch deadlines count those ticks)."""

    def __init__(self) -> None:
        import wasmtime

        config = wasmtime.Config()
        config.consume_fuel = True
        config.epoch_interruption = True
        config.wasm_threads = False
        config.wasm_memory64 = False
        config.max_wasm_stack = 512 << 10
        self.engine = wasmtime.Engine(config)
        self._active = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def _tick(self) -> None:
        with self._cond:
            while not self._closed:
                if self._active == 0:
                    self._cond.wait()
                    continue
                self._cond.wait(EPOCH_TICK_S)
                self.engine.increment_epoch()

    @contextmanager
    def ticking(self) -> Iterator[None]:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._tick, name="rustaid-wasm-epoch", daemon=True
                )
                self._thread.start()
            self._active += 1
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()


def _valtype_name(vt: Any) -> str:
    return str(vt)


def check_file(path: Path) -> None:
    """Refuse files others could have written (the rule of Python drop-ins)."""
    for p in (path.parent, path):
        st = p.stat()
        mode = stat.S_IMODE(st.st_mode)
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise WasmRefused(
                f"{p} is writable by group or others (mode {mode:o}); fix it with: chmod go-w {p}"
            )
        if st.st_uid not in (0, os.geteuid()):
            raise WasmRefused(f"{p} is owned by uid {st.st_uid}, not by root or the daemon's user")


class WasmPlugin:
    """One compiled `.wasm` file and the tools it defines."""

    def __init__(self, runtime: _Runtime, path: Path, data: bytes, limits: WasmLimits) -> None:
        import wasmtime

        self.runtime = runtime
        self.path = path
        self.label = f"wasm:{path.name}"
        if not data.startswith(MAGIC):
            raise WasmRefused("not a WebAssembly module (no \\0asm header)")
        try:
            self.module = wasmtime.Module(runtime.engine, data)
        except wasmtime.WasmtimeError as e:
            raise WasmRefused(f"not a valid WebAssembly module: {_first_line(e)}") from None
        self._check_imports()
        exports = {e.name: e.type for e in self.module.exports}
        missing = [name for name in REQUIRED_EXPORTS if name not in exports]
        if missing:
            raise WasmRefused(
                f"does not follow the rustaid tool ABI: missing export(s) {', '.join(missing)} "
                f"(needs {', '.join(REQUIRED_EXPORTS)})"
            )
        self.tools: dict[str, WasmTool] = {}
        definitions = self._definitions(limits)
        for d in definitions:
            tool = WasmTool(self, d, limits)
            self.tools[tool.name] = tool

    def _check_imports(self) -> None:
        for imp in self.module.imports:
            name = f"{imp.module}.{imp.name}"
            granted = GRANTED.get(imp.name or "") if imp.module == HOST_MODULE else None
            if granted is None:
                allowed = ", ".join(f"{HOST_MODULE}.{n}" for n in GRANTED)
                wasi = " (WASI is not available to tools)" if imp.module.startswith("wasi") else ""
                raise WasmRefused(f"imports {name}, which is not granted{wasi}; granted: {allowed}")
            ty = imp.type
            params = tuple(_valtype_name(p) for p in getattr(ty, "params", ()))
            results = tuple(_valtype_name(r) for r in getattr(ty, "results", ()))
            if (params, results) != granted:
                raise WasmRefused(
                    f"imports {name} with the wrong signature {params} -> {results}; "
                    f"expected {granted[0]} -> {granted[1]}"
                )

    def _definitions(self, limits: WasmLimits) -> list[dict[str, Any]]:
        deadline = time.monotonic() + limits.timeout_s
        try:
            raw = self.invoke("tool_definitions", (), limits, deadline, None)
        except ToolError as e:
            raise WasmRefused(f"tool_definitions() failed: {e}") from None
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError) as e:  # not JSON, or nested past the limit
            raise WasmRefused(f"tool_definitions() did not return JSON: {e}") from None
        if not isinstance(value, list) or not value or len(value) > MAX_TOOLS:
            raise WasmRefused(
                f"tool_definitions() must return a JSON list of 1 to {MAX_TOOLS} tools"
            )
        seen: set[str] = set()
        for i, d in enumerate(value):
            where = f"tool_definitions()[{i}]"
            if not isinstance(d, dict):
                raise WasmRefused(f"{where} is not an object")
            name = d.get("name")
            if not isinstance(name, str) or not schemas.NAME_PATTERN.match(name):
                raise WasmRefused(f"{where}.name {name!r} is not a valid tool name")
            if name in seen:
                raise WasmRefused(f"{where}: tool {name!r} is defined twice")
            seen.add(name)
            if not isinstance(d.get("description", ""), str):
                raise WasmRefused(f"{where}.description must be a string")
            params = d.get("parameters", {"type": "object"})
            problem = schemas.schema_problem(params, object_only=True)
            result = d.get("result")
            if not problem and result is not None:
                problem = schemas.schema_problem(result, object_only=False)
            if problem:
                raise WasmRefused(f"{where} ({name}): {problem}")
        return value

    # -- calls ------------------------------------------------------------------------

    def invoke(
        self,
        export: str,
        inputs: tuple[bytes, ...],
        limits: WasmLimits,
        deadline: float,
        max_output: int | None,
    ) -> bytes:
        """Instantiate the module afresh, copy `inputs` into its memory (through
        `alloc`), call `export` with their (ptr, len) pairs and return the bytes its
        packed (ptr << 32 | len) result points at."""
        import wasmtime

        store = wasmtime.Store(self.runtime.engine)
        store.set_limits(
            memory_size=limits.memory_bytes, table_elements=100_000, instances=1, tables=4,
            memories=1,
        )  # fmt: skip
        store.set_fuel(limits.fuel)
        left = deadline - time.monotonic()
        if left <= 0:
            raise SandboxTimeout(f"{self.label}: no time left for the call")
        store.set_epoch_deadline(max(1, math.ceil(left / EPOCH_TICK_S)))
        linker = wasmtime.Linker(self.runtime.engine)
        lines = 0

        def host_log(caller: wasmtime.Caller, ptr: int, length: int) -> None:
            nonlocal lines
            lines += 1
            if lines > MAX_LOG_LINES:
                return
            memory = caller.get("memory")
            if not isinstance(memory, wasmtime.Memory):
                return
            size = memory.data_len(caller)
            if ptr < 0 or length < 0 or ptr + length > size:
                return
            text = bytes(memory.read(caller, ptr, ptr + min(length, MAX_LOG_BYTES)))
            log.info("%s: %s", self.label, one_line(text.decode("utf-8", errors="replace")))

        i32 = wasmtime.ValType.i32()
        linker.define_func(
            HOST_MODULE, "log", wasmtime.FuncType([i32, i32], []), host_log, access_caller=True
        )
        memory: wasmtime.Memory | None = None
        with self.runtime.ticking():
            try:
                instance = linker.instantiate(store, self.module)
                exports = instance.exports(store)
                exported = exports["memory"]
                assert isinstance(exported, wasmtime.Memory)
                memory = exported
                args: list[int] = []
                for data in inputs:
                    alloc = exports["alloc"]
                    assert isinstance(alloc, wasmtime.Func)
                    ptr = alloc(store, len(data))
                    if (
                        not isinstance(ptr, int)
                        or ptr < 0
                        or ptr + len(data) > memory.data_len(store)
                    ):
                        raise InvalidOutput(f"{self.label}: alloc({len(data)}) returned {ptr!r}")
                    memory.write(store, data, ptr)
                    args += [ptr, len(data)]
                func = exports[export]
                assert isinstance(func, wasmtime.Func)
                packed = func(store, *args)
            except wasmtime.Trap as e:
                raise self._trap(e, store, memory, limits) from None
            except wasmtime.WasmtimeError as e:
                raise self._error(e, limits) from None
            except (KeyError, AssertionError, TypeError) as e:
                raise InvalidOutput(f"{self.label}: does not follow the ABI: {e}") from None
            if not isinstance(packed, int):
                raise InvalidOutput(
                    f"{self.label}: {export}() must return an i64 (ptr << 32 | len)"
                )
            ptr, length = (packed >> 32) & 0xFFFFFFFF, packed & 0xFFFFFFFF
            limit = max_output if max_output is not None else MAX_DEFINITIONS_BYTES
            if length > limit:
                raise OutputTooLarge(
                    f"{self.label}: {export}() returned {length} bytes; the limit is {limit}"
                )
            if ptr + length > memory.data_len(store):
                raise InvalidOutput(
                    f"{self.label}: {export}() returned a range outside its memory "
                    f"({ptr}+{length} > {memory.data_len(store)})"
                )
            return bytes(memory.read(store, ptr, ptr + length))

    def _trap(
        self, e: Exception, store: Any, memory: wasmtime.Memory | None, limits: WasmLimits
    ) -> ToolError:
        import wasmtime

        code = getattr(e, "trap_code", None)
        if code == wasmtime.TrapCode.OUT_OF_FUEL:
            return LimitExceeded(f"{self.label}: used up its fuel ({limits.fuel} units)")
        if code == wasmtime.TrapCode.INTERRUPT:
            return SandboxTimeout(f"{self.label}: stopped at its deadline (epoch interruption)")
        if code == wasmtime.TrapCode.STACK_OVERFLOW:
            return LimitExceeded(f"{self.label}: stack overflow")
        # Growing past the cap fails (memory.grow returns -1) rather than trapping, so a
        # module that trapped with its memory nearly full has, in all likelihood, hit it.
        used = memory.data_len(store) if memory is not None else 0
        if used * 4 >= limits.memory_bytes * 3:
            return LimitExceeded(
                f"{self.label}: reached its memory limit ({used / (1 << 20):.1f} of "
                f"{limits.memory_bytes >> 20} MiB in use) and trapped ({_trap_reason(e)})"
            )
        return ToolError(f"{self.label} trapped: {_trap_reason(e)}")

    def _error(self, e: Exception, limits: WasmLimits) -> ToolError:
        text = str(e)
        if "memory" in text and ("limit" in text or "exceeds" in text):
            return LimitExceeded(
                f"{self.label}: needs more memory than its limit of "
                f"{limits.memory_bytes >> 20} MiB ({_first_line(e)})"
            )
        return ToolError(f"{self.label}: {_first_line(e)}")


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _trap_reason(e: Exception) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    for line in lines:
        if line.startswith("wasm trap:"):
            return line.removeprefix("wasm trap:").strip()
    return lines[-1] if lines else type(e).__name__


class WasmTool(Tool):
    """One tool of a WebAssembly module."""

    def __init__(self, plugin: WasmPlugin, definition: Mapping[str, Any], limits: WasmLimits):
        self.plugin = plugin
        self.name = definition["name"]
        self.description = definition.get("description", "")
        self.parameters_schema = definition.get("parameters", {"type": "object"})
        self.result_schema = definition.get("result")
        self.timeout_s = limits.timeout_s
        self.limits = limits

    def run(self, arguments: Mapping[str, Any]) -> Any:
        context = tool_context()
        raw = self.plugin.invoke(
            "tool_call",
            (self.name.encode(), json.dumps(arguments, separators=(",", ":")).encode()),
            self.limits,
            context.deadline,
            context.max_result_bytes,
        )
        try:
            reply = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError) as e:  # not UTF-8 or JSON, or nested too deep
            raise InvalidOutput(
                f"{self.plugin.label}: tool_call() did not return JSON: {e}"
            ) from None
        if isinstance(reply, dict) and set(reply) == {"ok"}:
            return reply["ok"]
        if isinstance(reply, dict) and set(reply) == {"error"}:
            raise ToolError(str(reply["error"]))
        raise InvalidOutput(
            f'{self.plugin.label}: tool_call() must return {{"ok": result}} or '
            f'{{"error": "message"}}, not {raw[:200]!r}'
        )


class WasmTools:
    """The WebAssembly tools of the plugins folder."""

    def __init__(self) -> None:
        self._runtime: _Runtime | None = None
        self._lock = threading.Lock()
        self._scanning = threading.Lock()
        self._plugins: dict[Path, tuple[str, WasmPlugin]] = {}
        self._modules: list[WasmModuleInfo] = []
        self._tools: dict[str, tuple[Tool, str]] = {}

    def scan(self, folder: Path | None, limits: WasmLimits, taken: set[str]) -> None:
        """Load every `*.wasm` of `folder` (None: drop all); unchanged files are kept."""
        with self._scanning:  # one scan at a time; the next one sees its result
            self._scan(folder, limits, taken)

    def _scan(self, folder: Path | None, limits: WasmLimits, taken: set[str]) -> None:
        paths = sorted(
            p for p in (folder.iterdir() if folder is not None else ())
            if p.suffix == ".wasm" and not p.name.startswith(("_", ".")) and p.is_file()
        )  # fmt: skip
        plugins: dict[Path, tuple[str, WasmPlugin]] = {}
        modules: list[WasmModuleInfo] = []
        tools: dict[str, tuple[Tool, str]] = {}
        for path in paths:
            digest = ""
            try:
                check_file(path)
                if path.stat().st_size > limits.max_module_bytes:
                    raise WasmRefused(
                        f"is larger than {limits.max_module_bytes >> 20} MiB (max_module_mb "
                        "in [tools.wasm])"
                    )
                data = path.read_bytes()
                digest = hashlib.sha256(data).hexdigest()
                old = self._plugins.get(path)
                if (
                    old is not None
                    and old[0] == digest
                    and old[1].tools
                    and all(t.limits == limits for t in old[1].tools.values())
                ):
                    plugin = old[1]
                else:
                    if self._runtime is None:
                        self._runtime = _Runtime()
                    plugin = WasmPlugin(self._runtime, path, data, limits)
                clash = [n for n in plugin.tools if n in taken or n in tools]
                if clash:
                    raise WasmRefused(
                        f"defines {', '.join(clash)}, already provided by another plugin"
                    )
            except (WasmRefused, OSError) as e:
                log.error("WebAssembly plugin %s refused: %s", path, e)
                modules.append(WasmModuleInfo(path, (), str(e), digest))
                continue
            plugins[path] = (digest, plugin)
            for name, tool in plugin.tools.items():
                tools[name] = (tool, plugin.label)
            modules.append(WasmModuleInfo(path, tuple(plugin.tools), "", digest))
            if self._plugins.get(path, ("", None))[0] != digest:
                log.info("WebAssembly plugin %s: %s", path.name, ", ".join(plugin.tools))
        with self._lock:
            self._plugins, self._modules, self._tools = plugins, modules, tools

    def tools(self) -> dict[str, tuple[Tool, str]]:
        with self._lock:
            return dict(self._tools)

    def modules(self) -> list[WasmModuleInfo]:
        with self._lock:
            return list(self._modules)

    def close(self) -> None:
        if self._runtime is not None:
            self._runtime.close()


def load_file(path: Path, limits: WasmLimits | None = None) -> WasmPlugin:
    """Load one module outside a daemon (tests, `check`); WasmRefused says why not."""
    return WasmPlugin(_Runtime(), path, path.read_bytes(), limits or WasmLimits())


def main(argv: list[str] | None = None) -> int:
    import wasmtime

    args = sys.argv[1:] if argv is None else argv
    if len(args) == 3 and args[0] == "compile":
        Path(args[2]).write_bytes(wasmtime.wat2wasm(Path(args[1]).read_text()))
        return 0
    if len(args) == 2 and args[0] == "check":
        try:
            plugin = load_file(Path(args[1]))
        except WasmRefused as e:
            print(f"{args[1]}: refused: {e}", file=sys.stderr)
            return 1
        for tool in plugin.tools.values():
            print(f"{tool.name}: {tool.description}")
        return 0
    print("usage: python -m rustaid.tools.wasm compile IN.wat OUT.wasm | check FILE.wasm",
          file=sys.stderr)  # fmt: skip
    return 2


if __name__ == "__main__":
    raise SystemExit(main())

"""WebAssembly tools: the ABI, the example tool built from source, and the sandbox
(loops, memory bombs, imports that are not granted, files that are not WebAssembly)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from rustaid.tools.config import WasmLimits
from rustaid.tools.registry import ToolCallStatus, ToolRegistry
from rustaid.tools.wasm import WasmRefused, load_file
from tests.tools.conftest import compile_wat
from tests.tools.test_registry import registry_of

DEFS = '[{"name": "t", "description": "test", "parameters": {"type": "object"}}]'


def module(
    tool_call: str,
    *,
    defs: str = DEFS,
    definitions_body: str = "",
    extra: str = "",
    memory: int = 1,
    imports: str = "",
) -> str:
    """A module following the ABI; `tool_call` is the body of tool_call (an i64)."""
    escaped = defs.replace("\\", "\\\\").replace('"', '\\"')
    definitions = definitions_body or (
        f"(i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const {len(defs.encode())}))"
    )
    return f"""
    (module
      {imports}
      (memory (export "memory") {memory})
      (global $heap (mut i32) (i32.const 8192))
      (data (i32.const 16) "{escaped}")
      (data (i32.const 4096) "{{\\"ok\\": {{\\"n\\": 1}}}}")
      (data (i32.const 4160) "{{\\"error\\": \\"no such thing\\"}}")
      (data (i32.const 4224) "not json")
      (func (export "alloc") (param $n i32) (result i32)
        (local $p i32)
        (local.set $p (global.get $heap))
        (global.set $heap (i32.add (global.get $heap) (local.get $n)))
        (local.get $p))
      (func (export "tool_definitions") (result i64) {definitions})
      (func (export "tool_call") (param i32 i32 i32 i32) (result i64) {tool_call})
      {extra}
    )
    """


def pack(ptr: int, length: int) -> str:
    return f"(i64.const {(ptr << 32) | length})"


OK = pack(4096, 16)  # {"ok": {"n": 1}}
LOOP = "(loop $l (br $l)) (unreachable)"
BOMB = """
    (block $full (loop $grow
      (br_if $full (i32.eq (memory.grow (i32.const 16)) (i32.const -1)))
      (br $grow)))
    (i32.store (i32.const 1000000000) (i32.const 1))
    (unreachable)"""
COUNTER = (
    """
    (global.set $count (i32.add (global.get $count) (i32.const 1)))
    (if (i32.gt_u (global.get $count) (i32.const 1)) (then unreachable))
    """
    + OK
)


@pytest.fixture
def wasm_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "plugins"
    folder.mkdir(mode=0o755)
    return folder


def install(wasm: Path, folder: Path) -> None:
    folder.mkdir()
    (folder / "wc.wasm").write_bytes(wasm.read_bytes())


def write(folder: Path, name: str, wat: str) -> Path:
    return compile_wat(wat, folder / name)


async def wasm_registry(tmp_path: Path, toml: str = "") -> ToolRegistry:
    registry = registry_of(tmp_path, toml=toml)
    await registry.start()
    return registry


# -------------------------------------------------------------------------- the ABI


async def test_the_example_tool_built_from_source(tmp_path: Path, word_count_wasm: Path) -> None:
    plugin = load_file(word_count_wasm)
    assert list(plugin.tools) == ["word_count"]
    tool = plugin.tools["word_count"]
    assert tool.parameters_schema["required"] == ["text"]
    install(word_count_wasm, tmp_path / "plugins")
    registry = await wasm_registry(tmp_path)
    out = await registry.execute("word_count", json.dumps({"text": "héllo  wörld\nthree ✓"}))
    assert out.status is ToolCallStatus.OK, out.error
    assert json.loads(out.output_json) == {"words": 4, "characters": 20}
    info = next(t for t in registry.list() if t.name == "word_count")
    assert info.plugin == "wasm:wc.wasm" and info.enabled
    with pytest.raises(Exception, match="'text' is a required property"):
        await registry.execute("word_count", "{}")


async def test_a_module_cannot_forge_log_lines(
    tmp_path: Path, wasm_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    forged = "hi\\0a<3>rustaid.auth: caller=uid:0 is admin\\0d\\1b[31mred"
    length = len(b"hi\n<3>rustaid.auth: caller=uid:0 is admin\r\x1b[31mred")
    write(wasm_dir, "forger.wasm", module(
        f"(call $log (i32.const 5000) (i32.const {length}))" + OK,
        imports='(import "rustaid" "log" (func $log (param i32 i32)))',
        extra=f'(data (i32.const 5000) "{forged}")',
    ))  # fmt: skip
    registry = await wasm_registry(wasm_dir.parent)
    with caplog.at_level(logging.INFO, logger="rustaid.tools.wasm"):
        out = await registry.execute("t", "{}")
    assert out.status is ToolCallStatus.OK, out.error
    (line,) = [r.getMessage() for r in caplog.records if "wasm:forger.wasm" in r.getMessage()]
    assert line == ("wasm:forger.wasm: hi\\n<3>rustaid.auth: caller=uid:0 is admin\\r\\x1b[31mred")
    assert not any(c in line for c in "\n\r\x1b")


async def test_results_errors_and_host_logging(
    tmp_path: Path, wasm_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log_call = "(call $log (i32.const 4224) (i32.const 8))"
    write(wasm_dir, "ok.wasm", module(log_call + OK,
          imports='(import "rustaid" "log" (func $log (param i32 i32)))'))  # fmt: skip
    write(wasm_dir, "err.wasm", module(pack(4160, 26), defs=DEFS.replace('"t"', '"e"')))
    write(wasm_dir, "junk.wasm", module(pack(4224, 8), defs=DEFS.replace('"t"', '"j"')))
    write(wasm_dir, "far.wasm", module(pack(70000, 10), defs=DEFS.replace('"t"', '"f"')))
    write(wasm_dir, "trap.wasm", module("(unreachable)", defs=DEFS.replace('"t"', '"u"')))
    registry = await wasm_registry(wasm_dir.parent)
    with caplog.at_level(logging.INFO, logger="rustaid.tools.wasm"):
        out = await registry.execute("t", "{}")
    assert json.loads(out.output_json) == {"n": 1}
    assert "wasm:ok.wasm: not json" in caplog.text
    out = await registry.execute("e", "{}")
    assert (out.status, out.error) == (ToolCallStatus.ERROR, "tool 'e' failed: no such thing")
    out = await registry.execute("j", "{}")
    assert out.status is ToolCallStatus.INVALID_OUTPUT and "did not return JSON" in out.error
    out = await registry.execute("f", "{}")
    assert out.status is ToolCallStatus.INVALID_OUTPUT and "outside its memory" in out.error
    out = await registry.execute("u", "{}")
    assert out.status is ToolCallStatus.ERROR
    assert "trapped: wasm `unreachable` instruction executed" in out.error


async def test_each_call_gets_a_fresh_instance(tmp_path: Path, wasm_dir: Path) -> None:
    write(wasm_dir, "c.wasm", module(COUNTER, extra="(global $count (mut i32) (i32.const 0))"))
    registry = await wasm_registry(wasm_dir.parent)
    for _ in range(3):  # the counter would trap on a second call in one instance
        assert (await registry.execute("t", "{}")).ok


async def test_a_result_over_the_limit_is_not_even_read(tmp_path: Path, wasm_dir: Path) -> None:
    write(wasm_dir, "big.wasm", module(pack(0, 50 << 20), memory=1))
    registry = await wasm_registry(wasm_dir.parent)
    out = await registry.execute("t", "{}")
    assert out.status is ToolCallStatus.OUTPUT_TOO_LARGE
    assert "returned 52428800 bytes; the limit is 1048576" in out.error


async def test_the_result_limit_is_max_result_bytes(tmp_path: Path, wasm_dir: Path) -> None:
    write(wasm_dir, "big.wasm", module(pack(0, 8192), memory=1))
    registry = await wasm_registry(wasm_dir.parent, "[tools]\nmax_result_bytes = 4096\n")
    out = await registry.execute("t", "{}")
    assert out.status is ToolCallStatus.OUTPUT_TOO_LARGE
    assert "returned 8192 bytes; the limit is 4096" in out.error


# ---------------------------------------------------------------------- the sandbox


async def test_an_infinite_loop_is_stopped_at_the_deadline(tmp_path: Path, wasm_dir: Path) -> None:
    write(wasm_dir, "loop.wasm", module(LOOP))
    registry = await wasm_registry(wasm_dir.parent, "[tools.wasm]\nfuel = 1000000000000\n")
    t0 = time.monotonic()
    out = await registry.execute("t", "{}", timeout_s=0.5)
    assert out.status is ToolCallStatus.TIMEOUT
    assert time.monotonic() - t0 < 2
    # The call really ended (no thread left spinning): a second one behaves the same.
    assert (await registry.execute("t", "{}", timeout_s=0.2)).status is ToolCallStatus.TIMEOUT


async def test_an_infinite_loop_runs_out_of_fuel(tmp_path: Path, wasm_dir: Path) -> None:
    write(wasm_dir, "loop.wasm", module(LOOP))
    registry = await wasm_registry(wasm_dir.parent, "[tools.wasm]\nfuel = 1000000\n")
    out = await registry.execute("t", "{}", timeout_s=30)
    assert out.status is ToolCallStatus.LIMIT_EXCEEDED
    assert "used up its fuel (1000000 units)" in out.error


async def test_a_memory_bomb_is_stopped(tmp_path: Path, wasm_dir: Path) -> None:
    write(wasm_dir, "bomb.wasm", module(BOMB))
    registry = await wasm_registry(wasm_dir.parent, "[tools.wasm]\nmemory_mb = 16\n")
    out = await registry.execute("t", "{}")
    assert out.status is ToolCallStatus.LIMIT_EXCEEDED
    assert "reached its memory limit (15.1 of 16 MiB in use)" in out.error


def test_a_module_that_asks_for_too_much_memory_is_refused(wasm_dir: Path) -> None:
    path = write(wasm_dir, "fat.wasm", module(OK, memory=2048))  # 128 MiB up front
    with pytest.raises(WasmRefused, match="needs more memory than its limit of 64 MiB"):
        load_file(path)


@pytest.mark.parametrize(
    ("imports", "message"),
    [
        ('(import "env" "open" (func (param i32) (result i32)))',
         "imports env.open, which is not granted; granted: rustaid.log"),
        ('(import "wasi_snapshot_preview1" "fd_write" (func (param i32) (result i32)))',
         "WASI is not available to tools"),
        ('(import "rustaid" "spawn" (func))', "imports rustaid.spawn, which is not granted"),
        ('(import "rustaid" "log" (func (param i64)))',
         "imports rustaid.log with the wrong signature"),
        ('(import "rustaid" "log" (global i32))', "imports rustaid.log with the wrong signature"),
    ],
)  # fmt: skip
def test_an_import_not_granted_fails_to_load(wasm_dir: Path, imports: str, message: str) -> None:
    path = write(wasm_dir, "greedy.wasm", module(OK, imports=imports))
    with pytest.raises(WasmRefused, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_file(path)


def test_files_that_are_not_webassembly_are_rejected(wasm_dir: Path) -> None:
    text = wasm_dir / "text.wasm"
    text.write_text("(module)")  # the text format is not accepted as a plugin
    with pytest.raises(WasmRefused, match="not a WebAssembly module"):
        load_file(text)
    elf = wasm_dir / "elf.wasm"
    elf.write_bytes(b"\x7fELF" + bytes(100))
    with pytest.raises(WasmRefused, match="not a WebAssembly module"):
        load_file(elf)
    garbage = wasm_dir / "garbage.wasm"
    garbage.write_bytes(b"\0asm\x01\0\0\0" + b"\xff" * 50)
    with pytest.raises(WasmRefused, match="not a valid WebAssembly module"):
        load_file(garbage)


@pytest.mark.parametrize(
    ("wat", "message"),
    [
        ("(module (memory (export \"memory\") 1))",
         r"missing export\(s\) alloc, tool_definitions, tool_call"),
        (module(OK, defs="not json"), "tool_definitions\\(\\) did not return JSON"),
        (module(OK, defs="[]"), "must return a JSON list of 1 to 64 tools"),
        (module(OK, defs='[{"name": "bad name!"}]'), "is not a valid tool name"),
        (module(OK, defs='[{"name": "x", "parameters": {"type": "string"}}]'),
         "must describe an object"),
        (module(OK, defs='[{"name": "x"}, {"name": "x"}]'), "defined twice"),
        (module(OK, definitions_body=LOOP),
         "tool_definitions\\(\\) failed: .*stopped at its deadline"),
    ],
)  # fmt: skip
def test_modules_that_break_the_abi_are_refused(wasm_dir: Path, wat: str, message: str) -> None:
    path = write(wasm_dir, "odd.wasm", wat)
    with pytest.raises(WasmRefused, match=message):
        load_file(path, WasmLimits(timeout_s=0.3, fuel=10**12))


# --------------------------------------------------------------------- in the daemon


def test_wasm_plugins_in_a_running_daemon(
    start_daemon: object, word_count_wasm: Path, tmp_path: Path
) -> None:
    from rustaid.api.v1 import tools_pb2

    bad = tmp_path / "bad.wasm"
    bad.write_bytes(b"MZ not a module")
    bad.chmod(0o644)
    stubs = start_daemon(wasm=(word_count_wasm, bad))  # type: ignore[operator]
    listed = stubs.tools.ListTools(tools_pb2.ListToolsRequest())
    tools = {t.name: t for t in listed.tools}
    assert tools["word_count"].plugin == "wasm:wc.wasm"
    assert json.loads(tools["word_count"].parameters_schema)["required"] == ["text"]
    modules = {Path(m.path).name: m for m in listed.wasm_modules}
    assert modules["wc.wasm"].tools == ["word_count"] and not modules["wc.wasm"].error
    assert len(modules["wc.wasm"].sha256) == 64
    assert "not a WebAssembly module" in modules["bad.wasm"].error
    out = stubs.tools.ExecuteTool(
        tools_pb2.ExecuteToolRequest(name="word_count", arguments_json='{"text": "a b c"}')
    )
    assert out.status == tools_pb2.TOOL_CALL_STATUS_OK
    assert json.loads(out.output_json) == {"words": 3, "characters": 5}

    # Dropped in while the daemon runs: found on first use, no reload needed.
    plugins = stubs.daemon.data_dir / "plugins"
    late = plugins / "late.wasm"
    late.write_bytes(word_count_wasm.read_bytes().replace(b"word_count", b"word_kount"))
    late.chmod(0o644)
    out = stubs.tools.ExecuteTool(
        tools_pb2.ExecuteToolRequest(name="word_kount", arguments_json='{"text": "x"}')
    )
    assert json.loads(out.output_json) == {"words": 1, "characters": 1}

    # A file others may write is refused, like a Python drop-in.
    late.chmod(0o666)
    listed = stubs.tools.ListTools(tools_pb2.ListToolsRequest())
    modules = {Path(m.path).name: m for m in listed.wasm_modules}
    assert "writable by group or others" in modules["late.wasm"].error
    assert "word_kount" not in {t.name for t in listed.tools}

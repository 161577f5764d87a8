"""code_exec: real child processes hitting real limits."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from rustaid.errors import PreconditionFailed
from rustaid.tools.registry import ToolCallStatus, ToolOutcome, ToolRegistry
from rustaid.tools.subprocess import CodeExec
from tests.tools.test_registry import registry_of


def exists(path: str) -> bool:
    return Path(path).exists()


def process_ends(pid: int) -> bool:
    """True once `pid` is gone, or a zombie waiting for init to reap it."""
    stat = Path(f"/proc/{pid}/stat")
    for _ in range(50):
        if not stat.exists() or stat.read_text().split(") ")[1].startswith("Z"):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def registry(tmp_path: Path) -> ToolRegistry:
    return registry_of(
        tmp_path,
        CodeExec(),
        toml="""
        [tools]
        enable = ["code_exec"]

        [tools.code_exec]
        cpu_s = 1
        memory_mb = 128
        file_size_mb = 1
        wall_s = 2
        max_output_bytes = 1000
        """,
    )


async def run(registry: ToolRegistry, code: str, stdin: str = "") -> ToolOutcome:
    args: dict[str, Any] = {"code": code}
    if stdin:
        args["stdin"] = stdin
    return await registry.execute("code_exec", json.dumps(args))


def result(out: ToolOutcome) -> dict[str, Any]:
    assert out.status is ToolCallStatus.OK, out.error
    value: dict[str, Any] = json.loads(out.output_json)
    return value


async def test_code_exec_is_off_by_default(tmp_path: Path) -> None:
    registry = registry_of(tmp_path, CodeExec())
    with pytest.raises(PreconditionFailed, match="off by default"):
        await registry.execute("code_exec", '{"code": "print(1)"}')


async def test_runs_code_and_returns_its_output(registry: ToolRegistry) -> None:
    out = result(await run(registry, "import sys\nprint(input()[::-1])\nsys.exit(3)", "olleh"))
    assert out["stdout"] == "hello\n"
    assert out["exit_code"] == 3 and out["signal"] is None
    out = result(await run(registry, "raise ValueError('nope')"))
    assert out["exit_code"] == 1 and "ValueError: nope" in out["stderr"]


async def test_no_secrets_and_an_empty_working_dir(
    registry: ToolRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUSTAID_TEST_API_KEY", "sk-secret")
    code = (
        "import json, os\n"
        "print(json.dumps({'env': dict(os.environ), 'cwd': os.getcwd(),"
        " 'files': os.listdir('.')}))"
    )
    seen = json.loads(result(await run(registry, code))["stdout"])
    assert "sk-secret" not in json.dumps(seen["env"])
    assert sorted(seen["env"]) == ["HOME", "LANG", "PATH", "PYTHONIOENCODING", "TMPDIR"]
    assert seen["files"] == []
    assert seen["env"]["HOME"] == seen["cwd"]
    assert not exists(seen["cwd"])  # removed afterwards


async def test_cpu_limit(registry: ToolRegistry) -> None:
    t0 = time.monotonic()
    out = await run(registry, "while True:\n    pass")
    assert out.status is ToolCallStatus.LIMIT_EXCEEDED
    assert "CPU time limit of 1 s exceeded" in out.error
    assert time.monotonic() - t0 < 2


async def test_memory_limit(registry: ToolRegistry) -> None:
    out = result(await run(registry, "x = bytearray(512 << 20)"))
    assert out["exit_code"] == 1 and "MemoryError" in out["stderr"]


async def test_file_size_limit(registry: ToolRegistry) -> None:
    out = result(await run(registry, "open('f', 'wb').write(b'x' * (4 << 20))"))
    assert out["exit_code"] == 1 and "File too large" in out["stderr"]


async def test_wall_time_limit_kills_the_process_group(registry: ToolRegistry) -> None:
    code = (
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)"
    )
    t0 = time.monotonic()
    out = await run(registry, code)
    assert out.status is ToolCallStatus.TIMEOUT
    assert "wall-time limit 2.0 s" in out.error
    assert time.monotonic() - t0 < 4
    pid = int(re.search(r"stdout: '(\d+)", out.error).group(1))  # type: ignore[union-attr]
    assert process_ends(pid), f"the code's child process {pid} survived"


async def test_output_is_capped(registry: ToolRegistry) -> None:
    out = result(await run(registry, "print('x' * 100000)"))
    assert len(out["stdout"]) == 1000 and out["truncated"]


async def test_no_network_when_namespaces_allow_it(registry: ToolRegistry) -> None:
    code = (
        "import socket\n"
        "try:\n"
        "    socket.create_connection(('127.0.0.1', 9), timeout=1)\n"
        "except OSError as e:\n"
        "    print(e.errno)\n"
    )
    out = result(await run(registry, code))
    if not out["network_isolated"]:
        pytest.skip("unprivileged user namespaces are not available here")
    assert out["stdout"].strip() == "101"  # ENETUNREACH: no interfaces at all


@pytest.mark.skipif(os.geteuid() != 0, reason="runs as root only")
async def test_a_root_daemon_runs_code_as_nobody(registry: ToolRegistry) -> None:
    out = result(await run(registry, "import os; print(os.getuid())\nopen('/etc/shadow')"))
    assert "PermissionError" in out["stderr"]

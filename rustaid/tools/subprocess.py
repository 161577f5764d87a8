"""The `code_exec` tool: runs Python code in a sandbox. Off by default.

    [tools]
    enable = ["code_exec"]

    [tools.code_exec]
    user = "rustaid-tool" # the dedicated user the code runs as
    cpu_s = 5             # CPU seconds per process (SIGXCPU, then SIGKILL one second later)
    memory_mb = 256       # memory of the whole process tree (cgroup), and address space
                          # of each process: allocations past it raise MemoryError
    processes = 32        # processes and threads of the whole tree (cgroup pids.max)
    file_size_mb = 1      # largest file it may write (RLIMIT_FSIZE)
    tmp_mb = 16           # size of its private /tmp (also /var/tmp and /dev/shm)
    nice = 19             # CPU priority of the code, 0-19 (19: everything else first)
    wall_s = 10           # wall-clock limit; the call's own timeout also applies
    max_output_bytes = 65536   # stdout and stderr kept, each

The code never runs with the daemon's authority: `rustaid.tools.sandbox` runs it as the
dedicated user, in its own pid, mount, network, IPC and UTS namespaces, in a cgroup for
the whole process tree, with a private /tmp and the daemon's data and socket folders
hidden; everything it started is killed at the end. The program is a fresh
`python -I -S -B` (no site-packages, no PYTHON* variables, no bytecode written) with an
environment of its own (PATH, LANG, HOME=TMPDIR=/tmp): nothing of the daemon's
environment, such as API keys, reaches it. Where the sandbox cannot be had (a daemon not
started as root, namespaces or cgroups refused, no sandbox user), the tool stays off and
says why: it never runs code without it.
"""

from __future__ import annotations

import os
import signal
import stat
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rustaid.errors import InvalidArgument, PreconditionFailed
from rustaid.providers import Tool, ToolHost, tool_context
from rustaid.tools.config import integer, number
from rustaid.tools.errors import LimitExceeded, SandboxTimeout
from rustaid.tools.sandbox import (
    Sandbox,
    SandboxLimits,
    SandboxUnavailable,
    require_privileges,
    sandbox_identity,
)

DEFAULT_USER = "rustaid-tool"


def _world_executable(path: str) -> bool:
    """True if a user with no rights of its own (nobody) can execute `path`."""
    real = Path(os.path.realpath(path))
    try:
        if not real.stat().st_mode & stat.S_IXOTH:
            return False
        return all(p.stat().st_mode & stat.S_IXOTH for p in real.parents)
    except OSError:
        return False


def interpreter(table: Mapping[str, Any]) -> str:
    """The Python that runs the code: `python` of [tools.code_exec], else the daemon's
    own. The sandbox user must be able to execute it: the system's /usr/bin/python3 is
    used when the daemon's own is out of its reach."""
    configured = table.get("python")
    if configured is not None:
        if not isinstance(configured, str) or not Path(configured).is_absolute():
            raise PreconditionFailed(
                f"[tools.code_exec] python must be an absolute path (got {configured!r})",
                reason="TOOL_NOT_CONFIGURED",
            )
        candidates = [configured]
    else:
        candidates = [sys.executable, "/usr/bin/python3"]
    for exe in candidates:
        if Path(exe).is_file() and _world_executable(exe):
            return exe
    raise PreconditionFailed(
        f"code_exec has no usable Python: tried {', '.join(candidates)}"
        + " (the code runs as the sandbox user, who must be able to execute it)"
        + '; set `python = "/path/to/python3"` in [tools.code_exec]',
        reason="TOOL_NOT_CONFIGURED",
    )


def _nice(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 19:
        raise InvalidArgument(
            f"rustaid.toml [tools] code_exec.nice: expected an integer from 0 to 19 "
            f"(got {value!r})",
            field="tools.code_exec.nice",
        )
    return value


def limits_from_table(table: Mapping[str, Any]) -> SandboxLimits:
    w, d = "code_exec", SandboxLimits
    return SandboxLimits(
        cpu_s=integer(table, "cpu_s", d.cpu_s, where=w),
        memory_bytes=integer(table, "memory_mb", d.memory_bytes >> 20, where=w) << 20,
        file_size_bytes=integer(table, "file_size_mb", d.file_size_bytes >> 20, where=w) << 20,
        processes=integer(table, "processes", d.processes, where=w),
        tmp_bytes=integer(table, "tmp_mb", d.tmp_bytes >> 20, where=w) << 20,
        nice=_nice(table.get("nice", d.nice)),
        wall_s=number(table, "wall_s", d.wall_s, where=w),
        max_output_bytes=integer(table, "max_output_bytes", d.max_output_bytes, where=w),
    )


def sandbox_env() -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "PYTHONIOENCODING": "utf-8",
    }


def sandbox_for(table: Mapping[str, Any], host: ToolHost | None = None) -> Sandbox:
    user = table.get("user", DEFAULT_USER)
    if not isinstance(user, str) or not user:
        raise InvalidArgument(
            f"rustaid.toml [tools] code_exec.user: expected a user name (got {user!r})",
            field="tools.code_exec.user",
        )
    return Sandbox(
        identity=sandbox_identity(user),
        limits=limits_from_table(table),
        hide=host.hidden_paths() if host is not None else [],
        env=sandbox_env(),
        python=sys.executable,
    )


def run_python(
    code: str,
    stdin: str,
    sandbox: Sandbox,
    *,
    deadline: float,
    cancelled: Any = None,
    python: str = "/usr/bin/python3",
) -> dict[str, Any]:
    """Run `code` in `sandbox`; returns exit status and output. Raises SandboxTimeout
    at the wall-time limit and LimitExceeded when the CPU or memory limit stopped it."""
    limits = sandbox.limits
    t0 = time.monotonic()
    r = sandbox.run(
        [python, "-I", "-S", "-B"],
        stdin.encode("utf-8"),
        deadline=deadline,
        cancelled=cancelled,
        script=code,
    )
    stdout = r.stdout.decode("utf-8", errors="replace")
    stderr = r.stderr.decode("utf-8", errors="replace")
    if r.timed_out:
        raise SandboxTimeout(
            f"code_exec: stopped after {r.seconds:.1f} s (wall-time limit "
            f"{min(limits.wall_s, deadline - t0):.1f} s); stdout: {stdout[-500:]!r}; "
            f"stderr: {stderr[-500:]!r}"
        )
    if r.oom_killed:
        raise LimitExceeded(
            f"code_exec: memory limit of {limits.memory_bytes >> 20} MB for all its "
            f"processes exceeded; stderr: {stderr[-500:]!r}"
        )
    if r.signal in (signal.SIGXCPU, signal.SIGKILL) and r.seconds < limits.wall_s:
        raise LimitExceeded(
            f"code_exec: CPU time limit of {limits.cpu_s} s exceeded (killed by "
            f"{signal.Signals(r.signal).name}); stderr: {stderr[-500:]!r}"
        )
    return {
        "exit_code": r.exit_code,
        "signal": signal.Signals(r.signal).name if r.signal is not None else None,
        "stdout": stdout,
        "stderr": stderr,
        "truncated": r.truncated,
        "seconds": r.seconds,
    }


class CodeExec(Tool):
    name = "code_exec"
    description = (
        "Runs a Python 3 program (standard library only) in a sandbox and returns its "
        "exit code, stdout and stderr. Print what you want to see."
    )
    parameters_schema: Mapping[str, Any] = {
        "type": "object",
        "properties": {
            "code": {"type": "string", "minLength": 1, "maxLength": 20000},
            "stdin": {"type": "string", "maxLength": 20000},
        },
        "required": ["code"],
        "additionalProperties": False,
    }
    enabled_by_default = False
    timeout_s = 30.0

    def check_available(self) -> None:
        """Cheap checks (no process is started): settings, the sandbox user, root with
        CAP_SYS_ADMIN, a cgroup. What only running can tell (a refused namespace) fails
        the call with the reason."""
        context = tool_context()
        try:
            sandbox_for(context.settings, context.host)
            require_privileges()
        except InvalidArgument as e:
            raise PreconditionFailed(
                f"code_exec is misconfigured: {e.message}", reason="TOOL_NOT_CONFIGURED"
            ) from None
        except SandboxUnavailable as e:
            raise PreconditionFailed(
                f"code_exec is off: it runs code only in a sandbox, and {e}",
                reason="TOOL_SANDBOX_UNAVAILABLE",
            ) from None
        interpreter(context.settings)

    def run(self, arguments: Mapping[str, Any]) -> Any:
        context = tool_context()
        try:
            return run_python(
                arguments["code"],
                arguments.get("stdin", ""),
                sandbox_for(context.settings, context.host),
                deadline=context.deadline,
                cancelled=lambda: context.cancel.cancelled,
                python=interpreter(context.settings),
            )
        except SandboxUnavailable as e:
            raise PreconditionFailed(
                f"code_exec did not run the code: its sandbox could not be set up: {e}",
                reason="TOOL_SANDBOX_UNAVAILABLE",
            ) from None

"""The `code_exec` tool: runs Python code in a separate, limited process. Off by default.

    [tools]
    enable = ["code_exec"]

    [tools.code_exec]
    cpu_s = 5             # CPU seconds (RLIMIT_CPU; SIGXCPU, then SIGKILL one second later)
    memory_mb = 256       # address space (RLIMIT_AS): allocations past it raise MemoryError
    file_size_mb = 1      # largest file it may write (RLIMIT_FSIZE)
    wall_s = 10           # wall-clock limit; the call's own timeout also applies
    max_output_bytes = 65536   # stdout and stderr kept, each

The child is a fresh `python -I -S -B` (no site-packages, no PYTHON* variables, no
bytecode written) in an empty temporary working directory that is removed afterwards,
with an environment of its own (PATH, LANG, HOME and TMPDIR pointing at that directory):
nothing of the daemon's environment, such as API keys, reaches it. It gets its own
session (the whole process group is killed at the limit), at most 64 open files and no
core dumps. A daemon running as root drops the child to `nobody`. Where unprivileged
user namespaces are available the child also gets a network namespace of its own, with
no interfaces: `network_isolated` in the result says whether that worked.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rustaid.errors import InvalidArgument, PreconditionFailed
from rustaid.providers import Tool, tool_context
from rustaid.tools.config import integer, number
from rustaid.tools.registry import LimitExceeded, SandboxTimeout

NOBODY = 65534

# Runs in the child before the code: limits, privileges, namespaces, then exec.
_LAUNCHER = r"""
import ctypes, json, os, resource, sys
cfg = json.loads(sys.argv[1])
def limit(which, soft, hard=None):
    resource.setrlimit(which, (soft, soft if hard is None else hard))
limit(resource.RLIMIT_CPU, cfg["cpu_s"], cfg["cpu_s"] + 1)
limit(resource.RLIMIT_AS, cfg["memory_bytes"])
limit(resource.RLIMIT_FSIZE, cfg["file_size_bytes"])
limit(resource.RLIMIT_NOFILE, 64)
limit(resource.RLIMIT_CORE, 0)
if os.geteuid() == 0:
    os.setgroups([])
    os.setgid(cfg["nobody"])
    os.setuid(cfg["nobody"])
isolated = False
try:
    libc = ctypes.CDLL(None, use_errno=True)
    isolated = libc.unshare(0x10000000 | 0x40000000) == 0  # CLONE_NEWUSER | CLONE_NEWNET
except Exception:
    pass
os.write(cfg["status_fd"], b"1" if isolated else b"0")
os.close(cfg["status_fd"])
os.execv(sys.executable, [sys.executable, "-I", "-S", "-B", "-c", cfg["code"]])
"""


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
    own. A daemon running as root runs the code as nobody, who must be able to execute
    it: the system's /usr/bin/python3 is used when the daemon's own is out of reach."""
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
        if Path(exe).is_file() and (os.geteuid() != 0 or _world_executable(exe)):
            return exe
    raise PreconditionFailed(
        f"code_exec has no usable Python: tried {', '.join(candidates)}"
        + (
            " (as root, the code runs as nobody, who must be able to execute it)"
            if os.geteuid() == 0
            else ""
        )
        + '; set `python = "/path/to/python3"` in [tools.code_exec]',
        reason="TOOL_NOT_CONFIGURED",
    )


@dataclass(frozen=True)
class Limits:
    cpu_s: int = 5
    memory_bytes: int = 256 << 20
    file_size_bytes: int = 1 << 20
    wall_s: float = 10.0
    max_output_bytes: int = 64 << 10

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> Limits:
        w = "code_exec"
        return cls(
            cpu_s=integer(table, "cpu_s", cls.cpu_s, where=w),
            memory_bytes=integer(table, "memory_mb", cls.memory_bytes >> 20, where=w) << 20,
            file_size_bytes=integer(table, "file_size_mb", cls.file_size_bytes >> 20, where=w)
            << 20,
            wall_s=number(table, "wall_s", cls.wall_s, where=w),
            max_output_bytes=integer(table, "max_output_bytes", cls.max_output_bytes, where=w),
        )


def scrubbed_env(workdir: str) -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": workdir,
        "TMPDIR": workdir,
        "PYTHONIOENCODING": "utf-8",
    }


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def run_python(
    code: str,
    stdin: str,
    limits: Limits,
    *,
    deadline: float,
    cancelled: Any = None,
    python: str = sys.executable,
) -> dict[str, Any]:
    """Run `code` under `limits`; returns exit status and output. Raises SandboxTimeout
    at the wall-time limit and LimitExceeded when the CPU limit killed it."""
    workdir = tempfile.mkdtemp(prefix="rustaid-code-")
    try:
        if os.geteuid() == 0:
            os.chown(workdir, NOBODY, NOBODY)
        config = {
            "cpu_s": limits.cpu_s,
            "memory_bytes": limits.memory_bytes,
            "file_size_bytes": limits.file_size_bytes,
            "nobody": NOBODY,
            "code": code,
        }
        status_r, status_w = os.pipe()
        config["status_fd"] = status_w
        try:
            proc = subprocess.Popen(
                [python, "-I", "-S", "-B", "-c", _LAUNCHER, json.dumps(config)],
                cwd=workdir,
                env=scrubbed_env(workdir),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(status_w,),
                start_new_session=True,
            )
        finally:
            os.close(status_w)
        return _supervise(proc, stdin, limits, deadline, cancelled, status_r)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _supervise(
    proc: subprocess.Popen[bytes],
    stdin: str,
    limits: Limits,
    deadline: float,
    cancelled: Any,
    status_r: int,
) -> dict[str, Any]:
    t0 = time.monotonic()
    wall_end = min(deadline, t0 + limits.wall_s)
    out = {"stdout": bytearray(), "stderr": bytearray()}
    dropped = {"stdout": 0, "stderr": 0}
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        if stdin:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.write(stdin.encode("utf-8"))
        proc.stdin.close()
        isolated = os.read(status_r, 1) == b"1"
    finally:
        os.close(status_r)
    timed_out = False
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
        sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
        while sel.get_map():
            left = wall_end - time.monotonic()
            if left <= 0 or (cancelled is not None and cancelled()):
                timed_out = True
                _kill(proc)
                break
            for key, _ in sel.select(timeout=min(left, 0.1)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                name = key.data
                room = limits.max_output_bytes - len(out[name])
                out[name] += chunk[: max(room, 0)]
                dropped[name] += max(len(chunk) - max(room, 0), 0)
    try:
        code = proc.wait(timeout=max(0.1, wall_end - time.monotonic()) if not timed_out else 5)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill(proc)
        code = proc.wait()
    _kill(proc)  # anything it left behind in its process group
    elapsed = time.monotonic() - t0
    stderr = out["stderr"].decode("utf-8", errors="replace")
    stdout = out["stdout"].decode("utf-8", errors="replace")
    if timed_out:
        raise SandboxTimeout(
            f"code_exec: stopped after {elapsed:.1f} s (wall-time limit "
            f"{min(limits.wall_s, deadline - t0):.1f} s); stdout: {stdout[-500:]!r}; "
            f"stderr: {stderr[-500:]!r}"
        )
    if code in (-signal.SIGXCPU, -signal.SIGKILL) and elapsed < limits.wall_s:
        raise LimitExceeded(
            f"code_exec: CPU time limit of {limits.cpu_s} s exceeded (killed by "
            f"{signal.Signals(-code).name}); stderr: {stderr[-500:]!r}"
        )
    return {
        "exit_code": code if code >= 0 else None,
        "signal": signal.Signals(-code).name if code < 0 else None,
        "stdout": stdout,
        "stderr": stderr,
        "truncated": bool(dropped["stdout"] or dropped["stderr"]),
        "seconds": round(elapsed, 3),
        "network_isolated": isolated,
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
        settings = tool_context().settings
        try:
            Limits.from_table(settings)
        except InvalidArgument as e:
            raise PreconditionFailed(
                f"code_exec is misconfigured: {e.message}", reason="TOOL_NOT_CONFIGURED"
            ) from None
        interpreter(settings)

    def run(self, arguments: Mapping[str, Any]) -> Any:
        context = tool_context()
        limits = Limits.from_table(context.settings)
        return run_python(
            arguments["code"],
            arguments.get("stdin", ""),
            limits,
            deadline=context.deadline,
            cancelled=lambda: context.cancel.cancelled,
            python=interpreter(context.settings),
        )

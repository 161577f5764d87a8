"""code_exec: real child processes in a real sandbox hitting real limits; the sandbox
refuses to run where it cannot be had."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from rustaid.api.v1 import tools_pb2
from rustaid.errors import PreconditionFailed
from rustaid.testing.daemon import run_daemon
from rustaid.tools.cgroup import TreeCgroup, find_cgroup_parent
from rustaid.tools.registry import ToolCallStatus, ToolOutcome, ToolRegistry
from rustaid.tools.subprocess import CodeExec
from tests.tools.conftest import ToolStubs, make_data_dir
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
        processes = 16
        max_output_bytes = 1000
        nice = 0
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


async def test_no_secrets_and_a_private_empty_tmp(
    registry: ToolRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUSTAID_TEST_API_KEY", "sk-secret")
    marker = f"rustaid-test-{os.getpid()}-{time.monotonic_ns()}"
    code = (
        "import json, os\n"
        "print(json.dumps({'env': dict(os.environ), 'cwd': os.getcwd(),"
        " 'files': os.listdir('.'), 'shm': os.listdir('/dev/shm'), 'run': os.listdir('/run')}))\n"
        f"for d in ('/tmp', '/var/tmp', '/dev/shm'): open(d + '/{marker}', 'w').write('x')"
    )
    out = result(await run(registry, code))
    seen = json.loads(out["stdout"])
    assert out["exit_code"] == 0, out["stderr"]
    assert "sk-secret" not in json.dumps(seen["env"])
    assert sorted(seen["env"]) == ["HOME", "LANG", "PATH", "PYTHONIOENCODING", "TMPDIR"]
    assert seen["cwd"] == seen["env"]["HOME"] == "/tmp"
    assert seen["files"] == [] and seen["shm"] == [] and seen["run"] == []  # no sockets
    # Its /tmp, /var/tmp and /dev/shm were its own: nothing reached the host's.
    for d in ("/tmp", "/var/tmp", "/dev/shm"):
        assert not exists(f"{d}/{marker}")


async def test_cpu_limit(tmp_path: Path) -> None:
    # A wall-time limit far off and the usual priority, so a busy machine cannot turn
    # this into a timeout.
    registry = registry_of(
        tmp_path,
        CodeExec(),
        toml="""
        [tools]
        enable = ["code_exec"]

        [tools.code_exec]
        cpu_s = 1
        wall_s = 30
        nice = 0
        """,
    )
    out = await run(registry, "while True:\n    pass")
    assert out.status is ToolCallStatus.LIMIT_EXCEEDED
    assert "CPU time limit of 1 s exceeded" in out.error


async def test_memory_limit(registry: ToolRegistry) -> None:
    out = result(await run(registry, "x = bytearray(512 << 20)"))
    assert out["exit_code"] == 1 and "MemoryError" in out["stderr"]


async def test_file_size_limit(registry: ToolRegistry) -> None:
    out = result(await run(registry, "open('f', 'wb').write(b'x' * (4 << 20))"))
    assert out["exit_code"] == 1 and "File too large" in out["stderr"]


def sandbox_processes(marker: str) -> list[int]:
    """Host pids of processes whose command line holds `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


def survivor(marker: str) -> str:
    """Code that leaves a process behind: new session, double fork, then exec."""
    return (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execv('/bin/sleep', ['sleep', '{marker}'])\n"
        "    os._exit(0)\n"
        "time.sleep(0.3)\n"
        "print('left', flush=True)\n"
    )


async def test_wall_time_limit_kills_the_whole_tree(registry: ToolRegistry) -> None:
    marker = f"61.{os.getpid()}{time.monotonic_ns() % 100000}"
    t0 = time.monotonic()
    out = await run(registry, survivor(marker) + "time.sleep(60)")
    assert out.status is ToolCallStatus.TIMEOUT
    assert "wall-time limit 2.0 s" in out.error and "left" in out.error
    assert time.monotonic() - t0 < 4
    assert all(process_ends(pid) for pid in sandbox_processes(marker))


async def test_nothing_outlives_the_call(registry: ToolRegistry) -> None:
    marker = f"62.{os.getpid()}{time.monotonic_ns() % 100000}"
    out = result(await run(registry, survivor(marker)))
    assert out["stdout"] == "left\n" and out["exit_code"] == 0
    left = sandbox_processes(marker)
    assert all(process_ends(pid) for pid in left), f"{left} survived the call"


async def test_the_code_is_on_no_command_line(registry: ToolRegistry) -> None:
    # Other local users can read every command line (/proc/PID/cmdline).
    marker = f"secret-{os.getpid()}-{time.monotonic_ns()}"
    task = asyncio.ensure_future(run(registry, f"import time\n'{marker}'\ntime.sleep(1)"))
    seen: list[int] = []
    while not task.done():
        seen += sandbox_processes(marker)
        await asyncio.sleep(0.02)
    assert result(await task)["exit_code"] == 0 and seen == []


async def test_a_fork_bomb_stops_at_the_process_limit(registry: ToolRegistry) -> None:
    code = (
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        "    for _ in range(500):\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(30)\n"
        "            os._exit(0)\n"
        "        n += 1\n"
        "except OSError as e:\n"
        "    print(n, e.errno)\n"
    )
    out = result(await run(registry, code))
    started, errno = map(int, out["stdout"].split())
    assert errno == 11 and started < 16  # EAGAIN: processes = 16 for the whole tree


async def test_memory_limit_holds_for_the_whole_tree(registry: ToolRegistry) -> None:
    # Six children of 40 MB each: every one is under the per-process limit of 128 MB.
    code = (
        "import os, time\n"
        "for _ in range(6):\n"
        "    if os.fork() == 0:\n"
        "        b = bytearray(40 << 20)\n"
        "        for i in range(0, len(b), 4096):\n"
        "            b[i] = 1\n"
        "        time.sleep(10)\n"
        "        os._exit(0)\n"
        "os.wait()\n"
    )
    out = await run(registry, code)
    assert out.status is ToolCallStatus.LIMIT_EXCEEDED
    assert "memory limit of 128 MB for all its processes exceeded" in out.error


async def test_output_is_capped(registry: ToolRegistry) -> None:
    out = result(await run(registry, "print('x' * 100000)"))
    assert len(out["stdout"]) == 1000 and out["truncated"]


async def test_no_network_at_all(registry: ToolRegistry) -> None:
    code = (
        "import socket\n"
        "try:\n"
        "    socket.create_connection(('127.0.0.1', 9), timeout=1)\n"
        "except OSError as e:\n"
        "    print(e.errno)\n"
        "print(sorted(socket.if_nameindex()))\n"
    )
    out = result(await run(registry, code))
    assert out["stdout"].splitlines() == ["101", "[(1, 'lo')]"]  # ENETUNREACH: lo is down


async def test_code_runs_as_the_sandbox_user(tmp_path: Path, sandbox_user: str) -> None:
    registry = registry_of(tmp_path, CodeExec(), toml='[tools]\nenable = ["code_exec"]\n')
    code = (
        "import os\n"
        "print(os.getuid(), os.getgid(), os.getgroups(), os.getpriority(os.PRIO_PROCESS, 0))\n"
        "open('/etc/shadow')"
    )
    out = result(await run(registry, code))
    user = pwd.getpwnam(sandbox_user)
    assert out["stdout"] == f"{user.pw_uid} {user.pw_gid} [] 19\n"  # the lowest priority
    assert "PermissionError" in out["stderr"]
    assert user.pw_uid not in (0, os.getuid())


async def test_without_its_user_the_tool_stays_off(tmp_path: Path) -> None:
    registry = registry_of(
        tmp_path,
        CodeExec(),
        toml="""
        [tools]
        enable = ["code_exec"]

        [tools.code_exec]
        user = "rustaid-no-such-user"
        """,
    )
    with pytest.raises(PreconditionFailed, match="'rustaid-no-such-user' does not exist") as e:
        await run(registry, "print(1)")
    assert e.value.reason == "TOOL_SANDBOX_UNAVAILABLE"
    (info,) = [t for t in registry.list() if t.name == "code_exec"]
    assert not info.enabled and "'rustaid-no-such-user' does not exist" in info.disabled_reason


async def test_a_bad_setting_names_the_key(tmp_path: Path) -> None:
    toml = '[tools]\nenable = ["code_exec"]\n[tools.code_exec]\nnice = -5\n'
    registry = registry_of(tmp_path, CodeExec(), toml=toml)
    with pytest.raises(PreconditionFailed, match=r"code_exec\.nice: expected an integer from 0"):
        await run(registry, "print(1)")


CHECK = "from rustaid.tools.sandbox import require_privileges; require_privileges(); print('ok')"


def refusal(*wrapper: str) -> str:
    """What the availability check says in a process started through `wrapper`."""
    r = subprocess.run(
        [*wrapper, sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60
    )
    assert r.returncode != 0, r.stdout
    return r.stderr.strip().splitlines()[-1]


def test_fails_closed_without_root() -> None:
    why = refusal("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
    assert "needs a daemon started as root" in why and "uid 65534" in why


def test_fails_closed_where_namespaces_are_forbidden() -> None:
    # What CapabilityBoundingSet= (and so RestrictNamespaces=yes) leaves a root daemon.
    why = refusal("setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin")
    assert "lacks CAP_SYS_ADMIN" in why


READ_ONLY_CGROUPS = (
    'for m in $(grep -E " cgroup2? " /proc/self/mounts | cut -d" " -f2); do '
    'mount -o remount,bind,ro "$m"; done; exec "$@"'
)


def test_fails_closed_without_a_writable_cgroup() -> None:
    # What ProtectControlGroups=yes does: every cgroup file system read-only.
    why = refusal("unshare", "--mount", "--propagation", "private", "sh", "-c",
                  READ_ONLY_CGROUPS, "sh")  # fmt: skip
    assert "no cgroup for the process tree" in why and "not writable" in why


@pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox needs a daemon started as root")
def test_code_cannot_reach_the_daemons_socket_data_or_plugins() -> None:
    # Outside /tmp (the sandbox has its own): like /var/lib/rustaid and /run/rustaid,
    # here even readable and writable by everyone.
    data = Path(f"/var/lib/rustaid-sandbox-test-{os.getpid()}")
    run_dir = Path(f"/run/rustaid-sandbox-test-{os.getpid()}")
    run_dir.mkdir(mode=0o777)
    run_dir.chmod(0o777)
    sock = run_dir / "rustaid.sock"
    make_data_dir(data, None, '[tools]\nenable = ["code_exec"]\n')
    data.chmod(0o777)
    (data / "plugins").chmod(0o777)
    code = (
        "import json, os, socket\n"
        "seen = {}\n"
        f"for name, path in (('data', '{data}'), ('plugins', '{data}/plugins')):\n"
        "    try:\n"
        "        seen[name] = os.listdir(path)\n"
        "    except OSError as e:\n"
        "        seen[name] = e.strerror\n"
        "try:\n"
        f"    open('{data}/plugins/planted.py', 'w').write('import os')\n"
        "    seen['plant'] = 'written'\n"
        "except OSError as e:\n"
        "    seen['plant'] = e.strerror\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        f"    s.connect('{sock}')\n"
        "    seen['socket'] = 'connected'\n"
        "except OSError as e:\n"
        "    seen['socket'] = e.strerror\n"
        "print(json.dumps(seen))\n"
    )
    try:
        with run_daemon(data, "--listen", f"unix://{sock}") as daemon:
            sock.chmod(0o666)
            stubs = ToolStubs(daemon)
            r = stubs.tools.ExecuteTool(
                tools_pb2.ExecuteToolRequest(
                    name="code_exec", arguments_json=json.dumps({"code": code})
                )
            )
            stubs.close()
            assert r.status == tools_pb2.TOOL_CALL_STATUS_OK, r.error
            out = json.loads(r.output_json)
            seen = json.loads(out["stdout"])
            assert seen["data"] == "Permission denied"
            assert seen["socket"] == "No such file or directory"  # all of /run is hidden
            assert seen["plugins"] in ("Permission denied", "No such file or directory")
            assert seen["plant"] != "written" and not (data / "plugins" / "planted.py").exists()
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(sock))  # the folder is hidden from the code, not removed
    finally:
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox needs a daemon started as root")
def test_a_daemon_killed_mid_call_takes_the_code_with_it(tmp_path: Path) -> None:
    marker = f"63.{os.getpid()}{time.monotonic_ns() % 100000}"
    data = make_data_dir(
        tmp_path / "data", None, '[tools]\nenable = ["code_exec"]\n[tools.code_exec]\nwall_s = 60\n'
    )
    # Silent: a write to the dead daemon's pipe would end it anyway (SIGPIPE).
    code = survivor(marker).replace("print('left', flush=True)\n", "") + "time.sleep(60)"
    request = tools_pb2.ExecuteToolRequest(
        name="code_exec", arguments_json=json.dumps({"code": code})
    )
    with run_daemon(data) as daemon:
        stubs = ToolStubs(daemon)
        call = stubs.tools.ExecuteTool.future(request)
        deadline = time.monotonic() + 30
        while not sandbox_processes(f"sleep\0{marker}"):  # the double-forked one runs
            assert time.monotonic() < deadline and not call.done(), "the code did not start"
            time.sleep(0.05)
        daemon.proc.kill()
        daemon.proc.wait()
        stubs.close()
    left = sandbox_processes(marker)
    assert all(process_ends(pid) for pid in left), f"{left} outlived the daemon"
    # The killed daemon could not remove the call's group; the next daemon would.
    groups = find_cgroup_parent()
    for parent in groups.dirs:
        for group in parent.glob(f"rustaid-tool-{daemon.proc.pid}-*"):
            TreeCgroup(groups.version, (group,)).remove()

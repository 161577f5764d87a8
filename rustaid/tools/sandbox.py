"""Runs a program as another user, in namespaces and a cgroup of its own.

What the program gets, and why:

- A separate identity: a dedicated unprivileged user (not the daemon's, never root), no
  supplementary groups, `no_new_privs`. It cannot use the daemon's sockets (group
  `rustai`) or read its data, and cannot write the drop-in plugin folder.
- Its own pid namespace, with a small init of ours as pid 1: when the program's main
  process ends, init exits and the kernel kills everything left in the namespace, so
  no `setsid` + double fork survives the call.
- Its own mount namespace: a private `/tmp`, `/var/tmp` and `/dev/shm` (small tmpfs,
  gone afterwards), the daemon's data directory and socket folders hidden under empty
  read-only mounts, an empty `/run` (no service sockets: D-Bus, journald...), a `/proc`
  that shows only the sandbox.
- Its own network (no interfaces, not even loopback; abstract Unix sockets of the host
  unreachable), IPC and UTS namespaces.
- A cgroup for the whole tree (`pids.max`, memory limit), killed and removed at the end.
- The lowest CPU priority (nice 19 unless set otherwise), so the daemon's requests go
  first.

This needs a daemon started as root with CAP_SYS_ADMIN and a writable cgroup. Nothing
here fails open: if a step fails, the program does not run and the caller gets the
reason (`SandboxUnavailable`).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rustaid.tools.cgroup import CgroupUnavailable, TreeCgroup, find_cgroup_parent, unique_name

# Runs as root: joins the cgroup, enters new namespaces, mounts, forks the namespace's
# init, which forks the program's process; that one drops to the sandbox user and execs.
# Protocol on the status fd: "ready\n" just before exec, or "error: ...\n"; init adds
# "exit STATUS\n" (a waitpid status) when the program's process ends.
_LAUNCHER = r"""
import ctypes, json, os, resource, sys
# The settings come through a pipe, not argv: other users can read a command line.
cfg_fd, chunks = int(sys.argv[1]), []
while chunk := os.read(cfg_fd, 1 << 16):
    chunks.append(chunk)
os.close(cfg_fd)
cfg = json.loads(b"".join(chunks))
status = cfg["status_fd"]
libc = ctypes.CDLL(None, use_errno=True)
def fail(what):
    os.write(status, ("error: " + what + "\n").encode())
    os._exit(125)
def check(rc, what):
    if rc != 0:
        fail(what + ": " + os.strerror(ctypes.get_errno()))
def mount(src, target, fstype, flags, data):
    check(libc.mount(src.encode(), target.encode(), fstype.encode() if fstype else None,
                     flags, data.encode() if data else None), "mount " + target)
NOSUID, NODEV, NOEXEC, RDONLY, REC, PRIVATE = 2, 4, 8, 1, 16384, 1 << 18
# If the daemon dies mid-call, this launcher dies, then init, then the whole namespace.
check(libc.prctl(1, 9, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
for procs in cfg["cgroup_procs"]:
    try:
        with open(procs, "w") as f:
            f.write(str(os.getpid()))
    except OSError as e:
        fail("cannot join the cgroup: " + str(e))
try:
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write("-1000")  # the OOM killer picks the program, not its supervisors
except OSError:
    pass  # refused in some containers: then the kill may hit init, ending the call too
# CLONE_NEWNS | NEWUTS | NEWIPC | NEWPID | NEWNET
check(libc.unshare(0x00020000 | 0x04000000 | 0x08000000 | 0x20000000 | 0x40000000),
      "cannot create pid, mount and network namespaces (unshare)")
mount("none", "/", None, REC | PRIVATE, None)
for path in cfg["hide"]:
    if os.path.isdir(path):
        mount("tmpfs", path, "tmpfs", RDONLY | NOSUID | NODEV | NOEXEC, "size=4k,mode=000")
for path in ("/tmp", "/var/tmp", "/dev/shm"):
    if os.path.isdir(path):
        mount("tmpfs", path, "tmpfs", NOSUID | NODEV, "size=%d,mode=1777" % cfg["tmp_bytes"])
# No service sockets (D-Bus, journald, other daemons'): /run is empty and read-only.
mount("tmpfs", "/run", "tmpfs", RDONLY | NOSUID | NODEV | NOEXEC, "size=4k,mode=755")
init = os.fork()
if init:
    os.close(status)
    os.waitpid(init, 0)
    os._exit(0)
# pid 1 of the new namespace.
check(libc.prctl(1, 9, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
mount("proc", "/proc", "proc", NOSUID | NODEV | NOEXEC, None)
child = os.fork()
if child:
    while True:  # reap orphans too; the namespace ends with us
        pid, st = os.wait()
        if pid == child:
            os.write(status, b"exit %d\n" % st)
            os._exit(0)
def limit(which, soft, hard=None):
    resource.setrlimit(which, (soft, soft if hard is None else hard))
try:
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write("0")
    limit(resource.RLIMIT_CPU, cfg["cpu_s"], cfg["cpu_s"] + 1)
    limit(resource.RLIMIT_AS, cfg["memory_bytes"])
    limit(resource.RLIMIT_FSIZE, cfg["file_size_bytes"])
    limit(resource.RLIMIT_NOFILE, 64)
    limit(resource.RLIMIT_CORE, 0)
    os.setpriority(os.PRIO_PROCESS, 0, cfg["nice"])  # the daemon's own work goes first
    os.chdir("/tmp")
    os.setgroups([])
    os.setgid(cfg["gid"])
    os.setuid(cfg["uid"])
    check(libc.prctl(38, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    if os.getuid() != cfg["uid"] or os.geteuid() != cfg["uid"]:
        fail("could not drop privileges")
except OSError as e:
    fail("cannot drop to the sandbox user: " + str(e))
argv = cfg["argv"]
if cfg["script"] is not None:  # the program's text, in memory: not on its command line
    script = os.memfd_create("program", 0)
    os.write(script, cfg["script"].encode())
    os.lseek(script, 0, os.SEEK_SET)
    argv = argv + ["/proc/self/fd/%d" % script]
os.write(status, b"ready\n")
os.close(status)
os.execve(argv[0], argv, cfg["env"])
"""


class SandboxUnavailable(Exception):
    """The sandbox cannot be set up here; the message says what is missing."""


@dataclass(frozen=True)
class SandboxLimits:
    cpu_s: int = 5
    # For the whole process tree (cgroup), and for each process (address space).
    memory_bytes: int = 256 << 20
    file_size_bytes: int = 1 << 20
    processes: int = 32
    tmp_bytes: int = 16 << 20
    nice: int = 19  # CPU priority: 19 is the lowest
    wall_s: float = 10.0
    max_output_bytes: int = 64 << 10


@dataclass
class SandboxResult:
    # The program's waitpid status: None when it did not end by itself (killed with its
    # whole namespace: wall time, cancel, memory).
    wait_status: int | None
    stdout: bytes
    stderr: bytes
    truncated: bool
    seconds: float
    timed_out: bool
    oom_killed: bool

    @property
    def exit_code(self) -> int | None:
        if self.wait_status is None or not os.WIFEXITED(self.wait_status):
            return None
        return os.WEXITSTATUS(self.wait_status)

    @property
    def signal(self) -> int | None:
        if self.wait_status is None:
            return int(signal.SIGKILL)
        return os.WTERMSIG(self.wait_status) if os.WIFSIGNALED(self.wait_status) else None


@dataclass(frozen=True)
class Identity:
    user: str
    uid: int
    gid: int


def sandbox_identity(user: str) -> Identity:
    """The dedicated user the code runs as; SandboxUnavailable if it cannot be used."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise SandboxUnavailable(
            f"the sandbox user {user!r} does not exist: create it (systemd-sysusers "
            "installs it from sysusers.d/rustaid.conf, or: useradd --system --no-create-home "
            f"--shell /usr/sbin/nologin {user}) or set `user` in [tools.code_exec]"
        ) from None
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        raise SandboxUnavailable(f"the sandbox user {user!r} must not be root or in group root")
    if entry.pw_uid == os.getuid():
        raise SandboxUnavailable(
            f"the sandbox user {user!r} is the daemon's own user: use a dedicated one"
        )
    return Identity(user, entry.pw_uid, entry.pw_gid)


CAP_SYS_ADMIN = 21


def require_privileges(proc: Path = Path("/proc")) -> None:
    """SandboxUnavailable unless this process can build the sandbox: root (to switch
    users), CAP_SYS_ADMIN (namespaces, mounts) and a cgroup it may create groups in."""
    if os.geteuid() != 0:
        raise SandboxUnavailable(
            "the sandbox needs a daemon started as root (to switch to the sandbox user "
            f"and create namespaces and a cgroup); this daemon runs as uid {os.geteuid()}"
        )
    effective = 0
    for line in (proc / "self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            effective = int(line.split()[1], 16)
    if not effective >> CAP_SYS_ADMIN & 1:
        raise SandboxUnavailable(
            "the daemon lacks CAP_SYS_ADMIN, which namespaces and mounts need (a unit with "
            "CapabilityBoundingSet= or RestrictNamespaces=yes cannot sandbox)"
        )
    try:
        find_cgroup_parent(proc)
    except CgroupUnavailable as e:
        raise SandboxUnavailable(f"no cgroup for the process tree: {e}") from None


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


@dataclass
class Sandbox:
    """Runs `argv` (absolute program path first) as `identity` under `limits`."""

    identity: Identity
    limits: SandboxLimits
    # Folders the program must not see (the daemon's data and socket folders).
    hide: Sequence[Path] = ()
    env: dict[str, str] = field(default_factory=dict)
    python: str = "/usr/bin/python3"  # runs the launcher, as root

    def run(
        self,
        argv: Sequence[str],
        stdin: bytes = b"",
        *,
        deadline: float,
        cancelled: Callable[[], bool] | None = None,
        script: str | None = None,
    ) -> SandboxResult:
        """`script`, when given, is passed to `argv` as one more argument: the path of an
        in-memory file holding it (so it never shows on a command line)."""
        require_privileges()
        try:
            group = find_cgroup_parent().create(
                unique_name(), pids=self.limits.processes, memory_bytes=self.limits.memory_bytes
            )
        except CgroupUnavailable as e:
            raise SandboxUnavailable(f"no cgroup for the process tree: {e}") from None
        try:
            return self._run_in(group, argv, script, stdin, deadline, cancelled)
        finally:
            group.remove()

    def _run_in(
        self,
        group: TreeCgroup,
        argv: Sequence[str],
        script: str | None,
        stdin: bytes,
        deadline: float,
        cancelled: Callable[[], bool] | None,
    ) -> SandboxResult:
        limits = self.limits
        status_r, status_w = os.pipe()
        config_r, config_w = os.pipe()
        config = {
            "cgroup_procs": group.procs_files,
            "hide": [str(p) for p in self.hide],
            "tmp_bytes": limits.tmp_bytes,
            "nice": limits.nice,
            "cpu_s": limits.cpu_s,
            "memory_bytes": limits.memory_bytes,
            "file_size_bytes": limits.file_size_bytes,
            "uid": self.identity.uid,
            "gid": self.identity.gid,
            "argv": list(argv),
            "script": script,
            "env": self.env,
            "status_fd": status_w,
        }
        try:
            proc = subprocess.Popen(
                [self.python, "-I", "-S", "-B", "-c", _LAUNCHER, str(config_r)],
                cwd="/",
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(status_w, config_r),
                start_new_session=True,
            )
        finally:
            os.close(status_w)
            os.close(config_r)
        with os.fdopen(config_w, "wb") as config_pipe, contextlib.suppress(BrokenPipeError):
            config_pipe.write(json.dumps(config).encode())
        status = os.fdopen(status_r, "rb")
        try:
            first = status.readline().decode("utf-8", "replace").strip()
            if first != "ready":
                proc.kill()
                proc.communicate()
                why = first.removeprefix("error: ") or "the launcher ended without a word"
                raise SandboxUnavailable(why)
            result = self._supervise(proc, group, stdin, deadline, cancelled)
            last = status.readline().decode("ascii", "replace").split()
            if len(last) == 2 and last[0] == "exit" and not result.timed_out:
                result.wait_status = int(last[1])
            result.oom_killed = group.oom_kills() > 0
            return result
        finally:
            status.close()

    def _supervise(
        self,
        proc: subprocess.Popen[bytes],
        group: TreeCgroup,
        stdin: bytes,
        deadline: float,
        cancelled: Callable[[], bool] | None,
    ) -> SandboxResult:
        limits = self.limits
        t0 = time.monotonic()
        wall_end = min(deadline, t0 + limits.wall_s)
        out = {"stdout": bytearray(), "stderr": bytearray()}
        dropped = 0
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        if stdin:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.write(stdin)
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
        timed_out = False
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
            sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
            # Output ends when every process holding the pipes is gone: the namespace
            # ends with the program's main process, so this does not wait on strays.
            while sel.get_map():
                left = wall_end - time.monotonic()
                if left <= 0 or (cancelled is not None and cancelled()):
                    timed_out = True
                    break
                for key, _ in sel.select(timeout=min(left, 0.1)):
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        continue
                    room = max(limits.max_output_bytes - len(out[key.data]), 0)
                    out[key.data] += chunk[:room]
                    dropped += len(chunk) - len(chunk[:room])
        if timed_out:
            _kill_group(proc)
            group.kill()
        proc.wait()
        return SandboxResult(
            wait_status=None,
            stdout=bytes(out["stdout"]),
            stderr=bytes(out["stderr"]),
            truncated=dropped > 0,
            seconds=round(time.monotonic() - t0, 3),
            timed_out=timed_out,
            oom_killed=False,
        )

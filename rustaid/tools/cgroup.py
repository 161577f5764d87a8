"""A control group for the whole process tree of a sandboxed tool call.

Limits set on a cgroup hold for every process in it, whatever the processes do: a fork
bomb stops at `pids.max`, and six children cannot share more memory than `memory.max`
between them (a per-process rlimit cannot say either). Removing the group once it is
empty ends the call; `kill()` kills every process still in it, including those that
left the process group or session.

Both layouts are supported: cgroup v2 (the unified hierarchy, when the daemon's own
group delegates the `pids` and `memory` controllers to its children) and cgroup v1 (one
hierarchy per controller). When neither gives both controllers, `find_cgroup_parent`
raises `CgroupUnavailable` with the reason: callers must then refuse to run the code.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

CONTROLLERS = ("pids", "memory")
_names = itertools.count()


class CgroupUnavailable(Exception):
    """No cgroup with the pids and memory controllers can be created here."""


@dataclass(frozen=True)
class _Mount:
    fstype: str  # "cgroup" (v1) or "cgroup2"
    root: str  # the cgroup path mounted there
    mountpoint: Path
    options: frozenset[str]


def _mounts(proc: Path) -> list[_Mount]:
    found = []
    for line in (proc / "self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if len(fields) < 5 or len(rest) < 3 or rest[0] not in ("cgroup", "cgroup2"):
            continue
        root, mountpoint = fields[3], fields[4].replace("\\040", " ")
        found.append(_Mount(rest[0], root, Path(mountpoint), frozenset(rest[2].split(","))))
    return found


def _own_paths(proc: Path) -> dict[str, str]:
    """Controller (or "" for v2) -> this process's cgroup path."""
    paths: dict[str, str] = {}
    for line in (proc / "self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            paths[name] = path
    return paths


def _inside(mount: _Mount, path: str) -> Path | None:
    if mount.root != "/" and not (path == mount.root or path.startswith(mount.root + "/")):
        return None
    relative = path[len(mount.root) :] if mount.root != "/" else path
    return mount.mountpoint / relative.lstrip("/")


def _writable_dir(path: Path) -> bool:
    """True if a child group can be created in `path`: tried, since permission bits
    tell nothing in a user namespace or on a read-only cgroup mount."""
    probe = path / f"rustaid-probe-{os.getpid()}-{next(_names)}"
    try:
        probe.mkdir()
    except OSError:
        return False
    with contextlib.suppress(OSError):
        probe.rmdir()
    return True


@dataclass(frozen=True)
class CgroupParent:
    """Where the groups of tool calls are created: one directory for v2, one per
    controller for v1."""

    version: int
    dirs: tuple[Path, ...]

    def create(self, name: str, *, pids: int, memory_bytes: int) -> TreeCgroup:
        self._remove_stale()
        made: list[Path] = []
        try:
            for parent in self.dirs:
                path = parent / name
                path.mkdir(mode=0o755)
                made.append(path)
            group = TreeCgroup(self.version, tuple(made))
            group.limit(pids=pids, memory_bytes=memory_bytes)
            return group
        except OSError as e:
            for path in made:
                with contextlib.suppress(OSError):
                    path.rmdir()
            raise CgroupUnavailable(f"cannot set up a cgroup under {self.dirs[0]}: {e}") from e

    def _remove_stale(self) -> None:
        """Groups left by a daemon that was killed mid-call (its pid is gone)."""
        for parent in self.dirs:
            with contextlib.suppress(OSError):
                for entry in parent.glob("rustaid-tool-*"):
                    pid = entry.name.split("-")[2]
                    if (
                        pid.isdigit()
                        and int(pid) != os.getpid()
                        and not Path(f"/proc/{pid}").exists()
                    ):
                        TreeCgroup(self.version, (entry,)).remove()


def find_cgroup_parent(proc: Path = Path("/proc")) -> CgroupParent:
    """The daemon's own cgroup(s), if it may create children with pids and memory
    limits there; else CgroupUnavailable saying why."""
    try:
        mounts, own = _mounts(proc), _own_paths(proc)
    except OSError as e:
        raise CgroupUnavailable(f"cannot read this process's cgroups: {e}") from e
    reasons = []
    for mount in mounts:
        if mount.fstype != "cgroup2" or "" not in own:
            continue
        path = _inside(mount, own[""])
        if path is None or not _writable_dir(path):
            reasons.append(f"cgroup v2 group {path or own['']} is not writable")
            continue
        try:
            delegated = set((path / "cgroup.subtree_control").read_text().split())
        except OSError:
            delegated = set()
        if set(CONTROLLERS) <= delegated:
            return CgroupParent(2, (path,))
        reasons.append(
            f"cgroup v2 group {path} does not delegate the pids and memory controllers "
            "to its children (systemd: Delegate=pids memory)"
        )
    v1 = []
    for controller in CONTROLLERS:
        v1_mount = next(
            (m for m in mounts if m.fstype == "cgroup" and controller in m.options), None
        )
        path = _inside(v1_mount, own.get(controller, "/")) if v1_mount else None
        if path is None or not _writable_dir(path):
            reasons.append(f"no writable cgroup v1 {controller} hierarchy")
            break
        v1.append(path)
    else:
        return CgroupParent(1, tuple(v1))
    raise CgroupUnavailable("; ".join(reasons) or "no cgroup file system is mounted")


def unique_name() -> str:
    return f"rustaid-tool-{os.getpid()}-{next(_names)}"


@dataclass(frozen=True)
class TreeCgroup:
    version: int
    dirs: tuple[Path, ...]

    @property
    def procs_files(self) -> list[str]:
        """The files a process writes its pid to in order to join the group."""
        return [str(d / "cgroup.procs") for d in self.dirs]

    def _write(self, name: str, value: str, *, optional: bool = False) -> None:
        for d in self.dirs:
            if (d / name).exists():
                (d / name).write_text(value)
                return
        if not optional:
            raise OSError(f"no {name} in {', '.join(map(str, self.dirs))}")

    def limit(self, *, pids: int, memory_bytes: int) -> None:
        self._write("pids.max", str(pids))
        if self.version == 2:
            self._write("memory.max", str(memory_bytes))
            self._write("memory.swap.max", "0", optional=True)
        else:
            self._write("memory.limit_in_bytes", str(memory_bytes))
            # memsw >= limit_in_bytes, set after it: no swapping past the limit either.
            self._write("memory.memsw.limit_in_bytes", str(memory_bytes), optional=True)

    def pids(self) -> set[int]:
        found: set[int] = set()
        for d in self.dirs:
            with contextlib.suppress(OSError):
                found |= {int(p) for p in (d / "cgroup.procs").read_text().split()}
        return found

    def oom_kills(self) -> int:
        """How many processes the kernel killed for exceeding the memory limit."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        for d in self.dirs:
            with contextlib.suppress(OSError):
                for line in (d / name).read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        return 0

    def kill(self, timeout: float = 5.0) -> bool:
        """SIGKILL every process in the group until it is empty; True once it is."""
        end = time.monotonic() + timeout
        while True:
            members = self.pids()
            if not members:
                return True
            if time.monotonic() > end:
                return False
            if self.version == 2:
                with contextlib.suppress(OSError):
                    self._write("cgroup.kill", "1")
            for pid in members:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)

    def remove(self) -> None:
        """Kill what is left and remove the group."""
        self.kill()
        for d in self.dirs:
            for _ in range(100):  # the last exits are accounted a moment later
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)

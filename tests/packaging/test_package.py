"""The Debian package and the Python distributions.

Fast: the staged tree (everything but the virtualenv) is checked file by file, built
into a .deb that lintian checks, and its units, users, directories, bus policy and
default settings run a real daemon in a temporary root: READY=1 and watchdog pings on a
NOTIFY_SOCKET of the test's own, then gRPC and D-Bus calls.

Slow: the whole package (virtualenv with a portable llama.cpp) is built, unpacked into
a temporary root and started from there, as the service's own user when the tests run
as root. The first build compiles llama.cpp (build/wheels keeps it for later runs)."""

from __future__ import annotations

import contextlib
import grp
import gzip
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rustaid.config import load_settings
from rustaid.dbus.interface import BUS_NAME, INTERFACE, OBJECT_PATH
from rustaid.dbus.service import dbus_config
from rustaid.testing.dbus import PrivateBus, private_bus

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "packaging" / "build_deb.py"
POLICY = "usr/share/dbus-1/system.d/org.rustai.Daemon1.conf"
SYSUSERS = "usr/lib/sysusers.d/rustaid.conf"
TMPFILES = "usr/lib/tmpfiles.d/rustaid.conf"


def need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (make system-deps installs it)")


def build_deb(out: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BUILD), "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need("dpkg")
    out = tmp_path_factory.mktemp("stage")
    r = build_deb(out, "--stage-only", "--no-venv")
    assert r.returncode == 0, r.stderr
    return Path(r.stdout.strip().splitlines()[-1])


# -- the staged tree ----------------------------------------------------------------------


EXPECTED = [
    "usr/lib/systemd/system/rustaid.service",
    "usr/lib/systemd/user/rustaid.service",
    SYSUSERS,
    TMPFILES,
    POLICY,
    "usr/share/dbus-1/system-services/org.rustai.Daemon1.service",
    "usr/share/dbus-1/services/org.rustai.Daemon1.service",
    "etc/rustaid/rustaid.toml",
    "usr/share/man/man1/rustaid.1.gz",
    "usr/share/man/man1/rustaictl.1.gz",
    "usr/share/doc/rustaid/copyright",
    "usr/share/doc/rustaid/changelog.Debian.gz",
    "usr/share/doc/rustaid/dbus.md",
    "DEBIAN/control",
    "DEBIAN/conffiles",
    "DEBIAN/postinst",
    "DEBIAN/prerm",
    "DEBIAN/postrm",
    "DEBIAN/md5sums",
]


def test_staged_tree_has_every_file(staged: Path) -> None:
    for rel in EXPECTED:
        assert (staged / rel).is_file(), rel
    for path in staged.rglob("*"):
        if not path.is_symlink():
            assert not path.stat().st_mode & 0o022, f"{path} is group/world writable"
    for script in ("postinst", "prerm", "postrm"):
        path = staged / "DEBIAN" / script
        assert path.stat().st_mode & 0o111
        subprocess.run(["sh", "-n", str(path)], check=True)
    assert (staged / "DEBIAN" / "conffiles").read_text() == "/etc/rustaid/rustaid.toml\n"
    assert (staged / SYSUSERS).read_bytes() == (
        REPO / "systemd/sysusers.d/rustaid.conf"
    ).read_bytes()


def test_control_and_man_pages(staged: Path) -> None:
    control = dict(
        line.split(": ", 1)
        for line in (staged / "DEBIAN" / "control").read_text().splitlines()
        if ": " in line and not line.startswith(" ")
    )
    assert control["Package"] == "rustaid"
    assert re.fullmatch(r"\d+\.\d+\.\d+-\d+", control["Version"])
    assert "python3 (>= 3.11~)" in control["Depends"] and "dbus" in control["Depends"]
    page = gzip.decompress((staged / "usr/share/man/man1/rustaid.1.gz").read_bytes()).decode()
    assert page.startswith(".TH RUSTAID 1") and "\\-\\-system" in page
    ctl = gzip.decompress((staged / "usr/share/man/man1/rustaictl.1.gz").read_bytes()).decode()
    assert "generate" in ctl


def test_default_settings_are_valid(staged: Path, tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    shutil.copy(staged / "etc/rustaid/rustaid.toml", tmp_path / "config" / "rustaid.toml")
    settings = load_settings(data_dir=tmp_path, system=True, environ={})
    assert dbus_config(settings).bus == "system"
    assert settings.socket_mode == 0o660


def test_deb_without_the_venv_has_no_lintian_errors(tmp_path: Path) -> None:
    need("dpkg-deb", "lintian")
    r = build_deb(tmp_path, "--no-venv")
    assert r.returncode == 0, r.stderr
    assert "lintian: no errors" in r.stderr


# -- a daemon started from a tree ---------------------------------------------------------


class Notify:
    """A NOTIFY_SOCKET of our own (datagrams), readable by the daemon's user. A thread
    reads it all the time, as systemd does: a full socket would block the daemon."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "notify"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.path.chmod(0o777)
        self.sock.settimeout(0.1)
        self.messages: list[str] = []
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                self.messages.append(self.sock.recv(4096).decode())

    def wait_for(
        self,
        field: str,
        proc: subprocess.Popen[bytes],
        log: Path,
        timeout: float = 60,
        count: int = 1,
    ) -> None:
        deadline = time.monotonic() + timeout
        while sum(field in m.split("\n") for m in list(self.messages)) < count:
            if proc.poll() is not None:
                raise AssertionError(f"daemon exited with {proc.returncode}:\n{log.read_text()}")
            assert time.monotonic() < deadline, f"no {field} in {timeout} s:\n{log.read_text()}"
            time.sleep(0.02)

    def drain(self) -> None:
        """Let the reader catch up (after the daemon exited)."""
        time.sleep(0.3)

    def close(self) -> None:
        self._closed.set()
        self._reader.join()
        self.sock.close()


@contextlib.contextmanager
def daemon_from(
    argv: Sequence[str],
    data_dir: Path,
    socket_path: Path,
    bus: PrivateBus,
    folder: Path,
    user: pwd.struct_passwd | None = None,
) -> Iterator[tuple[subprocess.Popen[bytes], Notify, Path]]:
    notify = Notify(folder)
    log_path = folder / "daemon.log"
    env = {
        "PATH": "/usr/bin:/bin",
        "NOTIFY_SOCKET": str(notify.path),
        "WATCHDOG_USEC": "200000",
        "RUSTAID_ENTRY_POINT_PLUGINS": "0",
        **bus.env("system"),
    }
    prefix: list[str] = []
    if user is not None:
        prefix = [
            "setpriv",
            f"--reuid={user.pw_uid}",
            f"--regid={user.pw_gid}",
            "--init-groups",
            "--",
        ]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                *prefix,
                *argv,
                "serve",
                "--system",
                "--data-dir",
                str(data_dir),
                "--listen",
                f"unix://{socket_path}",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd="/",
        )
    try:
        yield proc, notify, log_path
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        notify.close()


def check_serving(
    proc: subprocess.Popen[bytes],
    notify: Notify,
    log: Path,
    socket_path: Path,
    bus: PrivateBus,
) -> None:
    """READY=1, watchdog pings, gRPC health, a D-Bus generation, a clean stop."""
    notify.wait_for("READY=1", proc, log)
    ready = next(m for m in notify.messages if "READY=1" in m.split("\n"))
    assert f"MAINPID={proc.pid}" in ready
    notify.wait_for("WATCHDOG=1", proc, log, count=3)  # every 100 ms
    with grpc.insecure_channel(f"unix://{socket_path}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        try:
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
        except grpc.RpcError as e:
            raise AssertionError(f"{e}\n-- daemon log --\n{log.read_text()[-4000:]}") from e
        assert status == health_pb2.HealthCheckResponse.SERVING
    r = subprocess.run(
        [
            "busctl",
            f"--address={bus.address}",
            "call",
            BUS_NAME,
            OBJECT_PATH,
            INTERFACE,
            "Generate",
            "sa{sv}",
            "Hello",
            "2",
            "model",
            "s",
            "tiny",
            "max_tokens",
            "u",
            "8",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and r.stdout.startswith('s "'), r.stderr + log.read_text()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, log.read_text()
    notify.drain()
    assert any("STOPPING=1" in m.split("\n") for m in notify.messages)


def prepare_root(tree: Path, root: Path, model: Path) -> tuple[Path, Path]:
    """Apply the tree's sysusers.d and tmpfiles.d to `root` (users in root/etc) and put
    a model in the data folder; returns (data dir, socket path)."""
    (root / "etc").mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["systemd-sysusers", f"--root={root}", str(tree / SYSUSERS)],
        check=True,
        capture_output=True,
    )
    r = subprocess.run(
        ["systemd-tmpfiles", f"--root={root}", "--create", str(tree / TMPFILES)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    data_dir = root / "var" / "lib" / "rustaid"
    assert (data_dir / "models").is_dir()
    shutil.copyfile(model, data_dir / "models" / "tiny.gguf")
    (root / "run" / "rustaid").mkdir(parents=True, exist_ok=True)
    return data_dir, root / "run" / "rustaid" / "rustaid.sock"


def test_staged_tree_serves_from_a_temporary_root(
    staged: Path, model_files: dict[str, Path], tmp_path: Path
) -> None:
    """The staged units' users and directories, its bus policy and the daemon of this
    checkout (the staged tree has no virtualenv)."""
    need("systemd-sysusers", "systemd-tmpfiles", "dbus-daemon", "busctl")
    folder = Path(tempfile.mkdtemp(prefix="rustaid-root-", dir="/tmp"))
    try:
        data_dir, sock = prepare_root(staged, folder / "root", model_files["tiny"])
        with private_bus(system=True, includes=[staged / POLICY]) as bus:
            argv = [sys.executable, "-m", "rustaid"]
            with daemon_from(argv, data_dir, sock, bus, folder) as (proc, notify, log):
                check_serving(proc, notify, log, sock, bus)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- the whole package (slow) -----------------------------------------------------------


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need("dpkg-deb", "dpkg-shlibdeps", "lintian")
    if not Path("/usr/bin/python3").exists():
        pytest.skip("Debian's /usr/bin/python3 is needed for the package's virtualenv")
    out = tmp_path_factory.mktemp("deb")
    r = build_deb(out, timeout=3600)
    assert r.returncode == 0, r.stderr[-5000:]
    assert "lintian: no errors" in r.stderr
    return Path(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def unpacked(package: Path) -> Iterator[Path]:
    """The package's files in a temporary root others can enter (for the service user)."""
    folder = Path(tempfile.mkdtemp(prefix="rustaid-deb-", dir="/tmp"))
    folder.chmod(0o755)
    root = folder / "root"
    subprocess.run(["dpkg-deb", "-x", str(package), str(root)], check=True)
    try:
        yield root
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_package_contents(package: Path, unpacked: Path) -> None:
    info = subprocess.run(
        ["dpkg-deb", "-f", str(package), "Depends"], capture_output=True, text=True, check=True
    ).stdout
    assert "libc6" in info and "python3 (>= 3.11~)" in info
    venv = unpacked / "usr" / "lib" / "rustaid"
    assert str((venv / "bin" / "python3").readlink()) == "/usr/bin/python3"
    assert str((unpacked / "usr/bin/rustaid").readlink()) == "../lib/rustaid/bin/rustaid"
    assert (venv / "bin" / "rustaid").read_text().startswith("#!/usr/lib/rustaid/bin/python")
    assert "/usr/lib/rustaid" in (venv / "pyvenv.cfg").read_text()
    assert not list(venv.rglob("__pycache__"))  # compiled by postinst
    assert not list(venv.rglob("pip/__init__.py"))
    site = next(venv.glob("lib/python3*/site-packages"))
    variants = sorted(p.name for p in (site / "llama_cpp" / "lib").glob("libggml-cpu-*.so"))
    assert len(variants) > 3, variants  # one CPU backend per instruction set
    for name in ("rustaid/dbus/service.py", "rustaid_client/cli/__init__.py", "grpc/__init__.py"):
        assert (site / name).is_file(), name


@pytest.mark.slow
def test_packaged_units_verify(unpacked: Path, tmp_path: Path) -> None:
    need("systemd-analyze")
    exe = unpacked / "usr" / "lib" / "rustaid" / "bin" / "rustaid"
    unit = tmp_path / "rustaid.service"
    unit.write_text(
        (unpacked / "usr/lib/systemd/system/rustaid.service")
        .read_text()
        .replace("/usr/bin/rustaid", str(exe))
    )
    r = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True
    )
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    r = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True, text=True
    )
    level = float(re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout).group(1))  # type: ignore[union-attr]
    assert level <= 2.0


@contextlib.contextmanager
def service_user() -> Iterator[pwd.struct_passwd | None]:
    """The package's user rustaid (made with its sysusers.d file) when running as root;
    the accounts it made are removed afterwards."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        yield None
        return
    made = []
    # sysusers.d/rustaid.conf also makes code_exec's user rustaid-tool (and its group).
    accounts = (("group", "rustai"), ("user", "rustaid"), ("group", "rustaid-tool"),
                ("user", "rustaid-tool"))  # fmt: skip
    for kind, name in accounts:
        try:
            (grp.getgrnam if kind == "group" else pwd.getpwnam)(name)
        except KeyError:
            made.append((kind, name))
    if made:
        subprocess.run(
            ["systemd-sysusers", str(REPO / "systemd/sysusers.d/rustaid.conf")],
            check=True,
            capture_output=True,
        )
    try:
        yield pwd.getpwnam("rustaid")
    finally:
        for kind, name in reversed(made):
            subprocess.run(["userdel" if kind == "user" else "groupdel", name], capture_output=True)


@pytest.mark.slow
def test_unpacked_package_serves(
    unpacked: Path, model_files: dict[str, Path], tmp_path: Path
) -> None:
    need("systemd-sysusers", "systemd-tmpfiles", "dbus-daemon", "busctl")
    folder = unpacked.parent
    python = unpacked / "usr" / "lib" / "rustaid" / "bin" / "python3"
    argv = [str(python), str(unpacked / "usr" / "lib" / "rustaid" / "bin" / "rustaid")]
    with service_user() as user:
        data_dir, sock = prepare_root(unpacked, folder / "state", model_files["tiny"])
        if user is not None:  # the service's user owns its folders, as under systemd
            for path in [data_dir, *data_dir.rglob("*"), sock.parent]:
                os.lchown(path, user.pw_uid, user.pw_gid)
        with (
            private_bus(system=True, includes=[unpacked / POLICY], world_accessible=True) as bus,
            daemon_from(argv, data_dir, sock, bus, folder, user) as (proc, notify, log),
        ):
            notify.wait_for("READY=1", proc, log)
            assert stat.S_IMODE(sock.stat().st_mode) == 0o660
            if user is not None:  # the daemon ran as the package's user
                assert sock.stat().st_uid == user.pw_uid
            check_serving(proc, notify, log, sock, bus)
        text = log.read_text()
        # The code ran from the package, and llama.cpp picked its CPU backend at run time.
        assert re.search(
            r"loaded CPU backend from .*/usr/lib/rustaid/.*libggml-cpu-\S+\.so", text
        ), text


# -- wheels and sdists ------------------------------------------------------------------


@pytest.mark.slow
def test_wheels_and_sdists(tmp_path: Path) -> None:
    for project in (REPO, REPO / "clients" / "python"):
        r = subprocess.run(
            [sys.executable, "-m", "build", "--outdir", str(tmp_path), str(project)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert r.returncode == 0, r.stderr[-3000:]
    daemon = zipfile.ZipFile(next(tmp_path.glob("rustaid-*.whl")))
    names = set(daemon.namelist())
    for name in (
        "rustaid/dbus/service.py",
        "rustaid/api/v1/generate_pb2.py",
        "rustaid/api/v1/generate_pb2.pyi",
        "rustaid/py.typed",
    ):
        assert name in names, name
    meta = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "rustaid = rustaid.cli:main" in daemon.read(meta).decode()
    client = zipfile.ZipFile(next(tmp_path.glob("rustaid_client-*.whl")))
    meta = next(n for n in client.namelist() if n.endswith(".dist-info/entry_points.txt"))
    assert "rustaictl = rustaid_client.cli:main" in client.read(meta).decode()
    assert "rustaid_client/py.typed" in client.namelist()
    assert list(tmp_path.glob("rustaid-*.tar.gz")) and list(
        tmp_path.glob("rustaid_client-*.tar.gz")
    )

"""Access control on a private system-like bus that enforces the shipped policy
(systemd/dbus/system.d/org.rustai.Daemon1.conf), with callers of other uids (setpriv),
and the same rule for the gRPC Unix socket (group rustai, mode 0660).

Needs root: it creates the group rustai and the users rustaid (from the shipped
sysusers.d file), a member of rustai and an outsider, and removes what it created."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rustaid.dbus.interface import BUS_NAME, INTERFACE, OBJECT_PATH
from rustaid.testing.daemon import DaemonProcess, run_daemon
from rustaid.testing.dbus import PrivateBus, private_bus
from tests.accounts import exists, temporary_accounts
from tests.conftest import add_model
from tests.dbus.conftest import need

REPO = Path(__file__).resolve().parents[2]
POLICY = REPO / "systemd" / "dbus" / "system.d" / "org.rustai.Daemon1.conf"
SYSUSERS = REPO / "systemd" / "sysusers.d" / "rustaid.conf"
MEMBER, OUTSIDER = "rustai-test-member", "rustai-test-outsider"
OTHER_MEMBER = "rustai-test-member2"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to create test users and run callers as them"
)


@dataclass(frozen=True)
class Users:
    member: pwd.struct_passwd
    outsider: pwd.struct_passwd
    rustai_gid: int


@pytest.fixture(scope="module")
def users() -> Iterator[Users]:
    need("setpriv")
    need("useradd")
    with temporary_accounts() as accounts:
        missing = [
            (k, n) for k, n in (("group", "rustai"), ("user", "rustaid")) if not exists(k, n)
        ]
        if missing:  # the package's own accounts, as its sysusers.d file makes them
            need("systemd-sysusers")
            subprocess.run(["systemd-sysusers", str(SYSUSERS)], check=True, capture_output=True)
            for kind, name in missing:
                accounts.created_by(kind, name)
        accounts.user(MEMBER, ["rustai"])
        accounts.user(OTHER_MEMBER, ["rustai"])
        accounts.user(OUTSIDER)
        yield Users(pwd.getpwnam(MEMBER), pwd.getpwnam(OUTSIDER), grp.getgrnam("rustai").gr_gid)


def as_user(user: pwd.struct_passwd, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "setpriv",
            f"--reuid={user.pw_uid}",
            f"--regid={user.pw_gid}",
            "--init-groups",
            "--",
            *argv,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )


@pytest.fixture(scope="module")
def system_bus(users: Users) -> Iterator[PrivateBus]:
    need("dbus-daemon")
    with private_bus(system=True, includes=[POLICY], world_accessible=True) as bus:
        yield bus


@pytest.fixture(scope="module")
def system_daemon(
    tmp_path_factory: pytest.TempPathFactory,
    model_files: dict[str, Path],
    system_bus: PrivateBus,
    users: Users,
) -> Iterator[tuple[DaemonProcess, Path]]:
    """The daemon as root on the system-like bus; its gRPC socket in a folder others may
    enter, owned by group rustai."""
    data_dir = tmp_path_factory.mktemp("system-daemon")
    add_model(data_dir, model_files["tiny"])
    (data_dir / "config").mkdir()
    (data_dir / "config" / "rustaid.toml").write_text('[dbus]\nbus = "system"\n')
    sock_dir = Path(tempfile.mkdtemp(prefix="rustaid-grp-", dir="/tmp"))
    sock_dir.chmod(0o755)
    socket = sock_dir / "rustaid.sock"
    env = {**system_bus.env("system"), "RUSTAID_SOCKET_GROUP": "rustai"}
    try:
        with run_daemon(data_dir, "--listen", f"unix://{socket}", env=env) as daemon:
            assert "D-Bus API org.rustai.Daemon1 on the system bus" in daemon.stderr()
            yield daemon, socket
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


def busctl_as(
    user: pwd.struct_passwd | None, bus: PrivateBus, *args: str
) -> subprocess.CompletedProcess[str]:
    need("busctl")
    argv = ["busctl", f"--address={bus.address}", *args]
    if user is None:
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)
    return as_user(user, *argv)


def call(*args: str) -> list[str]:
    return ["call", BUS_NAME, OBJECT_PATH, INTERFACE, *args]


GENERATE = call("Generate", "sa{sv}", "Hello", "1", "max_tokens", "u", "4")


def test_root_may_call_everything(system_daemon: object, system_bus: PrivateBus) -> None:
    r = busctl_as(None, system_bus, *GENERATE)
    assert r.returncode == 0 and r.stdout.startswith("s "), r.stderr
    r = busctl_as(None, system_bus, *call("SetPowerProfile", "s", "power-saver"))
    assert r.returncode == 0, r.stderr
    r = busctl_as(
        None, system_bus, "get-property", BUS_NAME, OBJECT_PATH, INTERFACE, "PowerProfile"
    )
    assert r.stdout.strip() == 's "power-saver"', r.stderr
    r = busctl_as(None, system_bus, *call("SetPowerProfile", "s", "auto"))
    assert r.returncode == 0, r.stderr
    r = busctl_as(None, system_bus, *call("CheckUpdates"))
    assert r.returncode != 0 and "updates are not configured" in r.stderr, r.stderr  # past it


def test_a_member_of_rustai_may_use_the_daemon(
    system_daemon: object, system_bus: PrivateBus, users: Users
) -> None:
    r = busctl_as(users.member, system_bus, *GENERATE)
    assert r.returncode == 0 and r.stdout.startswith("s "), r.stderr
    r = busctl_as(users.member, system_bus, *call("ListModels"))
    assert r.returncode == 0 and '"tiny"' in r.stdout, r.stderr
    r = busctl_as(
        users.member, system_bus, "get-property", BUS_NAME, OBJECT_PATH, INTERFACE, "State"
    )
    assert r.returncode == 0 and r.stdout.startswith("s "), r.stderr
    r = busctl_as(users.member, system_bus, "introspect", BUS_NAME, OBJECT_PATH)
    assert r.returncode == 0 and ".StartGeneration" in r.stdout, r.stderr
    # Retrieval reads: past the policy, the daemon answers (no such collection here).
    for args in (
        call("Search", "ssu", "docs", "question", "3"),
        call("Ask", "ssa{sv}", "docs", "question", "0"),
    ):
        r = busctl_as(users.member, system_bus, *args)
        assert r.returncode != 0 and "no collection named 'docs'" in r.stderr, r.stderr
    r = busctl_as(
        users.member, system_bus, "get-property", BUS_NAME, OBJECT_PATH, INTERFACE, "PowerProfile"
    )
    assert r.returncode == 0 and r.stdout.startswith("s "), r.stderr


def test_detached_generations_belong_to_their_starter(
    system_daemon: object, system_bus: PrivateBus, users: Users
) -> None:
    """A member starts a detached generation, lists and reads it; another member may read
    it but not cancel or release it (the daemon says so: the bus lets both through)."""
    other = pwd.getpwnam(OTHER_MEMBER)
    start = call(
        "StartGeneration",
        "sa{sv}",
        "Hello",
        "3",
        "max_tokens",
        "u",
        "2000",
        "model",
        "s",
        "tiny",
        "detach",
        "b",
        "true",
    )
    r = busctl_as(users.member, system_bus, *start)
    assert r.returncode == 0, r.stderr
    path = f"{OBJECT_PATH}/generations/{r.stdout.split()[1].strip(chr(34))}"
    gen = "org.rustai.Daemon1.Generation"
    r = busctl_as(
        other,
        system_bus,
        "call",
        BUS_NAME,
        OBJECT_PATH,
        "org.freedesktop.DBus.ObjectManager",
        "GetManagedObjects",
    )
    assert r.returncode == 0 and path in r.stdout, r.stderr
    r = busctl_as(other, system_bus, "get-property", BUS_NAME, path, gen, "Kind")
    assert r.returncode == 0 and r.stdout.strip() == 's "generate"', r.stderr
    for member in ("Cancel", "Release"):
        r = busctl_as(other, system_bus, "call", BUS_NAME, path, gen, member)
        assert r.returncode != 0 and f"started by user {users.member.pw_uid}" in r.stderr
    r = busctl_as(users.member, system_bus, "call", BUS_NAME, path, gen, "Release")
    assert r.returncode == 0, r.stderr
    r = busctl_as(
        None,
        system_bus,
        "call",
        BUS_NAME,
        OBJECT_PATH,
        "org.freedesktop.DBus.ObjectManager",
        "GetManagedObjects",
    )
    assert path not in r.stdout


@pytest.mark.parametrize(
    "args",
    [
        call("SetPowerProfile", "s", "performance"),
        call("SetPowerProfile", "s", "auto"),
        call("CheckUpdates"),
        ["set-property", BUS_NAME, OBJECT_PATH, INTERFACE, "State", "s", "busy"],
        ["set-property", BUS_NAME, OBJECT_PATH, INTERFACE, "PowerProfile", "s", "performance"],
    ],
)
def test_changing_methods_are_denied_to_members_by_the_bus(
    system_daemon: object, system_bus: PrivateBus, users: Users, args: list[str]
) -> None:
    r = busctl_as(users.member, system_bus, *args)
    assert r.returncode != 0
    assert "Access denied" in r.stderr or "AccessDenied" in r.stderr, r.stderr


@pytest.mark.parametrize(
    "args",
    [
        GENERATE,
        call("ListModels"),
        call("Search", "ssu", "docs", "question", "3"),
        call("Ask", "ssa{sv}", "docs", "question", "0"),
        ["get-property", BUS_NAME, OBJECT_PATH, INTERFACE, "State"],
        ["introspect", BUS_NAME, OBJECT_PATH],
    ],
)
def test_anyone_else_is_denied(
    system_daemon: object, system_bus: PrivateBus, users: Users, args: list[str]
) -> None:
    r = busctl_as(users.outsider, system_bus, *args)
    assert r.returncode != 0
    assert "Access denied" in r.stderr or "AccessDenied" in r.stderr, r.stderr


def test_a_changing_method_without_interface_is_denied_too(
    system_daemon: object, system_bus: PrivateBus, users: Users
) -> None:
    """The interface field of a method call is optional, and the daemon serves calls
    without one: the policy must not let SetPowerProfile through that way. (dbus-daemon
    applies allow rules naming an interface only to calls that name it, so a member's
    call without interface is refused whatever the method; root's works.)"""
    python = "/usr/bin/python3"
    if subprocess.run([python, "-c", "import dbus"], capture_output=True).returncode != 0:
        pytest.skip("Debian's python3-dbus is needed to send a call without interface")
    code = (
        "import dbus, dbus.lowlevel\n"
        f"bus = dbus.bus.BusConnection({system_bus.address!r})\n"
        "def send(member, *args):\n"
        f"    msg = dbus.lowlevel.MethodCallMessage({BUS_NAME!r}, {OBJECT_PATH!r}, None, member)\n"
        "    for a in args:\n"
        "        msg.append(a, signature='s')\n"
        "    try:\n"
        "        bus.send_message_with_reply_and_block(msg, 30000)\n"
        "        print(member, 'ok')\n"
        "    except dbus.DBusException as e:\n"
        "        print(member, e.get_dbus_name())\n"
        "send('SetPowerProfile', 'performance')\n"
        "send('CheckUpdates')\n"
        "send('ListModels')\n"
    )
    r = as_user(users.member, python, "-c", code)
    assert r.stdout.splitlines() == [
        "SetPowerProfile org.freedesktop.DBus.Error.AccessDenied",
        "CheckUpdates org.freedesktop.DBus.Error.AccessDenied",
        "ListModels org.freedesktop.DBus.Error.AccessDenied",
    ], r.stdout + r.stderr
    r = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.splitlines() == [
        "SetPowerProfile ok",
        "CheckUpdates org.rustai.Daemon1.Error.PreconditionFailed",  # no repository configured
        "ListModels ok",
    ], r.stdout + r.stderr


def test_only_the_service_user_and_root_may_own_the_name(
    system_daemon: object, system_bus: PrivateBus, users: Users
) -> None:
    python = "/usr/bin/python3"
    check = subprocess.run([python, "-c", "import dbus"], capture_output=True)
    if check.returncode != 0:
        pytest.skip("Debian's python3-dbus is needed to request a name as another user")
    code = (
        "import dbus, sys\n"
        f"bus = dbus.bus.BusConnection({system_bus.address!r})\n"
        "try:\n"
        f"    bus.request_name({BUS_NAME!r}, dbus.bus.NAME_FLAG_DO_NOT_QUEUE)\n"
        "except dbus.DBusException as e:\n"
        "    print(e.get_dbus_name())\n"
    )
    r = as_user(users.member, python, "-c", code)
    assert "org.freedesktop.DBus.Error.AccessDenied" in r.stdout, r.stdout + r.stderr


def test_a_lax_policy_still_leaves_changing_methods_to_root(
    model_files: dict[str, Path], users: Users, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """If an administrator opens the whole interface to the group, the daemon itself
    still refuses the changing methods to a non-root caller, and the rest works."""
    lax = tmp_path_factory.mktemp("policy") / "lax.conf"
    lax.write_text(
        '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"\n'
        ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">\n'
        '<busconfig><policy group="rustai">'
        '<allow send_destination="org.rustai.Daemon1"/></policy></busconfig>\n'
    )
    data_dir = tmp_path_factory.mktemp("lax-daemon")
    add_model(data_dir, model_files["tiny"])
    (data_dir / "config").mkdir()
    (data_dir / "config" / "rustaid.toml").write_text('[dbus]\nbus = "system"\n')
    with (
        private_bus(system=True, includes=[POLICY, lax], world_accessible=True) as bus,
        run_daemon(data_dir, env=bus.env("system")),
    ):
        for method in (("SetPowerProfile", "s", "performance"), ("CheckUpdates",)):
            r = busctl_as(users.member, bus, *call(*method))
            assert r.returncode != 0
            assert f"{method[0]} is reserved to root (caller uid {users.member.pw_uid})" in (
                r.stderr
            ), r.stderr
        r = busctl_as(users.member, bus, *call("ListModels"))
        assert r.returncode == 0, r.stderr


def _connect_as(user: pwd.struct_passwd, socket: Path) -> subprocess.CompletedProcess[str]:
    code = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        f"    s.connect({str(socket)!r})\n"
        "except PermissionError:\n"
        "    print('denied')\n"
        "else:\n"
        "    s.sendall(b'PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n')\n"
        "    print('connected', len(s.recv(9)))\n"
    )
    return as_user(user, "/usr/bin/python3", "-c", code)


def test_grpc_socket_is_group_rustai_0660(
    system_daemon: tuple[DaemonProcess, Path], users: Users
) -> None:
    _, socket = system_daemon
    st = socket.stat()
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_gid == users.rustai_gid
    member = _connect_as(users.member, socket)
    assert member.stdout.strip() == "connected 9", member.stderr  # the server's SETTINGS frame
    outsider = _connect_as(users.outsider, socket)
    assert outsider.stdout.strip() == "denied", outsider.stderr

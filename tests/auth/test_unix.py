"""Unix socket peers identified by their credentials (SO_PEERCRED, SO_PEERGROUPS),
through the daemon's relay: root and the daemon's user are administrators, so are
members of admin_group and admin_uids; members of the socket's group may use the
daemon; anyone else may only ask for its health. Clients run as other users (setpriv).

Needs root: it creates test groups and users (and removes them)."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from rustaid.api.v1 import generate_pb2, generate_pb2_grpc
from rustaid.testing.daemon import DaemonProcess, run_daemon
from tests.accounts import temporary_accounts
from tests.auth.conftest import rustaid_cmd
from tests.auth.probe import probe
from tests.conftest import add_model

PROBE = Path(__file__).with_name("probe.py")
SOCKET_GROUP, ADMIN_GROUP = "rustai-authsock", "rustai-authadm"
MEMBER, ADMIN, BY_UID = "rustai-auth-member", "rustai-auth-admin", "rustai-auth-byuid"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to create test users and run clients as them"
)


@dataclass(frozen=True)
class Users:
    member: pwd.struct_passwd  # in the socket's group
    admin: pwd.struct_passwd  # in the socket's group and admin_group
    by_uid: pwd.struct_passwd  # in the socket's group, listed in admin_uids
    socket_gid: int


@pytest.fixture(scope="module")
def users() -> Iterator[Users]:
    for tool in ("setpriv", "useradd", "groupadd"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (make system-deps installs it)")
    with temporary_accounts() as accounts:
        accounts.group(SOCKET_GROUP)
        accounts.group(ADMIN_GROUP)
        accounts.user(MEMBER, [SOCKET_GROUP])
        accounts.user(ADMIN, [SOCKET_GROUP, ADMIN_GROUP])
        accounts.user(BY_UID, [SOCKET_GROUP])
        yield Users(
            pwd.getpwnam(MEMBER),
            pwd.getpwnam(ADMIN),
            pwd.getpwnam(BY_UID),
            grp.getgrnam(SOCKET_GROUP).gr_gid,
        )


def as_user(
    user: pwd.struct_passwd | None, address: str, *calls: str, clear_groups: bool = False
) -> dict[str, tuple[str, str]]:
    """Run the probe as `user` (None: nobody, 65534, with no groups)."""
    if user is None:
        ids = ["--reuid=65534", "--regid=65534", "--clear-groups"]
    else:
        groups = "--clear-groups" if clear_groups else "--init-groups"
        ids = [f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", groups]
    r = subprocess.run(
        ["setpriv", *ids, "--", sys.executable, str(PROBE), address, *calls],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    return {x["call"]: (x["code"], x["details"]) for x in lines}


@dataclass
class Served:
    daemon: DaemonProcess
    socket: Path
    address: str


def _serve(
    tmp_path_factory: pytest.TempPathFactory,
    model_files: dict[str, Path],
    users: Users,
    mode: str,
) -> Iterator[Served]:
    data_dir = tmp_path_factory.mktemp("peercred")
    add_model(data_dir, model_files["tiny"])
    sock_dir = Path(tempfile.mkdtemp(prefix="rustaid-pc-", dir="/tmp"))
    sock_dir.chmod(0o755)  # others may enter; the socket's mode decides
    socket = sock_dir / "rustaid.sock"
    env = {
        "RUSTAID_PEER_CREDENTIALS": "1",
        "RUSTAID_SOCKET_GROUP": SOCKET_GROUP,
        "RUSTAID_SOCKET_MODE": mode,
        "RUSTAID_ADMIN_GROUP": ADMIN_GROUP,
        "RUSTAID_ADMIN_UIDS": str(users.by_uid.pw_uid),
    }
    try:
        with run_daemon(data_dir, "--listen", f"unix://{socket}", env=env) as daemon:
            yield Served(daemon, socket, f"unix://{socket}")
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def open_socket(
    tmp_path_factory: pytest.TempPathFactory, model_files: dict[str, Path], users: Users
) -> Iterator[Served]:
    """Socket mode 0666: anyone may connect, so the daemon's own checks decide."""
    yield from _serve(tmp_path_factory, model_files, users, "0o666")


def test_root_is_an_administrator(open_socket: Served) -> None:
    with grpc.insecure_channel(open_socket.address) as channel:
        got = {r["call"]: (r["code"], r["details"]) for r in probe(channel, ["reset_metrics",
               "load_plugin", "list_models"])}  # fmt: skip
    assert got["reset_metrics"] == ("OK", "reset")
    assert got["load_plugin"][0] == "NOT_FOUND"  # past authorisation
    assert got["list_models"] == ("OK", "tiny")


def test_group_member_may_use_the_daemon_but_not_change_it(
    open_socket: Served, users: Users
) -> None:
    got = as_user(
        users.member, open_socket.address, "health", "list_models", "generate", "reset_metrics",
        "load_plugin",
    )  # fmt: skip
    assert got["health"] == ("OK", "SERVING")
    assert got["list_models"] == ("OK", "tiny")
    assert got["generate"][0] == "OK"  # a stream, through the relay
    for call in ("reset_metrics", "load_plugin"):
        code, details = got[call]
        assert code == "PERMISSION_DENIED"
        assert f"uid {users.member.pw_uid} is not one" in details
        assert f"members of group '{ADMIN_GROUP}'" in details
        assert "admin_group or admin_uids" in details


def test_admin_group_member_and_admin_uid_are_administrators(
    open_socket: Served, users: Users
) -> None:
    for user in (users.admin, users.by_uid):
        got = as_user(user, open_socket.address, "reset_metrics", "load_plugin", "list_models")
        assert got["reset_metrics"] == ("OK", "reset"), user.pw_name
        assert got["load_plugin"][0] == "NOT_FOUND", user.pw_name
        assert got["list_models"] == ("OK", "tiny"), user.pw_name


def test_outsider_may_only_check_health(open_socket: Served) -> None:
    got = as_user(None, open_socket.address, "health", "reflection", "list_models", "reset_metrics")
    assert got["health"] == ("OK", "SERVING")
    assert got["reflection"][0] == "OK"
    code, details = got["list_models"]
    assert code == "PERMISSION_DENIED"
    assert f"uid 65534 is not a member of group '{SOCKET_GROUP}'" in details
    assert f"usermod -aG {SOCKET_GROUP} USER" in details
    assert got["reset_metrics"][0] == "PERMISSION_DENIED"


def test_groups_are_those_of_the_calling_process(open_socket: Served, users: Users) -> None:
    """SO_PEERGROUPS: a member's process that dropped its groups is not a member."""
    got = as_user(users.admin, open_socket.address, "list_models", clear_groups=True)
    assert got["list_models"][0] == "PERMISSION_DENIED"


def test_denials_are_logged_with_the_caller_and_no_secret(
    open_socket: Served, users: Users
) -> None:
    as_user(users.member, open_socket.address, "reset_metrics")
    log = open_socket.daemon.stderr()
    assert (
        f"denied /rustaid.api.v1.ResourcesService/ResetMetrics to uid {users.member.pw_uid}"
    ) in log


def test_socket_files_and_private_folder(open_socket: Served, users: Users) -> None:
    st = open_socket.socket.stat()
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o666
    assert st.st_gid == users.socket_gid
    private = open_socket.socket.parent / ".rustaid.sock.d"
    pst = private.stat()
    assert stat.S_IMODE(pst.st_mode) == 0o700 and pst.st_uid == os.geteuid()
    assert (private / "grpc.sock").is_socket()


def test_the_private_socket_reveals_no_identity(open_socket: Served) -> None:
    """Connecting behind the relay's back (only root or the daemon's user can) gets no
    identity: only health answers."""
    private = f"unix://{open_socket.socket.parent}/.rustaid.sock.d/grpc.sock"
    with grpc.insecure_channel(private) as channel:
        got = {r["call"]: (r["code"], r["details"]) for r in probe(channel, ["health",
               "list_models"])}  # fmt: skip
    assert got["health"] == ("OK", "SERVING")
    code, details = got["list_models"]
    assert code == "UNAUTHENTICATED"
    assert "did not come through" in details and str(open_socket.socket) in details
    got = as_user(None, private, "health")
    assert got["health"][0] == "UNAVAILABLE"  # the folder is closed to others


def _relay_names() -> set[str]:
    lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    return {line.split()[-1] for line in lines if "@rustaid-relay-" in line}


def test_relayed_connections_are_released(open_socket: Served, users: Users) -> None:
    before = _relay_names()
    as_user(users.member, open_socket.address, "list_models")
    deadline = time.monotonic() + 10
    while _relay_names() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _relay_names() - before


def test_large_messages_cross_the_relay_both_ways(open_socket: Served) -> None:
    text = "hello world " * 40_000  # 480 kB up, more than that back
    with grpc.insecure_channel(open_socket.address) as channel:
        stub = generate_pb2_grpc.GenerateServiceStub(channel)
        r = stub.Tokenize(generate_pb2.TokenizeRequest(model_id="tiny", text=text), timeout=60)
    assert len(r.token_ids) == len(r.pieces) >= 80_000
    assert "".join(r.pieces).strip() == text.strip()


def test_default_mode_keeps_outsiders_off_the_socket(
    tmp_path_factory: pytest.TempPathFactory, model_files: dict[str, Path], users: Users
) -> None:
    for served in _serve(tmp_path_factory, model_files, users, "0o660"):
        st = served.socket.stat()
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == users.socket_gid
        assert as_user(users.member, served.address, "list_models")["list_models"][0] == "OK"
        code, details = as_user(None, served.address, "health")["health"]
        assert code == "UNAVAILABLE" and "ermission denied" in details


def test_tokens_added_by_root_belong_to_the_daemons_user(users: Users) -> None:
    """`sudo rustaid token add` for the system service: the file goes to the owner of
    the configuration folder (the service's user), mode 0600, so the service can read it."""
    data_dir = Path(tempfile.mkdtemp(prefix="rustaid-tok-", dir="/tmp"))
    data_dir.chmod(0o755)
    config = data_dir / "config"
    config.mkdir()
    os.chown(config, users.member.pw_uid, -1)
    try:
        _add_as_root_and_read_as_member(data_dir, config, users)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def _add_as_root_and_read_as_member(data_dir: Path, config: Path, users: Users) -> None:
    r = rustaid_cmd("token", "add", "ci", "--user", "--data-dir", str(data_dir))
    assert r.returncode == 0, r.stderr
    st = (config / "tokens.json").stat()
    assert st.st_uid == users.member.pw_uid and stat.S_IMODE(st.st_mode) == 0o600
    read = subprocess.run(
        ["setpriv", f"--reuid={users.member.pw_uid}", f"--regid={users.member.pw_gid}",
         "--clear-groups", "cat", str(config / "tokens.json")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert read.returncode == 0 and '"name": "ci"' in read.stdout

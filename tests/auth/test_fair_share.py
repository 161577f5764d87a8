"""Fair shares of connections and requests: no client can lock another out.

Real daemons behind the peer-credentials relay, real users created by the test,
clients run as those users (setpriv): one group member holding idle connections keeps
only its share, other members and root still get through; with no per-client share,
the administrators' reserved connections still let root in. For a daemon's own user
(every app, for a user's own daemon) each process has its own share of requests.

Needs root: it creates test groups and users (and removes them)."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from rustaid.api.v1 import generate_pb2_grpc
from rustaid.auth.relay import FDS_KEPT, FDS_PER_CONNECTION, connection_limits
from rustaid.testing.daemon import DaemonProcess, run_daemon
from tests.accounts import temporary_accounts
from tests.auth.probe import probe
from tests.conftest import add_model
from tests.services.test_limits import (
    Limited,
    cancelling,
    error_of,
    free_port,
    long_stream,
    reason,
    short,
)

FLOOD = Path(__file__).with_name("flood.py")
SOCKET_GROUP = "rustai-fairsock"
FLOODER, OTHER = "rustai-fair-flood", "rustai-fair-other"
TOTAL, PER_CLIENT = 40, 8
RESERVED = 4  # a sixteenth of TOTAL, at least 4

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to create test users and run clients as them"
)


@dataclass(frozen=True)
class Users:
    flooder: pwd.struct_passwd
    other: pwd.struct_passwd


@pytest.fixture(scope="module")
def users() -> Iterator[Users]:
    for tool in ("setpriv", "useradd", "groupadd"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (make system-deps installs it)")
    with temporary_accounts() as accounts:
        accounts.group(SOCKET_GROUP)
        accounts.user(FLOODER, [SOCKET_GROUP])
        accounts.user(OTHER, [SOCKET_GROUP])
        yield Users(pwd.getpwnam(FLOODER), pwd.getpwnam(OTHER))


@contextlib.contextmanager
def serve(
    tmp: Path, model_files: dict[str, Path], per_client: int = PER_CLIENT
) -> Iterator[tuple[DaemonProcess, Path]]:
    add_model(tmp, model_files["tiny"])
    sock_dir = Path(tempfile.mkdtemp(prefix="rustaid-fair-", dir="/tmp"))
    sock_dir.chmod(0o755)
    socket_path = sock_dir / "rustaid.sock"
    env = {
        "RUSTAID_PEER_CREDENTIALS": "1",
        "RUSTAID_SOCKET_GROUP": SOCKET_GROUP,
        "RUSTAID_MAX_CONNECTIONS": str(TOTAL),
        "RUSTAID_MAX_CONNECTIONS_PER_CLIENT": str(per_client),
    }
    try:
        with run_daemon(tmp, "--listen", f"unix://{socket_path}", env=env) as daemon:
            yield daemon, socket_path
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


class Flood:
    """`count` idle connections held by `user` until closed."""

    def __init__(self, user: pwd.struct_passwd, socket_path: Path, count: int) -> None:
        self.proc = subprocess.Popen(
            ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
             "--", sys.executable, str(FLOOD), str(socket_path), str(count)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/",
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the flood ended early"
        self.kept = int(line)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@contextlib.contextmanager
def flood(user: pwd.struct_passwd, socket_path: Path, count: int) -> Iterator[Flood]:
    f = Flood(user, socket_path, count)
    try:
        yield f
    finally:
        f.close()


def as_user(user: pwd.struct_passwd, address: str, call: str = "list_models") -> tuple[str, str]:
    script = textwrap.dedent(
        """
        import json, sys, grpc
        sys.path.insert(0, sys.argv[3])
        from tests.auth.probe import probe
        with grpc.insecure_channel(sys.argv[1]) as channel:
            print(json.dumps(probe(channel, [sys.argv[2]])[0]))
        """
    )
    root = str(Path(__file__).resolve().parents[2])
    r = subprocess.run(
        ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
         "--", sys.executable, "-c", script, address, call, root],
        capture_output=True, text=True, timeout=120, cwd="/",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    return result["code"], result["details"]


def root_call(address: str) -> tuple[str, str]:
    with grpc.insecure_channel(address) as channel:
        got = probe(channel, ["list_models"])[0]
    return got["code"], got["details"]


def test_one_members_idle_connections_lock_nobody_out(
    tmp_path: Path, model_files: dict[str, Path], users: Users
) -> None:
    with serve(tmp_path, model_files) as (daemon, socket_path):
        address = f"unix://{socket_path}"
        with flood(users.flooder, socket_path, 3 * PER_CLIENT) as held:
            # Its share, no more: the rest were closed at once.
            assert held.kept == PER_CLIENT
            # Another member of the group, and root, are served meanwhile.
            assert as_user(users.other, address) == ("OK", "tiny")
            assert root_call(address) == ("OK", "tiny")
            # The flooder's own next connection is refused too (closed: UNAVAILABLE).
            code, _ = as_user(users.flooder, address)
            assert code == "UNAVAILABLE"
        assert "max_connections_per_client" in daemon.stderr()
        # Its connections closed, the flooder is served again.
        assert as_user(users.flooder, address) == ("OK", "tiny")


def test_administrators_keep_a_reserved_share(
    tmp_path: Path, model_files: dict[str, Path], users: Users
) -> None:
    with serve(tmp_path, model_files, per_client=0) as (daemon, socket_path):
        address = f"unix://{socket_path}"
        with flood(users.flooder, socket_path, 2 * TOTAL) as held:
            # Every connection but the administrators' share.
            assert held.kept == TOTAL - RESERVED
            code, _ = as_user(users.other, address)
            assert code == "UNAVAILABLE"  # the ordinary share is used up...
            assert root_call(address) == ("OK", "tiny")  # ...root's is not
        assert f"({RESERVED} more are kept for administrators)" in daemon.stderr()
        assert as_user(users.other, address) == ("OK", "tiny")


def test_processes_of_the_daemons_own_user_have_shares_of_their_own(
    tmp_path: Path, model_files: dict[str, Path]
) -> None:
    """A user's own daemon: one app holding its share of requests leaves the other apps
    theirs (they used to share one identity, "peer:unix:")."""
    add_model(tmp_path, model_files["slow"])
    add_model(tmp_path, model_files["tiny"])
    env = {"RUSTAID_MAX_REQUESTS_PER_CLIENT": "2"}
    with run_daemon(tmp_path, env=env) as daemon:
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_TWO_STREAMS, daemon.address],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            cwd=str(Path(__file__).resolve().parents[2]),
        )  # fmt: skip
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "holding"
            with grpc.insecure_channel(daemon.address) as channel:
                stub = generate_pb2_grpc.GenerateServiceStub(channel)
                # This process has a share of its own...
                assert stub.Generate(short("tiny"), timeout=60).usage.completion_tokens == 2
                # ...and its own limit.
                first = long_stream(stub).started()
                second = long_stream(stub).started()
                with cancelling(first, second):
                    with pytest.raises(grpc.RpcError) as info:
                        stub.Generate(short("tiny"), timeout=60)
                    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert f"/pid:{os.getpid()}:" in info.value.details()
        finally:
            assert holder.stdin is not None and holder.stdout is not None
            holder.stdin.close()
            holder.wait(60)
            holder.stdout.close()


# Another process of the same user holding its two requests (its whole share).
HOLD_TWO_STREAMS = textwrap.dedent(
    """
    import sys, threading, grpc
    sys.path.insert(0, ".")
    from rustaid.api.v1 import generate_pb2_grpc
    from tests.services.test_limits import long_stream
    channel = grpc.insecure_channel(sys.argv[1])
    stub = generate_pb2_grpc.GenerateServiceStub(channel)
    streams = [long_stream(stub).started(), long_stream(stub).started()]
    print("holding", flush=True)
    sys.stdin.read()
    for s in streams:
        s.cancel()
    channel.close()
    """
)


def test_the_connection_total_follows_the_open_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
        limits = connection_limits(32)
        # The open-file limit of a systemd unit by default: ~300 connections, not 1024.
        assert limits.total == (1024 - FDS_KEPT) // FDS_PER_CONNECTION
        assert limits.reserved == limits.total // 16
        assert limits.per_client == 32
        assert connection_limits(32, total=50).total == 50
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_administrators_keep_places_in_a_full_queue(
    tmp_path: Path, model_files: dict[str, Path]
) -> None:
    add_model(tmp_path, model_files["slow"])
    tcp = f"127.0.0.1:{free_port()}"
    env = {
        "RUSTAID_MAX_QUEUE_PER_MODEL": "8",
        "RUSTAID_ALLOW_INSECURE_TCP": "1",
        "RUSTAID_PARALLEL": "1",  # one request at a time: the others fill the queue
    }
    with run_daemon(tmp_path, "--listen", tcp, env=env) as daemon:
        limited = Limited(daemon, tcp)
        try:
            # Ordinary callers (each with a token of its own): one runs, seven wait.
            streams = [long_stream(limited.client()).running()]
            streams += [long_stream(limited.client()).started() for _ in range(7)]
            with cancelling(*streams):
                err = error_of(lambda: limited.client().Generate(short("slow")))
                assert reason(err) == "QUEUE_FULL"
                assert "has 7 requests waiting (limit 8, 1 kept for administrators)" in (
                    err.details()
                )
                # Root (on the Unix socket) still gets a place.
                root = long_stream(limited.client(daemon.address)).started()
                with cancelling(root):
                    assert root.positions() == [8]
        finally:
            for channel in limited.channels:
                channel.close()

"""TCP listeners: TLS with bearer tokens, TLS with client certificates (mTLS), plain TCP
on loopback when explicitly allowed, and the settings the daemon refuses to start with.
Real daemons, real gRPC clients, certificates made at test time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from rustaid.auth import tokens
from rustaid.testing.daemon import DaemonProcess, run_daemon
from tests.auth.conftest import free_port, rustaid_cmd, serve_once
from tests.auth.pki import Pki
from tests.auth.probe import probe
from tests.conftest import add_model


@dataclass
class TlsDaemon:
    daemon: DaemonProcess
    address: str
    token_file: Path
    tokens: dict[str, str]


def tls_channel(
    pki: Pki, address: str, token: str | None = None, cert: object | None = None
) -> grpc.Channel:
    kwargs: dict[str, bytes] = {}
    if cert is not None:
        kwargs = {
            "private_key": cert.key.read_bytes(),  # type: ignore[attr-defined]
            "certificate_chain": cert.cert.read_bytes(),  # type: ignore[attr-defined]
        }
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes(), **kwargs)
    if token is not None:
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(token)
        )
    return grpc.secure_channel(address, credentials)


def codes(channel: grpc.Channel, *calls: str) -> dict[str, tuple[str, str]]:
    return {r["call"]: (r["code"], r["details"]) for r in probe(channel, list(calls))}


@pytest.fixture(scope="module")
def token_daemon(
    tmp_path_factory: pytest.TempPathFactory, model_files: dict[str, Path], pki: Pki
) -> Iterator[TlsDaemon]:
    """TLS on 127.0.0.1, bearer tokens: `reader`, `admin` (admin) and `old` (expired)."""
    data_dir = tmp_path_factory.mktemp("tls-tokens")
    add_model(data_dir, model_files["tiny"])
    token_file = data_dir / "config" / "tokens.json"
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    made = {
        "reader": tokens.add_token(token_file, "reader")[0],
        "admin": tokens.add_token(token_file, "admin", admin=True)[0],
        "old": tokens.add_token(token_file, "old", expires=an_hour_ago)[0],
    }
    address = f"127.0.0.1:{free_port()}"
    env = {
        "RUSTAID_TLS_CERT": str(pki.server.cert),
        "RUSTAID_TLS_KEY": str(pki.server.key),
    }
    with run_daemon(data_dir, "--listen", address, env=env) as daemon:
        yield TlsDaemon(daemon, address, token_file, made)


def test_health_and_reflection_need_no_token(token_daemon: TlsDaemon, pki: Pki) -> None:
    with tls_channel(pki, token_daemon.address) as channel:
        got = codes(channel, "health", "reflection")
    assert got["health"] == ("OK", "SERVING")
    assert got["reflection"][0] == "OK"
    assert "rustaid.api.v1.GenerateService" in got["reflection"][1]


def test_no_token_is_unauthenticated_and_says_how_to_get_one(
    token_daemon: TlsDaemon, pki: Pki
) -> None:
    with tls_channel(pki, token_daemon.address) as channel:
        code, details = codes(channel, "list_models")["list_models"]
    assert code == "UNAUTHENTICATED"
    assert "authorization: Bearer TOKEN" in details
    assert "rustaid token add" in details


@pytest.mark.parametrize(
    ("token", "needle"),
    [
        ("rai_" + "x" * 43, "the token is not valid"),
        ("", ""),  # replaced by the expired token below
    ],
)
def test_wrong_and_expired_tokens_are_unauthenticated(
    token_daemon: TlsDaemon, pki: Pki, token: str, needle: str
) -> None:
    if not token:
        token, needle = token_daemon.tokens["old"], "token 'old' expired at"
    with tls_channel(pki, token_daemon.address, token) as channel:
        got = codes(channel, "list_models", "reset_metrics", "health")
    assert got["list_models"][0] == "UNAUTHENTICATED"
    assert needle in got["list_models"][1]
    assert got["reset_metrics"][0] == "UNAUTHENTICATED"
    assert got["health"] == ("OK", "SERVING")  # health stays open


def test_reader_token_may_use_but_not_administer(token_daemon: TlsDaemon, pki: Pki) -> None:
    with tls_channel(pki, token_daemon.address, token_daemon.tokens["reader"]) as channel:
        got = codes(channel, "list_models", "generate", "reset_metrics", "load_plugin")
    assert got["list_models"] == ("OK", "tiny")
    assert got["generate"][0] == "OK"
    for call in ("reset_metrics", "load_plugin"):
        code, details = got[call]
        assert code == "PERMISSION_DENIED"
        assert "reserved to administrators" in details
        assert "token 'reader' is not one" in details
        assert "rustaid token add NAME --admin" in details


def test_admin_token_may_administer(token_daemon: TlsDaemon, pki: Pki) -> None:
    with tls_channel(pki, token_daemon.address, token_daemon.tokens["admin"]) as channel:
        got = codes(channel, "reset_metrics", "load_plugin")
    assert got["reset_metrics"] == ("OK", "reset")
    assert got["load_plugin"][0] == "NOT_FOUND"  # past authorisation


def test_plain_client_cannot_talk_to_the_tls_listener(token_daemon: TlsDaemon) -> None:
    with grpc.insecure_channel(token_daemon.address) as channel:
        code, _ = codes(channel, "health")["health"]
    assert code == "UNAVAILABLE"


def test_tokens_added_and_revoked_take_effect_without_restart(
    token_daemon: TlsDaemon, pki: Pki
) -> None:
    data_dir = str(token_daemon.daemon.data_dir)
    r = rustaid_cmd("token", "add", "late", "--user", "--data-dir", data_dir)
    assert r.returncode == 0, r.stderr
    late = r.stdout.strip()
    assert late.startswith("rai_") and late not in token_daemon.token_file.read_text()
    with tls_channel(pki, token_daemon.address, late) as channel:
        assert codes(channel, "list_models")["list_models"] == ("OK", "tiny")
        r = rustaid_cmd("token", "remove", "late", "--user", "--data-dir", data_dir)
        assert r.returncode == 0, r.stderr
        code, details = codes(channel, "list_models")["list_models"]
    assert code == "UNAUTHENTICATED" and "not valid" in details


def test_a_token_file_made_readable_to_others_stops_all_tokens(
    token_daemon: TlsDaemon, pki: Pki
) -> None:
    path = token_daemon.token_file
    path.chmod(0o640)
    try:
        with tls_channel(pki, token_daemon.address, token_daemon.tokens["admin"]) as channel:
            code, details = codes(channel, "list_models")["list_models"]
        assert code == "UNAUTHENTICATED"
        assert "token file is unsafe or malformed" in details
        assert "chmod 600" in token_daemon.daemon.stderr()
    finally:
        path.chmod(0o600)
    with tls_channel(pki, token_daemon.address, token_daemon.tokens["admin"]) as channel:
        assert codes(channel, "list_models")["list_models"] == ("OK", "tiny")


def test_the_log_never_holds_a_token(token_daemon: TlsDaemon, pki: Pki) -> None:
    wrong = "rai_" + "w" * 43
    for token in (wrong, *token_daemon.tokens.values()):
        with tls_channel(pki, token_daemon.address, token) as channel:
            codes(channel, "list_models", "reset_metrics")
    log = token_daemon.daemon.stderr()
    assert "denied /rustaid.api.v1.ResourcesService/ResetMetrics to ipv4:127.0.0.1" in log
    for token in (wrong, *token_daemon.tokens.values()):
        assert token not in log
        assert token[4:20] not in log
    assert "bearer rai_" not in log.lower()


def test_rustaictl_with_tls_and_a_token_file(
    token_daemon: TlsDaemon, pki: Pki, tmp_path: Path
) -> None:
    token_path = tmp_path / "token"
    token_path.write_text(token_daemon.tokens["reader"] + "\n")
    token_path.chmod(0o600)
    base = [sys.executable, "-m", "rustaid_client.cli", "--address", token_daemon.address]
    base += ["--tls-ca", str(pki.ca)]
    env = {k: v for k, v in os.environ.items() if k != "RUSTAID_TOKEN"}

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*base, *args], capture_output=True, text=True, timeout=60, env={**env, **extra}
        )

    r = run("--token-file", str(token_path), "--json", "models", "list")
    assert r.returncode == 0, r.stderr
    assert "tiny" in r.stdout
    r = run("--json", "models", "list", RUSTAID_TOKEN=token_daemon.tokens["reader"])
    assert r.returncode == 0, r.stderr
    r = run("models", "list")
    assert r.returncode == 1
    assert "UNAUTHENTICATED" in r.stderr and "rustaid token add" in r.stderr
    r = run("--token-file", str(token_path), "plugins", "load", "nothing")
    assert r.returncode == 1 and "PERMISSION_DENIED" in r.stderr, r.stderr


def test_client_refuses_to_send_a_token_in_the_clear_to_another_host() -> None:
    from rustaid_client import Client

    with pytest.raises(ValueError, match="refusing to send a token without TLS"):
        Client("192.0.2.1:50051", token="rai_x")
    Client("127.0.0.1:1", token="rai_x").close()  # loopback: the daemon may allow it


# -- client certificates ------------------------------------------------------------------


@pytest.fixture(scope="module")
def mtls_address(
    tmp_path_factory: pytest.TempPathFactory, model_files: dict[str, Path], pki: Pki
) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("mtls")
    add_model(data_dir, model_files["tiny"])
    address = f"127.0.0.1:{free_port()}"
    env = {
        "RUSTAID_TLS_CERT": str(pki.server.cert),
        "RUSTAID_TLS_KEY": str(pki.server.key),
        "RUSTAID_TLS_CLIENT_CA": str(pki.ca),
        "RUSTAID_ADMIN_CERT_NAMES": "ops",
    }
    with run_daemon(data_dir, "--listen", address, env=env):
        yield address


def test_client_certificate_identifies_the_caller(mtls_address: str, pki: Pki) -> None:
    with tls_channel(pki, mtls_address, cert=pki.alice) as channel:
        got = codes(channel, "health", "list_models", "reset_metrics")
    assert got["health"] == ("OK", "SERVING")
    assert got["list_models"] == ("OK", "tiny")
    code, details = got["reset_metrics"]
    assert code == "PERMISSION_DENIED"
    assert "certificate 'alice' is not one" in details and "admin_cert_names" in details


def test_admin_certificate_may_administer(mtls_address: str, pki: Pki) -> None:
    with tls_channel(pki, mtls_address, cert=pki.ops) as channel:
        assert codes(channel, "reset_metrics")["reset_metrics"] == ("OK", "reset")


@pytest.mark.parametrize("which", ["expired", "foreign", "none"])
def test_bad_client_certificates_fail_the_handshake(
    mtls_address: str, pki: Pki, which: str
) -> None:
    cert = {"expired": pki.expired, "foreign": pki.foreign, "none": None}[which]
    with tls_channel(pki, mtls_address, cert=cert) as channel:
        got = codes(channel, "health", "list_models")
    # TLS refuses before any RPC exists: no gRPC status can be sent, not even health's
    # (with TLS 1.3 the client sees the connection close after its handshake).
    assert got["health"][0] == "UNAVAILABLE"
    assert got["list_models"][0] == "UNAVAILABLE"


def test_client_library_explains_an_expired_certificate(mtls_address: str, pki: Pki) -> None:
    from rustaid_client import Client

    with pytest.raises(ValueError, match=r"old-laptop.crt expired on .*ask for a new one"):
        Client(
            mtls_address,
            timeout=20,
            tls_ca=pki.ca,
            tls_cert=pki.expired.cert,
            tls_key=pki.expired.key,
        )
    with Client(
        mtls_address, timeout=20, tls_ca=pki.ca, tls_cert=pki.alice.cert, tls_key=pki.alice.key
    ) as ok:
        assert [m.id for m in ok.list_models().models] == ["tiny"]


# -- plain TCP on loopback ------------------------------------------------------------------


def test_plain_loopback_tcp_when_allowed(
    tmp_path: Path, model_files: dict[str, Path], pki: Pki
) -> None:
    add_model(tmp_path, model_files["tiny"])
    admin = tokens.add_token(tmp_path / "config" / "tokens.json", "admin", admin=True)[0]
    address = f"127.0.0.1:{free_port()}"
    env = {"RUSTAID_ALLOW_INSECURE_TCP": "1"}
    with run_daemon(tmp_path, "--listen", address, env=env) as daemon:
        with grpc.insecure_channel(address) as channel:
            got = codes(channel, "list_models", "reset_metrics")
        assert got["list_models"] == ("OK", "tiny")
        assert got["reset_metrics"][0] == "PERMISSION_DENIED"
        from rustaid_client import Client

        with Client(address, timeout=20, token=admin) as client:
            client.reset_metrics()
        assert "without TLS (allow_insecure_tcp)" in daemon.stderr()


# -- settings the daemon refuses -----------------------------------------------------------


def _refused(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    for needle in needles:
        assert needle in out, out


def test_plain_tcp_off_loopback_is_refused(tmp_path: Path) -> None:
    env = {"RUSTAID_ALLOW_INSECURE_TCP": "1"}
    r = serve_once(tmp_path, "--listen", f"0.0.0.0:{free_port()}", env=env)
    _refused(r, "needs TLS", "tls_cert and tls_key")
    assert r.returncode == 2


def test_plain_tcp_on_loopback_needs_allow_insecure_tcp(tmp_path: Path) -> None:
    r = serve_once(tmp_path, "--listen", f"127.0.0.1:{free_port()}")
    _refused(r, "plain TCP", "allow_insecure_tcp = true")


def test_tls_without_client_authentication_is_refused(tmp_path: Path, pki: Pki) -> None:
    env = {"RUSTAID_TLS_CERT": str(pki.server.cert), "RUSTAID_TLS_KEY": str(pki.server.key)}
    r = serve_once(tmp_path, "--listen", f"127.0.0.1:{free_port()}", env=env)
    _refused(r, "no client authentication", "tls_client_ca", "rustaid token add NAME")
    assert r.returncode == 1


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_token_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "config" / "tokens.json"
    tokens.add_token(path, "ci")
    path.chmod(mode)
    r = serve_once(tmp_path, "--listen", f"unix://{tmp_path}/s.sock")
    _refused(r, f"token_file {path} has mode {mode:04o}", f"chmod 600 {path}")


@pytest.mark.parametrize(
    ("env", "needles"),
    [
        ({"RUSTAID_TLS_CERT": "/nonexistent.pem"}, ("set tls_key too",)),
        ({"RUSTAID_TLS_CLIENT_CA": "/ca.pem"}, ("tls_client_ca needs TLS",)),
        ({"RUSTAID_ADMIN_GROUP": "no-such-group-here"}, ("admin_group", "does not exist")),
        ({"RUSTAID_ADMIN_UIDS": "1000,x"}, ("RUSTAID_ADMIN_UIDS",)),
    ],
)
def test_bad_security_settings_name_the_key(
    tmp_path: Path, env: dict[str, str], needles: tuple[str, ...]
) -> None:
    r = serve_once(tmp_path, "--listen", f"unix://{tmp_path}/s.sock", env=env)
    _refused(r, *needles)


def test_world_readable_tls_key_is_refused(tmp_path: Path, pki: Pki) -> None:
    key = tmp_path / "server.key"
    key.write_bytes(pki.server.key.read_bytes())
    key.chmod(0o644)
    env = {
        "RUSTAID_TLS_CERT": str(pki.server.cert),
        "RUSTAID_TLS_KEY": str(key),
        "RUSTAID_TLS_CLIENT_CA": str(pki.ca),
    }
    r = serve_once(tmp_path / "d", "--listen", f"127.0.0.1:{free_port()}", env=env)
    _refused(r, "tls_key", "accessible to every user", f"chmod 600 {key}")


def test_mismatched_or_expired_server_certificate_is_refused(tmp_path: Path, pki: Pki) -> None:
    base = {"RUSTAID_TLS_CLIENT_CA": str(pki.ca)}
    listen = ("--listen", f"127.0.0.1:{free_port()}")
    env = {**base, "RUSTAID_TLS_CERT": str(pki.server.cert), "RUSTAID_TLS_KEY": str(pki.ops.key)}
    _refused(serve_once(tmp_path / "a", *listen, env=env), "does not belong to the certificate")
    env = {
        **base,
        "RUSTAID_TLS_CERT": str(pki.expired.cert),
        "RUSTAID_TLS_KEY": str(pki.expired.key),
    }
    _refused(serve_once(tmp_path / "b", *listen, env=env), "tls_cert", "expired on", "renew it")


def test_token_json_format(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    token, entry = tokens.add_token(path, "ci", admin=True)
    doc = json.loads(path.read_text())
    assert doc["version"] == 1
    assert doc["tokens"][0]["sha256"] == tokens.token_hash(token)
    assert token not in path.read_text()
    assert entry.admin and (path.stat().st_mode & 0o777) == 0o600
    store = tokens.TokenStore(path)
    store.load()
    assert store.check(token).entry == tokens.read_entries(path)[0]
    assert store.check(token + "x").problem == "unknown"
    time.sleep(0.01)
    tokens.remove_token(path, "ci")
    assert store.check(token).problem == "unknown"  # re-read on change

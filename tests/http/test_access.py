"""Who may call the HTTP API: the Host check (DNS rebinding), browser origins (CORS),
bearer tokens from the token file, and the Unix socket's permissions."""

from __future__ import annotations

import ssl
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from rustaid.auth.tokens import add_token
from rustaid.testing.daemon import run_daemon
from tests.http.conftest import ORIGIN, HttpDaemon
from tests.rag.conftest import write_config


@pytest.mark.parametrize("host", ["evil.example", "127.0.0.1.nip.io:8080", "attacker:80"])
def test_a_foreign_host_header_is_refused(http_daemon: HttpDaemon, host: str) -> None:
    reply = httpx.get(http_daemon.v1 + "/models", headers={"host": host})
    assert reply.status_code == 403
    assert "http_allowed_hosts" in reply.json()["error"]["message"]


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "localhost:1234"])
def test_local_host_names_are_accepted(http_daemon: HttpDaemon, host: str) -> None:
    assert httpx.get(http_daemon.v1 + "/models", headers={"host": host}).status_code == 200


def test_pages_of_other_origins_are_refused(http_daemon: HttpDaemon) -> None:
    reply = httpx.get(http_daemon.v1 + "/models", headers={"origin": "https://evil.example"})
    assert reply.status_code == 403
    assert "http_cors_origins" in reply.json()["error"]["message"]
    # Ollama's routes answer in Ollama's shape.
    ollama = httpx.get(http_daemon.url + "/api/tags", headers={"origin": "https://x.example"})
    assert ollama.status_code == 403 and isinstance(ollama.json()["error"], str)


def test_a_listed_origin_gets_cors_headers_and_preflight(http_daemon: HttpDaemon) -> None:
    preflight = httpx.options(
        http_daemon.v1 + "/chat/completions",
        headers={
            "origin": ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type, x-stainless-os",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "x-stainless-os" in preflight.headers["access-control-allow-headers"]
    reply = httpx.get(http_daemon.v1 + "/models", headers={"origin": ORIGIN})
    assert reply.status_code == 200
    assert reply.headers["access-control-allow-origin"] == ORIGIN


def test_without_an_origin_no_cors_headers_are_sent(http_daemon: HttpDaemon) -> None:
    reply = httpx.get(http_daemon.v1 + "/models")
    assert "access-control-allow-origin" not in reply.headers


@pytest.fixture(scope="module")
def token_daemon(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[HttpDaemon, str, Path]]:
    """A daemon with a token file and a second HTTP listener on a Unix socket."""
    data_dir = tmp_path_factory.mktemp("http-tokens")
    token, _ = add_token(data_dir / "config" / "tokens.json", "ci")
    sock = Path(tempfile.mkdtemp(prefix="rustaid-http-", dir="/tmp")) / "http.sock"
    write_config(data_dir, f'http_listen = ["127.0.0.1:0", "unix://{sock}"]\n')
    with run_daemon(data_dir) as daemon:
        yield HttpDaemon(daemon, daemon.http_url()), token, sock


def test_with_a_token_file_a_valid_token_is_required(
    token_daemon: tuple[HttpDaemon, str, Path],
) -> None:
    served, token, _ = token_daemon
    for key in ("unused", token[:-2] + "xx"):
        client = openai.OpenAI(base_url=served.v1, api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as info:
            client.models.list()
        assert "rustaid token add" in info.value.message
    missing = httpx.get(served.v1 + "/models")
    assert missing.status_code == 401 and "Bearer" in missing.json()["error"]["message"]
    good = openai.OpenAI(base_url=served.v1, api_key=token, max_retries=0)
    assert good.models.list().data == []
    log = served.daemon.stderr()
    assert token not in log and "refused" in log


def test_the_unix_socket_listener_has_the_socket_mode(
    token_daemon: tuple[HttpDaemon, str, Path],
) -> None:
    _, _, sock = token_daemon
    assert stat.S_IMODE(sock.stat().st_mode) == 0o660
    # Who can open the socket may call (no token needed), whatever Host it sends.
    transport = httpx.HTTPTransport(uds=str(sock))
    with httpx.Client(transport=transport, base_url="http://rustaid") as client:
        reply = client.get("/api/version")
    assert reply.status_code == 200 and reply.json()["version"]


def test_tls_listener_with_the_grpc_certificate(tmp_path: Path) -> None:
    """With tls_cert, TCP listeners speak HTTPS; the openai SDK trusts the daemon's CA."""
    from tests.auth.pki import make_pki

    pki = make_pki(tmp_path / "pki")
    data = tmp_path / "data"
    token, _ = add_token(data / "config" / "tokens.json", "laptop")
    write_config(
        data,
        'http_listen = ["127.0.0.1:0"]\n'
        f'tls_cert = "{pki.server.cert}"\ntls_key = "{pki.server.key}"\n',
    )
    with run_daemon(data) as daemon:
        url = daemon.http_url()
        assert url.startswith("https://127.0.0.1:")
        with httpx.Client(verify=ssl.create_default_context(cafile=pki.ca)) as http:
            client = openai.OpenAI(base_url=url + "/v1", api_key=token, http_client=http)
            assert client.models.list().data == []
        with pytest.raises(httpx.TransportError):  # plain HTTP is not spoken there
            httpx.get(url.replace("https://", "http://") + "/v1/models", timeout=5)

"""The HTTP settings and request bodies, checked before anything listens."""

from __future__ import annotations

from pathlib import Path

import pytest

from rustaid.addresses import HttpAddress, parse_http_address
from rustaid.config import load_settings
from rustaid.errors import InvalidArgument
from rustaid.http.body import parse_json_object
from rustaid.http.generation import keep_alive_s


def settings(tmp_path: Path, **values: object) -> object:
    return load_settings(data_dir=tmp_path, system=False, overrides=values, environ={})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:11435", HttpAddress(host="127.0.0.1", port=11435)),
        ("localhost:0", HttpAddress(host="127.0.0.1", port=0)),
        ("[::1]:8080", HttpAddress(host="::1", port=8080)),
        ("unix:///run/rustaid/http.sock", HttpAddress(path=Path("/run/rustaid/http.sock"))),
    ],
)
def test_addresses(value: str, expected: HttpAddress) -> None:
    assert parse_http_address(value) == expected


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("8080", "HOST:PORT"),
        ("example.com:80", "not a host name"),
        ("127.0.0.1:99999", "port number"),
        ("::1:80", "brackets"),
        ("unix:relative.sock", "absolute"),
    ],
)
def test_bad_addresses_name_the_setting(value: str, says: str) -> None:
    with pytest.raises(InvalidArgument, match=says) as info:
        parse_http_address(value)
    assert info.value.field == "http_listen"


def test_off_by_default_and_beyond_loopback_needs_tls(tmp_path: Path) -> None:
    assert settings(tmp_path).http_listen == ()  # type: ignore[attr-defined]
    with pytest.raises(InvalidArgument, match="needs TLS") as info:
        settings(tmp_path, http_listen=["0.0.0.0:11435"])
    assert info.value.field == "tls_cert"
    ok = settings(tmp_path, http_listen="127.0.0.1:11435,unix:///tmp/h.sock")
    assert ok.http_listen == ("127.0.0.1:11435", "unix:///tmp/h.sock")  # type: ignore[attr-defined]


@pytest.mark.parametrize("origin", ["*", "localhost:3000", "http://x.example/app", "ftp://x"])
def test_cors_origins_must_be_origins(tmp_path: Path, origin: str) -> None:
    with pytest.raises(InvalidArgument, match="http_cors_origins"):
        settings(tmp_path, http_cors_origins=[origin])


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1]", "an array"),
        (b"null", "null"),
        (b"[" * 100_000, "not valid JSON"),
    ],
)
def test_bodies_that_are_not_json_objects(body: bytes, says: str) -> None:
    with pytest.raises(InvalidArgument, match=says):
        parse_json_object(body)


def test_fields_are_typed_and_named() -> None:
    body = parse_json_object(b'{"n": true, "t": 1e400, "o": {"x": "1"}, "s": ["a", 2]}')
    with pytest.raises(InvalidArgument, match="n must be an integer, not a boolean"):
        body.integer("n")
    with pytest.raises(InvalidArgument, match="finite"):
        body.number("t")
    inner = body.object("o")
    assert inner is not None
    with pytest.raises(InvalidArgument) as info:
        inner.integer("x")
    assert info.value.field == "o.x"
    with pytest.raises(InvalidArgument, match="array of strings"):
        body.strings("s")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        (0, 0.0),
        ("5m", 300.0),
        ("30s", 30.0),
        ("1h", 3600.0),
        (-1, -1.0),
        ("-5m", -1.0),
    ],
)
def test_keep_alive(value: object, seconds: float | None) -> None:
    assert keep_alive_s(value, "keep_alive") == seconds


@pytest.mark.parametrize("value", ["soon", True, "5 minutes", [1]])
def test_bad_keep_alive(value: object) -> None:
    with pytest.raises(InvalidArgument, match="duration like '5m'"):
        keep_alive_s(value, "keep_alive")


def test_the_http_stack_is_not_imported_by_the_daemon() -> None:
    """Starlette and uvicorn load only when http_listen is set (rustaid.http.server)."""
    import subprocess
    import sys

    code = (
        "import sys, rustaid.cli, rustaid.daemon, rustaid.config; "
        "print(sorted(m for m in ('starlette', 'uvicorn', 'rustaid.http.server') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

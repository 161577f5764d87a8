"""The built-in tools through the executor: datetime, unit_convert, device_status,
rag_search, and http_get against a real HTTP server on loopback."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from rustaid.errors import InvalidArgument, PreconditionFailed
from rustaid.tools.clock import DateTime
from rustaid.tools.device import DeviceStatus
from rustaid.tools.rag import RagSearch
from rustaid.tools.registry import ToolCallStatus, ToolRegistry
from rustaid.tools.units import UnitConvert
from rustaid.tools.web import HttpGet
from tests.tools.test_registry import registry_of


async def run(registry: ToolRegistry, name: str, args: dict[str, Any], **kw: Any) -> Any:
    out = await registry.execute(name, json.dumps(args), **kw)
    assert out.status is ToolCallStatus.OK, out.error
    return json.loads(out.output_json)


async def error_of(registry: ToolRegistry, name: str, args: dict[str, Any]) -> str:
    out = await registry.execute(name, json.dumps(args))
    assert out.status is ToolCallStatus.ERROR
    return out.error


@pytest.fixture
def registry(tmp_path: Path) -> ToolRegistry:
    return registry_of(tmp_path, DateTime(), UnitConvert(), DeviceStatus(), RagSearch())


# --------------------------------------------------------------------------- datetime


async def test_datetime_converts_between_zones(registry: ToolRegistry) -> None:
    out = await run(
        registry,
        "datetime",
        {"time": "2024-07-01T09:30", "from_timezone": "Europe/Paris",
         "to_timezone": "America/New_York"},
    )  # fmt: skip
    assert out["iso"] == "2024-07-01T03:30:00-04:00"
    assert out["utc_offset"] == "-04:00" and out["abbreviation"] == "EDT" and out["dst"]
    assert out["weekday"] == "Monday" and out["unix"] == 1719819000
    winter = await run(registry, "datetime", {"time": "2024-01-15T12:00:00+00:00",
                                              "to_timezone": "Asia/Kolkata"})  # fmt: skip
    assert winter["iso"] == "2024-01-15T17:30:00+05:30"


async def test_datetime_now_is_now(registry: ToolRegistry) -> None:
    out = await run(registry, "datetime", {})
    assert out["timezone"] == "UTC" and out["utc_offset"] == "+00:00"
    assert abs(out["unix"] - time.time()) < 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"to_timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"to_timezone": "../../etc/passwd"}, "is not a time zone name"),
        ({"time": "yesterday"}, "is not an ISO 8601 date-time"),
        ({"time": "2024-01-01T00:00", "from_timezone": "Nowhere"}, "unknown time zone"),
    ],
)
async def test_datetime_refuses_bad_input(
    registry: ToolRegistry, args: dict[str, Any], message: str
) -> None:
    assert message in await error_of(registry, "datetime", args)


# ----------------------------------------------------------------------- unit_convert


@pytest.mark.parametrize(
    ("value", "source", "target", "expected"),
    [
        (1, "mi", "km", 1.609344),
        (100, "C", "F", 212),
        (-40, "F", "C", -40),
        (0, "K", "C", -273.15),
        (1, "GiB", "MB", 1073.741824),
        (90, "km/h", "m/s", 25),
        (1, "kWh", "J", 3.6e6),
        (180, "deg", "rad", 3.14159265359),
    ],
)
async def test_unit_convert(
    registry: ToolRegistry, value: float, source: str, target: str, expected: float
) -> None:
    out = await run(registry, "unit_convert", {"value": value, "from": source, "to": target})
    assert out["value"] == pytest.approx(expected)
    assert out["unit"] == target


async def test_unit_convert_refuses_mismatched_dimensions(registry: ToolRegistry) -> None:
    message = await error_of(registry, "unit_convert", {"value": 1, "from": "kg", "to": "m"})
    assert "cannot convert mass (kg) to length (m)" in message
    message = await error_of(registry, "unit_convert", {"value": -300, "from": "C", "to": "K"})
    assert "below absolute zero" in message
    with pytest.raises(InvalidArgument, match="'parsec' is not one of"):
        await registry.execute("unit_convert", '{"value": 1, "from": "parsec", "to": "m"}')


# --------------------------------------------------------------------- device_status


async def test_device_status_without_a_daemon_reads_psutil(registry: ToolRegistry) -> None:
    import psutil

    out = await run(registry, "device_status", {})
    assert out["source"] == "psutil"
    assert out["memory"]["total_bytes"] == psutil.virtual_memory().total
    assert out["cpu"]["logical_cores"] == psutil.cpu_count()


# ------------------------------------------------------------------------- rag_search


async def test_rag_search_without_rag_is_unavailable(registry: ToolRegistry) -> None:
    with pytest.raises(PreconditionFailed, match="RAG not available") as info:
        await registry.execute("rag_search", '{"collection": "docs", "query": "hello"}')
    assert info.value.reason == "RAG_NOT_AVAILABLE"


# --------------------------------------------------------------------------- http_get


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        port = self.server.server_address[1]
        if self.path == "/hello":
            self._send(200, b"hello \xc3\xa9t\xc3\xa9", "text/plain; charset=utf-8")
        elif self.path == "/big":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            chunk = b"x" * 65536
            try:
                for _ in range(160):  # 10 MiB
                    self.wfile.write(chunk)
            except OSError:
                pass  # the client stopped reading: that is the point
        elif self.path == "/slow":
            time.sleep(3)
            self._send(200, b"late", "text/plain")
        elif self.path == "/to-hello":
            self._redirect(f"http://127.0.0.1:{port}/hello")
        elif self.path == "/to-elsewhere":
            self._redirect("http://198.51.100.7/secret")
        elif self.path == "/binary":
            self._send(200, bytes(range(8)), "application/octet-stream")
        else:
            self._send(404, b"not here", "text/plain")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(OSError):  # the client gave up (the /slow case)
            self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture(scope="module")
def web() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def web_registry(tmp_path: Path, web: str, extra: str = "") -> ToolRegistry:
    port = web.rsplit(":", 1)[1]
    return registry_of(
        tmp_path,
        HttpGet(),
        toml=f"""
        [tools]
        enable = ["http_get"]

        [tools.http_get]
        allow_hosts = ["127.0.0.1:{port}"]
        max_bytes = 100000
        timeout_s = 1
        {extra}
        """,
    )


async def test_http_get_is_off_by_default(tmp_path: Path) -> None:
    registry = registry_of(tmp_path, HttpGet())
    with pytest.raises(PreconditionFailed, match="off by default"):
        await registry.execute("http_get", '{"url": "http://127.0.0.1/"}')
    enabled = registry_of(tmp_path / "b", HttpGet(), toml='[tools]\nenable = ["http_get"]\n')
    with pytest.raises(PreconditionFailed, match="no allowed hosts"):
        await enabled.execute("http_get", '{"url": "http://127.0.0.1/"}')


async def test_http_get_fetches_from_an_allowed_host(tmp_path: Path, web: str) -> None:
    registry = web_registry(tmp_path, web)
    out = await run(registry, "http_get", {"url": f"{web}/hello"})
    assert out["status"] == 200 and out["body"] == "hello été" and not out["truncated"]
    out = await run(registry, "http_get", {"url": f"{web}/to-hello"})
    assert out["url"] == f"{web}/hello" and out["body"] == "hello été"
    out = await run(registry, "http_get", {"url": f"{web}/binary"})
    assert out["body_base64"] == "AAECAwQFBgc="
    out = await run(registry, "http_get", {"url": f"{web}/missing"})
    assert out["status"] == 404


async def test_http_get_cuts_a_huge_body(tmp_path: Path, web: str) -> None:
    registry = web_registry(tmp_path, web)
    out = await run(registry, "http_get", {"url": f"{web}/big"})
    assert out["truncated"] and out["bytes"] == 100000 and len(out["body"]) == 100000


async def test_http_get_gives_up_on_a_slow_server(tmp_path: Path, web: str) -> None:
    registry = web_registry(tmp_path, web)
    t0 = time.monotonic()
    message = await error_of(registry, "http_get", {"url": f"{web}/slow"})
    assert "no answer within 1 s" in message
    assert time.monotonic() - t0 < 2.5


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("http://127.0.0.1:1/", "host 127.0.0.1:1 is not allowed"),
        ("http://localhost:{port}/hello", "host localhost:{port} is not allowed"),
        ("{web}/to-elsewhere", "host 198.51.100.7:80 is not allowed"),
        ("ftp://127.0.0.1:{port}/", "only http and https"),
        ("http://user:pw@127.0.0.1:{port}/hello", "credentials are not allowed"),
        ("file:///etc/passwd", "only http and https"),
    ],
)
async def test_http_get_refuses_what_is_not_allowed(
    tmp_path: Path, web: str, path: str, message: str
) -> None:
    port = web.rsplit(":", 1)[1]
    registry = web_registry(tmp_path, web)
    url = path.format(web=web, port=port)
    assert message.format(port=port) in await error_of(registry, "http_get", {"url": url})


async def test_http_get_checks_the_address_a_name_resolves_to(tmp_path: Path, web: str) -> None:
    # "localhost" is allowed by name, but it resolves to the daemon's own machine.
    port = web.rsplit(":", 1)[1]
    allowed = f'allow_hosts = ["localhost:{port}", "127.0.0.1:1"]'
    registry = registry_of(
        tmp_path,
        HttpGet(),
        toml=f'[tools]\nenable = ["http_get"]\n[tools.http_get]\n{allowed}\n',
    )
    message = await error_of(registry, "http_get", {"url": f"http://localhost:{port}/hello"})
    assert "host localhost resolves to 127.0.0.1, a loopback address" in message
    assert "list 127.0.0.1 (or set allow_private = true)" in message
    # Listing the address itself (any port here would not do) or allow_private opens it.
    listed = registry_of(
        tmp_path / "listed",
        HttpGet(),
        toml=f'[tools]\nenable = ["http_get"]\n[tools.http_get]\n'
        f'allow_hosts = ["localhost:{port}", "127.0.0.1:{port}"]\n',
    )
    out = await run(listed, "http_get", {"url": f"http://localhost:{port}/hello"})
    assert out["body"] == "hello été"
    private = registry_of(
        tmp_path / "private",
        HttpGet(),
        toml=f'[tools]\nenable = ["http_get"]\n[tools.http_get]\n'
        f'allow_hosts = ["localhost:{port}"]\nallow_private = true\n',
    )
    out = await run(private, "http_get", {"url": f"http://localhost:{port}/hello"})
    assert out["status"] == 200

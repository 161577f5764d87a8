"""Listen-address settings (`metrics_listen`, `http_listen`): one HOST:PORT parser, one
set of messages. Checked when the settings load, so this module imports nothing heavy
and nothing from the subsystems that listen."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rustaid.errors import InvalidArgument


def is_loopback_host(host: str) -> bool:
    """localhost or a loopback IP address; any other host name may resolve anywhere."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_ip_port(
    value: str, bad: Callable[[str], InvalidArgument], example_port: int
) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """An IP address (or localhost, as 127.0.0.1; IPv6 in brackets) and a port 0-65535;
    `bad(why)` builds the error that names the setting."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise bad("must be HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise bad(f"must put an IPv6 address in brackets, as in [::1]:{example_port}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise bad("must end with a port number from 0 to 65535")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise bad("must be an IP address or localhost, not a host name") from None
    return address, int(port_text)


METRICS_KEY = "metrics_listen"
METRICS_EXAMPLE = "127.0.0.1:9464"


def parse_metrics_listen(value: str) -> tuple[str, int] | None:
    """(host, port) to bind, None when off; InvalidArgument naming the key otherwise.

    Only loopback addresses are accepted (127.0.0.0/8, ::1 as "[::1]:PORT", or
    "localhost", bound as 127.0.0.1): the metrics tell which models are used, how often
    and when, so they stay on this machine. Port 0 picks a free port (logged)."""
    if not value:
        return None

    def bad(why: str) -> InvalidArgument:
        return InvalidArgument(
            f"{METRICS_KEY} {why} (got {value!r}); use a loopback address such as "
            f'{METRICS_EXAMPLE}, or "" to turn the metrics endpoint off',
            field=METRICS_KEY,
        )

    address, port = parse_ip_port(value, bad, 9464)
    if not address.is_loopback:
        raise bad(
            "must be a loopback address: the metrics reveal how the daemon is used, "
            "so they are served to this machine only"
        )
    return str(address), port


HTTP_KEY = "http_listen"
HTTP_EXAMPLE = "127.0.0.1:11435"


@dataclass(frozen=True)
class HttpAddress:
    # A Unix socket path, or a TCP host and port (port 0: a free port, logged).
    path: Path | None = None
    host: str = ""
    port: int = 0

    @property
    def loopback(self) -> bool:
        return self.path is None and ipaddress.ip_address(self.host).is_loopback

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix://{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_http_address(value: str) -> HttpAddress:
    """One address: "unix:///path", "HOST:PORT" with an IP address or localhost, or
    "[::1]:PORT"; InvalidArgument naming the key otherwise."""

    def bad(why: str) -> InvalidArgument:
        return InvalidArgument(
            f"{HTTP_KEY} address {value!r} {why}; use e.g. {HTTP_EXAMPLE!r} or "
            "'unix:///path/http.sock'",
            field=HTTP_KEY,
        )

    if value.startswith("unix:"):
        path = value.removeprefix("unix://") if value.startswith("unix://") else value[5:]
        if not path.startswith("/"):
            raise bad("must name an absolute socket path")
        return HttpAddress(path=Path(path))
    address, port = parse_ip_port(value, bad, 11435)
    return HttpAddress(host=str(address), port=port)


def parse_http_listen(values: tuple[str, ...], *, tls: bool) -> list[HttpAddress]:
    """Every address of the setting. TCP beyond loopback needs TLS, as gRPC does."""
    addresses = [parse_http_address(v) for v in values]
    for a in addresses:
        if a.path is None and not a.loopback and not tls:
            raise InvalidArgument(
                f"{HTTP_KEY} address {str(a)!r} is reachable from other machines and needs TLS: "
                "set tls_cert and tls_key (and create tokens with `rustaid token add NAME`), "
                "or listen on 127.0.0.1",
                field="tls_cert",
            )
    return addresses

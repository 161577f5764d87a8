"""The `metrics_listen` setting: a loopback HOST:PORT, or "" for no metrics endpoint.

Kept apart from the exporter so that checking the setting imports nothing heavy."""

from __future__ import annotations

import ipaddress

from rustaid.errors import InvalidArgument

KEY = "metrics_listen"
EXAMPLE = "127.0.0.1:9464"


def parse_metrics_listen(value: str) -> tuple[str, int] | None:
    """(host, port) to bind, None when off; InvalidArgument naming the key otherwise.

    Only loopback addresses are accepted (127.0.0.0/8, ::1 as "[::1]:PORT", or
    "localhost", bound as 127.0.0.1): the metrics tell which models are used, how often
    and when, so they stay on this machine. Port 0 picks a free port (logged)."""
    if not value:
        return None

    def bad(why: str) -> InvalidArgument:
        return InvalidArgument(
            f"{KEY} {why} (got {value!r}); use a loopback address such as {EXAMPLE}, "
            'or "" to turn the metrics endpoint off',
            field=KEY,
        )

    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise bad("must be HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise bad("must put an IPv6 address in brackets, as in [::1]:9464")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise bad("must end with a port number from 0 to 65535")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise bad("must be an IP address or localhost, not a host name") from None
    if not address.is_loopback:
        raise bad(
            "must be a loopback address: the metrics reveal how the daemon is used, "
            "so they are served to this machine only"
        )
    return str(address), int(port_text)

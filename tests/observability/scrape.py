"""Scraping a daemon's metrics endpoint over real HTTP, the way Prometheus does."""

from __future__ import annotations

import gzip
import http.client
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from rustaid.testing.daemon import DaemonProcess

ADDRESS_LINE = re.compile(r"Prometheus metrics on http://([0-9.]+|\[[0-9a-f:]+\]):(\d+)/metrics")


def metrics_port(daemon: DaemonProcess) -> int:
    """The port a daemon configured with port 0 reports in its log."""
    found = ADDRESS_LINE.search(daemon.stderr())
    assert found, f"no metrics address in the log:\n{daemon.stderr()[-2000:]}"
    return int(found.group(2))


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def get(
    port: int, path: str = "/metrics", *, method: str = "GET", headers: dict[str, str] | None = None
) -> Response:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


class Scrape:
    """One parsed scrape: samples by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples: list[Sample] = [s for f in self.families.values() for s in f.samples]

    def value(self, name: str, **labels: str) -> float | None:
        """The sample `name` whose labels include `labels` (None when absent)."""
        hits = [
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]
        assert len(hits) <= 1, f"{name} {labels}: {len(hits)} samples match"
        return hits[0] if hits else None

    def get(self, name: str, **labels: str) -> float:
        """Like value(), with 0 for a series that does not exist yet."""
        v = self.value(name, **labels)
        return 0.0 if v is None else v

    def label_values(self, label: str) -> set[str]:
        return {s.labels[label] for s in self.samples if label in s.labels}


def scrape(port: int) -> Scrape:
    r = get(port, headers={"Accept-Encoding": "gzip"})
    assert r.status == 200, r
    body = gzip.decompress(r.body) if r.headers.get("content-encoding") == "gzip" else r.body
    return Scrape(body.decode())


def eventually(port: int, check: Callable[[Scrape], bool], within: float = 10.0) -> Scrape:
    """Scrape until `check` holds (server-side counts land just after the client's
    call returns)."""
    deadline = time.monotonic() + within
    while True:
        s = scrape(port)
        if check(s):
            return s
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s; last scrape:\n{s.text}")
        time.sleep(0.05)

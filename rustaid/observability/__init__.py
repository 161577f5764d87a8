"""What operators watch: opt-in Prometheus metrics served on loopback (see
docs/metrics.md). Nothing here is imported unless `metrics_listen` is set, except the
light address check the settings use."""

from __future__ import annotations

from typing import Any


def metrics_interceptors(daemon: Any) -> list[Any]:
    """The gRPC server interceptors the metrics need: [] while they are off."""
    exporter = getattr(daemon, "prometheus", None)
    return [] if exporter is None else [exporter.interceptor]

"""What operators watch: opt-in Prometheus metrics served on loopback (see
docs/metrics.md). Nothing here is imported unless `metrics_listen` is set."""

"""Logging to stderr, in journald's format when running under systemd."""

from __future__ import annotations

import logging
import os
import sys

# syslog priorities, which journald reads from a "<N>" line prefix.
_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        # One journal entry per line: prefix each line of tracebacks too.
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):  # journald adds its own timestamps
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party debug chatter (one line per grpc call) drowns our own debug output.
    for noisy in ("grpc", "asyncio"):
        logging.getLogger(noisy).setLevel(max(root.level, logging.INFO))

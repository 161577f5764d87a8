"""Run a real daemon for tests and examples: as a child process, or in this event loop."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rustaid.config import Settings, load_settings


@dataclass
class DaemonProcess:
    """A `rustaid serve` child process; `notifications` holds what it sent to NOTIFY_SOCKET."""

    proc: subprocess.Popen[bytes]
    data_dir: Path
    address: str
    notify_socket: socket.socket
    notifications: list[str] = field(default_factory=list)

    @property
    def socket_path(self) -> Path:
        return Path(self.address.removeprefix("unix://"))

    def read_notifications(self, timeout: float = 0.0) -> list[str]:
        """Collect sd_notify messages that arrived (waiting up to `timeout` for the first)."""
        self.notify_socket.settimeout(timeout or 0.001)
        new: list[str] = []
        with contextlib.suppress(TimeoutError, BlockingIOError):
            while True:
                new.append(self.notify_socket.recv(4096).decode())
                self.notify_socket.settimeout(0.001)
        self.notifications.extend(new)
        return new

    def wait_for(self, field_: str, timeout: float = 30.0) -> None:
        """Wait until the daemon sends a notification containing `field_` (e.g. READY=1)."""
        deadline = time.monotonic() + timeout
        while not any(field_ in n.split("\n") for n in self.notifications):
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}: {self.stderr()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"daemon did not send {field_} within {timeout} s")
            self.read_notifications(timeout=0.2)

    def http_url(self) -> str:
        """The first HTTP listener's base URL ("http://127.0.0.1:PORT"), from the
        READY=1 status line (`http_listen` with port 0 picks a free port)."""
        for n in self.notifications:
            for line in n.split("\n"):
                if line.startswith("STATUS=serving"):
                    for word in line.replace(",", " ").split():
                        if word.startswith(("http://", "https://")):
                            return word
        raise LookupError("the daemon reported no HTTP listener (is http_listen set?)")

    def stderr(self) -> str:
        log = self.data_dir / "daemon.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


@contextlib.contextmanager
def run_daemon(
    data_dir: Path,
    *extra_args: str,
    env: dict[str, str] | None = None,
    wait_ready: bool = True,
    pause_update_at: str = "",
) -> Iterator[DaemonProcess]:
    """Start `python -m rustaid serve` on a socket in `data_dir`, wait for READY=1
    (through a NOTIFY_SOCKET of our own), and stop it with SIGTERM afterwards.
    `pause_update_at` holds its updates at that step (rustaid.testing.update_pause)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    # AF_UNIX paths are limited to 107 bytes; pytest's tmp dirs can be longer.
    sock_dir = Path(tempfile.mkdtemp(prefix="rustaid-", dir="/tmp"))
    address = f"unix://{sock_dir}/rustaid.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = sock_dir / "notify"
    notify.bind(str(notify_path))
    child_env = {
        **os.environ,
        "NOTIFY_SOCKET": str(notify_path),
        "RUSTAID_ENTRY_POINT_PLUGINS": "0",
        # One inference thread: tests run several daemons at once, and llama.cpp's
        # spinning threads slow to a crawl when there are more of them than cores.
        "RUSTAID_THREADS": "1",
        **(env or {}),
    }
    log = (data_dir / "daemon.log").open("wb")
    entry = ["rustaid.testing.update_pause", pause_update_at] if pause_update_at else ["rustaid"]
    proc = subprocess.Popen(
        [sys.executable, "-m", *entry, "serve", "--user", "--data-dir", str(data_dir),
         "--listen", address, *extra_args],
        env=child_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    daemon = DaemonProcess(proc, data_dir, address, notify)
    try:
        if wait_ready:
            daemon.wait_for("READY=1")
        yield daemon
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            daemon.stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        notify.close()
        # Whatever a killed daemon left (sockets, the relay's private folder).
        shutil.rmtree(sock_dir, ignore_errors=True)


def isolated_settings(data_dir: Path, **overrides: object) -> Settings:
    """Settings for an in-process daemon on a private socket, entry points disabled."""
    sock_dir = Path(tempfile.mkdtemp(prefix="rustaid-", dir="/tmp"))
    values: dict[str, object] = {
        "listen": [f"unix://{sock_dir}/rustaid.sock"],
        "entry_point_plugins": False,
    }
    values.update(overrides)
    return load_settings(data_dir=data_dir, system=False, overrides=values, environ={})


@contextlib.asynccontextmanager
async def running_daemon(settings: Settings) -> AsyncIterator[object]:
    """Start a Daemon in the current event loop; yields it, stops it afterwards."""
    from rustaid.daemon import Daemon

    daemon = Daemon(settings)
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()

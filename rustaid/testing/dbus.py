"""Private D-Bus buses for tests and examples: a real `dbus-daemon` per bus, either a
session bus or a system-like bus whose configuration enforces a policy (the default-deny
rules of a system bus plus the policy files given)."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

# The default policy of Debian's /usr/share/dbus-1/system.conf: anyone may connect,
# owning names and calling methods need a hole punched by a service's policy file.
SYSTEM_DEFAULT_POLICY = """\
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
  </policy>
"""

SESSION_POLICY = """\
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
"""


@dataclass
class PrivateBus:
    """A running dbus-daemon; `address` goes into DBUS_SESSION_BUS_ADDRESS,
    DBUS_SYSTEM_BUS_ADDRESS or the `[dbus] address` setting."""

    proc: subprocess.Popen[bytes]
    address: str
    directory: Path

    @property
    def socket_path(self) -> Path:
        return Path(self.address.split("path=", 1)[1].split(",", 1)[0])

    def env(self, kind: str = "session") -> dict[str, str]:
        var = "DBUS_SYSTEM_BUS_ADDRESS" if kind == "system" else "DBUS_SESSION_BUS_ADDRESS"
        return {var: self.address}


def bus_config(socket: Path, *, system: bool, includes: Sequence[Path] = ()) -> str:
    """A dbus-daemon configuration listening on `socket`."""
    parts = [
        '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"',
        ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">',
        "<busconfig>",
        f"  <type>{'system' if system else 'session'}</type>",
        f"  <listen>unix:path={escape(str(socket))}</listen>",
        "  <auth>EXTERNAL</auth>",
        SYSTEM_DEFAULT_POLICY if system else SESSION_POLICY,
        *(f"  <include>{escape(str(p))}</include>" for p in includes),
        "</busconfig>",
    ]
    return "\n".join(parts) + "\n"


@contextlib.contextmanager
def private_bus(
    *, system: bool = False, includes: Sequence[Path] = (), world_accessible: bool = False
) -> Iterator[PrivateBus]:
    """Start a dbus-daemon on a socket in a fresh directory; stop it afterwards.

    `system`: a system-like bus whose policy denies by default (add services' policy
    files with `includes`). `world_accessible`: let other users reach the socket (for
    tests that call as another uid)."""
    exe = shutil.which("dbus-daemon")
    if exe is None:
        raise FileNotFoundError("dbus-daemon is not installed (Debian package: dbus-daemon)")
    directory = Path(tempfile.mkdtemp(prefix="rustaid-bus-", dir="/tmp"))
    if world_accessible:
        directory.chmod(0o755)
    socket = directory / "bus"
    config = directory / "bus.conf"
    config.write_text(bus_config(socket, system=system, includes=includes))
    log = (directory / "bus.log").open("wb")
    proc = subprocess.Popen(
        [exe, f"--config-file={config}", "--nofork", "--nopidfile", "--print-address=1"],
        stdout=subprocess.PIPE,
        stderr=log,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        if not line:
            proc.wait(5)
            err = (directory / "bus.log").read_text(errors="replace")
            raise RuntimeError(f"dbus-daemon did not start: {err.strip()}")
        deadline = time.monotonic() + 5
        while not socket.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        if world_accessible:
            socket.chmod(0o777)  # the bus's own policy decides, as on a real system
        yield PrivateBus(proc, line, directory)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        log.close()
        shutil.rmtree(directory, ignore_errors=True)

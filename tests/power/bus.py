"""Real D-Bus parts for the power tests: a private system-like bus (dbus-daemon with a
config file: the policy is enforced, as on a real system bus), python3-dbusmock serving
the upower and power_profiles_daemon templates, the real upowerd on a umockdev testbed,
and a driver that changes their state the way the real services would."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"
UPOWER = "org.freedesktop.UPower"
UPOWER_PATH = "/org/freedesktop/UPower"
DISPLAY_DEVICE = "/org/freedesktop/UPower/devices/DisplayDevice"
DEVICE_IFACE = "org.freedesktop.UPower.Device"
PPD = "net.hadess.PowerProfiles"  # the name Debian's dbusmock template owns
PPD_PATH = "/net/hadess/PowerProfiles"

# What the services' own policy files (/usr/share/dbus-1/system.d) grant, and the
# default deny of the system bus for everything else.
BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
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
    <allow own="org.freedesktop.UPower"/>
    <allow send_destination="org.freedesktop.UPower"/>
    <allow own="org.freedesktop.UPower.PowerProfiles"/>
    <allow send_destination="org.freedesktop.UPower.PowerProfiles"/>
    <allow own="net.hadess.PowerProfiles"/>
    <allow send_destination="net.hadess.PowerProfiles"/>
  </policy>
</busconfig>
"""


def require(*tools: str) -> None:
    """Skip (naming the fix) when a system tool the test needs is missing."""
    for tool in tools:
        if tool == "dbusmock":
            ok = (
                Path(SYSTEM_PYTHON).exists()
                and subprocess.run(
                    [SYSTEM_PYTHON, "-c", "import dbusmock"], capture_output=True
                ).returncode
                == 0
            )
        else:
            ok = shutil.which(tool) is not None
        if not ok:
            pytest.skip(f"{tool} is not installed: run `make system-deps`")


class PrivateSystemBus:
    def __init__(self) -> None:
        require("dbus-daemon")
        # AF_UNIX paths are short: keep it under /tmp.
        self.dir = Path(tempfile.mkdtemp(prefix="rustaid-bus-", dir="/tmp"))
        self.socket = self.dir / "system_bus_socket"
        self.config = self.dir / "bus.conf"
        self.config.write_text(BUS_CONFIG.format(socket=self.socket))
        self.address = ""
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["dbus-daemon", "--config-file", str(self.config), "--nofork", "--print-address=1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if not line:
            raise RuntimeError("dbus-daemon did not start")
        self.address = line.split(",guid=")[0]

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": self.address}


class DbusMock:
    """A python3-dbusmock template served by Debian's /usr/bin/python3."""

    def __init__(self, bus: PrivateSystemBus, template: str, name: str, **params: Any) -> None:
        require("dbusmock")
        self.bus, self.template, self.name, self.params = bus, template, name, params
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, driver: BusDriver) -> None:
        args = [SYSTEM_PYTHON, "-m", "dbusmock", "--system", "--template", self.template]
        if self.params:
            args += ["--parameters", json.dumps(self.params)]
        self.proc = subprocess.Popen(
            args, env=self.bus.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        driver.wait_for_owner(self.name)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        self.proc = None


class BusDriver:
    """Drives services on the private bus from the tests (dbus-next, on a loop of its
    own in a thread, so sync tests and async tests can both use it)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._bus: Any = None

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _connected(self) -> Any:
        from rustaid.power.dbus import close_bus, connect

        if self._bus is None or not self._bus.connected:
            if self._bus is not None:
                await close_bus(self._bus)  # the bus restarted
            self._bus = await connect(self.address)
        return self._bus

    def call(self, dest: str, path: str, iface: str, member: str, sig: str = "",
             body: list[Any] | None = None) -> list[Any]:  # fmt: skip
        from dbus_next.constants import MessageType
        from dbus_next.message import Message

        async def go() -> list[Any]:
            bus = await self._connected()
            reply = await bus.call(
                Message(
                    destination=dest,
                    path=path,
                    interface=iface,
                    member=member,
                    signature=sig,
                    body=body or [],
                )
            )
            if reply.message_type == MessageType.ERROR:
                raise RuntimeError(f"{member}: {reply.error_name}: {reply.body}")
            return list(reply.body)

        return self._run(go())

    def owner(self, name: str) -> str:
        try:
            body = self.call("org.freedesktop.DBus", "/org/freedesktop/DBus",
                             "org.freedesktop.DBus", "GetNameOwner", "s", [name])  # fmt: skip
        except RuntimeError:
            return ""
        return str(body[0])

    def wait_for_owner(self, name: str, present: bool = True, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while bool(self.owner(name)) != present:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} {'never appeared' if present else 'stayed'}")
            time.sleep(0.05)

    def update(self, dest: str, path: str, iface: str, **props: Any) -> None:
        """Set properties on a dbusmock object: one PropertiesChanged for all of them,
        as a real service sends. Values: (signature, value) pairs."""
        from dbus_next.signature import Variant

        variants = {k: Variant(sig, value) for k, (sig, value) in props.items()}
        self.call(dest, path, "org.freedesktop.DBus.Mock", "UpdateProperties", "sa{sv}",
                  [iface, variants])  # fmt: skip

    def battery(self, percent: float, *, discharging: bool = True, rate_w: float = 8.0) -> None:
        """The UPower mock's display device and OnBattery, like a laptop's."""
        self.update(
            UPOWER, DISPLAY_DEVICE, DEVICE_IFACE,
            Type=("u", 2), IsPresent=("b", True), Percentage=("d", float(percent)),
            State=("u", 2 if discharging else 1), EnergyRate=("d", rate_w if discharging else 0.0),
            EnergyFull=("d", 50.0), TimeToEmpty=("x", 3600 if discharging else 0),
        )  # fmt: skip
        self.update(UPOWER, UPOWER_PATH, UPOWER, OnBattery=("b", discharging))

    def system_profile(self, profile: str) -> None:
        """What `powerprofilesctl set PROFILE` does."""
        from dbus_next.signature import Variant

        self.call(PPD, PPD_PATH, "org.freedesktop.DBus.Properties", "Set", "ssv",
                  [PPD, "ActiveProfile", Variant("s", profile)])  # fmt: skip

    def ppd_props(self) -> dict[str, Any]:
        from rustaid.power.dbus import unwrap

        body = self.call(PPD, PPD_PATH, "org.freedesktop.DBus.Properties", "GetAll", "s", [PPD])
        return {k: unwrap(v) for k, v in body[0].items()}

    def close(self) -> None:
        from rustaid.power.dbus import close_bus

        if self._bus is not None:
            self._run(close_bus(self._bus))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def upowerd_path() -> Path | None:
    for candidate in (
        os.environ.get("RUSTAID_TEST_UPOWERD", ""),
        "/usr/libexec/upowerd",
        str(REPO / ".venv" / "opt" / "upower" / "usr" / "libexec" / "upowerd"),
    ):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


class RealUPower:
    """The real upowerd, on a umockdev testbed with a fake battery and AC adapter
    (tests/power/umockdev_upower.py, run by Debian's python3 with umockdev's GObject
    bindings under umockdev-wrapper). `set()` changes a sysfs attribute and sends the
    uevent a kernel would; upowerd then updates its D-Bus properties."""

    def __init__(self, bus: PrivateSystemBus) -> None:
        require("umockdev-wrapper")
        upowerd = upowerd_path()
        if upowerd is None:
            pytest.skip("upowerd is not available: run `make system-deps`")
        check = subprocess.run(
            [SYSTEM_PYTHON, "-c", "import gi; gi.require_version('UMockdev', '1.0')"],
            capture_output=True,
        )
        if check.returncode:
            pytest.skip("umockdev's GObject bindings are missing: run `make system-deps`")
        self.upowerd = upowerd
        self.bus = bus
        self.log = bus.dir / "upowerd.log"
        self.proc: subprocess.Popen[str] | None = None

    def start(self, driver: BusDriver, **battery: str) -> None:
        env = dict(self.bus.env)
        libdir = self.upowerd.parents[1] / "lib" / "x86_64-linux-gnu"
        if libdir.is_dir() and not str(self.upowerd).startswith("/usr/"):
            env["LD_LIBRARY_PATH"] = str(libdir)  # unpacked next to it (see Makefile)
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                ["umockdev-wrapper", SYSTEM_PYTHON,
                 str(Path(__file__).with_name("umockdev_upower.py")), str(self.upowerd),
                 json.dumps(battery)],
                env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
            )  # fmt: skip
        assert self.proc.stdout is not None
        try:
            line = self.proc.stdout.readline().strip()
            if line != "started":
                raise RuntimeError(f"the umockdev testbed did not start: {line!r}")
            driver.wait_for_owner(UPOWER)
        except BaseException:
            self.stop()
            raise RuntimeError(f"upowerd did not start: {self.log.read_text()[-2000:]}") from None

    def set(self, device: str, **attributes: object) -> None:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout
        self.proc.stdin.write(json.dumps({"device": device, "set": attributes}) + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        assert proc.stdin is not None and proc.stdout is not None
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()  # EOF: the testbed stops upowerd and exits
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


@contextlib.contextmanager
def private_bus() -> Iterator[tuple[PrivateSystemBus, BusDriver]]:
    bus = PrivateSystemBus()
    bus.start()
    driver = BusDriver(bus.address)
    try:
        yield bus, driver
    finally:
        driver.close()
        bus.close()


def eventually(check: Any, timeout: float = 1.0, interval: float = 0.02) -> float:
    """Poll `check()` until it is truthy; returns the seconds it took. Fails after
    `timeout` with the last value."""
    t0 = time.monotonic()
    while True:
        value = check()
        if value:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"not within {timeout} s: last value {value!r}")
        time.sleep(interval)

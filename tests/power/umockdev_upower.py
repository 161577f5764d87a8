"""Runs the real upowerd on a umockdev testbed with a fake battery and AC adapter.

Run by Debian's /usr/bin/python3 (umockdev's GObject bindings live there, not in the
venv) under `umockdev-wrapper`, as UPower's own integration tests do:

    umockdev-wrapper /usr/bin/python3 umockdev_upower.py /path/to/upowerd '{"capacity": "15"}'

Prints "started" once upowerd runs. Then each line on stdin, e.g.
{"device": "BAT0", "set": {"capacity": "10", "status": "Discharging"}}, changes sysfs
attributes and sends the "change" uevent the kernel would; it answers "ok". EOF stops.
"""

import json
import os
import subprocess
import sys

import gi

gi.require_version("UMockdev", "1.0")
from gi.repository import UMockdev  # noqa: E402

BATTERY = {
    "type": "Battery",
    "present": "1",
    "status": "Discharging",
    "technology": "Li-ion",
    "energy_full": "60000000",
    "energy_full_design": "80000000",
    "energy_now": "48000000",
    "power_now": "12000000",
    "voltage_now": "12000000",
    "capacity": "80",
    "model_name": "FakeBattery",
    "serial_number": "1",
}


def attributes(values):
    out = []
    for key, value in values.items():
        out += [key, str(value)]
    return out


def main():
    upowerd = sys.argv[1]
    battery = dict(BATTERY, **json.loads(sys.argv[2] if len(sys.argv) > 2 else "{}"))
    testbed = UMockdev.Testbed.new()
    devices = {
        "BAT0": testbed.add_device("power_supply", "BAT0", None, attributes(battery), []),
        "AC": testbed.add_device(
            "power_supply", "AC", None, attributes({"type": "Mains", "online": "0"}), []
        ),
    }
    env = dict(os.environ, UMOCKDEV_DIR=testbed.get_root_dir())
    daemon = subprocess.Popen(
        [upowerd, "--verbose"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    print("started", flush=True)
    try:
        for line in sys.stdin:
            command = json.loads(line)
            device = devices[command["device"]]
            for key, value in command["set"].items():
                testbed.set_attribute(device, key, str(value))
            testbed.uevent(device, "change")
            print("ok", flush=True)
    finally:
        daemon.terminate()
        daemon.wait()


main()

"""What the resource monitor costs an idle daemon: CPU time and wake-ups per minute,
with only polling, with its event sources (a system bus with UPower and
power-profiles-daemon, the PSI trigger), with UPower signalling, and with polling at the
active rate all the time (what adaptive polling avoids).

    .venv/bin/python tests/bench/monitor.py [--idle 60] [--json out.json]

Each scenario is a fresh `rustaid serve` (no models) reading a fake sysfs tree (two
thermal zones with trip points, a battery, an AC adapter, cpufreq) and the real /proc.
The system bus is a private dbus-daemon with python3-dbusmock's upower and
power_profiles_daemon templates (`make system-deps` installs them). CPU is user+system
time of the daemon process; wake-ups are its context switches (voluntary+involuntary).
Target: <= 0.2 s of CPU per minute with no requests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `tests` and `rustaid` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench import common
from tests.bench.idle import cpu_and_switches, started

TARGET_CPU_S_PER_MIN = 0.2


def fake_device(root: Path) -> Any:
    from tests.power.fakesys import FakeDevice

    dev = FakeDevice(root)
    dev.zone(0, "x86_pkg_temp", 48.0, [("passive", 95), ("critical", 105)])
    dev.zone(1, "acpitz", 45.0, [("active", 60), ("critical", 110)])
    dev.cpufreq(0, 1_400_000, 3_000_000)
    dev.cpufreq(1, 1_200_000, 3_000_000)
    dev.mains(True)
    dev.battery(status="Charging", capacity=80)
    return dev


@contextlib.contextmanager
def system_bus(upower_signals_every: float = 0.0) -> Iterator[str]:
    """A private system bus with UPower and power-profiles-daemon mocks; optionally a
    UPower battery update every N seconds (a laptop's UPower signals about that often)."""
    from tests.power.bus import PPD, UPOWER, DbusMock, private_bus

    with private_bus() as (bus, driver):
        mocks = [DbusMock(bus, "upower", UPOWER), DbusMock(bus, "power_profiles_daemon", PPD)]
        for mock in mocks:
            mock.start(driver)
        driver.battery(80, discharging=False)
        stop = threading.Event()

        def signal_loop() -> None:
            percent = 80.0
            while not stop.wait(upower_signals_every):
                percent = 79.0 if percent == 80.0 else 80.0
                driver.battery(percent, discharging=False)

        thread = threading.Thread(target=signal_loop, daemon=True)
        if upower_signals_every:
            thread.start()
        try:
            yield bus.address
        finally:
            stop.set()
            if upower_signals_every:
                thread.join(5)
            for mock in mocks:
                mock.stop()


def measure(
    root: Path, name: str, power: str, idle: float, bus_address: str = ""
) -> dict[str, Any]:
    data = root / name.replace(" ", "-")
    (data / "config").mkdir(parents=True, exist_ok=True)
    (data / "config" / "rustaid.toml").write_text("[power]\n" + power)
    env = {"DBUS_SYSTEM_BUS_ADDRESS": bus_address} if bus_address else {}
    with started(data, **env) as (d, _):
        time.sleep(2.0)  # let the event sources connect
        log_ready = d.stderr()
        cpu0, sw0 = cpu_and_switches(d.proc.pid)
        t0 = time.monotonic()
        print(f"  {name}: idle for {idle:g} s...", file=sys.stderr, flush=True)
        time.sleep(idle)
        cpu1, sw1 = cpu_and_switches(d.proc.pid)
        elapsed = time.monotonic() - t0
        import psutil

        threads = psutil.Process(d.proc.pid).num_threads()
    sources = "connected to the system bus" in log_ready
    # Per thread (tid -> (name, switches)): a thread that started in between counts from 0.
    switches = sum(n - sw0.get(tid, (name, 0))[1] for tid, (name, n) in sw1.items())
    return {
        "scenario": name,
        "power_settings": power.strip().splitlines(),
        "idle_s": elapsed,
        "cpu_s_per_min": (cpu1 - cpu0) / elapsed * 60,
        "context_switches_per_min": switches / elapsed * 60,
        "threads": threads,
        "system_bus_connected": sources,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=float, default=60.0, help="idle seconds per scenario")
    parser.add_argument("--json", help="write the results here")
    args = common.parse_args(parser, argv, quick={"idle": 10})
    machine_start = common.machine()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rustaid-bench-monitor-") as tmp:
        root = Path(tmp)
        dev = fake_device(root / "device")
        base = f'sys_root = "{dev.sys}"\nproc_root = "/proc"\n'
        off = "dbus = false\nudev = false\npsi_trigger = false\n"
        scenarios: list[tuple[str, str, float | None]] = [
            ("monitor quiet (poll every hour, no event sources)", base + off +
             "poll_idle_s = 3600\n", None),
            ("polling only (30 s idle poll)", base + off, None),
            ("event sources (system bus, UPower, ppd, PSI trigger)", base, 0.0),
            ("event sources + a UPower signal every 10 s", base, 10.0),
            ("no adaptive polling (poll every 2 s)", base + off + "poll_idle_s = 2\n", None),
        ]  # fmt: skip
        for name, power, signals in scenarios:
            if signals is None:
                results.append(measure(root, name, power, args.idle))
                continue
            with system_bus(signals) as address:
                results.append(measure(root, name, power, args.idle, address))
    rows = [
        [r["scenario"], f"{r['cpu_s_per_min']:.4f}", f"{r['context_switches_per_min']:.0f}",
         str(r["threads"]), "ok" if r["cpu_s_per_min"] <= TARGET_CPU_S_PER_MIN else "MISSED"]
        for r in results
    ]  # fmt: skip
    print()
    print(f"idle daemon with the resource monitor, {args.idle:g} s per scenario")
    print(common.table(["scenario", "CPU s/min", "wake-ups/min", "threads",
                        f"<= {TARGET_CPU_S_PER_MIN} s/min"], rows))  # fmt: skip
    machine_end = common.machine()
    print(f"load average {machine_start['loadavg'][0]:.2f} -> {machine_end['loadavg'][0]:.2f} "
          f"({machine_start['cores']} cores, shared machine)")  # fmt: skip
    result = {
        "benchmark": "monitor",
        "scenarios": results,
        "target_cpu_s_per_min": TARGET_CPU_S_PER_MIN,
        "info": {"machine_start": machine_start, "machine_end": machine_end},
    }
    common.write_json(args.json, result, figures(results))
    print(json.dumps({r["scenario"]: round(r["cpu_s_per_min"], 4) for r in results}))
    return 0


def figures(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The figures of docs/benchmarks.md: each scenario against polling at the active rate
    all the time (the last scenario, what adaptive polling avoids)."""
    *scenarios, always = results
    return [
        common.figure(
            f"CPU time: {r['scenario']}",
            r["cpu_s_per_min"],
            "s/min",
            peer=always["scenario"],
            peer_value=always["cpu_s_per_min"],
            target=f"<= {TARGET_CPU_S_PER_MIN}",
            note=f"{r['context_switches_per_min']:.0f} wake-ups/min",
        )
        for r in scenarios
    ]


if __name__ == "__main__":
    sys.exit(main())

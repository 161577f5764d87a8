"""`rustaictl resources` (the device's state) and `rustaictl power` (power profiles)."""

from __future__ import annotations

import argparse

from rustaid.api.v1 import (
    common_pb2,
    resources_pb2,
)
from rustaid_client.cli import output
from rustaid_client.cli.arguments import Subparsers, command, count, positive_float
from rustaid_client.cli.output import (
    UsageError,
    echo,
    fields,
    friendly,
    human_size,
    print_json,
    time_text,
)
from rustaid_client.client import (
    Client,
)


def _duration_text(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def _power_text(p: resources_pb2.PowerStatus) -> str:
    source = f" (from {p.source})" if p.source else ""
    if not p.battery_present:
        if not p.source:
            return "unknown: no UPower and no power supply in sysfs"
        return f"no battery, {'on AC power' if p.ac_online else 'AC offline'}{source}"
    parts = [
        f"battery {p.battery_percent:.0f} %",
        friendly(resources_pb2.BatteryState, p.battery_state),
    ]
    if p.power_draw_watts:
        parts.append(f"drawing {p.power_draw_watts:.1f} W")
    left = p.time_to_empty.ToTimedelta().total_seconds()
    if left > 0:
        parts.append(f"{_duration_text(left)} left")
    parts.append("on battery" if p.on_battery else "on AC power")
    return ", ".join(parts) + source


def _throttling_text(t: resources_pb2.ThrottlingStatus) -> str:
    now = [
        name
        for name, on in (
            ("under-voltage", t.under_voltage),
            ("frequency capped", t.frequency_capped),
            ("throttled", t.throttled),
            ("soft temperature limit", t.soft_temperature_limit),
        )
        if on
    ]
    before = [
        name
        for name, on in (
            ("under-voltage", t.under_voltage_occurred),
            ("frequency capped", t.frequency_capped_occurred),
            ("throttled", t.throttled_occurred),
            ("soft temperature limit", t.soft_temperature_limit_occurred),
        )
        if on
    ]
    text = ", ".join(now) if now else "none now"
    return text + (f" (since boot: {', '.join(before)})" if before else "")


def _show_snapshot(s: resources_pb2.ResourceSnapshot) -> None:
    m, c, t = s.memory, s.cpu, s.thermal
    zones = ", ".join(f"{z.type or z.name} {z.temperature_c:.1f} C" for z in t.zones)
    thermal = friendly(resources_pb2.ThermalState, t.state)
    pressure = friendly(resources_pb2.PressureLevel, m.pressure)
    cpu = f"{c.cores} cores, {c.usage_percent:.0f} % busy"
    if c.frequency_mhz:
        cpu += f", {c.frequency_mhz:.0f} / {c.max_frequency_mhz:.0f} MHz"
    pairs = [
        ("time", time_text(s.time)),
        ("thermal", f"{thermal}" + (f": {t.reason}" if t.reason else "")),
        *(
            [
                (
                    "heating",
                    f"{friendly(resources_pb2.ThermalState, t.rising_state)} expected: "
                    f"{t.rising_reason}",
                )
            ]
            if t.rising_state
            else []
        ),
        ("zones", zones),
        (
            "memory",
            f"{human_size(m.available_bytes)} of {human_size(m.total_bytes)} available, "
            f"pressure {pressure} (PSI some {m.psi_some_avg10:.1f} %, full "
            f"{m.psi_full_avg10:.1f} %)" + (f": {m.reason}" if m.reason else ""),
        ),
        ("cpu", cpu),
        ("power", _power_text(s.power)),
        (
            "profile",
            f"{friendly(common_pb2.PowerProfile, s.power_profile)} "
            f"({friendly(resources_pb2.ProfileSource, s.profile_source)})",
        ),
    ]
    if any(
        f.name.endswith("_occurred") and getattr(t.throttling, f.name)
        for f in t.throttling.DESCRIPTOR.fields
    ):
        pairs.append(("throttling", _throttling_text(t.throttling)))
    for g in s.gpus:
        pairs.append(
            (
                "gpu",
                f"{g.name}: {human_size(g.memory_used_bytes)} of "
                f"{human_size(g.memory_total_bytes)}, "
                f"{g.utilization_percent:.0f} % busy",
            )
        )
    pairs.append(("unavailable", ", ".join(s.unavailable_sources)))
    fields(pairs)


def cmd_resources(client: Client, args: argparse.Namespace) -> int:
    if not args.watch:
        response = client.get_snapshot()
        if args.json:
            print_json(response.snapshot)
        else:
            _show_snapshot(response.snapshot)
        return 0
    with client.watch_snapshots(args.interval) as stream:
        for i, event in enumerate(stream):
            if args.json:
                print_json(event.snapshot, compact=True)
                continue
            if i:
                echo()
            _show_snapshot(event.snapshot)
            output.stdout().flush()
    return 0


_PROFILES = ("performance", "balanced", "power-saver", "ultra-saver", "custom")


def _show_profile(
    response: resources_pb2.GetPowerProfileResponse | resources_pb2.SetPowerProfileResponse,
) -> None:
    p = response.parameters
    source = friendly(resources_pb2.ProfileSource, response.source).replace("_", "-")
    fields(
        [
            ("profile", friendly(common_pb2.PowerProfile, response.profile).replace("_", "-")),
            ("source", source + (f": {response.reason}" if response.reason else "")),
            ("threads", str(p.threads)),
            ("gpu", "yes" if p.use_gpu else "no"),
            ("prefer remote", "yes" if p.prefer_remote else "no"),
            ("max local tokens", str(p.max_local_tokens)),
            ("batch size", str(p.batch_size)),
            ("context length", str(p.context_length)),
            ("caching", "yes" if p.caching else "no"),
            ("background", "yes" if p.background_inference else "no"),
        ]
    )


def cmd_power(client: Client, args: argparse.Namespace) -> int:
    custom_flags = [args.threads, args.max_tokens, args.batch, args.context]
    if args.profile != "custom" and (
        any(v is not None for v in custom_flags)
        or args.gpu
        or args.prefer_remote
        or args.no_cache
        or args.background
    ):
        raise UsageError(
            "--threads, --max-tokens, --batch, --context and the switches "
            "only go with the custom profile"
        )
    response: resources_pb2.GetPowerProfileResponse | resources_pb2.SetPowerProfileResponse
    if args.clear:
        if args.profile:
            raise UsageError("give a profile or --clear, not both")
        response = client.clear_power_profile()
    elif args.profile == "custom":
        custom = resources_pb2.ProfileParameters(
            threads=args.threads or 0,
            use_gpu=args.gpu,
            prefer_remote=args.prefer_remote,
            max_local_tokens=args.max_tokens or 0,
            batch_size=args.batch or 0,
            context_length=args.context or 0,
            caching=not args.no_cache,
            background_inference=args.background,
        )
        response = client.set_power_profile("custom", custom)
    elif args.profile:
        response = client.set_power_profile(args.profile)
    else:
        response = client.get_power_profile()
    if args.json:
        print_json(response)
    else:
        _show_profile(response)
    return 0


def add_commands(commands: Subparsers) -> None:
    p = command(
        commands,
        "resources",
        cmd_resources,
        "the device's state: heat, memory, CPU, battery and the power profile",
    )
    p.add_argument("--watch", action="store_true", help="print a new snapshot on every change")
    p.add_argument(
        "--interval",
        type=positive_float,
        metavar="SECONDS",
        help="with --watch: at most one snapshot per interval (default 1 s)",
    )
    p = command(
        commands, "power", cmd_power, "show the power profile, set one until cleared, or --clear it"
    )
    p.add_argument(
        "profile",
        nargs="?",
        choices=_PROFILES,
        metavar="PROFILE",
        help=f"one of {', '.join(_PROFILES)}",
    )
    p.add_argument("--clear", action="store_true", help="back to the automatic profile")
    custom = p.add_argument_group("custom profile")
    custom.add_argument("--threads", type=count, metavar="N")
    custom.add_argument("--max-tokens", type=count, metavar="N", help="max local tokens")
    custom.add_argument("--batch", type=count, metavar="N", help="batch size")
    custom.add_argument("--context", type=count, metavar="N", help="context length")
    custom.add_argument("--gpu", action="store_true", help="use the GPU")
    custom.add_argument("--prefer-remote", action="store_true")
    custom.add_argument("--no-cache", action="store_true", help="no prompt/model caching")
    custom.add_argument("--background", action="store_true", help="run background requests")

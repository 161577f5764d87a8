"""One settings source: every section is checked whenever settings are accepted, a
replacement reaches every subsystem at once, and what only a restart applies is named.
One test per section of rustaid.toml, on a daemon built in this process (not started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rustaid.config import RESTART_KEYS, Section, Settings, SettingsSource, load_settings
from rustaid.core.cache import MIB
from rustaid.daemon import SECTIONS, Daemon
from rustaid.errors import InvalidArgument


def settings_from(data_dir: Path, toml: str) -> Settings:
    config = data_dir / "config" / "rustaid.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(toml)
    return load_settings(data_dir=data_dir, environ={})


@pytest.fixture
def daemon(tmp_path: Path) -> Daemon:
    return Daemon(settings_from(tmp_path, ""))


def reload(daemon: Daemon, toml: str) -> list[str]:
    return daemon.config.replace(settings_from(daemon.settings.data_dir, toml))


def test_every_section_the_subsystems_read_is_listed() -> None:
    assert {s.name for s in SECTIONS} == {"rag", "tools", "power", "updates", "dbus"}
    assert {s.name for s in SECTIONS if s.live} == {"rag", "tools", "power", "updates"}


def test_top_level_limits_apply_at_once(daemon: Daemon) -> None:
    assert reload(daemon, "memory_budget_mb = 123\nmax_requests_per_client = 3\n") == []
    assert daemon.engine.budget.total_bytes(0) == 123 * MIB
    assert daemon.engine.settings.max_requests_per_client == 3
    assert daemon.rag._settings().memory_budget_mb == 123  # the same source
    assert daemon.plugin_host.settings.memory_budget_mb == 123


def test_generation_limits_reach_the_device_policy_at_once(daemon: Daemon) -> None:
    assert reload(daemon, "default_max_tokens = 50\nmax_tokens_limit = 100\n") == []
    assert daemon.resources.policy.default_max_tokens == 50
    assert daemon.resources.settings.max_tokens_limit == 100  # EstimateCost's bound


def test_top_level_keys_bound_at_start_are_named(daemon: Daemon) -> None:
    later = reload(daemon, 'socket_mode = 0o600\nmetrics_listen = "127.0.0.1:0"\n')
    assert later == ["socket_mode", "metrics_listen"]
    assert set(later) <= set(RESTART_KEYS)


def test_rag_section_applies_at_once(daemon: Daemon) -> None:
    assert daemon.rag.config.chunk_size == 256
    assert reload(daemon, "[rag]\nchunk_size = 512\n") == []
    assert daemon.rag.config.chunk_size == 512


def test_tools_section_applies_at_once(daemon: Daemon) -> None:
    assert reload(daemon, "[tools]\nmax_concurrent = 2\n") == []
    assert daemon.tools.config().max_concurrent == 2


def test_power_section_applies_at_once(daemon: Daemon) -> None:
    assert reload(daemon, "[power]\npoll_idle_s = 10\nlow_battery_percent = 30\n") == []
    config = daemon.resources.monitor.config
    assert (config.poll_idle_s, config.low_battery_percent) == (10, 30)
    assert daemon.resources.monitor.profiles.config is config
    assert daemon.resources.config is config
    assert reload(daemon, '[power]\nudev = false\nsys_root = "/elsewhere"\n') == []
    config = daemon.resources.monitor.config
    assert (config.udev, str(config.sys_root)) == (False, "/elsewhere")


def test_updates_section_applies_at_once(daemon: Daemon) -> None:
    assert reload(daemon, '[updates]\ncheck_interval = "2h"\nmin_battery = 50\n') == []
    assert daemon.updates.config.check_interval_s == 7200
    assert daemon.updates.config.min_battery == 50


def test_dbus_section_needs_a_restart(daemon: Daemon) -> None:
    assert reload(daemon, "[dbus]\nenabled = false\n") == ["[dbus]"]


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[rag]\nchunk_size = 8\nchunk_overlap = 4\n", "[rag] chunk_overlap"),
        ("[tools]\nmax_concurrent = 0\n", "[tools] max_concurrent"),
        ("[power]\npoll_idle = 10\n", "power.poll_idle is not a setting"),
        ('[updates]\ncheck_interval = "often"\n', "[updates] check_interval"),
        ("[dbus]\ncolour = 1\n", "unknown setting dbus.colour"),
    ],
)
def test_a_bad_section_is_refused_and_the_settings_in_force_stay(
    daemon: Daemon, toml: str, message: str
) -> None:
    before = daemon.settings
    with pytest.raises(InvalidArgument) as refused:
        reload(daemon, "memory_budget_mb = 99\n" + toml)
    assert message in refused.value.message
    assert daemon.settings is before and daemon.engine.settings is before
    assert daemon.engine.budget.total_bytes(0) != 99 * MIB


def test_a_bad_section_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"\[rag\] chunk_overlap"):
        Daemon(settings_from(tmp_path, "[rag]\nchunk_size = 8\nchunk_overlap = 4\n"))


def test_listeners_hear_each_replacement_until_they_stop(tmp_path: Path) -> None:
    first = settings_from(tmp_path, "")
    source = SettingsSource(first, [Section("x", lambda _s: None, live=False)])
    heard: list[tuple[int, int]] = []
    stop = source.listen(lambda old, new: heard.append((old.keep_alive_s, new.keep_alive_s)))
    second = settings_from(tmp_path, "keep_alive_s = 5\n[x]\na = 1\n")
    assert source.replace(second) == ["[x]"]
    assert source() is second and heard == [(300, 5)]
    stop()
    source.replace(first)
    assert heard == [(300, 5)]

"""The shipped /etc/rustaid/rustaid.toml: every commented key is real and shows its true
default, and every daemon setting is listed, so an operator can uncomment a line and
know what it was before."""

from __future__ import annotations

import re
import shutil
from dataclasses import fields, replace
from pathlib import Path

from rustaid.config import Settings, load_settings
from rustaid.power.config import power_config
from rustaid.rag.config import parse_rag_config
from rustaid.tools.config import ToolsConfig
from rustaid.updates.config import load_config as updates_config

SHIPPED = Path(__file__).resolve().parents[2] / "packaging" / "rustaid.toml"
_KEY_LINE = re.compile(r"^# (\[[a-z.]+\]( +#.*)?|[a-z_]+ = .*)$")


def uncommented(text: str) -> str:
    """The file with every `# key = value` and `# [section]` line made active."""
    return "\n".join(line[2:] if _KEY_LINE.match(line) else line for line in text.splitlines())


def settings_from(tmp_path: Path, text: str) -> Settings:
    config = tmp_path / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "rustaid.toml").write_text(text)
    return load_settings(data_dir=tmp_path, system=True, environ={})


def test_every_daemon_setting_is_listed() -> None:
    text = SHIPPED.read_text()
    listed = set(re.findall(r"^# ([a-z_]+) = ", text, re.MULTILINE))
    tunable = {f.name for f in fields(Settings)} - {"data_dir", "system", "extra"}
    assert tunable <= listed, f"not in packaging/rustaid.toml: {sorted(tunable - listed)}"


def test_uncommented_values_are_the_defaults(tmp_path: Path) -> None:
    shipped = settings_from(tmp_path / "shipped", uncommented(SHIPPED.read_text()))
    empty = settings_from(tmp_path / "empty", "")
    # The top-level keys: the same settings as no file at all.
    assert replace(shipped, data_dir=empty.data_dir, extra={}) == empty
    sections = shipped.extra
    assert {"dbus", "rag", "power", "tools", "updates"} <= set(sections)
    assert parse_rag_config(sections["rag"]) == parse_rag_config(None)
    assert power_config(sections["power"]) == power_config(None)
    assert ToolsConfig.from_settings(shipped) == ToolsConfig.from_settings(empty)
    config_dir = tmp_path / "shipped" / "config"
    assert updates_config(sections["updates"], config_dir) == updates_config(None, config_dir)


def test_the_file_as_shipped_starts_the_system_service_defaults(tmp_path: Path) -> None:
    copied = tmp_path / "config" / "rustaid.toml"
    copied.parent.mkdir()
    shutil.copy(SHIPPED, copied)
    settings = load_settings(data_dir=tmp_path, system=True, environ={})
    assert settings.peer_credentials and settings.socket_mode == 0o660
    assert settings.listen == ("unix:///run/rustaid/rustaid.sock",)

"""Settings from defaults, rustaid.toml, environment and flags, with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from rustaid.config import default_socket, load_settings
from rustaid.errors import InvalidArgument


def test_defaults_follow_xdg_for_a_user(tmp_path: Path) -> None:
    env = {"XDG_DATA_HOME": str(tmp_path / "data"), "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    import os

    old = dict(os.environ)
    os.environ.update(env)
    try:
        s = load_settings(system=False, environ=env)
        assert s.data_dir == tmp_path / "data" / "rustaid"
        assert s.listen == (f"unix://{tmp_path}/run/rustaid/rustaid.sock",)
    finally:
        os.environ.clear()
        os.environ.update(old)
    assert default_socket(True) == Path("/run/rustaid/rustaid.sock")
    assert load_settings(system=True, environ={}).data_dir == Path("/var/lib/rustaid")


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "rustaid.toml").write_text(
        'default_max_tokens = 100\nthreads = 3\nlog_level = "debug"\n[power]\nx = 1\n'
    )
    s = load_settings(data_dir=tmp_path, environ={"RUSTAID_THREADS": "2"})
    assert (s.default_max_tokens, s.threads, s.log_level) == (100, 2, "debug")
    assert s.extra == {"power": {"x": 1}}
    s = load_settings(data_dir=tmp_path, environ={"RUSTAID_THREADS": "2"}, overrides={"threads": 1})
    assert s.threads == 1


@pytest.mark.parametrize(
    ("toml", "env", "needle"),
    [
        ('threads = "many"', {}, "threads"),
        ("log_level = 'loud'", {}, "log_level"),
        ("default_max_tokens = 0", {}, "default_max_tokens"),
        ("default_max_tokens = 99999\nmax_tokens_limit = 10", {}, "default_max_tokens"),
        ("not toml [", {}, "rustaid.toml"),
        ("", {"RUSTAID_DROP_IN_PLUGINS": "maybe"}, "RUSTAID_DROP_IN_PLUGINS"),
        ("listen = []", {}, "listen"),
    ],
)
def test_bad_settings_name_the_key(
    tmp_path: Path, toml: str, env: dict[str, str], needle: str
) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "rustaid.toml").write_text(toml)
    with pytest.raises(InvalidArgument, match=needle):
        load_settings(data_dir=tmp_path, environ=env)

"""Settings from defaults, rustaid.toml, environment and flags, with clear errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
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


def test_root_without_xdg_gets_a_per_user_instance(tmp_path: Path) -> None:
    """The system service is asked for with --system (its unit does), never guessed."""
    assert load_settings(environ={}).system is False
    assert load_settings(system=True, environ={}).system is True


def test_serve_as_root_without_a_choice_says_which_instance(tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("the warning is for root")
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    sock = f"unix://{tmp_path}/r.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rustaid", "serve", "--data-dir", str(tmp_path / "d"),
         "--listen", sock],
        env={**env, "RUSTAID_ENTRY_POINT_PLUGINS": "0"},
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert "running as root without --system: a per-user instance" in first
    assert f"data {tmp_path / 'd'}, listening on {sock}" in first
    assert "`rustaid serve --system`" in first

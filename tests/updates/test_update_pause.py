"""The crash tests' pause: a hook the testing entry point gives the installer. The
daemon itself never pauses, whatever its environment says."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rustaid.testing.daemon import isolated_settings, running_daemon
from rustaid.testing.update_pause import pause_hook, pause_marker
from tests.updates.conftest import Publisher, updates_config, write_config


def test_the_hook_holds_only_its_step_and_says_so(tmp_path: Path) -> None:
    marker = pause_marker(tmp_path, "verify")
    marker.parent.mkdir(parents=True)
    hook = pause_hook("verify", marker)
    assert [hook(step) for step in ("download", "switch", "commit")] == [False] * 3
    assert not marker.exists()
    assert hook("verify") is True
    assert marker.read_text() == str(os.getpid())


def test_the_entry_point_names_the_steps_it_knows(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "rustaid.testing.update_pause", "unpacking", "serve"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "download,verify,switch,health_check,commit" in r.stderr


async def test_the_daemon_ignores_the_old_pause_variable(
    tmp_path: Path,
    publisher: Publisher,
    models: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Read by the daemon once; an update held at `download` would never finish.
    monkeypatch.setenv("RUSTAID_UPDATES_PAUSE_AT", "download")
    data = tmp_path / "data"
    write_config(data, updates_config(publisher.url, publisher.keys[:1]))
    publisher.release(models["v1"], "1.0")
    async with running_daemon(isolated_settings(data)) as d:
        apply = d.updates.apply(wait=True)  # type: ignore[attr-defined]
        _, records = await asyncio.wait_for(apply, 120)
    assert [r.outcome for r in records] == ["committed"]
    assert not list((data / "state" / "updates" / "staging").iterdir())

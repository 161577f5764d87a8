"""`python -m rustaid.testing.update_pause STEP serve ...`: the daemon, with its
updates held at STEP (one of download, verify, switch, health_check, commit) until it
is killed, so crash tests can kill -9 it inside that step.

On reaching the step it writes `pause_marker(data_dir, STEP)` (in the updater's
staging folder, which recovery empties at the next start) and waits there.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rustaid import cli
from rustaid.updates.installer import PAUSE_POINTS, PauseHook

if TYPE_CHECKING:
    from rustaid.daemon import Daemon


def pause_marker(data_dir: Path, step: str) -> Path:
    """The file a daemon started here writes when its update reaches `step`."""
    return data_dir / "state" / "updates" / "staging" / f"paused-at-{step}"


def pause_hook(step: str, marker: Path) -> PauseHook:
    def pause(point: str) -> bool:
        if point != step:
            return False
        marker.write_text(str(os.getpid()))
        return True

    return pause


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in PAUSE_POINTS:
        print(
            f"usage: python -m rustaid.testing.update_pause {{{','.join(PAUSE_POINTS)}}} "
            "serve [rustaid serve options]",
            file=sys.stderr,
        )
        return 2
    step, rest = argv[0], argv[1:]

    def prepare(daemon: Daemon) -> None:
        marker = pause_marker(daemon.settings.data_dir, step)
        daemon.updates.pause_at = pause_hook(step, marker)

    return cli.main(rest, prepare=prepare)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

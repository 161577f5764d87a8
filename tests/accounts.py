"""Real system users and groups for access tests, removed again afterwards (only those
the test created: accounts that existed before are left alone)."""

from __future__ import annotations

import contextlib
import grp
import pwd
import subprocess
import time
from collections.abc import Iterator, Sequence


def exists(kind: str, name: str) -> bool:
    try:
        (grp.getgrnam if kind == "group" else pwd.getpwnam)(name)
    except KeyError:
        return False
    return True


def _run(argv: list[str]) -> None:
    # /etc/passwd is locked while another test process adds users: try again.
    for _ in range(20):
        r = subprocess.run(argv, capture_output=True, text=True)
        if r.returncode == 0:
            return
        time.sleep(0.25)
    raise RuntimeError(f"{' '.join(argv)}: {r.stderr}")


class Accounts:
    def __init__(self) -> None:
        self.created: list[tuple[str, str]] = []

    def created_by(self, kind: str, name: str) -> None:
        """`name` was created by other means (e.g. systemd-sysusers): remove it too."""
        self.created.append((kind, name))

    def group(self, name: str) -> None:
        if not exists("group", name):
            _run(["groupadd", "--system", name])
            self.created.append(("group", name))

    def user(self, name: str, groups: Sequence[str] = ()) -> None:
        if not exists("user", name):
            extra = ["-G", ",".join(groups)] if groups else []
            _run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                  *extra, name])  # fmt: skip
            self.created.append(("user", name))


@contextlib.contextmanager
def temporary_accounts() -> Iterator[Accounts]:
    accounts = Accounts()
    try:
        yield accounts
    finally:
        for kind, name in reversed(accounts.created):
            subprocess.run(["userdel" if kind == "user" else "groupdel", name], capture_output=True)
            if kind == "user" and exists("group", name):  # the user's own group
                subprocess.run(["groupdel", name], capture_output=True)

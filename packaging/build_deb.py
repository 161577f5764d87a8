#!/usr/bin/env python3
"""Build the Debian package of rustaid: `make deb` (or run this file from the repo).

    python3 packaging/build_deb.py [--out build/deb] [--stage-only] [--no-venv]
                                   [--no-lintian] [--wheels build/wheels]

What goes where (the staged tree mirrors the installed system):

    /usr/lib/rustaid/                 a self-contained virtualenv (Debian's python3):
                                      rustaid, rustaid-client and every dependency
    /usr/bin/rustaid, /usr/bin/rustaictl -> /usr/lib/rustaid/bin/...
    /usr/lib/systemd/system/rustaid.service, /usr/lib/systemd/user/rustaid.service
    /usr/lib/sysusers.d/rustaid.conf, /usr/lib/tmpfiles.d/rustaid.conf
    /usr/share/dbus-1/system.d/org.rustai.Daemon1.conf          (bus policy)
    /usr/share/dbus-1/system-services/org.rustai.Daemon1.service (activation)
    /usr/share/dbus-1/services/org.rustai.Daemon1.service        (session activation)
    /etc/rustaid/rustaid.toml         default settings (a conffile)
    /usr/share/man/man1/rustaid.1.gz, rustaictl.1.gz   from --help
    /usr/share/doc/rustaid/           README, docs/*.md, copyright, changelog

llama.cpp is compiled once into a portable wheel (build/wheels/llama-portable/): every
CPU variant of the ggml CPU backend is built (GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS)
and the best one for the machine is picked at run time, so one package runs on any
x86-64 (or arm64) machine. The wheel is reused by later builds.

--stage-only stops after the tree; --no-venv leaves the virtualenv out (fast: for
checks of everything else). Python byte code is compiled by postinst, not shipped.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNTIME_LOCK = REPO / "packaging" / "lock" / "runtime.txt"
PACKAGING = REPO / "packaging"
SYSTEMD = REPO / "systemd"
PREFIX = "/usr/lib/rustaid"
# Debian's interpreter: the package depends on it, so the venv must be built with it.
SYSTEM_PYTHON = "/usr/bin/python3"
DEB_REVISION = "1"
MAINTAINER = "rustaid developers <rustaid@rustai.org>"
LLAMA_CMAKE_ARGS = (
    "-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON "
    "-DCMAKE_INSTALL_BINDIR=llama_cpp/lib -DCMAKE_INSTALL_LIBDIR=llama_cpp/lib "
    "-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF "
    "-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"
)

FILES: list[tuple[str, Path, int]] = [
    ("usr/lib/systemd/system/rustaid.service", SYSTEMD / "rustaid.service", 0o644),
    ("usr/lib/systemd/user/rustaid.service", SYSTEMD / "user" / "rustaid.service", 0o644),
    ("usr/lib/sysusers.d/rustaid.conf", SYSTEMD / "sysusers.d" / "rustaid.conf", 0o644),
    ("usr/lib/tmpfiles.d/rustaid.conf", SYSTEMD / "tmpfiles.d" / "rustaid.conf", 0o644),
    ("usr/share/dbus-1/system.d/org.rustai.Daemon1.conf",
     SYSTEMD / "dbus" / "system.d" / "org.rustai.Daemon1.conf", 0o644),
    ("usr/share/dbus-1/system-services/org.rustai.Daemon1.service",
     SYSTEMD / "dbus" / "system-services" / "org.rustai.Daemon1.service", 0o644),
    ("usr/share/dbus-1/services/org.rustai.Daemon1.service",
     SYSTEMD / "dbus" / "services" / "org.rustai.Daemon1.service", 0o644),
    ("etc/rustaid/rustaid.toml", PACKAGING / "rustaid.toml", 0o644),
    ("usr/share/doc/rustaid/README.md", REPO / "README.md", 0o644),
    ("usr/share/lintian/overrides/rustaid", PACKAGING / "debian" / "lintian-overrides", 0o644),
]  # fmt: skip
# The user-facing documents (rustaid.toml points at them); benchmarks.md needs its plots.
FILES += [
    (f"usr/share/doc/rustaid/{doc.name}", doc, 0o644)
    for doc in sorted((REPO / "docs").glob("*.md"))
    if doc.name != "benchmarks.md"
]

SCRIPTS = ("postinst", "prerm", "postrm")


def log(msg: str) -> None:
    print(f"build_deb: {msg}", file=sys.stderr, flush=True)


def run(*argv: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [str(a) for a in argv], env=env, cwd=cwd, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SystemExit(
            f"build_deb: {' '.join(map(str, argv))} failed ({result.returncode}):\n"
            f"{result.stdout[-4000:]}{result.stderr[-4000:]}"
        )
    return result.stdout


def version() -> str:
    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


def architecture() -> str:
    return run("dpkg", "--print-architecture").strip()


def install(root: Path, dest: str, src: Path | bytes, mode: int = 0o644) -> Path:
    path = root / dest
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(src, bytes):
        path.write_bytes(src)
    else:
        shutil.copyfile(src, path)
    path.chmod(mode)
    return path


def gz(data: bytes) -> bytes:
    """gzip -9n: best compression, no name or time stamp (reproducible)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0, filename="") as f:
        f.write(data)
    return buf.getvalue()


# -- man pages from --help ----------------------------------------------------------------


def _help(argv: list[str]) -> str:
    env = {**os.environ, "COLUMNS": "80", "PYTHONPATH": f"{REPO}:{REPO / 'clients' / 'python'}"}
    return run(sys.executable, *argv, env=env)


def _roff(text: str) -> str:
    lines = []
    for line in text.rstrip().splitlines():
        line = line.replace("\\", "\\e").replace("-", "\\-")
        lines.append("\\&" + line if line.startswith((".", "'")) else line)
    return "\n".join(lines)


def man_page(name: str, summary: str, sections: list[tuple[str, str]], see_also: str) -> bytes:
    out = [
        f'.TH {name.upper()} 1 "" "rustaid {version()}" "User Commands"',
        ".SH NAME",
        f"{name} \\- {summary}",
    ]
    for title, body in sections:
        out += [f".SH {title}", ".nf", _roff(body), ".fi"]
    out += [".SH SEE ALSO", see_also, ""]
    return "\n".join(out).encode()


def man_pages(root: Path) -> None:
    rustaid = man_page(
        "rustaid",
        "local AI daemon (gRPC and D-Bus)",
        [
            ("SYNOPSIS", _help(["-m", "rustaid", "--help"])),
            ("SERVE", _help(["-m", "rustaid", "serve", "--help"])),
            ("FILES", "/etc/rustaid/rustaid.toml  settings of the system service\n"
                      "/var/lib/rustaid/         models, plugins, state\n"
                      "/run/rustaid/rustaid.sock gRPC socket (group rustai)"),
        ],
        "rustaictl(1), /usr/share/doc/rustaid/README.md, /usr/share/doc/rustaid/dbus.md",
    )  # fmt: skip
    ctl = man_page(
        "rustaictl",
        "command line client of the rustaid daemon",
        [("SYNOPSIS", _help(["-c", "from rustaid_client.cli import main; main(['--help'])"]))],
        "rustaid(1)",
    )
    install(root, "usr/share/man/man1/rustaid.1.gz", gz(rustaid))
    install(root, "usr/share/man/man1/rustaictl.1.gz", gz(ctl))


# -- the virtualenv -----------------------------------------------------------------------


def locked_version(lock: str, name: str) -> str:
    """The version a lock file pins `name` to ("" when it does not)."""
    for line in lock.splitlines():
        if line.lower().startswith(f"{name}=="):
            return line.split("==", 1)[1].split()[0].rstrip("\\ ").split(";")[0].strip()
    return ""


def without_package(lock: str, name: str) -> str:
    """A hashed lock file without one package's entry (its line and its hash lines)."""
    out: list[str] = []
    skipping = False
    for line in lock.splitlines():
        if line and not line[0].isspace():
            skipping = line.lower().startswith(f"{name}==")
        if not skipping:
            out.append(line)
    return "\n".join(out) + "\n"


def llama_wheel(wheels: Path) -> Path:
    """The portable llama-cpp-python wheel, built once (about 20 minutes on 2 cores)."""
    wanted = locked_version(RUNTIME_LOCK.read_text(), "llama-cpp-python")
    stamp = hashlib.sha256(LLAMA_CMAKE_ARGS.encode()).hexdigest()[:10]
    folder = wheels / f"llama-portable-{stamp}"
    found = sorted(folder.glob(f"llama_cpp_python-{wanted or '*'}-*.whl"))
    if found:
        return found[-1]
    spec = f"llama-cpp-python=={wanted}" if wanted else "llama-cpp-python"
    log(f"building a portable {spec} wheel (once; takes a while)...")
    env = {**os.environ, "CMAKE_ARGS": LLAMA_CMAKE_ARGS,
           "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}  # fmt: skip
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-binary", "llama-cpp-python",
        "--no-cache-dir", "-w", tmp, spec, env=env)  # fmt: skip
    tmp.rename(folder)
    return next(folder.glob("llama_cpp_python-*.whl"))


def project_wheels(dist: Path) -> list[Path]:
    """Wheels of rustaid and rustaid-client from this tree (python -m build)."""
    shutil.rmtree(dist, ignore_errors=True)
    for project in (REPO, REPO / "clients" / "python"):
        run(sys.executable, "-m", "build", "--wheel", "--outdir", dist, project)
    return sorted(dist.glob("*.whl"))


def build_venv(root: Path, wheels: Path) -> None:
    venv = root / PREFIX.lstrip("/")
    log(f"virtualenv in {PREFIX} with {SYSTEM_PYTHON}")
    run(SYSTEM_PYTHON, "-m", "venv", venv)
    llama = llama_wheel(wheels)
    ours = project_wheels(wheels / "project")
    locked = wheels / "runtime-locked.txt"
    locked.write_text(without_package(RUNTIME_LOCK.read_text(), "llama-cpp-python"))
    log("installing the locked dependencies (hashes checked), then rustaid and rustaid-client")
    pip = [venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--no-compile",
           "--disable-pip-version-check", "--no-deps"]  # fmt: skip
    run(*pip, "--require-hashes", "-r", locked)
    # llama-cpp-python is the portable build of the locked version, made here.
    run(*pip, llama, *ours)
    run(venv / "bin" / "python", "-m", "pip", "check")
    run(venv / "bin" / "python", "-m", "pip", "uninstall", "--quiet", "--yes", "pip")
    relocate(venv, root)
    fix_modes(venv)


def elf_objects(folder: Path) -> list[Path]:
    found = []
    for path in folder.rglob("*.so*"):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as f:
                if f.read(4) == b"\x7fELF":
                    found.append(path)
    return found


def fix_modes(venv: Path) -> None:
    """No exec bit on shared objects or data files. The objects are not stripped: the
    wheels ship them as their authors built them, and stripping a library that
    auditwheel patched (numpy.libs/...) breaks it (see the lintian overrides)."""
    for path in elf_objects(venv):
        path.chmod(0o644)
    # Data files some wheels mark executable (no #! line, not ELF): not programs.
    for path in venv.joinpath("lib").rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_mode & 0o111:
            with path.open("rb") as f:
                head = f.read(4)
            if not head.startswith(b"#!") and head != b"\x7fELF":
                path.chmod(0o644)


def relocate(venv: Path, root: Path) -> None:
    """The venv was made in the staging tree: point every path at /usr/lib/rustaid."""
    staged = str(venv)
    for path in [*venv.joinpath("bin").iterdir(), venv / "pyvenv.cfg"]:
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        if staged.encode() in data:
            path.write_bytes(data.replace(staged.encode(), PREFIX.encode()))
    for path in venv.rglob("__pycache__"):
        shutil.rmtree(path)
    for path in venv.rglob("direct_url.json"):  # records the build machine's paths
        path.unlink()
    # Shells and fish/csh activation scripts are of no use in a system package.
    for name in ("activate", "activate.csh", "activate.fish", "Activate.ps1"):
        (venv / "bin" / name).unlink(missing_ok=True)
    for name in ("rustaid", "rustaictl"):
        link = root / "usr" / "bin" / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(f"../lib/rustaid/bin/{name}")


# -- Debian metadata ----------------------------------------------------------------------


def shlib_depends(root: Path) -> str:
    """Depends of the shared objects in the venv, from dpkg-shlibdeps."""
    objects = elf_objects(root / PREFIX.lstrip("/"))
    if not objects:
        return ""
    libdirs = sorted({str(p.parent) for p in objects})
    work = root.parent / (root.name + ".shlibs")
    (work / "debian").mkdir(parents=True, exist_ok=True)
    (work / "debian" / "control").write_text(
        "Source: rustaid\n\nPackage: rustaid\nArchitecture: any\n"
    )
    out = run("dpkg-shlibdeps", "-O", "--ignore-missing-info", "--warnings=0",
              *(f"-l{d}" for d in libdirs), *objects, cwd=work)  # fmt: skip
    shutil.rmtree(work)
    match = re.search(r"shlibs:Depends=(.*)", out)
    return match.group(1).strip() if match else ""


def control(root: Path, arch: str, venv: bool) -> str:
    depends = ["python3 (>= 3.11~)", "python3 (<< 3.12)", "dbus", "systemd | systemd-sysusers"]
    if venv:
        depends = [d for d in shlib_depends(root).split(", ") if d] + depends
    size = sum(p.lstat().st_size for p in root.rglob("*") if not p.is_dir()) // 1024
    return (
        f"Package: rustaid\n"
        f"Version: {version()}-{DEB_REVISION}\n"
        f"Architecture: {arch}\n"
        f"Maintainer: {MAINTAINER}\n"
        f"Installed-Size: {size}\n"
        f"Depends: {', '.join(dict.fromkeys(depends))}\n"
        f"Section: misc\n"
        f"Priority: optional\n"
        f"Homepage: https://rustai.org/\n"
        f"Description: local AI daemon with gRPC and D-Bus APIs\n"
        f" rustaid serves local AI on Linux devices, from a Raspberry Pi to a server:\n"
        f" text generation with llama.cpp (GGUF models), embeddings and retrieval,\n"
        f" over a gRPC control plane (Unix socket /run/rustaid/rustaid.sock) and the\n"
        f" D-Bus API org.rustai.Daemon1 for desktop applications.\n"
        f" .\n"
        f" The package runs it as a hardened systemd service (user rustaid; members\n"
        f" of group rustai may use it) and ships a per-user unit as well. Everything\n"
        f" it needs is in a private Python environment under /usr/lib/rustaid.\n"
    )


def changelog() -> bytes:
    text = (
        f"rustaid ({version()}-{DEB_REVISION}) unstable; urgency=medium\n\n"
        "  * Package built from the rustaid source tree.\n\n"
        f" -- {MAINTAINER}  Mon, 01 Jan 2024 00:00:00 +0000\n"
    )
    return gz(text.encode())


def md5sums(root: Path) -> str:
    lines = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] == "DEBIAN" or path.is_symlink() or not path.is_file():
            continue
        lines.append(f"{hashlib.md5(path.read_bytes()).hexdigest()}  {rel}")
    return "\n".join(lines) + "\n"


def stage(out: Path, *, venv: bool, wheels: Path) -> Path:
    arch = architecture()
    root = out / f"rustaid_{version()}-{DEB_REVISION}_{arch}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for dest, src, mode in FILES:
        install(root, dest, src, mode)
    install(root, "usr/share/doc/rustaid/copyright", PACKAGING / "debian" / "copyright")
    install(root, "usr/share/doc/rustaid/changelog.Debian.gz", changelog())
    man_pages(root)
    if venv:
        build_venv(root, wheels)
    debian = root / "DEBIAN"
    debian.mkdir()
    install(root, "DEBIAN/conffiles", b"/etc/rustaid/rustaid.toml\n")
    for script in SCRIPTS:
        install(root, f"DEBIAN/{script}", PACKAGING / "debian" / script, 0o755)
    install(root, "DEBIAN/control", control(root, arch, venv).encode())
    install(root, "DEBIAN/md5sums", md5sums(root).encode())
    for path in root.rglob("*"):  # no group/other write bits anywhere
        if not path.is_symlink():
            path.chmod(path.stat().st_mode & ~0o022)
    return root


def build(root: Path) -> Path:
    deb = root.parent / f"{root.name}.deb"
    log(f"dpkg-deb --build {deb.name}")
    run("dpkg-deb", "--root-owner-group", "-Zxz", "--build", root, deb)
    return deb


def lintian(deb: Path) -> str:
    if shutil.which("lintian") is None:
        raise SystemExit("build_deb: lintian is not installed (make system-deps)")
    result = subprocess.run(["lintian", "--tag-display-limit", "0", str(deb)],
                            capture_output=True, text=True)  # fmt: skip
    report = result.stdout + result.stderr
    errors = [line for line in report.splitlines() if line.startswith("E:")]
    if errors:
        raise SystemExit("build_deb: lintian reports errors:\n" + "\n".join(errors))
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "build" / "deb")
    p.add_argument("--wheels", type=Path, default=REPO / "build" / "wheels",
                   help="where the portable llama-cpp-python wheel is kept")  # fmt: skip
    p.add_argument("--stage-only", action="store_true", help="stop after the staged tree")
    p.add_argument("--no-venv", action="store_true", help="leave the virtualenv out")
    p.add_argument("--no-lintian", action="store_true")
    args = p.parse_args(argv)
    root = stage(args.out, venv=not args.no_venv, wheels=args.wheels)
    print(root)
    if args.stage_only:
        return 0
    deb = build(root)
    if not args.no_lintian:
        report = lintian(deb)
        log(f"lintian: no errors ({len(report.splitlines())} other lines)")
    print(deb)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

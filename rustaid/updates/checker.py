"""Checks for updates: follows the signed root chain (key rotation), verifies
metadata.json (signatures, threshold, version floor, expiry) and decides what is newer
than what is installed, in the staged rollout and allowed on this device."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from rustaid import __version__
from rustaid.errors import PreconditionFailed, RustaidError
from rustaid.updates.atomic import write_atomic
from rustaid.updates.download import fetch_bytes, fetch_required
from rustaid.updates.journal import Outcome, new_update_id
from rustaid.updates.metadata import (
    Artifact,
    MetadataRejected,
    Release,
    Trust,
    canonical_bytes,
    check_channel,
    next_trust,
    parse_document,
    verify_release,
    version_key,
)
from rustaid.updates.reporter import Reporter
from rustaid.updates.results import AvailableUpdate, CheckResult, Phase
from rustaid.updates.threads import in_daemon_thread
from rustaid.updates.workspace import Workspace, writing

if TYPE_CHECKING:
    from rustaid.config import Settings

log = logging.getLogger(__name__)

MAX_ROOT_STEPS = 32


def rollout_bucket(device_id: str, artifact_id: str, version: str) -> int:
    """0..99, stable for a device and a release: the device takes the release when the
    bucket is below the rollout percentage."""
    digest = hashlib.sha256(f"{device_id}/{artifact_id}/{version}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


class Checker:
    def __init__(self, ws: Workspace, reporter: Reporter, settings: Callable[[], Settings]) -> None:
        self.ws = ws
        self.reporter = reporter
        # The daemon's settings as they are now (a reload replaces them).
        self._settings = settings
        self.metadata_version = 0

    # ------------------------------------------------------------------ configured?

    def require_enabled(self) -> None:
        if not self.ws.config.enabled:
            raise PreconditionFailed(
                "updates are not configured: set [updates] repository and trusted_keys in "
                f"{self._settings().config_dir / 'rustaid.toml'}",
                reason="UPDATES_NOT_CONFIGURED",
            )

    # ------------------------------------------------------------------ checking

    async def check(self, channel: str, *, show: bool) -> CheckResult:
        """Fetch and verify the release metadata; what is newer than what is installed.
        `show` is False while an update runs: its status stays."""
        self.require_enabled()
        config = self.ws.config
        channel = check_channel(channel) if channel else config.channel
        set_status = self.reporter.set if show else (lambda **_: None)
        set_status(
            phase=Phase.CHECKING,
            artifact_id="",
            version="",
            bytes_done=0,
            bytes_total=0,
            update_id="",
            message=f"checking {config.repository} (channel {channel})",
        )
        started = self.ws.clock()
        try:
            release = await in_daemon_thread(self._fetch_release)
            artifacts = release.channel(channel)
        except RustaidError as e:
            message = f"update check failed: {e.message}"
            set_status(phase=Phase.FAILED, message=message)
            if isinstance(e, MetadataRejected):
                record = self.reporter.record(
                    "", "", "", "", Outcome.FAILED, message, started, update_id=new_update_id()
                )
                self.reporter.finish(record)
            raise
        now = self.ws.clock()
        self.reporter.save_schedule(last_check=now)
        wanted = set(config.artifacts)
        updates = [
            u
            for a in artifacts
            if (not wanted or a.id in wanted) and (u := self._available(a, channel)) is not None
        ]
        automatic = sum(u.automatic for u in updates)
        set_status(
            phase=Phase.IDLE,
            message=(
                f"metadata version {release.version}: {len(updates)} update(s) available"
                f"{f', {automatic} for this device now' if updates else ''}"
            ),
        )
        result = CheckResult(updates, release.version, now, channel, release)
        self.reporter.checks.publish(result)
        return result

    # ------------------------------------------------------------------ trust

    def _trust_path(self) -> Path:
        return self.ws.root / "trust.json"

    def _load_trust(self) -> Trust:
        configured = self.ws.config.trust
        assert configured is not None
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError, RustaidError):
            data = json.loads(self._trust_path().read_text(encoding="utf-8"))
            # Rotations apply while the configured keys stay the same; an operator who
            # changes the configured keys starts over from them.
            if data.get("configured") == configured.fingerprint():
                stored = Trust.from_json(data["trust"])
                if stored.version > configured.version:
                    return stored
        return configured

    def _save_trust(self, trust: Trust) -> None:
        configured = self.ws.config.trust
        assert configured is not None
        data = {"configured": configured.fingerprint(), "trust": trust.to_json()}
        write_atomic(self._trust_path(), json.dumps(data, indent=2).encode(), mode=0o600)

    def _stored_release(self) -> tuple[int, bytes] | None:
        path = self.ws.root / "metadata.json"
        try:
            doc = parse_document(path.read_bytes(), str(path))
            version = doc.signed.get("version")
            if isinstance(version, int) and not isinstance(version, bool):
                return version, canonical_bytes(doc.signed)
        except FileNotFoundError:
            return None
        except (OSError, RustaidError) as e:
            log.error("cannot read the stored release metadata %s: %s", path, e)
        return None

    def remember_stored_release(self) -> None:
        """Start-up: the metadata version this device trusts already."""
        stored = self._stored_release()
        self.metadata_version = stored[0] if stored else 0

    def _fetch_release(self) -> Release:
        """Blocking: the root chain, then metadata.json, verified."""
        cfg = self.ws.config
        root = self.ws.root
        trust = self._load_trust()
        for _ in range(MAX_ROOT_STEPS):
            name = f"root/{trust.version + 1}.json"
            raw = fetch_bytes(
                f"{cfg.repository}/{name}",
                max_bytes=cfg.max_metadata_bytes,
                timeout=cfg.download_timeout_s,
                mirrors=cfg.mirrors,
            )
            if raw is None:
                break
            trust = next_trust(trust, raw, name)
            with writing(root):
                self._save_trust(trust)
            log.info("trusted keys rotated to root version %d", trust.version)
        raw = fetch_required(
            f"{cfg.repository}/metadata.json",
            max_bytes=cfg.max_metadata_bytes,
            timeout=cfg.download_timeout_s,
            mirrors=cfg.mirrors,
        )
        stored = self._stored_release()
        floor = stored[0] if stored else 0
        now = datetime.fromtimestamp(self.ws.clock(), UTC)
        release, doc = verify_release(raw, trust, now=now, floor=floor)
        if stored is not None and release.version == stored[0]:
            if canonical_bytes(doc.signed) != stored[1]:
                raise MetadataRejected(
                    f"metadata.json version {release.version} differs from the version "
                    f"{release.version} this device already trusts; a publisher must raise "
                    "the version for every change",
                    reason="METADATA_VERSION_REUSED",
                )
        else:
            with writing(root):
                write_atomic(root / "metadata.json", raw, mode=0o600)
        self.metadata_version = release.version
        return release

    # ------------------------------------------------------------------ what applies

    def _available(self, a: Artifact, channel: str) -> AvailableUpdate | None:
        existing = self.ws.installed_slots(a.id)
        slots = existing or self.ws.slots(a.id, a.kind)
        current = slots.info(slots.current_slot())
        current_version = current.version if current else ""
        if current is not None and version_key(a.version) <= version_key(current.version):
            return None
        in_rollout = rollout_bucket(self.ws.device_id, a.id, a.version) < a.rollout
        max_bytes = self.ws.config.max_artifact_bytes
        note = ""
        blocked = True
        if existing is not None and existing.kind is not a.kind:
            note = f"{a.id} is installed as a {existing.kind.value}, not a {a.kind.value}"
        elif a.min_daemon_version and version_key(__version__) < version_key(a.min_daemon_version):
            note = f"needs rustaid {a.min_daemon_version} or newer (this is {__version__})"
        elif not slots.entry_is_ours():
            note = (
                f"{slots.entry} exists and is not managed by the updater; move it away to let "
                "updates manage it"
            )
        elif a.size > max_bytes:
            note = f"{a.size} bytes is more than max_artifact_size ({max_bytes})"
        elif failed := self._failed_before(a):
            note = (
                f"failed its health check before (update {failed}); name it in ApplyUpdate "
                "to try again"
            )
            blocked = False
        elif not in_rollout:
            note = f"this device is not in the first {a.rollout} % of the staged rollout"
            blocked = False
        else:
            blocked = False
        return AvailableUpdate(a, channel, current_version, in_rollout, note, blocked)

    def deferred_already(self, a: Artifact) -> bool:
        """The last record of `a` is a deferral of this very release."""
        for r in reversed(self.ws.history.records()):
            if r.artifact_id == a.id:
                return r.outcome == Outcome.DEFERRED and r.sha256 == a.sha256
        return False

    def _failed_before(self, a: Artifact) -> str:
        for r in self.ws.history.records():
            if r.artifact_id == a.id and r.sha256 == a.sha256 and r.artifact_at_fault:
                return r.update_id
        return ""

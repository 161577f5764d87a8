"""A/B slots per artifact, switched by renaming one symlink.

Layout under `<data-dir>/state/updates/artifacts/<id>/`::

    a/<id>.gguf  a/slot.json       one version (payload + what it is)
    b/<id>.gguf  b/slot.json       the other version
    current -> a                   the version in use (relative symlink)

and the daemon sees the artifact through a stable symlink it never has to rewrite::

    <data-dir>/models/<id>.gguf  -> ../state/updates/artifacts/<id>/current/<id>.gguf
    <data-dir>/plugins/<id>.py   -> ../state/updates/artifacts/<id>/current/<id>.py

Switching versions is one `rename(2)` of a fresh symlink over `current` followed by an
fsync of the folder: every reader resolves either the old or the new file. A slot is
only valid with its slot.json, which is written (atomically) after the payload is in
place, so a half-filled slot is recognisable and cleared.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from rustaid.updates.atomic import fsync_dir, fsync_file, remove, symlink_atomic, write_atomic
from rustaid.updates.metadata import SUFFIX, ArtifactKind

SLOTS = ("a", "b")
CURRENT = "current"
SLOT_INFO = "slot.json"


@dataclass(frozen=True)
class SlotInfo:
    artifact_id: str
    kind: str
    version: str
    sha256: str
    size: int
    installed_time: float
    update_id: str


def other(slot: str | None) -> str:
    return "b" if slot == "a" else "a"


class ArtifactSlots:
    """The slots of one artifact and its entry in models/ or plugins/."""

    def __init__(
        self,
        root: Path,
        artifact_id: str,
        kind: ArtifactKind,
        data_dir: Path,
    ) -> None:
        self.artifact_id = artifact_id
        self.kind = kind
        self.dir = root / artifact_id
        self.filename = artifact_id + SUFFIX[kind]
        folder = data_dir / ("models" if kind is ArtifactKind.MODEL else "plugins")
        self.entry = folder / self.filename

    # -- reading ------------------------------------------------------------------------

    def current_slot(self) -> str | None:
        try:
            target = str((self.dir / CURRENT).readlink())
        except (FileNotFoundError, NotADirectoryError):
            return None
        return target if target in SLOTS else None

    def info(self, slot: str | None) -> SlotInfo | None:
        if slot is None:
            return None
        try:
            data = json.loads((self.dir / slot / SLOT_INFO).read_text(encoding="utf-8"))
            info = SlotInfo(**data)
        except (OSError, ValueError, TypeError):
            return None
        if not (self.dir / slot / self.filename).is_file():
            return None
        return info

    def payload(self, slot: str) -> Path:
        return self.dir / slot / self.filename

    def entry_target(self) -> str:
        """The relative target of the models/ or plugins/ symlink."""
        return os.path.relpath(self.dir / CURRENT / self.filename, self.entry.parent)

    def entry_is_ours(self) -> bool:
        """True if the entry is absent or our symlink (an operator's own file is not)."""
        if not self.entry.is_symlink():
            return not self.entry.exists()
        return str(self.entry.readlink()) == self.entry_target()

    # -- changing -----------------------------------------------------------------------

    def install(self, slot: str, staged: Path, info: SlotInfo) -> None:
        """Move a verified staged file into `slot` (same file system: a rename)."""
        folder = self.dir / slot
        remove(folder / SLOT_INFO)  # invalid first: a crash from here on clears the slot
        remove(folder)
        folder.mkdir(parents=True, mode=0o755)
        staged.chmod(0o644)
        fsync_file(staged)
        staged.replace(folder / self.filename)
        fsync_dir(folder)
        fsync_dir(staged.parent)
        write_atomic(folder / SLOT_INFO, json.dumps(asdict(info), indent=2).encode())
        fsync_dir(self.dir)

    def switch(self, slot: str | None) -> None:
        """Make `slot` current (None: the artifact is not installed) and keep the entry
        symlink consistent with it."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        if slot is None:
            if self.entry_is_ours():
                remove(self.entry)
            remove(self.dir / CURRENT)
            return
        symlink_atomic(slot, self.dir / CURRENT)
        self.ensure_entry()

    def ensure_entry(self) -> None:
        if not self.entry.is_symlink() or str(self.entry.readlink()) != self.entry_target():
            self.entry.parent.mkdir(parents=True, exist_ok=True)
            symlink_atomic(self.entry_target(), self.entry)

    def clear(self, slot: str) -> None:
        remove(self.dir / slot)

    def repair(self) -> None:
        """After a crash: drop invalid slots and match the entry symlink to `current`."""
        current = self.current_slot()
        if current is not None and self.info(current) is None:
            # Cannot happen through switch() (slots are complete before they become
            # current) unless the disk lost data; do not serve a broken slot.
            self.switch(None)
            current = None
        for slot in SLOTS:
            if slot != current and (self.dir / slot).exists() and self.info(slot) is None:
                self.clear(slot)
        if current is None:
            if self.entry.is_symlink() and self.entry_is_ours():
                remove(self.entry)
        else:
            self.ensure_entry()


def managed(root: Path, data_dir: Path) -> list[ArtifactSlots]:
    """Every artifact with slots on disk, in id order."""
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(root.iterdir()):
        if not folder.is_dir() or folder.name.startswith("."):
            continue
        for kind in ArtifactKind:
            slots = ArtifactSlots(root, folder.name, kind, data_dir)
            if any((folder / s / slots.filename).exists() for s in SLOTS):
                found.append(slots)
                break
    return found

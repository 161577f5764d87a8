"""What the daemon knows about its collections beyond what the vector store holds: the
embedding model that fills each one, and the types of the payload fields it filters on.

Kept in `<state>/rag/collections.json`, replaced atomically (write, fsync, rename), so
a crash leaves the old file or the new one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from rustaid.core.diskspace import full_disk_is_exhausted
from rustaid.errors import InvalidArgument, NotFound
from rustaid.providers import Distance, PayloadType
from rustaid.rag.keywords import AVERAGE_WORDS, LEGACY_AVERAGE_WORDS

log = logging.getLogger(__name__)

VERSION = 1
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_name(name: str, field_name: str = "name") -> str:
    if not name:
        raise InvalidArgument(f"{field_name} is empty: name the collection", field=field_name)
    if not NAME.match(name) or ".." in name:
        raise InvalidArgument(
            f"{field_name} {name!r} is not a valid collection name: use 1..64 letters, "
            "digits, '_', '-' and '.', starting with a letter or digit",
            field=field_name,
        )
    return name


@dataclass(frozen=True)
class CollectionRecord:
    name: str
    embedding_model_id: str
    dimension: int
    distance: Distance
    vector_store: str
    created_at: float = 0.0
    # Payload fields filtered on so far (they have an index) and their types.
    fields: Mapping[str, PayloadType] = field(default_factory=dict)
    # Language of the collection's keyword vectors ("": it has none, dense search only).
    keyword_language: str = ""
    # BM25's average chunk length in words that its keyword vectors were made with.
    keyword_average_words: float = AVERAGE_WORDS

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["distance"] = self.distance.value
        data["fields"] = {k: v.value for k, v in self.fields.items()}
        return data

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> CollectionRecord:
        return CollectionRecord(
            name=str(data["name"]),
            embedding_model_id=str(data["embedding_model_id"]),
            dimension=int(data["dimension"]),
            distance=Distance(data["distance"]),
            vector_store=str(data["vector_store"]),
            created_at=float(data.get("created_at", 0.0)),
            fields={str(k): PayloadType(v) for k, v in dict(data.get("fields", {})).items()},
            keyword_language=str(data.get("keyword_language", "")),
            keyword_average_words=float(data.get("keyword_average_words", LEGACY_AVERAGE_WORDS)),
        )


class Catalogue:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._records: dict[str, CollectionRecord] = {}
        self._loaded = False

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if not self.path.is_file():
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            records = [CollectionRecord.from_json(r) for r in data["collections"].values()]
        except (OSError, ValueError, KeyError, TypeError) as e:
            broken = self.path.with_name(f"{self.path.name}.broken-{int(time.time())}")
            log.error("%s is unreadable (%s); moved aside to %s", self.path, e, broken)
            self.path.replace(broken)
            return
        self._records = {r.name: r for r in records}

    def _save(self) -> None:
        """Write the records; on a full disk the file on disk stays as it was, and so do
        the records (read again from it)."""
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            with full_disk_is_exhausted(self.path.parent, "the collection catalogue"):
                self._write(tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            self._loaded = False  # records as the file holds them, read again next time
            self._records = {}
            raise

    def _write(self, tmp: Path) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "version": VERSION,
            "collections": {n: r.to_json() for n, r in sorted(self._records.items())},
        }
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)
        fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def list(self) -> list[CollectionRecord]:
        self._load()
        return [self._records[n] for n in sorted(self._records)]

    def find(self, name: str) -> CollectionRecord | None:
        self._load()
        return self._records.get(name)

    def get(self, name: str, field_name: str = "collection") -> CollectionRecord:
        check_name(name, field_name)
        record = self.find(name)
        if record is None:
            known = ", ".join(sorted(self._records)) or "none yet"
            raise NotFound(
                f"no collection named {name!r} (collections: {known}); fill it with "
                f"`rustaictl rag index PATH... -c {name}`, or create it empty with "
                f"`rustaictl rag create {name}`",
                reason="COLLECTION_NOT_FOUND",
            )
        return record

    def put(self, record: CollectionRecord) -> None:
        self._load()
        self._records[record.name] = record
        self._save()

    def remove(self, name: str) -> None:
        self._load()
        if self._records.pop(name, None) is not None:
            self._save()

    def add_fields(self, name: str, new: Mapping[str, PayloadType]) -> CollectionRecord:
        record = self.get(name)
        merged = replace(record, fields={**record.fields, **new})
        self.put(merged)
        return merged

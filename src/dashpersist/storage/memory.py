"""MemoryStorage: an ephemeral store for hosts' own tests and for trying things out."""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from dashpersist._canonical import copy_json
from dashpersist.errors import ConfigurationError, ConflictError, NotFoundError
from dashpersist.storage.protocol import (
    DocumentKey,
    StoredDocument,
    VersionOutline,
    VersionRecord,
    prepare_import,
    prepare_write,
)
from dashpersist.types import JsonObject

__all__ = ["MemoryStorage"]


@dataclass
class _Entry:
    current: StoredDocument
    history: list[VersionRecord] = field(default_factory=list)


class MemoryStorage:
    """Keep documents in this process's memory; gone when the process ends.

    It honours the whole storage contract (compare-and-swap, atomic history, copies in
    and out), so a host's tests behave as they would against a real backend.
    """

    def __init__(self, *, clock: Callable[[], datetime] | None = None) -> None:
        self._entries: dict[DocumentKey, _Entry] = {}
        self._lock = threading.Lock()
        self._clock = clock or (lambda: datetime.now(UTC))
        self._closed = False

    def read(self, key: DocumentKey) -> StoredDocument | None:
        """Return the current version of *key*, or ``None``."""
        with self._lock:
            self._check_open()
            entry = self._entries.get(key)
            if entry is None:
                return None
            current = entry.current
        return StoredDocument(
            key=current.key,
            document=copy_json(current.document),
            version=current.version,
            checksum=current.checksum,
            updated_at=current.updated_at,
            schema_version=current.schema_version,
        )

    def write(
        self,
        key: DocumentKey,
        document: JsonObject,
        record: VersionRecord | None = None,
        *,
        expected_version: int | None,
    ) -> int:
        """Store *document* and *record* if *key* is still at *expected_version*."""
        with self._lock:
            self._check_open()
            entry = self._entries.get(key)
            current = None if entry is None else (entry.current.version, entry.current.checksum)
            prepared = prepare_write(
                key,
                document,
                record,
                expected_version=expected_version,
                current=current,
                clock=self._clock,
            )
            stored_record = _copied_record(prepared.record)
            stored = StoredDocument(
                key=key,
                document=copy_json(document),
                version=prepared.record.version,
                checksum=prepared.record.checksum,
                updated_at=prepared.record.created_at,
                schema_version=prepared.record.schema_version,
            )
            if entry is None:
                self._entries[key] = _Entry(stored, [stored_record])
            else:
                entry.current = stored
                entry.history.append(stored_record)
            return stored.version

    def delete(self, key: DocumentKey) -> None:
        """Remove the document and its history."""
        with self._lock:
            self._check_open()
            if self._entries.pop(key, None) is None:
                raise NotFoundError(f"{key} does not exist")

    def layout_ids(self, user_id: str) -> list[str]:
        """Return the layout ids *user_id* has, sorted."""
        with self._lock:
            self._check_open()
            return sorted(key.layout_id for key in self._entries if key.user_id == user_id)

    def user_ids(self) -> list[str]:
        """Return every user id that has at least one document, sorted."""
        with self._lock:
            self._check_open()
            return sorted({key.user_id for key in self._entries})

    def versions(
        self, key: DocumentKey, *, before: int | None = None, limit: int = 20
    ) -> list[VersionRecord]:
        """Return up to *limit* history records of *key*, newest first, below *before*."""
        with self._lock:
            self._check_open()
            entry = self._entries.get(key)
            history = [] if entry is None else entry.history
            selected = [r for r in reversed(history) if before is None or r.version < before]
            return [_copied_record(r) for r in selected[: max(limit, 0)]]

    def version_outline(
        self, key: DocumentKey, *, before: int | None = None
    ) -> list[VersionOutline]:
        """Return version, label and keyframe flag of *key*'s records below *before*,
        newest first."""
        with self._lock:
            self._check_open()
            entry = self._entries.get(key)
            history = [] if entry is None else entry.history
            return [
                VersionOutline.of(r)
                for r in reversed(history)
                if before is None or r.version < before
            ]

    def compact(
        self,
        key: DocumentKey,
        *,
        remove: Collection[int],
        snapshots: Mapping[int, JsonObject],
    ) -> None:
        """Store *snapshots* on history records and delete the records in *remove*."""
        with self._lock:
            self._check_open()
            entry = self._entries.get(key)
            if entry is None:
                return
            if entry.current.version in remove:
                raise ConfigurationError(f"the newest version of {key} cannot be removed")
            entry.history = [
                replace(record, snapshot=copy_json(snapshots[record.version]))
                if record.version in snapshots
                else record
                for record in entry.history
                if record.version not in remove
            ]

    def import_document(
        self, key: DocumentKey, current: StoredDocument, history: list[VersionRecord]
    ) -> None:
        """Store *current* and its *history* exactly as given; `ConflictError` if *key* exists."""
        prepare_import(key, current, history)
        stored = StoredDocument(
            key=key,
            document=copy_json(current.document),
            version=current.version,
            checksum=current.checksum,
            updated_at=current.updated_at,
            schema_version=current.schema_version,
        )
        records = [_copied_record(record) for record in history]
        with self._lock:
            self._check_open()
            existing = self._entries.get(key)
            if existing is not None:
                raise ConflictError(
                    key, expected_version=None, actual_version=existing.current.version
                )
            self._entries[key] = _Entry(stored, records)

    def replace_document(
        self,
        key: DocumentKey,
        current: StoredDocument,
        history: list[VersionRecord],
        *,
        expected_version: int,
    ) -> None:
        """Replace *key*'s document and whole history, if it is still at *expected_version*.

        `ConflictError` (nothing changed) otherwise; `ValidationError` for what
        `prepare_import` refuses.
        """
        prepare_import(key, current, history)
        stored = StoredDocument(
            key=key,
            document=copy_json(current.document),
            version=current.version,
            checksum=current.checksum,
            updated_at=current.updated_at,
            schema_version=current.schema_version,
        )
        records = [_copied_record(record) for record in history]
        with self._lock:
            self._check_open()
            existing = self._entries.get(key)
            actual_version = None if existing is None else existing.current.version
            if existing is None or actual_version != expected_version:
                raise ConflictError(
                    key, expected_version=expected_version, actual_version=actual_version
                )
            existing.current = stored
            existing.history = records

    def close(self) -> None:
        """Mark the store closed; its contents are dropped."""
        with self._lock:
            self._closed = True
            self._entries.clear()

    def _check_open(self) -> None:
        if self._closed:
            raise ConfigurationError("this MemoryStorage is closed")


def _copied_record(record: VersionRecord) -> VersionRecord:
    return replace(
        record,
        patch=None if record.patch is None else [copy_json(op) for op in record.patch],
        snapshot=None if record.snapshot is None else copy_json(record.snapshot),
        encoded_document=None,  # for writers only: never kept in history
    )

"""Fault injection around a real backend (the only fakes the suite uses)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from dashpersist.errors import DashPersistError
from dashpersist.storage import DocumentKey, Storage, StoredDocument, VersionRecord
from dashpersist.types import JsonObject


@dataclass
class FailingStorage:
    """Wrap a real Storage; raise *error()* on the next *times* calls of *fail_on*; count calls."""

    inner: Storage
    fail_on: str = "write"
    times: int = 0
    error: Callable[[], DashPersistError] = field(default=lambda: DashPersistError("injected"))
    calls: dict[str, int] = field(default_factory=dict)

    def _enter(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        if name == self.fail_on and self.times > 0:
            self.times -= 1
            raise self.error()

    def read(self, key: DocumentKey) -> StoredDocument | None:
        self._enter("read")
        return self.inner.read(key)

    def write(
        self,
        key: DocumentKey,
        document: JsonObject,
        record: VersionRecord | None = None,
        *,
        expected_version: int | None,
    ) -> int:
        self._enter("write")
        return self.inner.write(key, document, record, expected_version=expected_version)

    def delete(self, key: DocumentKey) -> None:
        self._enter("delete")
        self.inner.delete(key)

    def layout_ids(self, user_id: str) -> list[str]:
        self._enter("layout_ids")
        return self.inner.layout_ids(user_id)

    def versions(
        self, key: DocumentKey, *, before: int | None = None, limit: int = 20
    ) -> list[VersionRecord]:
        self._enter("versions")
        return self.inner.versions(key, before=before, limit=limit)

    def close(self) -> None:
        self.inner.close()

"""Open a storage backend from a URL string."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

from dashpersist.errors import ConfigurationError, StorageUnavailableError
from dashpersist.storage.memory import MemoryStorage
from dashpersist.storage.protocol import (
    DocumentKey,
    Storage,
    StoredDocument,
    VersionOutline,
    VersionRecord,
)
from dashpersist.types import JsonObject

__all__ = ["ReconnectingStorage", "open_storage"]

_SQL_SCHEMES = ("sqlite", "postgresql", "postgres")


def open_storage(url: str) -> Storage:
    """Return the backend a URL names.

    - ``sqlite:///relative.db``, ``sqlite:////absolute/path.db``: `SQLStorage` on SQLite
    - ``postgresql://user@host/db`` (or ``postgresql+psycopg://``): `SQLStorage` on PostgreSQL;
      ``?operation_timeout=10`` sets the seconds one call may keep a connection (default
      30, ``0``: no limit), after which its socket is cut and the call fails as unavailable
    - ``jsonfile:///absolute/folder`` or ``jsonfile://relative/folder``: `JSONFileStorage`
    - ``memory://``: a new, empty `MemoryStorage`

    Raises `ConfigurationError` for any other scheme.
    """
    scheme, separator, rest = url.partition("://")
    base_scheme = scheme.split("+", 1)[0].lower()
    if not separator:
        raise ConfigurationError(
            "a store URL looks like 'sqlite:///dash.db', 'postgresql://host/db', "
            "'jsonfile:///path/to/folder' or 'memory://'"
        )
    if base_scheme in _SQL_SCHEMES:
        from dashpersist.storage.sql import SQLStorage

        return SQLStorage(url)
    if base_scheme == "jsonfile":
        from dashpersist.storage.jsonfile import JSONFileStorage

        return JSONFileStorage(Path(rest))
    if base_scheme == "memory":
        return MemoryStorage()
    raise ConfigurationError(f"unknown store URL scheme {scheme!r}")


class ReconnectingStorage:
    """A store opened from a URL that may be unreachable now and reachable later.

    Opening is attempted at once; if the store is unreachable (`StorageUnavailableError`)
    every call tries again and raises `StorageUnavailableError` until one succeeds, after
    which calls go straight through. This is what lets an app start during a database
    outage: its saves go to the outbox until the store comes back, and opening then
    brings the schema up to date. Any other error while opening (a bad URL, a corrupt
    file, no permission) is raised at once, as `open_storage` raises it.
    """

    def __init__(self, url: str, *, opener: Callable[[str], Storage] = open_storage) -> None:
        self.url = url
        self._opener = opener
        self._inner: Storage | None = None
        self._lock = threading.Lock()
        self._closed = False
        # Offline start: while the store is unreachable, the next call tries again.
        with contextlib.suppress(StorageUnavailableError):
            self._get()

    @property
    def is_connected(self) -> bool:
        """Whether the store has been opened."""
        return self._inner is not None

    @property
    def inner(self) -> Storage | None:
        """The opened store, or ``None`` while it has not been reached yet."""
        return self._inner

    def connect(self) -> Storage:
        """Open the store now if it is not open; raise `StorageUnavailableError` if it is down."""
        return self._get()

    def read(self, key: DocumentKey) -> StoredDocument | None:
        """Return the current version of *key*, or ``None``."""
        return self._get().read(key)

    def write(
        self,
        key: DocumentKey,
        document: JsonObject,
        record: VersionRecord | None = None,
        *,
        expected_version: int | None,
    ) -> int:
        """Store *document* and *record* if *key* is still at *expected_version*."""
        return self._get().write(key, document, record, expected_version=expected_version)

    def delete(self, key: DocumentKey) -> None:
        """Remove the document and its history."""
        self._get().delete(key)

    def layout_ids(self, user_id: str) -> list[str]:
        """Return the layout ids *user_id* has, sorted."""
        return self._get().layout_ids(user_id)

    def user_ids(self) -> list[str]:
        """Return every user id with at least one document, sorted."""
        return self._get().user_ids()

    def versions(
        self, key: DocumentKey, *, before: int | None = None, limit: int = 20
    ) -> list[VersionRecord]:
        """Return up to *limit* history records of *key*, newest first, below *before*."""
        return self._get().versions(key, before=before, limit=limit)

    def version_outline(
        self, key: DocumentKey, *, before: int | None = None
    ) -> list[VersionOutline]:
        """Return version, label and keyframe flag of *key*'s records below *before*."""
        return self._get().version_outline(key, before=before)

    def compact(
        self, key: DocumentKey, *, remove: Collection[int], snapshots: Mapping[int, JsonObject]
    ) -> None:
        """Apply retention to *key*'s history in one atomic step."""
        self._get().compact(key, remove=remove, snapshots=snapshots)

    def import_document(
        self, key: DocumentKey, current: StoredDocument, history: list[VersionRecord]
    ) -> None:
        """Store a document with its full history exactly as given."""
        self._get().import_document(key, current, history)

    def replace_document(
        self,
        key: DocumentKey,
        current: StoredDocument,
        history: list[VersionRecord],
        *,
        expected_version: int,
    ) -> None:
        """Replace a document and its whole history, if it is still at *expected_version*."""
        self._get().replace_document(key, current, history, expected_version=expected_version)

    def close(self) -> None:
        """Close the store if it was opened; idempotent."""
        with self._lock:
            self._closed = True
            inner, self._inner = self._inner, None
        if inner is not None:
            inner.close()

    def _get(self) -> Storage:
        inner = self._inner
        if inner is not None:
            return inner
        with self._lock:
            if self._closed:
                raise ConfigurationError(f"the store {self.url!r} is closed")
            if self._inner is None:
                self._inner = self._opener(self.url)
            return self._inner

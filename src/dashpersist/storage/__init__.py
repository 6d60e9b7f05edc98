"""Storage backends and the protocol they share.

`SQLStorage` (SQLite, PostgreSQL) and `JSONFileStorage` load lazily, so importing
dashpersist never imports a database driver it does not need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dashpersist.storage.memory import MemoryStorage
from dashpersist.storage.protocol import (
    ChangeNotifier,
    DocumentKey,
    Storage,
    StoredDocument,
    VersionOutline,
    VersionRecord,
    outline_from_versions,
)

if TYPE_CHECKING:
    from dashpersist.storage.jsonfile import JSONFileStorage
    from dashpersist.storage.sql import SQLStorage

__all__ = [
    "ChangeNotifier",
    "DocumentKey",
    "JSONFileStorage",
    "MemoryStorage",
    "SQLStorage",
    "Storage",
    "StoredDocument",
    "VersionOutline",
    "VersionRecord",
    "outline_from_versions",
]


def __getattr__(name: str) -> object:
    if name == "SQLStorage":
        from dashpersist.storage.sql import SQLStorage

        return SQLStorage
    if name == "JSONFileStorage":
        from dashpersist.storage.jsonfile import JSONFileStorage

        return JSONFileStorage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

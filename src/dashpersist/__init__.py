"""dashpersist: never lose a dashboard layout."""

from __future__ import annotations

from dashpersist.errors import (
    ConfigurationError,
    ConflictError,
    CorruptStoreError,
    DashPersistError,
    DecryptionError,
    ManagerClosedError,
    NotFoundError,
    OutboxBlockedError,
    PatchError,
    PayloadTooLargeError,
    StorageError,
    StorageFullError,
    StoragePermissionError,
    StorageUnavailableError,
    ValidationError,
)
from dashpersist.storage import DocumentKey, MemoryStorage, Storage, StoredDocument, VersionRecord
from dashpersist.storage.urls import open_storage

__version__ = "0.1.0"

__all__ = [
    "ConfigurationError",
    "ConflictError",
    "CorruptStoreError",
    "DashPersistError",
    "DecryptionError",
    "DocumentKey",
    "ManagerClosedError",
    "MemoryStorage",
    "NotFoundError",
    "OutboxBlockedError",
    "PatchError",
    "PayloadTooLargeError",
    "Storage",
    "StorageError",
    "StorageFullError",
    "StoragePermissionError",
    "StorageUnavailableError",
    "StoredDocument",
    "ValidationError",
    "VersionRecord",
    "__version__",
    "open_storage",
]

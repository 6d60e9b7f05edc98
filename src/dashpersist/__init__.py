"""dashpersist: never lose a dashboard layout."""

from __future__ import annotations

from dashpersist.config import PersistenceConfig
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
from dashpersist.manager import PersistenceManager, default_store_url
from dashpersist.models import Layout, SaveResult, VersionInfo, Widget
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
    "Layout",
    "ManagerClosedError",
    "MemoryStorage",
    "NotFoundError",
    "OutboxBlockedError",
    "PatchError",
    "PayloadTooLargeError",
    "PersistenceConfig",
    "PersistenceManager",
    "SaveResult",
    "Storage",
    "StorageError",
    "StorageFullError",
    "StoragePermissionError",
    "StorageUnavailableError",
    "StoredDocument",
    "ValidationError",
    "VersionInfo",
    "VersionRecord",
    "Widget",
    "__version__",
    "default_store_url",
    "open_storage",
]

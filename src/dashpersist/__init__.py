"""dashpersist: never lose a dashboard layout."""

from __future__ import annotations

from dashpersist.activity import ActivityEntry, ActivityPage
from dashpersist.async_manager import AsyncPersistenceManager
from dashpersist.changes import LayoutChange, LayoutDiff
from dashpersist.config import PersistenceConfig
from dashpersist.encryption import FieldEncryptor, KeyRing
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
from dashpersist.events import ChangeEvent
from dashpersist.journal import PendingChange
from dashpersist.manager import PersistenceManager, default_store_url
from dashpersist.merge import Conflict, ConflictResolver, MergePolicy, MergeResult
from dashpersist.models import Layout, SaveResult, SyncResult, Versioned, VersionInfo, Widget
from dashpersist.patch import apply_patch, make_patch
from dashpersist.rotation import RotationProgress, RotationReport
from dashpersist.storage import DocumentKey, MemoryStorage, Storage, StoredDocument, VersionRecord
from dashpersist.storage.urls import open_storage
from dashpersist.validation import Limits, ValidationReport, Validator
from dashpersist.versions import IntegrityReport
from dashpersist.widget_cache import WidgetDataCache

__version__ = "0.1.0"

__all__ = [
    "ActivityEntry",
    "ActivityPage",
    "AsyncPersistenceManager",
    "ChangeEvent",
    "ConfigurationError",
    "Conflict",
    "ConflictError",
    "ConflictResolver",
    "CorruptStoreError",
    "DashPersistError",
    "DecryptionError",
    "DocumentKey",
    "FieldEncryptor",
    "IntegrityReport",
    "KeyRing",
    "Layout",
    "LayoutChange",
    "LayoutDiff",
    "Limits",
    "ManagerClosedError",
    "MemoryStorage",
    "MergePolicy",
    "MergeResult",
    "NotFoundError",
    "OutboxBlockedError",
    "PatchError",
    "PayloadTooLargeError",
    "PendingChange",
    "PersistenceConfig",
    "PersistenceManager",
    "RotationProgress",
    "RotationReport",
    "SaveResult",
    "Storage",
    "StorageError",
    "StorageFullError",
    "StoragePermissionError",
    "StorageUnavailableError",
    "StoredDocument",
    "SyncResult",
    "ValidationError",
    "ValidationReport",
    "Validator",
    "VersionInfo",
    "VersionRecord",
    "Versioned",
    "Widget",
    "WidgetDataCache",
    "__version__",
    "apply_patch",
    "default_store_url",
    "make_patch",
    "open_storage",
]

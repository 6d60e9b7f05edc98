"""Exceptions raised by dashpersist.

Every exception the library raises derives from `DashPersistError`, so
``except DashPersistError`` catches them all. Driver, operating-system, cryptography and
pydantic errors are translated at the boundary and kept as ``__cause__``. Messages name
keys, paths and versions, never document values, so plaintext never reaches a log.

DashPersistError
├── ConfigurationError        the library was set up or called in a way that cannot work
│   └── ManagerClosedError    a call on a manager after close()
├── ConflictError             the store moved on; .key .expected_version .actual_version
├── ValidationError           .issues name the path and rule, never the value; also a ValueError
│   └── PayloadTooLargeError  a document over a size limit, refused before parsing
├── StorageError              the store could not do what was asked
│   ├── StorageUnavailableError  transient: retried, then the write waits in the outbox
│   ├── StorageFullError         the disk or database is full; .path
│   ├── StoragePermissionError   the operating system refused access; .path
│   ├── CorruptStoreError        a file or row that cannot be read back; never overwritten
│   └── OutboxBlockedError       an outbox entry the store refuses for good; names the entry
├── PatchError                an RFC 6902 patch that does not apply
├── DecryptionError           wrong key, tampered ciphertext, or AAD mismatch
└── NotFoundError             also a LookupError
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dashpersist.storage.protocol import DocumentKey

__all__ = [
    "ConfigurationError",
    "ConflictError",
    "CorruptStoreError",
    "DashPersistError",
    "DecryptionError",
    "ManagerClosedError",
    "NotFoundError",
    "OutboxBlockedError",
    "PatchError",
    "PayloadTooLargeError",
    "StorageError",
    "StorageFullError",
    "StoragePermissionError",
    "StorageUnavailableError",
    "ValidationError",
    "ValidationIssue",
]


class DashPersistError(Exception):
    """Base class of every exception dashpersist raises."""


class ConfigurationError(DashPersistError, ValueError):
    """The library was configured or called in a way that cannot work."""


class ManagerClosedError(ConfigurationError):
    """A manager was used after `close()`."""


class ConflictError(DashPersistError):
    """A compare-and-swap write found the document at another version than expected.

    Nothing was written. ``expected_version`` is the version the writer started from
    (``None``: it expected no document); ``actual_version`` is what the store holds
    (``None``: no document).
    """

    def __init__(
        self,
        key: DocumentKey,
        *,
        expected_version: int | None,
        actual_version: int | None,
        message: str | None = None,
    ) -> None:
        self.key = key
        self.expected_version = expected_version
        self.actual_version = actual_version
        super().__init__(
            message
            or (
                f"{key} is at version {actual_version}, not at the expected "
                f"version {expected_version}; nothing was written"
            )
        )


@dataclass(frozen=True, slots=True)
class ValidationIssue:
    """One reason a document was refused: where (a JSON path) and which rule."""

    path: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path or '$'}: {self.message} ({self.rule})"


class ValidationError(DashPersistError, ValueError):
    """A document (or an id) broke a rule and was refused before anything was written.

    ``issues`` name the JSON path and the rule, never the offending value.
    """

    def __init__(self, issues: Sequence[ValidationIssue], *, message: str | None = None) -> None:
        self.issues = tuple(issues)
        shown = "; ".join(str(issue) for issue in self.issues[:5])
        more = f" (+{len(self.issues) - 5} more)" if len(self.issues) > 5 else ""
        super().__init__(message or f"invalid document: {shown}{more}")


class PayloadTooLargeError(ValidationError):
    """A document exceeded a size limit; it was refused before being parsed."""


class StorageError(DashPersistError):
    """The store could not carry out a read or a write."""


class StorageUnavailableError(StorageError):
    """The store could not be reached or was busy; the operation may succeed later."""


class _PathError(StorageError):
    def __init__(self, message: str, *, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        super().__init__(message)


class StorageFullError(_PathError):
    """The disk or the database ran out of space; the previous version is intact."""


class StoragePermissionError(_PathError):
    """The operating system refused access to a store's file or folder."""


class CorruptStoreError(_PathError):
    """A stored file or row could not be read back; it is left exactly as found."""


class OutboxBlockedError(StorageError):
    """The store refuses an outbox entry for good; the document's queue stops at it."""

    def __init__(self, message: str, *, entry_id: str) -> None:
        self.entry_id = entry_id
        super().__init__(message)


class PatchError(DashPersistError):
    """An RFC 6902 patch is malformed or does not apply to the document."""


class DecryptionError(DashPersistError):
    """A field could not be decrypted: missing or wrong key, tampering, or moved ciphertext.

    When raised for a field, ``user_id``, ``layout_id`` and ``path`` say where, ``key_id``
    which key the envelope names, and ``reason`` what went wrong: ``"missing_key"``,
    ``"authentication_failed"``, ``"malformed"`` or ``"unsupported_version"``. Never key
    material or plaintext.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        user_id: str | None = None,
        layout_id: str | None = None,
        path: str | None = None,
        key_id: str | None = None,
    ) -> None:
        self.reason = reason
        self.user_id = user_id
        self.layout_id = layout_id
        self.path = path
        self.key_id = key_id
        super().__init__(message)


class NotFoundError(DashPersistError, LookupError):
    """The document or version does not exist (or belongs to someone else)."""

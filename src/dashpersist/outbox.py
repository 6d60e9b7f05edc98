"""Outbox: a durable local queue of writes that could not reach storage.

On disk
-------
::

    <folder>/                      created with mode 0o700
      .outbox.lock                 sidecar lock (filelock) every operation holds
      <64 hex>.jsonl               one file per document: its entries and their fate
      .<64 hex>.<16 hex>.tmp       a compaction in flight; removed when the outbox opens

A document's file name is the hex SHA-256 of the canonical JSON of ``[user_id,
layout_id]``, never the ids themselves, so no id can name a path outside the folder and
two distinct ids never share a file, whatever the file system folds. Each line of a file
is one canonical JSON object ending in ``\\n``:

- ``{"kind": "entry", "format": 1, "entry_id": ..., "user_id": ..., "layout_id": ...,
  "base_version": ..., "document": {...}, "change_type": ..., "description": ...,
  "device_id": ..., "label": ..., "created_at": "<ISO 8601, UTC>"}``
- ``{"kind": "done", "entry_id": ..., "version": <int>}``: the entry reached storage
- ``{"kind": "blocked", "entry_id": ..., "reason": ...}``: storage refuses it for good
- ``{"kind": "discarded", "entry_id": ...}``: a person removed it

Crash safety
------------
Every change appends one line with a single ``write`` and fsyncs the file (and the
folder, when the write created the file) before the call returns. Canonical JSON never
holds a raw newline, so a line cut short by a crash has no ``\\n``: readers ignore the
bytes after the last newline, and the next writer truncates them, under the lock, before
it appends. A crash therefore leaves an entry (or marker) entirely present or entirely
absent. An append whose write or fsync fails is truncated away again before the error
is raised, so a write the caller was told failed is never replayed later.

When every entry of a file is done or discarded the file is deleted (then the folder
fsynced); when finished entries outnumber pending ones by enough, the pending ones are
copied to a temp file, fsynced, and ``os.replace``\\d over the file (then the folder
fsynced). Both states a crash can leave hold the same pending entries. The entry ids
of finished entries are forgotten by then: `Outbox.mark_done` on one raises `NotFoundError`.

Every operation holds a `threading.Lock` and a `filelock.FileLock` on the sidecar file,
so several threads and processes can share a folder; a lock held elsewhere for longer
than *lock_timeout* seconds raises `StorageUnavailableError`. Requires a local file
system with ``flock``.

Refusing what it can't read
---------------------------
A line that is not JSON, has the wrong shape, a newer ``format``, an entry of another
document, or a marker for an unknown or finished entry makes its document's file
unreadable: operations on that document raise `CorruptStoreError` naming the file and
the line, and the file is left as found. Other documents keep working; `Outbox.keys`
still lists the document when any line names it, so a replay loop meets the error.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import secrets
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal, get_args

import filelock

from dashpersist._canonical import canonical_json, parse_json
from dashpersist._faults import faultpoint
from dashpersist._fsync import fsync_folder
from dashpersist.errors import (
    ConfigurationError,
    CorruptStoreError,
    NotFoundError,
    StorageError,
    StorageFullError,
    StoragePermissionError,
    StorageUnavailableError,
    ValidationError,
    ValidationIssue,
)
from dashpersist.storage.protocol import DocumentKey
from dashpersist.types import ChangeType, JsonObject

__all__ = ["FORMAT_VERSION", "Outbox", "OutboxEntry"]

FORMAT_VERSION: Final = 1
"""The entry format this module writes and the newest it reads."""

COMPACT_MIN_FINISHED: Final = 64
"""Finished entries a file must hold (and outnumber pending ones by) before it is rewritten."""

_LOG = logging.getLogger(__name__)

_LOCK_NAME = ".outbox.lock"
_FILE_NAME = re.compile(r"[0-9a-f]{64}\.jsonl")
_TEMP_NAME = re.compile(r"\.[0-9a-f]{64}\.[0-9a-f]{16}\.tmp")
_ENTRY_ID = re.compile(r"[0-9a-f]{32}")
_CHANGE_TYPES: Final = frozenset(get_args(ChangeType))
_ENTRY_FIELDS: Final = frozenset(
    [
        "kind",
        "format",
        "entry_id",
        "user_id",
        "layout_id",
        "base_version",
        "document",
        "change_type",
        "description",
        "device_id",
        "label",
        "created_at",
        "after_entry_id",
    ]
)
_MARKER_FIELDS: Final = {
    "done": frozenset({"kind", "entry_id", "version"}),
    "blocked": frozenset({"kind", "entry_id", "reason"}),
    "discarded": frozenset({"kind", "entry_id"}),
}

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_FILE_MODE = 0o600
_FOLDER_MODE = 0o700
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_DENIED_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
_LOCK_POLL_INTERVAL = 0.002  # seconds; filelock polls a held lock

_Status = Literal["pending", "blocked", "done", "discarded"]
_LIVE: Final = frozenset({"pending", "blocked"})


def _now() -> datetime:
    return datetime.now(UTC)


def _invalid(field_name: str, rule: str, message: str) -> ValidationError:
    return ValidationError([ValidationIssue(field_name, rule, f"{field_name} {message}")])


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One write waiting in the outbox, as it will be sent to storage.

    ``entry_id`` (32 lowercase hex digits, a uuid4) is also the write's idempotency key.
    ``base_version`` is the version the write started from (``None``: a new document).
    ``document`` is the document as it would be stored, encrypted fields already
    encrypted. ``created_at`` is an aware time, kept in UTC. ``after_entry_id`` names the
    entry this one was edited on top of while offline (``None``: it follows
    ``base_version``): at replay its base is the version that entry became. Raises
    `ValidationError` for a field out of shape.
    """

    entry_id: str
    user_id: str
    layout_id: str
    base_version: int | None
    document: JsonObject
    change_type: ChangeType
    description: str | None = None
    device_id: str | None = None
    label: str | None = None
    created_at: datetime = field(default_factory=_now)
    after_entry_id: str | None = None

    def __post_init__(self) -> None:
        for name in ("entry_id", "after_entry_id"):
            value = getattr(self, name)
            if name == "after_entry_id" and value is None:
                continue
            if not isinstance(value, str) or not _ENTRY_ID.fullmatch(value):
                raise _invalid(name, "entry_id_format", "must be 32 lowercase hex digits")
        DocumentKey(self.user_id, self.layout_id)
        if self.base_version is not None and (
            type(self.base_version) is not int or self.base_version < 1
        ):
            raise _invalid("base_version", "version", "must be None or an int >= 1")
        if not isinstance(self.document, dict):
            raise _invalid("document", "dict_type", "must be a JSON object")
        if self.change_type not in _CHANGE_TYPES:
            raise _invalid("change_type", "literal", f"must be one of {sorted(_CHANGE_TYPES)}")
        for name in ("description", "device_id", "label"):
            if not isinstance(getattr(self, name), str | None):
                raise _invalid(name, "string_type", "must be a str or None")
        if not isinstance(self.created_at, datetime) or self.created_at.tzinfo is None:
            raise _invalid("created_at", "timezone_aware", "must be an aware datetime")
        object.__setattr__(self, "created_at", self.created_at.astimezone(UTC))

    @classmethod
    def create(
        cls,
        key: DocumentKey,
        document: JsonObject,
        *,
        base_version: int | None,
        change_type: ChangeType = "manual",
        description: str | None = None,
        device_id: str | None = None,
        label: str | None = None,
        created_at: datetime | None = None,
        after_entry_id: str | None = None,
    ) -> OutboxEntry:
        """Return a new entry for *key* with a fresh ``entry_id``, made now or at *created_at*."""
        return cls(
            entry_id=uuid.uuid4().hex,
            user_id=key.user_id,
            layout_id=key.layout_id,
            base_version=base_version,
            document=document,
            change_type=change_type,
            description=description,
            device_id=device_id,
            label=label,
            created_at=created_at or _now(),
            after_entry_id=after_entry_id,
        )

    @property
    def key(self) -> DocumentKey:
        """The document this entry writes."""
        return DocumentKey(self.user_id, self.layout_id)

    def to_json(self) -> JsonObject:
        """Return the entry as plain JSON (its line in the outbox file)."""
        return {
            "kind": "entry",
            "format": FORMAT_VERSION,
            "entry_id": self.entry_id,
            "user_id": self.user_id,
            "layout_id": self.layout_id,
            "base_version": self.base_version,
            "document": self.document,
            "change_type": self.change_type,
            "description": self.description,
            "device_id": self.device_id,
            "label": self.label,
            "created_at": self.created_at.isoformat(),
            "after_entry_id": self.after_entry_id,
        }


class _ShapeError(Exception):
    """A parsed line that is not what this module writes; the message says why."""


def _entry_from(record: JsonObject) -> OutboxEntry:
    fmt = record.get("format")
    if type(fmt) is int and fmt > FORMAT_VERSION:
        raise _ShapeError(f"has format {fmt}, newer than this dashpersist reads")
    if set(record) != _ENTRY_FIELDS or fmt != FORMAT_VERSION:
        raise _ShapeError("is not an outbox entry (wrong fields or format)")
    created_at = record["created_at"]
    if not isinstance(created_at, str):
        raise _ShapeError("has a created_at that is not a string")
    try:
        moment = datetime.fromisoformat(created_at)
    except ValueError as exc:
        raise _ShapeError("has a created_at that is not an ISO 8601 time") from exc
    document = record["document"]
    if not isinstance(document, dict):
        raise _ShapeError("has a document that is not a JSON object")
    try:
        return OutboxEntry(
            entry_id=record["entry_id"],  # type: ignore[arg-type]
            user_id=record["user_id"],  # type: ignore[arg-type]
            layout_id=record["layout_id"],  # type: ignore[arg-type]
            base_version=record["base_version"],  # type: ignore[arg-type]
            document=document,
            change_type=record["change_type"],  # type: ignore[arg-type]
            description=record["description"],  # type: ignore[arg-type]
            device_id=record["device_id"],  # type: ignore[arg-type]
            label=record["label"],  # type: ignore[arg-type]
            created_at=moment,
            after_entry_id=record["after_entry_id"],  # type: ignore[arg-type]
        )
    except ValidationError as exc:
        raise _ShapeError(f"has an invalid field: {exc}") from exc


def _line(record: JsonObject) -> bytes:
    return canonical_json(record) + b"\n"


def _stem(key: DocumentKey) -> str:
    return hashlib.sha256(canonical_json([key.user_id, key.layout_id])).hexdigest()


@dataclass(slots=True)
class _Document:
    """What one outbox file says, or the first reason it can't be read."""

    path: Path
    key: DocumentKey | None = None
    entries: dict[str, OutboxEntry] = field(default_factory=dict)
    lines: dict[str, bytes] = field(default_factory=dict)
    status: dict[str, _Status] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    error: CorruptStoreError | None = None

    def live(self) -> list[str]:
        return [entry_id for entry_id, status in self.status.items() if status in _LIVE]

    def checked(self) -> _Document:
        if self.error is not None:
            raise self.error
        return self

    def apply(self, record: JsonObject, raw: bytes) -> None:
        kind = record.get("kind")
        if kind == "entry":
            entry = _entry_from(record)
            if _stem(entry.key) != self.path.stem:
                raise _ShapeError("holds an entry of another document")
            known = self.lines.get(entry.entry_id)
            if known is not None:
                if known != raw:
                    raise _ShapeError("repeats an entry id with other content")
                return  # the same entry appended twice: one entry
            self.key = self.key or entry.key
            self.entries[entry.entry_id] = entry
            self.lines[entry.entry_id] = raw
            self.status[entry.entry_id] = "pending"
            return
        if not isinstance(kind, str) or kind not in _MARKER_FIELDS:
            raise _ShapeError("has an unknown kind")
        entry_id = record.get("entry_id")
        if set(record) != _MARKER_FIELDS[kind] or not isinstance(entry_id, str):
            raise _ShapeError(f"is not a {kind} marker (wrong fields)")
        if self.status.get(entry_id) not in _LIVE:
            raise _ShapeError(f"marks {entry_id} {kind}, but it is not a pending entry")
        if kind == "done":
            version = record["version"]
            if type(version) is not int or version < 1:
                raise _ShapeError("has a version that is not an int >= 1")
            self.status[entry_id] = "done"
        elif kind == "blocked":
            reason = record["reason"]
            if not isinstance(reason, str):
                raise _ShapeError("has a reason that is not a string")
            self.status[entry_id] = "blocked"
            self.reasons[entry_id] = reason
        else:
            self.status[entry_id] = "discarded"


def _record(raw: bytes, *, source: str) -> JsonObject:
    value = parse_json(raw, source=source)
    if not isinstance(value, dict):
        raise _ShapeError("is not a JSON object")
    return value


def _parse_document(path: Path, data: bytes) -> _Document:
    document = _Document(path)
    # Bytes after the last newline are a line a crash cut short: never acknowledged.
    lines = data[: data.rfind(b"\n") + 1].split(b"\n")[:-1]
    for number, raw in enumerate(lines, start=1):
        try:
            value = _record(raw, source=f"{path} line {number}")
            if document.error is None:
                document.apply(value, raw)
            elif document.key is None and value.get("kind") == "entry":
                # Past a bad line, only look for a line naming the document.
                document.key = _entry_from(value).key
        except (CorruptStoreError, _ShapeError) as exc:
            if document.error is None:
                detail = f" {exc}" if isinstance(exc, _ShapeError) else f": {exc}"
                document.error = CorruptStoreError(
                    f"outbox file {path} line {number}{detail}; it was left as found "
                    "and this document's queue waits until it is repaired or removed",
                    path=path,
                )
                document.error.__cause__ = exc
    return document


def _storage_error(exc: OSError, path: Path, action: str) -> StorageError:
    message = f"could not {action} {path}: {exc.strerror or type(exc).__name__}"
    if exc.errno in _FULL_ERRNOS:
        return StorageFullError(message, path=path)
    if exc.errno in _DENIED_ERRNOS:
        return StoragePermissionError(message, path=path)
    if exc.errno == errno.ELOOP:
        return CorruptStoreError(f"{path} is a symbolic link; it was left as found", path=path)
    return StorageError(message)


@contextlib.contextmanager
def _os_errors(path: Path, action: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise _storage_error(exc, path, action) from exc


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Outbox:
    """A folder of writes waiting for storage: durable, ordered per document, shared safely.

    Each call that changes the outbox is durable when it returns (fsync per line unless
    *fsync* is false, which is only for tests and benchmarks). A document's entries come
    back in the order they were appended, and a blocked entry stops its document's queue:
    later entries of that document are held back until the blocked one is discarded
    (or marked done), because replaying them out of order could lose an edit. A lock
    held by another process for more than *lock_timeout* seconds raises
    `StorageUnavailableError`. See the module docstring for the file format and the
    crash-safety argument.
    """

    def __init__(
        self, folder: str | os.PathLike[str], *, fsync: bool = True, lock_timeout: float = 10.0
    ) -> None:
        self._folder = Path(folder)
        self._fsync = fsync
        self._lock_timeout = lock_timeout
        self._thread_lock = threading.Lock()
        self._closed = False
        self._index: dict[str, Path] = {}
        with _os_errors(self._folder, "create the outbox folder"):
            if not self._folder.is_dir():
                self._folder.mkdir(mode=_FOLDER_MODE, parents=True, exist_ok=True)
                # mkdir's mode is narrowed by the umask; an outbox is private whatever it is.
                os.chmod(self._folder, _FOLDER_MODE)
        self._file_lock = filelock.FileLock(
            self._folder / _LOCK_NAME,
            timeout=lock_timeout,
            mode=_FILE_MODE,
            thread_local=False,
            poll_interval=_LOCK_POLL_INTERVAL,
            fallback_to_soft=False,
        )
        with self._locked():
            self._tidy()

    @property
    def folder(self) -> Path:
        """The folder holding the outbox files."""
        return self._folder

    # -- reading -------------------------------------------------------------------------

    def entries(
        self, key: DocumentKey | None = None, *, past_blocked: bool = False
    ) -> list[OutboxEntry]:
        """Return the entries waiting to be written, in append order per document.

        With *key*, that document's entries; without, every document's (documents sorted
        by key), and then a document that can't be read raises too. A document's entries
        stop before its first blocked entry (what a replay can write), unless
        *past_blocked*: then the blocked entries and those waiting behind them are listed
        too. Raises `CorruptStoreError` naming the file and line when the document's file
        holds a line this module did not write.
        """
        with self._locked():
            documents = [self._read(key)] if key is not None else self._read_all(strict=True)
        waiting: list[OutboxEntry] = []
        for document in documents:
            for entry_id in document.checked().live():
                if document.status[entry_id] == "blocked" and not past_blocked:
                    break
                waiting.append(document.entries[entry_id])
        return waiting

    def keys(self) -> list[DocumentKey]:
        """Return the documents with pending or blocked entries, sorted.

        A document whose file is damaged is listed when any line of it names the
        document, so that `entries` raises its `CorruptStoreError`; a file with no such
        line is only logged (and left as found).
        """
        with self._locked():
            documents = self._read_all(strict=False)
        found: list[DocumentKey] = []
        for document in documents:
            if document.key is None:
                if document.error is not None:
                    _LOG.error("%s", document.error)
            elif document.error is not None or document.live():
                found.append(document.key)
        return sorted(found)

    def blocked(self, key: DocumentKey | None = None) -> list[tuple[OutboxEntry, str]]:
        """Return the blocked entries (of *key*, or of every document) and why they are.

        Raises `CorruptStoreError` like `entries`.
        """
        with self._locked():
            documents = [self._read(key)] if key is not None else self._read_all(strict=True)
        return [
            (document.entries[entry_id], document.reasons[entry_id])
            for document in documents
            for entry_id in document.checked().live()
            if document.status[entry_id] == "blocked"
        ]

    def export(self, entry_id: str) -> JsonObject:
        """Return a pending or blocked entry as plain JSON, for a person to inspect.

        The entry's fields as stored, plus ``status`` (``"pending"`` or ``"blocked"``)
        and, when blocked, ``reason``. Raises `NotFoundError` for any other id.
        """
        with self._locked():
            document = self._find(entry_id)
        exported = document.entries[entry_id].to_json()
        exported["status"] = document.status[entry_id]
        if document.status[entry_id] == "blocked":
            exported["reason"] = document.reasons[entry_id]
        return exported

    def find(self, entry_id: str) -> OutboxEntry | None:
        """Return the entry *entry_id* if the outbox still holds it, done ones included
        (until their file is compacted), or ``None``."""
        with self._locked():
            try:
                document = self._find(entry_id, include_done=True)
            except NotFoundError:
                return None
        return document.entries[entry_id]

    # -- writing -------------------------------------------------------------------------

    def append(self, entry: OutboxEntry) -> None:
        """Add *entry* at the end of its document's queue; durable when this returns.

        Raises `ValidationError` (nothing written) for a document JSON can't hold, and
        `StorageError` subclasses when the file can't be written; then the entry is not in
        the outbox.
        """
        line = _line(entry.to_json())
        path = self._path_of(entry.key)
        with self._locked():
            self._append_line(path, line)
            self._index[entry.entry_id] = path

    def mark_done(self, entry_id: str, *, version: int) -> None:
        """Record that the entry reached storage as *version*; durable when this returns.

        Marking an entry done twice is harmless. Raises `NotFoundError` for an unknown
        or discarded entry (including one forgotten by compaction).
        """
        if type(version) is not int or version < 1:
            raise _invalid("version", "version", "must be an int >= 1")
        with self._locked():
            document = self._find(entry_id, include_done=True)
            if document.status[entry_id] == "done":
                return
            self._append_line(
                document.path, _line({"kind": "done", "entry_id": entry_id, "version": version})
            )
            document.status[entry_id] = "done"
            self._compact(document)

    def block(self, entry_id: str, reason: str) -> None:
        """Stop the entry's document queue at it, for *reason*; durable when this returns.

        Its document's later entries wait until it is discarded. *reason* is shown to a
        person: name keys and rules, never document values. Blocking again replaces the
        reason. Raises `NotFoundError` unless the entry is pending or blocked.
        """
        with self._locked():
            document = self._find(entry_id)
            self._append_line(
                document.path, _line({"kind": "blocked", "entry_id": entry_id, "reason": reason})
            )

    def discard(self, entry_id: str) -> OutboxEntry:
        """Remove a pending or blocked entry for good and return it; durable when this returns.

        Raises `NotFoundError` unless the entry is pending or blocked.
        """
        with self._locked():
            document = self._find(entry_id)
            self._append_line(document.path, _line({"kind": "discarded", "entry_id": entry_id}))
            document.status[entry_id] = "discarded"
            self._compact(document)
        return document.entries[entry_id]

    def close(self) -> None:
        """Stop using the folder; idempotent. Later calls raise `ConfigurationError`."""
        self._closed = True

    # -- internals -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self._closed:
            raise ConfigurationError(f"the outbox {self._folder} is closed")
        deadline = time.monotonic() + self._lock_timeout
        if not self._thread_lock.acquire(timeout=self._lock_timeout):
            raise self._busy()
        try:
            try:
                self._file_lock.acquire(timeout=max(0.0, deadline - time.monotonic()))
            except filelock.Timeout as exc:  # also an OSError, so caught first
                raise self._busy() from exc
            except OSError as exc:
                raise _storage_error(exc, self._folder / _LOCK_NAME, "lock") from exc
            try:
                yield
            finally:
                self._file_lock.release()
        finally:
            self._thread_lock.release()

    def _busy(self) -> StorageUnavailableError:
        return StorageUnavailableError(
            f"the outbox {self._folder} stayed locked by another process for "
            f"{self._lock_timeout} s; nothing was changed"
        )

    def _path_of(self, key: DocumentKey) -> Path:
        return self._folder / f"{_stem(key)}.jsonl"

    def _read_path(self, path: Path) -> _Document:
        try:
            with _os_errors(path, "read"):
                try:
                    fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
                except FileNotFoundError:
                    return _Document(path)
                try:
                    if not stat.S_ISREG(os.fstat(fd).st_mode):
                        raise CorruptStoreError(
                            f"{path} is not a regular file; it was left as found", path=path
                        )
                    chunks: list[bytes] = []
                    while chunk := os.read(fd, 1 << 20):
                        chunks.append(chunk)
                finally:
                    os.close(fd)
        except CorruptStoreError as exc:
            # A link or a folder under an outbox file's name: like a file that does not
            # parse, it is reported where it is read, and does not stop the others.
            return _Document(path, error=exc)
        return _parse_document(path, b"".join(chunks))

    def _read(self, key: DocumentKey) -> _Document:
        return self._read_path(self._path_of(key))

    def _read_all(self, *, strict: bool) -> list[_Document]:
        with _os_errors(self._folder, "list"):
            names = sorted(name for name in os.listdir(self._folder) if _FILE_NAME.fullmatch(name))
        documents = [self._read_path(self._folder / name) for name in names]
        if strict:
            for document in documents:
                document.checked()
        return sorted(
            documents, key=lambda d: (d.key is None, d.key or DocumentKey("-"), d.path.name)
        )

    def _find(self, entry_id: str, *, include_done: bool = False) -> _Document:
        """Return the readable document holding *entry_id* (pending or blocked, or done
        with *include_done*); raise `NotFoundError` or the `CorruptStoreError` in its way."""
        wanted = {"pending", "blocked", "done"} if include_done else _LIVE
        cached = self._index.get(entry_id)
        if cached is not None:
            document = self._read_path(cached).checked()
            if document.status.get(entry_id) in wanted:
                return document
        unreadable: CorruptStoreError | None = None
        for document in self._read_all(strict=False):
            if document.error is not None:
                unreadable = unreadable or document.error
            elif document.status.get(entry_id) in wanted:
                self._index[entry_id] = document.path
                return document
        if unreadable is not None:
            raise unreadable
        raise NotFoundError(f"the outbox holds no pending entry {entry_id}")

    def _append_line(self, path: Path, line: bytes) -> None:
        with _os_errors(path, "append to"):
            created = False
            try:
                fd = os.open(path, os.O_RDWR | os.O_APPEND | _NOFOLLOW | _CLOEXEC)
            except FileNotFoundError:
                flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
                fd = os.open(path, flags, _FILE_MODE)
                created = True
            try:
                committed = self._trim_torn_tail(fd, path)
                try:
                    _write_all(fd, line)
                    faultpoint("outbox_after_append_before_fsync")
                    self._sync(fd)
                    if created:
                        self._sync_folder()
                except OSError as exc:
                    self._undo_append(fd, committed, path, exc)
                    raise
                faultpoint("outbox_after_fsync")
            finally:
                os.close(fd)

    def _trim_torn_tail(self, fd: int, path: Path) -> int:
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return size
        data = os.pread(fd, size, 0)
        committed = data.rfind(b"\n") + 1
        os.ftruncate(fd, committed)
        _LOG.warning(
            "removed %d bytes of a line a crash cut short from the end of %s",
            size - committed,
            path,
        )
        return committed

    def _undo_append(self, fd: int, committed: int, path: Path, exc: OSError) -> None:
        # The caller is told the append failed, so the line must not replay later.
        try:
            os.ftruncate(fd, committed)
        except OSError as undo_exc:
            exc.add_note(
                f"removing the failed line from {path} failed too ({undo_exc.strerror}); "
                "it may still be replayed"
            )

    def _compact(self, document: _Document) -> None:
        # The marker that finished an entry is durable already: a compaction that fails
        # leaves a correct, longer file, so it is logged rather than failing the call.
        try:
            self._rewrite(document)
        except StorageError as exc:
            _LOG.warning("could not compact %s: %s", document.path, exc)

    def _rewrite(self, document: _Document) -> None:
        live = document.live()
        path = document.path
        if not live:
            with _os_errors(path, "remove"):
                os.unlink(path)
                self._sync_folder()
            self._forget(document)
            return
        finished = len(document.status) - len(live)
        if finished < COMPACT_MIN_FINISHED or finished <= len(live):
            return
        kept = b"".join(
            document.lines[entry_id]
            + b"\n"
            + (
                _line(
                    {"kind": "blocked", "entry_id": entry_id, "reason": document.reasons[entry_id]}
                )
                if document.status[entry_id] == "blocked"
                else b""
            )
            for entry_id in live
        )
        temp = path.with_name(f".{path.stem}.{secrets.token_hex(8)}.tmp")
        with _os_errors(temp, "compact into"):
            fd = os.open(
                temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, _FILE_MODE
            )
            try:
                _write_all(fd, kept)
                self._sync(fd)
            except BaseException:
                os.close(fd)
                os.unlink(temp)
                raise
            os.close(fd)
            # os.replace() is atomic: a crash leaves the old file or the compacted one,
            # both holding the same pending entries. Hence fsync before it.
            os.replace(temp, path)
            self._sync_folder()
        self._forget(document)

    def _forget(self, document: _Document) -> None:
        for entry_id, status in document.status.items():
            if status not in _LIVE:
                self._index.pop(entry_id, None)

    def _tidy(self) -> None:
        """Remove compactions a crash interrupted and files with nothing left to do."""
        with _os_errors(self._folder, "tidy"):
            for name in os.listdir(self._folder):
                if _TEMP_NAME.fullmatch(name):
                    os.unlink(self._folder / name)
        for document in self._read_all(strict=False):
            if document.error is None and not document.live():
                with _os_errors(document.path, "remove"):
                    os.unlink(document.path)
                self._sync_folder()

    def _sync(self, fd: int) -> None:
        if self._fsync:
            os.fsync(fd)

    def _sync_folder(self) -> None:
        if not self._fsync:
            return
        with _os_errors(self._folder, "sync"):
            fsync_folder(self._folder)

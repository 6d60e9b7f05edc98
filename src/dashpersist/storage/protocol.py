"""The storage seam: what every backend provides, and the plain values that cross it.

Every write is a compare-and-swap on the document's version and stores the document and
its history record in one atomic step. Values crossing the seam are frozen dataclasses
holding plain JSON; pydantic models stop at the facade.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from dashpersist._canonical import canonical_json, checksum_bytes
from dashpersist.errors import ConfigurationError, ConflictError, ValidationError, ValidationIssue
from dashpersist.types import ChangeType, JsonObject, JsonPatch

__all__ = [
    "ChangeNotifier",
    "DocumentKey",
    "EncodedRecord",
    "PreparedImport",
    "PreparedWrite",
    "Storage",
    "StoredDocument",
    "VersionOutline",
    "VersionRecord",
    "all_versions",
    "outline_from_versions",
    "prepare_import",
    "prepare_write",
]

MAX_ID_LENGTH = 256
"""Longest user or layout id any backend accepts (characters)."""

_PAGE = 500
"""History records `all_versions` reads per call."""

_BAD_ID_CHARACTER = re.compile("[\x00-\x1f\ud800-\udfff]")
"""A control character or a lone surrogate (a regex: every key of every call is checked)."""


def _id_problem(value: object) -> tuple[str, str] | None:
    if not isinstance(value, str):
        return "string_type", f"must be a str, not {type(value).__name__}"
    if not value or len(value) > MAX_ID_LENGTH:
        return "id_length", f"must have 1 to {MAX_ID_LENGTH} characters"
    if _BAD_ID_CHARACTER.search(value):
        return "id_characters", "must not contain control characters or lone surrogates"
    return None


@dataclass(frozen=True, slots=True, order=True)
class DocumentKey:
    """Address of one document: whose it is and which of their layouts.

    Ids are opaque strings of 1 to 256 characters without control characters or lone
    surrogates; anything else raises `ValidationError`. Ids are case- and
    Unicode-sensitive: ``"Alice"``, ``"alice"`` and a fullwidth ``"alice"`` are three users.
    """

    user_id: str
    layout_id: str = "default"

    def __post_init__(self) -> None:
        for name in ("user_id", "layout_id"):
            problem = _id_problem(getattr(self, name))
            if problem is not None:
                rule, message = problem
                raise ValidationError([ValidationIssue(name, rule, f"{name} {message}")])

    def __str__(self) -> str:
        return f"document {self.layout_id!r} of user {self.user_id!r}"


@dataclass(frozen=True, slots=True)
class StoredDocument:
    """The current version of a document as the store holds it."""

    key: DocumentKey
    document: JsonObject
    version: int
    checksum: str
    updated_at: datetime
    schema_version: int = 1


@dataclass(frozen=True, slots=True)
class VersionRecord:
    """One entry in a document's history.

    ``checksum`` is the SHA-256 of the canonical JSON of the document at this version and
    ``parent_checksum`` that of the version before (``None`` for version 1): a hash chain.
    ``patch`` is the RFC 6902 patch from the previous version to this one; ``snapshot``
    is the whole document when this record is a keyframe (``None`` otherwise).

    ``encoded_document`` is for writers only: the canonical JSON of the document written
    with this record, when the writer has encoded it already (to compute ``checksum``),
    so that the backend stores those bytes instead of encoding the document again. It
    must be ``canonical_json(document)`` exactly, whose SHA-256 is ``checksum``; it is
    never stored in history, and records read back have ``None``.
    """

    version: int
    checksum: str
    parent_checksum: str | None
    created_at: datetime
    change_type: ChangeType = "manual"
    description: str | None = None
    device_id: str | None = None
    label: str | None = None
    schema_version: int = 1
    idempotency_key: str | None = None
    patch: JsonPatch | None = None
    snapshot: JsonObject | None = None
    encoded_document: bytes | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class VersionOutline:
    """A history record without its content: what retention needs to know of it."""

    version: int
    label: str | None
    keyframe: bool
    """Whether the record holds the whole document (``snapshot``)."""

    @classmethod
    def of(cls, record: VersionRecord) -> VersionOutline:
        """The outline of *record*."""
        return cls(record.version, record.label, record.snapshot is not None)


def all_versions(
    storage: Storage, key: DocumentKey, *, before: int | None = None
) -> list[VersionRecord]:
    """Every history record of *key* below *before*, newest first, read a page at a time."""
    records: list[VersionRecord] = []
    while True:
        page = storage.versions(key, before=before, limit=_PAGE)
        records += page
        if len(page) < _PAGE:
            return records
        before = page[-1].version


def outline_from_versions(
    storage: Storage, key: DocumentKey, *, before: int | None = None
) -> list[VersionOutline]:
    """`Storage.version_outline` from `Storage.versions`: for backends that cannot leave
    the content out of a read."""
    return list(map(VersionOutline.of, all_versions(storage, key, before=before)))


@dataclass(frozen=True, slots=True)
class PreparedWrite:
    """A write checked and encoded once, ready for a backend to store atomically.

    ``record`` may still carry the writer's ``encoded_document`` (copying the record to
    drop it would cost a tenth of a SQLite write): a backend that keeps record objects
    must drop it, as `MemoryStorage` does, since records read back have ``None``.
    """

    body: bytes
    record: VersionRecord
    encoded_patch: bytes | None = field(default=None)
    encoded_snapshot: bytes | None = field(default=None)


@dataclass(frozen=True, slots=True)
class EncodedRecord:
    """A history record with its patch and snapshot in canonical bytes."""

    record: VersionRecord
    patch: bytes | None
    snapshot: bytes | None


@dataclass(frozen=True, slots=True)
class PreparedImport:
    """A document and its whole history checked and encoded once, ready to store atomically.

    ``records`` are oldest first; the last one is the current version's.
    """

    body: bytes
    records: tuple[EncodedRecord, ...]


def _now() -> datetime:
    return datetime.now(UTC)


def prepare_write(
    key: DocumentKey,
    document: JsonObject,
    record: VersionRecord | None,
    *,
    expected_version: int | None,
    current: tuple[int, str] | None,
    clock: Callable[[], datetime] = _now,
) -> PreparedWrite:
    """Check a compare-and-swap write against the current state and encode it.

    *current* is the ``(version, checksum)`` the store holds now, read inside the
    backend's atomic section, or ``None`` when the document does not exist. Raises
    `ConflictError` on a version mismatch or when *record* follows another content of
    that version (it was rewritten by `Storage.replace_document` since the writer read
    it), `ValidationError` for a document JSON can't hold, and `ConfigurationError` for a
    record that does not continue the chain.
    Without a *record*, a keyframe record of change type ``manual`` is made.
    """
    actual_version = None if current is None else current[0]
    if expected_version != actual_version:
        raise ConflictError(key, expected_version=expected_version, actual_version=actual_version)
    if expected_version is not None and expected_version < 1:
        raise ConfigurationError(f"expected_version must be >= 1 or None, not {expected_version}")
    if record is not None and record.encoded_document is not None:
        # The writer encoded the document to compute the record's checksum already. The
        # prepared record still carries the bytes: a backend that keeps record objects
        # drops them (MemoryStorage); the others store fields, not the object.
        body, digest = record.encoded_document, record.checksum
    else:
        body = canonical_json(document)
        digest = checksum_bytes(body)
    new_version = (actual_version or 0) + 1
    parent = None if current is None else current[1]
    if record is None:
        record = VersionRecord(
            version=new_version,
            checksum=digest,
            parent_checksum=parent,
            created_at=clock(),
            snapshot=document,
        )
    elif (
        record.version == new_version
        and record.checksum == digest
        and None not in (record.parent_checksum, parent)
        and record.parent_checksum != parent
    ):
        # The record follows another content of the same version: the current version was
        # rewritten since the writer read it (`Storage.replace_document`, key rotation),
        # or deleted and created again. The store moved on; the writer must re-read.
        raise ConflictError(
            key,
            expected_version=expected_version,
            actual_version=actual_version,
            message=f"{key} version {actual_version} was rewritten since it was read "
            "(its checksum changed); nothing was written",
        )
    elif (record.version, record.checksum, record.parent_checksum) != (new_version, digest, parent):
        raise ConfigurationError(
            f"history record for {key} does not continue the chain: got version "
            f"{record.version}, expected {new_version} (or its checksums do not match)"
        )
    if record.patch is None and record.snapshot is None:
        # Without either, the version could never be reconstructed.
        record = replace(record, snapshot=document)
    return PreparedWrite(
        body=body,
        record=record,
        encoded_patch=None if record.patch is None else canonical_json(record.patch),  # type: ignore[arg-type]
        encoded_snapshot=(
            body
            if record.snapshot is document
            else None
            if record.snapshot is None
            else canonical_json(record.snapshot)
        ),
    )


def prepare_import(
    key: DocumentKey, current: StoredDocument, history: Sequence[VersionRecord]
) -> PreparedImport:
    """Check and encode a document with its whole history, to import or replace it.

    For `Storage.import_document` and `Storage.replace_document`. *history* is oldest
    first, with strictly increasing versions (retention may have left gaps), every
    record holding a patch or a snapshot, and the last record being *current*'s version
    with its checksum. *current*'s checksum must match its document,
    and every time must be timezone-aware. Anything else raises `ValidationError`
    naming the version and the rule, never a value.
    """

    def refuse(path: str, rule: str, message: str) -> ValidationError:
        return ValidationError([ValidationIssue(path, rule, f"{key}: {message}")])

    if current.key != key:
        raise refuse("key", "same_key", "the document to import carries another key")
    if not history:
        raise refuse("history", "not_empty", "an imported document needs its history")
    body = canonical_json(current.document)
    if checksum_bytes(body) != current.checksum:
        raise refuse("checksum", "checksum", "the document does not match its checksum")
    if current.updated_at.utcoffset() is None:
        raise refuse("updated_at", "time_zone", "updated_at has no time zone")
    head = history[-1]
    if (head.version, head.checksum) != (current.version, current.checksum):
        raise refuse(
            "history",
            "head",
            f"the newest history record (version {head.version}) is not the current "
            f"version {current.version} with its checksum",
        )
    encoded: list[EncodedRecord] = []
    previous = 0
    for record in history:
        where = f"history[version {record.version}]"
        if record.version <= previous:
            raise refuse(where, "order", "history versions must increase, oldest first")
        if record.created_at.utcoffset() is None:
            raise refuse(where, "time_zone", f"version {record.version} has no time zone")
        if record.patch is None and record.snapshot is None:
            raise refuse(
                where, "reconstructible", f"version {record.version} has neither patch nor snapshot"
            )
        previous = record.version
        encoded.append(
            EncodedRecord(
                record=record,
                patch=None if record.patch is None else canonical_json(record.patch),  # type: ignore[arg-type]
                snapshot=None if record.snapshot is None else canonical_json(record.snapshot),
            )
        )
    return PreparedImport(body=body, records=tuple(encoded))


class Storage(Protocol):
    """Where documents and their history live; every write is a compare-and-swap on the version."""

    def read(self, key: DocumentKey) -> StoredDocument | None:
        """Return the current version of *key*, or ``None``."""
        ...

    def write(
        self,
        key: DocumentKey,
        document: JsonObject,
        record: VersionRecord | None = None,
        *,
        expected_version: int | None,
    ) -> int:
        """Store *document* and its history *record* in one atomic step, if *key* is still
        at *expected_version*; return the new version.

        ``None`` means "must not exist yet". On mismatch, raise `ConflictError` and change
        nothing. Without a *record*, a keyframe record of change type ``manual`` is written.
        """
        ...

    def delete(self, key: DocumentKey) -> None:
        """Remove the document and its history; raise `NotFoundError` if it does not exist."""
        ...

    def layout_ids(self, user_id: str) -> list[str]:
        """Return the layout ids *user_id* has, sorted."""
        ...

    def user_ids(self) -> list[str]:
        """Return every user id that has at least one document, sorted.

        An administrative listing across users (for export, migration and verification
        of a whole store), not something to call on a request path.
        """
        ...

    def versions(
        self, key: DocumentKey, *, before: int | None = None, limit: int = 20
    ) -> list[VersionRecord]:
        """Return up to *limit* history records of *key*, newest first, below *before*."""
        ...

    def version_outline(
        self, key: DocumentKey, *, before: int | None = None
    ) -> list[VersionOutline]:
        """Return the version, label and keyframe flag of every history record of *key*
        below *before*, newest first, without reading patches or snapshots where the
        backend can (`outline_from_versions` where it cannot)."""
        ...

    def compact(
        self,
        key: DocumentKey,
        *,
        remove: Collection[int],
        snapshots: Mapping[int, JsonObject],
    ) -> None:
        """Apply retention to *key*'s history in one atomic step.

        Store each of *snapshots* as the snapshot of the history record with that
        version, then delete the records *remove* names. The current document is never
        touched, and the newest record is never removed (`ConfigurationError`). Versions
        that do not exist are ignored.
        """
        ...

    def import_document(
        self, key: DocumentKey, current: StoredDocument, history: list[VersionRecord]
    ) -> None:
        """Store a document with its full history exactly as given, in one atomic step.

        For migrations between stores: versions, checksums, timestamps, patches and
        snapshots are kept as they are (*history* oldest first; see `prepare_import` for
        what is checked, `ValidationError` otherwise). Raises `ConflictError` and writes
        nothing if *key* exists.
        """
        ...

    def replace_document(
        self,
        key: DocumentKey,
        current: StoredDocument,
        history: list[VersionRecord],
        *,
        expected_version: int,
    ) -> None:
        """Replace a document and its whole history with the given ones, in one atomic step.

        The one sanctioned rewrite of history (key rotation re-encrypts every version, so
        checksums change): if *key* is still at *expected_version*, its current document
        becomes *current* and its history exactly *history* (oldest first, checked as
        `prepare_import` checks an import, `ValidationError` otherwise). Raises
        `ConflictError` and changes nothing if *key* does not exist or is at another
        version. A writer that read the old content then gets `ConflictError`, as the
        checksum of the version it follows changed (`prepare_write`).
        """
        ...

    def close(self) -> None:
        """Release connections, locks and files; idempotent."""
        ...


@runtime_checkable
class ChangeNotifier(Protocol):
    """Hears the writes other processes commit to a shared store (PostgreSQL LISTEN/NOTIFY).

    It pushes each change to the callback it was made with, on a thread of its own,
    until closed; `dashpersist.notify.ChangeListener` is the PostgreSQL one, and
    `dashpersist.notify.change_listener_for` makes one for a storage that has the
    capability (SQLite and the JSON folder do not).
    """

    @property
    def is_listening(self) -> bool:
        """Whether it is connected and hearing changes right now."""
        ...

    def close(self) -> None:
        """Stop listening; idempotent. No callback starts after it returns."""
        ...

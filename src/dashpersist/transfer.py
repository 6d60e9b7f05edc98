"""Copy documents with their whole history: between stores, and to and from JSON Lines.

A copy keeps everything a version is: its number, checksum, parent checksum, time,
change type, description, device, label, schema version, patch and snapshot. It goes
through `Storage.import_document`, so a document arrives whole or not at all, and a
document that already exists at the destination is never overwritten.

Export format: one JSON object per line (canonical JSON, so one document is one line)::

    {"format": "dashpersist-export", "format_version": 1,
     "user_id": ..., "layout_id": ..., "version": ..., "checksum": ..., "schema_version": ...,
     "updated_at": "<ISO 8601, UTC>", "document": {...},
     "history": [{"version": 1, "checksum": ..., "parent_checksum": null,
                  "created_at": ..., "change_type": ..., "description": ..., "device_id": ...,
                  "label": ..., "schema_version": ..., "idempotency_key": ...,
                  "patch": [...] | null, "snapshot": {...} | null}, ...]}

``history`` is oldest first. The document is the stored form: encrypted fields stay
encrypted, so an export restores exactly and holds no plaintext. A line may also carry
``decrypted_document`` (written only when asked for); importing ignores it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal, TypeAlias, cast, get_args

from dashpersist._canonical import canonical_json, parse_json
from dashpersist.errors import (
    ConflictError,
    CorruptStoreError,
    StorageUnavailableError,
    ValidationError,
    ValidationIssue,
)
from dashpersist.storage.protocol import (
    DocumentKey,
    Storage,
    StoredDocument,
    VersionRecord,
    all_versions,
    prepare_import,
)
from dashpersist.types import ChangeType, JsonObject, JsonPatch, JsonValue
from dashpersist.versions import IntegrityProblem, VersionService

__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_FORMAT_VERSION",
    "CopyOutcome",
    "DocumentWithHistory",
    "copy_document",
    "decode_export_line",
    "document_keys",
    "encode_export_line",
    "read_export",
    "read_with_history",
    "verify_copy",
]

EXPORT_FORMAT: Final = "dashpersist-export"
EXPORT_FORMAT_VERSION: Final = 1

_READ_ATTEMPTS = 5
_CHANGE_TYPES: Final = frozenset(get_args(ChangeType))

CopyOutcome: TypeAlias = Literal["copied", "would_copy", "present", "differs", "gone"]
"""What `copy_document` did: copied it; would have (dry run); found the same head at the
destination; found other content there (left as is); or the source no longer has it."""


@dataclass(frozen=True, slots=True)
class DocumentWithHistory:
    """A document's current version and its whole history, oldest first."""

    current: StoredDocument
    history: list[VersionRecord]

    @property
    def key(self) -> DocumentKey:
        """The document's address."""
        return self.current.key


def document_keys(storage: Storage, user_id: str | None = None) -> list[DocumentKey]:
    """Return the key of every document in *storage* (or only *user_id*'s), sorted."""
    users = storage.user_ids() if user_id is None else [user_id]
    return [
        DocumentKey(user, layout_id) for user in users for layout_id in storage.layout_ids(user)
    ]


def read_with_history(storage: Storage, key: DocumentKey) -> DocumentWithHistory | None:
    """Return *key*'s current version and whole history, read consistently; ``None`` if absent.

    The document and its history are separate reads: when a writer commits between them,
    both are read again. Raises `StorageUnavailableError` for a document that keeps
    moving, and `CorruptStoreError` when the history does not end at the document.
    """
    for _attempt in range(_READ_ATTEMPTS):
        current = storage.read(key)
        if current is None:
            return None
        history = _whole_history(storage, key)
        if history and (history[-1].version, history[-1].checksum) == (
            current.version,
            current.checksum,
        ):
            return DocumentWithHistory(current, history)
        if storage.read(key) == current:
            raise CorruptStoreError(f"the history of {key} does not end at its current version")
    raise StorageUnavailableError(f"{key} kept changing while it was read; try again")


def copy_document(
    source: Storage, destination: Storage, key: DocumentKey, *, dry_run: bool = False
) -> CopyOutcome:
    """Copy *key* with its whole history from *source* to *destination*, if it is not there.

    A destination document with the source's head (version and checksum) counts as
    copied already (``"present"``), so a migration can be run again after an
    interruption; one with other content is left alone (``"differs"``).
    """
    existing = destination.read(key)
    if existing is not None:
        head = source.read(key)
        if head is None:
            return "gone"
        same = (existing.version, existing.checksum) == (head.version, head.checksum)
        return "present" if same else "differs"
    if dry_run:
        return "would_copy" if source.read(key) is not None else "gone"
    found = read_with_history(source, key)
    if found is None:
        return "gone"
    try:
        destination.import_document(key, found.current, found.history)
    except ConflictError:
        # Another process copied or created it since our read: judge what is there now.
        return copy_document(source, destination, key, dry_run=True)
    return "copied"


def verify_copy(source: Storage, destination: Storage, key: DocumentKey) -> list[IntegrityProblem]:
    """Return what is wrong with the copy of *key*: its own checksums and hash chain
    (`VersionService.verify`) and any difference from the source, version by version."""
    problems = list(VersionService(destination).verify(key).problems)
    original, copy = read_with_history(source, key), read_with_history(destination, key)
    if copy is None:
        return [*problems, IntegrityProblem(key, None, "missing", "not at the destination")]
    if original is None:
        return problems  # deleted at the source since: nothing to compare with
    if copy.current != original.current:
        problems.append(
            IntegrityProblem(
                key, copy.current.version, "copy", "current document differs from the source's"
            )
        )
    theirs = {record.version: record for record in original.history}
    for record in copy.history:
        if theirs.get(record.version) != record:
            problems.append(
                IntegrityProblem(
                    key, record.version, "copy", "history record differs from the source's"
                )
            )
    if len(copy.history) != len(original.history):
        problems.append(
            IntegrityProblem(
                key,
                None,
                "copy",
                f"{len(copy.history)} history records, the source has {len(original.history)}",
            )
        )
    return problems


# -- JSON Lines ----------------------------------------------------------------------------


def encode_export_line(
    found: DocumentWithHistory, *, decrypted_document: JsonObject | None = None
) -> bytes:
    """Return one export line (canonical JSON and a newline) for a document and its history."""
    current = found.current
    line: JsonObject = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "user_id": current.key.user_id,
        "layout_id": current.key.layout_id,
        "version": current.version,
        "checksum": current.checksum,
        "schema_version": current.schema_version,
        "updated_at": _iso(current.updated_at),
        "document": current.document,
        "history": [_record_json(record) for record in found.history],
    }
    if decrypted_document is not None:
        line["decrypted_document"] = decrypted_document
    return canonical_json(line) + b"\n"


def decode_export_line(line: bytes | str, *, line_number: int) -> DocumentWithHistory:
    """Parse one export line back into a document and its history, checked for import.

    Raises `ValidationError` naming the line and the field (never a value) for a line
    that is not a dashpersist export or does not hold together (see `prepare_import`).
    """
    where = f"line {line_number}"
    try:
        raw = parse_json(line, source=where)
    except CorruptStoreError as exc:
        raise _invalid(where, "json", "is not valid JSON") from exc
    if not isinstance(raw, dict) or raw.get("format") != EXPORT_FORMAT:
        raise _invalid(where, "format", f"is not a {EXPORT_FORMAT} line")
    if raw.get("format_version") != EXPORT_FORMAT_VERSION:
        raise _invalid(where, "format_version", "has a format version this dashpersist can't read")
    fields = _Fields(raw, where)
    key = DocumentKey(fields.text("user_id"), fields.text("layout_id"))
    document = raw.get("document")
    if not isinstance(document, dict):
        raise _invalid(f"{where}: document", "object", "must be a JSON object")
    history_raw = raw.get("history")
    if not isinstance(history_raw, list):
        raise _invalid(f"{where}: history", "list", "must be a list")
    current = StoredDocument(
        key=key,
        document=document,
        version=fields.integer("version"),
        checksum=fields.text("checksum"),
        updated_at=fields.time("updated_at"),
        schema_version=fields.integer("schema_version"),
    )
    history = [
        _record_from_json(item, f"{where}: history[{index}]")
        for index, item in enumerate(history_raw)
    ]
    try:
        prepare_import(key, current, history)
    except ValidationError as exc:
        raise ValidationError(exc.issues, message=f"{where}: {exc}") from exc
    return DocumentWithHistory(current, history)


def read_export(lines: Iterable[bytes]) -> Iterator[DocumentWithHistory]:
    """Decode every non-blank line of an export, in order (see `decode_export_line`)."""
    for number, line in enumerate(lines, start=1):
        if line.strip():
            yield decode_export_line(line, line_number=number)


# -- internals -----------------------------------------------------------------------------


def _whole_history(storage: Storage, key: DocumentKey) -> list[VersionRecord]:
    """Return every history record of *key*, oldest first."""
    return all_versions(storage, key)[::-1]


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _record_json(record: VersionRecord) -> JsonObject:
    return {
        "version": record.version,
        "checksum": record.checksum,
        "parent_checksum": record.parent_checksum,
        "created_at": _iso(record.created_at),
        "change_type": record.change_type,
        "description": record.description,
        "device_id": record.device_id,
        "label": record.label,
        "schema_version": record.schema_version,
        "idempotency_key": record.idempotency_key,
        "patch": cast(JsonValue, record.patch),
        "snapshot": record.snapshot,
    }


def _record_from_json(raw: JsonValue, where: str) -> VersionRecord:
    if not isinstance(raw, dict):
        raise _invalid(where, "object", "must be a JSON object")
    fields = _Fields(raw, where)
    change_type = raw.get("change_type")
    if change_type not in _CHANGE_TYPES:
        raise _invalid(f"{where}: change_type", "change_type", "is not a known change type")
    patch, snapshot = raw.get("patch"), raw.get("snapshot")
    if patch is not None and not (
        isinstance(patch, list) and all(isinstance(op, dict) for op in patch)
    ):
        raise _invalid(f"{where}: patch", "patch", "must be null or a list of operations")
    if snapshot is not None and not isinstance(snapshot, dict):
        raise _invalid(f"{where}: snapshot", "object", "must be null or a JSON object")
    return VersionRecord(
        version=fields.integer("version"),
        checksum=fields.text("checksum"),
        parent_checksum=fields.optional_text("parent_checksum"),
        created_at=fields.time("created_at"),
        change_type=cast(ChangeType, change_type),
        description=fields.optional_text("description"),
        device_id=fields.optional_text("device_id"),
        label=fields.optional_text("label"),
        schema_version=fields.integer("schema_version"),
        idempotency_key=fields.optional_text("idempotency_key"),
        patch=cast(JsonPatch | None, patch),
        snapshot=snapshot,
    )


class _Fields:
    """Typed access to the fields of one decoded JSON object, refusing what is out of shape."""

    def __init__(self, raw: dict[str, JsonValue], where: str) -> None:
        self._raw = raw
        self._where = where

    def text(self, name: str) -> str:
        value = self._raw.get(name)
        if not isinstance(value, str):
            raise _invalid(f"{self._where}: {name}", "string", "must be a string")
        return value

    def optional_text(self, name: str) -> str | None:
        return None if self._raw.get(name) is None else self.text(name)

    def integer(self, name: str) -> int:
        value = self._raw.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _invalid(f"{self._where}: {name}", "integer", "must be an integer >= 1")
        return value

    def time(self, name: str) -> datetime:
        try:
            moment = datetime.fromisoformat(self.text(name))
        except ValueError as exc:
            raise _invalid(f"{self._where}: {name}", "time", "is not an ISO 8601 time") from exc
        if moment.utcoffset() is None:
            raise _invalid(f"{self._where}: {name}", "time_zone", "has no time zone")
        return moment


def _invalid(path: str, rule: str, message: str) -> ValidationError:
    return ValidationError([ValidationIssue(path, rule, f"{path} {message}")])

"""Key rotation: re-encrypt every version of stored documents under the primary key.

Retiring a key means that no stored byte may still need it: not the current document,
not a keyframe snapshot, not an RFC 6902 patch value holding an envelope. A document is
rotated whole: every version is rebuilt from its history (decrypted with any key of the
ring, checked against its recorded checksum, so a tampered or corrupt history is refused,
never laundered), encrypted again under the primary key, and the history is rebuilt
around the new bytes: patches recomputed with `make_patch`, keyframes where they were
(plus the oldest kept version, any version following a gap retention left, and enough
to keep every version within *keyframe_interval* records of one), checksums and parent
checksums recomputed. Version numbers, times, change types, descriptions, device ids,
labels, idempotency keys and schema versions are kept. Consecutive versions whose secret
did not change share one new ciphertext, so patches stay as small as they were.

Re-encryption changes bytes, so the hash chain is rewritten too: rotation is the one
sanctioned rewrite of history. It is written with `Storage.replace_document`, atomically
and only if the document is still at the version read; when a writer got in, the
document is read again and rotated again, a bounded number of times. A writer that
read the document before the rotation committed gets `ConflictError` (the checksum of
the version it follows changed) and re-reads, so it cannot write the old ciphertext back.

Writers must already encrypt under the new primary key when the rotation runs (a
writer whose primary is still the old key writes new ciphertext under it). A record
whose predecessor retention removed keeps its ``parent_checksum`` as it was: it names a
version that no longer exists and whose new checksum cannot be known.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from dashpersist._canonical import checksum
from dashpersist.encryption import FieldEncryptor
from dashpersist.errors import (
    ConfigurationError,
    ConflictError,
    CorruptStoreError,
    DashPersistError,
    NotFoundError,
    PatchError,
)
from dashpersist.patch import apply_patch, make_patch
from dashpersist.storage.protocol import DocumentKey, Storage, StoredDocument, VersionRecord
from dashpersist.types import JsonObject

__all__ = [
    "RotationFailure",
    "RotationOutcome",
    "RotationProgress",
    "RotationReport",
    "rotate_document",
    "rotate_store",
]

DEFAULT_ATTEMPTS = 5
"""How many times `rotate_document` reads and rotates a document that writers keep changing."""


@dataclass(frozen=True, slots=True)
class RotationOutcome:
    """What rotating one document did.

    ``rotated`` is ``False`` when every version was already under the primary key and
    nothing was written. ``versions`` counts the history records rewritten; ``attempts``
    is 1 unless a writer got in and the document was read and rotated again.
    """

    key: DocumentKey
    rotated: bool
    versions: int
    attempts: int


@dataclass(frozen=True, slots=True)
class RotationFailure:
    """A document `rotate_store` could not rotate, and why (it was left as it was)."""

    key: DocumentKey
    error: DashPersistError


@dataclass(frozen=True, slots=True)
class RotationProgress:
    """Where `rotate_store` is: *documents_done* of *documents_total* finished, the last
    being *key*, encrypted under *primary_key_id*."""

    documents_done: int
    documents_total: int
    key: DocumentKey
    primary_key_id: str


@dataclass(frozen=True, slots=True)
class RotationReport:
    """What `rotate_store` did: ``ok`` when no document failed.

    When ``ok``, no stored ciphertext needs a key other than *primary_key_id*: the others
    can be dropped from the ring.
    """

    primary_key_id: str
    documents_total: int
    outcomes: list[RotationOutcome] = field(default_factory=list)
    failures: list[RotationFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every document was rotated or needed no rotation."""
        return not self.failures

    @property
    def documents_rotated(self) -> int:
        """How many documents were rewritten."""
        return sum(outcome.rotated for outcome in self.outcomes)


def rotate_store(
    storage: Storage,
    encryptor: FieldEncryptor,
    *,
    keyframe_interval: int,
    progress: Callable[[RotationProgress], None] | None = None,
    attempts: int = DEFAULT_ATTEMPTS,
) -> RotationReport:
    """Rotate every document of every user in *storage*; see `rotate_document`.

    A document that fails (`DecryptionError` for a key missing from the ring, a corrupt
    history, writers that kept winning) is listed in the report's ``failures`` and left
    as it was; the others still rotate. A document deleted meanwhile is skipped.
    *progress* is called after each document. Errors listing the store's documents are
    raised.
    """
    _check_options(keyframe_interval, attempts)
    keys = [
        DocumentKey(user_id, layout_id)
        for user_id in storage.user_ids()
        for layout_id in storage.layout_ids(user_id)
    ]
    primary = encryptor.keyring.primary_key_id
    report = RotationReport(primary_key_id=primary, documents_total=len(keys))
    for done, key in enumerate(keys, start=1):
        outcome: RotationOutcome | None = None
        try:
            outcome = rotate_document(
                storage, key, encryptor, keyframe_interval=keyframe_interval, attempts=attempts
            )
        except NotFoundError:
            outcome = None  # deleted since the listing: none of its ciphertext is left
        except DashPersistError as exc:
            report.failures.append(RotationFailure(key, exc))
        if outcome is not None:
            report.outcomes.append(outcome)
        if progress is not None:
            progress(RotationProgress(done, len(keys), key, primary))
    return report


def rotate_document(
    storage: Storage,
    key: DocumentKey,
    encryptor: FieldEncryptor,
    *,
    keyframe_interval: int,
    attempts: int = DEFAULT_ATTEMPTS,
) -> RotationOutcome:
    """Re-encrypt every version of *key* (document, snapshots, patches) under the primary key.

    Skipped without writing when no version needs it (`FieldEncryptor.needs_rotation`).
    Written with `Storage.replace_document`; when a writer got in, read and rotated again,
    up to *attempts* times in all. Raises `NotFoundError` when *key* does not exist,
    `DecryptionError` (naming user, layout, path and key id) when a version does not
    decrypt, `CorruptStoreError` when the history does not rebuild to its checksums, and
    `ConflictError` when writers won every attempt; the document is unchanged then.
    """
    _check_options(keyframe_interval, attempts)
    tried: int | None = None
    for attempt in range(1, attempts + 1):
        whole = _read_whole(storage, key)
        if whole is None:
            continue  # a writer got in between reading the document and its history
        current, records, documents = whole
        tried = current.version
        if not any(encryptor.needs_rotation(document) for document in documents):
            return RotationOutcome(key, rotated=False, versions=0, attempts=attempt)
        new_current, new_history = _rotated(
            key,
            current,
            records,
            documents,
            encryptor=encryptor,
            keyframe_interval=keyframe_interval,
        )
        try:
            storage.replace_document(
                key, new_current, new_history, expected_version=current.version
            )
        except ConflictError:
            continue
        return RotationOutcome(key, rotated=True, versions=len(new_history), attempts=attempt)
    latest = storage.read(key)
    raise ConflictError(
        key,
        expected_version=tried,
        actual_version=None if latest is None else latest.version,
        message=f"{key} kept changing while it was rotated ({attempts} attempts); "
        "it was left as it was: rotate it again",
    )


def _check_options(keyframe_interval: int, attempts: int) -> None:
    if keyframe_interval < 1:
        raise ConfigurationError(f"keyframe_interval must be >= 1, not {keyframe_interval}")
    if attempts < 1:
        raise ConfigurationError(f"attempts must be >= 1, not {attempts}")


def _read_whole(
    storage: Storage, key: DocumentKey
) -> tuple[StoredDocument, list[VersionRecord], list[JsonObject]] | None:
    """Return *key*'s current document, its history oldest first and every version's
    stored document; ``None`` when a writer moved the document on between the reads."""
    current = storage.read(key)
    if current is None:
        raise NotFoundError(f"{key} does not exist")
    # One call, not pages: each backend reads it in one consistent step. One more than
    # the current version reveals a writer that got in after the read above.
    records = list(reversed(storage.versions(key, limit=current.version + 1)))
    if not records or (records[-1].version, records[-1].checksum) != (
        current.version,
        current.checksum,
    ):
        if storage.read(key) == current:
            raise CorruptStoreError(f"{key}: history does not end at the current version")
        return None
    if checksum(current.document) != current.checksum:
        raise CorruptStoreError(f"{key}: the current document does not match its checksum")
    return current, records, _rebuilt(key, records)


def _rebuilt(key: DocumentKey, records: list[VersionRecord]) -> list[JsonObject]:
    """Return the stored document of every record (oldest first), checked against its checksum."""
    documents: list[JsonObject] = []
    previous: VersionRecord | None = None
    for record in records:
        follows = previous is not None and record.version == previous.version + 1
        if record.snapshot is not None:
            document = record.snapshot
        elif follows and record.patch is not None:
            try:
                document = apply_patch(documents[-1], record.patch)
            except PatchError as exc:
                raise CorruptStoreError(
                    f"{key}: the patch of version {record.version} does not apply"
                ) from exc
        else:
            raise CorruptStoreError(f"{key}: no keyframe or patch chain leads to {record.version}")
        if checksum(document) != record.checksum:
            raise CorruptStoreError(f"{key}: version {record.version} does not match its checksum")
        documents.append(document)
        previous = record
    return documents


def _rotated(
    key: DocumentKey,
    current: StoredDocument,
    records: list[VersionRecord],
    documents: list[JsonObject],
    *,
    encryptor: FieldEncryptor,
    keyframe_interval: int,
) -> tuple[StoredDocument, list[VersionRecord]]:
    """Return *current* and its history with every version encrypted under the primary key."""
    ids = {"user_id": key.user_id, "layout_id": key.layout_id}
    history: list[VersionRecord] = []
    previous_record: VersionRecord | None = None
    previous_document: JsonObject | None = None
    since_keyframe = 0
    for record, stored in zip(records, documents, strict=True):
        plain = encryptor.decrypt_document(stored, **ids)
        # Encrypting against the version before keeps its new ciphertext for a secret
        # that did not change: the patch between them stays free of envelopes.
        document = encryptor.encrypt_document(plain, previous=previous_document, **ids)
        follows = previous_record is not None and record.version == previous_record.version + 1
        is_keyframe = (
            record.snapshot is not None or not follows or since_keyframe + 1 >= keyframe_interval
        )
        since_keyframe = 0 if is_keyframe else since_keyframe + 1
        parent_checksum, patch = record.parent_checksum, None
        if follows and previous_document is not None:
            parent_checksum = history[-1].checksum
            if record.patch is not None:
                patch = make_patch(previous_document, document)
        # Otherwise the version before was removed by retention: its checksum stays as
        # recorded, and its patch, which could never apply and may hold old ciphertext,
        # goes (the record is a keyframe).
        history.append(
            replace(
                record,
                checksum=checksum(document),
                parent_checksum=parent_checksum,
                patch=patch,
                snapshot=document if is_keyframe else None,
            )
        )
        previous_record, previous_document = record, document
    assert previous_document is not None
    return (
        replace(current, document=previous_document, checksum=history[-1].checksum),
        history,
    )

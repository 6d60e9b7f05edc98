"""Committer: compare-and-swap writes, merged three-way when the store moved on.

A write reads the current version (through the read cache), compares it with the
version the caller's edit started from (its base), and either writes from there or
merges base, edit and current and writes the result; a write that loses a race to
another writer is re-read and merged again, a bounded number of times. Each write
stores its history record, and history is trimmed to ``max_versions``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import threading
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

import pydantic

from dashpersist._canonical import checksum, checksum_bytes, copy_json
from dashpersist._retry import call_with_retries
from dashpersist.cache import ReadCache, invalidate_everywhere
from dashpersist.changes import describe_changes, summarize
from dashpersist.codec import DocumentCodec
from dashpersist.config import PersistenceConfig
from dashpersist.errors import ConflictError, DashPersistError, NotFoundError
from dashpersist.merge import ConflictResolver
from dashpersist.models import SaveResult
from dashpersist.outbox import OutboxEntry
from dashpersist.storage.protocol import DocumentKey, Storage, StoredDocument, VersionRecord
from dashpersist.types import ChangeType, JsonObject
from dashpersist.versions import VersionService, version_carrying

__all__ = ["CachedDocument", "Committer", "LostRace", "PendingSave"]

DocT = TypeVar("DocT", bound=pydantic.BaseModel)
T = TypeVar("T")
_LOG = logging.getLogger(__name__)

_MERGE_ATTEMPTS = 10
"""Rounds of read-merge-write a save tries before giving up to a document that keeps moving."""
_MERGE_BACKOFF = 0.005
"""Seconds; the wait before merge round n is drawn from [0, n * _MERGE_BACKOFF] so that
writers racing for one document fall out of step."""
DELETIONS_KEPT = 4096
"""How many of the latest deletions a committer remembers for the trims planned before
them; a trim planned before a deletion it no longer remembers stands down."""


def _run_now(key: DocumentKey, task: Callable[[], None]) -> None:
    task()


def _no_lock(key: DocumentKey) -> AbstractContextManager[object]:
    return contextlib.nullcontext()


def _instant(moment: datetime) -> datetime:
    """*moment* as an aware time: a store may hand a naive time it was given back as UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class LostRace(Exception):  # noqa: N818 - internal signal, never escapes the manager
    """Another writer committed between our read and our write; merge and try again."""

    def __init__(self, conflict: ConflictError) -> None:
        super().__init__(str(conflict))
        self.conflict = conflict


@dataclass(frozen=True, slots=True)
class PendingSave:
    """A validated save on its way to storage; ``sequence`` orders saves of one manager."""

    plain: JsonObject
    change_type: ChangeType
    description: str | None
    label: str | None
    sequence: int
    base_version: int | None = None
    client_id: str | None = None
    queued: bool = False
    journal_through: int | None = None


@dataclass(frozen=True, slots=True)
class CachedDocument(Generic[DocT]):
    """A cache entry: the stored form, and the model built from it once it was loaded."""

    stored: StoredDocument
    model: DocT | None = None


class Committer(Generic[DocT]):
    """Write documents with compare-and-swap, merging from the base when the store moved on."""

    def __init__(
        self,
        storage: Storage,
        versions: VersionService,
        codec: DocumentCodec[DocT],
        resolver: ConflictResolver,
        cache: ReadCache[CachedDocument[DocT]],
        *,
        config: Callable[[], PersistenceConfig],
        device_id: str | None,
        clock: Callable[[], datetime],
        sleep: Callable[[float], None],
        housekeeping: Callable[[DocumentKey, Callable[[], None]], None] | None = None,
        document_lock: Callable[[DocumentKey], AbstractContextManager[object]] | None = None,
    ) -> None:
        self._storage = storage
        self._housekeeping = housekeeping or _run_now
        self._document_lock = document_lock or _no_lock
        self._versions = versions
        self._codec = codec
        self._resolver = resolver
        self._cache = cache
        self._current_config = config
        self._device_id = device_id
        self._clock = clock
        self._sleep = sleep
        self.bases: dict[DocumentKey, int] = {}
        """Per document, the version the caller last loaded or saved: the next save's base."""
        self._deletions = itertools.count(1)
        self._deleted: OrderedDict[DocumentKey, int] = OrderedDict()
        """Per document deleted through this committer's manager, the number of its last
        deletion, for the latest `DELETIONS_KEPT` deletions: a trim planned before one
        must not be carried out on the history written since (see `_trim`)."""
        self._deletions_forgotten = 0
        self._deleted_guard = threading.Lock()

    @property
    def _config(self) -> PersistenceConfig:
        return self._current_config()

    def forget(self, key: DocumentKey) -> None:
        """Note that *key* was deleted (call with its lock held): its base goes, and trims
        planned until now are dropped, since a new document may reuse their numbers."""
        self.bases.pop(key, None)
        with self._deleted_guard:
            self._deleted[key] = next(self._deletions)
            self._deleted.move_to_end(key)
            while len(self._deleted) > DELETIONS_KEPT:
                self._deleted.popitem(last=False)
                self._deletions_forgotten += 1

    def _deletion_mark(self, key: DocumentKey) -> tuple[int, int]:
        """What `_trim` compares to tell whether *key* may have been deleted since."""
        with self._deleted_guard:
            return self._deleted.get(key, 0), self._deletions_forgotten

    def _deleted_since(self, key: DocumentKey, mark: tuple[int, int]) -> bool:
        """Whether *key* was deleted since *mark* was taken, or may have been: a deletion
        forgotten since could have been its."""
        with self._deleted_guard:
            number = self._deleted.get(key)
            if number is not None:
                return number != mark[0]
            return mark[0] != 0 or self._deletions_forgotten != mark[1]

    def retry(self, operation: Callable[[], T]) -> T:
        """Run a storage operation with the configured bounded retries."""
        return call_with_retries(operation, self._config, sleep=self._sleep)

    def read(self, key: DocumentKey) -> StoredDocument | None:
        cached = self._cache.get(key)
        if cached is not None:
            return cached.stored
        current = self.retry(lambda: self._storage.read(key))
        if current is not None:
            self._cache.put(key, CachedDocument(current))
        return current

    def _write(
        self,
        key: DocumentKey,
        document: JsonObject,
        record: VersionRecord,
        *,
        expected_version: int | None,
    ) -> int:
        try:
            version = self.retry(
                lambda: self._storage.write(
                    key, document, record, expected_version=expected_version
                )
            )
        except BaseException:
            # Whatever happened, the cached copy may now be stale.
            self._cache.invalidate(key)
            raise
        stored = StoredDocument(
            key=key,
            document=document,
            version=version,
            checksum=record.checksum,
            updated_at=record.created_at,
            schema_version=record.schema_version,
        )
        invalidate_everywhere(self._storage, key, besides=self._cache)
        self._cache.put(key, CachedDocument(stored))
        return version

    def save(self, key: DocumentKey, pending: PendingSave) -> SaveResult:
        for attempt in range(1, _MERGE_ATTEMPTS + 1):
            try:
                return self._save_once(key, pending)
            except LostRace as lost:
                # Our cached view was stale or another writer won the race: read the store
                # again and merge; the base stays what the caller last saw.
                if attempt == _MERGE_ATTEMPTS:
                    raise lost.conflict from None
                self._sleep(random.uniform(0, attempt * _MERGE_BACKOFF))  # noqa: S311
        raise AssertionError("unreachable")

    def _save_once(self, key: DocumentKey, pending: PendingSave) -> SaveResult:
        change_type, description, label = pending.change_type, pending.description, pending.label
        current = self.read(key)
        actual = None if current is None else current.version
        base = pending.base_version or self.bases.get(key, actual)
        if base != actual:
            if not self._config.enable_conflict_resolution or current is None or base is None:
                raise ConflictError(key, expected_version=base, actual_version=actual)
            return self._merge_and_commit(key, pending.plain, base, current, label)
        document = self._codec.encrypt(
            key, pending.plain, previous=None if current is None else current.document
        )
        encoded = self._codec.canonical(document)
        digest = checksum_bytes(encoded)
        if current is not None and current.checksum == digest:
            self.bases[key] = current.version
            return SaveResult(success=True, version=current.version, source="unchanged")
        if description is None and change_type == "auto" and current is not None:
            description = summarize(describe_changes(current.document, document))
        version = self.commit(
            key,
            current,
            document,
            digest,
            change_type=change_type,
            description=description,
            label=label,
            encoded=encoded,
        )
        return SaveResult(success=True, version=version, source="storage")

    def _merge_and_commit(
        self,
        key: DocumentKey,
        plain: JsonObject,
        base_version: int,
        current: StoredDocument,
        label: str | None,
    ) -> SaveResult:
        try:
            base, _ = self.retry(lambda: self._versions.get_document(key, base_version))
        except NotFoundError as exc:
            raise ConflictError(
                key,
                expected_version=base_version,
                actual_version=current.version,
                message=f"{key} moved on from version {base_version} to {current.version}, "
                f"and version {base_version} is no longer in history to merge from",
            ) from exc
        # Encrypting against the base keeps the base's ciphertext for secrets this save
        # did not change, so the merge sees no change there.
        local = self._codec.encrypt(key, plain, previous=base)
        result = self._resolver.resolve(
            base, local, current.document, local_time=self._clock(), remote_time=current.updated_at
        )
        merged = result.layout
        # The merged document must pass validation like any save.
        self._codec.validator.check_json(self._codec.plain(key, merged, current.schema_version))
        digest = checksum(merged)
        if digest == current.checksum:
            self.bases[key] = current.version
            return SaveResult(
                success=True, version=current.version, source="unchanged", merge=result
            )
        description = f"Merged with version {current.version}"
        if result.conflicts:
            description += f"; {len(result.conflicts)} conflict(s) at " + ", ".join(
                c.path for c in result.conflicts[:5]
            )
        version = self.commit(
            key,
            current,
            copy_json(merged),
            digest,
            change_type="conflict_resolution",
            description=description,
            label=label,
        )
        return SaveResult(success=True, version=version, source="storage", merge=result)

    def _entry_base(
        self, entry: OutboxEntry, base_version: int, current: StoredDocument
    ) -> JsonObject:
        """Rebuild the version *entry* was edited on top of, to merge it from; a base no
        longer in history (trimmed while the entry waited) is a `ConflictError`, which
        blocks the entry, as the same save online would be refused."""
        try:
            base, _ = self.retry(lambda: self._versions.get_document(entry.key, base_version))
        except NotFoundError as exc:
            raise ConflictError(
                entry.key,
                expected_version=base_version,
                actual_version=current.version,
                message=f"{entry.key} moved on from version {base_version} to "
                f"{current.version} while outbox entry {entry.entry_id} waited, and version "
                f"{base_version} is no longer in history to merge from",
            ) from exc
        return base

    def commit(
        self,
        key: DocumentKey,
        current: StoredDocument | None,
        document: JsonObject,
        digest: str,
        *,
        change_type: ChangeType,
        description: str | None,
        label: str | None,
        idempotency_key: str | None = None,
        device_id: str | None = None,
        encoded: bytes | None = None,
    ) -> int:
        """Write *document* over *current* with its history record; apply retention.

        *digest* is the SHA-256 of the document's canonical JSON, *encoded* that JSON when
        the caller has it (storage then does not encode the document again)."""
        versioning = self._config.enable_versioning
        record = self._versions.record_for(
            current,
            document,
            change_type=change_type,
            description=description,
            device_id=device_id or self._device_id,
            label=label,
            idempotency_key=idempotency_key,
            schema_version=self._codec.migrator.current_version,
            document_checksum=digest,
            encoded_document=encoded,
            # Without versioning only this record is kept: whole, it needs no rebuilding.
            keyframe=not versioning,
        )
        try:
            version = self._write(
                key, document, record, expected_version=None if current is None else current.version
            )
        except ConflictError as exc:
            if self._config.enable_conflict_resolution:
                raise LostRace(exc) from exc
            raise
        self.bases[key] = version
        keep = self._config.max_versions if versioning else 1
        # Trim when the oldest version to keep is a keyframe (every keyframe_interval
        # writes): it is whole already, so trimming rebuilds nothing (measured: rebuilding
        # the new oldest version on every trim cost a third of a 50-widget save). History
        # therefore holds max_versions to max_versions + keyframe_interval - 1 versions.
        batch = 1 if not versioning else self._versions.keyframe_interval
        if version > keep and (version - keep) % batch == 0:
            deleted = self._deletion_mark(key)
            self._housekeeping(key, lambda: self._trim(key, keep, record, deleted))
        return version

    def _trim(
        self, key: DocumentKey, keep: int, written: VersionRecord, deleted: tuple[int, int]
    ) -> None:
        """Trim *key*'s history below the *keep* versions up to the version this committer
        wrote with *written*, planned when `_deletion_mark` was *deleted*: the cut then
        falls on a keyframe, however many versions were written since.

        Reading the history to trim is most of the work, and only reads, so it runs
        without the document's lock: the next save need not wait for it. The checks and
        the deletion hold the lock. A document deleted and written again, even to the same
        content, has a new history the plan knows nothing of (its own saves ask for its
        trims), so the trim stands down when the document was (or may have been) deleted
        through this manager since, or when the version's record is not the one written
        (checksum and time: a writer elsewhere). A plan that stores keyframes (rare: a
        labelled version, or a cut off the keyframe grid) is made again under the lock, so
        that what it stores is read while this manager changes nothing in the document's
        history.
        """
        version = written.version
        try:
            plan = self.retry(lambda: self._versions.plan_retention(key, keep=keep, newest=version))
            if plan is None:
                return
            with self._document_lock(key):
                if self._deleted_since(key, deleted):
                    return  # deleted and written again since: the plan may be stale
                stored = self.retry(lambda: self._versions.get_record(key, version))
                if stored.checksum != written.checksum or _instant(stored.created_at) != _instant(
                    written.created_at
                ):
                    return  # the same, by another writer
                if plan.snapshots:
                    plan = self.retry(
                        lambda: self._versions.plan_retention(key, keep=keep, newest=version)
                    )
                if plan is not None:
                    self.retry(lambda: self._versions.carry_out(key, plan))
        except NotFoundError:
            return  # the same
        except DashPersistError:
            # The write is committed; trimming is housekeeping that the next trim catches
            # up on (another process may be trimming the same history right now).
            _LOG.warning("could not trim the history of %s", key, exc_info=True)

    def commit_entry(
        self, entry: OutboxEntry, base_version: int | None, base_document: JsonObject | None
    ) -> int:
        """Write one outbox entry edited on top of *base_version* (and, when it followed
        another offline entry, of that entry's *base_document*), merging with whatever
        the store holds now."""
        key = entry.key
        for attempt in range(1, _MERGE_ATTEMPTS + 1):
            self._cache.invalidate(key)
            current = self.read(key)
            if current is not None and current.version != base_version:
                # Another process sharing the outbox may have replayed this entry since
                # the caller looked: then it is stored, and merging it again would write
                # it twice (over a newer entry). The write below is a compare-and-swap
                # on what was read here, so it cannot slip in after this look.
                written = self.retry(
                    lambda: version_carrying(self._storage, key, entry.entry_id, base_version)
                )
                if written is not None:
                    return written
            document, change_type, description = (
                entry.document,
                entry.change_type,
                entry.description,
            )
            base = base_document
            # An entry with no base was saved blind (the manager had not read the document):
            # it overwrites, as the same save online would have.
            if (
                base is None
                and current is not None
                and base_version is not None
                and current.version != base_version
            ):
                base = self._entry_base(entry, base_version, current)
            if self._codec.encryptor is not None:
                # The entry may have waited through a key rotation: encrypt it afresh under
                # the primary key, keeping the ciphertext of secrets it did not change.
                previous = (
                    base if base is not None else None if current is None else current.document
                )
                plain = self._codec.encryptor.decrypt_document(
                    document, user_id=key.user_id, layout_id=key.layout_id
                )
                document = self._codec.encrypt(key, plain, previous=previous)
            if current is not None and base is not None:
                result = self._resolver.resolve(base, document, current.document)
                if checksum(result.layout) != checksum(document):
                    change_type = "sync"
                    description = f"Offline edit merged with version {current.version}"
                document = copy_json(result.layout)
            try:
                return self.commit(
                    key,
                    current,
                    document,
                    checksum(document),
                    change_type=change_type,
                    description=description,
                    label=entry.label,
                    idempotency_key=entry.entry_id,
                    device_id=entry.device_id,
                )
            except LostRace as lost:
                # The refused write may be a retry of one that committed but whose answer
                # was lost: then the entry is in history already, under its key.
                written = self.retry(
                    lambda: version_carrying(self._storage, key, entry.entry_id, entry.base_version)
                )
                if written is not None:
                    return written
                if attempt == _MERGE_ATTEMPTS:
                    raise lost.conflict from None
        raise AssertionError("unreachable")

"""VersionService: history records for writes, old versions rebuilt, retention, integrity checks.

History is stored as deltas: each record holds the RFC 6902 patch from the version before
it, and every ``keyframe_interval``-th record (and the oldest one retention keeps) also
holds the whole document. Rebuilding any version therefore applies fewer than
``keyframe_interval`` patches, starting from the nearest keyframe at or below it. The
current document is always stored whole, beside its history.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from dashpersist._canonical import checksum, copy_json
from dashpersist.errors import CorruptStoreError, NotFoundError, PatchError
from dashpersist.patch import apply_patch, make_patch
from dashpersist.storage.protocol import (
    DocumentKey,
    Storage,
    StoredDocument,
    VersionRecord,
    all_versions,
    outline_from_versions,
)
from dashpersist.types import ChangeType, JsonObject

__all__ = ["IntegrityProblem", "IntegrityReport", "RetentionPlan", "VersionService"]


@dataclass(frozen=True, slots=True)
class IntegrityProblem:
    """One thing `verify` found wrong: which document, which version, what."""

    key: DocumentKey
    version: int | None
    kind: str
    message: str


@dataclass(frozen=True, slots=True)
class IntegrityReport:
    """What `verify` checked and found: ``ok`` when ``problems`` is empty."""

    documents_checked: int
    versions_checked: int
    problems: list[IntegrityProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every checksum and chain link matched."""
        return not self.problems


@dataclass(frozen=True, slots=True)
class RetentionPlan:
    """What a retention run does: the versions to delete, and the documents to store
    first as the snapshots of the versions that become keyframes."""

    remove: list[int]
    snapshots: dict[int, JsonObject] = field(default_factory=dict)


class VersionService:
    """Build the history record of each write, rebuild old versions and keep history in bounds."""

    def __init__(
        self,
        storage: Storage,
        *,
        keyframe_interval: int = 32,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._storage = storage
        self._keyframe_interval = keyframe_interval
        self._clock = clock or (lambda: datetime.now(UTC))

    @property
    def keyframe_interval(self) -> int:
        """Every this many versions, a record holds the whole document."""
        return self._keyframe_interval

    @keyframe_interval.setter
    def keyframe_interval(self, interval: int) -> None:
        self._keyframe_interval = interval

    def record_for(
        self,
        current: StoredDocument | None,
        document: JsonObject,
        *,
        change_type: ChangeType = "manual",
        description: str | None = None,
        device_id: str | None = None,
        label: str | None = None,
        idempotency_key: str | None = None,
        schema_version: int = 1,
        document_checksum: str | None = None,
        encoded_document: bytes | None = None,
        keyframe: bool = False,
    ) -> VersionRecord:
        """Return the history record that writing *document* over *current* must store.

        ``keyframe=True`` stores the whole document even off the keyframe interval.
        *encoded_document* is the document's canonical JSON when the caller has it (see
        `VersionRecord.encoded_document`); *document_checksum* is then its SHA-256.
        """
        version = 1 if current is None else current.version + 1
        is_keyframe = keyframe or current is None or (version - 1) % self._keyframe_interval == 0
        return VersionRecord(
            version=version,
            checksum=document_checksum or checksum(document),
            parent_checksum=None if current is None else current.checksum,
            created_at=self._clock(),
            change_type=change_type,
            description=description,
            device_id=device_id,
            label=label,
            schema_version=schema_version,
            idempotency_key=idempotency_key,
            patch=None if current is None else make_patch(current.document, document),
            snapshot=document if is_keyframe else None,
            encoded_document=encoded_document,
        )

    def get_record(self, key: DocumentKey, version: int) -> VersionRecord:
        """Return the history record of *version*; raise `NotFoundError` if there is none."""
        records = self._storage.versions(key, before=version + 1, limit=1)
        if not records or records[0].version != version:
            raise NotFoundError(f"{key} has no version {version}")
        return records[0]

    def get_document(self, key: DocumentKey, version: int) -> tuple[JsonObject, VersionRecord]:
        """Rebuild the document as it was at *version*; return it with its record.

        Raises `NotFoundError` for a version not in history and `CorruptStoreError` when
        the rebuilt document does not match the checksum recorded for it.
        """
        records = self._storage.versions(key, before=version + 1, limit=self._keyframe_interval)
        if not records or records[0].version != version:
            raise NotFoundError(f"{key} has no version {version}")
        chain: list[VersionRecord] = []
        for record in records:
            chain.append(record)
            if record.snapshot is not None:
                break
        else:
            raise CorruptStoreError(
                f"{key}: no keyframe within {self._keyframe_interval} versions of {version}"
            )
        document = copy_json(chain[-1].snapshot)  # type: ignore[arg-type]
        for record in reversed(chain[:-1]):
            document = self._apply(key, document, record)
        if checksum(document) != records[0].checksum:
            raise CorruptStoreError(f"{key}: version {version} does not match its checksum")
        return document, records[0]

    def apply_retention(
        self, key: DocumentKey, *, keep: int, newest: int | None = None
    ) -> list[int]:
        """Delete all but the newest *keep* versions, except labelled ones; return those removed.

        The oldest kept version, and every labelled version kept below it, become
        keyframes first, so every version left stays exactly reconstructible. *newest*
        counts the versions to keep from that version instead of the newest stored: a
        caller trimming after its own write, which checked that the version is still
        the one it wrote (a document deleted and created again has lower numbers).
        """
        plan = self.plan_retention(key, keep=keep, newest=newest)
        if plan is None:
            return []
        self.carry_out(key, plan)
        return plan.remove

    def plan_retention(
        self, key: DocumentKey, *, keep: int, newest: int | None = None
    ) -> RetentionPlan | None:
        """Work out what `apply_retention` would do, reading only; ``None``: nothing.

        Raises `NotFoundError` when the oldest version to keep is not in history.
        """
        if newest is None:
            latest = self._storage.versions(key, limit=1)
            if not latest:
                return None
            newest = latest[0].version
        cut = newest - keep + 1
        if cut <= 1:
            return None
        # The oldest version to keep comes first, read with the ones to remove: their
        # outline only, since a trim on the keyframe grid needs none of their content.
        outline = getattr(self._storage, "version_outline", None)  # a storage of old
        old = (
            outline(key, before=cut + 1)
            if outline is not None
            else outline_from_versions(self._storage, key, before=cut + 1)
        )
        if not old or old[0].version != cut:
            raise NotFoundError(f"{key} has no version {cut}")
        oldest_kept, old = old[0], old[1:]
        remove = [r.version for r in old if r.label is None]
        if not remove:
            return None
        bare = [r.version for r in old if r.label is not None and not r.keyframe]
        if not oldest_kept.keyframe:
            bare.append(cut)
        snapshots = {version: self.get_document(key, version)[0] for version in bare}
        return RetentionPlan(remove, snapshots)

    def carry_out(self, key: DocumentKey, plan: RetentionPlan) -> None:
        """Store *plan*'s keyframes, then delete its versions, in one transaction."""
        self._storage.compact(key, remove=plan.remove, snapshots=plan.snapshots)

    def verify(self, key: DocumentKey) -> IntegrityReport:
        """Recompute every version's checksum and the hash chain of *key*'s history.

        Reports a changed, removed or reordered history record, a keyframe that disagrees
        with the patches before it, and a current document that is not the newest version.
        """
        problems: list[IntegrityProblem] = []
        current = self._storage.read(key)
        records = list(reversed(all_versions(self._storage, key)))
        document: JsonObject | None = None
        previous: VersionRecord | None = None
        for record in records:
            document = self._rebuild_step(key, document, previous, record, problems)
            if document is not None and checksum(document) != record.checksum:
                problems.append(
                    IntegrityProblem(
                        key, record.version, "checksum", "content does not match its checksum"
                    )
                )
            if previous is not None:
                # Retention only leaves gaps above labelled versions it kept.
                if record.version > previous.version + 1 and previous.label is None:
                    problems.append(
                        IntegrityProblem(
                            key,
                            record.version,
                            "gap",
                            f"versions {previous.version + 1} to {record.version - 1} are missing",
                        )
                    )
                if record.version <= previous.version:
                    problems.append(
                        IntegrityProblem(key, record.version, "order", "history is out of order")
                    )
                elif record.version == previous.version + 1 and (
                    record.parent_checksum != previous.checksum
                ):
                    problems.append(
                        IntegrityProblem(
                            key,
                            record.version,
                            "chain",
                            f"parent checksum does not match version {previous.version}",
                        )
                    )
            previous = record
        problems += self._check_head(key, current, previous)
        return IntegrityReport(
            documents_checked=0 if current is None and not records else 1,
            versions_checked=len(records),
            problems=problems,
        )

    def _check_head(
        self, key: DocumentKey, current: StoredDocument | None, newest: VersionRecord | None
    ) -> list[IntegrityProblem]:
        if current is None:
            return (
                []
                if newest is None
                else [IntegrityProblem(key, newest.version, "orphan", "history without a document")]
            )
        problems = []
        if checksum(current.document) != current.checksum:
            problems.append(
                IntegrityProblem(
                    key, current.version, "document", "current document does not match its checksum"
                )
            )
        if newest is None or newest.version != current.version:
            problems.append(
                IntegrityProblem(
                    key, current.version, "head", "current version is not the newest in history"
                )
            )
        elif newest.checksum != current.checksum:
            problems.append(
                IntegrityProblem(
                    key, current.version, "head", "current document differs from its history record"
                )
            )
        return problems

    def _rebuild_step(
        self,
        key: DocumentKey,
        document: JsonObject | None,
        previous: VersionRecord | None,
        record: VersionRecord,
        problems: list[IntegrityProblem],
    ) -> JsonObject | None:
        follows = previous is not None and record.version == previous.version + 1
        rebuilt: JsonObject | None = None
        if document is not None and follows and record.patch is not None:
            try:
                rebuilt = self._apply(key, document, record)
            except CorruptStoreError:
                problems.append(
                    IntegrityProblem(
                        key, record.version, "patch", "patch does not apply to the version before"
                    )
                )
        if record.snapshot is not None:
            if rebuilt is not None and checksum(rebuilt) != checksum(record.snapshot):
                problems.append(
                    IntegrityProblem(
                        key,
                        record.version,
                        "keyframe",
                        "snapshot disagrees with the patch before it",
                    )
                )
            return copy_json(record.snapshot)
        if rebuilt is None:
            problems.append(
                IntegrityProblem(
                    key,
                    record.version,
                    "unreachable",
                    "no keyframe or patch chain leads to this version",
                )
            )
        return rebuilt

    def _apply(self, key: DocumentKey, document: JsonObject, record: VersionRecord) -> JsonObject:
        if record.patch is None:
            raise CorruptStoreError(
                f"{key}: version {record.version} has neither patch nor snapshot"
            )
        try:
            return apply_patch(document, record.patch)
        except PatchError as exc:
            raise CorruptStoreError(
                f"{key}: the patch of version {record.version} does not apply"
            ) from exc


def version_carrying(
    storage: Storage, key: DocumentKey, idempotency_key: str, above: int | None
) -> int | None:
    """Return the version of *key* above *above* whose record carries *idempotency_key*
    (an outbox entry's id), newest first, or ``None``."""
    before: int | None = None
    while True:
        page = storage.versions(key, before=before, limit=50)
        for record in page:
            if above is not None and record.version <= above:
                return None
            if record.idempotency_key == idempotency_key:
                return record.version
        if len(page) < 50:
            return None
        before = page[-1].version

"""Synchronizer: park writes in the durable outbox while storage is down, and replay them.

Replay is in order per document and exactly once across crashes: every replayed write
carries its outbox entry id as the version's idempotency key, so before writing an entry
the synchronizer looks for that key among the versions written since the entry's base;
if a crash came between the commit and the outbox's "done" marker, the entry is marked
done without writing twice. An entry the store refuses for good (validation, a base that
cannot be merged) stops its document's queue with `OutboxBlockedError`; other documents
keep replaying.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from dashpersist.errors import (
    ConfigurationError,
    ConflictError,
    DecryptionError,
    NotFoundError,
    OutboxBlockedError,
    PatchError,
    StorageUnavailableError,
    ValidationError,
)
from dashpersist.outbox import Outbox, OutboxEntry
from dashpersist.storage.protocol import DocumentKey, Storage
from dashpersist.types import JsonObject
from dashpersist.versions import version_carrying

__all__ = ["CommitEntry", "ReplayReport", "Synchronizer"]

_LOG = logging.getLogger(__name__)

CommitEntry = Callable[[OutboxEntry, "int | None", "JsonObject | None"], int]
"""Write one outbox entry to storage; return the version written.

The entry was edited on top of the given base: a stored version, and, for an entry that
followed another offline entry, that entry's document (the merge base then). The entry
is merged with whatever the store holds now."""

# Errors that will not go away by retrying: the entry blocks its document's queue.
_PERMANENT = (ValidationError, PatchError, DecryptionError, ConfigurationError, ConflictError)


@dataclass
class ReplayReport:
    """What a replay did: versions written per entry, and the entries that blocked."""

    written: dict[str, int] = field(default_factory=dict)
    already_applied: dict[str, int] = field(default_factory=dict)
    blocked: dict[str, str] = field(default_factory=dict)

    @property
    def replayed(self) -> int:
        """How many entries reached storage in this replay (written or found applied)."""
        return len(self.written) + len(self.already_applied)


class Synchronizer:
    """Own the outbox of one manager: park writes, replay them, probe in the background."""

    def __init__(
        self,
        outbox: Outbox,
        storage: Storage,
        commit: CommitEntry,
        *,
        on_replayed: Callable[[OutboxEntry, int], None] | None = None,
        on_blocked: Callable[[OutboxEntry, Exception], None] | None = None,
    ) -> None:
        self.outbox = outbox
        self._storage = storage
        self._commit = commit
        self._on_replayed = on_replayed
        self._on_blocked = on_blocked
        self._lock = threading.RLock()
        self._pending: set[DocumentKey] = set(outbox.keys())
        self._stop = threading.Event()
        self._probe: threading.Thread | None = None

    def has_pending(self, key: DocumentKey | None = None) -> bool:
        """Whether entries wait (for *key*, or for any document)."""
        with self._lock:
            return bool(self._pending) if key is None else key in self._pending

    def pending_keys(self) -> list[DocumentKey]:
        """Documents with entries waiting."""
        with self._lock:
            return sorted(self._pending)

    def newest(self, key: DocumentKey) -> OutboxEntry | None:
        """Return the newest entry waiting for *key* (what the user saw last), or ``None``;
        blocked entries, and those behind them, are waiting too."""
        if not self.has_pending(key):
            return None
        entries = self.outbox.entries(key, past_blocked=True)
        return entries[-1] if entries else None

    def park(self, entry: OutboxEntry) -> None:
        """Append *entry* to the outbox durably."""
        with self._lock:
            self.outbox.append(entry)
            self._pending.add(entry.key)

    def replay(self, key: DocumentKey, report: ReplayReport | None = None) -> ReplayReport:
        """Replay *key*'s entries in order; stop at the first one storage cannot take yet.

        Raises `StorageUnavailableError` when storage is still down (entries stay) and
        `OutboxBlockedError` when an entry is refused for good (it stays, blocked). The
        caller serializes replays of one document (the manager holds its document lock).
        """
        report = report or ReplayReport()
        self._raise_if_blocked(key)
        previous: OutboxEntry | None = None
        for entry in self.outbox.entries(key):
            applied = self._applied_version(entry)
            if applied is not None:
                report.already_applied[entry.entry_id] = applied
            else:
                if previous is None and entry.after_entry_id is not None:
                    previous = self.outbox.find(entry.after_entry_id)
                try:
                    applied = self._commit(
                        entry,
                        self._base_of(entry),
                        None if previous is None else previous.document,
                    )
                except _PERMANENT as exc:
                    # A write whose commit went through but whose answer was lost is
                    # retried, and the retry finds its own idempotency key taken: stored.
                    applied = self._applied_version(entry)
                    if applied is None:
                        self._block(entry, exc, report)
                        raise _blocked_error(entry) from exc
                report.written[entry.entry_id] = applied
            # Gone already: another process sharing the outbox replayed it too (its write
            # and ours are one version, see `commit_entry`), marked it done and compacted.
            with contextlib.suppress(NotFoundError):
                self.outbox.mark_done(entry.entry_id, version=applied)
            previous = entry
            if self._on_replayed is not None:
                self._on_replayed(entry, applied)
        if not self.outbox.blocked(key):
            with self._lock:
                self._pending.discard(key)
        return report

    def discard(self, entry_id: str) -> OutboxEntry:
        """Remove an entry for good (after exporting it); its document's queue goes on."""
        with self._lock:
            entry = self.outbox.discard(entry_id)
            if not self.outbox.entries(entry.key) and not self.outbox.blocked(entry.key):
                self._pending.discard(entry.key)
            return entry

    def start_probe(
        self, replay_all: Callable[[], object], *, interval: float, max_interval: float
    ) -> None:
        """Start a daemon thread that calls *replay_all* every *interval* seconds while
        entries wait, backing off (doubling up to *max_interval*) while storage stays down."""
        if self._probe is not None:
            return

        def probe() -> None:
            wait = interval
            while not self._stop.wait(wait):
                if not self.has_pending():
                    wait = interval
                    continue
                try:
                    replay_all()
                    wait = interval
                except StorageUnavailableError:
                    wait = min(max_interval, wait * 2)
                except Exception:  # noqa: BLE001 - the probe must outlive any one failure
                    _LOG.exception("outbox probe failed; retrying in %.1f s", max_interval)
                    wait = max_interval

        self._probe = threading.Thread(target=probe, name="dashpersist-outbox-probe", daemon=True)
        self._probe.start()

    def close(self) -> None:
        """Stop the probe thread and close the outbox; idempotent."""
        self._stop.set()
        if self._probe is not None:
            self._probe.join(timeout=5)
        self.outbox.close()

    def _raise_if_blocked(self, key: DocumentKey) -> None:
        """Raise `OutboxBlockedError` if *key*'s queue stops at a blocked entry: nothing of
        the document may be written before it, not even a new save."""
        blocked = self.outbox.blocked(key)
        if blocked:
            raise _blocked_error(blocked[0][0])

    def _block(self, entry: OutboxEntry, exc: Exception, report: ReplayReport) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        self.outbox.block(entry.entry_id, reason)
        report.blocked[entry.entry_id] = reason
        if self._on_blocked is not None:
            self._on_blocked(entry, exc)

    def _base_of(self, entry: OutboxEntry) -> int | None:
        """Return the version *entry* was edited on top of: the version its predecessor in
        the queue became (found by its idempotency key), else its own base version."""
        if entry.after_entry_id is not None:
            version = self._version_carrying(entry.key, entry.after_entry_id, entry.base_version)
            if version is not None:
                return version
        return entry.base_version

    def _applied_version(self, entry: OutboxEntry) -> int | None:
        """Return the version that already carries *entry*'s idempotency key, or ``None``."""
        return self._version_carrying(entry.key, entry.entry_id, entry.base_version)

    def _version_carrying(
        self, key: DocumentKey, idempotency_key: str, above: int | None
    ) -> int | None:
        """Return the version above *above* whose record carries *idempotency_key*."""
        return version_carrying(self._storage, key, idempotency_key, above)


def _blocked_error(entry: OutboxEntry) -> OutboxBlockedError:
    return OutboxBlockedError(
        f"outbox entry {entry.entry_id} for {entry.key} was refused by the store; the "
        "document's queue stops there until the entry is exported and discarded",
        entry_id=entry.entry_id,
    )

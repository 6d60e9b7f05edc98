"""Journal: optimistic updates, confirmed or rolled back, with the others rebased.

`PersistenceManager.apply` changes a document's in-memory *view* at once and writes it
later (through autosave, or at once). The journal remembers, per document, the last
*confirmed* state (what storage holds as far as this manager knows) and the changes not
yet confirmed, in order; the view is always the confirmed state with those changes
applied. When a write succeeds, the changes it carried are confirmed. When it fails for
good, they are rolled back: the view becomes the confirmed state with the *other*
pending changes re-applied on top (a rebase, not a snapshot restore), and a change that
no longer applies is rolled back too. Every change's callbacks fire exactly once:
``on_success`` or ``on_error`` then ``on_rollback``.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeAlias

from pydantic import BaseModel

from dashpersist.errors import DashPersistError
from dashpersist.models import SaveResult
from dashpersist.patch import apply_patch
from dashpersist.storage.protocol import DocumentKey
from dashpersist.types import JsonObject, JsonPatch

__all__ = ["Change", "Journal", "PendingChange"]

_LOG = logging.getLogger(__name__)

Change: TypeAlias = Callable[[JsonObject], JsonObject | BaseModel] | JsonPatch
"""A change to a document: a function from the old document (as plain JSON here; the
manager adapts model-level functions) to the new one, as JSON or as a model that the
journal's ``check`` turns into JSON, or an RFC 6902 patch."""


@dataclass(eq=False)
class PendingChange:
    """One optimistic change not yet confirmed by storage."""

    change_id: int
    key: DocumentKey
    change: Change
    on_success: Callable[[SaveResult], None] | None = None
    on_error: Callable[[DashPersistError], None] | None = None
    on_rollback: Callable[[], None] | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def apply_to(self, document: JsonObject) -> JsonObject | BaseModel:
        """Return *document* with this change applied (the input is not changed)."""
        if callable(self.change):
            return self.change(document)
        return apply_patch(document, self.change)


@dataclass
class _Document:
    confirmed: JsonObject | None
    pending: list[PendingChange] = field(default_factory=list)
    view: JsonObject | None = None


class Journal:
    """The confirmed state and pending changes of every document a manager changed."""

    def __init__(self, *, call: Callable[..., None] | None = None) -> None:
        """*call* runs a change's callback with its arguments (by default at once,
        logging what it raises); a manager passes one that waits until the thread holds
        no document lock, so a callback can do anything a caller can."""
        self._call = call or call_logged
        self._documents: dict[DocumentKey, _Document] = {}
        self._ids = itertools.count(1)
        self._lock = threading.RLock()

    def has_pending(self, key: DocumentKey) -> bool:
        """Whether *key* has changes not yet confirmed."""
        with self._lock:
            entry = self._documents.get(key)
            return entry is not None and bool(entry.pending)

    def pending(self, key: DocumentKey) -> list[PendingChange]:
        """Return *key*'s unconfirmed changes, oldest first."""
        with self._lock:
            entry = self._documents.get(key)
            return [] if entry is None else list(entry.pending)

    def view(self, key: DocumentKey) -> JsonObject | None:
        """Return *key*'s view (confirmed state plus pending changes), if it has one."""
        with self._lock:
            entry = self._documents.get(key)
            return None if entry is None else entry.view

    def apply(
        self,
        key: DocumentKey,
        confirmed: JsonObject | None,
        change: Change,
        *,
        check: Callable[[JsonObject | BaseModel], JsonObject],
        on_success: Callable[[SaveResult], None] | None = None,
        on_error: Callable[[DashPersistError], None] | None = None,
        on_rollback: Callable[[], None] | None = None,
    ) -> tuple[PendingChange, JsonObject]:
        """Apply *change* to *key*'s view and return the change and the new view.

        *confirmed* is the stored state, used when the journal has nothing for *key*
        yet. *check* validates the new view (raising leaves the journal as it was).
        """
        with self._lock:
            entry = self._documents.get(key)
            if entry is None:
                entry = _Document(confirmed=confirmed, view=confirmed)
            pending = PendingChange(next(self._ids), key, change, on_success, on_error, on_rollback)
            view = check(pending.apply_to(entry.view if entry.view is not None else {}))
            entry.pending.append(pending)
            entry.view = view
            self._documents[key] = entry
            return pending, view

    def confirm(
        self, key: DocumentKey, through: int, stored: JsonObject, result: SaveResult
    ) -> None:
        """Mark *key*'s changes up to id *through* as written (content *stored*, *result*)."""
        with self._lock:
            entry = self._documents.get(key)
            if entry is None:
                return
            done = [p for p in entry.pending if p.change_id <= through]
            entry.pending = [p for p in entry.pending if p.change_id > through]
            entry.confirmed = stored
            if not entry.pending:
                del self._documents[key]
        for change in done:
            self._call(change.on_success, result)

    def fail(
        self,
        key: DocumentKey,
        through: int,
        error: DashPersistError,
        *,
        check: Callable[[JsonObject | BaseModel], JsonObject],
    ) -> JsonObject | None:
        """Roll back *key*'s changes up to id *through* and rebase the later ones.

        Returns the new view. Later changes that no longer apply (or no longer pass
        *check*) are rolled back too, with the error they raised.
        """
        with self._lock:
            entry = self._documents.get(key)
            if entry is None:
                return None
            failed = [(p, error) for p in entry.pending if p.change_id <= through]
            later = [p for p in entry.pending if p.change_id > through]
            view = entry.confirmed
            kept: list[PendingChange] = []
            for change in later:
                try:
                    view = check(change.apply_to(view if view is not None else {}))
                except DashPersistError as exc:
                    failed.append((change, exc))
                    continue
                kept.append(change)
            entry.pending = kept
            entry.view = view
            if not kept:
                del self._documents[key]
        for change, cause in failed:
            self._call(change.on_error, cause)
            self._call(change.on_rollback)
        return view

    def carry(self, key: DocumentKey, view: JsonObject) -> int | None:
        """Make *view* (a save that supersedes *key*'s pending changes, taken to hold
        them) the view; return the id of the newest pending change, which the save's
        write settles, or ``None`` when none is pending."""
        with self._lock:
            entry = self._documents.get(key)
            if entry is None or not entry.pending:
                return None
            entry.view = view
            return entry.pending[-1].change_id

    def abandon(self, key: DocumentKey, error: DashPersistError) -> None:
        """Roll back every pending change of *key*, whose document is gone: each one's
        ``on_error`` (with *error*) then ``on_rollback`` fire."""
        with self._lock:
            entry = self._documents.pop(key, None)
        for change in [] if entry is None else entry.pending:
            self._call(change.on_error, error)
            self._call(change.on_rollback)


def call_logged(callback: Callable[..., None] | None, *args: object) -> None:
    """Call *callback* (if any) with *args*; log what it raises, never raise it."""
    if callback is None:
        return
    try:
        callback(*args)
    except Exception:  # noqa: BLE001 - a host callback must not break the journal
        _LOG.exception("a journal callback raised")

"""PersistenceManager: the facade host code talks to; it wires components that hold the rules."""

from __future__ import annotations

import atexit
import collections
import contextlib
import functools
import hashlib
import itertools
import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Generic, Self, TypeAlias, TypeVar, cast

import platformdirs
import pydantic
from typing_extensions import TypeVar as TypeVarWithDefault

from dashpersist._canonical import checksum
from dashpersist.activity import (
    ActivityAction,
    ActivityEntry,
    ActivityLog,
    ActivityPage,
    ActivityRecorder,
    activity_log_for,
)
from dashpersist.autosave import AutosaveQueue
from dashpersist.cache import ReadCache, invalidate_everywhere, register_cache
from dashpersist.changes import LayoutDiff, describe_changes
from dashpersist.codec import DocumentCodec
from dashpersist.committer import CachedDocument, Committer, LostRace, PendingSave
from dashpersist.config import PersistenceConfig
from dashpersist.encryption import FieldEncryptor, KeyRing
from dashpersist.errors import (
    ConfigurationError,
    ConflictError,
    DashPersistError,
    ManagerClosedError,
    NotFoundError,
    OutboxBlockedError,
    StorageUnavailableError,
    ValidationError,
    ValidationIssue,
)
from dashpersist.events import ChangeEvent, EventBus, EventKind, Subscriber, Unsubscribe
from dashpersist.housekeeping import Housekeeper
from dashpersist.journal import Change, Journal, PendingChange, call_logged
from dashpersist.merge import ConflictResolver
from dashpersist.migrations import SchemaMigrator, Upcast, schema_version_of
from dashpersist.models import Layout, SaveResult, SyncResult, Versioned, VersionInfo
from dashpersist.notify import ChangeListener, RemoteChange, change_listener_for
from dashpersist.outbox import Outbox, OutboxEntry
from dashpersist.patch import make_patch
from dashpersist.rotation import RotationProgress, RotationReport, rotate_store
from dashpersist.storage.protocol import DocumentKey, Storage
from dashpersist.storage.urls import ReconnectingStorage
from dashpersist.sync import ReplayReport, Synchronizer
from dashpersist.types import ChangeType, JsonObject, JsonPatch
from dashpersist.validation import ValidationReport, Validator, raise_validation_error
from dashpersist.versions import IntegrityReport, VersionService
from dashpersist.widget_cache import WidgetDataCache, widget_cache_for

__all__ = ["PersistenceManager", "default_store_url"]

DocT = TypeVarWithDefault("DocT", bound=pydantic.BaseModel, default=Layout)
T = TypeVar("T")
_LOG = logging.getLogger(__name__)

_Slot: TypeAlias = tuple[DocumentKey, str | None]
"""An autosave slot: a document and the client (``None``: this manager's own caller)."""

WRITTEN_KEPT_SECONDS: Final = 60.0
"""How long the number of a client's last write is kept once nothing of that client's is
queued or being written: far longer than the moments an older save of the client can
still be on its way outside the queue (numbered but not yet queued; taken out of the
queue by `sync` but not yet written), which take microseconds."""
WRITTEN_SWEEP_FROM: Final = 1024
"""How many clients' last writes are kept before the first sweep of the old ones."""
RECENT_LOCKS: Final = 256
"""How many of the document locks made last are kept while nobody holds them."""


class _DocumentLock:
    """A document's lock (reentrant). Journal callbacks a thread triggers while it holds
    any document lock wait until it holds none, then run on it: a callback may then do
    what any caller does (flush, save another client's document) without waiting, in a
    lock it holds, for a thread that waits for that lock."""

    __slots__ = ("__weakref__", "_lock", "_state")

    def __init__(self, state: threading.local) -> None:
        self._lock = threading.RLock()
        self._state = state

    def __enter__(self) -> Self:
        self._lock.acquire()
        self._state.depth = getattr(self._state, "depth", 0) + 1
        return self

    def __exit__(self, *_: object) -> None:
        state = self._state
        state.depth -= 1
        self._lock.release()
        deferred: list[tuple[Callable[..., None] | None, tuple[object, ...]]] | None = getattr(
            state, "deferred", None
        )
        if state.depth == 0 and deferred:
            # Callbacks that lock a document again queue theirs afresh and run them there.
            state.deferred = []
            for callback, args in deferred:
                call_logged(callback, *args)


def _always(queued: PendingSave) -> bool:
    return True


def _carries_changes(queued: PendingSave) -> bool:
    return queued.journal_through is not None


def default_store_url() -> str:
    """Return the URL of the embedded default store.

    A SQLite file ``dashpersist.db`` in the platform's user data folder (on Linux
    ``$XDG_DATA_HOME/dashpersist``, by default ``~/.local/share/dashpersist``).
    """
    folder = Path(platformdirs.user_data_dir("dashpersist", appauthor=False))
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'dashpersist.db'}"


_LIVE_MANAGERS: weakref.WeakSet[PersistenceManager[Any]] = weakref.WeakSet()


@atexit.register
def _close_live_managers() -> None:
    # Queued autosaves are written at interpreter exit, on this thread: no new threads
    # or executors, which would fail this late.
    for manager in list(_LIVE_MANAGERS):
        try:
            manager.close()
        except Exception:  # noqa: BLE001 - one manager failing must not stop the others
            _LOG.exception("could not write queued saves at exit")


def _outbox_folder(
    config: PersistenceConfig, store: str | Storage | None, storage: Storage
) -> Path | None:
    """Return the outbox folder of a store: configured, or one per store identity."""
    if config.outbox_dir is not None:
        return config.outbox_dir
    identity = store if isinstance(store, str) else _identity(storage)
    if store is None:
        identity = default_store_url()
    if identity is None:
        return None
    digest = hashlib.sha256(identity.encode()).hexdigest()[:24]
    return Path(platformdirs.user_data_dir("dashpersist", appauthor=False)) / "outbox" / digest


def _identity(storage: Storage) -> str | None:
    """Return a stable name of a storage object's data, or ``None`` if it has none."""
    engine = getattr(storage, "engine", None)
    if engine is not None:
        return str(engine.url.render_as_string(hide_password=True))
    root = getattr(storage, "root", None)
    if isinstance(root, Path):
        return f"jsonfile://{root.resolve()}"
    return None


class PersistenceManager(Generic[DocT]):
    """Save, load and version one kind of document for many users, without losing a change.

    *store* is a URL (see `open_storage`), a `Storage`, or ``None`` for the embedded
    default store (`default_store_url`). Every method is thread-safe. Writes to one
    document are serialized inside this process and compare-and-swapped against the
    store, so several processes and machines can share one store.
    """

    def __init__(
        self,
        store: str | Storage | None = None,
        *,
        config: PersistenceConfig | None = None,
        device_id: str | None = None,
        schema: type[DocT] = Layout,  # type: ignore[assignment]
        keyring: KeyRing | None = None,
        clock: Callable[[], datetime] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        timer: Callable[[], float] = time.monotonic,
        start_threads: bool = True,
    ) -> None:
        self._owns_storage = store is None or isinstance(store, str)
        # A store named by URL may be down when the app starts: it is opened (and its
        # schema brought up to date) on first contact, and saves go to the outbox until then.
        self._storage: Storage = (
            ReconnectingStorage(store or default_store_url())
            if store is None or isinstance(store, str)
            else store
        )
        self._config = config or PersistenceConfig()
        self._device_id = device_id
        self._schema = schema
        self._clock = clock or (lambda: datetime.now(UTC))
        self._sleep = sleep
        self._versions = VersionService(
            self._storage, keyframe_interval=self._config.keyframe_interval, clock=self._clock
        )
        self._keyring = keyring
        validator: Validator[DocT] = Validator(
            self._config.limits,
            schema=schema,
            allow_unknown_widget_types=self._config.allow_unknown_widget_types,
            raw_fields=self._config.encrypted_fields,
        )
        self._resolver = ConflictResolver.for_model(schema, prefer=self._config.merge_prefer)
        self._codec = DocumentCodec(schema, validator, SchemaMigrator(schema_version_of(schema)))
        self._codec.encryptor = self._make_encryptor()
        self._cache: ReadCache[CachedDocument[DocT]] = ReadCache(
            maxsize=self._config.cache_size, ttl=self._config.cache_ttl
        )
        register_cache(self._storage, self._cache)
        self._housekeeper = Housekeeper(start_thread=start_threads)
        self._committer: Committer[DocT] = Committer(
            self._storage,
            self._versions,
            self._codec,
            self._resolver,
            self._cache,
            config=lambda: self._config,
            device_id=device_id,
            clock=self._clock,
            sleep=sleep,
            housekeeping=self._housekeeper.submit,
            document_lock=self._lock_for,
        )
        self._bases = self._committer.bases
        # Weak values: a document's lock lives while a caller holds it, not for good; the
        # latest ones made are kept too, so that a busy document's is not made every call.
        self._key_locks: weakref.WeakValueDictionary[DocumentKey, _DocumentLock] = (
            weakref.WeakValueDictionary()
        )
        self._recent_locks: collections.deque[_DocumentLock] = collections.deque(
            maxlen=RECENT_LOCKS
        )
        self._lock_state = threading.local()  # per thread: document locks held, callbacks
        self._locks_guard = threading.Lock()
        self._closed = False
        self._events = EventBus()
        self._journal = Journal(call=self._call_outside_locks)
        self._view_models: dict[DocumentKey, tuple[JsonObject, DocT]] = {}
        # Per document with optimistic changes made on top of a queued save of the
        # caller's own: that save, which their write replaced in the queue.
        self._unwritten_bases: dict[DocumentKey, PendingSave] = {}
        self._sequence = itertools.count()
        # Per client slot, the number of its newest save written, when (timer time), and
        # the version it became.
        self._written: dict[_Slot, tuple[int, float, int | None]] = {}
        self._written_guard = threading.Lock()
        self._written_sweep_at = WRITTEN_SWEEP_FROM
        self._writing: dict[_Slot, int] = {}  # queued saves being written, per slot
        self._retiring: list[AutosaveQueue[_Slot, PendingSave, SaveResult]] = []
        self._start_threads = start_threads
        self._timer = timer
        self._autosave = self._new_autosave()
        self._outbox_folder = _outbox_folder(self._config, store, self._storage)
        self._sync: Synchronizer | None = None
        if self._outbox_folder is not None and self._outbox_folder.exists():
            # Writes parked by an earlier run: load them, so reads see them and they replay.
            self._sync = self._new_synchronizer(self._outbox_folder)
        self._activity: ActivityLog | None = None
        self._widget_cache: WidgetDataCache | None = None
        self._listener: ChangeListener | None = None
        self._listening = False
        self._listen()
        _LIVE_MANAGERS.add(self)

    # -- configuration -------------------------------------------------------------------

    @property
    def config(self) -> PersistenceConfig:
        """The settings in force."""
        return self._config

    @property
    def storage(self) -> Storage:
        """The backend this manager writes to."""
        return self._storage

    @property
    def device_id(self) -> str | None:
        """The device id recorded with every version this manager writes."""
        return self._device_id

    def update_config(self, **changes: object) -> PersistenceConfig:
        """Change settings (names as in `PersistenceConfig`); return the new config.

        Raises `ValidationError` for an unknown name or a bad value; nothing changes then.
        """
        try:
            updated = PersistenceConfig.model_validate({**self._config.model_dump(), **changes})
        except pydantic.ValidationError as exc:
            raise_validation_error(exc)
        previous, self._config = self._config, updated
        try:
            self._codec.encryptor = self._make_encryptor()
        except ConfigurationError:
            self._config = previous
            raise
        self._codec.validator.limits = updated.limits
        self._codec.validator.allow_unknown_widget_types = updated.allow_unknown_widget_types
        self._resolver.prefer = updated.merge_prefer
        self._versions.keyframe_interval = updated.keyframe_interval
        if (updated.auto_save_delay, updated.auto_save_max_wait) != (
            previous.auto_save_delay,
            previous.auto_save_max_wait,
        ):
            # New timings: the old queue writes what it holds, a new one takes over.
            old = self._autosave
            self._retiring.append(old)  # what it holds counts in `_sweep_written`
            self._autosave = self._new_autosave()
            try:
                old.close()
            finally:
                self._retiring.remove(old)
                # What the old queue could not write (close raises why) is not dropped:
                # it waits in the new one, unless a newer save of its client does.
                for slot in old.pending_keys():
                    left = old.pending(slot)
                    if left is not None:
                        self._autosave.put(slot, left, unless=_always)
        self._cache.clear()
        return updated

    # -- documents -----------------------------------------------------------------------

    def save_layout(
        self,
        user_id: str,
        layout: DocT | JsonObject,
        *,
        layout_id: str = "default",
        immediate: bool = False,
        description: str | None = None,
        change_type: ChangeType = "manual",
        label: str | None = None,
        base_version: int | None = None,
        client_id: str | None = None,
    ) -> SaveResult:
        """Validate *layout* and commit it as the next version of the user's document.

        *base_version* is the version the edit started from; by default, the version this
        manager last loaded or saved for the document. Servers that share one manager
        among many clients pass the version each client loaded (see `load_versioned`)
        and a *client_id* per client (a browser tab, a session): autosave coalesces a
        client's own edits, never one client's edit with another's.

        The write is a compare-and-swap from the version this manager last loaded or
        saved for the document (its base). When another writer moved the document on
        since the base, the save is merged three-way (base, this save, the stored
        version) and written as a ``conflict_resolution`` version, with the merge report
        on ``SaveResult.merge``; with ``enable_conflict_resolution=False``, or when the
        base is no longer in history, it raises `ConflictError` instead. A save equal to
        the stored document writes nothing and returns ``source="unchanged"``. Raises
        `ValidationError` at once, before anything is queued or written.

        With ``auto_save`` on and ``immediate=False`` the save is queued and returns at
        once with ``source="queued"``: it is written ``auto_save_delay`` seconds after the
        document's last edit (never later than ``auto_save_max_wait`` after its first
        unwritten one), and `flush`, `close` or interpreter exit write it at once. A queued
        edit may be lost to SIGKILL (or default SIGTERM) within that window; an
        ``immediate=True`` save, and everything `flush` or `close` returned for, is
        durable. When storage stays unreachable through the bounded retries, the save is
        parked in the durable outbox and returns ``source="outbox"``; it is replayed, in
        order and exactly once, by `sync`, the next successful write, or the background
        probe. Other storage errors raise `StorageError` subclasses.
        """
        self._check_open()
        key = _key(user_id, layout_id)
        plain = self._codec.validate(layout)
        queued = not immediate and self._config.auto_save
        slot = (key, client_id)
        if queued and base_version is None:
            base_version = self._base_now(slot)
        pending = PendingSave(
            plain,
            change_type,
            description,
            label,
            next(self._sequence),
            base_version=base_version,
            client_id=client_id,
            queued=queued,
        )
        if client_id is None and (queued or self._journal.has_pending(key)):
            # The caller's own save: it must not replace the write of `apply` changes
            # without settling them (see `_save_over_changes`), so only a slot not holding
            # one is filled without the document lock. (An immediate save with no change
            # waiting goes straight on: one applied meanwhile is written after it.)
            if queued and self._autosave.put(slot, pending, unless=_carries_changes):
                self._emit("queued", key, None)
                return SaveResult(success=True, version=None, source="queued")
            with self._lock_for(key):
                if self._journal.has_pending(key):
                    return self._save_over_changes(key, pending)
                return self._save(key, pending)
        return self._save(key, pending)

    def _save(self, key: DocumentKey, pending: PendingSave) -> SaveResult:
        """Queue *pending*, or write it now (see `save_layout`)."""
        client_id = pending.client_id
        if pending.queued:
            self._autosave.put((key, client_id), pending)
            self._emit("queued", key, None)
            return SaveResult(success=True, version=None, source="queued")
        result = self._store(key, pending)
        # Newer than anything this client queued for the document: once written, it
        # supersedes that (a queued save already being written is skipped as older, see
        # `_note_written`). Until then the queued save stays: a failed immediate save
        # must not take an acknowledged one down with it. Other clients' queued saves
        # stay queued and merge when they are written.
        self._discard_older((key, client_id), pending.sequence)
        return result

    def _base_now(self, slot: _Slot) -> int | None:
        """The version an edit of *slot*'s client queued now builds on: that of its own
        queued save, else the version this manager last loaded or saved. Taken when the
        edit is queued, not when it is written, so that another client's write in between
        is merged with, not written over (`_store` moves it on past the client's own
        writes). ``None`` (decided when written) while saves of the document wait in the
        outbox: the edit builds on those, whose versions are not known yet."""
        key = slot[0]
        if self._parked(key) is not None:
            return None
        queued = self._autosave.pending(slot)
        return queued.base_version if queued is not None else self._bases.get(key)

    def _save_over_changes(self, key: DocumentKey, pending: PendingSave) -> SaveResult:
        """Save *pending* while optimistic changes (`apply`) of the document wait. The save
        supersedes them: it is taken to hold them, as a save built from the view returned
        by `apply` does, and they are settled by its write (``on_success``).

        A queued save carries them: should its write fail, they roll back, and the save
        waits again on its own. An immediate save is written first, and settles them
        once it is: one that fails leaves them as they were. Call with the document lock
        held."""
        # Numbered under the lock: newer than every apply's write, which it supersedes.
        pending = replace(pending, sequence=next(self._sequence))
        self._unwritten_bases.pop(key, None)  # this newer save supersedes it
        if pending.queued:
            through = self._journal.carry(key, pending.plain)
            self._view_models.pop(key, None)
            if through is None:
                return self._save(key, pending)
            self._unwritten_bases[key] = pending  # what waits again if the carrying write fails
            return self._save(key, replace(pending, journal_through=through))
        changes = self._journal.pending(key)
        result = self._save(key, pending)  # raises, and changes nothing, when it fails
        if changes:
            self._journal.confirm(key, changes[-1].change_id, pending.plain, result)
        self._forget_view_if_settled(key)
        return result

    def load_layout(self, user_id: str, *, layout_id: str = "default") -> DocT | None:
        """Return the user's current document, or ``None`` if there is none.

        Loading makes its version this manager's base for the next save of the document.
        A save of this manager not yet in storage (queued for autosave, or waiting in the
        outbox) is what it returns: callers read their own writes.
        Frozen document models (like `Layout`) are shared between callers, since nobody
        can change them; other models are built afresh for every call.
        """
        loaded = self.load_versioned(user_id, layout_id=layout_id)
        return None if loaded is None else loaded.document

    def load_versioned(
        self, user_id: str, *, layout_id: str = "default", client_id: str | None = None
    ) -> Versioned[DocT] | None:
        """Return the user's current document with the version it is, or builds on.

        For a server that many clients share, hand ``version`` to the client and take it
        back as ``save_layout(..., base_version=...)``: a stale client's save then merges
        from the version that client really saw. ``is_pending`` says the document holds
        saves of this manager not yet in storage (``version`` is then their base);
        *client_id* picks whose queued save that is (see `save_layout`).
        """
        self._check_open()
        key = _key(user_id, layout_id)
        queued = self._autosave.pending((key, client_id))
        if queued is not None:
            base = queued.base_version or self._bases.get(key)
            return Versioned(self._codec.to_model(queued.plain), base, is_pending=True)
        parked = self._parked(key)
        if parked is not None:
            model = self._codec.decode(key, parked.document, self._codec.migrator.current_version)
            return Versioned(model, parked.base_version, is_pending=True)
        entry = self._cache.get(key)
        if entry is not None and entry.model is not None and self._codec.shares_models:
            self._bases[key] = entry.stored.version
            return Versioned(entry.model, entry.stored.version)
        current = entry.stored if entry is not None else self._committer.read(key)
        if current is None:
            return None
        model = self._codec.decode(key, current.document, current.schema_version)
        self._cache.put(key, CachedDocument(current, model))
        self._bases[key] = current.version
        return Versioned(model, current.version)

    def list_layouts(self, user_id: str) -> list[str]:
        """Return the ids of the user's documents, sorted."""
        self._check_open()
        _key(user_id, "default")
        return self._retry(lambda: self._storage.layout_ids(user_id))

    def delete_layout(self, user_id: str, *, layout_id: str = "default") -> None:
        """Delete the user's document and its history; raise `NotFoundError` if absent.

        What this manager still holds for the document goes with it once it is deleted:
        queued saves, its outbox entries, and optimistic changes (rolled back: their
        ``on_error``, with a `NotFoundError`, and ``on_rollback`` fire). A delete that
        fails drops nothing.
        """
        self._check_open()
        key = _key(user_id, layout_id)
        with self._lock_for(key):
            try:
                self._retry(lambda: self._storage.delete(key))
            finally:
                invalidate_everywhere(self._storage, key)
            # Deleted: what this manager still holds for the document would bring it
            # back, so it goes with it (and stays if the delete failed): queued saves,
            # saves already taken by the autosave writer (marked older than the delete,
            # so `_note_written` skips them), outbox entries, and optimistic changes.
            deletion = next(self._sequence)
            busy = self._slots_of(key)
            for slot in busy:
                self._discard_older(slot, deletion)
            self._note_deleted(key, deletion, busy)
            self._discard_parked(key)
            self._journal.abandon(key, NotFoundError(f"{key} was deleted"))
            self._forget_view_if_settled(key)
            self._committer.forget(key)
        self._emit("deleted", key, None)
        self._record("deleted", key, None, None)

    def clone_layout(
        self,
        user_id: str,
        source_layout_id: str,
        target_layout_id: str,
        *,
        description: str | None = None,
    ) -> SaveResult:
        """Copy the user's document *source_layout_id* to a new *target_layout_id*.

        Raises `NotFoundError` if the source does not exist and `ConflictError` if the
        target already does.
        """
        self._check_open()
        source = self.load_layout(user_id, layout_id=source_layout_id)
        if source is None:
            raise NotFoundError(f"{_key(user_id, source_layout_id)} does not exist")
        target = _key(user_id, target_layout_id)
        with self._lock_for(target):
            current = self._committer.read(target)
            if current is not None:
                raise ConflictError(target, expected_version=None, actual_version=current.version)
            if self._queued_slots(target) or self._parked(target) is not None:
                # The target exists for this manager's callers: saves of it are queued or
                # wait in the outbox. Cloning over it would drop them.
                raise ConflictError(
                    target,
                    expected_version=None,
                    actual_version=None,
                    message=f"{target} has saves waiting to be written (queued or in the "
                    "outbox); it exists for their callers, so it is not cloned over",
                )
            self._bases.pop(target, None)
        return self.save_layout(
            user_id,
            source,
            layout_id=target_layout_id,
            immediate=True,
            description=description or f"Cloned from {source_layout_id!r}",
        )

    # -- optimistic updates --------------------------------------------------------------

    def apply(
        self,
        user_id: str,
        change: Callable[[DocT], DocT | JsonObject] | JsonPatch,
        *,
        layout_id: str = "default",
        immediate: bool = False,
        on_success: Callable[[SaveResult], None] | None = None,
        on_error: Callable[[DashPersistError], None] | None = None,
        on_rollback: Callable[[], None] | None = None,
    ) -> DocT:
        """Change the user's document optimistically: return the new view at once, write later.

        *change* is a function from the current document to the new one, or an RFC 6902
        patch. The result must validate (else `ValidationError`, nothing changes). The
        write goes through autosave, or happens now with ``immediate=True``. When it
        succeeds (in storage or in the outbox) ``on_success`` fires with its
        `SaveResult`; when it fails for good (an unresolvable conflict, storage down with
        no outbox), the change is rolled back: the view becomes the confirmed state with
        the other pending changes re-applied, and ``on_error`` then ``on_rollback`` fire.
        Each callback fires at most once per change. An immediate apply that fails
        raises after rolling back.
        """
        self._check_open()
        key = _key(user_id, layout_id)
        produced: list[DocT] = []
        journal_change: Change
        if callable(change):
            model_change = change

            def journal_change(document: JsonObject) -> JsonObject | pydantic.BaseModel:
                # The model of the current view is kept, so a run of applies does not
                # rebuild it from JSON each time (rebases after a failure do).
                known = self._view_models.get(key)
                model = (
                    known[1] if known and known[0] is document else self._codec.to_model(document)
                )
                changed = model_change(model)
                if isinstance(changed, self._schema):
                    # Validated as a model: its unchanged widgets are known by identity.
                    produced.append(changed)
                    return changed
                if isinstance(changed, pydantic.BaseModel):
                    return cast(JsonObject, changed.model_dump(mode="json"))
                return changed  # validation copies it: the host may keep changing its dict

        else:
            journal_change = change
        with self._lock_for(key):
            confirmed = None
            if not self._journal.has_pending(key):
                queued = self._autosave.pending((key, None))
                if queued is not None:  # what the changes start from is not written yet
                    self._unwritten_bases[key] = queued
                loaded = self.load_versioned(user_id, layout_id=layout_id)
                confirmed = None if loaded is None else loaded.document.model_dump(mode="json")
                if loaded is not None and confirmed is not None:
                    self._view_models[key] = (confirmed, loaded.document)
            try:
                applied, view = self._journal.apply(
                    key,
                    confirmed,
                    journal_change,
                    check=self._codec.validate,
                    on_success=on_success,
                    on_error=on_error,
                    on_rollback=on_rollback,
                )
            except BaseException:
                self._forget_view_if_settled(key)  # a refused first change leaves nothing
                raise
            unwritten = self._unwritten_bases.get(key)
            pending = PendingSave(
                view,
                "manual",
                None,
                None,
                next(self._sequence),
                # What the view builds on, taken now (see `_base_now`).
                base_version=(
                    self._base_now((key, None)) if unwritten is None else unwritten.base_version
                ),
                queued=not immediate,
                journal_through=applied.change_id,
            )
            if immediate:
                self._autosave.discard((key, None))
            else:
                self._autosave.put((key, None), pending)
                self._emit("queued", key, None)
            model = produced[-1] if produced else self._codec.to_model(view)
            self._view_models[key] = (view, model)
        if immediate:
            self._store(key, pending)
        return model

    def pending(self, user_id: str, *, layout_id: str = "default") -> list[PendingChange]:
        """Return the user's optimistic changes not yet confirmed by storage, oldest first."""
        self._check_open()
        return self._journal.pending(_key(user_id, layout_id))

    # -- history -------------------------------------------------------------------------

    def get_version_history(
        self,
        user_id: str,
        *,
        layout_id: str = "default",
        limit: int = 20,
        before: int | None = None,
    ) -> list[VersionInfo]:
        """Return up to *limit* versions of the document, newest first, below *before*."""
        self._check_open()
        key = _key(user_id, layout_id)
        self._housekeeper.wait(key)  # this manager's own trims are seen
        records = self._retry(lambda: self._storage.versions(key, before=before, limit=limit))
        return [
            VersionInfo(
                version=r.version,
                created_at=r.created_at,
                change_type=r.change_type,
                checksum=r.checksum,
                description=r.description,
                device_id=r.device_id,
                label=r.label,
            )
            for r in records
        ]

    def get_version(self, user_id: str, version: int, *, layout_id: str = "default") -> DocT:
        """Return the document as it was at *version*, upgraded to the current schema.

        Raises `NotFoundError` when the document has no such version (or is another
        user's) and `CorruptStoreError` when the rebuilt version fails its checksum.
        """
        self._check_open()
        key = _key(user_id, layout_id)
        self._housekeeper.wait(key)
        document, record = self._retry(lambda: self._versions.get_document(key, version))
        return self._codec.decode(key, document, record.schema_version)

    def compare_versions(
        self, user_id: str, version_a: int, version_b: int, *, layout_id: str = "default"
    ) -> LayoutDiff:
        """Return what changed from *version_a* to *version_b*: an RFC 6902 patch and the
        changes a person would name (widgets added, moved, retitled; settings changed ...)."""
        self._check_open()
        key = _key(user_id, layout_id)
        before = self._upgraded_version(key, version_a)
        after = self._upgraded_version(key, version_b)
        return LayoutDiff(
            from_version=version_a,
            to_version=version_b,
            patch=make_patch(before, after),
            changes=describe_changes(before, after),
        )

    def rollback_to_version(
        self, user_id: str, version: int, *, layout_id: str = "default"
    ) -> DocT:
        """Make *version*'s content the newest version again and return it.

        History is never rewritten: the rollback is a new version of change type
        ``rollback`` ("Rollback to version N"). It is compare-and-swapped against the
        version read here, so a rollback racing another writer raises `ConflictError`.
        Like an ``immediate=True`` save, it supersedes the saves this manager's caller
        queued for the document before it, and the optimistic changes (`apply`) not yet
        written roll back (``on_error`` with a `ConflictError`, then ``on_rollback``).
        """
        self._check_open()
        key = _key(user_id, layout_id)
        model = self._codec.to_model(self._upgraded_version(key, version))
        with self._lock_for(key):
            self._cache.invalidate(key)
            current = self._committer.read(key)
            document = self._codec.encode(
                key, model, previous=None if current is None else current.document
            )
            try:
                written = self._committer.commit(
                    key,
                    current,
                    document,
                    checksum(document),
                    change_type="rollback",
                    description=f"Rollback to version {version}",
                    label=None,
                )
            except LostRace as lost:
                raise lost.conflict from None
            # Like an immediate save of the caller's own, the rollback supersedes what
            # the caller queued before it (a write of that already under way is skipped
            # as older), and the optimistic changes it made before it roll back.
            superseding = next(self._sequence)
            self._discard_older((key, None), superseding)
            self._note_written((key, None), superseding)
            self._journal.abandon(
                key,
                ConflictError(
                    key,
                    expected_version=None,
                    actual_version=written,
                    message=f"{key} was rolled back to version {version} before this "
                    "change was written",
                ),
            )
            self._forget_view_if_settled(key)
        self._emit("rolled_back", key, self._bases.get(key))
        self._record("rolled_back", key, self._bases.get(key), f"Rollback to version {version}")
        return model

    def cleanup_old_versions(self, user_id: str, *, keep: int, layout_id: str = "default") -> int:
        """Delete all but the newest *keep* versions (labelled ones stay); return how many."""
        self._check_open()
        if keep < 1:
            raise ValidationError([ValidationIssue("keep", "greater_than_equal", "must be >= 1")])
        key = _key(user_id, layout_id)
        self._housekeeper.wait(key)
        with self._lock_for(key):
            return len(self._retry(lambda: self._versions.apply_retention(key, keep=keep)))

    def verify(self, user_id: str, *, layout_id: str = "default") -> IntegrityReport:
        """Recompute the checksums and the hash chain of the document and its history."""
        self._check_open()
        key = _key(user_id, layout_id)
        self._housekeeper.wait(key)
        return self._retry(lambda: self._versions.verify(key))

    def verify_store(self) -> IntegrityReport:
        """Verify every document of every user in the store (see `verify`)."""
        self._check_open()
        self._housekeeper.wait()
        reports: list[IntegrityReport] = []
        for user_id in self._retry(self._storage.user_ids):
            for layout_id in self._retry(functools.partial(self._storage.layout_ids, user_id)):
                key = DocumentKey(user_id, layout_id)
                reports.append(self._retry(functools.partial(self._versions.verify, key)))
        return IntegrityReport(
            documents_checked=sum(r.documents_checked for r in reports),
            versions_checked=sum(r.versions_checked for r in reports),
            problems=[problem for report in reports for problem in report.problems],
        )

    def register_migration(self, from_version: int, upcast: Upcast) -> None:
        """Register how to upgrade a document of schema *from_version* to *from_version* + 1.

        Every read (current document, old versions, rollbacks and diffs) then returns
        documents upgraded to the schema version the document model declares.
        """
        self._codec.migrator.register(from_version, upcast)
        self._cache.clear()

    # -- validation ----------------------------------------------------------------------

    def validate(self, layout: DocT | JsonObject) -> ValidationReport:
        """Return what validating *layout* finds (errors and warnings), without raising."""
        return self._codec.report(layout)

    def sanitize(self, layout: DocT | JsonObject) -> DocT:
        """Return a cleaned, valid copy of untrusted *layout*.

        Markup and event handlers are stripped from text, positions clamped into the grid,
        sizes fixed, duplicate widget ids dropped (the first kept), over-long strings
        truncated and overlaps repaired. `validate` of the result lists nothing; the fixes
        made are in `sanitize_with_fixes`.
        """
        return self._codec.validator.sanitize(layout)[0]

    def sanitize_with_fixes(self, layout: DocT | JsonObject) -> tuple[DocT, list[ValidationIssue]]:
        """Return a cleaned copy of *layout* and the fixes made, each with its JSON path."""
        return self._codec.validator.sanitize(layout)

    def register_widget_type(
        self, type_name: str, settings_model: type[pydantic.BaseModel]
    ) -> None:
        """Validate the settings of widgets of *type_name* with *settings_model* from now on.

        Fields the model marks `dashpersist.encryption.Encrypted` are encrypted from now on
        (when ``enable_encryption`` is on).
        """
        self._codec.validator.register_widget_type(type_name, settings_model)
        self._codec.encryptor = self._make_encryptor()

    # -- lifecycle -----------------------------------------------------------------------

    def flush(self) -> list[SaveResult]:
        """Write every queued save now, on this thread; return their results.

        When it returns, every save queued before the call is in storage or in the
        durable outbox. If a write fails, every other queued save is still attempted, the
        failed one stays queued, and the first error is raised. History trims the
        written saves asked for are done too.
        """
        self._check_open()
        try:
            return self._autosave.flush()
        finally:
            self._housekeeper.wait()

    def close(self) -> None:
        """Flush, stop background work, and release the store if this manager opened it.

        Idempotent. If the flush raises, the manager stays open so that nothing queued is
        dropped: fix the cause and call `close` again.
        """
        if self._closed:
            return
        self._autosave.close()
        self._closed = True
        self._housekeeper.close()  # trims run before the store closes
        if self._sync is not None:
            self._sync.close()
        if self._listener is not None:
            self._listener.close()
        if self._widget_cache is not None:
            self._widget_cache.close()
        if self._activity is not None:
            ActivityRecorder.shared().flush()  # before the store it writes to closes
        self._cache.clear()
        _LIVE_MANAGERS.discard(self)
        if self._owns_storage:
            self._storage.close()

    def tick(self) -> list[SaveResult]:
        """Write the queued saves that are due, for hosts that run without background threads
        (``start_threads=False``) and drive time themselves; return their results."""
        self._check_open()
        return self._autosave.run_due()

    @property
    def has_pending_writes(self) -> bool:
        """Whether saves are queued for autosave or waiting in the outbox."""
        return self._autosave.has_pending_writes or (
            self._sync is not None and self._sync.has_pending()
        )

    # -- sync and the outbox -------------------------------------------------------------

    def sync(self, user_id: str, *, layout_id: str = "default") -> SyncResult:
        """Bring one document up to date with the store, in both directions.

        Replays this manager's outbox entries for it (in order, exactly once), writes its
        queued autosave, then pulls the stored version (merging where needed) and makes
        it the base of the next save. Raises `StorageUnavailableError` while the store is
        unreachable (nothing is lost: entries stay) and `OutboxBlockedError` when the
        store refuses an entry for good.
        """
        self._check_open()
        key = _key(user_id, layout_id)
        before = self._bases.get(key)
        with self._lock_for(key):
            report = self._replay(key)
            saved = None
            for slot in self._queued_slots(key):
                queued = self._autosave.discard(slot)
                if queued is not None:
                    try:
                        saved = self._write_queued(slot, queued)
                    except BaseException:
                        # Not written: it waits again (behind any newer save of its
                        # client), as a failed autosave write does.
                        self._autosave.put(slot, queued, unless=_always)
                        raise
            if saved is not None and saved.source == "outbox":
                raise StorageUnavailableError(
                    f"{key}: the store is unreachable; kept in the outbox"
                )
            self._cache.invalidate(key)
            current = self._committer.read(key)
            version = None if current is None else current.version
            if version is not None:
                self._bases[key] = version
        self._listen()
        return SyncResult(
            version=version,
            replayed=report.replayed,
            pushed=saved,
            changed=version != before,
        )

    def outbox_entries(self) -> list[OutboxEntry]:
        """Return the writes waiting in the outbox, oldest first per document: blocked
        ones (see `blocked_outbox_entries` for why) and those behind them included."""
        self._check_open()
        return [] if self._sync is None else self._sync.outbox.entries(past_blocked=True)

    def blocked_outbox_entries(self) -> list[tuple[OutboxEntry, str]]:
        """Return the outbox entries the store refused for good, with the reason."""
        self._check_open()
        return [] if self._sync is None else self._sync.outbox.blocked()

    def replay_outbox(self) -> int:
        """Replay every document's outbox entries now; return how many reached storage.

        Blocked documents are skipped (see `blocked_outbox_entries`); raises
        `StorageUnavailableError` while the store is unreachable.
        """
        self._check_open()
        return self._replay_everything()

    def export_outbox_entry(self, entry_id: str) -> JsonObject:
        """Return an outbox entry as plain JSON, for a person to inspect or keep."""
        self._check_open()
        if self._sync is None:
            raise NotFoundError(f"no outbox entry {entry_id}")
        return self._sync.outbox.export(entry_id)

    def discard_outbox_entry(self, entry_id: str) -> OutboxEntry:
        """Remove an outbox entry for good (export it first); its document's queue goes on."""
        self._check_open()
        entry = None if self._sync is None else self._sync.outbox.find(entry_id)
        if self._sync is None or entry is None:
            raise NotFoundError(f"no outbox entry {entry_id}")
        # Under the document's lock: a replay of the document (which holds it) either
        # wrote the entry already (then discarding it fails) or never will.
        with self._lock_for(entry.key):
            return self._sync.discard(entry_id)

    # -- keys ----------------------------------------------------------------------------

    def rotate_keys(
        self, *, progress: Callable[[RotationProgress], None] | None = None
    ) -> RotationReport:
        """Re-encrypt every version of every document in the store under the primary key.

        Run it once every process encrypts under the new primary key
        (``KeyRing({"k1": old, "k2": new})``). Current documents, keyframe snapshots and
        history patches are all rewritten (see `dashpersist.rotation`); when the report is
        ``ok`` no stored ciphertext needs another key, and the old one can be dropped from
        the ring. A document that fails (a key missing from the ring, a corrupt history) is
        listed in ``failures`` and left as it was; the others still rotate. This manager's
        queued saves and outbox entries are written first, so they are rotated too.
        *progress* is called after each document. Raises `ConfigurationError` when
        encryption is off.
        """
        self._check_open()
        encryptor = self._codec.encryptor
        if encryptor is None:
            raise ConfigurationError(
                "rotate_keys needs enable_encryption=True and a keyring holding the new key"
            )
        self.flush()
        self.replay_outbox()
        try:
            report = rotate_store(
                self._storage,
                encryptor,
                keyframe_interval=self._config.keyframe_interval,
                progress=progress,
            )
        finally:
            # Any cached document may hold the old ciphertext: read them afresh.
            self._cache.clear()
        for outcome in report.outcomes:
            if outcome.rotated:
                invalidate_everywhere(self._storage, outcome.key)
                self._record(
                    "keys_rotated", outcome.key, None, f"Re-encrypted under {report.primary_key_id}"
                )
        return report

    # -- activity and widget data --------------------------------------------------------

    def get_activity(
        self, user_id: str, *, limit: int = 20, before: str | None = None
    ) -> ActivityPage:
        """Return the user's activity (saves, merges, rollbacks, deletes), newest first.

        Pass the page's ``next_cursor`` as *before* for the next page. The log lives in
        the same store as the documents; it records what this library did, never
        document values.
        """
        self._check_open()
        _key(user_id, "default")
        log = self._activity_log()
        if log is None:
            raise StorageUnavailableError("the store is unreachable: no activity to read")
        ActivityRecorder.shared().flush()  # this process's entries, this manager's included
        return self._retry(functools.partial(log.entries, user_id, limit=limit, before=before))

    @property
    def widget_cache(self) -> WidgetDataCache:
        """Fetched widget data per user and widget, with a TTL, kept in the same store.

        Expired entries are never returned, and a background thread purges them every
        ``widget_cache_purge_interval`` seconds (unless ``start_threads=False``). Raises
        `StorageUnavailableError` while a store named by URL has not been reached.
        """
        self._check_open()
        if self._widget_cache is None:
            storage = self._reachable_storage(connect=True)
            if storage is None:
                raise StorageUnavailableError("the store is unreachable: no widget cache")
            self._widget_cache = widget_cache_for(storage, clock=self._clock)
            if self._start_threads:
                self._widget_cache.start_purger(interval=self._config.widget_cache_purge_interval)
        return self._widget_cache

    # -- events --------------------------------------------------------------------------

    def subscribe(self, callback: Subscriber) -> Unsubscribe:
        """Call *callback* with a `ChangeEvent` for every change this manager makes:
        ``saved``, ``queued``, ``merged``, ``rolled_back``, ``deleted``, ``outbox_stored``,
        ``outbox_replayed``, ``outbox_blocked`` and ``save_failed``. Returns a function
        that unsubscribes. Callbacks run synchronously on the thread that made the
        change; one that raises is logged and skipped."""
        return self._events.subscribe(callback)

    @property
    def is_closed(self) -> bool:
        """Whether `close` has been called."""
        return self._closed

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ManagerClosedError("this PersistenceManager is closed")

    def _call_outside_locks(self, callback: Callable[..., None] | None, *args: object) -> None:
        """Run a journal callback now, or, while this thread holds a document lock, once
        it holds none (see `_DocumentLock`)."""
        state = self._lock_state
        if callback is None:
            return
        if getattr(state, "depth", 0):
            if not hasattr(state, "deferred"):
                state.deferred = []
            state.deferred.append((callback, args))
        else:
            call_logged(callback, *args)

    def _lock_for(self, key: DocumentKey) -> _DocumentLock:
        """Return *key*'s lock. It lives as long as somebody holds it: every caller keeps
        it while using it, so two callers never hold different locks of one document."""
        lock = self._key_locks.get(key)  # thread-safe without the guard: the common case
        if lock is None:
            with self._locks_guard:
                lock = self._key_locks.get(key)
                if lock is None:
                    lock = self._key_locks[key] = _DocumentLock(self._lock_state)
                    self._recent_locks.append(lock)
        return lock

    def _retry(self, operation: Callable[[], T]) -> T:
        return self._committer.retry(operation)

    def _store(self, key: DocumentKey, pending: PendingSave) -> SaveResult:
        """Write a validated save now (from the caller or the autosave worker); park it in
        the outbox when storage stays unreachable."""
        with self._lock_for(key):
            slot = (key, pending.client_id)
            if pending.queued:
                last = self._last_written(slot)
                if last is not None and pending.sequence < last[0]:
                    # A newer save of this client was written already (an immediate save
                    # overtook this queued one): writing it would resurrect old state.
                    return SaveResult(
                        success=True, version=self._bases.get(key), source="unchanged"
                    )
                if (
                    last is not None
                    and last[2] is not None
                    and last[2] > (pending.base_version or 0)
                ):
                    # An older save of this client was written since this one took its
                    # base; this one builds on it (the client's edits follow each other).
                    pending = replace(pending, base_version=last[2])
            try:
                try:
                    self._replay(key)
                    result = self._committer.save(key, pending)
                except (StorageUnavailableError, OutboxBlockedError) as exc:
                    # Storage cannot take it now; order per document must hold behind a
                    # blocked entry too. The outbox keeps it (or raises when there is none).
                    result = self._park(key, pending, exc)
            except DashPersistError as exc:
                self._emit("save_failed", key, None, error=exc)
                self._settle_failure(key, pending, exc)
                raise
            # Noted only once written (under the document lock, which every write of the
            # slot takes): a failed save must not make an older queued one look overtaken.
            # A merged write holds others' changes the client's later saves lack: they
            # keep their own base (and merge), where a plain one is their base.
            self._note_written(
                slot, pending.sequence, result.version if result.merge is None else None
            )
            self._settle_success(key, pending, result)
        if result.source == "storage":
            self._listen()
        if result.source not in ("unchanged", "outbox"):
            merged = result.merge is not None
            self._emit("merged" if merged else "saved", key, result.version)
            self._record("merged" if merged else "saved", key, result.version, pending.description)
        return result

    def _last_written(self, slot: _Slot) -> tuple[int, float, int | None] | None:
        """The number of *slot*'s newest save written (or of the document's deletion since),
        when, and the version it became (``None``: a deletion, or parked)."""
        with self._written_guard:
            return self._written.get(slot)

    def _note_written(self, slot: _Slot, sequence: int, version: int | None = None) -> None:
        """Note that save number *sequence* of *slot* was written now as *version* (or that
        the document was deleted then): queued saves of the slot numbered before are
        stale, and those numbered after build on *version*."""
        with self._written_guard:
            last = self._written.get(slot)
            if last is not None and last[0] > sequence:
                sequence, version = last[0], last[2]
            self._written[slot] = (sequence, self._timer(), version)
            if len(self._written) >= self._written_sweep_at:
                self._sweep_written()

    def _note_deleted(self, key: DocumentKey, deletion: int, busy: set[_Slot]) -> None:
        """Note that *key* was deleted as save number *deletion*: queued saves of its slots
        (*busy* ones, and those that wrote) numbered before are stale, and no version
        written before is a base any more."""
        with self._written_guard:
            slots = busy | {slot for slot in self._written if slot[0] == key}
        for slot in slots:
            self._note_written(slot, deletion)

    def _sweep_written(self) -> None:
        """Forget the last writes of clients that have nothing queued or being written, and
        wrote nothing for `WRITTEN_KEPT_SECONDS`: a server numbering its clients (a
        client_id per browser tab) would otherwise keep one entry per client for good.
        Call with `_written_guard` held; amortized, as the next sweep waits for twice the
        entries this one keeps."""
        busy = self._busy_slots()
        cutoff = self._timer() - WRITTEN_KEPT_SECONDS
        for slot in [s for s, (_, at, _) in self._written.items() if at < cutoff and s not in busy]:
            del self._written[slot]
        self._written_sweep_at = max(WRITTEN_SWEEP_FROM, 2 * len(self._written))

    def _settle_success(self, key: DocumentKey, pending: PendingSave, result: SaveResult) -> None:
        if pending.journal_through is not None:
            self._journal.confirm(key, pending.journal_through, pending.plain, result)
            self._forget_view_if_settled(key)

    def _forget_view_if_settled(self, key: DocumentKey) -> None:
        """Drop the model kept for *key*'s optimistic view once no change is pending: a
        server applying changes to many documents would otherwise keep one of each."""
        if not self._journal.has_pending(key):
            self._view_models.pop(key, None)
            self._unwritten_bases.pop(key, None)

    def _settle_failure(
        self, key: DocumentKey, pending: PendingSave, error: DashPersistError
    ) -> None:
        """Roll back the optimistic changes a failed write carried; queue the rebased rest."""
        if pending.journal_through is None:
            return
        unwritten = self._unwritten_bases.get(key)
        view = self._journal.fail(key, pending.journal_through, error, check=self._codec.validate)
        self._forget_view_if_settled(key)
        rest = self._journal.pending(key)
        if not rest and unwritten is not None:
            # The changes were made on top of a save of the caller's still queued, which
            # their write replaced in the queue: rolled back to it, it waits again. (The
            # queue holds nothing newer: every save of the slot takes the document lock
            # while changes are pending, and this runs under it.)
            self._autosave.put((key, None), unwritten)
        if view is not None and rest:
            self._autosave.put(
                (key, None),
                PendingSave(
                    view,
                    "auto",
                    None,
                    None,
                    next(self._sequence),
                    queued=True,
                    journal_through=rest[-1].change_id,
                ),
            )

    def _write_queued(self, slot: _Slot, pending: PendingSave) -> SaveResult:
        """The autosave worker's write (also `flush`'s and `sync`'s)."""
        key = slot[0]
        if pending.description is None and pending.change_type == "manual":
            pending = replace(pending, change_type="auto")
        with self._written_guard:  # an older save on its way: the slot is not swept
            self._writing[slot] = self._writing.get(slot, 0) + 1
        try:
            return self._store(key, pending)
        except DashPersistError as exc:
            if pending.journal_through is None:
                raise  # stays queued; flush raises it
            # Optimistic changes were rolled back (and the rest requeued): done with it.
            return SaveResult(success=False, version=None, source="storage", error=exc)
        finally:
            with self._written_guard:
                if self._writing[slot] == 1:
                    del self._writing[slot]
                else:
                    self._writing[slot] -= 1

    def _on_autosave_error(self, slot: _Slot, error: BaseException) -> None:
        # `_store` told subscribers of the failures it knows (DashPersistError) already.
        if isinstance(error, Exception) and not isinstance(error, DashPersistError):
            self._emit("save_failed", slot[0], None, error=error)

    def _discard_older(self, slot: _Slot, sequence: int) -> None:
        """Drop *slot*'s queued save if it is older than save number *sequence*."""
        self._autosave.discard(slot, only_if=lambda queued: queued.sequence < sequence)

    def _busy_slots(self) -> set[_Slot]:
        """The slots with a save queued or being written, in any queue. Call with
        `_written_guard` held (it guards `_writing`; the queues' locks come after it)."""
        queues = (self._autosave, *self._retiring)
        return set(self._writing).union(*(queue.busy_keys() for queue in queues))

    def _slots_of(self, key: DocumentKey) -> set[_Slot]:
        """The slots of *key* with a save queued or being written, in any queue."""
        with self._written_guard:
            return {slot for slot in self._busy_slots() if slot[0] == key}

    def _discard_parked(self, key: DocumentKey) -> None:
        """Drop *key*'s outbox entries, blocked ones and those behind them included."""
        if self._sync is not None:
            for entry in self._sync.outbox.entries(key, past_blocked=True):
                self._sync.discard(entry.entry_id)

    def _queued_slots(self, key: DocumentKey) -> list[_Slot]:
        """The autosave slots (one per client) holding queued saves of *key*."""
        return [slot for slot in self._autosave.pending_keys() if slot[0] == key]

    def _park(self, key: DocumentKey, pending: PendingSave, cause: DashPersistError) -> SaveResult:
        """Keep a save that storage cannot take now in the durable outbox."""
        sync = self._synchronizer(create=True)
        if sync is None:
            raise cause  # `_store` tells subscribers
        cached = self._cache.get(key)
        previous = None if cached is None else cached.stored.document
        newest = sync.newest(key)
        entry = OutboxEntry.create(
            key,
            self._codec.encrypt(key, pending.plain, previous=previous),
            base_version=(
                pending.base_version
                or self._bases.get(key, None if cached is None else cached.stored.version)
            )
            if newest is None
            else newest.base_version,
            change_type=pending.change_type,
            description=pending.description,
            device_id=self._device_id,
            label=pending.label,
            created_at=self._clock(),
            after_entry_id=None if newest is None else newest.entry_id,
        )
        sync.park(entry)
        self._emit("outbox_stored", key, None, error=cause)
        return SaveResult(success=True, version=None, source="outbox", error=cause)

    def _parked(self, key: DocumentKey) -> OutboxEntry | None:
        return None if self._sync is None else self._sync.newest(key)

    def _replay(self, key: DocumentKey) -> ReplayReport:
        """Replay *key*'s outbox entries (the caller holds the document lock)."""
        if self._sync is None or not self._sync.has_pending(key):
            return ReplayReport()
        return self._sync.replay(key)

    def _replay_everything(self) -> int:
        """Replay every document with entries waiting (`replay_outbox`, and the probe's
        pass); blocked documents are skipped. Return how many entries reached storage.

        A document that fails otherwise (a damaged outbox file, say) does not hold up
        the others: they replay, and then the first such error is raised. Storage being
        unreachable stops the pass at once (no other document would get through)."""
        replayed = 0
        first_error: DashPersistError | None = None
        for key in [] if self._closed or self._sync is None else self._sync.pending_keys():
            with self._lock_for(key):
                try:
                    replayed += self._replay(key).replayed
                except OutboxBlockedError:
                    continue
                except StorageUnavailableError:
                    raise
                except DashPersistError as exc:
                    _LOG.error("could not replay the outbox entries of %s: %s", key, exc)
                    first_error = first_error or exc
        if first_error is not None:
            raise first_error
        return replayed

    def _synchronizer(self, *, create: bool) -> Synchronizer | None:
        if self._sync is None and create and self._outbox_folder is not None:
            self._sync = self._new_synchronizer(self._outbox_folder)
        return self._sync

    def _new_synchronizer(self, folder: Path) -> Synchronizer:
        sync = Synchronizer(
            Outbox(folder),
            self._storage,
            self._committer.commit_entry,
            on_replayed=self._on_replayed,
            on_blocked=lambda entry, exc: self._emit("outbox_blocked", entry.key, None, error=exc),
        )
        if self._start_threads:
            sync.start_probe(
                self._replay_everything,
                interval=self._config.outbox_probe_interval,
                max_interval=self._config.outbox_probe_max_interval,
            )
        return sync

    def _new_autosave(self) -> AutosaveQueue[_Slot, PendingSave, SaveResult]:
        return AutosaveQueue(
            self._write_queued,
            delay=self._config.auto_save_delay,
            max_wait=self._config.auto_save_max_wait,
            clock=self._timer,
            on_error=self._on_autosave_error,
            start_worker=self._start_threads,
        )

    def _listen(self) -> None:
        """Start hearing other processes' writes (PostgreSQL) once the store is reached;
        a manager that started during an outage starts listening when it comes back."""
        if self._listening or not self._start_threads:
            return
        storage = self._reachable_storage()
        if storage is None:
            return
        self._listening = True
        self._listener = change_listener_for(
            storage, self._on_remote_change, on_reconnect=self._cache.clear
        )

    def _on_replayed(self, entry: OutboxEntry, version: int) -> None:
        self._emit("outbox_replayed", entry.key, version)
        self._record("saved", entry.key, version, entry.description or "Replayed from the outbox")

    def _reachable_storage(self, *, connect: bool = False) -> Storage | None:
        """The opened store behind this manager, or ``None`` while it is unreachable."""
        if not isinstance(self._storage, ReconnectingStorage):
            return self._storage
        if connect and not self._storage.is_connected:
            with contextlib.suppress(StorageUnavailableError):
                self._storage.connect()
        return self._storage.inner

    def _activity_log(self) -> ActivityLog | None:
        if self._activity is None:
            storage = self._reachable_storage(connect=True)
            if storage is not None:
                self._activity = activity_log_for(storage)
        return self._activity

    def _record(
        self, action: ActivityAction, key: DocumentKey, version: int | None, summary: str | None
    ) -> None:
        """Record an action in the activity log; a failure is logged, never raised (the
        action itself is already committed)."""
        try:
            log = self._activity_log()
            if log is not None:
                ActivityRecorder.shared().record(
                    log,
                    ActivityEntry(
                        action=action,
                        user_id=key.user_id,
                        layout_id=key.layout_id,
                        version=version,
                        device_id=self._device_id,
                        at=self._clock(),
                        summary=summary or "",
                    ),
                    now=not self._start_threads,
                )
        except DashPersistError:
            _LOG.warning(
                "could not record %s of %s in the activity log", action, key, exc_info=True
            )

    def _on_remote_change(self, change: RemoteChange) -> None:
        """Another process wrote (PostgreSQL NOTIFY): drop the stale copy and tell subscribers."""
        invalidate_everywhere(self._storage, change.key)
        self._events.emit(
            ChangeEvent(
                "deleted" if change.is_delete else "saved",
                change.user_id,
                change.layout_id,
                change.version,
                change.device_id,
            )
        )

    def _emit(
        self,
        kind: EventKind,
        key: DocumentKey,
        version: int | None,
        *,
        error: Exception | None = None,
    ) -> None:
        if self._events.has_subscribers:  # no event to build for nobody
            self._events.emit(
                ChangeEvent(kind, key.user_id, key.layout_id, version, self._device_id, error=error)
            )

    def _upgraded_version(self, key: DocumentKey, version: int) -> JsonObject:
        self._housekeeper.wait(key)
        document, record = self._retry(lambda: self._versions.get_document(key, version))
        return self._codec.plain(key, document, record.schema_version)

    def _make_encryptor(self) -> FieldEncryptor | None:
        if not self._config.enable_encryption:
            return None
        if self._keyring is None:
            raise ConfigurationError(
                "enable_encryption is on but no keyring was given: "
                "PersistenceManager(..., keyring=KeyRing({'k1': KeyRing.generate_key()}))"
            )
        # Fields marked Encrypted on registered settings models count as well.
        fields = [*self._config.encrypted_fields, *self._codec.validator.encrypted_fields()]
        return FieldEncryptor(self._keyring, fields)


def _key(user_id: str, layout_id: str) -> DocumentKey:
    return DocumentKey(user_id, layout_id)

"""AsyncPersistenceManager: the asyncio twin of `PersistenceManager`, for FastAPI and other
asyncio hosts.

It wraps a `PersistenceManager` and runs each call in a worker thread of its own bounded
pool, so storage I/O, retries with backoff, encryption and validation never block the
event loop. Semantics are the synchronous manager's, call for call: the twin adds
nothing but the thread hop. Each method is its twin's signature and one line.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from types import TracebackType
from typing import Generic, ParamSpec, Self, TypeAlias, TypeVar

import pydantic
from typing_extensions import TypeVar as TypeVarWithDefault

from dashpersist.activity import ActivityPage
from dashpersist.changes import LayoutDiff
from dashpersist.config import PersistenceConfig
from dashpersist.encryption import KeyRing
from dashpersist.errors import DashPersistError, ManagerClosedError, ValidationIssue
from dashpersist.events import ChangeEvent, Unsubscribe
from dashpersist.journal import PendingChange
from dashpersist.manager import PersistenceManager
from dashpersist.migrations import Upcast
from dashpersist.models import Layout, SaveResult, SyncResult, Versioned, VersionInfo
from dashpersist.outbox import OutboxEntry
from dashpersist.rotation import RotationProgress, RotationReport
from dashpersist.storage.protocol import Storage
from dashpersist.types import ChangeType, JsonObject, JsonPatch
from dashpersist.validation import ValidationReport
from dashpersist.versions import IntegrityReport
from dashpersist.widget_cache import WidgetDataCache

__all__ = ["AsyncPersistenceManager", "AsyncSubscriber"]

DocT = TypeVarWithDefault("DocT", bound=pydantic.BaseModel, default=Layout)
P = ParamSpec("P")
R = TypeVar("R")

_LOG = logging.getLogger(__name__)

AsyncSubscriber: TypeAlias = Callable[[ChangeEvent], Awaitable[None] | None]
"""An event callback for `AsyncPersistenceManager.subscribe`: a plain function or a
coroutine function."""


class AsyncPersistenceManager(Generic[DocT]):
    """Save, load and version documents from asyncio code without blocking the event loop.

    Takes the arguments of `PersistenceManager` (and builds one), or wraps an existing
    one with `from_manager`. Every method that can touch storage or do real work is a
    coroutine with the same signature and semantics as its synchronous twin; it runs in
    a worker thread of a pool of at most *max_workers* threads (default: as
    `ThreadPoolExecutor` chooses), created on first use and shut down by `aclose`. The
    pool is this manager's own, not the loop's default executor, so a burst of saves
    never starves the host's other ``to_thread`` work, and the manager can be shared by
    several event loops (one per test client, say).

    Saves of one document are serialized by the synchronous manager's per-document
    lock, so concurrent tasks behave like concurrent threads. Cancelling an awaiting
    task does not recall a call already running in its thread: a save then completes
    (or fails) without anyone hearing of it, just as a client that hung up would.
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
        max_workers: int | None = None,
    ) -> None:
        self._attach(
            PersistenceManager(
                store,
                config=config,
                device_id=device_id,
                schema=schema,
                keyring=keyring,
                clock=clock,
                sleep=sleep,
                timer=timer,
                start_threads=start_threads,
            ),
            max_workers,
        )

    @classmethod
    def from_manager(
        cls, manager: PersistenceManager[DocT], *, max_workers: int | None = None
    ) -> AsyncPersistenceManager[DocT]:
        """Return a twin running *manager*'s calls in worker threads.

        Sync and async code of one process can then share one manager, its cache and
        its per-document locks. `aclose` closes *manager*.
        """
        twin: AsyncPersistenceManager[DocT] = cls.__new__(cls)
        twin._attach(manager, max_workers)
        return twin

    def _attach(self, manager: PersistenceManager[DocT], max_workers: int | None) -> None:
        self._manager = manager
        self._max_workers = max_workers
        self._executor: ThreadPoolExecutor | None = None
        self._executor_guard = threading.Lock()
        self._closed = False
        # Tasks of async subscribers, referenced until done so they are not collected.
        self._tasks: set[asyncio.Task[None]] = set()

    # -- configuration -------------------------------------------------------------------

    @property
    def manager(self) -> PersistenceManager[DocT]:
        """The synchronous manager this twin runs in worker threads."""
        return self._manager

    @property
    def config(self) -> PersistenceConfig:
        """The settings in force."""
        return self._manager.config

    @property
    def storage(self) -> Storage:
        """The backend this manager writes to."""
        return self._manager.storage

    @property
    def device_id(self) -> str | None:
        """The device id recorded with every version this manager writes."""
        return self._manager.device_id

    @property
    def is_closed(self) -> bool:
        """Whether `aclose` has been called."""
        return self._closed or self._manager.is_closed

    async def update_config(self, **changes: object) -> PersistenceConfig:
        """Change settings; see `PersistenceManager.update_config`."""
        return await self._call(self._manager.update_config, **changes)

    # -- documents -----------------------------------------------------------------------

    async def save_layout(
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
        """Validate and commit *layout*; see `PersistenceManager.save_layout`."""
        return await self._call(
            self._manager.save_layout,
            user_id,
            layout,
            layout_id=layout_id,
            immediate=immediate,
            description=description,
            change_type=change_type,
            label=label,
            base_version=base_version,
            client_id=client_id,
        )

    async def load_layout(self, user_id: str, *, layout_id: str = "default") -> DocT | None:
        """Return the user's current document; see `PersistenceManager.load_layout`."""
        return await self._call(self._manager.load_layout, user_id, layout_id=layout_id)

    async def load_versioned(
        self, user_id: str, *, layout_id: str = "default", client_id: str | None = None
    ) -> Versioned[DocT] | None:
        """Return the current document with its version; see `PersistenceManager.load_versioned`."""
        return await self._call(
            self._manager.load_versioned, user_id, layout_id=layout_id, client_id=client_id
        )

    async def list_layouts(self, user_id: str) -> list[str]:
        """Return the ids of the user's documents, sorted."""
        return await self._call(self._manager.list_layouts, user_id)

    async def delete_layout(self, user_id: str, *, layout_id: str = "default") -> None:
        """Delete the document and its history; see `PersistenceManager.delete_layout`."""
        return await self._call(self._manager.delete_layout, user_id, layout_id=layout_id)

    async def clone_layout(
        self,
        user_id: str,
        source_layout_id: str,
        target_layout_id: str,
        *,
        description: str | None = None,
    ) -> SaveResult:
        """Copy a document to a new id; see `PersistenceManager.clone_layout`."""
        return await self._call(
            self._manager.clone_layout,
            user_id,
            source_layout_id,
            target_layout_id,
            description=description,
        )

    # -- history -------------------------------------------------------------------------

    async def get_version_history(
        self,
        user_id: str,
        *,
        layout_id: str = "default",
        limit: int = 20,
        before: int | None = None,
    ) -> list[VersionInfo]:
        """Return versions newest first; see `PersistenceManager.get_version_history`."""
        return await self._call(
            self._manager.get_version_history,
            user_id,
            layout_id=layout_id,
            limit=limit,
            before=before,
        )

    async def get_version(self, user_id: str, version: int, *, layout_id: str = "default") -> DocT:
        """Return the document at *version*; see `PersistenceManager.get_version`."""
        return await self._call(self._manager.get_version, user_id, version, layout_id=layout_id)

    async def compare_versions(
        self, user_id: str, version_a: int, version_b: int, *, layout_id: str = "default"
    ) -> LayoutDiff:
        """Return what changed between two versions; see `PersistenceManager.compare_versions`."""
        return await self._call(
            self._manager.compare_versions, user_id, version_a, version_b, layout_id=layout_id
        )

    async def rollback_to_version(
        self, user_id: str, version: int, *, layout_id: str = "default"
    ) -> DocT:
        """Make *version* the newest again; see `PersistenceManager.rollback_to_version`."""
        return await self._call(
            self._manager.rollback_to_version, user_id, version, layout_id=layout_id
        )

    async def cleanup_old_versions(
        self, user_id: str, *, keep: int, layout_id: str = "default"
    ) -> int:
        """Trim history; see `PersistenceManager.cleanup_old_versions`."""
        return await self._call(
            self._manager.cleanup_old_versions, user_id, keep=keep, layout_id=layout_id
        )

    async def verify(self, user_id: str, *, layout_id: str = "default") -> IntegrityReport:
        """Check checksums and the hash chain; see `PersistenceManager.verify`."""
        return await self._call(self._manager.verify, user_id, layout_id=layout_id)

    async def verify_store(self) -> IntegrityReport:
        """Verify every document in the store; see `PersistenceManager.verify_store`."""
        return await self._call(self._manager.verify_store)

    async def rotate_keys(
        self, *, progress: Callable[[RotationProgress], None] | None = None
    ) -> RotationReport:
        """Re-encrypt the store under the primary key; see `PersistenceManager.rotate_keys`.

        *progress* runs on the worker thread doing the rotation.
        """
        return await self._call(self._manager.rotate_keys, progress=progress)

    async def get_activity(
        self, user_id: str, *, limit: int = 20, before: str | None = None
    ) -> ActivityPage:
        """Return the user's activity, newest first; see `PersistenceManager.get_activity`."""
        return await self._call(self._manager.get_activity, user_id, limit=limit, before=before)

    @property
    def widget_cache(self) -> WidgetDataCache:
        """The widget data cache (its calls block: run them with ``asyncio.to_thread``)."""
        return self._manager.widget_cache

    def register_migration(self, from_version: int, upcast: Upcast) -> None:
        """Register a schema upgrade; see `PersistenceManager.register_migration`.

        Not a coroutine: it does no I/O, and hosts call it while setting up, often
        before an event loop runs.
        """
        self._manager.register_migration(from_version, upcast)

    # -- validation ----------------------------------------------------------------------

    async def validate(self, layout: DocT | JsonObject) -> ValidationReport:
        """Return what validating *layout* finds; see `PersistenceManager.validate`."""
        return await self._call(self._manager.validate, layout)

    async def sanitize(self, layout: DocT | JsonObject) -> DocT:
        """Return a cleaned, valid copy of *layout*; see `PersistenceManager.sanitize`."""
        return await self._call(self._manager.sanitize, layout)

    async def sanitize_with_fixes(
        self, layout: DocT | JsonObject
    ) -> tuple[DocT, list[ValidationIssue]]:
        """Return a cleaned copy and its fixes; see `PersistenceManager.sanitize_with_fixes`."""
        return await self._call(self._manager.sanitize_with_fixes, layout)

    def register_widget_type(
        self, type_name: str, settings_model: type[pydantic.BaseModel]
    ) -> None:
        """Validate widgets of *type_name* with *settings_model*; not a coroutine (no I/O)."""
        self._manager.register_widget_type(type_name, settings_model)

    # -- sync and the outbox -------------------------------------------------------------

    async def apply(
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
        """Change a document optimistically; see `PersistenceManager.apply`.

        The callbacks run on the thread that settles the write (a worker thread), not
        on the event loop.
        """
        return await self._call(
            self._manager.apply,
            user_id,
            change,
            layout_id=layout_id,
            immediate=immediate,
            on_success=on_success,
            on_error=on_error,
            on_rollback=on_rollback,
        )

    async def pending(self, user_id: str, *, layout_id: str = "default") -> list[PendingChange]:
        """Return unconfirmed optimistic changes; see `PersistenceManager.pending`."""
        return await self._call(self._manager.pending, user_id, layout_id=layout_id)

    async def sync(self, user_id: str, *, layout_id: str = "default") -> SyncResult:
        """Bring one document up to date with the store; see `PersistenceManager.sync`."""
        return await self._call(self._manager.sync, user_id, layout_id=layout_id)

    async def outbox_entries(self) -> list[OutboxEntry]:
        """Return the writes waiting in the outbox; see `PersistenceManager.outbox_entries`."""
        return await self._call(self._manager.outbox_entries)

    async def blocked_outbox_entries(self) -> list[tuple[OutboxEntry, str]]:
        """Return the refused outbox entries; see `PersistenceManager.blocked_outbox_entries`."""
        return await self._call(self._manager.blocked_outbox_entries)

    async def replay_outbox(self) -> int:
        """Replay every outbox entry now; see `PersistenceManager.replay_outbox`."""
        return await self._call(self._manager.replay_outbox)

    async def export_outbox_entry(self, entry_id: str) -> JsonObject:
        """Return an outbox entry as JSON; see `PersistenceManager.export_outbox_entry`."""
        return await self._call(self._manager.export_outbox_entry, entry_id)

    async def discard_outbox_entry(self, entry_id: str) -> OutboxEntry:
        """Remove an outbox entry for good; see `PersistenceManager.discard_outbox_entry`."""
        return await self._call(self._manager.discard_outbox_entry, entry_id)

    # -- events --------------------------------------------------------------------------

    async def subscribe(self, callback: AsyncSubscriber) -> Unsubscribe:
        """Call *callback* with every `ChangeEvent`, on the event loop that subscribed.

        Events happen in worker threads; each is handed to this loop with
        ``call_soon_threadsafe``, in order. A plain function is called there; a coroutine
        function's coroutine is run as a task. Either way the callback may touch
        loop-bound objects (an `asyncio.Queue`, a websocket), and an exception it raises
        is logged, never raised into the save. Events after the loop has closed are
        dropped. Returns a function that unsubscribes.
        """
        loop = asyncio.get_running_loop()
        return self._manager.subscribe(_on_loop(loop, callback, self._tasks))

    # -- lifecycle -----------------------------------------------------------------------

    async def flush(self) -> list[SaveResult]:
        """Write every pending save now; see `PersistenceManager.flush`."""
        return await self._call(self._manager.flush)

    async def tick(self) -> list[SaveResult]:
        """Write the queued saves that are due; see `PersistenceManager.tick`."""
        return await self._call(self._manager.tick)

    @property
    def has_pending_writes(self) -> bool:
        """Whether saves are queued for autosave or waiting in the outbox."""
        return self._manager.has_pending_writes

    async def aclose(self) -> None:
        """Close the manager (flushing in a worker thread), then stop the pool; idempotent.

        Like `PersistenceManager.close`: if the flush raises, the manager stays open so
        that nothing queued is dropped. Calls made after a successful close raise
        `ManagerClosedError`. Await your own calls first: one still running in a worker
        thread finishes on its own.
        """
        if self._closed:
            return
        await self._in_thread(self._manager.close)
        with self._executor_guard:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            # Not wait=True: that would block the loop while other calls still run.
            executor.shutdown(wait=False)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- internals -----------------------------------------------------------------------

    async def _call(self, method: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        if self._closed:
            raise ManagerClosedError("this AsyncPersistenceManager is closed")
        return await self._in_thread(method, *args, **kwargs)

    async def _in_thread(self, method: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        # Like asyncio.to_thread, the call sees the caller's context variables.
        context = contextvars.copy_context()
        call = functools.partial(context.run, method, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._pool(), call)

    def _pool(self) -> ThreadPoolExecutor:
        with self._executor_guard:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self._max_workers, thread_name_prefix="dashpersist-async"
                )
            return self._executor


def _on_loop(
    loop: asyncio.AbstractEventLoop, callback: AsyncSubscriber, tasks: set[asyncio.Task[None]]
) -> Callable[[ChangeEvent], None]:
    """Return a thread-safe subscriber that runs *callback* on *loop*."""

    async def awaited(awaitable: Awaitable[None], event: ChangeEvent) -> None:
        try:
            await awaitable
        except Exception:  # noqa: BLE001 - like EventBus: one broken listener stops nothing
            _LOG.exception(
                "event subscriber failed on %s of %r/%r", event.kind, event.user_id, event.layout_id
            )

    def run(event: ChangeEvent) -> None:
        result = callback(event)
        if inspect.isawaitable(result):
            task = loop.create_task(awaited(result, event))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    def forward(event: ChangeEvent) -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(run, event)

    return forward

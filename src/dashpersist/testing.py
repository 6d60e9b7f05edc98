"""Tools for host applications' own tests: inject storage faults, fake time, two devices.

``FaultyStorage`` wraps a real backend and makes chosen calls fail, or the whole store go
offline, or every call slow; ``FakeClock`` and ``FakeWallClock`` are clocks that move
only when told; ``two_devices`` runs two managers against one store, as a laptop and a
phone of one user would. See ``docs/testing.md``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Generic, Literal, Self, TypeAlias, TypeVar

import pydantic
from typing_extensions import TypeVar as TypeVarWithDefault

from dashpersist.config import PersistenceConfig
from dashpersist.encryption import KeyRing
from dashpersist.errors import ConfigurationError, StorageUnavailableError
from dashpersist.manager import PersistenceManager
from dashpersist.models import Layout
from dashpersist.storage.protocol import (
    DocumentKey,
    Storage,
    StoredDocument,
    VersionOutline,
    VersionRecord,
)
from dashpersist.types import JsonObject

__all__ = [
    "Devices",
    "FakeClock",
    "FakeWallClock",
    "FaultyStorage",
    "Operation",
    "two_devices",
]

DocT = TypeVarWithDefault("DocT", bound=pydantic.BaseModel, default=Layout)
_R = TypeVar("_R")

Operation: TypeAlias = Literal[
    "read",
    "write",
    "delete",
    "layout_ids",
    "user_ids",
    "versions",
    "version_outline",
    "compact",
    "import_document",
    "replace_document",
]
"""A `Storage` call `FaultyStorage` can fail, slow down and count (``close`` never fails)."""

ErrorFactory: TypeAlias = Callable[[], Exception]


@dataclass(slots=True)
class _Fault:
    operation: Operation | None
    skip: int
    times: int
    error: ErrorFactory | None
    after: bool


class FaultyStorage:
    """Wrap a real `Storage` and inject faults into its calls; count every call.

    Faults are scheduled with `fail_next` and `fail_nth` (counting from when they are
    scheduled), or for the whole store with `go_offline`. The constructor's *fail_on*
    and *times* schedule ``fail_next(fail_on, times=times)`` at once. A failing call
    raises *error()* (default: `StorageUnavailableError`, the transient error the
    manager retries and then parks in the outbox) and, unless the fault says
    ``after=True``, never reaches the inner store. *latency* seconds are slept (with
    *sleep*) before every call; change it any time with `set_latency`.

    ``calls`` counts every call by operation, the failed ones included. Every method is
    thread-safe.
    """

    def __init__(
        self,
        inner: Storage,
        *,
        fail_on: Operation | None = None,
        times: int = 1,
        error: ErrorFactory | None = None,
        latency: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.inner = inner
        self._sleep = sleep
        self._lock = threading.Lock()
        self._calls: Counter[str] = Counter()
        self._faults: list[_Fault] = []
        self._offline = False
        self._latency: dict[Operation | None, float] = {}
        self.set_latency(latency)
        if fail_on is not None:
            self.fail_next(fail_on, times=times, error=error)

    # -- scheduling faults ---------------------------------------------------------------

    def fail_next(
        self,
        operation: Operation | None = None,
        *,
        times: int = 1,
        error: ErrorFactory | None = None,
        after: bool = False,
    ) -> None:
        """Make the next *times* calls of *operation* (``None``: of any operation) fail.

        With ``after=True`` the call reaches the inner store first and the error is
        raised on the way back, as when a connection drops after the commit: the caller
        cannot tell whether the write happened.
        """
        self._schedule(_Fault(operation, 0, times, error, after))

    def fail_nth(
        self,
        operation: Operation,
        n: int,
        *,
        error: ErrorFactory | None = None,
        after: bool = False,
    ) -> None:
        """Make the *n*-th call of *operation* from now fail, once (``n=1``: the next)."""
        if n < 1:
            raise ConfigurationError(f"n counts calls from 1, not {n}")
        self._schedule(_Fault(operation, n - 1, 1, error, after))

    def clear_faults(self) -> None:
        """Drop every scheduled fault (going offline is separate: see `go_online`)."""
        with self._lock:
            self._faults.clear()

    def go_offline(self) -> None:
        """Make every call raise `StorageUnavailableError` until `go_online`."""
        with self._lock:
            self._offline = True

    def go_online(self) -> None:
        """Let calls through again."""
        with self._lock:
            self._offline = False

    @property
    def is_offline(self) -> bool:
        """Whether `go_offline` is in force."""
        return self._offline

    def set_latency(self, seconds: float, operation: Operation | None = None) -> None:
        """Sleep *seconds* before every call of *operation* (``None``: every operation
        without a latency of its own)."""
        if seconds < 0:
            raise ConfigurationError(f"latency must be >= 0 seconds, not {seconds}")
        with self._lock:
            self._latency[operation] = seconds

    @property
    def calls(self) -> Counter[str]:
        """A snapshot of how often each operation was called, failed calls included."""
        with self._lock:
            return Counter(self._calls)

    # -- the Storage protocol ------------------------------------------------------------

    def read(self, key: DocumentKey) -> StoredDocument | None:
        """Return the current version of *key*, or ``None`` (unless a fault says otherwise)."""
        return self._call("read", lambda: self.inner.read(key))

    def write(
        self,
        key: DocumentKey,
        document: JsonObject,
        record: VersionRecord | None = None,
        *,
        expected_version: int | None,
    ) -> int:
        """Compare-and-swap *document* into the inner store (unless a fault says otherwise)."""
        return self._call(
            "write",
            lambda: self.inner.write(key, document, record, expected_version=expected_version),
        )

    def delete(self, key: DocumentKey) -> None:
        """Delete *key* and its history from the inner store (unless a fault says otherwise)."""
        self._call("delete", lambda: self.inner.delete(key))

    def layout_ids(self, user_id: str) -> list[str]:
        """Return *user_id*'s layout ids, sorted (unless a fault says otherwise)."""
        return self._call("layout_ids", lambda: self.inner.layout_ids(user_id))

    def user_ids(self) -> list[str]:
        """Return every user id with a document, sorted (unless a fault says otherwise)."""
        return self._call("user_ids", self.inner.user_ids)

    def versions(
        self, key: DocumentKey, *, before: int | None = None, limit: int = 20
    ) -> list[VersionRecord]:
        """Return *key*'s history records, newest first (unless a fault says otherwise)."""
        return self._call("versions", lambda: self.inner.versions(key, before=before, limit=limit))

    def version_outline(
        self, key: DocumentKey, *, before: int | None = None
    ) -> list[VersionOutline]:
        """Return *key*'s history outline, newest first (unless a fault says otherwise)."""
        return self._call("version_outline", lambda: self.inner.version_outline(key, before=before))

    def compact(
        self,
        key: DocumentKey,
        *,
        remove: Collection[int],
        snapshots: Mapping[int, JsonObject],
    ) -> None:
        """Apply retention in the inner store (unless a fault says otherwise)."""
        self._call("compact", lambda: self.inner.compact(key, remove=remove, snapshots=snapshots))

    def import_document(
        self, key: DocumentKey, current: StoredDocument, history: list[VersionRecord]
    ) -> None:
        """Import a document with its history (unless a fault says otherwise)."""
        self._call("import_document", lambda: self.inner.import_document(key, current, history))

    def replace_document(
        self,
        key: DocumentKey,
        current: StoredDocument,
        history: list[VersionRecord],
        *,
        expected_version: int,
    ) -> None:
        """Replace a document and its whole history (unless a fault says otherwise)."""
        self._call(
            "replace_document",
            lambda: self.inner.replace_document(
                key, current, history, expected_version=expected_version
            ),
        )

    def close(self) -> None:
        """Close the inner store; never fails."""
        self.inner.close()

    # -- internals -----------------------------------------------------------------------

    def _schedule(self, fault: _Fault) -> None:
        if fault.times < 1:
            raise ConfigurationError(f"times must be >= 1, not {fault.times}")
        with self._lock:
            self._faults.append(fault)

    def _call(self, operation: Operation, run: Callable[[], _R]) -> _R:
        with self._lock:
            self._calls[operation] += 1
            number = self._calls[operation]
            offline = self._offline
            fault = None if offline else self._take_fault(operation)
            latency = self._latency.get(operation, self._latency.get(None, 0.0))
        if latency:
            self._sleep(latency)
        if offline:
            raise StorageUnavailableError(f"storage is offline ({operation} call #{number})")
        if fault is None:
            return run()
        error = (fault.error or _unavailable(operation, number))()
        if fault.after:
            run()
        raise error

    def _take_fault(self, operation: Operation) -> _Fault | None:
        """Count this call against every matching fault; return the one that fires."""
        fired: _Fault | None = None
        for fault in list(self._faults):
            if fault.operation not in (None, operation):
                continue
            if fault.skip > 0:
                fault.skip -= 1
                continue
            if fired is None:
                fired = fault
                fault.times -= 1
                if fault.times == 0:
                    self._faults.remove(fault)
        return fired


def _unavailable(operation: str, number: int) -> ErrorFactory:
    return lambda: StorageUnavailableError(f"injected fault: {operation} call #{number}")


class FakeClock:
    """A monotonic clock (float seconds) that moves only when told; pass it as a ``clock``.

    ``sleep`` advances it instead of waiting, so retries and backoff take no real time.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        """Return the current reading, in seconds."""
        with self._lock:
            return self._now

    def __call__(self) -> float:
        return self.now()

    def advance(self, seconds: float) -> float:
        """Move the clock forward by *seconds*; return the new reading."""
        if seconds < 0:
            raise ConfigurationError(f"a monotonic clock never goes back ({seconds} seconds)")
        with self._lock:
            self._now += seconds
            return self._now

    def sleep(self, seconds: float) -> None:
        """Advance by *seconds* at once; a drop-in for ``time.sleep``."""
        self.advance(seconds)


class FakeWallClock:
    """A wall clock of aware UTC datetimes that moves only when told.

    Pass it as the manager's ``clock=``: version times, and the "newest edit wins" merge
    rule, then follow the test rather than the machine.
    """

    def __init__(self, start: datetime | None = None) -> None:
        start = start or datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
        if start.utcoffset() is None:
            raise ConfigurationError("FakeWallClock needs a timezone-aware start")
        self._now = start.astimezone(UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        """Return the current time."""
        with self._lock:
            return self._now

    def __call__(self) -> datetime:
        return self.now()

    def advance(self, seconds: float) -> datetime:
        """Move the clock forward by *seconds*; return the new time."""
        if seconds < 0:
            raise ConfigurationError(f"FakeWallClock moves forward only, not {seconds} seconds")
        with self._lock:
            self._now += timedelta(seconds=seconds)
            return self._now

    def sleep(self, seconds: float) -> None:
        """Advance by *seconds* at once; a drop-in for ``time.sleep``."""
        self.advance(seconds)


class Devices(Generic[DocT]):
    """Two managers of one user against one store: ``laptop`` and ``phone``.

    Unpacks as ``laptop, phone = devices``; closing it (or leaving its ``with`` block)
    closes both.
    """

    def __init__(self, laptop: PersistenceManager[DocT], phone: PersistenceManager[DocT]) -> None:
        self.laptop = laptop
        self.phone = phone

    def __iter__(self) -> Iterator[PersistenceManager[DocT]]:
        return iter((self.laptop, self.phone))

    def close(self) -> None:
        """Close both managers (a store given as a URL is closed with them)."""
        try:
            self.laptop.close()
        finally:
            self.phone.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def two_devices(
    store: str | Storage,
    *,
    user_id: str,
    layout: DocT | JsonObject | None = None,
    layout_id: str = "default",
    config: PersistenceConfig | None = None,
    schema: type[DocT] = Layout,  # type: ignore[assignment]
    keyring: KeyRing | None = None,
    clock: Callable[[], datetime] | None = None,
    device_ids: tuple[str, str] = ("laptop", "phone"),
) -> Devices[DocT]:
    """Return two managers of *user_id* on *store*, as two devices of one user.

    Given a URL, each device opens the store itself, as two processes would; given a
    `Storage`, both share it. With a *layout*, the laptop saves it and the phone loads
    it, so both start from the same version and the phone's next save merges with
    whatever the laptop saved meanwhile.
    """
    laptop, phone = (
        PersistenceManager(
            store, config=config, device_id=device_id, schema=schema, keyring=keyring, clock=clock
        )
        for device_id in device_ids
    )
    if layout is not None:
        laptop.save_layout(user_id, layout, layout_id=layout_id)
        phone.load_layout(user_id, layout_id=layout_id)
    return Devices(laptop, phone)

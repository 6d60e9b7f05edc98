"""The widget data cache: data a widget fetched, kept per user and widget for a while.

Dashboards fetch data for their widgets (query results, API responses) and show it again
on the next page load without fetching it again. `WidgetDataCache` keeps that data in the
same store as the documents, with a time to live: an expired entry is never returned, and
`purge_expired` (by hand, or every *interval* seconds in a background thread started with
`start_purger`) deletes expired entries for good.

Where the entries live is a `WidgetCacheStore`: the ``dashpersist_widget_cache`` table of
a `SQLStorage` (`SQLWidgetCacheStore`), one file per user in a JSON folder
(`JSONFileWidgetCacheStore`), or memory (`MemoryWidgetCacheStore`); `widget_cache_for`
picks the one for a storage. Expiry follows the injected wall *clock* of the cache.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol, cast

from dashpersist._canonical import canonical_json, parse_json
from dashpersist.errors import (
    ConfigurationError,
    CorruptStoreError,
    ValidationError,
    ValidationIssue,
)
from dashpersist.storage._sidecar import (
    SidecarFactory,
    SQLTables,
    UserFiles,
    open_regular,
    os_errors,
    remove_file,
    replace_atomically,
)
from dashpersist.storage.protocol import DocumentKey, _id_problem
from dashpersist.types import JsonObject, JsonValue

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from dashpersist.storage.sql import SQLStorage

__all__ = [
    "MAX_BATCH",
    "JSONFileWidgetCacheStore",
    "MemoryWidgetCacheStore",
    "SQLWidgetCacheStore",
    "WidgetCacheStore",
    "WidgetDataCache",
    "widget_cache_for",
]

_LOG = logging.getLogger(__name__)

MAX_BATCH: Final = 50
"""The most widgets `WidgetDataCache.get_many` reads at once (in one query)."""

_FORMAT: Final = 1


def _utc_now() -> datetime:
    return datetime.now(UTC)


class WidgetCacheStore(Protocol):
    """Where a `WidgetDataCache` keeps its entries; data crosses as canonical JSON bytes."""

    def put(
        self,
        user_id: str,
        widget_id: str,
        data: bytes,
        *,
        stored_at: datetime,
        expires_at: datetime,
    ) -> None:
        """Store *data* for the widget, replacing what was there, until *expires_at*."""
        ...

    def get_many(
        self, user_id: str, widget_ids: Sequence[str], *, now: datetime
    ) -> dict[str, bytes]:
        """Return the data of the widgets among *widget_ids* with an entry that expires
        after *now*, in one read (one query in SQL)."""
        ...

    def purge_expired(self, *, now: datetime) -> int:
        """Delete every entry, of every user, that expires at or before *now*; return how
        many were deleted."""
        ...


class WidgetDataCache:
    """Keep fetched widget data per (user, widget) for a time to live, in the store.

    Data must be JSON (`ValidationError` otherwise, NaN and infinities included); ids
    follow the rules of `DocumentKey`. *clock* returns the current time as an aware
    datetime (default: UTC now); tests pass `dashpersist.testing.FakeWallClock`.
    The cache is thread-safe; the background purger is started and stopped explicitly.
    """

    def __init__(
        self, store: WidgetCacheStore, *, clock: Callable[[], datetime] | None = None
    ) -> None:
        self._store = store
        self._clock = clock or _utc_now
        self._purger: tuple[threading.Thread, threading.Event] | None = None
        self._purger_lock = threading.Lock()

    @property
    def store(self) -> WidgetCacheStore:
        """Where the entries live."""
        return self._store

    def put(self, user_id: str, widget_id: str, data: JsonValue, *, ttl: float) -> None:
        """Store *data* for the widget for *ttl* seconds, replacing any earlier entry.

        *ttl* must be a finite number of seconds > 0 (`ConfigurationError`).
        """
        _check_ids(user_id, [widget_id])
        if isinstance(ttl, bool) or not (isinstance(ttl, int | float) and 0 < ttl < math.inf):
            raise ConfigurationError("ttl must be a finite number of seconds > 0")
        encoded = canonical_json(data)
        now = self._now()
        self._store.put(
            user_id, widget_id, encoded, stored_at=now, expires_at=now + timedelta(seconds=ttl)
        )

    def get(self, user_id: str, widget_id: str) -> JsonValue | None:
        """Return the widget's data, or ``None`` when there is none or it has expired."""
        found = self.get_many(user_id, [widget_id])
        return found.get(widget_id)

    def get_many(self, user_id: str, widget_ids: Sequence[str]) -> dict[str, JsonValue]:
        """Return the data of those of *widget_ids* that have an unexpired entry, by id.

        Reads at most `MAX_BATCH` widgets in one query; more is a `ConfigurationError`.
        Each value is a fresh copy.
        """
        if isinstance(widget_ids, str):
            raise ConfigurationError("widget_ids must be a sequence of ids, not one string")
        if len(widget_ids) > MAX_BATCH:
            raise ConfigurationError(
                f"get_many reads at most {MAX_BATCH} widgets at once, not {len(widget_ids)}"
            )
        _check_ids(user_id, widget_ids)
        if not widget_ids:
            return {}
        unique = list(dict.fromkeys(widget_ids))
        found = self._store.get_many(user_id, unique, now=self._now())
        return {
            widget_id: parse_json(data, source=f"the cached data of widget {widget_id!r}")
            for widget_id, data in found.items()
        }

    def purge_expired(self) -> int:
        """Delete every expired entry, of every user; return how many were deleted."""
        return self._store.purge_expired(now=self._now())

    def start_purger(self, *, interval: float = 60.0) -> None:
        """Purge expired entries every *interval* seconds in a daemon thread.

        A failed round is logged and the next one tries again. Raises
        `ConfigurationError` if the purger is already running or *interval* is not a
        finite number of seconds > 0.
        """
        if isinstance(interval, bool) or not (
            isinstance(interval, int | float) and 0 < interval < math.inf
        ):
            raise ConfigurationError("interval must be a finite number of seconds > 0")
        with self._purger_lock:
            if self._purger is not None:
                raise ConfigurationError("the widget cache purger is already running")
            stop = threading.Event()
            thread = threading.Thread(
                target=self._purge_until,
                args=(stop, float(interval)),
                name="dashpersist-widget-cache-purger",
                daemon=True,
            )
            self._purger = (thread, stop)
            thread.start()

    def stop_purger(self, *, timeout: float = 5.0) -> None:
        """Stop the background purger and wait up to *timeout* seconds for it; idempotent."""
        with self._purger_lock:
            purger, self._purger = self._purger, None
        if purger is None:
            return
        thread, stop = purger
        stop.set()
        if thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def is_purging(self) -> bool:
        """Whether the background purger is running."""
        with self._purger_lock:
            return self._purger is not None

    def close(self) -> None:
        """Stop the background purger; the entries stay in the store."""
        self.stop_purger()

    def _purge_until(self, stop: threading.Event, interval: float) -> None:
        while not stop.wait(interval):
            try:
                purged = self.purge_expired()
            except Exception:  # noqa: BLE001 - a failed round must not end the purger
                _LOG.exception("purging expired widget data failed; retrying in %s s", interval)
            else:
                _LOG.debug("purged %d expired widget cache entries", purged)

    def _now(self) -> datetime:
        now = self._clock()
        if now.utcoffset() is None:
            raise ConfigurationError("the widget cache's clock must return aware datetimes")
        return now


def _check_ids(user_id: str, widget_ids: Sequence[str]) -> None:
    DocumentKey(user_id)
    for index, widget_id in enumerate(widget_ids):
        problem = _id_problem(widget_id)
        if problem is not None:
            rule, message = problem
            raise ValidationError([ValidationIssue(f"widget_ids[{index}]", rule, message)])


# -- memory ------------------------------------------------------------------------------


class MemoryWidgetCacheStore:
    """Keep widget data in this process's memory (for `MemoryStorage`)."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], tuple[bytes, datetime]] = {}
        self._lock = threading.Lock()

    def put(
        self,
        user_id: str,
        widget_id: str,
        data: bytes,
        *,
        stored_at: datetime,
        expires_at: datetime,
    ) -> None:
        """Store *data* for the widget, replacing what was there, until *expires_at*."""
        with self._lock:
            self._entries[(user_id, widget_id)] = (data, expires_at)

    def get_many(
        self, user_id: str, widget_ids: Sequence[str], *, now: datetime
    ) -> dict[str, bytes]:
        """Return the unexpired data of the widgets among *widget_ids*."""
        found: dict[str, bytes] = {}
        with self._lock:
            for widget_id in widget_ids:
                entry = self._entries.get((user_id, widget_id))
                if entry is not None and entry[1] > now:
                    found[widget_id] = entry[0]
        return found

    def purge_expired(self, *, now: datetime) -> int:
        """Delete every entry that expires at or before *now*; return how many."""
        with self._lock:
            expired = [key for key, (_, expires_at) in self._entries.items() if expires_at <= now]
            for key in expired:
                del self._entries[key]
        return len(expired)


# -- SQL ---------------------------------------------------------------------------------


class SQLWidgetCacheStore:
    """Keep widget data in the ``dashpersist_widget_cache`` table of a `SQLStorage`.

    The table comes with the storage's schema (revision 0002), so the storage must have
    opened the database first. Every statement names the user, except the purge, which
    deletes what has expired for everyone.
    """

    def __init__(self, store: Engine | SQLStorage) -> None:
        self._tables = SQLTables(store)
        self._upsert = self._tables.sql(
            "INSERT INTO dashpersist_widget_cache (user_id, widget_id, data, stored_at, "
            "expires_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id, widget_id) DO UPDATE "
            "SET data = excluded.data, stored_at = excluded.stored_at, "
            "expires_at = excluded.expires_at"
        )
        self._purge = self._tables.sql("DELETE FROM dashpersist_widget_cache WHERE expires_at <= ?")

    def put(
        self,
        user_id: str,
        widget_id: str,
        data: bytes,
        *,
        stored_at: datetime,
        expires_at: datetime,
    ) -> None:
        """Store *data* for the widget, replacing what was there, until *expires_at*."""
        to_db = self._tables.time_to_db
        self._tables.execute(
            self._upsert,
            (user_id, widget_id, data.decode(), to_db(stored_at), to_db(expires_at)),
            action="caching widget data",
        )

    def get_many(
        self, user_id: str, widget_ids: Sequence[str], *, now: datetime
    ) -> dict[str, bytes]:
        """Return the unexpired data of the widgets among *widget_ids*, in one query."""
        if not widget_ids:
            return {}
        marks = ", ".join("?" for _ in widget_ids)
        statement = self._tables.sql(
            "SELECT widget_id, data FROM dashpersist_widget_cache WHERE user_id = ? "  # noqa: S608 - adds placeholders only
            f"AND expires_at > ? AND widget_id IN ({marks})"
        )
        rows = self._tables.query(
            statement,
            (user_id, self._tables.time_to_db(now), *widget_ids),
            action="reading cached widget data",
        )
        return {str(widget_id): str(data).encode() for widget_id, data in rows}

    def purge_expired(self, *, now: datetime) -> int:
        """Delete every entry that expires at or before *now*; return how many."""
        return self._tables.execute(
            self._purge, (self._tables.time_to_db(now),), action="purging the widget cache"
        )


# -- JSON folder -------------------------------------------------------------------------


class JSONFileWidgetCacheStore:
    """Keep widget data in a JSON folder: ``<root>/.widget-cache/<user stem>.json``.

    One file per user holds all their entries and is replaced atomically on every change,
    under a lock other processes respect; readers take no lock. A file that does not
    parse, or names another user, raises `CorruptStoreError` and is left as found.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self._files = UserFiles(Path(os.path.abspath(os.fspath(root))), ".widget-cache", ".json")

    def put(
        self,
        user_id: str,
        widget_id: str,
        data: bytes,
        *,
        stored_at: datetime,
        expires_at: datetime,
    ) -> None:
        """Store *data* for the widget, replacing what was there, until *expires_at*.

        Expired entries of the same user are dropped on the way.
        """
        path = self._files.path(user_id)
        with self._files.locked(path):
            _, stored = self._read(path, user_id)
            entries = _live(stored, stored_at, path)
            entries[widget_id] = {
                "data": parse_json(data),
                "expires_at": expires_at.astimezone(UTC).isoformat(),
                "stored_at": stored_at.astimezone(UTC).isoformat(),
            }
            self._write(path, user_id, entries)

    def get_many(
        self, user_id: str, widget_ids: Sequence[str], *, now: datetime
    ) -> dict[str, bytes]:
        """Return the unexpired data of the widgets among *widget_ids*, in one file read."""
        path = self._files.path(user_id)
        _, stored = self._read(path, user_id)
        entries = _live(stored, now, path)
        return {
            widget_id: canonical_json(cast(JsonObject, entries[widget_id])["data"])
            for widget_id in widget_ids
            if widget_id in entries
        }

    def purge_expired(self, *, now: datetime) -> int:
        """Delete every entry that expires at or before *now*; return how many."""
        purged = 0
        for path in self._files.paths():
            with self._files.locked(path):
                user_id, stored = self._read(path, None)
                live = _live(stored, now, path)
                if len(live) == len(stored):
                    continue
                purged += len(stored) - len(live)
                if live:
                    self._write(path, user_id, live)
                else:
                    remove_file(path)
        return purged

    def _read(self, path: Path, user_id: str | None) -> tuple[str, dict[str, JsonValue]]:
        """Return the user id and the entries *path* holds (none if it does not exist).

        With a *user_id*, the file must be that user's.
        """
        fd = open_regular(path, os.O_RDONLY)
        if fd is None:
            return user_id or "", {}
        try:
            with os_errors(path, "read"):
                data = os.pread(fd, os.fstat(fd).st_size, 0)
        finally:
            os.close(fd)
        content = parse_json(data, source=str(path))
        if (
            not isinstance(content, dict)
            or content.get("format") != _FORMAT
            or not isinstance(content.get("user_id"), str)
            or (user_id is not None and content["user_id"] != user_id)
            or not isinstance(content.get("entries"), dict)
        ):
            raise CorruptStoreError(
                f"{path} is not this user's widget cache file; it was left as found", path=path
            )
        return cast(str, content["user_id"]), cast(dict[str, JsonValue], content["entries"])

    def _write(self, path: Path, user_id: str, entries: dict[str, JsonValue]) -> None:
        content: JsonObject = {"entries": entries, "format": _FORMAT, "user_id": user_id}
        replace_atomically(path, canonical_json(content))


def _live(entries: dict[str, JsonValue], now: datetime, path: Path) -> dict[str, JsonValue]:
    """Return the entries that expire after *now*."""
    live: dict[str, JsonValue] = {}
    for widget_id, entry in entries.items():
        expires = entry.get("expires_at") if isinstance(entry, dict) else None
        try:
            expires_at = datetime.fromisoformat(expires) if isinstance(expires, str) else None
        except ValueError:
            expires_at = None
        if expires_at is None or expires_at.utcoffset() is None or "data" not in entry:  # type: ignore[operator]
            raise CorruptStoreError(
                f"{path} holds a widget entry without a valid expiry time or data; "
                "it was left as found",
                path=path,
            )
        if expires_at > now:
            live[widget_id] = entry
    return live


# -- choosing the implementation ---------------------------------------------------------

_STORES: SidecarFactory[WidgetCacheStore] = SidecarFactory(
    sql=SQLWidgetCacheStore, jsonfile=JSONFileWidgetCacheStore, memory=MemoryWidgetCacheStore
)


def widget_cache_for(
    storage: object, *, clock: Callable[[], datetime] | None = None
) -> WidgetDataCache:
    """Return a widget data cache kept in the same store as *storage*'s documents.

    `SQLStorage`: its database (``storage.engine``); `JSONFileStorage`: its folder
    (``storage.root``); a wrapper with an ``inner`` storage: the inner store's; anything
    else, including `MemoryStorage`: memory, shared by every cache made for that object.
    """
    return WidgetDataCache(_STORES(storage), clock=clock)

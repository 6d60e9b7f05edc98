"""The activity log: who did what to which document, kept in the store beside the documents.

Every committed write, merge, rollback, delete and key rotation is recorded as one
`ActivityEntry` (action, user, layout, version, device, time, summary). Entries never
hold document values: the summary is the change summary of `dashpersist.changes`, which
names widgets and fields, not what they contain.

`activity_log_for` picks the implementation that keeps the log in the same store as the
documents: a table in SQL (`SQLActivityLog`), an append-only file per user in a JSON
folder (`JSONFileActivityLog`), or memory (`MemoryActivityLog`). Pages are newest first;
each has an opaque cursor for the next one, which stays valid, and does not shift, while
new entries are recorded.

An entry is recorded after its change committed, not in the same transaction: a crash in
between loses the entry, never the change (the version history still shows it).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, Protocol, TypeAlias, cast, get_args

from dashpersist._canonical import canonical_json, parse_json
from dashpersist.errors import (
    ConfigurationError,
    CorruptStoreError,
    DashPersistError,
    ValidationError,
    ValidationIssue,
)
from dashpersist.storage._sidecar import (
    SidecarFactory,
    SQLTables,
    UserFiles,
    clean_text,
    open_regular,
    os_errors,
    sync_folder,
    write_all,
)
from dashpersist.storage.protocol import DocumentKey
from dashpersist.types import JsonObject, JsonValue

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from dashpersist.storage.sql import SQLStorage

__all__ = [
    "MAX_PAGE_SIZE",
    "MAX_SUMMARY_LENGTH",
    "ActivityAction",
    "ActivityEntry",
    "ActivityLog",
    "ActivityPage",
    "ActivityRecorder",
    "JSONFileActivityLog",
    "MemoryActivityLog",
    "SQLActivityLog",
    "activity_log_for",
]

ActivityAction: TypeAlias = Literal["saved", "merged", "rolled_back", "deleted", "keys_rotated"]
"""What happened: a write, a write that merged a concurrent one, a rollback (itself a new
version), a delete, or a re-encryption of the document's fields under a new key."""

MAX_PAGE_SIZE: Final = 500
"""The most entries one page may ask for."""

MAX_SUMMARY_LENGTH: Final = 1000
"""Longer summaries are cut to this many characters (ending with an ellipsis)."""

_LOG = logging.getLogger(__name__)
_ACTIONS: Final = frozenset(get_args(ActivityAction))
_CURSOR = re.compile(r"a([0-9]{1,18})")


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class ActivityEntry:
    """One recorded change to one document.

    ``version`` is the version the change committed (``None`` for a delete); ``at`` is
    timezone-aware. Ids are checked like `DocumentKey`'s (`ValidationError`); a naive
    ``at``, an unknown action or a version below 1 is a `ConfigurationError`. The
    summary is cut to `MAX_SUMMARY_LENGTH` characters, and NUL or lone surrogates in
    text (which no store holds alike) become U+FFFD.
    """

    action: ActivityAction
    user_id: str
    layout_id: str = "default"
    version: int | None = None
    device_id: str | None = None
    at: datetime = field(default_factory=_now)
    summary: str = ""

    def __post_init__(self) -> None:
        DocumentKey(self.user_id, self.layout_id)
        if self.action not in _ACTIONS:
            raise ConfigurationError(
                f"unknown activity action {self.action!r}; one of {', '.join(sorted(_ACTIONS))}"
            )
        if self.version is not None and (
            not isinstance(self.version, int) or isinstance(self.version, bool) or self.version < 1
        ):
            raise ConfigurationError("an activity entry's version must be an int >= 1 or None")
        if self.at.utcoffset() is None:
            raise ConfigurationError("an activity entry's time must be timezone-aware")
        summary = clean_text(self.summary)
        if len(summary) > MAX_SUMMARY_LENGTH:
            summary = summary[: MAX_SUMMARY_LENGTH - 1] + "\u2026"
        object.__setattr__(self, "summary", summary)
        if self.device_id is not None:
            object.__setattr__(self, "device_id", clean_text(self.device_id))
        object.__setattr__(self, "at", self.at.astimezone(UTC))


@dataclass(frozen=True, slots=True)
class ActivityPage:
    """A page of a user's activity, newest first.

    ``next_cursor`` is what to pass as ``before`` for the next (older) page; ``None`` on
    the last page.
    """

    entries: list[ActivityEntry]
    next_cursor: str | None


class ActivityLog(Protocol):
    """Where the activity of every user is recorded and read back, a user at a time."""

    def record(self, entry: ActivityEntry) -> None:
        """Append *entry* to its user's log."""
        ...

    def record_many(self, entries: Sequence[ActivityEntry]) -> None:
        """Append *entries*, in order, each to its user's log, in as few writes as the
        store allows."""
        ...

    def entries(self, user_id: str, *, limit: int = 20, before: str | None = None) -> ActivityPage:
        """Return up to *limit* of *user_id*'s entries, newest first, older than *before*.

        *before* is a cursor from an earlier page (``None``: start at the newest). Entries
        recorded after that page was read never appear on the pages that follow it, and
        none is skipped or repeated. A malformed cursor raises `ValidationError`; a
        *limit* outside 1 to `MAX_PAGE_SIZE`, `ConfigurationError`.
        """
        ...


# -- cursors -----------------------------------------------------------------------------


def _encode_cursor(position: int) -> str:
    return f"a{position}"


def _decode_cursor(cursor: str | None) -> int | None:
    """Return the position a cursor stands for; entries strictly below it come next."""
    if cursor is None:
        return None
    match = _CURSOR.fullmatch(cursor) if isinstance(cursor, str) else None
    if match is None:
        raise ValidationError(
            [ValidationIssue("before", "cursor", "not a cursor from an earlier activity page")]
        )
    return int(match.group(1))


def _check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise ConfigurationError(f"limit must be an int from 1 to {MAX_PAGE_SIZE}")


def _page(entries: list[tuple[int, ActivityEntry]], limit: int) -> ActivityPage:
    """Build a page from up to limit + 1 (position, entry) pairs, newest first."""
    shown = entries[:limit]
    more = len(entries) > limit
    return ActivityPage(
        entries=[entry for _, entry in shown],
        next_cursor=_encode_cursor(shown[-1][0]) if more else None,
    )


# -- memory ------------------------------------------------------------------------------


class MemoryActivityLog:
    """Keep the activity log in this process's memory (for `MemoryStorage`)."""

    def __init__(self) -> None:
        self._entries: dict[str, list[ActivityEntry]] = {}
        self._lock = threading.Lock()

    def record(self, entry: ActivityEntry) -> None:
        """Append *entry* to its user's log."""
        self.record_many([entry])

    def record_many(self, entries: Sequence[ActivityEntry]) -> None:
        """Append *entries*, in order, each to its user's log."""
        with self._lock:
            for entry in entries:
                self._entries.setdefault(entry.user_id, []).append(entry)

    def entries(self, user_id: str, *, limit: int = 20, before: str | None = None) -> ActivityPage:
        """Return up to *limit* of *user_id*'s entries, newest first, older than *before*."""
        _check_limit(limit)
        below = _decode_cursor(before)
        with self._lock:
            log = self._entries.get(user_id, [])
            # Position n is the n-th entry recorded (from 1): positions never change.
            end = len(log) if below is None else min(below - 1, len(log))
            chosen = [(n + 1, log[n]) for n in range(end - 1, max(end - limit - 2, -1), -1)]
        return _page(chosen, limit)


# -- SQL ---------------------------------------------------------------------------------


class SQLActivityLog:
    """Keep the activity log in the ``dashpersist_activity`` table of a `SQLStorage`.

    The table comes with the storage's schema (revision 0002), so the storage must have
    opened the database first. The row id is the cursor; every statement names the user.
    """

    def __init__(self, store: Engine | SQLStorage) -> None:
        self._tables = SQLTables(store)
        sql = self._tables.sql
        self._insert = sql(
            "INSERT INTO dashpersist_activity (user_id, layout_id, action, version, device_id, "
            "created_at, summary) VALUES (?, ?, ?, ?, ?, ?, ?)"
        )
        self._select = sql(
            "SELECT id, layout_id, action, version, device_id, created_at, summary "
            "FROM dashpersist_activity WHERE user_id = ? AND id < ? ORDER BY id DESC LIMIT ?"
        )

    def record(self, entry: ActivityEntry) -> None:
        """Append *entry* to its user's log."""
        self.record_many([entry])

    def record_many(self, entries: Sequence[ActivityEntry]) -> None:
        """Append *entries*, in order, in one transaction."""
        if not entries:
            return
        self._tables.execute_many(
            self._insert,
            [
                (
                    entry.user_id,
                    entry.layout_id,
                    entry.action,
                    entry.version,
                    entry.device_id,
                    self._tables.time_to_db(entry.at),
                    entry.summary,
                )
                for entry in entries
            ],
            action="recording activity",
        )

    def entries(self, user_id: str, *, limit: int = 20, before: str | None = None) -> ActivityPage:
        """Return up to *limit* of *user_id*'s entries, newest first, older than *before*."""
        _check_limit(limit)
        below = _decode_cursor(before)
        rows = self._tables.query(
            self._select,
            (user_id, 2**62 if below is None else below, limit + 1),
            action="reading activity",
        )
        found: list[tuple[int, ActivityEntry]] = []
        for row_id, layout_id, action, version, device_id, created_at, summary in rows:
            if action not in _ACTIONS:
                raise CorruptStoreError(f"activity row {row_id} has an unknown action")
            at = self._tables.time_from_db(created_at, source=f"activity row {row_id}")
            found.append(
                (
                    int(row_id),
                    ActivityEntry(
                        action=cast(ActivityAction, action),
                        user_id=user_id,
                        layout_id=layout_id,
                        version=version,
                        device_id=device_id,
                        at=at,
                        summary=summary,
                    ),
                )
            )
        return _page(found, limit)


# -- JSON folder -------------------------------------------------------------------------

_CHUNK: Final = 1 << 16


class JSONFileActivityLog:
    """Keep the activity log in a JSON folder: ``<root>/.activity/<user stem>.jsonl``.

    One JSON object per line, appended and fsynced under a lock other processes respect.
    A line without its newline is the remnant of a crash mid-append: readers ignore it,
    and the next append cuts it off first. The cursor is a line's byte offset, which
    appends never move. A complete line that does not parse, or names another user,
    raises `CorruptStoreError` naming the file, which is left as found.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self._files = UserFiles(Path(os.path.abspath(os.fspath(root))), ".activity", ".jsonl")

    def record(self, entry: ActivityEntry) -> None:
        """Append *entry* to its user's log."""
        self.record_many([entry])

    def record_many(self, entries: Sequence[ActivityEntry]) -> None:
        """Append *entries*, in order: one append and one fsync per user's file."""
        lines: dict[str, list[bytes]] = {}
        for entry in entries:
            lines.setdefault(entry.user_id, []).append(_encode_line(entry))
        for user_id, encoded in lines.items():
            self._append(self._files.path(user_id), b"".join(encoded))

    def _append(self, path: Path, encoded: bytes) -> None:
        with self._files.locked(path):
            fd = open_regular(path, os.O_RDWR | os.O_CREAT)
            assert fd is not None  # O_CREAT: it exists now
            try:
                with os_errors(path, "append to"):
                    size = os.fstat(fd).st_size
                    end = _complete_end(fd, size)
                    if end != size:
                        os.ftruncate(fd, end)  # the torn tail of a crashed append
                    os.lseek(fd, end, os.SEEK_SET)
                    write_all(fd, encoded)
                    os.fsync(fd)
            finally:
                os.close(fd)
            if end == 0:  # the file may be new: make its name durable too
                sync_folder(path.parent)

    def entries(self, user_id: str, *, limit: int = 20, before: str | None = None) -> ActivityPage:
        """Return up to *limit* of *user_id*'s entries, newest first, older than *before*."""
        _check_limit(limit)
        below = _decode_cursor(before)
        path = self._files.path(user_id)
        fd = open_regular(path, os.O_RDONLY)
        if fd is None:
            return ActivityPage(entries=[], next_cursor=None)
        found: list[tuple[int, ActivityEntry]] = []
        try:
            with os_errors(path, "read"):
                size = os.fstat(fd).st_size
                end = size if below is None else min(below, size)
                for offset, line in _lines_backwards(fd, end):
                    found.append((offset, _decode_line(line, path, user_id, offset)))
                    if len(found) > limit:
                        break
        finally:
            os.close(fd)
        return _page(found, limit)


def _encode_line(entry: ActivityEntry) -> bytes:
    line: JsonObject = {
        "action": entry.action,
        "at": entry.at.isoformat(),
        "device_id": entry.device_id,
        "layout_id": entry.layout_id,
        "summary": entry.summary,
        "user_id": entry.user_id,
        "version": entry.version,
    }
    return canonical_json(line) + b"\n"


def _complete_end(fd: int, size: int) -> int:
    """Return where the last complete line of the first *size* bytes ends (0: none)."""
    if size > 0 and os.pread(fd, 1, size - 1) == b"\n":
        return size
    position = size
    while position > 0:
        start = max(0, position - _CHUNK)
        chunk = os.pread(fd, position - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        position = start
    return 0


def _lines_backwards(fd: int, end: int) -> Iterator[tuple[int, bytes]]:
    """Yield (offset, line) for the complete lines that end by *end*, last first."""
    limit = _complete_end(fd, end)  # bytes after it belong to a line that ends later
    buffer = b""
    buffer_start = limit
    while limit > 0:
        # buffer holds [buffer_start, limit), whose last byte is a newline.
        newline = buffer.rfind(b"\n", 0, len(buffer) - 1)
        if newline < 0 and buffer_start > 0:
            start = max(0, buffer_start - _CHUNK)
            buffer = os.pread(fd, buffer_start - start, start) + buffer
            buffer_start = start
            continue
        line_start = newline + 1  # 0 when the buffer reaches the file's start
        yield buffer_start + line_start, buffer[line_start:-1]
        buffer = buffer[:line_start]
        limit = buffer_start + line_start


def _decode_line(line: bytes, path: Path, user_id: str, offset: int) -> ActivityEntry:
    where = f"{path} (line at byte {offset})"
    try:
        raw = parse_json(line, source=where)
    except CorruptStoreError as exc:
        raise CorruptStoreError(f"{exc}; it was left as found", path=path) from exc
    if not isinstance(raw, dict) or raw.get("user_id") != user_id:
        raise CorruptStoreError(f"{where} is not an entry of this user's log", path=path)
    try:
        return ActivityEntry(
            action=cast(ActivityAction, _text(raw, "action")),
            user_id=user_id,
            layout_id=_text(raw, "layout_id"),
            version=cast("int | None", raw.get("version")),
            device_id=cast("str | None", raw.get("device_id")),
            at=datetime.fromisoformat(_text(raw, "at")),
            summary=_text(raw, "summary"),
        )
    except (ValueError, TypeError) as exc:  # ValidationError, ConfigurationError included
        raise CorruptStoreError(f"{where} is not a valid activity entry", path=path) from exc


def _text(raw: dict[str, JsonValue], name: str) -> str:
    value = raw.get(name)
    if not isinstance(value, str):
        raise TypeError(name)
    return value


# -- choosing the implementation ---------------------------------------------------------

_LOGS: SidecarFactory[ActivityLog] = SidecarFactory(
    sql=SQLActivityLog, jsonfile=JSONFileActivityLog, memory=MemoryActivityLog
)


def activity_log_for(storage: object) -> ActivityLog:
    """Return the activity log kept in the same store as *storage*'s documents.

    `SQLStorage`: its database (through ``storage.engine``); `JSONFileStorage`: its folder
    (``storage.root``); a wrapper with an ``inner`` storage (such as
    `dashpersist.testing.FaultyStorage`): the inner store's; anything else, including
    `MemoryStorage`: memory, one log per storage object, so every manager of that
    object sees the same log.
    """
    return _LOGS(storage)


# -- recording off the caller's thread ---------------------------------------------------


class ActivityRecorder:
    """Record activity entries in batches, on a background thread, in the order given.

    A save's activity entry is housekeeping after the save committed; writing it at once
    cost a 50-widget SQLite save a second transaction (measured: a third of the whole
    save). `record` only queues the entry; the writer thread waits *linger* seconds for
    more and writes them together (`ActivityLog.record_many`: one transaction, or one
    fsync per user's file). One recorder serves the whole process (`shared`), so
    entries reach the logs in the order they were recorded, whichever manager recorded
    them. `flush` writes everything queued on the calling thread: readers that must see
    this process's entries (`PersistenceManager.get_activity`) and closing managers
    call it; other processes see the entries within *linger* seconds. The linger is long
    enough that a batch rarely holds a SQLite database's write lock when a save wants it
    (each collision costs the save at least a millisecond of SQLite's busy wait).

    ``record(..., now=True)`` (managers without background threads) queues and flushes
    at once. A batch the store refuses is logged and dropped, as a single entry was: the
    change it describes is committed and shows in the version history. An entry still
    queued when the process is killed is lost in the same way; at most *max_pending*
    wait, and beyond that the oldest are dropped with a warning.
    """

    def __init__(self, *, linger: float = 0.25, max_pending: int = 10_000) -> None:
        self._linger = linger
        self._max_pending = max_pending
        self._queued: list[tuple[ActivityLog, ActivityEntry]] = []
        self._changed = threading.Condition()
        self._writing = threading.Lock()  # one batch at a time keeps entries in order
        self._thread: threading.Thread | None = None

    @classmethod
    def shared(cls) -> ActivityRecorder:
        """Return this process's recorder."""
        return _SHARED[0]

    def record(self, log: ActivityLog, entry: ActivityEntry, *, now: bool = False) -> None:
        """Queue *entry* for *log*; with *now*, write it (and everything before it) at once."""
        with self._changed:
            self._queued.append((log, entry))
            if len(self._queued) > self._max_pending:
                dropped = len(self._queued) - self._max_pending
                del self._queued[:dropped]
                _LOG.warning(
                    "dropped %d queued activity entries: the store is not keeping up", dropped
                )
            if not now:
                self._start()
                if len(self._queued) == 1:
                    self._changed.notify()
        if now:
            self.flush()

    def flush(self) -> None:
        """Write every queued entry now, on this thread."""
        with self._writing:
            with self._changed:
                batch, self._queued = self._queued, []
            # Consecutive entries for one log go in one write; order is kept across logs.
            start = 0
            for end in range(1, len(batch) + 1):
                if end == len(batch) or batch[end][0] is not batch[start][0]:
                    _write(batch[start][0], [entry for _, entry in batch[start:end]])
                    start = end

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="dashpersist-activity", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: bool(self._queued))
            # Let the entries of a burst of saves gather into one batch.
            time.sleep(self._linger)
            self.flush()


def _write(log: ActivityLog, batch: list[ActivityEntry]) -> None:
    try:
        log.record_many(batch)
    except DashPersistError:
        _LOG.warning("could not record %d activity entries", len(batch), exc_info=True)


_SHARED = [ActivityRecorder()]


def _after_fork() -> None:
    # The writer thread does not exist in a forked child; its queue belongs to the parent.
    _SHARED[0] = ActivityRecorder()


os.register_at_fork(after_in_child=_after_fork)

"""Tables and files beside the documents, for the activity log and the widget data cache.

Both keep their data in the store the documents live in. In SQL they run statements on a
`SQLStorage`'s engine, written with ``?`` placeholders, times in the form SQLStorage
stores them, and driver errors translated as SQLStorage translates them. In a JSON
folder they keep one file per user in a dot-folder under the root, named by the same
hashed stem as the user's document folder (which `JSONFileStorage` never lists, because
a dot-name is not a stem), written under a file lock.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

import filelock
from sqlalchemy import Engine

from dashpersist._fsync import fsync_folder
from dashpersist.errors import (
    CorruptStoreError,
    DashPersistError,
    StorageError,
    StorageFullError,
    StoragePermissionError,
    StorageUnavailableError,
    ValidationError,
    ValidationIssue,
)
from dashpersist.storage._locks import LockPairs
from dashpersist.storage._sqlerrors import classify
from dashpersist.storage.jsonfile import _os_errors, _stem, _translated

if TYPE_CHECKING:
    from dashpersist.storage.sql import SQLStorage

__all__ = [
    "SQLTables",
    "UserFiles",
    "clean_text",
    "open_regular",
    "os_errors",
    "remove_file",
    "replace_atomically",
    "sync_folder",
    "write_all",
]

_NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)
_FILE_MODE: Final = 0o666  # narrowed by the process umask, like the documents' files
_LOCK_TIMEOUT: Final = 10.0  # seconds; JSONFileStorage's default
_LOCK_POLL_INTERVAL: Final = 0.002


def clean_text(text: str) -> str:
    """Return *text* with NUL and lone surrogates replaced by U+FFFD, which every store holds."""
    return "".join(
        "\ufffd" if char == "\x00" or "\ud800" <= char <= "\udfff" else char for char in text
    )


class SQLTables:
    """Run statements on a `SQLStorage`'s engine, one short transaction each.

    The engine stays the storage's: nothing here disposes of it.
    """

    def __init__(self, store: Engine | SQLStorage) -> None:
        # Given the storage, statements are refused once it is closed: its engine may be
        # disposed of, and a statement would open a connection nobody closes.
        self._storage = None if isinstance(store, Engine) else store
        engine = store if isinstance(store, Engine) else store.engine
        self._engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        self._where = engine.url.render_as_string(hide_password=True)

    def sql(self, statement: str) -> str:
        """Return *statement*, written with ``?`` placeholders, in the driver's style."""
        # psycopg's placeholder; none of the statements holds a literal '?' or '%'.
        return statement if self.is_sqlite else statement.replace("?", "%s")

    def query(self, statement: str, params: Sequence[Any], *, action: str) -> list[Sequence[Any]]:
        """Run the SELECT *statement* (in the driver's style); return its rows.

        Driver errors become `StorageUnavailableError`, `StorageFullError`,
        `StoragePermissionError`, `CorruptStoreError`, `ValidationError` or `StorageError`,
        with the original as ``__cause__``; messages hold no values.
        """
        rows, _ = self._run(statement, tuple(params), action, write=False)
        return rows

    def execute(self, statement: str, params: Sequence[Any], *, action: str) -> int:
        """Run *statement* (in the driver's style) and commit; return the rows it changed.

        Errors are translated as by `query`.
        """
        _, rowcount = self._run(statement, tuple(params), action, write=True)
        return rowcount

    def execute_many(self, statement: str, rows: Sequence[Sequence[Any]], *, action: str) -> int:
        """Run *statement* once per row of parameters, all in one transaction, and commit;
        return the rows it changed. Errors are translated as by `query`."""
        _, rowcount = self._run(statement, [tuple(row) for row in rows], action, write=True)
        return rowcount

    def _run(
        self,
        statement: str,
        params: tuple[Any, ...] | list[tuple[Any, ...]],
        action: str,
        *,
        write: bool,
    ) -> tuple[list[Sequence[Any]], int]:
        # SQLAlchemy's rule: a tuple is one row of parameters, a list many (executemany).
        # Refused once the storage is closed, and its close waits for us: a statement on a
        # disposed engine would leave a connection open. Writes are one transaction.
        borrowed = (
            self._engine.connect()
            if self._storage is None
            else self._storage.borrowed_connection(write=write)
        )
        try:
            with borrowed as conn:
                result = conn.exec_driver_sql(statement, params)
                rows: list[Sequence[Any]] = list(result.fetchall()) if result.returns_rows else []
                rowcount = result.rowcount
                conn.commit()
        except DashPersistError:
            raise
        except Exception as exc:
            raise self._translate(exc, action) from exc
        return rows, rowcount

    def time_to_db(self, moment: datetime) -> datetime | str:
        """Return *moment* (timezone-aware) as the database stores times: UTC."""
        moment = moment.astimezone(UTC)
        # SQLite has no timestamp type: ISO-8601 text in UTC at a fixed precision, as
        # SQLStorage writes it, which sorts and compares in time order.
        return moment.isoformat(timespec="microseconds") if self.is_sqlite else moment

    def time_from_db(self, value: object, *, source: str) -> datetime:
        """Return a stored time as an aware UTC datetime; `CorruptStoreError` if it is none."""
        try:
            moment = datetime.fromisoformat(value) if isinstance(value, str) else value
        except ValueError as exc:
            raise CorruptStoreError(f"{source} in {self._where} is not a time") from exc
        if not isinstance(moment, datetime) or moment.tzinfo is None:
            raise CorruptStoreError(f"{source} in {self._where} has no time zone")
        return moment.astimezone(UTC)

    def _translate(self, exc: BaseException, action: str) -> DashPersistError:
        kind, reason = classify(exc)  # one classification for all SQL errors
        message = f"{action} in {self._where} failed: {reason}"
        if kind == "invalid":
            return ValidationError(
                [ValidationIssue("$", "storable", f"the database refused a value ({reason})")]
            )
        if kind == "full":
            return StorageFullError(message)
        if kind == "permission":
            return StoragePermissionError(message)
        if kind == "corrupt":
            return CorruptStoreError(message)
        if kind in ("unavailable", "conflict"):
            return StorageUnavailableError(message)
        return StorageError(message)


class UserFiles:
    """One file per user in ``<root>/<folder>``, named ``<user stem><suffix>``.

    `locked` serializes writers of one user's file across threads and processes (a
    per-user `threading.Lock`, then a `filelock.FileLock` on a ``.lock`` file beside it).
    """

    def __init__(self, root: Path, folder: str, suffix: str) -> None:
        self.folder = root / folder
        self._suffix = suffix
        self._locks: LockPairs[str] = LockPairs()

    def path(self, user_id: str) -> Path:
        """Return the file that holds *user_id*'s data, whether or not it exists."""
        return self.folder / f"{_stem(user_id)}{self._suffix}"

    def paths(self) -> list[Path]:
        """Return every user's file that exists now."""
        with _os_errors(self.folder, "list"):
            try:
                names = sorted(os.listdir(self.folder))
            except FileNotFoundError:
                return []
        return [self.folder / name for name in names if name.endswith(self._suffix)]

    def ensure_folder(self) -> None:
        """Create the folder if it does not exist yet (its parent, the root, must)."""
        with _os_errors(self.folder, "create"), contextlib.suppress(FileExistsError):
            os.mkdir(self.folder)
            sync_folder(self.folder.parent)

    @contextlib.contextmanager
    def locked(self, path: Path) -> Iterator[None]:
        """Hold the locks of the user file *path* (made by `path`)."""
        self.ensure_folder()
        locks = self._locks.get(
            path.name,
            lambda: filelock.FileLock(
                path.with_name(path.name.removesuffix(self._suffix) + ".lock"),
                timeout=_LOCK_TIMEOUT,
                thread_local=False,
                poll_interval=_LOCK_POLL_INTERVAL,
                fallback_to_soft=False,
            ),
        )
        thread_lock, file_lock = locks.thread, locks.file
        if not thread_lock.acquire(timeout=_LOCK_TIMEOUT):
            raise _busy(path)
        try:
            try:
                with _os_errors(path, "lock"):
                    file_lock.acquire()
            except filelock.Timeout as exc:
                raise _busy(path) from exc
            try:
                yield
            finally:
                file_lock.release()
        finally:
            thread_lock.release()


def open_regular(path: Path, flags: int) -> int | None:
    """Open *path* without following links; ``None`` if it does not exist.

    Anything but a regular file raises `CorruptStoreError` and is left as found.
    """
    try:
        fd = os.open(path, flags | _NOFOLLOW | _CLOEXEC, _FILE_MODE)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _translated(exc, path, "open") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CorruptStoreError(f"{path} is not a regular file; it was left as found", path=path)
    return fd


def os_errors(path: Path, action: str) -> contextlib.AbstractContextManager[None]:
    """Translate an `OSError` inside the block as `JSONFileStorage` does, naming *path*."""
    return _os_errors(path, action)


def write_all(fd: int, data: bytes) -> None:
    """Write all of *data* to *fd*."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def replace_atomically(path: Path, data: bytes) -> None:
    """Replace *path* with *data*: a reader sees the old file or the new one, never a mix."""
    temp = path.with_name(f".tmp.{path.name}.{os.getpid()}.{threading.get_ident()}")
    with _os_errors(path, "write"):
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _NOFOLLOW | _CLOEXEC, _FILE_MODE)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            # os.replace() is atomic on POSIX and Windows: after a crash the folder holds
            # the old file or the new one, never a torn mix. Hence the fsync before it.
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
    sync_folder(path.parent)


def remove_file(path: Path) -> None:
    """Remove *path* (gone already is as good) and make that durable."""
    with _os_errors(path, "remove"), contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sync_folder(path.parent)


def sync_folder(folder: Path) -> None:
    """Make the folder's entries (a rename, a new file) durable."""
    with _os_errors(folder, "sync"):
        fsync_folder(folder)


def _busy(path: Path) -> StorageUnavailableError:
    return StorageUnavailableError(f"{path} stayed locked by another writer for {_LOCK_TIMEOUT} s")


T = TypeVar("T")


class SidecarFactory(Generic[T]):
    """Pick the implementation of a sidecar (activity log, widget cache) kept in the same
    store as a storage object's documents.

    `SQLStorage`: built on its engine; `JSONFileStorage`: on its folder; a wrapper with an
    ``inner`` storage (such as `dashpersist.testing.FaultyStorage`): the inner store's;
    anything else, including `MemoryStorage`: in memory, one per storage object, so every
    manager of that object shares it.
    """

    def __init__(
        self,
        *,
        sql: Callable[[SQLStorage], T],
        jsonfile: Callable[[Path], T],
        memory: Callable[[], T],
    ) -> None:
        self._sql = sql
        self._jsonfile = jsonfile
        self._memory = memory
        self._in_memory: weakref.WeakKeyDictionary[object, T] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def __call__(self, storage: object) -> T:
        """Return the sidecar for *storage*."""
        sql = sys.modules.get("dashpersist.storage.sql")  # not loaded: storage is no SQLStorage
        if sql is not None and isinstance(storage, sql.SQLStorage):
            return self._sql(storage)
        jsonfile = sys.modules.get("dashpersist.storage.jsonfile")
        if jsonfile is not None and isinstance(storage, jsonfile.JSONFileStorage):
            return self._jsonfile(storage.root)
        inner = getattr(storage, "inner", None)
        if inner is not None and inner is not storage:
            return self(inner)
        with self._lock:
            try:
                made = self._in_memory.get(storage)
            except TypeError:  # not weakly referenceable: one of its own
                return self._memory()
            if made is None:
                made = self._memory()
                self._in_memory[storage] = made
            return made

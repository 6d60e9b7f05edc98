"""What a database error means to dashpersist: one classification of SQLite,
PostgreSQL, SQLAlchemy and OS errors into kinds, with a reason that never quotes a
stored value. `SQLStorage` and the SQL sidecars (activity log, widget cache) share it."""

from __future__ import annotations

import errno
import sqlite3
from typing import Final, Literal

from sqlalchemy import exc as sa_exc

from dashpersist.errors import CorruptStoreError, StorageFullError, StoragePermissionError

__all__ = ["PATH_ERRORS", "Kind", "classify", "is_busy", "is_missing_table", "sqlite_code"]


Kind = Literal["conflict", "unavailable", "full", "permission", "corrupt", "invalid", "other"]

_SQLITE_KINDS: Final[dict[int, Kind]] = {
    sqlite3.SQLITE_PERM: "permission",
    sqlite3.SQLITE_BUSY: "unavailable",
    sqlite3.SQLITE_LOCKED: "unavailable",
    sqlite3.SQLITE_NOMEM: "unavailable",
    sqlite3.SQLITE_READONLY: "permission",
    sqlite3.SQLITE_CORRUPT: "corrupt",
    sqlite3.SQLITE_FULL: "full",
    sqlite3.SQLITE_CANTOPEN: "permission",
    sqlite3.SQLITE_TOOBIG: "invalid",
    sqlite3.SQLITE_CONSTRAINT: "conflict",
    sqlite3.SQLITE_MISMATCH: "invalid",
    sqlite3.SQLITE_AUTH: "permission",
    sqlite3.SQLITE_NOTADB: "corrupt",
}

PATH_ERRORS: Final[
    dict[Kind, type[StorageFullError | StoragePermissionError | CorruptStoreError]]
] = {
    "full": StorageFullError,
    "permission": StoragePermissionError,
    "corrupt": CorruptStoreError,
}

_PG_STATES: Final[dict[str, Kind]] = {
    "40001": "conflict",  # serialization_failure
    "40P01": "conflict",  # deadlock_detected
    "23505": "conflict",  # unique_violation
    "53100": "full",  # disk_full
    "53200": "unavailable",  # out_of_memory
    "53300": "unavailable",  # too_many_connections
    "55P03": "unavailable",  # lock_not_available
    "57014": "unavailable",  # query_canceled (statement_timeout)
    "57P01": "unavailable",  # admin_shutdown
    "57P02": "unavailable",  # crash_shutdown
    "57P03": "unavailable",  # cannot_connect_now
    "42501": "permission",  # insufficient_privilege
    "25006": "permission",  # read_only_sql_transaction (a standby)
    "42P01": "corrupt",  # undefined_table: our schema is gone
    "42703": "corrupt",  # undefined_column
    "XX001": "corrupt",  # data_corrupted
    "XX002": "corrupt",  # index_corrupted
}

_PG_STATE_CLASSES: Final[dict[str, Kind]] = {
    "08": "unavailable",  # connection_exception
    "22": "invalid",  # data_exception, e.g. \u0000 in jsonb
}

_OS_KINDS: Final[dict[int, Kind]] = {
    errno.ENOSPC: "full",
    errno.EDQUOT: "full",
    errno.EACCES: "permission",
    errno.EPERM: "permission",
    errno.EROFS: "permission",
}


def classify(exc: BaseException) -> tuple[Kind, str]:
    """Return the kind of failure *exc* is and a reason that holds no document values."""
    if (
        isinstance(exc, sa_exc.DBAPIError)
        and exc.orig is not None
        and not exc.connection_invalidated
    ):
        return classify(exc.orig)
    kind: Kind = "other"
    reason = type(exc).__name__
    if isinstance(exc, sa_exc.TimeoutError):
        kind, reason = "unavailable", "no free connection in the pool"
    elif isinstance(exc, sa_exc.DBAPIError):
        kind, reason = "unavailable", "the connection to the database was lost"
    elif isinstance(exc, UnicodeError):
        kind, reason = "invalid", "text that is not valid Unicode"
    elif isinstance(exc, sqlite3.Error):
        code = sqlite_code(exc)
        kind = "other" if code is None else _SQLITE_KINDS.get(code, "other")
        if kind == "other" and is_missing_table(exc):
            kind = "corrupt"
        # SQLite's messages name tables and columns, never values.
        reason = f"{getattr(exc, 'sqlite_errorname', reason)}: {exc}"
    elif isinstance(exc, OSError):
        kind, reason = _OS_KINDS.get(exc.errno or 0, "other"), f"{reason}: {exc.strerror}"
    elif type(exc).__module__.startswith("psycopg"):
        kind, reason = __classify_psycopg(exc)
    return kind, reason


def __classify_psycopg(exc: BaseException) -> tuple[Kind, str]:
    import psycopg

    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate is None:
        # Raised by the client: the server is unreachable, the connection is gone, or a
        # value psycopg can't send (NUL in text). Their messages hold no document values.
        kind: Kind = "other"
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            kind = "unavailable"
        elif isinstance(exc, psycopg.DataError):
            kind = "invalid"
        lines = str(exc).strip().splitlines()
        return kind, f"{type(exc).__name__}: {lines[0] if lines else ''}"
    # A server's message may quote the offending value: name only the SQLSTATE.
    kind = _PG_STATES.get(sqlstate) or _PG_STATE_CLASSES.get(sqlstate[:2], "other")
    return kind, f"SQLSTATE {sqlstate} ({type(exc).__name__})"


def is_missing_table(orig: BaseException | None) -> bool:
    if isinstance(orig, sqlite3.Error):
        return "no such table" in str(orig)
    return getattr(orig, "sqlstate", None) == "42P01"


def is_busy(exc: BaseException) -> bool:
    return sqlite_code(exc) == sqlite3.SQLITE_BUSY


def sqlite_code(exc: BaseException) -> int | None:
    """The primary result code of a sqlite3 error (its extended code, SQLITE_BUSY_*,
    without the detail), or ``None``."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(exc, sqlite3.Error) and isinstance(code, int) else None

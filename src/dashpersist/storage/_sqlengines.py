"""How `SQLStorage` makes and configures its engines: which drivers it takes, SQLite's
pragmas (WAL, busy timeout, ``synchronous``), and PostgreSQL's connect and operation
timeouts."""

from __future__ import annotations

import math
import sqlite3
import threading
import weakref
from pathlib import Path
from typing import Final, cast

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_random_exponential

from dashpersist.errors import ConfigurationError
from dashpersist.storage._deadline import (
    connect_timeout_for,
    enforce_operation_timeout,
    split_operation_timeout,
)
from dashpersist.storage._sqlerrors import is_busy

__all__ = [
    "OURS_OPTION",
    "check_driver",
    "check_folder",
    "configure_sqlite_engine",
    "make_engine",
    "sqlite_path",
]

OURS_OPTION: Final = "dashpersist_storage"
"""Execution option marking SQLStorage's own connections (see `configure_sqlite_engine`)."""

_configured_engines: weakref.WeakSet[Engine] = weakref.WeakSet()
_configured_lock = threading.Lock()


def make_engine(url_text: str, busy_timeout: float, connect_timeout: float | None) -> Engine:
    try:
        url = make_url(url_text)
    except sa_exc.ArgumentError as exc:
        raise ConfigurationError("not a database URL (see dashpersist.open_storage)") from exc
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    check_driver(url)
    if url.get_backend_name() == "sqlite":
        return create_engine(
            url,
            connect_args={"timeout": busy_timeout},
            pool_timeout=connect_timeout_for(None, connect_timeout),
        )
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            "PostgreSQL needs psycopg 3: pip install 'dashpersist[postgres]'"
        ) from exc
    url, operation_timeout = split_operation_timeout(url)
    # libpq's own URL option: read here, so that it bounds the pool's wait too, and is
    # not overridden by the connect_args below (which would otherwise win).
    connect_timeout = connect_timeout_for(url.query.get("connect_timeout"), connect_timeout)
    engine = create_engine(
        url,
        # With a deadline, the ping runs inside its watched window instead (_deadline.py).
        pool_pre_ping=not operation_timeout,
        pool_timeout=connect_timeout,
        connect_args={"connect_timeout": max(2, math.ceil(connect_timeout))},
    )
    if operation_timeout:
        enforce_operation_timeout(engine, operation_timeout)
    return engine


def check_driver(url: URL) -> None:
    backend, driver = url.get_backend_name(), url.get_driver_name()
    if (backend, driver) not in (("sqlite", "pysqlite"), ("postgresql", "psycopg")):
        raise ConfigurationError(
            f"SQLStorage supports sqlite:// (sqlite3) and postgresql:// (psycopg 3), "
            f"not {backend}+{driver}"
        )
    if backend == "sqlite" and url.database in (None, "", ":memory:"):
        raise ConfigurationError(
            "an in-memory SQLite database lives in one connection; use MemoryStorage"
        )


def check_folder(path: Path | None) -> None:
    if path is not None and not path.parent.is_dir():
        raise ConfigurationError(f"the folder {path.parent} of the SQLite database does not exist")


def sqlite_path(url: URL) -> Path | None:
    database = url.database or ""
    if database.startswith("file:") or url.query.get("uri"):
        return None  # a sqlite3 URI: its options are the caller's business
    return Path(database).absolute()


def configure_sqlite_engine(
    engine: Engine, synchronous: str, busy_timeout: float, *, shared: bool
) -> None:
    """Install, once, the listeners that make *engine* behave as SQLStorage needs.

    SQLStorage takes transaction control away from the sqlite3 module, whose legacy mode
    issues no BEGIN before a SELECT and never a BEGIN IMMEDIATE: each connection is put in
    autocommit mode and SQLStorage says BEGIN IMMEDIATE itself. On a *shared* engine (one
    the caller passed in), a ``begin`` listener gives every other user of the engine the
    plain BEGIN SQLAlchemy's transactions expect. Owned engines do without it, because any
    connection event listener puts every statement through SQLAlchemy's event dispatch.
    """
    busy_ms = round(busy_timeout * 1000)

    def on_checkout(
        dbapi_connection: DBAPIConnection,
        record: ConnectionPoolEntry,
        proxy: PoolProxiedConnection,
    ) -> None:
        # On checkout rather than on connect: a shared engine may hold connections that
        # were opened before SQLStorage saw it.
        if record.info.get(OURS_OPTION):
            return
        connection = cast(sqlite3.Connection, dbapi_connection)
        connection.isolation_level = None
        connection.execute(f"PRAGMA busy_timeout={busy_ms}").close()
        _enter_wal_mode(connection, busy_timeout)
        connection.execute(f"PRAGMA synchronous={synchronous}").close()
        record.info[OURS_OPTION] = True

    def on_begin(conn: Connection) -> None:
        if not conn.get_execution_options().get(OURS_OPTION):
            conn.exec_driver_sql("BEGIN")

    with _configured_lock:
        if engine in _configured_engines:
            return
        event.listen(engine, "checkout", on_checkout)
        if shared:
            event.listen(engine, "begin", on_begin)
        _configured_engines.add(engine)


def _enter_wal_mode(connection: sqlite3.Connection, busy_timeout: float) -> None:
    """Put the database in WAL mode, retrying for up to *busy_timeout* seconds while
    another connection holds a lock.

    Switching a database out of rollback mode needs an exclusive lock, and SQLite does
    not wait for one in its busy handler: a connection holding a shared lock would
    deadlock with the writer it waits for, so it gets SQLITE_BUSY at once. Processes
    opening a fresh database together meet exactly that; the statement releases its
    lock when it fails, so trying again from outside makes progress.
    """
    for attempt in Retrying(
        retry=retry_if_exception(is_busy),
        stop=stop_after_delay(busy_timeout),
        wait=wait_random_exponential(multiplier=0.002, max=0.1),
        reraise=True,
    ):
        with attempt:
            connection.execute("PRAGMA journal_mode=WAL").close()

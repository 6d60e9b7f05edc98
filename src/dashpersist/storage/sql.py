"""SQLStorage: documents and their history in SQLite or PostgreSQL, through SQLAlchemy Core.

One table holds each document's current version (``dashpersist_documents``), another its
history (``dashpersist_versions``); a write updates the first and appends to the second in
one transaction, as a compare-and-swap on ``(version, checksum)``. The schema ships as
Alembic migrations in `dashpersist.storage.migrations` and is brought up to date on open.

The hot path runs hand-written SQL through ``exec_driver_sql`` on pooled connections: it
keeps SQLAlchemy's events, pooling and error wrapping, and skips statement compilation.
On SQLite, where this object's writes take turns anyway, they share one kept connection.
"""

from __future__ import annotations

import contextlib
import math
import os
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Final, Literal, Protocol, cast, get_args

from sqlalchemy import Connection, Engine, inspect
from sqlalchemy import exc as sa_exc

from dashpersist import _faults
from dashpersist._canonical import canonical_json, parse_json
from dashpersist.errors import (
    ConfigurationError,
    ConflictError,
    CorruptStoreError,
    DashPersistError,
    NotFoundError,
    StorageError,
    StorageUnavailableError,
    ValidationError,
    ValidationIssue,
)
from dashpersist.notify import CHANNEL, encode_change, new_origin
from dashpersist.storage._deadline import (
    connect_timeout_for,
    lift_deadline,
)
from dashpersist.storage._sqlengines import (
    OURS_OPTION,
    check_driver,
    check_folder,
    configure_sqlite_engine,
    make_engine,
    sqlite_path,
)
from dashpersist.storage._sqlerrors import PATH_ERRORS, classify, is_missing_table
from dashpersist.storage.migrations import (
    HEAD_REVISION,
    KNOWN_REVISIONS,
    VERSION_TABLE,
    upgrade_schema,
)
from dashpersist.storage.protocol import (
    DocumentKey,
    PreparedImport,
    PreparedWrite,
    StoredDocument,
    VersionOutline,
    VersionRecord,
    prepare_import,
    prepare_write,
)
from dashpersist.types import ChangeType, JsonObject, JsonPatch, JsonValue

__all__ = ["SQLStorage", "SynchronousMode"]

SynchronousMode = Literal["OFF", "NORMAL", "FULL", "EXTRA"]
"""SQLite's ``PRAGMA synchronous`` levels."""

_OUR_TABLES: Final = frozenset({"dashpersist_documents", "dashpersist_versions"})
_SELECT_REVISION: Final = "SELECT version_num FROM dashpersist_alembic_version"

_SCHEMA_LOCK_ID: Final = 0x6461736870657273
"""PostgreSQL advisory lock held while upgrading the schema ("dashpers" in ASCII)."""


def _now() -> datetime:
    return datetime.now(UTC)


class SQLStorage:
    """Keep documents and their history in SQLite or PostgreSQL.

    *url_or_engine* is a URL (``sqlite:///dash.db``, ``postgresql://user@host/db``; plain
    ``postgresql://`` and ``postgres://`` use psycopg 3, which is imported only then) or an
    `Engine` for one of those. An engine passed in stays the caller's: `close` does not
    dispose of it. A SQLite engine passed in is configured for SQLStorage for good (WAL,
    pragmas, and SQLStorage's own ``BEGIN`` handling, described below).

    SQLite runs in WAL mode with *synchronous* (``PRAGMA synchronous``) at ``NORMAL`` by
    default: a committed save survives a crash of the process, and the database is never
    corrupted, but the last saves before an operating-system crash or a power loss may be
    rolled back. ``FULL`` also keeps those (an fsync per commit, ≈1.5x slower at 50
    widgets); ``OFF`` is for throwaway data only. SQLStorage takes transaction control away
    from the ``sqlite3`` module: a write starts with ``BEGIN IMMEDIATE``, so it waits up to
    *busy_timeout* seconds for the write lock up front and never fails half-way; a read is
    a single statement and waits for nobody. A database in a folder that does not exist is
    a `ConfigurationError`; SQLStorage never creates folders. ``sqlite://`` (in memory) is
    refused: use `MemoryStorage`.

    PostgreSQL: *connect_timeout* (default 5 s; also a query option of the URL,
    ``?connect_timeout=10``, as libpq has it) bounds connecting (libpq counts whole
    seconds, at least 2) and the wait for a pooled connection; stale pooled connections
    (after a server restart) are detected before use. With
    *notify_changes* (the default), every document write, import and delete also sends
    ``NOTIFY dashpersist_changes`` in its transaction, for `dashpersist.notify.ChangeListener`
    in other processes; SQLite has no such channel and ignores it.

    Opening checks the database (SQLite: ``PRAGMA quick_check``, which reads the whole
    file), then its schema revision with one SELECT, and runs the migrations only when it
    is behind, under a lock other processes opening the same database wait for.

    Raises: `ConfigurationError` (bad URL or options, missing folder, a schema newer than
    this library), `CorruptStoreError` (not a database, damaged, or our tables without a
    schema revision; the file is left as it was), `StoragePermissionError`,
    `StorageUnavailableError`.

    Every method translates driver errors: `StorageUnavailableError` (busy or locked past
    *busy_timeout*, server unreachable, pool exhausted for *connect_timeout*),
    `ConflictError` (a concurrent writer won: stale version, PostgreSQL serialization
    failure or deadlock, a race to create the same version), `StorageFullError`,
    `StoragePermissionError`, `CorruptStoreError`, and `ValidationError` for a value the
    database can't hold. The original error is the ``__cause__``.
    """

    def __init__(
        self,
        url_or_engine: str | Engine,
        *,
        synchronous: SynchronousMode = "NORMAL",
        busy_timeout: float = 5.0,
        connect_timeout: float | None = None,
        clock: Callable[[], datetime] | None = None,
        notify_changes: bool = True,
    ) -> None:
        if synchronous not in get_args(SynchronousMode):
            raise ConfigurationError(
                f"synchronous must be one of {', '.join(get_args(SynchronousMode))}"
            )
        if not (busy_timeout >= 0 and math.isfinite(busy_timeout)):
            raise ConfigurationError("busy_timeout must be a finite number of seconds >= 0")
        connect_timeout_for(None, connect_timeout)  # refuses a bad value, engine or URL
        self._clock = clock or _now
        self._closed = False
        self._borrowers = threading.Condition()
        self._borrowed = 0
        self._local_writer: threading.Lock | None = None  # SQLite: set below
        self._writer: _HeldWriter | None = None  # SQLite with an engine of our own
        if isinstance(url_or_engine, Engine):
            check_driver(url_or_engine.url)
            self._owns_engine = False
            self._engine = url_or_engine
        else:
            self._owns_engine = True
            self._engine = make_engine(url_or_engine, busy_timeout, connect_timeout)
        self._is_sqlite = self._engine.dialect.name == "sqlite"
        if self._is_sqlite:
            self._local_writer = threading.Lock()
        self._notify_changes = notify_changes and not self._is_sqlite  # see _notify_change
        self._change_origin = new_origin()
        self._path = sqlite_path(self._engine.url) if self._is_sqlite else None
        self._where = (
            str(self._path)
            if self._path is not None
            else self._engine.url.render_as_string(hide_password=True)
        )
        self._sql = _Statements(sqlite=self._is_sqlite)
        self._connectable = self._engine.execution_options(**{OURS_OPTION: True})
        if self._is_sqlite and self._owns_engine:
            self._writer = _HeldWriter(self._connectable)
        try:
            if self._is_sqlite:
                check_folder(self._path)
                configure_sqlite_engine(
                    self._engine, synchronous, busy_timeout, shared=not self._owns_engine
                )
                self._check_integrity()
            self._open_schema()
        except BaseException:
            self._dispose()
            raise

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine in use, for inspection and event hooks (auditing, tests)."""
        return self._engine

    # -- change notifications (dashpersist.notify): the one hook, PostgreSQL only ----------

    @property
    def change_origin(self) -> str:
        """The id this object's change notifications carry, to tell its own writes apart."""
        return self._change_origin

    def _notify_change(
        self, conn: Connection, key: DocumentKey, version: int | None, device_id: str | None
    ) -> None:
        """Queue a change notification in *conn*'s open write transaction (PostgreSQL).

        PostgreSQL delivers it only if that transaction commits, so listeners never hear
        of a write that was rolled back. *version* ``None`` means deleted.
        """
        if self._notify_changes:
            payload = encode_change(key, version, device_id, origin=self._change_origin)
            conn.exec_driver_sql("SELECT pg_notify(%s, %s)", (CHANNEL, payload))

    def __repr__(self) -> str:
        return f"SQLStorage({self._where!r})"

    # -- the Storage protocol ------------------------------------------------------------

    def read(self, key: DocumentKey) -> StoredDocument | None:
        """Return the current version of *key*, or ``None``; the document is a fresh copy."""
        self._check_open()
        with self._translated(key=key, action="reading"), self._connectable.connect() as conn:
            rows = self._runner(conn)(self._sql.read_document, (key.user_id, key.layout_id))
            found = rows.fetchall()
        if not found:
            return None
        version, digest, schema_version, body, updated_at = found[0]
        document = self._parse(body, source=f"the stored body of {key}")
        if not isinstance(document, dict):
            raise CorruptStoreError(
                f"the stored body of {key} is not a JSON object", path=self._path
            )
        return StoredDocument(
            key=key,
            document=document,
            version=version,
            checksum=digest,
            updated_at=self._time_from_db(updated_at, key),
            schema_version=schema_version,
        )

    def write(
        self,
        key: DocumentKey,
        document: JsonObject,
        record: VersionRecord | None = None,
        *,
        expected_version: int | None,
    ) -> int:
        """Store *document* and its history *record* in one transaction, if *key* is still
        at *expected_version* (``None``: must not exist yet); return the new version.

        On a mismatch, raise `ConflictError` and change nothing. Without a *record*, a
        keyframe record of change type ``manual`` is written. Record times must be
        timezone-aware (`ConfigurationError` otherwise); they are stored in UTC.
        """
        self._check_open()
        if record is not None:
            _check_record_text(record)
        with self._translated(key=key, action="writing", expected_version=expected_version):
            version = self._write_transaction(key, document, record, expected_version)
            _faults.faultpoint("after_commit_before_ack")
        return version

    def delete(self, key: DocumentKey) -> None:
        """Remove the document and its history; raise `NotFoundError` if it does not exist."""
        self._check_open()
        ids = (key.user_id, key.layout_id)
        with self._translated(key=key, action="deleting"), self._write_connection() as conn:
            self._begin_write(conn)
            if conn.exec_driver_sql(self._sql.delete_document, ids).rowcount != 1:
                raise NotFoundError(f"{key} does not exist")
            conn.exec_driver_sql(self._sql.delete_versions, ids)
            self._notify_change(conn, key, None, None)
            conn.commit()

    def layout_ids(self, user_id: str) -> list[str]:
        """Return the layout ids *user_id* has, sorted by code point."""
        self._check_open()
        try:
            DocumentKey(user_id)
        except ValidationError:
            return []  # no document can belong to an id DocumentKey refuses
        with (
            self._translated(key=None, action="listing layouts"),
            self._connectable.connect() as conn,
        ):
            rows = self._runner(conn)(self._sql.layout_ids, (user_id,)).fetchall()
        # Sorted here, not by the database, whose collation may not be code-point order.
        return sorted(row[0] for row in rows)

    def user_ids(self) -> list[str]:
        """Return every user id that has at least one document, sorted by code point.

        Its statement is the one that names no owner: it lists the owners, for
        administration (export, migration, whole-store checks).
        """
        self._check_open()
        with (
            self._translated(key=None, action="listing the users of"),
            self._connectable.connect() as conn,
        ):
            rows = self._runner(conn)(self._sql.user_ids, ()).fetchall()
        # Sorted here, not by the database, whose collation may not be code-point order.
        return sorted(row[0] for row in rows)

    def versions(
        self, key: DocumentKey, *, before: int | None = None, limit: int = 20
    ) -> list[VersionRecord]:
        """Return up to *limit* history records of *key*, newest first, below *before*."""
        self._check_open()
        if limit <= 0:
            return []
        below = before if before is not None else 2**62
        with (
            self._translated(key=key, action="reading history"),
            self._connectable.connect() as conn,
        ):
            rows = self._runner(conn)(
                self._sql.read_versions, (key.user_id, key.layout_id, below, limit)
            ).fetchall()
        return [self._record_from_row(key, row) for row in rows]

    def version_outline(
        self, key: DocumentKey, *, before: int | None = None
    ) -> list[VersionOutline]:
        """Return version, label and keyframe flag of *key*'s records below *before*,
        newest first, reading neither patches nor snapshots."""
        self._check_open()
        below = before if before is not None else 2**62
        with (
            self._translated(key=key, action="reading history"),
            self._connectable.connect() as conn,
        ):
            rows = self._runner(conn)(
                self._sql.read_outline, (key.user_id, key.layout_id, below)
            ).fetchall()
        return [
            VersionOutline(int(version), label, bool(keyframe)) for version, label, keyframe in rows
        ]

    def compact(
        self,
        key: DocumentKey,
        *,
        remove: Collection[int],
        snapshots: Mapping[int, JsonObject],
    ) -> None:
        """Apply retention to *key*'s history in one transaction.

        Store each of *snapshots* as the snapshot of the history record with that version,
        then delete the records *remove* names. The current document is never touched;
        removing the newest record is a `ConfigurationError`. Versions that do not exist
        are ignored, and so is a document that does not exist.
        """
        self._check_open()
        ids = (key.user_id, key.layout_id)
        encoded = [
            (canonical_json(snapshot).decode(), *ids, version)
            for version, snapshot in snapshots.items()
        ]
        with (
            self._translated(key=key, action="compacting the history of"),
            self._write_connection() as conn,
        ):
            self._begin_write(conn)
            current = conn.exec_driver_sql(self._sql.read_current, ids).first()
            if current is None:
                return
            if current[0] in remove:
                raise ConfigurationError(f"the newest version of {key} cannot be removed")
            if encoded:
                conn.exec_driver_sql(self._sql.store_snapshot, encoded)
            if remove:
                conn.exec_driver_sql(
                    self._sql.delete_version, [(*ids, version) for version in remove]
                )
            conn.commit()

    def import_document(
        self, key: DocumentKey, current: StoredDocument, history: list[VersionRecord]
    ) -> None:
        """Store *current* and its *history* exactly as given, in one transaction.

        Raises `ConflictError` and writes nothing if *key* exists, and `ValidationError`
        for a document or history `prepare_import` refuses or text a database can't store.
        """
        self._check_open()
        prepared = prepare_import(key, current, history)
        for record in history:
            _check_record_text(record)
        ids = (key.user_id, key.layout_id)
        rows = self._history_rows(key, prepared)
        with (
            self._translated(key=key, action="importing", expected_version=None),
            self._write_connection() as conn,
        ):
            self._begin_write(conn)
            found = conn.exec_driver_sql(self._sql.read_current, ids).first()
            if found is not None:
                raise ConflictError(key, expected_version=None, actual_version=found[0])
            inserted = conn.exec_driver_sql(
                self._sql.insert_document,
                (
                    *ids,
                    current.version,
                    current.checksum,
                    current.schema_version,
                    prepared.body.decode(),
                    self._time_to_db(current.updated_at),
                ),
            ).rowcount
            if inserted != 1:
                # PostgreSQL: another importer committed the same key after our SELECT.
                latest = conn.exec_driver_sql(self._sql.read_current, ids).first()
                raise ConflictError(
                    key, expected_version=None, actual_version=None if latest is None else latest[0]
                )
            conn.exec_driver_sql(self._sql.insert_version, rows)
            self._notify_change(conn, key, current.version, None)
            conn.commit()

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        return self._closed

    @contextmanager
    def borrowed_connection(self, *, write: bool = False) -> Iterator[Connection]:
        """A connection for statements of your own (the activity log and the widget cache
        use it), to commit before the block ends.

        `close` waits until borrowed connections are back, and once it is called this
        raises `ConfigurationError` instead of opening a connection nobody would close.
        With *write*, the connection is in a write transaction: on SQLite, BEGIN IMMEDIATE
        (so a batch of statements is one transaction), and this object's own writes wait
        on a Python lock until you are done, rather than in SQLite's busy handler.
        """
        with self._borrowers:
            if self._closed:
                raise ConfigurationError(f"{self._where} is closed")
            self._borrowed += 1
        try:
            if write:
                with self._write_connection() as conn:
                    self._begin_write(conn)
                    yield conn
            else:
                with self._connectable.connect() as conn:
                    yield conn
        finally:
            with self._borrowers:
                self._borrowed -= 1
                self._borrowers.notify_all()

    def close(self) -> None:
        """Release the connections; dispose of the engine if this object created it.

        Waits for connections lent by `borrowed_connection`. Idempotent. Later calls
        raise `ConfigurationError`.
        """
        with self._borrowers:
            if self._closed:
                return
            self._closed = True
            self._borrowers.wait_for(lambda: self._borrowed == 0)
        self._dispose()

    def _write_transaction(
        self,
        key: DocumentKey,
        document: JsonObject,
        record: VersionRecord | None,
        expected_version: int | None,
    ) -> int:
        sql = self._sql
        ids = (key.user_id, key.layout_id)

        def prepare(current: tuple[int, str] | None) -> PreparedWrite:
            return prepare_write(
                key,
                document,
                record,
                expected_version=expected_version,
                current=current,
                clock=self._clock,
            )

        with self._write_connection() as conn:
            commit = self._begin_write(conn, own=True)
            run = self._runner(conn)
            # A record continuing the chain says what the current version must be; the
            # UPDATE checks it (WHERE version and checksum), which spares the SELECT.
            assumed = _assumed_current(record, expected_version)
            prepared = None
            if assumed is not None:
                with contextlib.suppress(DashPersistError):
                    prepared = prepare(assumed)  # on a refusal, the SELECT path says why
            current: tuple[int, str] | None = assumed
            if prepared is None:
                found = run(sql.read_current, ids).fetchall()
                current = None if not found else (found[0][0], found[0][1])
                prepared = prepare(current)
            stored = prepared.record
            created_at = self._time_to_db(stored.created_at)
            body = prepared.body.decode()
            if current is None:
                changed = run(
                    sql.insert_document,
                    (
                        *ids,
                        stored.version,
                        stored.checksum,
                        stored.schema_version,
                        body,
                        created_at,
                    ),
                ).rowcount
            else:
                changed = run(
                    sql.update_document,
                    (
                        stored.version,
                        stored.checksum,
                        stored.schema_version,
                        body,
                        created_at,
                        *ids,
                        current[0],
                        current[1],
                    ),
                ).rowcount
            if changed != 1:
                # The store is not at the version (or content) the record follows, or, on
                # PostgreSQL (Read Committed), another writer committed after our SELECT:
                # the UPDATE re-checked its WHERE against the new row and matched none.
                latest = run(sql.read_current, ids).fetchall()
                prepare(None if not latest else (latest[0][0], latest[0][1]))  # says why
                raise ConflictError(
                    key,
                    expected_version=expected_version,
                    actual_version=latest[0][0] if latest else None,
                )
            _faults.faultpoint("after_layout_update_before_commit")
            patch, snapshot = prepared.encoded_patch, prepared.encoded_snapshot
            run(
                sql.insert_version,
                (
                    *ids,
                    stored.version,
                    stored.checksum,
                    stored.parent_checksum,
                    created_at,
                    stored.change_type,
                    stored.description,
                    stored.device_id,
                    stored.label,
                    stored.schema_version,
                    stored.idempotency_key,
                    _text(patch),
                    body if snapshot is prepared.body else _text(snapshot),
                ),
            )
            self._notify_change(conn, key, stored.version, stored.device_id)
            _faults.faultpoint("after_history_insert_before_commit")
            commit()
        return stored.version

    # -- opening -------------------------------------------------------------------------

    def _check_integrity(self) -> None:
        with (
            self._translated(key=None, action="checking the database"),
            self._connectable.connect() as conn,
        ):
            problems = [row[0] for row in conn.exec_driver_sql("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise CorruptStoreError(
                f"SQLite database {self._where} is damaged (quick_check: "
                f"{'; '.join(problems[:3])}); it was left as it is",
                path=self._path,
            )

    def _open_schema(self) -> None:
        revision = self._stored_revision()
        if revision == HEAD_REVISION:
            return
        with (
            self._translated(key=None, action="upgrading the schema"),
            self._write_connection() as conn,
        ):
            # An upgrade (or the wait for another process's) may take longer than the
            # operation deadline, which is for stuck calls, not slow work.
            lift_deadline(conn)
            self._begin_write(conn)
            if not self._is_sqlite:
                # Transaction-scoped: released by the commit or the rollback below.
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_ID,))
            tables = set(inspect(conn).get_table_names())
            revision = None
            if VERSION_TABLE in tables:
                row = conn.exec_driver_sql(_SELECT_REVISION).first()
                revision = None if row is None else row[0]
            if revision is None and tables & _OUR_TABLES:
                raise CorruptStoreError(
                    f"{self._where} has dashpersist tables but no schema revision in "
                    f"{VERSION_TABLE}; it was left as it is",
                    path=self._path,
                )
            if revision == HEAD_REVISION:
                return  # another process upgraded it while we waited for the lock
            self._check_known(revision)
            upgrade_schema(conn)
            conn.commit()

    def _stored_revision(self) -> str | None:
        """Return the schema revision with one SELECT (``None``: no version table yet)."""
        try:
            with self._connectable.connect() as conn:
                row = conn.exec_driver_sql(_SELECT_REVISION).first()
        except sa_exc.DBAPIError as exc:
            if is_missing_table(exc.orig):
                return None
            raise self._translate(exc, key=None, action="opening") from exc
        except Exception as exc:
            raise self._translate(exc, key=None, action="opening") from exc
        revision = None if row is None else str(row[0])
        self._check_known(revision)
        return revision

    def _check_known(self, revision: str | None) -> None:
        if revision is not None and revision not in KNOWN_REVISIONS:
            raise ConfigurationError(
                f"the schema of {self._where} is at revision {revision!r}, which this version "
                f"of dashpersist does not know (its newest is {HEAD_REVISION!r}): it was "
                f"written by a newer dashpersist; upgrade dashpersist to use it"
            )

    # -- helpers -------------------------------------------------------------------------

    def _runner(self, conn: Connection) -> Callable[[str, tuple[Any, ...]], _Cursor]:
        """Return how to run a statement on *conn*: through SQLAlchemy, or on SQLite straight
        through the driver while nobody listens for statements.

        SQLAlchemy's execution path costs ~20 µs a statement, a quarter of a whole save at
        50 widgets. A ``before_cursor_execute`` or ``after_cursor_execute`` listener on the
        engine (auditing, tracing, tests) switches every statement back to SQLAlchemy, so
        what is observed is everything that runs. The SQL is the same either way.
        """
        if self._is_sqlite and not self._statements_observed():
            return _driver(conn).execute
        return conn.exec_driver_sql

    def _statements_observed(self) -> bool:
        """Whether a listener on the engine wants to see every statement."""
        dispatch = self._engine.dispatch
        return bool(dispatch.before_cursor_execute or dispatch.after_cursor_execute)

    @contextmanager
    def _write_connection(self) -> Iterator[Connection]:
        """Connect for a write transaction; on SQLite, one writer of this object at a time.

        SQLite lets one writer in at a time anyway, and a writer that finds the lock taken
        sleeps in SQLite's busy handler for a millisecond or more: waiting for this
        process's other writers on a Python lock instead costs them only the wait.
        """
        if self._local_writer is None:
            with self._connectable.connect() as conn:
                yield conn
            return
        with self._local_writer:
            if self._writer is None:  # a caller's engine: its pool's connections stay its own
                with self._connectable.connect() as conn:
                    yield conn
            else:
                self._check_open()  # close() may have run while this waited for the lock
                with self._writer as conn:
                    yield conn

    def _begin_write(self, conn: Connection, *, own: bool = False) -> Callable[[], None]:
        """Begin a write transaction on *conn*; return the function that commits it.

        *own*: for this object's write, whose statements may go straight to the driver.
        On SQLite's kept connection, that write's transaction is the driver's alone
        (SQLAlchemy's begin and commit bookkeeping costs a tenth of the storage write);
        everywhere else SQLAlchemy knows of the transaction, so that commit() and close()
        reach the driver even when every statement went straight to it.
        """
        if not self._is_sqlite:
            return conn.commit  # SQLAlchemy begins on the first statement
        driver = _driver(conn)
        direct = own and self._writer is not None and not self._statements_observed()
        if not direct:
            conn.begin()
        # Take the write lock now, waiting up to busy_timeout: after BEGIN IMMEDIATE "no
        # subsequent operations in that transaction will ever fail with SQLITE_BUSY", so
        # a read-then-write never dies half-way. Reads issue no BEGIN: each is a single
        # statement, with its own snapshot.
        # Straight to the driver: it touches no table, and SQLAlchemy's execution
        # machinery would add a fifth of the hot path's overhead for nothing.
        driver.execute("BEGIN IMMEDIATE")
        return driver.commit if direct else conn.commit

    def _check_open(self) -> None:
        if self._closed:
            raise ConfigurationError("this SQLStorage is closed")

    def _dispose(self) -> None:
        if self._writer is not None:
            with self._local_writer or contextlib.nullcontext():
                self._writer.release()
        if self._owns_engine:
            self._engine.dispose()

    def _time_to_db(self, moment: datetime) -> datetime | str:
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ConfigurationError("history times must be timezone-aware datetimes")
        moment = moment.astimezone(UTC)
        return moment.isoformat(timespec="microseconds") if self._is_sqlite else moment

    def _time_from_db(self, value: object, key: DocumentKey) -> datetime:
        try:
            moment = datetime.fromisoformat(value) if isinstance(value, str) else value
        except ValueError as exc:
            raise CorruptStoreError(
                f"a stored time of {key} is not an ISO-8601 time", path=self._path
            ) from exc
        if not isinstance(moment, datetime) or moment.tzinfo is None:
            raise CorruptStoreError(f"a stored time of {key} has no time zone", path=self._path)
        return moment.astimezone(UTC)

    def _record_from_row(self, key: DocumentKey, row: Sequence[Any]) -> VersionRecord:
        (
            version,
            digest,
            parent,
            created_at,
            change_type,
            description,
            device_id,
            label,
            schema_version,
            idempotency_key,
            patch,
            snapshot,
        ) = row
        source = f"version {version} of {key}"
        return VersionRecord(
            version=version,
            checksum=digest,
            parent_checksum=parent,
            created_at=self._time_from_db(created_at, key),
            change_type=cast(ChangeType, change_type),
            description=description,
            device_id=device_id,
            label=label,
            schema_version=schema_version,
            idempotency_key=idempotency_key,
            patch=None if patch is None else cast(JsonPatch, self._parse(patch, source=source)),
            snapshot=(
                None if snapshot is None else cast(JsonObject, self._parse(snapshot, source=source))
            ),
        )

    def _parse(self, text: str, *, source: str) -> JsonValue:
        try:
            return parse_json(text, source=source)
        except CorruptStoreError as exc:
            raise CorruptStoreError(str(exc), path=self._path) from exc.__cause__

    def _current_version(self, key: DocumentKey) -> int | None:
        with self._connectable.connect() as conn:
            row = conn.exec_driver_sql(self._sql.read_current, (key.user_id, key.layout_id)).first()
        return None if row is None else int(row[0])

    @contextmanager
    def _translated(
        self,
        *,
        key: DocumentKey | None,
        action: str,
        expected_version: int | Literal["n/a"] | None = "n/a",
    ) -> Iterator[None]:
        try:
            yield
        except DashPersistError:
            raise
        except Exception as exc:
            raise self._translate(
                exc, key=key, action=action, expected_version=expected_version
            ) from exc

    def _translate(
        self,
        exc: BaseException,
        *,
        key: DocumentKey | None,
        action: str,
        expected_version: int | Literal["n/a"] | None = "n/a",
    ) -> DashPersistError:
        kind, reason = classify(exc)
        subject = f"{key} in {self._where}" if key is not None else self._where
        message = f"{action} {subject} failed: {reason}"
        if kind == "conflict" and key is not None and expected_version != "n/a":
            return self._conflict_after(key, expected_version, message)
        if kind == "invalid":
            issue = ValidationIssue("$", "storable", f"the database refused a value ({reason})")
            return ValidationError([issue])
        if kind in PATH_ERRORS:
            return PATH_ERRORS[kind](message, path=self._path)
        if kind in ("conflict", "unavailable"):
            # A serialization failure outside a compare-and-swap write: try again later.
            return StorageUnavailableError(message)
        return StorageError(message)

    def _conflict_after(
        self, key: DocumentKey, expected_version: int | None, message: str
    ) -> ConflictError:
        """Build the `ConflictError` for a write the database refused mid-transaction."""
        message = f"{message}; another writer got there first, nothing was written"
        try:
            actual_version = self._current_version(key)
        except (sa_exc.SQLAlchemyError, sqlite3.Error) as exc:
            # The conflict is the news; which version won is detail, and may be unreadable
            # now (the server went away). actual_version then repeats the expected one.
            message = f"{message} (its current version could not be read: {type(exc).__name__})"
            actual_version = expected_version
        return ConflictError(
            key, expected_version=expected_version, actual_version=actual_version, message=message
        )

    # -- rewriting history (key rotation) ------------------------------------------------

    def replace_document(
        self,
        key: DocumentKey,
        current: StoredDocument,
        history: list[VersionRecord],
        *,
        expected_version: int,
    ) -> None:
        """Replace *key*'s document and whole history, if still at *expected_version*.

        One transaction. The document row is compare-and-swapped first (on version and
        checksum, so a concurrent writer either commits before, and this raises
        `ConflictError`, or after, and its own compare-and-swap fails), then the history
        rows are deleted and inserted anew. Raises `ConflictError` and changes nothing if
        *key* does not exist or is at another version, and `ValidationError` for what
        `prepare_import` refuses or text a database can't store.
        """
        self._check_open()
        prepared = prepare_import(key, current, history)
        for record in history:
            _check_record_text(record)
        ids = (key.user_id, key.layout_id)
        rows = self._history_rows(key, prepared)
        with (
            self._translated(key=key, action="replacing", expected_version=expected_version),
            self._write_connection() as conn,
        ):
            self._begin_write(conn)
            found = conn.exec_driver_sql(self._sql.read_current, ids).first()
            if found is None or found[0] != expected_version:
                raise ConflictError(
                    key,
                    expected_version=expected_version,
                    actual_version=None if found is None else found[0],
                )
            changed = conn.exec_driver_sql(
                self._sql.update_document,
                (
                    current.version,
                    current.checksum,
                    current.schema_version,
                    prepared.body.decode(),
                    self._time_to_db(current.updated_at),
                    *ids,
                    found[0],
                    found[1],
                ),
            ).rowcount
            if changed != 1:
                # PostgreSQL, Read Committed: a writer committed after our SELECT.
                latest = conn.exec_driver_sql(self._sql.read_current, ids).first()
                raise ConflictError(
                    key,
                    expected_version=expected_version,
                    actual_version=None if latest is None else latest[0],
                )
            conn.exec_driver_sql(self._sql.delete_versions, ids)
            conn.exec_driver_sql(self._sql.insert_version, rows)
            self._notify_change(conn, key, current.version, None)
            conn.commit()

    def _history_rows(self, key: DocumentKey, prepared: PreparedImport) -> list[tuple[Any, ...]]:
        """Return the ``insert_version`` parameters of every record of *prepared*."""
        return [
            (
                key.user_id,
                key.layout_id,
                item.record.version,
                item.record.checksum,
                item.record.parent_checksum,
                self._time_to_db(item.record.created_at),
                item.record.change_type,
                item.record.description,
                item.record.device_id,
                item.record.label,
                item.record.schema_version,
                item.record.idempotency_key,
                None if item.patch is None else item.patch.decode(),
                None if item.snapshot is None else item.snapshot.decode(),
            )
            for item in prepared.records
        ]


class _Cursor(Protocol):
    """What SQLStorage reads from a statement's result, whichever way it ran."""

    @property
    def rowcount(self) -> int: ...

    def fetchall(self) -> Sequence[Any]: ...


class _Statements:
    """The SQL of the hot path, written once per dialect.

    Every statement on a document table names the owner (``user_id``): tenant isolation
    does not rest on the caller's keys alone. The one exception is ``user_ids``, the
    administrative listing of the owners themselves.
    """

    def __init__(self, *, sqlite: bool) -> None:
        statements = {
            "read_document": (
                "SELECT version, checksum, schema_version, BODY_OUT, updated_at "
                "FROM dashpersist_documents WHERE user_id = ? AND layout_id = ?"
            ),
            "read_current": (
                "SELECT version, checksum FROM dashpersist_documents "
                "WHERE user_id = ? AND layout_id = ?"
            ),
            "insert_document": (
                "INSERT INTO dashpersist_documents (user_id, layout_id, version, checksum, "
                "schema_version, body, updated_at) VALUES (?, ?, ?, ?, ?, BODY_IN, ?) "
                "ON CONFLICT (user_id, layout_id) DO NOTHING"
            ),
            "update_document": (
                "UPDATE dashpersist_documents SET version = ?, checksum = ?, "
                "schema_version = ?, body = BODY_IN, updated_at = ? "
                "WHERE user_id = ? AND layout_id = ? AND version = ? AND checksum = ?"
            ),
            "insert_version": (
                "INSERT INTO dashpersist_versions (user_id, layout_id, version, checksum, "
                "parent_checksum, created_at, change_type, description, device_id, label, "
                "schema_version, idempotency_key, patch, snapshot) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ),
            "read_versions": (
                "SELECT version, checksum, parent_checksum, created_at, change_type, "
                "description, device_id, label, schema_version, idempotency_key, patch, "
                "snapshot FROM dashpersist_versions WHERE user_id = ? AND layout_id = ? "
                "AND version < ? ORDER BY version DESC LIMIT ?"
            ),
            "read_outline": (
                "SELECT version, label, snapshot IS NOT NULL FROM dashpersist_versions "
                "WHERE user_id = ? AND layout_id = ? AND version < ? ORDER BY version DESC"
            ),
            "layout_ids": "SELECT layout_id FROM dashpersist_documents WHERE user_id = ?",
            # The one statement without an owner predicate: it lists the owners.
            "user_ids": "SELECT DISTINCT user_id FROM dashpersist_documents",
            "delete_document": (
                "DELETE FROM dashpersist_documents WHERE user_id = ? AND layout_id = ?"
            ),
            "delete_versions": (
                "DELETE FROM dashpersist_versions WHERE user_id = ? AND layout_id = ?"
            ),
            "store_snapshot": (
                "UPDATE dashpersist_versions SET snapshot = ? "
                "WHERE user_id = ? AND layout_id = ? AND version = ?"
            ),
            "delete_version": (
                "DELETE FROM dashpersist_versions "
                "WHERE user_id = ? AND layout_id = ? AND version = ?"
            ),
        }
        # SQLite stores the body as text; PostgreSQL as jsonb, read back as text for orjson.
        body_in, body_out = ("?", "body") if sqlite else ("CAST(? AS jsonb)", "CAST(body AS text)")
        statements = {
            name: sql.replace("BODY_IN", body_in).replace("BODY_OUT", body_out)
            for name, sql in statements.items()
        }
        if not sqlite:
            # psycopg's placeholder; none of these statements holds a literal '?' or '%'.
            statements = {name: sql.replace("?", "%s") for name, sql in statements.items()}
        self.read_document = statements["read_document"]
        self.read_current = statements["read_current"]
        self.insert_document = statements["insert_document"]
        self.update_document = statements["update_document"]
        self.insert_version = statements["insert_version"]
        self.read_versions = statements["read_versions"]
        self.read_outline = statements["read_outline"]
        self.layout_ids = statements["layout_ids"]
        self.user_ids = statements["user_ids"]
        self.delete_document = statements["delete_document"]
        self.delete_versions = statements["delete_versions"]
        self.store_snapshot = statements["store_snapshot"]
        self.delete_version = statements["delete_version"]


class _HeldWriter:
    """The one connection an SQLStorage on SQLite writes through, kept between writes.

    Its writes take turns on a Python lock anyway, and checking a connection out of the
    pool and back in costs about 30 µs, a fifth of a 50-widget save; a kept connection
    also keeps its prepared statements. Used only under the storage's writer lock, as a
    context manager that hands out the connection.

    A block that fails or leaves a transaction open rolls it back and gives the
    connection back to the pool (which discards a broken one); the next write checks
    out a fresh one, as it does after a borrower closed the connection. A forked child
    forgets the parent's connection instead of using it (an engine's pool is no more
    fork-safe than SQLAlchemy makes it: dispose of it in the child).
    """

    def __init__(self, connectable: Engine) -> None:
        self._connectable = connectable
        self._conn: Connection | None = None
        self._pid = os.getpid()

    def __enter__(self) -> Connection:
        if self._pid != os.getpid():
            self._conn, self._pid = None, os.getpid()
        conn = self._conn
        if conn is None or conn.closed or conn.invalidated:
            conn = self._conn = self._connectable.connect()
        return conn

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        conn = self._conn
        if conn is None:
            return
        if conn.closed:  # a borrower closed it: the pool has it back already
            self._conn = None
        elif (
            exc_type is not None
            or conn.invalidated
            or conn.in_transaction()
            or _driver(conn).in_transaction
        ):
            self.release()

    def release(self) -> None:
        """Roll back what is open, and give the connection back to the pool."""
        conn, self._conn = self._conn, None
        if conn is None or conn.closed or self._pid != os.getpid():
            return
        if not conn.invalidated:
            try:
                # Statements that went straight to the driver began a transaction
                # SQLAlchemy does not know of: its reset on check-in might not roll it back.
                driver = _driver(conn)
                if driver.in_transaction:
                    driver.rollback()
            except (sqlite3.Error, sa_exc.SQLAlchemyError):
                conn.invalidate()  # broken: the pool must not hand it out again
        conn.close()


def _text(encoded: bytes | None) -> str | None:
    return None if encoded is None else encoded.decode()


def _driver(conn: Connection) -> sqlite3.Connection:
    """The sqlite3 connection under a SQLite *conn*."""
    return cast(sqlite3.Connection, conn.connection.driver_connection)


def _assumed_current(
    record: VersionRecord | None, expected_version: int | None
) -> tuple[int, str] | None:
    """Return the (version, checksum) the store must hold for *record* to follow it, when
    the record says (an update with a parent checksum); ``None`` otherwise."""
    if record is None or expected_version is None or record.parent_checksum is None:
        return None
    return expected_version, record.parent_checksum


def _check_record_text(record: VersionRecord) -> None:
    """Refuse NUL and lone surrogates in a record's text, which no driver can store alike."""
    for name in ("description", "device_id", "label", "idempotency_key", "change_type"):
        value = getattr(record, name)
        if value is None:
            continue
        try:
            value.encode()
        except UnicodeEncodeError:
            rule = "no_lone_surrogates"
        else:
            if "\x00" not in value:
                continue
            rule = "no_nul"
        raise ValidationError([ValidationIssue(name, rule, "text a database can't store")])

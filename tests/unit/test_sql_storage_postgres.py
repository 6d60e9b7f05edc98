"""SQLStorage on PostgreSQL: interleavings driven step by step, outages, values, schema.

Interleavings follow PostgreSQL's isolationtester: session B is paused just before a
chosen statement (a ``before_cursor_execute`` hook on its engine), session A runs and
commits, then B resumes. Each case asserts that SQLStorage raised `ConflictError` and
that the store holds exactly the winner's write.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import psycopg
import pytest
from sqlalchemy import Engine, create_engine, event, make_url

from dashpersist._canonical import checksum
from dashpersist.errors import (
    ConflictError,
    StorageUnavailableError,
    ValidationError,
)
from dashpersist.storage.migrations import HEAD_REVISION
from dashpersist.storage.protocol import DocumentKey, VersionRecord
from dashpersist.storage.sql import SQLStorage
from dashpersist.types import JsonObject
from tests.postgres import PostgresServer

pytestmark = pytest.mark.postgres

KEY = DocumentKey("alice")
WAIT = 20.0


class Pause:
    """Stop a session just before the first statement starting with *prefix*."""

    def __init__(self, engine: Engine, prefix: str) -> None:
        self.prefix = prefix
        self.reached = threading.Event()
        self.release = threading.Event()
        self._armed = True
        event.listen(engine, "before_cursor_execute", self._hook)

    def _hook(self, conn, cursor, statement, *rest) -> None:  # type: ignore[no-untyped-def]
        if self._armed and statement.startswith(self.prefix):
            self._armed = False
            self.reached.set()
            assert self.release.wait(WAIT), "the test never released the paused session"


def engine_for(url: str, isolation_level: str) -> Engine:
    return create_engine(url, isolation_level=isolation_level, pool_pre_ping=True)


@pytest.fixture(params=["READ COMMITTED", "REPEATABLE READ"])
def two_sessions(
    request: pytest.FixtureRequest, postgres_url: str
) -> Iterator[tuple[SQLStorage, SQLStorage, Engine]]:
    """Sessions A and B on one database, each with its own engine, at one isolation level."""
    engine_a = engine_for(postgres_url, request.param)
    engine_b = engine_for(postgres_url, request.param)
    a, b = SQLStorage(engine_a), SQLStorage(engine_b)
    yield a, b, engine_b
    a.close()
    b.close()
    engine_a.dispose()
    engine_b.dispose()


def in_thread(action: Callable[[], int]) -> tuple[ThreadPoolExecutor, Future[int]]:
    executor = ThreadPoolExecutor(max_workers=1)
    return executor, executor.submit(action)


def wait_until_blocked_on_a_lock(url: str) -> None:
    """Return once some session of this database waits for a row lock."""
    database = make_url(url).database
    host = make_url(url).query["host"]
    deadline = time.monotonic() + WAIT
    with psycopg.connect(
        host=str(host), user="postgres", dbname="postgres", autocommit=True
    ) as admin:
        while time.monotonic() < deadline:
            waiting = admin.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = %s AND wait_event_type = 'Lock'",
                (database,),
            ).fetchone()
            if waiting and waiting[0]:
                return
            time.sleep(0.01)
    raise AssertionError("no session ever waited for a lock")


def assert_holds_only(store: SQLStorage, document: JsonObject, version: int) -> None:
    stored = store.read(KEY)
    assert stored is not None
    assert (stored.version, stored.document) == (version, document)
    history = store.versions(KEY)
    assert [r.version for r in history] == list(range(version, 0, -1))
    assert history[0].checksum == checksum(document)


def test_b_writing_after_a_committed_past_its_read_gets_a_conflict(
    two_sessions: tuple[SQLStorage, SQLStorage, Engine],
) -> None:
    a, b, engine_b = two_sessions
    a.write(KEY, {"v": 1}, expected_version=None)
    assert a.read(KEY).version == b.read(KEY).version == 1  # type: ignore[union-attr]
    pause = Pause(engine_b, "UPDATE dashpersist_documents")
    executor, b_write = in_thread(lambda: b.write(KEY, {"v": "b"}, expected_version=1))
    assert pause.reached.wait(WAIT)  # B has read v1 inside its transaction

    a.write(KEY, {"v": "a"}, expected_version=1)
    pause.release.set()

    with pytest.raises(ConflictError) as caught:
        b_write.result(timeout=WAIT)
    executor.shutdown()
    assert (caught.value.expected_version, caught.value.actual_version) == (1, 2)
    assert_holds_only(a, {"v": "a"}, 2)


def test_two_sessions_creating_the_first_version_one_gets_a_conflict(
    two_sessions: tuple[SQLStorage, SQLStorage, Engine],
) -> None:
    a, b, engine_b = two_sessions
    pause = Pause(engine_b, "INSERT INTO dashpersist_documents")
    executor, b_write = in_thread(lambda: b.write(KEY, {"v": "b"}, expected_version=None))
    assert pause.reached.wait(WAIT)  # B has seen no document

    a.write(KEY, {"v": "a"}, expected_version=None)
    pause.release.set()

    with pytest.raises(ConflictError) as caught:
        b_write.result(timeout=WAIT)
    executor.shutdown()
    assert (caught.value.expected_version, caught.value.actual_version) == (None, 1)
    assert_holds_only(a, {"v": "a"}, 1)


def test_a_writer_waiting_on_the_row_lock_gets_a_conflict_when_the_holder_commits(
    two_sessions: tuple[SQLStorage, SQLStorage, Engine],
    postgres_url: str,
) -> None:
    a, b, engine_b = two_sessions
    a.write(KEY, {"v": 1}, expected_version=None)
    pause = Pause(engine_b, "INSERT INTO dashpersist_versions")
    b_executor, b_write = in_thread(lambda: b.write(KEY, {"v": "b"}, expected_version=1))
    assert pause.reached.wait(WAIT)  # B updated the row and holds its lock, uncommitted
    a_executor, a_write = in_thread(lambda: a.write(KEY, {"v": "a"}, expected_version=1))
    wait_until_blocked_on_a_lock(postgres_url)  # A read v1 and now waits for B's row

    pause.release.set()

    assert b_write.result(timeout=WAIT) == 2
    with pytest.raises(ConflictError) as caught:
        a_write.result(timeout=WAIT)
    a_executor.shutdown()
    b_executor.shutdown()
    assert (caught.value.expected_version, caught.value.actual_version) == (1, 2)
    assert_holds_only(a, {"v": "b"}, 2)


def test_a_stopped_server_is_unavailable_within_the_connect_timeout_then_recovers(
    postgres_server: PostgresServer,
    postgres_url: str,
) -> None:
    store = SQLStorage(postgres_url, connect_timeout=2)
    store.write(KEY, {"v": 1}, expected_version=None)
    # The throwaway server runs with synchronous_commit=off: flush what was acked, or an
    # immediate stop may take it along (a fixture shortcut, not what is tested here).
    with store.engine.connect() as conn:
        conn.exec_driver_sql("CHECKPOINT")
    postgres_server.stop()
    try:
        started = time.monotonic()
        with pytest.raises(StorageUnavailableError) as read_error:
            store.read(KEY)
        with pytest.raises(StorageUnavailableError):
            store.write(KEY, {"v": 2}, expected_version=1)
        elapsed = time.monotonic() - started
    finally:
        postgres_server.start()

    assert elapsed < 2 * 2 + 2
    assert not isinstance(read_error.value.__cause__, StorageUnavailableError)
    assert read_error.value.__cause__ is not None
    assert store.write(KEY, {"v": 2}, expected_version=1) == 2
    stored = store.read(KEY)
    assert stored is not None and stored.document == {"v": 2}
    store.close()


def test_plain_postgresql_urls_use_psycopg_3(postgres_url: str) -> None:
    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://")

    store = SQLStorage(plain)

    assert store.engine.dialect.driver == "psycopg"
    assert store.write(KEY, {"v": 1}, expected_version=None) == 1
    store.close()


def test_the_schema_is_created_once_with_its_revision_and_jsonb_body(postgres_url: str) -> None:
    SQLStorage(postgres_url).close()
    store = SQLStorage(postgres_url)
    with store.engine.connect() as conn:
        revisions = conn.exec_driver_sql(
            "SELECT version_num FROM dashpersist_alembic_version"
        ).all()
        body_type = conn.exec_driver_sql(
            "SELECT data_type FROM information_schema.columns "
            "WHERE table_name = 'dashpersist_documents' AND column_name = 'body'"
        ).scalar()
        time_type = conn.exec_driver_sql(
            "SELECT data_type FROM information_schema.columns "
            "WHERE table_name = 'dashpersist_versions' AND column_name = 'created_at'"
        ).scalar()
    store.close()

    assert revisions == [(HEAD_REVISION,)]
    assert body_type == "jsonb"
    assert time_type == "timestamp with time zone"


def test_times_round_trip_as_aware_utc(postgres_url: str) -> None:
    store = SQLStorage(postgres_url)
    document: JsonObject = {"a": 1}
    written_at = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=timezone(timedelta(hours=-5)))
    record = VersionRecord(
        version=1,
        checksum=checksum(document),
        parent_checksum=None,
        created_at=written_at,
        snapshot=document,
    )

    store.write(KEY, document, record, expected_version=None)

    stored = store.read(KEY)
    (history,) = store.versions(KEY)
    store.close()
    assert stored is not None
    for moment in (stored.updated_at, history.created_at):
        assert moment == written_at
        assert moment.tzinfo is UTC


def test_a_value_postgresql_refuses_is_a_validation_error_and_changes_nothing(
    postgres_url: str,
) -> None:
    store = SQLStorage(postgres_url)
    store.write(KEY, {"title": "ok"}, expected_version=None)

    with pytest.raises(ValidationError) as caught:
        store.write(KEY, {"title": "nul \x00 inside"}, expected_version=1)

    assert "nul" not in str(caught.value)
    assert isinstance(caught.value.__cause__, Exception)
    assert_holds_only(store, {"title": "ok"}, 1)
    store.close()


def names_the_owner(sql: str) -> bool:
    """An INSERT writes the owner's id; every other statement filters on it."""
    if sql.startswith("INSERT"):
        return "(user_id, layout_id," in sql
    return "WHERE user_id = %s" in sql


def test_every_statement_on_a_document_table_names_the_owner(postgres_url: str) -> None:
    store = SQLStorage(postgres_url)
    statements: list[str] = []
    event.listen(
        store.engine,
        "before_cursor_execute",
        lambda conn, cursor, sql, *rest: statements.append(sql),
    )
    bob = DocumentKey("bob", "board")

    store.write(bob, {"b": 1}, expected_version=None)
    store.write(bob, {"b": 2}, expected_version=1)
    current = store.read(bob)
    assert current is not None
    store.versions(bob)
    store.layout_ids("bob")
    carol = DocumentKey("carol", "board")
    store.import_document(carol, replace(current, key=carol), store.versions(bob)[::-1])
    store.user_ids()
    store.compact(bob, remove=[1], snapshots={2: {"b": 2}})
    store.delete(bob)
    store.close()

    touching = [sql for sql in statements if "dashpersist_" in sql]
    unowned = [sql for sql in touching if not names_the_owner(sql)]
    assert len(touching) >= 15
    # The administrative listing of the owners is the one statement that names none.
    assert unowned == ["SELECT DISTINCT user_id FROM dashpersist_documents"]

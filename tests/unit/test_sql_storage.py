"""SQLStorage on SQLite: set-up, schema, locking, corrupt files, full disks, permissions.

The behaviours every backend shares are in tests/contract; these are SQLStorage's own.
Files are real SQLite databases under tmp_path; other processes are fresh interpreters.
"""

from __future__ import annotations

import os
import pwd
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, event

from dashpersist import _faults
from dashpersist._canonical import checksum
from dashpersist.errors import (
    ConfigurationError,
    ConflictError,
    CorruptStoreError,
    DashPersistError,
    NotFoundError,
    StorageFullError,
    StorageUnavailableError,
    ValidationError,
)
from dashpersist.storage.migrations import HEAD_REVISION, KNOWN_REVISIONS, SCRIPT_LOCATION
from dashpersist.storage.protocol import DocumentKey, VersionRecord
from dashpersist.storage.sql import SQLStorage
from dashpersist.types import JsonObject

REPO_ROOT = Path(__file__).resolve().parents[2]
KEY = DocumentKey("alice")


def layout(widgets: int, title: str = "Sales") -> JsonObject:
    return {
        "title": title,
        "widgets": [
            {
                "id": f"w{i}",
                "type": "chart",
                "x": i,
                "y": 0,
                "w": 4,
                "h": 3,
                "settings": {"metric": "revenue", "note": "n" * 40},
            }
            for i in range(widgets)
        ],
    }


def record_for(
    version: int, document: JsonObject, parent: JsonObject | None, **fields: str
) -> VersionRecord:
    return VersionRecord(
        version=version,
        checksum=checksum(document),
        parent_checksum=None if parent is None else checksum(parent),
        created_at=datetime.now(UTC),
        snapshot=document,
        **fields,  # type: ignore[arg-type]
    )


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def run_child(script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "dash.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[SQLStorage]:
    storage = SQLStorage(sqlite_url(db_path))
    yield storage
    storage.close()


def pragma(engine: Engine, name: str) -> object:
    with engine.connect() as conn:
        return conn.exec_driver_sql(f"PRAGMA {name}").scalar()


# -- set-up --------------------------------------------------------------------------------


@pytest.mark.parametrize("synchronous", ["NORMAL", "FULL"])
def test_connections_run_in_wal_mode_with_the_configured_synchronous_and_busy_timeout(
    db_path: Path, synchronous: str
) -> None:
    storage = SQLStorage(
        sqlite_url(db_path),
        synchronous=synchronous,  # type: ignore[arg-type]
        busy_timeout=0.5,
    )

    try:
        settings = {
            name: pragma(storage.engine, name)
            for name in ("journal_mode", "synchronous", "busy_timeout")
        }
    finally:
        storage.close()

    assert settings == {
        "journal_mode": "wal",
        "synchronous": {"NORMAL": 1, "FULL": 2}[synchronous],
        "busy_timeout": 500,
    }


def test_an_engine_passed_in_is_configured_too_and_stays_usable_after_close(
    db_path: Path,
) -> None:
    engine = create_engine(sqlite_url(db_path))
    with engine.connect() as conn:  # a connection pooled before SQLStorage saw the engine
        conn.exec_driver_sql("SELECT 1")
    storage = SQLStorage(engine, synchronous="FULL")
    storage.write(KEY, {"a": 1}, expected_version=None)

    storage.close()

    assert pragma(engine, "synchronous") == 2
    with engine.begin() as conn:  # the caller's own transactions still work
        conn.exec_driver_sql("CREATE TABLE host_table (x INTEGER)")
        conn.exec_driver_sql("INSERT INTO host_table VALUES (1)")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM host_table").scalar() == 1
    engine.dispose()


def test_close_is_idempotent_disposes_its_own_engine_and_refuses_later_calls(
    db_path: Path,
) -> None:
    storage = SQLStorage(sqlite_url(db_path))
    storage.write(KEY, {"a": 1}, expected_version=None)

    storage.close()
    storage.close()

    assert storage.engine.pool.checkedin() == 0  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError):
        storage.read(KEY)


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("sqlite://", "MemoryStorage"),
        ("sqlite:///:memory:", "MemoryStorage"),
        ("mysql://host/db", "mysql"),
        ("postgresql+psycopg2://host/db", "psycopg2"),
        ("not a url", "URL"),
    ],
)
def test_unsupported_urls_are_configuration_errors(url: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        SQLStorage(url)


def test_a_database_in_a_missing_folder_is_a_configuration_error_naming_the_folder(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "no" / "such" / "folder"

    with pytest.raises(ConfigurationError, match=str(missing)):
        SQLStorage(sqlite_url(missing / "dash.db"))

    assert not (tmp_path / "no").exists()


def test_bad_options_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="synchronous"):
        SQLStorage("sqlite:///x.db", synchronous="SOMETIMES")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="busy_timeout"):
        SQLStorage("sqlite:///x.db", busy_timeout=-1)
    with pytest.raises(ConfigurationError, match="connect_timeout"):
        SQLStorage("sqlite:///x.db", connect_timeout=float("nan"))


def test_importing_dashpersist_and_using_sqlite_loads_neither_psycopg_nor_alembic_when_up_to_date(
    db_path: Path,
) -> None:
    SQLStorage(sqlite_url(db_path)).close()

    child = run_child(
        """
        import sys
        import dashpersist
        from dashpersist.storage.sql import SQLStorage
        store = SQLStorage(f"sqlite:///{sys.argv[1]}")
        store.close()
        print(sorted(name for name in ("psycopg", "alembic") if name in sys.modules))
        """,
        str(db_path),
    )

    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "[]"


# -- schema --------------------------------------------------------------------------------


def test_the_revision_list_matches_the_shipped_alembic_scripts() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    scripts = ScriptDirectory.from_config(config)

    assert scripts.get_current_head() == HEAD_REVISION
    assert [r.revision for r in reversed(list(scripts.walk_revisions()))] == list(KNOWN_REVISIONS)
    assert (SCRIPT_LOCATION / "env.py").is_file()
    assert (SCRIPT_LOCATION / "script.py.mako").is_file()


def test_a_fresh_database_gets_the_schema_and_one_revision_row(
    store: SQLStorage, db_path: Path
) -> None:
    with sqlite3.connect(db_path) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        revisions = conn.execute("SELECT version_num FROM dashpersist_alembic_version").fetchall()
    conn.close()

    assert {
        "dashpersist_documents",
        "dashpersist_versions",
        "uq_dashpersist_versions_idempotency_key",
    } <= tables
    assert revisions == [(HEAD_REVISION,)]


def test_opening_an_up_to_date_database_checks_the_revision_with_one_select(
    db_path: Path,
) -> None:
    SQLStorage(sqlite_url(db_path)).close()
    engine = create_engine(sqlite_url(db_path))
    statements: list[str] = []
    event.listen(
        engine, "before_cursor_execute", lambda conn, cursor, sql, *rest: statements.append(sql)
    )

    SQLStorage(engine).close()

    engine.dispose()
    assert statements == [
        "PRAGMA quick_check",
        "SELECT version_num FROM dashpersist_alembic_version",
    ]


def test_processes_opening_a_fresh_database_at_once_all_succeed_with_one_schema(
    db_path: Path,
    tmp_path: Path,
) -> None:
    go = tmp_path / "go"
    script = """
        import sys, time
        from pathlib import Path
        from dashpersist.storage.protocol import DocumentKey
        from dashpersist.storage.sql import SQLStorage
        go = Path(sys.argv[2])
        while not go.exists():
            time.sleep(0.001)
        store = SQLStorage(f"sqlite:///{sys.argv[1]}")
        print(store.write(DocumentKey(sys.argv[3]), {"n": 1}, expected_version=None))
        store.close()
    """
    children = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(script), str(db_path), str(go), f"user{n}"],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    time.sleep(1.0)  # let every interpreter reach the wait loop

    go.touch()
    results = [child.communicate(timeout=60) for child in children]

    assert [child.returncode for child in children] == [0, 0, 0, 0], [err for _, err in results]
    assert [out.strip() for out, _ in results] == ["1", "1", "1", "1"]
    with sqlite3.connect(db_path) as conn:
        revisions = conn.execute("SELECT version_num FROM dashpersist_alembic_version").fetchall()
    conn.close()
    assert revisions == [(HEAD_REVISION,)]
    storage = SQLStorage(sqlite_url(db_path))
    assert [len(storage.layout_ids(f"user{n}")) for n in range(4)] == [1, 1, 1, 1]
    storage.close()


def test_opening_waits_for_a_writer_holding_a_rollback_mode_database(db_path: Path) -> None:
    # Switching to WAL needs an exclusive lock SQLite will not wait for in its busy
    # handler: processes opening a fresh database at once hit this at random.
    other = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE notes (n INTEGER)")
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO notes VALUES (1)")
    releaser = threading.Timer(0.3, lambda: other.execute("COMMIT"))
    releaser.start()
    started = time.monotonic()
    try:
        storage = SQLStorage(sqlite_url(db_path), busy_timeout=5)
    finally:
        releaser.join()
        other.close()

    assert time.monotonic() - started >= 0.25  # it waited for the writer
    assert pragma(storage.engine, "journal_mode") == "wal"
    assert storage.write(KEY, {"a": 1}, expected_version=None) == 1
    storage.close()


def test_opening_gives_up_on_a_rollback_mode_lock_after_busy_timeout(db_path: Path) -> None:
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("CREATE TABLE notes (n INTEGER)")
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO notes VALUES (1)")
    started = time.monotonic()
    try:
        with pytest.raises(StorageUnavailableError, match="locked"):
            SQLStorage(sqlite_url(db_path), busy_timeout=0.2)
        elapsed = time.monotonic() - started
    finally:
        other.execute("ROLLBACK")
        other.close()

    assert 0.15 <= elapsed < 3.0


# -- S14: corrupt or foreign files -----------------------------------------------------------


def test_a_text_file_named_like_the_database_is_corrupt_and_left_byte_identical(
    db_path: Path,
) -> None:
    db_path.write_text("these are my notes, not a database\n" * 200)
    before = db_path.read_bytes()

    with pytest.raises(CorruptStoreError) as caught:
        SQLStorage(sqlite_url(db_path))

    assert caught.value.path == db_path
    assert db_path.read_bytes() == before


def test_a_database_with_a_flipped_page_byte_is_corrupt_and_left_byte_identical(
    db_path: Path,
) -> None:
    storage = SQLStorage(sqlite_url(db_path))
    for n in range(20):
        storage.write(DocumentKey(f"user{n}"), layout(10), expected_version=None)
    storage.close()
    with sqlite3.connect(db_path) as conn:
        (root_page,) = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'dashpersist_documents'"
        ).fetchone()
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    conn.close()
    damaged = bytearray(db_path.read_bytes())
    damaged[(root_page - 1) * page_size] ^= 0xFF  # the b-tree page's type byte
    db_path.write_bytes(bytes(damaged))

    with pytest.raises(CorruptStoreError) as caught:
        SQLStorage(sqlite_url(db_path))

    assert caught.value.path == db_path
    assert db_path.read_bytes() == bytes(damaged)


def test_our_tables_without_a_revision_row_are_corrupt_and_left_byte_identical(
    db_path: Path,
) -> None:
    storage = SQLStorage(sqlite_url(db_path))
    storage.write(KEY, {"a": 1}, expected_version=None)
    storage.close()
    with sqlite3.connect(db_path) as conn:
        conn.execute("DELETE FROM dashpersist_alembic_version")
    conn.close()
    before = db_path.read_bytes()

    with pytest.raises(CorruptStoreError, match="no schema revision") as caught:
        SQLStorage(sqlite_url(db_path))

    assert caught.value.path == db_path
    assert db_path.read_bytes() == before


def test_a_schema_newer_than_this_library_is_refused_and_left_alone(db_path: Path) -> None:
    SQLStorage(sqlite_url(db_path)).close()
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE dashpersist_alembic_version SET version_num = '9999'")
    conn.close()
    before = db_path.read_bytes()

    with pytest.raises(ConfigurationError, match="newer dashpersist"):
        SQLStorage(sqlite_url(db_path))

    assert db_path.read_bytes() == before


def test_a_stored_body_that_is_not_json_reads_as_corrupt_naming_the_key(
    store: SQLStorage,
    db_path: Path,
) -> None:
    store.write(KEY, {"a": 1}, expected_version=None)
    store.write(DocumentKey("bob"), {"b": 1}, expected_version=None)
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE dashpersist_documents SET body = '{oops' WHERE user_id = 'alice'")
    conn.close()

    with pytest.raises(CorruptStoreError, match="alice") as caught:
        store.read(KEY)

    assert caught.value.path == db_path
    bob = store.read(DocumentKey("bob"))
    assert bob is not None and bob.document == {"b": 1}


# -- S05: a writer holding the lock ----------------------------------------------------------


def test_a_write_blocked_past_busy_timeout_raises_unavailable_in_bounded_time(
    db_path: Path,
) -> None:
    storage = SQLStorage(sqlite_url(db_path), busy_timeout=0.5)
    storage.write(KEY, {"a": 1}, expected_version=None)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent("""
            import sqlite3, sys
            conn = sqlite3.connect(sys.argv[1], isolation_level=None)
            conn.execute("BEGIN IMMEDIATE")
            print("locked", flush=True)
            sys.stdin.readline()  # hold the write lock until the parent says so
            conn.execute("ROLLBACK")
        """),
            str(db_path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()

        with pytest.raises(StorageUnavailableError) as caught:
            storage.write(KEY, {"a": 2}, expected_version=1)

        elapsed = time.monotonic() - started
        during_lock = storage.read(KEY)  # WAL: readers are not blocked by the writer
    finally:
        holder.communicate("release\n", timeout=30)

    assert 0.4 <= elapsed < 3.0
    assert "locked" in str(caught.value) and str(db_path) in str(caught.value)
    assert not isinstance(caught.value, sqlite3.Error)
    assert during_lock is not None and during_lock.version == 1
    assert storage.write(KEY, {"a": 2}, expected_version=1) == 2
    storage.close()


# -- S11: database full ----------------------------------------------------------------------


def test_a_full_database_raises_storage_full_keeps_the_previous_version_and_recovers(
    db_path: Path,
) -> None:
    limit: dict[str, int | None] = {"pages": None}
    engine = create_engine(sqlite_url(db_path))

    @event.listens_for(engine, "checkout")
    def apply_page_limit(dbapi_connection, record, proxy) -> None:  # type: ignore[no-untyped-def]
        pages = limit["pages"] or 1_073_741_823
        dbapi_connection.execute(f"PRAGMA max_page_count = {pages}")

    storage = SQLStorage(engine)
    first = layout(5)
    storage.write(KEY, first, expected_version=None)
    limit["pages"] = int(pragma(engine, "page_count")) + 2  # type: ignore[call-overload]

    with pytest.raises(StorageFullError) as caught:
        storage.write(KEY, layout(500), expected_version=1)

    assert caught.value.path == db_path
    stored = storage.read(KEY)
    assert stored is not None and stored.version == 1 and stored.document == first
    assert [r.version for r in storage.versions(KEY)] == [1]
    limit["pages"] = None
    assert storage.write(KEY, layout(500), expected_version=1) == 2
    assert [r.version for r in storage.versions(KEY)] == [2, 1]
    storage.close()
    engine.dispose()


# -- S12: permissions ------------------------------------------------------------------------

_AS_NOBODY = """
    import os, pwd, sys, tempfile
    from dashpersist.errors import DashPersistError
    from dashpersist.storage.protocol import DocumentKey
    from dashpersist.storage.sql import SQLStorage

    if os.geteuid() == 0:
        # Root ignores mode bits, and the interpreter lives under /root (mode 0700), out of
        # nobody's reach: load everything as root, then drop to nobody for the test itself.
        warm = tempfile.mkdtemp()
        SQLStorage(f"sqlite:///{warm}/warm.db").close()
        nobody = pwd.getpwnam("nobody")
        os.setgroups([])
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)

    def attempt(label, action):
        try:
            print(label, "ok", action())
        except DashPersistError as exc:
            print(label, type(exc).__name__, getattr(exc, "path", None))

    key = DocumentKey("alice")
    try:
        store = SQLStorage(f"sqlite:///{sys.argv[1]}")
    except DashPersistError as exc:
        print("open", type(exc).__name__, getattr(exc, "path", None))
        raise SystemExit(0)
    print("open ok")
    attempt("read", lambda: store.read(key).version)
    attempt("write", lambda: store.write(key, {"b": 2}, expected_version=1))
    store.close()
"""


@pytest.fixture
def shared_folder() -> Iterator[Path]:
    """A folder another user can enter (pytest's tmp_path is mode 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="dashpersist-perm-"))
    folder.chmod(0o755)
    yield folder
    for child in folder.iterdir():
        child.unlink()
    folder.rmdir()


def _make_read_only_store(folder: Path, *, folder_writable: bool) -> Path:
    path = folder / "dash.db"
    storage = SQLStorage(sqlite_url(path))
    storage.write(KEY, {"a": 1}, expected_version=None)
    storage.close()
    path.chmod(0o444)
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        if folder_writable:
            os.chown(folder, nobody.pw_uid, nobody.pw_gid)
    else:
        folder.chmod(0o755 if folder_writable else 0o555)
    return path


def test_a_read_only_database_file_reads_and_refuses_writes_naming_the_path(
    shared_folder: Path,
) -> None:
    path = _make_read_only_store(shared_folder, folder_writable=True)
    before = path.read_bytes()

    child = run_child(_AS_NOBODY, str(path))

    assert child.returncode == 0, child.stderr
    assert child.stdout.splitlines() == [
        "open ok",
        "read ok 1",
        f"write StoragePermissionError {path}",
    ]
    assert path.read_bytes() == before


def test_a_read_only_folder_fails_at_open_naming_the_path(shared_folder: Path) -> None:
    path = _make_read_only_store(shared_folder, folder_writable=False)

    child = run_child(_AS_NOBODY, str(path))

    shared_folder.chmod(0o755)
    assert child.returncode == 0, child.stderr
    assert child.stdout.splitlines() == [f"open StoragePermissionError {path}"]


# -- values, times, tenants --------------------------------------------------------------------


def test_times_round_trip_as_aware_utc_whatever_zone_they_were_written_in(
    store: SQLStorage,
) -> None:
    document: JsonObject = {"a": 1}
    written_at = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
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
    assert stored is not None
    for moment in (stored.updated_at, history.created_at):
        assert moment == written_at
        assert moment.utcoffset() == timedelta(0)
        assert moment.tzinfo is UTC


def test_a_naive_time_is_refused_and_nothing_is_written(store: SQLStorage) -> None:
    document: JsonObject = {"a": 1}
    record = VersionRecord(
        version=1,
        checksum=checksum(document),
        parent_checksum=None,
        created_at=datetime(2026, 3, 1, 12, 0),
        snapshot=document,
    )

    with pytest.raises(ConfigurationError, match="timezone-aware"):
        store.write(KEY, document, record, expected_version=None)

    assert store.read(KEY) is None


@pytest.mark.parametrize("field", ["description", "device_id", "label"])
@pytest.mark.parametrize("bad", ["lone \ud800 surrogate", "nul \x00 byte"])
def test_record_text_no_database_can_store_is_a_validation_error(
    store: SQLStorage,
    field: str,
    bad: str,
) -> None:
    store.write(KEY, {"a": 1}, expected_version=None)
    document: JsonObject = {"a": 2}

    with pytest.raises(ValidationError) as caught:
        store.write(
            KEY, document, record_for(2, document, {"a": 1}, **{field: bad}), expected_version=1
        )

    assert caught.value.issues[0].path == field
    assert bad not in str(caught.value)
    stored = store.read(KEY)
    assert stored is not None and stored.version == 1


def test_a_repeated_idempotency_key_is_a_conflict_and_changes_nothing(store: SQLStorage) -> None:
    first: JsonObject = {"a": 1}
    second: JsonObject = {"a": 2}
    store.write(
        KEY, first, record_for(1, first, None, idempotency_key="op-1"), expected_version=None
    )

    with pytest.raises(ConflictError) as caught:
        store.write(
            KEY, second, record_for(2, second, first, idempotency_key="op-1"), expected_version=1
        )

    assert caught.value.actual_version == 1
    stored = store.read(KEY)
    assert stored is not None and stored.document == first
    assert [r.idempotency_key for r in store.versions(KEY)] == ["op-1"]


def test_read_hands_out_a_fresh_document_every_time(store: SQLStorage) -> None:
    store.write(KEY, {"widgets": [{"id": "w1"}]}, expected_version=None)
    first = store.read(KEY)
    assert first is not None

    first.document["widgets"].append({"id": "mutated"})  # type: ignore[union-attr]

    again = store.read(KEY)
    assert again is not None and again.document == {"widgets": [{"id": "w1"}]}


ADMIN_USER_LISTING = "SELECT DISTINCT user_id FROM dashpersist_documents"


def names_the_owner(sql: str) -> bool:
    """An INSERT writes the owner's id; every other statement filters on it."""
    if sql.startswith("INSERT"):
        return "(user_id, layout_id," in sql
    return "WHERE user_id = ?" in sql


def test_every_statement_on_a_document_table_names_the_owner(store: SQLStorage) -> None:
    statements: list[str] = []
    event.listen(
        store.engine,
        "before_cursor_execute",
        lambda conn, cursor, sql, *rest: statements.append(sql),
    )
    bob = DocumentKey("bob", "board")

    store.write(KEY, {"a": 1}, expected_version=None)
    store.write(bob, {"b": 1}, expected_version=None)
    store.write(bob, {"b": 2}, expected_version=1)
    current = store.read(bob)
    assert current is not None
    store.versions(bob, before=2, limit=5)
    store.layout_ids("bob")
    carol = DocumentKey("carol", "board")
    store.import_document(carol, replace(current, key=carol), store.versions(bob)[::-1])
    store.user_ids()
    store.compact(bob, remove=[1], snapshots={2: {"b": 2}})
    store.delete(bob)

    touching = [
        sql for sql in statements if "dashpersist_documents" in sql or "dashpersist_versions" in sql
    ]
    unowned = [sql for sql in touching if not names_the_owner(sql)]
    assert len(touching) >= 16
    # The administrative listing of the owners is the one statement that names none.
    assert unowned == [ADMIN_USER_LISTING]
    assert store.read(KEY) is not None


def test_compact_and_delete_follow_the_protocol(store: SQLStorage) -> None:
    documents: list[JsonObject] = [{"n": n} for n in range(4)]
    for version, document in enumerate(documents, start=1):
        store.write(KEY, document, expected_version=version - 1 or None)

    store.compact(KEY, remove=[1, 2, 99], snapshots={3: {"n": "keyframe"}})

    assert [(r.version, r.snapshot) for r in store.versions(KEY)] == [
        (4, {"n": 3}),
        (3, {"n": "keyframe"}),
    ]
    with pytest.raises(ConfigurationError):
        store.compact(KEY, remove=[4], snapshots={})
    store.compact(DocumentKey("nobody"), remove=[1], snapshots={})  # no document: no-op
    store.delete(KEY)
    assert store.read(KEY) is None and store.versions(KEY) == []
    with pytest.raises(NotFoundError):
        store.delete(KEY)


# -- fault points ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("point", "committed"),
    [
        ("after_layout_update_before_commit", False),
        ("after_history_insert_before_commit", False),
        ("after_commit_before_ack", True),
    ],
)
def test_an_error_at_a_fault_point_is_translated_and_leaves_a_whole_transaction(
    store: SQLStorage,
    monkeypatch: pytest.MonkeyPatch,
    point: str,
    committed: bool,
) -> None:
    store.write(KEY, {"a": 1}, expected_version=None)
    monkeypatch.setitem(_faults._ACTIONS, point, "raise:ENOSPC")

    with pytest.raises(StorageFullError):
        store.write(KEY, {"a": 2}, expected_version=1)

    monkeypatch.delitem(_faults._ACTIONS, point)
    stored = store.read(KEY)
    history = [r.version for r in store.versions(KEY)]
    assert stored is not None
    assert (stored.version, history) == ((2, [2, 1]) if committed else (1, [1]))


def test_errors_from_the_storage_are_all_dashpersist_errors(
    store: SQLStorage, db_path: Path
) -> None:
    store.write(KEY, {"a": 1}, expected_version=None)
    with sqlite3.connect(db_path) as conn:
        conn.execute("DROP TABLE dashpersist_versions")
    conn.close()

    with pytest.raises(DashPersistError) as caught:
        store.versions(KEY)

    assert isinstance(caught.value, CorruptStoreError)
    assert caught.value.__cause__ is not None


def test_close_waits_for_a_borrowed_connection(tmp_path: Path) -> None:
    storage = SQLStorage(f"sqlite:///{tmp_path / 'store.db'}")
    borrowed = threading.Event()
    release = threading.Event()
    closed = threading.Event()

    def borrower() -> None:
        with storage.borrowed_connection() as conn:
            borrowed.set()
            release.wait(5)
            assert conn.exec_driver_sql("SELECT 1").scalar() == 1

    thread = threading.Thread(target=borrower)
    thread.start()
    borrowed.wait(5)
    closer = threading.Thread(target=lambda: (storage.close(), closed.set()))
    closer.start()

    assert not closed.wait(0.2)  # close waits for the borrower
    release.set()
    thread.join(5)
    closer.join(5)
    assert closed.is_set()
    with pytest.raises(ConfigurationError, match="closed"), storage.borrowed_connection():
        pass


def test_a_write_waits_for_a_borrowed_sqlite_write_instead_of_failing_busy(
    tmp_path: Path,
) -> None:
    storage = SQLStorage(f"sqlite:///{tmp_path / 'store.db'}", busy_timeout=0.05)
    holding = threading.Event()

    def borrower() -> None:
        with storage.borrowed_connection(write=True) as conn:
            conn.exec_driver_sql("CREATE TABLE side (n INTEGER)")  # holds the write lock
            holding.set()
            time.sleep(0.3)  # six busy timeouts
            conn.commit()

    thread = threading.Thread(target=borrower)
    thread.start()
    holding.wait(5)

    assert storage.write(DocumentKey("alice"), {"widgets": []}, expected_version=None) == 1
    thread.join(5)
    with storage.borrowed_connection() as conn:  # the borrower's transaction committed
        assert conn.exec_driver_sql("SELECT count(*) FROM side").scalar() == 0
    storage.close()


def _count_checkouts(engine: Engine) -> list[int]:
    checkouts = [0]

    @event.listens_for(engine, "checkout")
    def counted(dbapi_connection, record, proxy) -> None:  # type: ignore[no-untyped-def]
        checkouts[0] += 1

    return checkouts


def test_sqlite_writes_keep_one_connection_and_a_failed_write_gives_it_back(
    store: SQLStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.write(KEY, {"n": 0}, expected_version=None)
    checkouts = _count_checkouts(store.engine)

    for n in range(1, 21):
        store.write(KEY, {"n": n}, expected_version=n)
    assert checkouts[0] == 0  # the writes shared the kept connection

    monkeypatch.setitem(_faults._ACTIONS, "after_history_insert_before_commit", "raise:EIO")
    with pytest.raises(DashPersistError):
        store.write(KEY, {"n": 99}, expected_version=21)
    monkeypatch.delitem(_faults._ACTIONS, "after_history_insert_before_commit")

    assert store.write(KEY, {"n": 21}, expected_version=21) == 22  # on a fresh connection
    assert checkouts[0] == 1
    stored = store.read(KEY)
    assert stored is not None and stored.document == {"n": 21}
    assert [r.version for r in store.versions(KEY, limit=3)] == [22, 21, 20]


def test_a_borrowed_write_left_uncommitted_is_rolled_back_and_writes_go_on(
    store: SQLStorage,
) -> None:
    with store.borrowed_connection(write=True) as conn:
        conn.exec_driver_sql("CREATE TABLE side (n INTEGER)")  # never committed

    assert store.write(KEY, {"a": 1}, expected_version=None) == 1
    with store.borrowed_connection() as conn:
        tables = conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE name = 'side'")
        assert tables.fetchall() == []


def test_close_gives_the_kept_write_connection_back(db_path: Path) -> None:
    storage = SQLStorage(sqlite_url(db_path))
    storage.write(KEY, {"a": 1}, expected_version=None)
    pool = storage.engine.pool
    assert pool.checkedout() == 1  # type: ignore[attr-defined]

    storage.close()

    assert pool.checkedout() == 0  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match="closed"):
        storage.write(KEY, {"a": 2}, expected_version=1)


@pytest.mark.parametrize("how", ["close", "invalidate"])
def test_a_borrower_that_closes_or_invalidates_the_write_connection_leaves_writes_working(
    store: SQLStorage, how: str
) -> None:
    with store.borrowed_connection(write=True) as conn:
        conn.exec_driver_sql("CREATE TABLE side (n INTEGER)")
        if how == "close":
            conn.commit()
            conn.close()
        else:
            conn.invalidate()  # a borrower that found the connection broken

    assert store.write(KEY, {"a": 1}, expected_version=None) == 1
    assert store.write(KEY, {"a": 2}, expected_version=1) == 2
    with store.borrowed_connection() as conn:
        tables = conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE name = 'side'")
        assert tables.fetchall() == ([("side",)] if how == "close" else [])
    store.close()
    assert store.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_a_kept_write_connection_that_broke_is_discarded_and_writes_go_on(
    store: SQLStorage,
) -> None:
    store.write(KEY, {"a": 1}, expected_version=None)
    with store.borrowed_connection(write=True) as conn:
        conn.exec_driver_sql("CREATE TABLE side (n INTEGER)")
        conn.connection.driver_connection.close()  # type: ignore[union-attr]  # broken

    assert store.write(KEY, {"a": 2}, expected_version=1) == 2
    stored = store.read(KEY)
    assert stored is not None and stored.document == {"a": 2}
    store.close()
    assert store.engine.pool.checkedout() == 0  # type: ignore[attr-defined]

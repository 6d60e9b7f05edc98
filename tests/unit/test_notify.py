"""Change notifications across processes: NOTIFY in the write's transaction, a listener thread.

The PostgreSQL cases run two processes on one real server: a child interpreter writes
through `SQLStorage`, and this process's `ChangeListener` hears it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import event, make_url

from dashpersist.errors import ConfigurationError, ValidationError
from dashpersist.notify import (
    CHANNEL,
    ChangeListener,
    RemoteChange,
    change_listener_for,
    encode_change,
    parse_change,
)
from dashpersist.storage import ChangeNotifier, DocumentKey, MemoryStorage
from dashpersist.storage.jsonfile import JSONFileStorage
from dashpersist.storage.sql import SQLStorage
from dashpersist.testing import FaultyStorage
from tests.children import REPO_ROOT
from tests.postgres import PostgresServer

HEARD_WITHIN = 1.0  # seconds from the writer's commit: the promise to hosts
WAIT = 30.0  # generous bound for slow setup steps (a server restart, a child starting)

CHILD = textwrap.dedent(
    """
    import sys
    from datetime import UTC, datetime
    from dashpersist._canonical import checksum
    from dashpersist.errors import DashPersistError
    from dashpersist.storage.protocol import DocumentKey, VersionRecord
    from dashpersist.storage.sql import SQLStorage

    url, operation, user_id, layout_id, device_id = sys.argv[1:6]
    storage = SQLStorage(url)
    key = DocumentKey(user_id, layout_id)
    try:
        if operation == "delete":
            storage.delete(key)
            print("committed deleted", flush=True)
        else:
            current = storage.read(key)
            document = {"widgets": [], "round": 0 if current is None else current.version}
            version = 1 if current is None else current.version + 1
            record = VersionRecord(
                version=version,
                checksum=checksum(document),
                parent_checksum=None if current is None else current.checksum,
                created_at=datetime.now(UTC),
                device_id=device_id,
                snapshot=document,
            )
            written = storage.write(
                key,
                document,
                record,
                expected_version=None if current is None else current.version,
            )
            print(f"committed {written}", flush=True)
    except DashPersistError as exc:
        print(f"failed {type(exc).__name__}", flush=True)
    finally:
        storage.close()
    """
)


def run_child(
    url: str,
    operation: str,
    key: DocumentKey,
    *,
    device_id: str = "phone",
    env: dict[str, str] | None = None,
) -> str:
    """Run one write or delete in a fresh interpreter; return the line it printed."""
    completed = subprocess.run(
        [sys.executable, "-c", CHILD, url, operation, key.user_id, key.layout_id, device_id],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
        env={**os.environ, **(env or {})},
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.strip()


class Heard:
    """A listener callback that keeps every change and signals the ones a test waits for."""

    def __init__(self) -> None:
        self.changes: list[RemoteChange] = []
        self._lock = threading.Lock()
        self._events: dict[DocumentKey, threading.Event] = {}

    def __call__(self, change: RemoteChange) -> None:
        with self._lock:
            self.changes.append(change)
            self._event(change.key).set()

    def wait_for(self, key: DocumentKey, timeout: float) -> bool:
        with self._lock:
            event = self._event(key)
        return event.wait(timeout)

    def reset(self, key: DocumentKey) -> None:
        with self._lock:
            self._events.pop(key, None)

    def of(self, key: DocumentKey) -> list[RemoteChange]:
        with self._lock:
            return [change for change in self.changes if change.key == key]

    def _event(self, key: DocumentKey) -> threading.Event:
        return self._events.setdefault(key, threading.Event())


@pytest.fixture
def heard() -> Heard:
    return Heard()


@pytest.fixture
def listener(postgres_url: str, heard: Heard) -> Iterator[ChangeListener]:
    listening = ChangeListener(postgres_url, heard, reconnect_delay=0.05, max_reconnect_delay=0.5)
    assert listening.wait_until_listening(WAIT)
    yield listening
    listening.close()


def schema_ready(url: str) -> None:
    SQLStorage(url).close()  # creates the schema once, so children do not race to


# -- two processes on one PostgreSQL -----------------------------------------------------------


@pytest.mark.postgres
def test_a_write_in_another_process_is_heard_within_a_second(
    postgres_url: str, listener: ChangeListener, heard: Heard
) -> None:
    schema_ready(postgres_url)
    key = DocumentKey("alice", "sales")

    printed = run_child(postgres_url, "write", key, device_id="phone")
    in_time = heard.wait_for(key, HEARD_WITHIN)

    assert printed == "committed 1"
    assert in_time
    (change,) = heard.of(key)
    assert (change.user_id, change.layout_id, change.version, change.device_id) == (
        "alice",
        "sales",
        1,
        "phone",
    )
    assert not change.is_delete


@pytest.mark.postgres
def test_a_delete_in_another_process_is_heard_as_a_change_without_a_version(
    postgres_url: str, listener: ChangeListener, heard: Heard
) -> None:
    schema_ready(postgres_url)
    key = DocumentKey("alice")
    run_child(postgres_url, "write", key)
    assert heard.wait_for(key, HEARD_WITHIN)
    heard.reset(key)

    printed = run_child(postgres_url, "delete", key)
    in_time = heard.wait_for(key, HEARD_WITHIN)

    assert printed == "committed deleted"
    assert in_time
    assert [change.version for change in heard.of(key)] == [1, None]
    assert heard.of(key)[-1].is_delete


@pytest.mark.postgres
def test_a_write_rolled_back_after_its_notify_is_never_heard(
    postgres_url: str, listener: ChangeListener, heard: Heard
) -> None:
    schema_ready(postgres_url)
    ghost, marker = DocumentKey("ghost"), DocumentKey("marker")

    # The fault strikes after the NOTIFY was queued, just before COMMIT.
    failed = run_child(
        postgres_url,
        "write",
        ghost,
        env={"DASHPERSIST_FAULTPOINTS": "after_history_insert_before_commit=raise:EIO"},
    )
    run_child(postgres_url, "write", marker)
    marker_heard = heard.wait_for(marker, HEARD_WITHIN)

    assert failed == "failed StorageError"
    assert marker_heard  # notifications arrive in commit order: the ghost's would be here
    assert heard.of(ghost) == []
    storage = SQLStorage(postgres_url)
    assert storage.read(ghost) is None
    storage.close()


@pytest.mark.postgres
def test_a_listener_survives_a_server_restart_and_hears_later_writes(
    postgres_url: str, postgres_server: PostgresServer, heard: Heard
) -> None:
    schema_ready(postgres_url)
    reconnected = threading.Event()
    listener = ChangeListener(
        postgres_url,
        heard,
        on_reconnect=reconnected.set,
        reconnect_delay=0.05,
        max_reconnect_delay=0.5,
    )
    assert listener.wait_until_listening(WAIT)
    key = DocumentKey("after-restart")
    try:
        postgres_server.stop()
        postgres_server.start()
        back = reconnected.wait(WAIT)

        printed = run_child(postgres_url, "write", key)
        in_time = heard.wait_for(key, HEARD_WITHIN)
    finally:
        if not postgres_server.is_running():
            postgres_server.start()
        listener.close()

    assert back
    assert printed == "committed 1"
    assert in_time
    assert [change.version for change in heard.of(key)] == [1]


# -- one process --------------------------------------------------------------------------------


@pytest.mark.postgres
def test_the_storages_own_writes_are_skipped_and_other_storages_writes_heard(
    postgres_url: str, heard: Heard
) -> None:
    mine, other = SQLStorage(postgres_url), SQLStorage(postgres_url)
    listener = change_listener_for(FaultyStorage(mine), heard)
    assert listener is not None
    assert listener.wait_until_listening(WAIT)
    own, theirs = DocumentKey("own"), DocumentKey("theirs")

    mine.write(own, {"n": 1}, expected_version=None)
    other.write(theirs, {"n": 1}, expected_version=None)
    theirs_heard = heard.wait_for(theirs, HEARD_WITHIN)
    listener.close()

    assert theirs_heard
    assert heard.of(own) == []  # sent before theirs, so it would have arrived first
    assert heard.of(theirs)[0].origin == other.change_origin
    mine.close()
    other.close()


@pytest.mark.postgres
def test_a_storage_with_notifications_off_sends_none(
    postgres_url: str, listener: ChangeListener, heard: Heard
) -> None:
    quiet, loud = SQLStorage(postgres_url, notify_changes=False), SQLStorage(postgres_url)

    quiet.write(DocumentKey("quiet"), {"n": 1}, expected_version=None)
    loud.write(DocumentKey("loud"), {"n": 1}, expected_version=None)
    loud_heard = heard.wait_for(DocumentKey("loud"), HEARD_WITHIN)

    assert loud_heard
    assert heard.of(DocumentKey("quiet")) == []
    quiet.close()
    loud.close()


@pytest.mark.postgres
def test_foreign_payloads_are_skipped_and_a_failing_callback_does_not_stop_listening(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    heard = Heard()
    calls: list[str] = []

    def callback(change: RemoteChange) -> None:
        calls.append(change.user_id)
        if change.user_id == "boom":
            raise RuntimeError("a host bug")
        heard(change)

    listener = ChangeListener(postgres_url, callback)
    assert listener.wait_until_listening(WAIT)
    url = make_url(postgres_url)
    valid = encode_change(DocumentKey("fine"), 3, None, origin="elsewhere")

    with psycopg.connect(
        host=str(url.query["host"]), user=url.username, dbname=url.database, autocommit=True
    ) as conn:
        for payload in [
            "not json",
            '{"user": 1}',
            encode_change(DocumentKey("boom"), 1, None, origin="x"),
            valid,
        ]:
            conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
    in_time = heard.wait_for(DocumentKey("fine"), HEARD_WITHIN)
    listener.close()

    assert in_time
    assert calls == ["boom", "fine"]
    assert "ignored a notification" in caplog.text
    assert "callback failed" in caplog.text


@pytest.mark.postgres
def test_close_stops_the_listener_promptly(postgres_url: str, heard: Heard) -> None:
    listener = ChangeListener(postgres_url, heard, poll_interval=0.1)
    assert listener.wait_until_listening(WAIT)

    started = time.monotonic()
    listener.close()
    took = time.monotonic() - started

    assert took < 1.0
    assert not listener.is_listening
    assert isinstance(listener, ChangeNotifier)


# -- without PostgreSQL ---------------------------------------------------------------------------


def test_a_payload_round_trips_through_encode_and_parse() -> None:
    payload = encode_change(DocumentKey("ä lice", "sälës"), 7, "phone", origin="0123")

    change = parse_change(payload)

    assert change == RemoteChange("ä lice", "sälës", 7, "phone", "0123")
    assert parse_change(encode_change(DocumentKey("a"), None, None, origin="o")).is_delete


def test_a_device_too_long_for_a_notification_is_left_out() -> None:
    key = DocumentKey("u" * 256, "l" * 256)

    change = parse_change(encode_change(key, 1, "d" * 10_000, origin="o"))

    assert change.device_id is None
    assert change.key == key


@pytest.mark.parametrize(
    "payload",
    [
        "",
        "[1]",
        '{"user": "a", "layout": "b", "version": 1}',
        '{"user": "a", "layout": "b", "version": 0, "origin": "o"}',
        '{"user": "a", "layout": "b", "version": true, "origin": "o"}',
        '{"user": "", "layout": "b", "version": 1, "origin": "o"}',
        '{"user": "a", "layout": "b", "version": 1, "origin": "o", "device": 5}',
    ],
)
def test_a_payload_that_is_not_a_change_is_refused(payload: str) -> None:
    with pytest.raises(ValidationError):
        parse_change(payload)


def test_sqlite_and_the_json_folder_and_memory_have_no_listener(tmp_path: Path) -> None:
    sqlite = SQLStorage(f"sqlite:///{tmp_path / 'dash.db'}")
    folder = JSONFileStorage(tmp_path / "layouts")

    listeners = [change_listener_for(store, print) for store in (sqlite, folder, MemoryStorage())]

    assert listeners == [None, None, None]
    with pytest.raises(ConfigurationError, match="PostgreSQL"):
        ChangeListener(f"sqlite:///{tmp_path / 'dash.db'}", print)
    sqlite.close()
    folder.close()


def test_a_sqlite_write_sends_no_notification(tmp_path: Path) -> None:
    storage = SQLStorage(f"sqlite:///{tmp_path / 'dash.db'}")
    statements: list[str] = []
    event.listen(
        storage.engine,
        "before_cursor_execute",
        lambda conn, cursor, sql, *rest: statements.append(sql),
    )

    storage.write(DocumentKey("alice"), {"n": 1}, expected_version=None)
    storage.delete(DocumentKey("alice"))

    assert statements
    assert not [sql for sql in statements if "pg_notify" in sql]
    storage.close()

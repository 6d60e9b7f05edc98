"""The operation deadline (`dashpersist.storage._deadline`) on a real PostgreSQL.

Connections go through the fault proxy, so the server can be made slow or silent while
the client is in the middle of a call; nothing here is mocked.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import exc as sa_exc

from dashpersist.errors import ConfigurationError, StorageUnavailableError
from dashpersist.storage import DocumentKey
from dashpersist.storage._deadline import (
    DEFAULT_OPERATION_TIMEOUT,
    watchdog_thread,
    watched_connections,
)
from dashpersist.storage.sql import SQLStorage
from tests.faults.proxy import FaultProxy

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60)]

DEADLINE = 1.0
SLACK = 1.0
"""Seconds the watchdog and the driver may take beyond the deadline to unblock a call."""


@pytest.fixture
def with_deadline(proxied_url: str) -> Iterator[Callable[..., SQLStorage]]:
    """Open SQLStorages on the proxied database with a deadline; close them after."""
    opened: list[SQLStorage] = []

    def open_storage(seconds: float = DEADLINE) -> SQLStorage:
        opened.append(SQLStorage(f"{proxied_url}?operation_timeout={seconds}", connect_timeout=2))
        return opened[-1]

    yield open_storage
    for storage in opened:
        storage.close()


def backend_pid(storage: SQLStorage) -> int:
    with storage.engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())


def deadline_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "dashpersist-operation-deadline"]


def test_a_call_the_server_never_answers_fails_at_the_deadline(
    fault_proxy: FaultProxy, with_deadline: Callable[..., SQLStorage]
) -> None:
    storage = with_deadline()
    checked_out = time.monotonic()  # the deadline runs from checkout
    with storage.engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
        fault_proxy.blackhole()

        with pytest.raises(sa_exc.OperationalError) as caught:
            conn.exec_driver_sql("SELECT 1")

        waited = time.monotonic() - checked_out
    fault_proxy.passthrough()

    assert DEADLINE <= waited < DEADLINE + SLACK
    assert caught.value.connection_invalidated  # the pool drops it: never reused
    assert watched_connections() == 0


def test_a_slow_call_within_the_deadline_is_left_alone(
    fault_proxy: FaultProxy, with_deadline: Callable[..., SQLStorage]
) -> None:
    deadline = 2 * DEADLINE
    storage = with_deadline(deadline)
    pid = backend_pid(storage)
    # Four round trips (ping, BEGIN, the query, ROLLBACK at checkin) of a tenth of the
    # deadline each, and the query's own 0.3: 0.7 of the deadline in all.
    fault_proxy.latency(deadline * 1000 / 20)
    started = time.monotonic()

    with storage.engine.connect() as conn:
        conn.exec_driver_sql("SELECT pg_sleep(%s)", (0.3 * deadline,))

    slow = time.monotonic() - started
    fault_proxy.passthrough()
    pid_after = backend_pid(storage)

    assert deadline / 2 < slow < deadline
    assert pid_after == pid  # same connection: it was never cut


def test_a_connection_back_in_the_pool_is_not_watched(
    with_deadline: Callable[..., SQLStorage],
) -> None:
    idle, busy = with_deadline(), with_deadline()
    idle_pid = backend_pid(idle)  # checked out and back in: idle in its pool from now on
    with busy.engine.connect() as conn:
        watched = watched_connections()

        # Held past the deadline: cut (and, as any disconnect does, its pool recycled;
        # hence a second engine for the idle connection).
        with pytest.raises(sa_exc.OperationalError):
            conn.exec_driver_sql("SELECT pg_sleep(%s)", (3 * DEADLINE,))

    reused_pid = backend_pid(idle)

    assert watched == 1
    assert reused_pid == idle_pid  # idle longer than the deadline, and never cut
    assert watched_connections() == 0


def test_a_storage_call_on_a_silent_connection_is_a_transient_error(
    fault_proxy: FaultProxy, with_deadline: Callable[..., SQLStorage]
) -> None:
    storage = with_deadline()
    key = DocumentKey("alice")
    storage.write(key, {"widgets": []}, expected_version=None)
    fault_proxy.blackhole()  # the pooled connection is established and idle

    with pytest.raises(StorageUnavailableError):
        storage.write(key, {"widgets": [{"id": "w1"}]}, expected_version=1)

    fault_proxy.passthrough()
    stored = storage.read(key)
    assert stored is not None and stored.version == 1


def test_a_pooled_connection_the_server_dropped_is_replaced_at_checkout(
    with_deadline: Callable[..., SQLStorage],
) -> None:
    storage = with_deadline()
    pid = backend_pid(storage)
    with with_deadline().engine.connect() as admin:
        admin.exec_driver_sql("SELECT pg_terminate_backend(%s)", (pid,))

    new_pid = backend_pid(storage)  # the ping at checkout finds it dead and reconnects

    assert new_pid != pid


def test_one_thread_watches_every_engine_and_stops_when_they_are_closed(
    with_deadline: Callable[..., SQLStorage],
) -> None:
    first = with_deadline()
    second = with_deadline(DEFAULT_OPERATION_TIMEOUT)
    thread = watchdog_thread()
    threads = deadline_threads()

    first.close()
    second.close()

    assert thread is not None and threads == [thread]
    assert watchdog_thread() is None
    assert not thread.is_alive()


def test_sqlite_and_a_zero_timeout_have_no_deadline(proxied_url: str, tmp_path: Path) -> None:
    sqlite = SQLStorage(f"sqlite:///{tmp_path / 'dash.db'}")
    switched_off = SQLStorage(f"{proxied_url}?operation_timeout=0")

    with sqlite.engine.connect(), switched_off.engine.connect():
        watched = watched_connections()
        thread = watchdog_thread()

    sqlite.close()
    switched_off.close()
    assert watched == 0
    assert thread is None


@pytest.mark.parametrize("value", ["soon", "-1", "inf", "nan"])
def test_an_operation_timeout_that_is_not_seconds_is_refused(value: str) -> None:
    with pytest.raises(ConfigurationError, match="operation_timeout"):
        SQLStorage(f"postgresql://nobody@127.0.0.1:1/nothing?operation_timeout={value}")


def test_the_option_is_not_passed_on_to_the_driver(
    with_deadline: Callable[..., SQLStorage],
) -> None:
    storage = with_deadline()

    query = dict(storage.engine.url.query)

    assert query == {}


def test_waiting_longer_than_the_deadline_for_another_schema_upgrade_is_not_cut(
    postgres_url: str, proxied_url: str
) -> None:
    """Opening a fresh database waits on the lock of a process upgrading it: slow work
    that the deadline (for stuck calls) must leave alone."""
    from sqlalchemy import create_engine

    from dashpersist.storage.sql import _SCHEMA_LOCK_ID

    upgrader = create_engine(postgres_url)  # another process, mid-upgrade
    opened: list[SQLStorage] = []
    failed: list[BaseException] = []

    def open_storage() -> None:
        try:
            opened.append(SQLStorage(f"{proxied_url}?operation_timeout={DEADLINE}"))
        except BaseException as exc:  # reported below
            failed.append(exc)

    with upgrader.connect() as conn:
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_ID,))
        opener = threading.Thread(target=open_storage)
        opener.start()
        time.sleep(2.5 * DEADLINE)  # the opener waits on the lock all along
        still_waiting = opener.is_alive()
        conn.rollback()  # the "upgrade" ends without creating anything
    opener.join(30)
    upgrader.dispose()

    assert still_waiting
    assert not failed, failed
    (storage,) = opened
    storage.write(DocumentKey("alice"), {"widgets": []}, expected_version=None)
    storage.close()

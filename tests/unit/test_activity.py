"""The activity log: recorded in the same store as the documents, read back a page at a time."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import event

from dashpersist import PersistenceConfig, PersistenceManager
from dashpersist.activity import (
    MAX_PAGE_SIZE,
    MAX_SUMMARY_LENGTH,
    ActivityEntry,
    ActivityLog,
    ActivityRecorder,
    JSONFileActivityLog,
    MemoryActivityLog,
    SQLActivityLog,
    activity_log_for,
)
from dashpersist.errors import ConfigurationError, CorruptStoreError, StorageError, ValidationError
from dashpersist.storage import DocumentKey, MemoryStorage, Storage
from dashpersist.storage.jsonfile import JSONFileStorage
from dashpersist.storage.sql import SQLStorage
from dashpersist.testing import FaultyStorage

START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def entry(n: int, *, user_id: str = "alice", action: str = "saved") -> ActivityEntry:
    return ActivityEntry(
        action=action,  # type: ignore[arg-type]
        user_id=user_id,
        layout_id="default",
        version=n,
        device_id="laptop",
        at=START + timedelta(seconds=n),
        summary=f"Moved widget 'w{n}'",
    )


def all_versions(log: ActivityLog, user_id: str, *, limit: int) -> list[list[int | None]]:
    """Read every page of *user_id*'s log; return each page's versions."""
    pages: list[list[int | None]] = []
    cursor = None
    while True:
        page = log.entries(user_id, limit=limit, before=cursor)
        pages.append([item.version for item in page.entries])
        cursor = page.next_cursor
        if cursor is None:
            return pages


# -- every backend ----------------------------------------------------------------------------


def test_the_factory_keeps_the_log_in_the_storages_own_store(storage: Storage) -> None:
    log = activity_log_for(storage)

    expected = {
        SQLStorage: SQLActivityLog,
        JSONFileStorage: JSONFileActivityLog,
        MemoryStorage: MemoryActivityLog,
    }[type(storage)]
    assert isinstance(log, expected)


def test_recorded_entries_come_back_newest_first_with_every_field(storage: Storage) -> None:
    log = activity_log_for(storage)
    first = entry(1)
    second = ActivityEntry(
        action="deleted", user_id="alice", layout_id="sales", at=START + timedelta(hours=1)
    )

    log.record(first)
    log.record(second)
    page = log.entries("alice")

    assert page.entries == [second, first]
    assert page.next_cursor is None


def test_a_user_never_sees_another_users_entries(storage: Storage) -> None:
    log = activity_log_for(storage)
    log.record(entry(1, user_id="alice"))
    log.record(entry(2, user_id="Alice"))
    log.record(entry(3, user_id="bob"))

    alice = log.entries("alice")

    assert [(item.user_id, item.version) for item in alice.entries] == [("alice", 1)]
    assert log.entries("carol").entries == []


def test_pages_cover_every_entry_once_in_order(storage: Storage) -> None:
    log = activity_log_for(storage)
    for n in range(1, 8):
        log.record(entry(n))

    pages = all_versions(log, "alice", limit=3)

    assert pages == [[7, 6, 5], [4, 3, 2], [1]]


def test_entries_recorded_while_paging_do_not_shift_the_later_pages(storage: Storage) -> None:
    log = activity_log_for(storage)
    for n in range(1, 7):
        log.record(entry(n))
    first = log.entries("alice", limit=2)

    for n in range(100, 105):  # concurrent writers add newer entries meanwhile
        log.record(entry(n))
    second = log.entries("alice", limit=2, before=first.next_cursor)
    third = log.entries("alice", limit=2, before=second.next_cursor)

    assert [item.version for item in first.entries] == [6, 5]
    assert [item.version for item in second.entries] == [4, 3]
    assert [item.version for item in third.entries] == [2, 1]
    assert third.next_cursor is None
    assert [item.version for item in log.entries("alice", limit=1).entries] == [104]


def test_entries_recorded_from_many_threads_at_once_are_all_kept(storage: Storage) -> None:
    log = activity_log_for(storage)

    def record_ten(base: int) -> None:
        for n in range(10):
            log.record(entry(base + n))

    threads = [threading.Thread(target=record_ten, args=(base,)) for base in (100, 200, 300, 400)]

    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    pages = all_versions(log, "alice", limit=7)

    versions = [version for page in pages for version in page]
    assert len(versions) == 40
    assert set(versions) == {base + n for base in (100, 200, 300, 400) for n in range(10)}


def test_a_malformed_cursor_is_refused(storage: Storage) -> None:
    log = activity_log_for(storage)

    with pytest.raises(ValidationError, match="cursor"):
        log.entries("alice", before="'; DROP TABLE dashpersist_activity; --")


@pytest.mark.parametrize("limit", [0, -1, MAX_PAGE_SIZE + 1])
def test_a_limit_outside_one_to_the_maximum_is_refused(storage: Storage, limit: int) -> None:
    log = activity_log_for(storage)

    with pytest.raises(ConfigurationError, match="limit"):
        log.entries("alice", limit=limit)


def test_text_no_store_can_hold_is_replaced_and_long_summaries_are_cut(storage: Storage) -> None:
    log = activity_log_for(storage)

    log.record(
        ActivityEntry(
            action="saved",
            user_id="alice",
            version=1,
            device_id="lap\x00top",
            at=START,
            summary="x\ud800" + "y" * 5000,
        )
    )
    stored = log.entries("alice").entries[0]

    assert stored.device_id == "lap\ufffdtop"
    assert stored.summary.startswith("x\ufffdyyy")
    assert len(stored.summary) == MAX_SUMMARY_LENGTH
    assert stored.summary.endswith("\u2026")


# -- entries ------------------------------------------------------------------------------------


def test_an_entry_refuses_a_naive_time_an_unknown_action_and_bad_ids() -> None:
    with pytest.raises(ConfigurationError, match="timezone"):
        ActivityEntry(action="saved", user_id="alice", at=datetime(2026, 1, 1))
    with pytest.raises(ConfigurationError, match="action"):
        ActivityEntry(action="exploded", user_id="alice")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="version"):
        ActivityEntry(action="saved", user_id="alice", version=0)
    with pytest.raises(ValidationError):
        ActivityEntry(action="saved", user_id="")


# -- the factory --------------------------------------------------------------------------------


def test_a_wrapper_gets_the_log_of_the_store_it_wraps(tmp_path: Path) -> None:
    inner = JSONFileStorage(tmp_path / "layouts")
    wrapper = FaultyStorage(inner)

    activity_log_for(wrapper).record(entry(1))

    assert [item.version for item in activity_log_for(inner).entries("alice").entries] == [1]
    inner.close()


def test_every_log_made_for_one_memory_storage_is_the_same_log() -> None:
    storage = MemoryStorage()
    other = MemoryStorage()

    activity_log_for(storage).record(entry(1))

    assert len(activity_log_for(storage).entries("alice").entries) == 1
    assert activity_log_for(other).entries("alice").entries == []


# -- SQL ----------------------------------------------------------------------------------------


def test_every_sql_statement_names_the_user(tmp_path: Path) -> None:
    storage = SQLStorage(f"sqlite:///{tmp_path / 'dash.db'}")
    statements: list[str] = []
    event.listen(
        storage.engine,
        "before_cursor_execute",
        lambda conn, cursor, sql, *rest: statements.append(sql),
    )
    log = activity_log_for(storage)

    log.record(entry(1))
    log.entries("alice", before=log.entries("alice").next_cursor)

    ours = [sql for sql in statements if "dashpersist_activity" in sql]
    assert len(ours) == 3
    assert all("user_id" in sql for sql in ours)
    storage.close()


def test_the_sqlite_cursor_is_never_reused_after_the_newest_entries_are_deleted(
    tmp_path: Path,
) -> None:
    storage = SQLStorage(f"sqlite:///{tmp_path / 'dash.db'}")
    log = activity_log_for(storage)
    for n in range(1, 4):
        log.record(entry(n))
    cursor = log.entries("alice", limit=1).next_cursor  # below entry 3
    with storage.engine.connect() as conn:
        conn.exec_driver_sql("DELETE FROM dashpersist_activity WHERE version = 3")
        conn.commit()

    log.record(entry(4))

    assert [item.version for item in log.entries("alice", before=cursor).entries] == [2, 1]
    storage.close()


# -- JSON folder --------------------------------------------------------------------------------


def test_the_json_log_is_one_hashed_file_per_user_outside_the_document_folders(
    tmp_path: Path,
) -> None:
    storage = JSONFileStorage(tmp_path / "layouts")
    storage.write(DocumentKey("alice"), {"widgets": []}, expected_version=None)

    activity_log_for(storage).record(entry(1, user_id="../Alice"))

    root = tmp_path / "layouts"
    files = [path.relative_to(root).as_posix() for path in root.glob(".activity/*.jsonl")]
    assert len(files) == 1
    assert files[0].startswith(".activity/alice-")  # the readable part of the hashed stem
    assert storage.user_ids() == ["alice"]
    storage.close()


def test_a_torn_last_line_is_ignored_and_cut_off_by_the_next_append(tmp_path: Path) -> None:
    log = JSONFileActivityLog(tmp_path)
    log.record(entry(1))
    log.record(entry(2))
    path = next((tmp_path / ".activity").glob("*.jsonl"))
    with path.open("ab") as file:
        file.write(b'{"action":"saved","at":"2026-')  # a crash mid-append

    before = [item.version for item in log.entries("alice").entries]
    log.record(entry(3))
    after = [item.version for item in log.entries("alice").entries]

    assert before == [2, 1]
    assert after == [3, 2, 1]
    assert path.read_bytes().count(b"\n") == 3
    assert path.read_bytes().endswith(b"}\n")


def test_pages_of_a_json_log_longer_than_one_read_chunk_are_complete(tmp_path: Path) -> None:
    log = JSONFileActivityLog(tmp_path)
    for n in range(1, 401):  # ~100 KiB: more than one 64 KiB chunk read backwards
        log.record(
            ActivityEntry(action="saved", user_id="alice", version=n, at=START, summary="s" * 200)
        )

    pages = all_versions(log, "alice", limit=MAX_PAGE_SIZE)

    assert pages == [list(range(400, 0, -1))]
    assert os.path.getsize(next((tmp_path / ".activity").glob("*.jsonl"))) > 1 << 16


def test_a_damaged_line_in_the_middle_is_corrupt_and_left_as_found(tmp_path: Path) -> None:
    log = JSONFileActivityLog(tmp_path)
    log.record(entry(1))
    path = next((tmp_path / ".activity").glob("*.jsonl"))
    path.write_bytes(b"not json\n" + path.read_bytes())
    damaged = path.read_bytes()

    with pytest.raises(CorruptStoreError) as caught:
        all_versions(log, "alice", limit=5)

    assert caught.value.path == path
    assert path.read_bytes() == damaged


def test_a_json_log_file_copied_from_another_user_is_corrupt(tmp_path: Path) -> None:
    log = JSONFileActivityLog(tmp_path)
    log.record(entry(1, user_id="bob"))
    folder = tmp_path / ".activity"
    bob = next(folder.glob("*.jsonl"))
    log.record(entry(1, user_id="alice"))
    alice = next(p for p in folder.glob("*.jsonl") if p != bob)
    alice.write_bytes(bob.read_bytes())

    with pytest.raises(CorruptStoreError, match="not an entry of this user's log"):
        log.entries("alice")


# -- batches and the recorder -----------------------------------------------------------------


def test_a_batch_keeps_its_order_across_users(storage: Storage) -> None:
    log = activity_log_for(storage)
    log.record_many([entry(1), entry(2, user_id="bob"), entry(3), entry(4, user_id="bob")])
    log.record_many([])

    assert [e.version for e in log.entries("alice").entries] == [3, 1]
    assert [e.version for e in log.entries("bob").entries] == [4, 2]


def test_the_recorder_writes_in_the_background_in_recorded_order() -> None:
    first, second = MemoryActivityLog(), MemoryActivityLog()
    recorder = ActivityRecorder(linger=0.01)
    for n in range(1, 7):
        recorder.record(first if n % 2 else second, entry(n))

    deadline = time.monotonic() + 5
    while len(first.entries("alice").entries) < 3 and time.monotonic() < deadline:
        time.sleep(0.005)

    assert [e.version for e in first.entries("alice").entries] == [5, 3, 1]
    assert [e.version for e in second.entries("alice").entries] == [6, 4, 2]


def test_the_recorder_writes_one_batch_per_burst_of_entries() -> None:
    batches: list[int] = []

    class CountingLog(MemoryActivityLog):
        def record_many(self, entries: Sequence[ActivityEntry]) -> None:
            batches.append(len(entries))
            super().record_many(entries)

    log = CountingLog()
    recorder = ActivityRecorder(linger=3600)  # the thread waits: flush() writes
    for n in range(1, 101):
        recorder.record(log, entry(n))
    recorder.flush()

    assert batches == [100]
    assert len(log.entries("alice", limit=MAX_PAGE_SIZE).entries) == 100


def test_recording_now_writes_before_returning() -> None:
    log = MemoryActivityLog()
    recorder = ActivityRecorder(linger=3600)
    recorder.record(log, entry(1))
    recorder.record(log, entry(2), now=True)

    assert [e.version for e in log.entries("alice").entries] == [2, 1]


def test_a_refused_batch_is_logged_and_later_batches_still_go_in(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class BrokenLog(MemoryActivityLog):
        def record_many(self, entries: Sequence[ActivityEntry]) -> None:
            raise StorageError("the activity table is gone")

    broken, working = BrokenLog(), MemoryActivityLog()
    recorder = ActivityRecorder(linger=3600)
    recorder.record(broken, entry(1))
    recorder.record(working, entry(2))
    with caplog.at_level(logging.WARNING, logger="dashpersist.activity"):
        recorder.flush()

    assert "could not record 1 activity entries" in caplog.text
    assert [e.version for e in working.entries("alice").entries] == [2]


def test_beyond_max_pending_the_oldest_entries_are_dropped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = MemoryActivityLog()
    recorder = ActivityRecorder(linger=3600, max_pending=3)
    with caplog.at_level(logging.WARNING, logger="dashpersist.activity"):
        for n in range(1, 6):
            recorder.record(log, entry(n))
    recorder.flush()

    assert [e.version for e in log.entries("alice").entries] == [5, 4, 3]
    assert "dropped 1 queued activity entries" in caplog.text


def test_a_closed_sql_storage_refuses_activity_instead_of_reconnecting(tmp_path: Path) -> None:
    storage = SQLStorage(f"sqlite:///{tmp_path / 'store.db'}")
    log = activity_log_for(storage)
    log.record(entry(1))
    storage.close()

    with pytest.raises(ConfigurationError, match="closed"):
        log.record(entry(2))


def test_a_manager_reads_the_activity_of_every_manager_of_its_process(tmp_path: Path) -> None:
    storage = SQLStorage(f"sqlite:///{tmp_path / 'store.db'}")
    laptop = PersistenceManager(storage, config=PersistenceConfig(auto_save=False))
    phone = PersistenceManager(storage, config=PersistenceConfig(auto_save=False))
    laptop.save_layout("alice", {"widgets": []})
    phone.load_layout("alice")
    phone.save_layout("alice", {"widgets": [], "theme": "dark"})

    assert [e.version for e in laptop.get_activity("alice").entries] == [2, 1]

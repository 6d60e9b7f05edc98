"""What a long-lived server keeps per document or per client stays bounded.

A server shares one manager among its users and passes a client id per browser tab: the
bookkeeping it keeps for each tab, document lock and deletion must not grow for good.
These tests look at the private structures, since memory is what they are about.
"""

from __future__ import annotations

import gc
import threading
import time
import weakref
from pathlib import Path

import pytest

from dashpersist import (
    Layout,
    MemoryStorage,
    PersistenceConfig,
    PersistenceManager,
    StorageUnavailableError,
    Widget,
    committer,
    manager,
)
from dashpersist.storage import DocumentKey, JSONFileStorage
from dashpersist.storage._locks import LockPairs
from dashpersist.testing import FakeClock, FaultyStorage


def layout(title: str) -> Layout:
    return Layout(widgets=[Widget(id="w1", type="chart", title=title, w=4, h=2)])


def server(tmp_path: Path, clock: FakeClock) -> PersistenceManager:
    config = PersistenceConfig(
        auto_save_delay=2.0, auto_save_max_wait=10.0, outbox_dir=tmp_path / "outbox"
    )
    return PersistenceManager(
        MemoryStorage(), config=config, timer=clock, sleep=clock.sleep, start_threads=False
    )


def clients_remembered(pm: PersistenceManager) -> set[str | None]:
    return {client for _, client in pm._written}


def test_clients_that_went_quiet_are_forgotten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manager, "WRITTEN_SWEEP_FROM", 8)
    clock = FakeClock()
    pm = server(tmp_path, clock)
    for n in range(20):
        pm.save_layout("alice", layout(f"old tab {n}"), immediate=True, client_id=f"old-{n}")
    clock.advance(manager.WRITTEN_KEPT_SECONDS + 1)
    for n in range(20):
        pm.save_layout("alice", layout(f"new tab {n}"), immediate=True, client_id=f"new-{n}")

    remembered = clients_remembered(pm)
    assert remembered, "the recent clients are remembered"
    assert all(client is not None and client.startswith("new-") for client in remembered)
    pm.close()


def test_clients_are_remembered_for_a_while_and_while_they_have_a_save_queued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manager, "WRITTEN_SWEEP_FROM", 8)
    clock = FakeClock()
    pm = server(tmp_path, clock)
    pm.save_layout("bob", layout("written"), immediate=True, client_id="queued-tab")
    pm.save_layout("bob", layout("queued"), client_id="queued-tab")  # nothing ticks: it waits
    clock.advance(manager.WRITTEN_KEPT_SECONDS + 1)
    pm.save_layout("carol", layout("written"), immediate=True, client_id="recent-tab")
    clock.advance(manager.WRITTEN_KEPT_SECONDS - 1)
    for n in range(20):
        pm.save_layout("alice", layout(f"tab {n}"), immediate=True, client_id=f"tab-{n}")

    assert {"queued-tab", "recent-tab"} <= clients_remembered(pm)
    pm.close()


def test_a_queued_save_an_immediate_one_overtook_is_not_written(tmp_path: Path) -> None:
    clock = FakeClock()
    pm = server(tmp_path, clock)
    slot = (DocumentKey("alice"), "tab")
    pm.save_layout("alice", layout("older, queued"), client_id="tab")
    older = pm._autosave.pending(slot)
    assert older is not None
    pm.save_layout("alice", layout("newer, immediate"), immediate=True, client_id="tab")

    # What the autosave worker does when it took the older save just before: it is stale.
    result = pm._write_queued(slot, older)

    assert result.source == "unchanged"
    assert pm.load_layout("alice") == layout("newer, immediate")
    assert [v.version for v in pm.get_version_history("alice")] == [1]
    pm.close()


def overtaken_while_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, swap_queues: bool
) -> PersistenceManager:
    """Have an immediate save overtake a queued save of its client that a writer took
    from the queue already, then let a minute pass and other clients' writes sweep."""
    monkeypatch.setattr(manager, "WRITTEN_SWEEP_FROM", 4)
    clock = FakeClock()
    pm = server(tmp_path, clock)
    key, slot = DocumentKey("alice"), (DocumentKey("alice"), "tab")
    pm.save_layout("alice", layout("older, queued"), client_id="tab")
    clock.advance(3)  # due
    with pm._lock_for(key):  # the writer takes the older save, then waits for the lock
        writer = threading.Thread(target=pm.tick)
        writer.start()
        deadline = time.monotonic() + 10
        while slot not in pm._writing:
            assert time.monotonic() < deadline, "the writer never took the queued save"
            time.sleep(0.005)
        pm.save_layout("alice", layout("newer, immediate"), immediate=True, client_id="tab")
        if swap_queues:
            pm.update_config(auto_save_delay=1.0)  # a new queue; the old one is closed
        clock.advance(manager.WRITTEN_KEPT_SECONDS + 1)
        for n in range(8):
            pm.save_layout(f"user-{n}", layout("x"), immediate=True, client_id=f"other-{n}")
    writer.join(10)
    return pm


@pytest.mark.parametrize("swap_queues", [False, True], ids=["same queue", "queue replaced"])
def test_a_queued_save_taken_before_an_immediate_one_stays_overtaken_for_minutes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swap_queues: bool
) -> None:
    pm = overtaken_while_in_flight(tmp_path, monkeypatch, swap_queues=swap_queues)

    assert pm.load_layout("alice") == layout("newer, immediate")
    assert [v.version for v in pm.get_version_history("alice")] == [1]
    pm.close()


def test_what_a_replaced_queue_could_not_write_waits_in_the_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = FaultyStorage(MemoryStorage())
    clock = FakeClock()
    config = PersistenceConfig(auto_save_delay=2.0, auto_save_max_wait=10.0, outbox_dir=None)
    pm = PersistenceManager(
        storage, config=config, timer=clock, sleep=clock.sleep, start_threads=False
    )
    pm.save_layout("alice", layout("kept"), client_id="tab")
    pm.save_layout("bob", layout("bob's older"), client_id="tab")
    storage.go_offline()
    offline_read = storage.read
    edits: list[str] = []

    def read_during_an_edit(key: DocumentKey) -> object:
        if not edits:  # the old queue is closing: bob edits again, into the new queue
            edits.append("bob's newer")
            pm.save_layout("bob", layout("bob's newer"), client_id="tab")
        return offline_read(key)

    monkeypatch.setattr(storage, "read", read_during_an_edit)

    with pytest.raises(StorageUnavailableError):
        pm.update_config(auto_save_delay=1.0)  # the old queue's close cannot write them
    assert edits == ["bob's newer"]
    monkeypatch.setattr(storage, "read", offline_read)
    storage.go_online()
    pm.flush()

    assert pm.load_layout("alice") == layout("kept")
    assert pm.load_layout("bob") == layout("bob's newer")
    assert not pm.has_pending_writes
    pm.close()


def test_document_locks_live_only_while_held_or_among_the_latest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manager, "RECENT_LOCKS", 4)
    pm = server(tmp_path, FakeClock())
    for n in range(50):
        pm.save_layout(f"user-{n}", layout("x"), immediate=True)
    gc.collect()

    assert sorted(key.user_id for key in pm._key_locks) == [f"user-{n}" for n in range(46, 50)]
    held = pm._lock_for(DocumentKey("user-1"))
    assert pm._lock_for(DocumentKey("user-1")) is held  # one lock per document while held
    pm.close()


def test_one_document_lock_serializes_threads_even_as_locks_come_and_go(tmp_path: Path) -> None:
    pm = server(tmp_path, FakeClock())
    key = DocumentKey("alice")
    inside = 0
    overlaps = 0
    guard = threading.Lock()

    def enter_many() -> None:
        nonlocal inside, overlaps
        for _ in range(2000):
            with pm._lock_for(key):
                with guard:
                    inside += 1
                    overlaps += inside > 1
                with guard:
                    inside -= 1

    threads = [threading.Thread(target=enter_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert overlaps == 0
    pm.close()


def test_deletions_are_remembered_up_to_a_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(committer, "DELETIONS_KEPT", 4)
    pm = server(tmp_path, FakeClock())
    for n in range(10):
        pm.save_layout(f"user-{n}", layout("x"), immediate=True)
        pm.delete_layout(f"user-{n}")

    assert len(pm._committer._deleted) == 4
    pm.save_layout("user-6", layout("again"), immediate=True)
    pm.delete_layout("user-6")  # deleted again: the latest deletion, kept longest
    pm.save_layout("user-10", layout("x"), immediate=True)
    pm.delete_layout("user-10")
    assert DocumentKey("user-6") in pm._committer._deleted
    pm.close()


def test_a_trim_planned_before_a_deletion_stands_down_even_once_it_is_forgotten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(committer, "DELETIONS_KEPT", 4)
    pm = server(tmp_path, FakeClock())
    work = pm._committer
    alice, others = DocumentKey("alice"), [DocumentKey(f"user-{n}") for n in range(8)]

    untouched = work._deletion_mark(alice)
    assert not work._deleted_since(alice, untouched)
    work.forget(others[0])
    assert not work._deleted_since(alice, untouched)  # nothing forgotten yet

    deleted = work._deletion_mark(alice)
    work.forget(alice)
    assert work._deleted_since(alice, deleted)
    for key in others:
        work.forget(key)  # alice's deletion is pushed out of memory
    assert alice not in work._deleted
    assert work._deleted_since(alice, deleted)
    assert work._deleted_since(alice, untouched)  # may have been deleted: stand down
    assert not work._deleted_since(alice, work._deletion_mark(alice))
    pm.close()


def test_a_json_folder_keeps_no_file_locks_between_calls(tmp_path: Path) -> None:
    storage = JSONFileStorage(tmp_path / "store")
    pm = PersistenceManager(storage, config=PersistenceConfig(outbox_dir=None))
    for n in range(100):
        pm.save_layout(f"user-{n}", layout("x"), immediate=True)
    pm.get_activity("user-1")  # the activity log's per-user files are locked too
    gc.collect()

    assert len(storage._locks) == 64  # the latest made only
    activity = pm._activity_log()
    assert activity is not None
    assert len(activity._files._locks) == 64
    pm.close()


def test_lock_pairs_give_one_pair_per_name_while_it_is_held(tmp_path: Path) -> None:
    import filelock

    pairs: LockPairs[str] = LockPairs(recent=0)
    made: list[str] = []

    def file_lock(name: str) -> filelock.FileLock:
        made.append(name)
        return filelock.FileLock(tmp_path / f"{name}.lock")

    first = pairs.get("a", lambda: file_lock("a"))
    again = pairs.get("a", lambda: file_lock("a"))
    other = pairs.get("b", lambda: file_lock("b"))
    assert again is first and other is not first
    assert made == ["a", "b"]
    del first, again, other
    gc.collect()

    assert len(pairs) == 0
    pairs.get("a", lambda: file_lock("a"))
    assert made == ["a", "b", "a"]


def test_lock_pairs_keep_the_latest_made_while_nobody_holds_them(tmp_path: Path) -> None:
    import filelock

    pairs: LockPairs[str] = LockPairs(recent=1)
    first = weakref.ref(pairs.get("a", lambda: filelock.FileLock(tmp_path / "a.lock")))
    gc.collect()
    assert first() is not None
    assert pairs.get("a", lambda: filelock.FileLock(tmp_path / "a.lock")) is first()

    pairs.get("b", lambda: filelock.FileLock(tmp_path / "b.lock"))  # "a" is no longer latest
    gc.collect()
    assert len(pairs) == 1

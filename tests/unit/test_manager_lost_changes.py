"""Paths on which a save the caller was told about could be lost, or a deleted document
come back: each was reproduced by a review, and each test fails without its fix."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from dashpersist import (
    ConfigurationError,
    ConflictError,
    Layout,
    MemoryStorage,
    PersistenceConfig,
    PersistenceManager,
    StorageFullError,
    StorageUnavailableError,
    Widget,
)
from dashpersist.committer import PendingSave
from dashpersist.events import ChangeEvent
from dashpersist.models import SaveResult
from dashpersist.storage import DocumentKey
from dashpersist.testing import FakeClock, FaultyStorage


def layout(title: str, *extra: str) -> Layout:
    widgets = [Widget(id="w1", type="chart", title=title, w=4, h=2)]
    widgets += [Widget(id=name, type="chart", title=name, x=4, w=4, h=2) for name in extra]
    return Layout(widgets=widgets)


def manager(
    tmp_path: Path, storage: FaultyStorage | None = None, clock: FakeClock | None = None
) -> tuple[PersistenceManager, FaultyStorage, FakeClock]:
    clock = clock or FakeClock()
    storage = storage or FaultyStorage(MemoryStorage())
    config = PersistenceConfig(
        auto_save_delay=2.0,
        auto_save_max_wait=10.0,
        outbox_dir=tmp_path / "outbox",
        retry_attempts=1,
    )
    pm = PersistenceManager(
        storage, config=config, timer=clock, sleep=clock.sleep, start_threads=False
    )
    return pm, storage, clock


def storage_of(pm: PersistenceManager) -> FaultyStorage:
    storage = pm._storage
    assert isinstance(storage, FaultyStorage)
    return storage


def apply_and_listen(pm: PersistenceManager, change: str = "applied") -> list[str]:
    """Retitle alice's widget w1 through `apply`; return the list its callbacks append
    to: "success", the error's type name, "rollback"."""
    heard: list[str] = []
    pm.apply(
        "alice",
        lambda doc: doc.update_widget("w1", title=change),
        on_success=lambda result: heard.append("success"),
        on_error=lambda error: heard.append(type(error).__name__),
        on_rollback=lambda: heard.append("rollback"),
    )
    return heard


def disk_full() -> StorageFullError:
    return StorageFullError("disk full")


def test_a_failed_sync_keeps_the_queued_save_it_took(tmp_path: Path) -> None:
    pm, storage, _ = manager(tmp_path)
    pm.save_layout("alice", layout("v1"), immediate=True)
    pm.save_layout("alice", layout("queued edit"))
    storage.fail_next("write", error=disk_full)

    with pytest.raises(StorageFullError):
        pm.sync("alice")

    assert pm.has_pending_writes
    pm.flush()
    assert pm.load_layout("alice") == layout("queued edit")
    pm.close()


def test_a_failed_immediate_save_keeps_the_clients_queued_save(tmp_path: Path) -> None:
    pm, storage, _ = manager(tmp_path)
    pm.save_layout("alice", layout("v1"), immediate=True)
    pm.save_layout("alice", layout("queued", "w2"))
    storage.fail_next("write", error=disk_full)

    with pytest.raises(StorageFullError):
        pm.save_layout("alice", layout("immediate"), immediate=True)

    assert pm.load_layout("alice") == layout("queued", "w2")
    pm.flush()
    assert [v.version for v in pm.get_version_history("alice")] == [2, 1]
    pm.close()


def test_a_written_immediate_save_still_supersedes_the_clients_queued_one(tmp_path: Path) -> None:
    pm, _, _ = manager(tmp_path)
    pm.save_layout("alice", layout("v1"), immediate=True)
    pm.save_layout("alice", layout("queued"))

    pm.save_layout("alice", layout("immediate"), immediate=True)

    assert not pm.has_pending_writes
    assert pm.load_layout("alice") == layout("immediate")
    pm.close()


def test_a_clone_does_not_overwrite_a_target_with_a_queued_save(tmp_path: Path) -> None:
    pm, _, _ = manager(tmp_path)
    pm.save_layout("alice", layout("source"), layout_id="src", immediate=True)
    pm.save_layout("alice", layout("my queued target"), layout_id="tgt")

    with pytest.raises(ConflictError):
        pm.clone_layout("alice", "src", "tgt")

    pm.flush()
    assert pm.load_layout("alice", layout_id="tgt") == layout("my queued target")
    pm.close()


def test_a_clone_does_not_overwrite_a_target_waiting_in_the_outbox(tmp_path: Path) -> None:
    pm, storage, _ = manager(tmp_path)
    pm.save_layout("alice", layout("source"), layout_id="src", immediate=True)
    storage.go_offline()
    pm.save_layout("alice", layout("offline target"), layout_id="tgt", immediate=True)
    storage.go_online()

    with pytest.raises(ConflictError):
        pm.clone_layout("alice", "src", "tgt")
    pm.close()


def test_a_deleted_document_is_not_brought_back_by_its_outbox_entries(tmp_path: Path) -> None:
    pm, storage, _ = manager(tmp_path)
    pm.save_layout("alice", layout("v1"), immediate=True)
    storage.go_offline()
    assert pm.save_layout("alice", layout("offline"), immediate=True).source == "outbox"
    storage.go_online()

    pm.delete_layout("alice")

    assert pm.load_layout("alice") is None
    assert pm.replay_outbox() == 0
    assert storage.read(DocumentKey("alice")) is None
    pm.close()


def test_a_delete_that_fails_drops_nothing(tmp_path: Path) -> None:
    pm, storage, _ = manager(tmp_path)
    pm.save_layout("alice", layout("v1"), immediate=True)
    pm.save_layout("alice", layout("queued"))
    storage.fail_next("delete", error=disk_full)

    with pytest.raises(StorageFullError):
        pm.delete_layout("alice")

    assert pm.load_layout("alice") == layout("queued")
    pm.flush()
    assert storage.read(DocumentKey("alice")) is not None
    pm.close()


def test_a_delete_is_not_undone_by_an_autosave_write_already_under_way(tmp_path: Path) -> None:
    pm, _, clock = manager(tmp_path)
    key = DocumentKey("alice")
    pm.save_layout("alice", layout("v1"), immediate=True)
    pm.save_layout("alice", layout("queued edit"))
    clock.advance(3)  # due
    with pm._lock_for(key):  # the writer takes the queued save, then waits for the lock
        writer = threading.Thread(target=pm.tick)
        writer.start()
        deadline = time.monotonic() + 10
        while (key, None) not in pm._writing:
            assert time.monotonic() < deadline, "the writer never took the queued save"
            time.sleep(0.005)
        pm.delete_layout("alice")
    writer.join(10)

    assert pm.load_layout("alice") is None
    assert pm.get_version_history("alice") == []
    pm.close()


@pytest.mark.parametrize("call", ["flush", "close"])
def test_flush_or_close_from_inside_an_autosave_write_raises_instead_of_hanging(
    tmp_path: Path, call: str
) -> None:
    pm, _, clock = manager(tmp_path)
    pm.save_layout("alice", layout("v1"), immediate=True)
    raised: list[BaseException] = []

    def call_when_saved(event: ChangeEvent) -> None:
        if event.kind == "saved" and event.version == 2:
            try:
                getattr(pm, call)()
            except ConfigurationError as exc:
                raised.append(exc)

    pm.subscribe(call_when_saved)
    pm.save_layout("alice", layout("queued"))
    clock.advance(3)
    writer = threading.Thread(target=pm.tick, daemon=True)
    writer.start()
    writer.join(5)

    assert not writer.is_alive()
    assert len(raised) == 1
    assert pm.load_layout("alice") == layout("queued")
    assert pm.save_layout("alice", layout("next")).source == "queued"  # still open
    pm.close()
    assert pm.is_closed


def test_a_delete_rolls_back_the_documents_optimistic_changes_with_their_callbacks(
    tmp_path: Path,
) -> None:
    pm, _, _ = manager(tmp_path)
    pm.save_layout("alice", layout("v1"), immediate=True)
    heard = apply_and_listen(pm)

    pm.delete_layout("alice")
    pm.flush()

    assert heard == ["NotFoundError", "rollback"]
    assert pm.pending("alice") == []
    assert pm.load_layout("alice") is None
    pm.close()


def test_a_rollback_supersedes_the_callers_queued_saves_and_optimistic_changes(
    tmp_path: Path,
) -> None:
    pm, _, _ = manager(tmp_path)
    pm.save_layout("alice", layout("v1"), immediate=True)
    pm.save_layout("alice", layout("v2"), immediate=True)
    pm.save_layout("alice", layout("queued"))
    heard = apply_and_listen(pm)

    pm.rollback_to_version("alice", 1)

    assert pm.load_layout("alice") == layout("v1")
    pm.flush()
    assert pm.load_layout("alice") == layout("v1")
    assert heard == ["ConflictError", "rollback"]
    assert pm.get_version_history("alice")[0].change_type == "rollback"
    pm.close()


def test_another_clients_queued_save_still_merges_after_a_rollback(tmp_path: Path) -> None:
    pm, _, _ = manager(tmp_path)
    pm.save_layout("alice", layout("v1"), immediate=True)
    pm.save_layout("alice", layout("v2"), immediate=True)
    tab = pm.load_versioned("alice", client_id="tab")
    assert tab is not None
    pm.save_layout(
        "alice", layout("v2", "w2"), client_id="tab", base_version=tab.version
    )  # adds a widget

    pm.rollback_to_version("alice", 1)
    pm.flush()

    assert pm.load_layout("alice") == layout("v1", "w2")  # the rollback, and the tab's edit
    pm.close()


def test_a_save_after_an_apply_supersedes_the_change_and_settles_it(tmp_path: Path) -> None:
    pm, _, _ = manager(tmp_path)
    pm.save_layout("alice", layout("v1"), immediate=True)
    heard = apply_and_listen(pm)

    pm.save_layout("alice", layout("applied", "w2"), immediate=True)  # built from the view

    assert pm.pending("alice") == []
    assert heard == ["success"]
    assert not pm.has_pending_writes  # the change's own write is superseded
    view = pm.apply("alice", lambda doc: doc.update_widget("w2", title="next"))
    assert [w.title for w in view.widgets] == ["applied", "next"]  # on top of the save
    pm.flush()
    assert pm.load_layout("alice") == view
    pm.close()


def test_a_queued_save_while_changes_wait_carries_them(tmp_path: Path) -> None:
    pm, _, _ = manager(tmp_path)
    pm.save_layout("alice", layout("v1"), immediate=True)
    heard = apply_and_listen(pm)

    pm.save_layout("alice", layout("applied", "w2"))  # queued, replaces the change's write

    assert pm.load_layout("alice") == layout("applied", "w2")
    assert len(pm.pending("alice")) == 1  # settled when the save is written
    pm.flush()
    assert pm.load_layout("alice") == layout("applied", "w2")
    assert pm.pending("alice") == []
    assert heard == ["success"]
    pm.close()


def test_a_failed_apply_on_top_of_a_queued_save_keeps_that_save(tmp_path: Path) -> None:
    pm, storage, _ = manager(tmp_path)
    pm.save_layout("alice", layout("v1"), immediate=True)
    pm.save_layout("alice", layout("queued", "w2"))
    errors: list[str] = []
    pm.apply(
        "alice",
        lambda doc: doc.update_widget("w2", title="applied"),
        on_error=lambda error: errors.append(type(error).__name__),
    )
    storage.fail_next("write", error=disk_full)

    pm.flush()  # the change's write fails: it rolls back to the queued save

    assert errors == ["StorageFullError"]
    assert pm.has_pending_writes
    assert pm.load_layout("alice") == layout("queued", "w2")
    pm.flush()
    assert storage.read(DocumentKey("alice")) is not None
    assert pm.load_layout("alice") == layout("queued", "w2")
    assert [v.version for v in pm.get_version_history("alice")] == [2, 1]
    pm.close()


def test_a_queued_save_merges_with_another_clients_save_written_before_it(
    tmp_path: Path,
) -> None:
    pm, _, _ = manager(tmp_path)
    pm.save_layout("alice", layout("v1"), immediate=True)
    pm.save_layout("alice", layout("tab A's edit"), client_id="A")  # built on version 1

    pm.save_layout("alice", layout("v1", "w2"), immediate=True, client_id="B")  # version 2
    (written,) = pm.flush()

    assert written.merge is not None
    assert pm.load_layout("alice") == layout("tab A's edit", "w2")
    pm.close()


def test_a_clients_queued_saves_build_on_its_own_earlier_write(tmp_path: Path) -> None:
    pm, _, clock = manager(tmp_path)
    pm.save_layout("alice", layout("v1"), immediate=True)
    key = DocumentKey("alice")
    pm.save_layout("alice", layout("changed"))
    clock.advance(3)
    with pm._lock_for(key):  # the first save is taken for writing; the client edits on
        writer = threading.Thread(target=pm.tick)
        writer.start()
        deadline = time.monotonic() + 10
        while (key, None) not in pm._writing:
            assert time.monotonic() < deadline, "the writer never took the queued save"
            time.sleep(0.005)
        pm.save_layout("alice", layout("v1"))  # ... and changes its mind back
    writer.join(10)
    (written,) = pm.flush()

    assert written.merge is None  # on top of its own write, not merged against it
    assert pm.load_layout("alice") == layout("v1")
    pm.close()


def test_one_failed_write_is_one_save_failed_event(tmp_path: Path) -> None:
    clock = FakeClock()
    storage = FaultyStorage(MemoryStorage())
    config = PersistenceConfig(
        auto_save_delay=2.0, auto_save_max_wait=10.0, outbox_dir=None, retry_attempts=1
    )
    pm = PersistenceManager(
        storage, config=config, timer=clock, sleep=clock.sleep, start_threads=False
    )
    kinds: list[str] = []
    pm.subscribe(lambda event: kinds.append(event.kind))
    pm.save_layout("alice", layout("v1"), immediate=True)
    pm.save_layout("alice", layout("queued"))
    storage.fail_next("write", error=disk_full)
    clock.advance(3)
    pm.tick()  # a queued write fails
    storage.go_offline()
    with pytest.raises(StorageUnavailableError):  # no outbox to park it in
        pm.save_layout("alice", layout("immediate"), immediate=True)

    assert kinds.count("save_failed") == 2
    storage.go_online()
    pm.close()


def test_a_save_queued_after_a_delete_creates_the_document_afresh(tmp_path: Path) -> None:
    pm, storage, _ = manager(tmp_path)
    for title in ("v1", "v2", "v3"):
        pm.save_layout("alice", layout(title), immediate=True)
    pm.delete_layout("alice")

    pm.save_layout("alice", layout("fresh"))
    pm.flush()

    stored = storage.read(DocumentKey("alice"))
    assert stored is not None and stored.version == 1
    assert pm.load_layout("alice") == layout("fresh")
    pm.close()


def test_a_clients_second_save_keeps_what_its_merged_first_save_merged_in(
    tmp_path: Path,
) -> None:
    pm, _, _ = manager(tmp_path)
    pm.save_layout("alice", layout("v1"), immediate=True)
    page = pm.load_versioned("alice", client_id="A")
    assert page is not None
    pm.save_layout("alice", layout("A edit 1"), client_id="A", base_version=page.version)
    pm.save_layout("alice", layout("v1", "w2"), client_id="B", immediate=True)
    pm.flush()  # A's first save merges with B's widget

    pm.save_layout("alice", layout("A edit 2"), client_id="A", base_version=page.version)
    pm.flush()

    assert pm.load_layout("alice") == layout("A edit 2", "w2")
    pm.close()


def test_a_queued_save_carrying_changes_waits_again_when_its_write_fails(tmp_path: Path) -> None:
    pm, storage, _ = manager(tmp_path)
    pm.save_layout("alice", layout("v1"), immediate=True)
    heard = apply_and_listen(pm)
    pm.save_layout("alice", layout("v1", "w2"))
    storage.fail_next("write", error=disk_full)

    pm.flush()  # the changes roll back; the caller's save waits again
    assert heard == ["StorageFullError", "rollback"]
    assert pm.has_pending_writes
    pm.flush()

    assert pm.load_layout("alice") == layout("v1", "w2")
    pm.close()


def test_a_failed_immediate_save_leaves_waiting_changes_as_they_were(tmp_path: Path) -> None:
    pm, storage, _ = manager(tmp_path)
    pm.save_layout("alice", layout("v1"), immediate=True)
    heard = apply_and_listen(pm)
    storage.fail_next("write", error=disk_full)

    with pytest.raises(StorageFullError):
        pm.save_layout("alice", layout("v1", "w2"), immediate=True)
    assert heard == []
    assert len(pm.pending("alice")) == 1
    pm.flush()

    assert heard == ["success"]
    assert pm.load_layout("alice") == layout("applied")
    pm.close()


def test_close_writes_what_a_failed_change_put_back(tmp_path: Path) -> None:
    pm, storage, _ = manager(tmp_path)
    pm.save_layout("alice", layout("v1"), immediate=True)
    pm.save_layout("alice", layout("queued", "w2"))
    pm.apply("alice", lambda doc: doc.update_widget("w2", title="applied"))
    storage.fail_next("write", error=disk_full)

    pm.close()  # the change's write fails and rolls back to the queued save: written too

    stored = storage.read(DocumentKey("alice"))
    assert stored is not None
    assert Layout.model_validate(stored.document) == layout("queued", "w2")


def test_the_callers_own_save_settles_waiting_changes_under_the_document_lock(
    tmp_path: Path,
) -> None:
    pm, _, _ = manager(tmp_path)
    pm.save_layout("alice", layout("v1"), immediate=True)
    pm.apply("alice", lambda doc: doc.update_widget("w1", title="applied"))
    done = threading.Event()
    with pm._lock_for(DocumentKey("alice")):  # another apply of the document is under way
        saving = threading.Thread(
            target=lambda: (pm.save_layout("alice", layout("applied", "w2")), done.set())
        )
        saving.start()
        assert not done.wait(0.2)  # it waits: the queue holds the change's write
    saving.join(10)

    assert done.is_set()
    pm.flush()
    assert pm.pending("alice") == []
    assert pm.load_layout("alice") == layout("applied", "w2")
    pm.close()


def test_the_callers_own_queued_save_needs_no_lock_when_no_change_waits(tmp_path: Path) -> None:
    pm, _, _ = manager(tmp_path)
    pm.save_layout("alice", layout("v1"), immediate=True)
    done = threading.Event()
    with pm._lock_for(DocumentKey("alice")):
        saving = threading.Thread(
            target=lambda: (pm.save_layout("alice", layout("queued")), done.set())
        )
        saving.start()
        assert done.wait(5)
    saving.join(10)
    pm.close()


def test_a_callback_runs_once_its_thread_holds_no_document_lock(tmp_path: Path) -> None:
    pm, _, clock = manager(tmp_path)
    pm.save_layout("alice", layout("v1"), immediate=True)
    pm.save_layout("alice", layout("v2"), immediate=True)
    pm.save_layout("alice", layout("v2", "w2"), client_id="tab", base_version=2)
    flushed: list[object] = []

    def on_rollback() -> None:  # waits for the autosave write below: not in the lock it needs
        flushed.append(pm.flush())

    pm.apply("alice", lambda doc: doc.update_widget("w1", title="x"), on_rollback=on_rollback)
    clock.advance(3)
    taken = threading.Event()
    store = pm._store

    def slow_store(key: DocumentKey, pending: PendingSave) -> SaveResult:
        if pending.client_id == "tab":  # the writer has the tab's save; the rollback goes first
            taken.set()
            time.sleep(0.3)
        return store(key, pending)

    pm._store = slow_store  # type: ignore[method-assign]
    writer = threading.Thread(target=pm.tick, daemon=True)
    writer.start()
    assert taken.wait(5)
    rolling_back = threading.Thread(target=pm.rollback_to_version, args=("alice", 1), daemon=True)
    rolling_back.start()
    rolling_back.join(10)
    writer.join(10)

    assert not rolling_back.is_alive() and not writer.is_alive()
    assert len(flushed) == 1
    assert pm.load_layout("alice") == layout("v1", "w2")
    pm.close()

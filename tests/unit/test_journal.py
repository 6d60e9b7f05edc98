"""Optimistic updates through PersistenceManager.apply: confirm, roll back, rebase (S23)."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest

from dashpersist import (
    ConflictError,
    Layout,
    MemoryStorage,
    PersistenceConfig,
    PersistenceManager,
    SaveResult,
    ValidationError,
    Widget,
)
from dashpersist.errors import DashPersistError
from dashpersist.journal import Change
from dashpersist.storage import DocumentKey
from dashpersist.testing import FakeClock, FaultyStorage


def base() -> Layout:
    return Layout(
        widgets=[
            Widget(id="w1", type="chart", w=4, h=2),
            Widget(id="w2", type="chart", x=4, w=4, h=2),
        ]
    )


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def success(self, result: SaveResult) -> None:
        self.calls.append(("success", result.version))

    def error(self, error: DashPersistError) -> None:
        self.calls.append(("error", type(error).__name__))

    def rollback(self) -> None:
        self.calls.append(("rollback", None))

    def apply(self, pm: PersistenceManager, change: Change, **options: bool) -> Layout:
        return pm.apply(
            "alice",
            change,
            on_success=self.success,
            on_error=self.error,
            on_rollback=self.rollback,
            **options,
        )


def make(
    storage: FaultyStorage | MemoryStorage, tmp_path: Path, **settings: object
) -> PersistenceManager:
    config = PersistenceConfig.model_validate(
        {"outbox_dir": tmp_path / "outbox", "retry_attempts": 1, **settings}
    )
    clock = FakeClock()
    return PersistenceManager(
        storage, config=config, timer=clock, sleep=clock.sleep, start_threads=False
    )


def test_apply_returns_the_new_view_at_once_and_confirms_on_flush(tmp_path: Path) -> None:
    storage = FaultyStorage(MemoryStorage())
    pm = make(storage, tmp_path)
    pm.save_layout("alice", base(), immediate=True)
    seen = Recorder()

    view = seen.apply(pm, lambda layout: layout.update_widget("w1", title="moved"))
    before_flush = (pm.pending("alice"), storage.inner.read(DocumentKey("alice")))
    pm.flush()

    assert view.widget("w1").title == "moved"
    assert len(before_flush[0]) == 1
    assert before_flush[1] is not None and before_flush[1].version == 1
    assert seen.calls == [("success", 2)]
    assert pm.pending("alice") == []
    assert pm.load_layout("alice") == view


def test_an_rfc6902_patch_is_a_change_too(tmp_path: Path) -> None:
    pm = make(MemoryStorage(), tmp_path)
    pm.save_layout("alice", base(), immediate=True)

    view = pm.apply("alice", [{"op": "replace", "path": "/theme", "value": "dark"}], immediate=True)

    assert view.theme == "dark"
    assert pm.get_version_history("alice")[0].version == 2


def test_a_change_whose_result_is_invalid_is_refused_and_nothing_is_pending(tmp_path: Path) -> None:
    pm = make(MemoryStorage(), tmp_path)
    pm.save_layout("alice", base(), immediate=True)

    with pytest.raises(ValidationError):
        pm.apply("alice", [{"op": "replace", "path": "/widgets/0/w", "value": 0}])

    assert pm.pending("alice") == []
    assert pm.load_layout("alice") == base()


def test_a_rejected_write_rolls_back_its_changes_and_rebases_later_ones(tmp_path: Path) -> None:
    storage = FaultyStorage(MemoryStorage())
    pm = make(storage, tmp_path, enable_conflict_resolution=False)
    pm.save_layout("alice", base(), immediate=True)
    first, second = Recorder(), Recorder()
    first.apply(pm, lambda layout: layout.update_widget("w1", title="rejected"))
    storage.fail_next(
        "write",
        error=lambda: ConflictError(
            DocumentKey("alice"), expected_version=1, actual_version=5, message="refused"
        ),
    )

    pm.flush()
    second.apply(pm, lambda layout: layout.update_widget("w2", title="kept"))
    pm.flush()

    final = pm.load_layout("alice")
    assert final is not None
    assert first.calls == [("error", "ConflictError"), ("rollback", None)]
    assert second.calls == [("success", 2)]
    assert final.widget("w1").title == ""
    assert final.widget("w2").title == "kept"


def test_changes_queued_after_a_failing_write_are_rebased_onto_the_confirmed_state(
    tmp_path: Path,
) -> None:
    storage = FaultyStorage(MemoryStorage())
    pm = make(storage, tmp_path, enable_conflict_resolution=False)
    pm.save_layout("alice", base(), immediate=True)
    doomed, kept = Recorder(), Recorder()
    doomed.apply(pm, lambda layout: layout.update_widget("w1", title="doomed"), immediate=False)
    # The queued write carries 'doomed' only; 'kept' arrives after the store refuses it.
    storage.fail_next(
        "write",
        error=lambda: ConflictError(
            DocumentKey("alice"), expected_version=1, actual_version=3, message="refused"
        ),
    )
    pm.flush()
    view = kept.apply(pm, lambda layout: layout.update_widget("w2", title="after"))

    assert doomed.calls == [("error", "ConflictError"), ("rollback", None)]
    assert view.widget("w1").title == ""
    assert view.widget("w2").title == "after"


def test_an_immediate_apply_that_fails_raises_after_rolling_back(tmp_path: Path) -> None:
    storage = FaultyStorage(MemoryStorage())
    pm = make(storage, tmp_path, outbox_dir=None)  # no outbox: an outage is final here
    pm.save_layout("alice", base(), immediate=True)
    seen = Recorder()
    storage.go_offline()

    with pytest.raises(DashPersistError):
        seen.apply(pm, lambda layout: layout.with_changes(theme="dark"), immediate=True)
    storage.go_online()

    assert seen.calls == [("error", "StorageUnavailableError"), ("rollback", None)]
    assert pm.pending("alice") == []
    assert pm.load_layout("alice") == base()


def test_a_change_parked_in_the_outbox_counts_as_confirmed(tmp_path: Path) -> None:
    storage = FaultyStorage(MemoryStorage())
    pm = make(storage, tmp_path)
    pm.save_layout("alice", base(), immediate=True)
    seen = Recorder()
    storage.go_offline()

    seen.apply(pm, lambda layout: layout.with_changes(theme="offline"), immediate=True)

    loaded = pm.load_layout("alice")
    assert seen.calls == [("success", None)]
    assert loaded is not None
    assert loaded.theme == "offline"


def test_a_callback_that_raises_does_not_break_the_manager(tmp_path: Path) -> None:
    pm = make(MemoryStorage(), tmp_path)
    pm.save_layout("alice", base(), immediate=True)

    def explode(result: SaveResult) -> None:
        raise RuntimeError("host bug")

    view = pm.apply(
        "alice",
        lambda layout: layout.with_changes(theme="dark"),
        immediate=True,
        on_success=explode,
    )

    assert view.theme == "dark"
    assert pm.load_layout("alice") == view


@pytest.mark.parametrize("outcome", ["confirmed", "rolled back", "deleted", "refused"])
def test_a_settled_document_keeps_no_model_of_its_optimistic_view(
    tmp_path: Path, outcome: str
) -> None:
    # A server applying changes to many users' documents must not keep a model of each.
    storage = FaultyStorage(MemoryStorage())
    pm = make(storage, tmp_path, enable_conflict_resolution=False)
    pm.save_layout("alice", base(), immediate=True)
    if outcome == "refused":
        loaded = pm.load_layout("alice")
        assert loaded is not None
        kept = weakref.ref(loaded)
        with pytest.raises(ValidationError):
            pm.apply("alice", [{"op": "replace", "path": "/widgets/0/w", "value": 0}])
        del loaded
        pm._cache.clear()  # the read cache may keep a loaded model; the view must not
        gc.collect()
        assert kept() is None
        return
    view = pm.apply("alice", lambda layout: layout.update_widget("w1", title="edited"))
    kept = weakref.ref(view)
    if outcome == "rolled back":
        storage.fail_next(
            "write",
            error=lambda: ConflictError(
                DocumentKey("alice"), expected_version=1, actual_version=5, message="refused"
            ),
        )
    if outcome == "deleted":
        pm.delete_layout("alice")
    else:
        pm.flush()
    del view
    gc.collect()

    assert pm.pending("alice") == []
    assert kept() is None

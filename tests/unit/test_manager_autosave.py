"""The manager's autosave, outbox and events, driven by a fake clock (S03, S09, S22, S23-light)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dashpersist import (
    ConflictError,
    Layout,
    ManagerClosedError,
    MemoryStorage,
    OutboxBlockedError,
    PersistenceConfig,
    PersistenceManager,
    StorageUnavailableError,
    ValidationError,
    Widget,
)
from dashpersist.events import ChangeEvent
from dashpersist.storage import DocumentKey
from dashpersist.testing import FakeClock, FaultyStorage


def layout(title: str) -> Layout:
    return Layout(widgets=[Widget(id="w1", type="chart", title=title, w=4, h=2)])


def manager_on(
    storage: FaultyStorage | MemoryStorage, tmp_path: Path, clock: FakeClock, **settings: object
) -> PersistenceManager:
    config = PersistenceConfig.model_validate(
        {
            "auto_save_delay": 2.0,
            "auto_save_max_wait": 10.0,
            "outbox_dir": tmp_path / "outbox",
            "retry_attempts": 1,
            **settings,
        }
    )
    return PersistenceManager(
        storage, config=config, timer=clock, sleep=clock.sleep, start_threads=False
    )


def test_a_burst_of_edits_is_one_write_of_the_last_state(tmp_path: Path) -> None:
    clock = FakeClock()
    storage = FaultyStorage(MemoryStorage())
    pm = manager_on(storage, tmp_path, clock)

    results = [pm.save_layout("alice", layout(f"edit {n}")) for n in range(100)]
    clock.advance(1.9)
    early = pm.tick()
    clock.advance(0.2)
    written = pm.tick()

    assert {r.source for r in results} == {"queued"}
    assert early == []
    assert [(r.source, r.version) for r in written] == [("storage", 1)]
    assert storage.calls["write"] == 1
    assert pm.get_version_history("alice")[0].change_type == "auto"
    assert pm.load_layout("alice") == layout("edit 99")


def test_continuous_editing_is_written_every_max_wait(tmp_path: Path) -> None:
    clock = FakeClock()
    pm = manager_on(FaultyStorage(MemoryStorage()), tmp_path, clock)
    written = []

    for n in range(25):
        pm.save_layout("alice", layout(f"edit {n}"))
        clock.advance(1.0)
        written += pm.tick()

    assert [r.version for r in written] == [1, 2]


def test_loads_read_their_own_queued_writes(tmp_path: Path) -> None:
    clock = FakeClock()
    storage = FaultyStorage(MemoryStorage())
    pm = manager_on(storage, tmp_path, clock)

    pm.save_layout("alice", layout("queued"))

    assert pm.load_layout("alice") == layout("queued")
    assert storage.calls["write"] == 0
    assert pm.has_pending_writes


def test_an_invalid_queued_save_is_refused_at_once(tmp_path: Path) -> None:
    pm = manager_on(FaultyStorage(MemoryStorage()), tmp_path, FakeClock())

    with pytest.raises(ValidationError):
        pm.save_layout("alice", {"widgets": [{"id": "w1", "type": "chart", "w": 0}]})

    assert not pm.has_pending_writes


def test_an_immediate_save_supersedes_an_older_queued_one(tmp_path: Path) -> None:
    clock = FakeClock()
    pm = manager_on(FaultyStorage(MemoryStorage()), tmp_path, clock)

    pm.save_layout("alice", layout("older, queued"))
    pm.save_layout("alice", layout("newer, immediate"), immediate=True)
    clock.advance(30)
    pm.tick()
    pm.flush()

    assert pm.load_layout("alice") == layout("newer, immediate")
    assert [v.version for v in pm.get_version_history("alice")] == [1]


def test_close_flushes_is_idempotent_and_refuses_later_calls(tmp_path: Path) -> None:
    storage = MemoryStorage()
    pm = manager_on(storage, tmp_path, FakeClock())
    pm.save_layout("alice", layout("queued at close"))

    pm.close()
    pm.close()

    assert storage.read(DocumentKey("alice")) is not None
    with pytest.raises(ManagerClosedError):
        pm.save_layout("alice", layout("too late"))


def test_a_failed_background_write_is_kept_reported_and_raised_by_flush(tmp_path: Path) -> None:
    clock = FakeClock()
    storage = FaultyStorage(MemoryStorage())
    # No outbox (a bare wrapper has no identity to name one after): a failure must surface.
    pm = manager_on(storage, tmp_path, clock, outbox_dir=None)
    events: list[ChangeEvent] = []
    pm.subscribe(events.append)
    pm.save_layout("alice", layout("kept"))
    storage.go_offline()

    clock.advance(3)
    pm.tick()
    with pytest.raises(StorageUnavailableError):
        pm.flush()
    storage.go_online()
    written = pm.flush()

    assert [e.kind for e in events].count("save_failed") >= 1
    assert [r.version for r in written] == [1]
    assert pm.load_layout("alice") == layout("kept")


def test_a_save_while_storage_is_down_goes_to_the_outbox_and_replays_once(tmp_path: Path) -> None:
    clock = FakeClock()
    storage = FaultyStorage(MemoryStorage())
    pm = manager_on(storage, tmp_path, clock)
    pm.save_layout("alice", layout("v1"), immediate=True)
    storage.go_offline()

    parked = pm.save_layout("alice", layout("offline edit"), immediate=True)
    seen_offline = pm.load_layout("alice")
    storage.go_online()
    first = pm.sync("alice")
    second = pm.sync("alice")

    assert (parked.success, parked.source) == (True, "outbox")
    assert isinstance(parked.error, StorageUnavailableError)
    assert seen_offline == layout("offline edit")
    assert (first.replayed, first.version) == (1, 2)
    assert (second.replayed, second.version, second.changed) == (0, 2, False)
    assert pm.outbox_entries() == []
    assert [v.version for v in pm.get_version_history("alice")] == [2, 1]


def test_outbox_entries_replay_in_order_and_merge_with_newer_versions(tmp_path: Path) -> None:
    clock = FakeClock()
    shared = MemoryStorage()
    storage = FaultyStorage(shared)
    pm = manager_on(storage, tmp_path, clock)
    other = manager_on(shared, tmp_path / "other", clock)
    base = Layout(
        widgets=[
            Widget(id="w1", type="chart", w=4, h=2),
            Widget(id="w2", type="chart", x=4, w=4, h=2),
        ]
    )
    pm.save_layout("alice", base, immediate=True)
    storage.go_offline()
    pm.save_layout("alice", base.update_widget("w1", title="offline 1"), immediate=True)
    pm.save_layout("alice", base.update_widget("w1", title="offline 2"), immediate=True)
    other.load_layout("alice")
    other.save_layout("alice", base.update_widget("w2", title="online"), immediate=True)

    storage.go_online()
    result = pm.sync("alice")

    merged = pm.load_layout("alice")
    assert merged is not None
    assert result.replayed == 2
    assert merged.widget("w1").title == "offline 2"
    assert merged.widget("w2").title == "online"
    assert pm.verify("alice").ok


def test_an_entry_the_store_refuses_blocks_only_its_document(tmp_path: Path) -> None:
    clock = FakeClock()
    storage = FaultyStorage(MemoryStorage())
    pm = manager_on(storage, tmp_path, clock)
    events: list[ChangeEvent] = []
    pm.subscribe(events.append)
    storage.go_offline()
    pm.save_layout("alice", layout("refused later"), immediate=True)
    pm.save_layout("bob", layout("fine"), immediate=True)
    storage.go_online()
    storage.fail_next("write", error=lambda: ValidationError([]))

    with pytest.raises(OutboxBlockedError) as caught:
        pm.sync("alice")
    replayed = pm.replay_outbox()

    (blocked, reason) = pm.blocked_outbox_entries()[0]
    assert caught.value.entry_id == blocked.entry_id
    assert "ValidationError" in reason
    assert replayed == 1
    assert pm.load_layout("bob") == layout("fine")
    assert pm.export_outbox_entry(blocked.entry_id)["entry_id"] == blocked.entry_id
    assert "outbox_blocked" in [e.kind for e in events]

    pm.discard_outbox_entry(blocked.entry_id)

    assert pm.blocked_outbox_entries() == []
    assert pm.outbox_entries() == []


def test_a_commit_whose_acknowledgement_was_lost_is_not_written_twice(tmp_path: Path) -> None:
    clock = FakeClock()
    storage = FaultyStorage(MemoryStorage())
    pm = manager_on(storage, tmp_path, clock)
    pm.save_layout("alice", layout("v1"), immediate=True)
    storage.go_offline()
    pm.save_layout("alice", layout("offline"), immediate=True)
    storage.go_online()
    # The replayed write reaches storage, then the connection drops before the answer.
    storage.fail_next("write", after=True)

    with pytest.raises(StorageUnavailableError):
        pm.sync("alice")
    again = pm.sync("alice")

    assert again.replayed == 1
    assert [v.version for v in pm.get_version_history("alice")] == [2, 1]


def test_a_save_of_a_document_whose_queue_is_blocked_waits_behind_it(tmp_path: Path) -> None:
    clock = FakeClock()
    storage = FaultyStorage(MemoryStorage())
    pm = manager_on(storage, tmp_path, clock)
    storage.go_offline()
    pm.save_layout("alice", layout("refused later"), immediate=True)
    pm.save_layout("alice", layout("parked behind it"), immediate=True)
    storage.go_online()
    storage.fail_next("write", error=lambda: ValidationError([]))
    with pytest.raises(OutboxBlockedError):
        pm.sync("alice")

    result = pm.save_layout("alice", layout("saved while blocked"), immediate=True)

    assert result.source == "outbox"
    assert pm.get_version_history("alice") == []  # nothing overtook the blocked entry
    (blocked, _) = pm.blocked_outbox_entries()[0]
    pm.discard_outbox_entry(blocked.entry_id)
    pm.sync("alice")
    assert pm.load_layout("alice") == layout("saved while blocked")
    assert len(pm.get_version_history("alice")) == 2


def test_a_retried_replay_that_finds_its_own_key_taken_counts_as_written(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    storage = FaultyStorage(MemoryStorage())
    pm = manager_on(storage, tmp_path, clock, retry_attempts=3)
    pm.save_layout("alice", layout("v1"), immediate=True)
    storage.go_offline()
    pm.save_layout("alice", layout("offline"), immediate=True)
    storage.go_online()
    # The write reaches storage but its answer is lost; the retry is refused as a conflict.
    storage.fail_next("write", after=True)
    storage.fail_next(
        "write",
        error=lambda: ConflictError(DocumentKey("alice"), expected_version=1, actual_version=2),
    )

    pm.sync("alice")

    assert pm.blocked_outbox_entries() == []
    assert [v.version for v in pm.get_version_history("alice")] == [2, 1]


def test_events_report_saves_queues_and_merges(tmp_path: Path) -> None:
    clock = FakeClock()
    pm = manager_on(MemoryStorage(), tmp_path, clock)
    events: list[ChangeEvent] = []
    unsubscribe = pm.subscribe(events.append)

    pm.save_layout("alice", layout("queued"))
    pm.flush()
    pm.save_layout("alice", layout("immediate"), immediate=True)
    unsubscribe()
    pm.save_layout("alice", layout("unheard"), immediate=True)

    assert [(e.kind, e.version) for e in events] == [("queued", None), ("saved", 1), ("saved", 2)]
    assert {(e.user_id, e.layout_id) for e in events} == {("alice", "default")}


def test_update_config_applies_new_autosave_timings_and_limits(tmp_path: Path) -> None:
    clock = FakeClock()
    storage = FaultyStorage(MemoryStorage())
    pm = manager_on(storage, tmp_path, clock)
    pm.save_layout("alice", layout("queued under the old timing"))

    pm.update_config(auto_save_delay=0.5, auto_save_max_wait=1.0, merge_prefer="local")
    written_by_the_switch = storage.calls["write"]
    pm.save_layout("alice", layout("queued under the new timing"))
    clock.advance(0.6)
    written = pm.tick()

    assert written_by_the_switch == 1  # the old queue wrote what it held
    assert [r.version for r in written] == [2]
    pm.update_config(limits={"max_string_length": 5})
    with pytest.raises(ValidationError):
        pm.save_layout("alice", layout("far too long a title"))

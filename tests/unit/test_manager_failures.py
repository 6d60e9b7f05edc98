"""Failure paths of the manager's newer parts: offline sidecars, activity, config, sync."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dashpersist import (
    ConfigurationError,
    Layout,
    MemoryStorage,
    PersistenceConfig,
    PersistenceManager,
    StorageUnavailableError,
    Widget,
)
from dashpersist.activity import ActivityRecorder
from dashpersist.errors import StorageError
from dashpersist.storage import Storage
from dashpersist.storage.urls import ReconnectingStorage
from dashpersist.testing import FakeClock, FaultyStorage


def board(title: str = "") -> Layout:
    return Layout(widgets=[Widget(id="w1", type="chart", title=title, w=4, h=2)])


def unreachable(url: str) -> Storage:
    raise StorageUnavailableError(f"{url} is down")


def test_activity_and_widget_data_are_refused_while_the_store_is_unreachable() -> None:
    store = ReconnectingStorage("postgresql://down/db", opener=unreachable)
    pm = PersistenceManager(store, config=PersistenceConfig(auto_save=False))

    with pytest.raises(StorageUnavailableError):
        pm.get_activity("alice")
    with pytest.raises(StorageUnavailableError):
        _ = pm.widget_cache
    pm.close()
    # The store keeps trying on every call rather than remembering the failure.
    assert not store.is_connected
    with pytest.raises(StorageUnavailableError):
        store.connect()


def test_a_failed_activity_record_is_logged_and_the_save_stands(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pm = PersistenceManager(MemoryStorage(), config=PersistenceConfig(auto_save=False))
    log = pm._activity_log()
    assert log is not None

    def broken(entries: object) -> None:
        raise StorageError("activity table is gone")

    log.record_many = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="dashpersist.activity"):
        result = pm.save_layout("alice", board("kept"))
        ActivityRecorder.shared().flush()

    assert result.version == 1
    assert pm.load_layout("alice") == board("kept")
    assert "could not record 1 activity entries" in caplog.text


def test_turning_encryption_on_without_a_keyring_changes_nothing() -> None:
    pm = PersistenceManager(MemoryStorage(), config=PersistenceConfig(auto_save=False))

    with pytest.raises(ConfigurationError, match="keyring"):
        pm.update_config(enable_encryption=True)

    assert pm.config.enable_encryption is False
    assert pm.save_layout("alice", board()).version == 1


def test_sync_while_offline_keeps_the_queued_save_in_the_outbox(tmp_path: Path) -> None:
    clock = FakeClock()
    storage = FaultyStorage(MemoryStorage())
    config = PersistenceConfig(outbox_dir=tmp_path / "outbox", retry_attempts=1)
    pm = PersistenceManager(
        storage, config=config, timer=clock, sleep=clock.sleep, start_threads=False
    )
    pm.save_layout("alice", board("queued"))
    storage.go_offline()

    with pytest.raises(StorageUnavailableError):
        pm.sync("alice")
    storage.go_online()
    synced = pm.sync("alice")

    assert [e.user_id for e in pm.outbox_entries()] == []
    assert (synced.replayed, synced.version) == (1, 1)
    assert pm.load_layout("alice") == board("queued")

"""PersistenceManager over every backend: save, load, list, delete, clone, retries, lifecycle."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pydantic
import pytest

from dashpersist import (
    ConflictError,
    Layout,
    ManagerClosedError,
    MemoryStorage,
    NotFoundError,
    PersistenceConfig,
    PersistenceManager,
    StorageUnavailableError,
    ValidationError,
    Widget,
)
from dashpersist.storage import DocumentKey, Storage
from dashpersist.testing import FaultyStorage
from tests.managers import MANAGER_KINDS, ManagerFactory, manager_factory

DIRECT = PersistenceConfig(auto_save=False)


def sample(title: str = "Sales", widgets: int = 2) -> Layout:
    return Layout(
        widgets=[
            Widget(id=f"w{i}", type="chart", title=f"{title} {i}", x=0, y=i) for i in range(widgets)
        ],
        theme="dark",
    )


@pytest.fixture(params=MANAGER_KINDS)
def make_manager(request: pytest.FixtureRequest) -> Iterator[ManagerFactory]:
    """Build managers of one kind: every test here runs against `PersistenceManager` and,
    through a blocking view, against its asyncio twin (see tests/managers.py)."""
    with manager_factory(request.param) as make:
        yield make


@pytest.fixture
def manager(storage: Storage, make_manager: ManagerFactory) -> PersistenceManager:
    # These tests are about what is written and read; autosave has tests of its own.
    return make_manager(storage, device_id="laptop", config=DIRECT)


def test_a_saved_layout_loads_back_equal(manager: PersistenceManager) -> None:
    result = manager.save_layout("alice", sample(), immediate=True)

    assert (result.success, result.version, result.source) == (True, 1, "storage")
    assert manager.load_layout("alice") == sample()


def test_a_plain_dict_is_accepted_as_the_layout(manager: PersistenceManager) -> None:
    manager.save_layout("alice", sample().model_dump(mode="json"), layout_id="d")

    assert manager.load_layout("alice", layout_id="d") == sample()


def test_an_invalid_layout_is_refused_and_nothing_is_written(manager: PersistenceManager) -> None:
    manager.save_layout("alice", sample())

    with pytest.raises(ValidationError) as caught:
        manager.save_layout("alice", {"widgets": [{"id": "w1", "type": "chart", "x": "left"}]})

    assert caught.value.issues[0].path == "widgets[0].x"
    assert "left" not in str(caught.value)
    assert manager.load_layout("alice") == sample()
    assert len(manager.get_version_history("alice")) == 1


def test_saving_an_unchanged_layout_writes_no_version(manager: PersistenceManager) -> None:
    manager.save_layout("alice", sample())

    result = manager.save_layout("alice", sample())

    assert (result.success, result.version, result.source) == (True, 1, "unchanged")
    assert [v.version for v in manager.get_version_history("alice")] == [1]


def test_a_save_from_a_stale_base_is_a_conflict_when_resolution_is_off(
    make_manager: ManagerFactory, storage: Storage
) -> None:
    config = PersistenceConfig(enable_conflict_resolution=False, auto_save=False)
    laptop = make_manager(storage, config=config, device_id="laptop")
    phone = make_manager(storage, config=config, device_id="phone")
    laptop.save_layout("alice", sample("first"))
    phone.load_layout("alice")
    laptop.save_layout("alice", sample("second"))

    with pytest.raises(ConflictError) as caught:
        phone.save_layout("alice", sample("from phone"))

    assert (caught.value.expected_version, caught.value.actual_version) == (1, 2)
    assert laptop.load_layout("alice") == sample("second")


def test_history_records_device_description_and_change_type(manager: PersistenceManager) -> None:
    manager.save_layout("alice", sample("one"))
    manager.save_layout(
        "alice", sample("two"), description="renamed", change_type="auto", label="v2"
    )

    history = manager.get_version_history("alice")

    assert [(v.version, v.change_type, v.description, v.label, v.device_id) for v in history] == [
        (2, "auto", "renamed", "v2", "laptop"),
        (1, "manual", None, None, "laptop"),
    ]


def test_a_loaded_layout_cannot_be_changed_in_place(manager: PersistenceManager) -> None:
    manager.save_layout("alice", sample())
    loaded = manager.load_layout("alice")
    assert loaded is not None

    with pytest.raises(pydantic.ValidationError):
        loaded.widgets[0].title = "changed in place"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        loaded.widgets.append(Widget(id="extra", type="chart"))  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        loaded.widgets[0].settings["intruder"] = 1

    assert manager.load_layout("alice") == sample()


def test_changing_a_saved_dict_afterwards_does_not_change_the_store(
    manager: PersistenceManager,
) -> None:
    document = sample().model_dump(mode="json")
    manager.save_layout("alice", document)

    document["widgets"][0]["title"] = "changed after saving"
    document["theme"] = "changed"

    assert manager.load_layout("alice") == sample()


def test_changing_a_dict_after_a_queued_save_of_known_widgets_changes_nothing(
    tmp_path: Path,
) -> None:
    pm = PersistenceManager(
        f"sqlite:///{tmp_path / 'dash.db'}",
        config=PersistenceConfig(auto_save_delay=60, auto_save_max_wait=120),
    )
    document = sample().model_dump(mode="json")
    pm.save_layout("alice", document, immediate=True)  # the validator now knows the widgets
    document["theme"] = "dark"
    pm.save_layout("alice", document)  # queued

    document["widgets"][0]["title"] = "changed while queued"
    document["theme"] = "changed while queued"
    pm.flush()

    assert pm.load_layout("alice") == sample().with_changes(theme="dark")
    pm.close()


def test_layouts_are_listed_deleted_and_cloned(manager: PersistenceManager) -> None:
    manager.save_layout("alice", sample("a"), layout_id="sales")
    manager.save_layout("alice", sample("b"), layout_id="costs")

    clone = manager.clone_layout("alice", "sales", "sales-copy")
    manager.delete_layout("alice", layout_id="costs")

    assert clone.version == 1
    assert manager.list_layouts("alice") == ["sales", "sales-copy"]
    assert manager.load_layout("alice", layout_id="sales-copy") == sample("a")
    assert manager.load_layout("alice", layout_id="costs") is None
    assert manager.list_layouts("bob") == []


def test_cloning_refuses_a_missing_source_and_an_existing_target(
    manager: PersistenceManager,
) -> None:
    manager.save_layout("alice", sample("a"), layout_id="sales")
    manager.save_layout("alice", sample("b"), layout_id="costs")

    with pytest.raises(NotFoundError):
        manager.clone_layout("alice", "missing", "new")
    with pytest.raises(ConflictError):
        manager.clone_layout("alice", "sales", "costs")

    assert manager.load_layout("alice", layout_id="costs") == sample("b")


def test_deleting_a_missing_layout_raises_not_found(manager: PersistenceManager) -> None:
    with pytest.raises(NotFoundError):
        manager.delete_layout("alice", layout_id="nothing")


@pytest.mark.parametrize("bad_id", ["", "x" * 257, "nul\x00", "tab\tid"])
def test_a_bad_id_is_a_validation_error(manager: PersistenceManager, bad_id: str) -> None:
    with pytest.raises(ValidationError):
        manager.save_layout(bad_id, sample())
    with pytest.raises(ValidationError):
        manager.load_layout("alice", layout_id=bad_id)


def test_threads_saving_through_one_manager_serialize_per_document(
    manager: PersistenceManager,
) -> None:
    def save(n: int) -> None:
        for i in range(5):
            manager.save_layout(f"user{n % 2}", sample(f"{n}-{i}"))

    threads = [threading.Thread(target=save, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    for user in ("user0", "user1"):
        history = manager.get_version_history(user, limit=100)
        assert [v.version for v in history] == list(range(20, 0, -1))


def test_a_closed_manager_refuses_calls_and_closes_once(
    make_manager: ManagerFactory, tmp_path: Path
) -> None:
    manager = make_manager(f"sqlite:///{tmp_path / 'dash.db'}")
    manager.save_layout("alice", sample())

    manager.close()
    manager.close()

    assert manager.is_closed
    with pytest.raises(ManagerClosedError):
        manager.load_layout("alice")
    with pytest.raises(ManagerClosedError):
        manager.save_layout("alice", sample())


def test_the_context_manager_closes_and_data_persists(
    make_manager: ManagerFactory, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'dash.db'}"
    with make_manager(url) as manager:
        manager.save_layout("alice", sample())

    assert manager.is_closed
    with make_manager(url) as reopened:
        assert reopened.load_layout("alice") == sample()


def test_the_default_store_is_a_sqlite_file_in_the_user_data_folder(
    make_manager: ManagerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))

    with make_manager() as manager:
        manager.save_layout("alice", sample())

    assert (tmp_path / "dashpersist" / "dashpersist.db").is_file()


def test_transient_errors_are_retried_with_bounded_jittered_backoff(
    make_manager: ManagerFactory,
) -> None:
    sleeps: list[float] = []
    storage = FaultyStorage(
        MemoryStorage(),
        fail_on="write",
        times=2,
        error=lambda: StorageUnavailableError("database is locked"),
    )
    manager = make_manager(storage, sleep=sleeps.append, config=DIRECT)

    result = manager.save_layout("alice", sample())

    assert result.version == 1
    assert storage.calls["write"] == 3
    assert len(sleeps) == 2
    assert 0 <= sleeps[0] <= 0.1 and 0 <= sleeps[1] <= 0.2


def test_retries_stop_after_the_configured_attempts(make_manager: ManagerFactory) -> None:
    sleeps: list[float] = []
    storage = FaultyStorage(
        MemoryStorage(),
        fail_on="write",
        times=100,
        error=lambda: StorageUnavailableError("connection refused"),
    )
    manager = make_manager(
        storage,
        sleep=sleeps.append,
        config=PersistenceConfig(retry_attempts=4, retry_max_delay=0.3, auto_save=False),
    )

    with pytest.raises(StorageUnavailableError):
        manager.save_layout("alice", sample())

    assert storage.calls["write"] == 4
    assert len(sleeps) == 3 and max(sleeps) <= 0.3
    assert manager.storage.read(DocumentKey("alice")) is None


def test_non_transient_errors_are_not_retried(make_manager: ManagerFactory) -> None:
    sleeps: list[float] = []
    storage = FaultyStorage(
        MemoryStorage(),
        fail_on="write",
        times=1,
        error=lambda: ValidationError([]),
    )
    manager = make_manager(storage, sleep=sleeps.append, config=DIRECT)

    with pytest.raises(ValidationError):
        manager.save_layout("alice", sample())

    assert storage.calls["write"] == 1
    assert sleeps == []


def test_a_lost_race_is_refused_when_conflict_resolution_is_off(
    make_manager: ManagerFactory,
) -> None:
    sleeps: list[float] = []
    storage = FaultyStorage(
        MemoryStorage(),
        fail_on="write",
        times=1,
        error=lambda: ConflictError(DocumentKey("alice"), expected_version=None, actual_version=1),
    )
    manager = make_manager(
        storage,
        sleep=sleeps.append,
        config=PersistenceConfig(enable_conflict_resolution=False, auto_save=False),
    )

    with pytest.raises(ConflictError):
        manager.save_layout("alice", sample())

    assert storage.calls["write"] == 1
    assert sleeps == []


def test_a_cached_load_does_not_touch_the_storage(make_manager: ManagerFactory) -> None:
    storage = FaultyStorage(MemoryStorage())
    manager = make_manager(storage, config=DIRECT)
    manager.save_layout("alice", sample())
    reads_after_save = storage.calls.get("read", 0)

    first = manager.load_layout("alice")
    second = manager.load_layout("alice")

    assert first == second == sample()
    assert storage.calls.get("read", 0) == reads_after_save


def test_a_save_refreshes_the_cache_of_every_manager_on_the_storage(
    make_manager: ManagerFactory,
) -> None:
    storage = FaultyStorage(MemoryStorage())
    writer = make_manager(storage, config=DIRECT)
    reader = make_manager(storage, config=DIRECT)
    writer.save_layout("alice", sample("first"))
    assert reader.load_layout("alice") == sample("first")  # now in the reader's cache
    reads = storage.calls.get("read", 0)

    writer.save_layout("alice", sample("second"))
    by_reader = reader.load_layout("alice")
    by_writer = writer.load_layout("alice")

    assert by_reader == by_writer == sample("second")
    assert storage.calls.get("read", 0) == reads + 1  # the reader's: the writer's is cached


def test_a_failed_write_leaves_no_stale_cache_entry(make_manager: ManagerFactory) -> None:
    storage = FaultyStorage(
        MemoryStorage(), fail_on="write", times=1, error=lambda: StorageUnavailableError("gone")
    )
    manager = make_manager(storage, config=PersistenceConfig(retry_attempts=1, auto_save=False))
    storage.inner.write(
        DocumentKey("alice"), sample("stored").model_dump(mode="json"), expected_version=None
    )
    manager.load_layout("alice")

    with pytest.raises(StorageUnavailableError):
        manager.save_layout("alice", sample("lost"))

    assert manager.load_layout("alice") == sample("stored")


def test_update_config_validates_and_changes_settings(manager: PersistenceManager) -> None:
    updated = manager.update_config(auto_save_delay=0.5, max_versions=10)

    assert (manager.config.auto_save_delay, manager.config.max_versions) == (0.5, 10)
    assert updated is manager.config
    with pytest.raises(ValidationError):
        manager.update_config(auto_save_delay=-1)
    with pytest.raises(ValidationError):
        manager.update_config(no_such_setting=True)
    assert manager.config.auto_save_delay == 0.5

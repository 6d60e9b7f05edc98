"""The testing kit: FaultyStorage, the fake clocks, two_devices, and docs/testing.md."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dashpersist import (
    ConfigurationError,
    ConflictError,
    Layout,
    MemoryStorage,
    NotFoundError,
    PersistenceConfig,
    PersistenceManager,
    StorageUnavailableError,
    Widget,
)
from dashpersist.storage import DocumentKey, Storage
from dashpersist.testing import FakeClock, FakeWallClock, FaultyStorage, two_devices
from dashpersist.types import JsonObject
from tests.children import REPO_ROOT

DIRECT = PersistenceConfig(auto_save=False)
KEY = DocumentKey("alice")


def document(theme: str = "light") -> JsonObject:
    return {"widgets": [], "theme": theme}


def write(storage: Storage, theme: str, expected_version: int | None) -> int:
    return storage.write(KEY, document(theme), expected_version=expected_version)


def test_a_faulty_storage_without_faults_passes_every_call_through(storage: Storage) -> None:
    faulty = FaultyStorage(storage)

    write(faulty, "light", None)
    write(faulty, "dark", 1)
    stored = faulty.read(KEY)
    history = faulty.versions(KEY, limit=10)
    faulty.compact(KEY, remove=[1], snapshots={})
    compacted = faulty.versions(KEY, limit=10)
    ids = (faulty.layout_ids("alice"), faulty.user_ids())
    faulty.delete(KEY)

    assert stored is not None and stored.document == document("dark")
    assert [r.version for r in history] == [2, 1]
    assert [r.version for r in compacted] == [2]
    assert ids == (["default"], ["alice"])
    assert faulty.read(KEY) is None
    assert faulty.calls == {
        "write": 2,
        "read": 2,
        "versions": 2,
        "compact": 1,
        "layout_ids": 1,
        "user_ids": 1,
        "delete": 1,
    }


def test_import_document_is_forwarded_to_the_inner_store() -> None:
    source, target = MemoryStorage(), FaultyStorage(MemoryStorage())
    source.write(KEY, document("dark"), expected_version=None)
    current = source.read(KEY)
    assert current is not None

    target.import_document(KEY, current, list(reversed(source.versions(KEY, limit=10))))

    assert target.inner.read(KEY) == current
    assert target.calls["import_document"] == 1


def test_replace_document_is_forwarded_to_the_inner_store_and_can_be_failed() -> None:
    source, target = MemoryStorage(), FaultyStorage(MemoryStorage())
    for store in (source, target.inner):
        store.write(KEY, document("light"), expected_version=None)
    source.write(KEY, document("dark"), expected_version=1)
    current = source.read(KEY)
    assert current is not None
    history = list(reversed(source.versions(KEY, limit=10)))
    target.fail_next("replace_document")

    with pytest.raises(StorageUnavailableError):
        target.replace_document(KEY, current, history, expected_version=1)
    unchanged = target.inner.read(KEY)
    target.replace_document(KEY, current, history, expected_version=1)

    assert unchanged is not None and unchanged.document == document("light")
    assert target.inner.read(KEY) == current
    assert target.calls["replace_document"] == 2


def test_fail_next_fails_that_many_calls_then_lets_calls_through() -> None:
    faulty = FaultyStorage(MemoryStorage())
    faulty.fail_next("write", times=2)

    outcomes: list[int | str] = []
    for _ in range(3):
        try:
            outcomes.append(write(faulty, "light", None))
        except StorageUnavailableError as exc:
            outcomes.append(str(exc))

    assert outcomes == [
        "injected fault: write call #1",
        "injected fault: write call #2",
        1,
    ]
    assert faulty.read(KEY) is not None


def test_fail_next_without_an_operation_fails_whatever_comes_next() -> None:
    faulty = FaultyStorage(MemoryStorage())
    faulty.fail_next()

    with pytest.raises(StorageUnavailableError):
        faulty.layout_ids("alice")

    assert faulty.layout_ids("alice") == []


def test_fail_nth_fails_only_that_call_of_its_operation() -> None:
    faulty = FaultyStorage(MemoryStorage())
    faulty.fail_nth(
        "write", 2, error=lambda: ConflictError(KEY, expected_version=1, actual_version=2)
    )

    first = write(faulty, "one", None)
    faulty.read(KEY)
    with pytest.raises(ConflictError):
        write(faulty, "two", 1)
    third = write(faulty, "three", 1)

    assert (first, third) == (1, 2)


def test_a_fault_after_the_call_reaches_the_store_and_still_raises() -> None:
    faulty = FaultyStorage(MemoryStorage())
    faulty.fail_next("write", after=True)

    with pytest.raises(StorageUnavailableError):
        write(faulty, "committed", None)

    stored = faulty.read(KEY)
    assert stored is not None and stored.version == 1


def test_offline_storage_refuses_everything_until_it_is_online_again() -> None:
    faulty = FaultyStorage(MemoryStorage())
    write(faulty, "light", None)

    faulty.go_offline()
    failures = []
    for call in (lambda: faulty.read(KEY), lambda: faulty.layout_ids("alice"), faulty.user_ids):
        with pytest.raises(StorageUnavailableError) as caught:
            call()
        failures.append(str(caught.value))
    was_offline = faulty.is_offline
    faulty.go_online()

    assert was_offline and not faulty.is_offline
    assert failures[0] == "storage is offline (read call #1)"
    assert faulty.read(KEY) is not None


def test_latency_is_slept_before_each_call_per_operation() -> None:
    clock = FakeClock()
    faulty = FaultyStorage(MemoryStorage(), latency=0.5, sleep=clock.sleep)
    faulty.set_latency(2.0, "write")

    write(faulty, "light", None)
    faulty.read(KEY)

    assert clock.now() == 2.5


def test_the_constructor_schedules_a_fault_like_fail_next() -> None:
    faulty = FaultyStorage(
        MemoryStorage(), fail_on="read", times=1, error=lambda: NotFoundError("x")
    )

    with pytest.raises(NotFoundError):
        faulty.read(KEY)

    assert faulty.read(KEY) is None


@pytest.mark.parametrize(
    "schedule",
    [
        lambda f: f.fail_next("write", times=0),
        lambda f: f.fail_nth("write", 0),
        lambda f: f.set_latency(-1),
    ],
)
def test_nonsense_fault_settings_are_refused(schedule: Callable[[FaultyStorage], None]) -> None:
    with pytest.raises(ConfigurationError):
        schedule(FaultyStorage(MemoryStorage()))


def test_clear_faults_drops_every_scheduled_fault() -> None:
    faulty = FaultyStorage(MemoryStorage())
    faulty.fail_next("write", times=5)
    faulty.fail_nth("read", 1)

    faulty.clear_faults()

    assert write(faulty, "light", None) == 1
    assert faulty.read(KEY) is not None


def test_the_fake_clock_moves_only_forward_and_only_when_told() -> None:
    clock = FakeClock(10.0)

    before = clock()
    clock.advance(1.5)
    clock.sleep(0.5)

    assert (before, clock.now(), clock()) == (10.0, 12.0, 12.0)
    with pytest.raises(ConfigurationError):
        clock.advance(-1)


def test_the_fake_wall_clock_gives_aware_utc_times() -> None:
    wall = FakeWallClock(datetime(2026, 5, 1, 12, 0, tzinfo=UTC))

    wall.advance(3600)

    assert wall() == datetime(2026, 5, 1, 13, 0, tzinfo=UTC)
    assert wall.now().tzinfo is UTC
    with pytest.raises(ConfigurationError):
        FakeWallClock(datetime(2026, 5, 1))  # naive, which is the point
    with pytest.raises(ConfigurationError):
        wall.advance(-1)


def test_two_devices_start_from_the_same_version_and_merge(storage: Storage) -> None:
    start = Layout(widgets=[Widget(id="a", type="chart"), Widget(id="b", type="chart", x=4)])

    with two_devices(storage, user_id="alice", layout=start, config=DIRECT) as devices:
        laptop, phone = devices
        laptop.save_layout("alice", start.update_widget("a", title="from laptop"))
        result = phone.save_layout("alice", start.update_widget("b", title="from phone"))
        final = laptop.load_layout("alice")

    assert result.merge is not None and result.merge.conflicts == []
    assert final is not None
    assert (final.widget("a").title, final.widget("b").title) == ("from laptop", "from phone")
    assert (laptop.device_id, phone.device_id) == ("laptop", "phone")
    assert laptop.is_closed and phone.is_closed


def test_two_devices_on_a_url_open_the_store_each(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'dash.db'}"

    devices = two_devices(url, user_id="alice", config=DIRECT, device_ids=("tablet", "tv"))
    devices.laptop.save_layout("alice", {"widgets": []})
    seen = devices.phone.load_layout("alice")
    devices.close()

    assert devices.laptop.storage is not devices.phone.storage
    assert seen == Layout()
    assert devices.phone.device_id == "tv"


def test_a_manager_works_through_faults_end_to_end() -> None:
    storage = FaultyStorage(MemoryStorage())
    storage.fail_next("write", times=2)
    sleeps: list[float] = []
    manager = PersistenceManager(storage, config=DIRECT, sleep=sleeps.append)

    result = manager.save_layout("alice", Layout())
    manager.close()

    assert (result.version, storage.calls["write"], len(sleeps)) == (1, 3, 2)


# -- docs/testing.md -------------------------------------------------------------------

DOC = Path(REPO_ROOT) / "docs" / "testing.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_the_testing_guide_has_examples() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_every_example_in_the_testing_guide_runs(block: str, tmp_path: Path) -> None:
    namespace: dict[str, object] = {"__name__": "testing_guide"}
    exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102 - our own documentation
    tests = [f for name, f in namespace.items() if name.startswith("test_") and callable(f)]

    for test in tests:
        wanted = inspect.signature(test).parameters
        test(**{name: tmp_path for name in wanted if name == "tmp_path"})

    assert len(tests) == 1, "each example block defines one test"

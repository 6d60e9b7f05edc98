"""The widget data cache: per user and widget, with a TTL, in the same store as the documents."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import event

from dashpersist.errors import ConfigurationError, CorruptStoreError, ValidationError
from dashpersist.storage import DocumentKey, MemoryStorage, Storage
from dashpersist.storage.jsonfile import JSONFileStorage
from dashpersist.storage.sql import SQLStorage
from dashpersist.testing import FakeWallClock, FaultyStorage
from dashpersist.types import JsonValue
from dashpersist.widget_cache import (
    MAX_BATCH,
    JSONFileWidgetCacheStore,
    MemoryWidgetCacheStore,
    SQLWidgetCacheStore,
    WidgetCacheStore,
    WidgetDataCache,
    widget_cache_for,
)

WAIT = 10.0


@pytest.fixture
def clock() -> FakeWallClock:
    return FakeWallClock()


# -- every backend ----------------------------------------------------------------------------


def test_the_factory_keeps_the_cache_in_the_storages_own_store(
    storage: Storage, clock: FakeWallClock
) -> None:
    cache = widget_cache_for(storage, clock=clock)

    expected = {
        SQLStorage: SQLWidgetCacheStore,
        JSONFileStorage: JSONFileWidgetCacheStore,
        MemoryStorage: MemoryWidgetCacheStore,
    }[type(storage)]
    assert isinstance(cache.store, expected)


def test_put_data_comes_back_as_an_equal_fresh_copy(storage: Storage, clock: FakeWallClock) -> None:
    cache = widget_cache_for(storage, clock=clock)
    data: JsonValue = {"rows": [[1, 2.5, "x", None, True]], "total": 2**53, "label": "café"}

    cache.put("alice", "sales-chart", data, ttl=60)
    first = cache.get("alice", "sales-chart")
    assert isinstance(first, dict)
    first["total"] = 0

    assert cache.get("alice", "sales-chart") == data


def test_a_later_put_replaces_the_entry_and_its_ttl(storage: Storage, clock: FakeWallClock) -> None:
    cache = widget_cache_for(storage, clock=clock)
    cache.put("alice", "w1", "old", ttl=10)

    cache.put("alice", "w1", "new", ttl=100)
    clock.advance(50)

    assert cache.get("alice", "w1") == "new"


def test_an_expired_entry_is_never_returned(storage: Storage, clock: FakeWallClock) -> None:
    cache = widget_cache_for(storage, clock=clock)
    cache.put("alice", "w1", [1, 2, 3], ttl=30)
    cache.put("alice", "w2", [4], ttl=90)

    clock.advance(29.999)
    almost = cache.get_many("alice", ["w1", "w2"])
    clock.advance(0.001)
    at_expiry = cache.get_many("alice", ["w1", "w2"])

    assert almost == {"w1": [1, 2, 3], "w2": [4]}
    assert at_expiry == {"w2": [4]}
    assert cache.get("alice", "w1") is None


def test_users_never_see_each_others_widget_data(storage: Storage, clock: FakeWallClock) -> None:
    cache = widget_cache_for(storage, clock=clock)
    cache.put("alice", "w1", "alice's", ttl=60)

    assert cache.get("Alice", "w1") is None
    assert cache.get_many("bob", ["w1"]) == {}
    assert cache.get("alice", "w1") == "alice's"


def test_get_many_returns_only_the_widgets_with_unexpired_data(
    storage: Storage, clock: FakeWallClock
) -> None:
    cache = widget_cache_for(storage, clock=clock)
    for n in range(MAX_BATCH):
        cache.put("alice", f"w{n}", {"n": n}, ttl=60 if n % 2 else 10)
    clock.advance(20)

    found = cache.get_many("alice", [f"w{n}" for n in range(MAX_BATCH)])

    assert found == {f"w{n}": {"n": n} for n in range(1, MAX_BATCH, 2)}
    assert cache.get_many("alice", []) == {}
    assert cache.get_many("alice", ["w1", "w1", "missing"]) == {"w1": {"n": 1}}


def test_more_than_the_batch_limit_is_refused(storage: Storage) -> None:
    cache = widget_cache_for(storage)

    with pytest.raises(ConfigurationError, match=str(MAX_BATCH)):
        cache.get_many("alice", [f"w{n}" for n in range(MAX_BATCH + 1)])


def test_purge_deletes_only_expired_entries_of_every_user(
    storage: Storage, clock: FakeWallClock
) -> None:
    cache = widget_cache_for(storage, clock=clock)
    cache.put("alice", "short", 1, ttl=10)
    cache.put("alice", "long", 2, ttl=100)
    cache.put("bob", "short", 3, ttl=10)
    clock.advance(10)

    purged = cache.purge_expired()

    assert purged == 2
    assert cache.purge_expired() == 0
    assert cache.get("alice", "long") == 2


@pytest.mark.parametrize(
    "data", [math.nan, {"x": [math.inf]}, {1: "non-string key"}, object()], ids=repr
)
def test_data_json_cannot_hold_is_refused_and_nothing_is_stored(
    storage: Storage, data: object
) -> None:
    cache = widget_cache_for(storage)

    with pytest.raises(ValidationError):
        cache.put("alice", "w1", data, ttl=60)  # type: ignore[arg-type]

    assert cache.get("alice", "w1") is None


@pytest.mark.parametrize("ttl", [0, -1, math.inf, math.nan])
def test_a_ttl_that_is_not_a_positive_finite_number_is_refused(
    storage: Storage, ttl: float
) -> None:
    cache = widget_cache_for(storage)

    with pytest.raises(ConfigurationError, match="ttl"):
        cache.put("alice", "w1", 1, ttl=ttl)


def test_ids_no_document_could_have_are_refused(storage: Storage) -> None:
    cache = widget_cache_for(storage)

    with pytest.raises(ValidationError):
        cache.put("alice", "w\x00", 1, ttl=60)
    with pytest.raises(ValidationError):
        cache.get("", "w1")
    with pytest.raises(ValidationError, match="widget_ids"):
        cache.get_many("alice", ["ok", "x" * 257])


# -- one query for a batch ------------------------------------------------------------------


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_get_many_of_fifty_widgets_runs_one_query(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, clock: FakeWallClock
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'dash.db'}"
        if backend == "sqlite"
        else str(request.getfixturevalue("postgres_url"))
    )
    storage = SQLStorage(url)
    cache = widget_cache_for(storage, clock=clock)
    for n in range(MAX_BATCH):
        cache.put("alice", f"w{n}", {"n": n}, ttl=60)
    statements: list[str] = []
    event.listen(
        storage.engine,
        "before_cursor_execute",
        lambda conn, cursor, sql, *rest: statements.append(sql),
    )

    found = cache.get_many("alice", [f"w{n}" for n in range(MAX_BATCH)])

    assert len(found) == MAX_BATCH
    assert len(statements) == 1
    assert statements[0].startswith("SELECT widget_id, data FROM dashpersist_widget_cache")
    assert "user_id = " in statements[0]
    storage.close()


# -- the background purger ------------------------------------------------------------------


class SignallingStore:
    """A real store that reports each purge it finishes."""

    def __init__(self, inner: WidgetCacheStore) -> None:
        self.inner = inner
        self.purged: list[int] = []
        self.purged_something = threading.Event()

    def put(
        self,
        user_id: str,
        widget_id: str,
        data: bytes,
        *,
        stored_at: datetime,
        expires_at: datetime,
    ) -> None:
        self.inner.put(user_id, widget_id, data, stored_at=stored_at, expires_at=expires_at)

    def get_many(
        self, user_id: str, widget_ids: Sequence[str], *, now: datetime
    ) -> dict[str, bytes]:
        return self.inner.get_many(user_id, widget_ids, now=now)

    def purge_expired(self, *, now: datetime) -> int:
        count = self.inner.purge_expired(now=now)
        self.purged.append(count)
        if count:
            self.purged_something.set()
        return count


def test_the_background_purger_deletes_expired_entries_until_stopped(
    storage: Storage, clock: FakeWallClock
) -> None:
    store = SignallingStore(widget_cache_for(storage).store)
    cache = WidgetDataCache(store, clock=clock)
    cache.put("alice", "w1", 1, ttl=5)
    cache.put("alice", "w2", 2, ttl=500)

    cache.start_purger(interval=0.01)
    clock.advance(6)
    purged_in_time = store.purged_something.wait(WAIT)
    cache.stop_purger()

    assert purged_in_time
    assert sum(store.purged) == 1
    assert not cache.is_purging
    clock.advance(1000)
    assert cache.get("alice", "w2") is None  # expired now, but no purger runs any more
    assert store.inner.purge_expired(now=clock.now()) == 1


def test_the_purger_starts_once_and_stopping_twice_is_harmless(storage: Storage) -> None:
    cache = widget_cache_for(storage)
    cache.start_purger(interval=60)

    with pytest.raises(ConfigurationError, match="already running"):
        cache.start_purger(interval=60)
    cache.stop_purger()
    cache.close()

    assert not cache.is_purging


def test_a_failing_purge_round_is_logged_and_the_purger_keeps_going(
    clock: FakeWallClock, caplog: pytest.LogCaptureFixture
) -> None:
    class FailingOnce(SignallingStore):
        failed = False

        def purge_expired(self, *, now: datetime) -> int:
            if not self.failed:
                self.failed = True
                raise CorruptStoreError("injected")
            return super().purge_expired(now=now)

    store = FailingOnce(MemoryWidgetCacheStore())
    cache = WidgetDataCache(store, clock=clock)
    cache.put("alice", "w1", 1, ttl=5)
    clock.advance(6)

    cache.start_purger(interval=0.01)
    recovered = store.purged_something.wait(WAIT)
    cache.stop_purger()

    assert recovered
    assert "purging expired widget data failed" in caplog.text


# -- the factory ----------------------------------------------------------------------------


def test_a_wrapper_gets_the_cache_of_the_store_it_wraps(tmp_path: Path) -> None:
    inner = SQLStorage(f"sqlite:///{tmp_path / 'dash.db'}")

    widget_cache_for(FaultyStorage(inner)).put("alice", "w1", "via the wrapper", ttl=60)

    assert widget_cache_for(inner).get("alice", "w1") == "via the wrapper"
    inner.close()


def test_caches_made_for_one_memory_storage_share_their_entries() -> None:
    storage = MemoryStorage()

    widget_cache_for(storage).put("alice", "w1", 1, ttl=60)

    assert widget_cache_for(storage).get("alice", "w1") == 1
    assert widget_cache_for(MemoryStorage()).get("alice", "w1") is None


# -- JSON folder ----------------------------------------------------------------------------


def test_the_json_cache_is_one_file_per_user_that_the_store_never_lists(
    tmp_path: Path, clock: FakeWallClock
) -> None:
    storage = JSONFileStorage(tmp_path / "layouts")
    storage.write(DocumentKey("alice"), {"widgets": []}, expected_version=None)
    cache = widget_cache_for(storage, clock=clock)

    cache.put("alice", "w1", 1, ttl=60)
    cache.put("alice", "w2", 2, ttl=60)
    cache.put("../bob", "w1", 3, ttl=60)

    files = sorted(path.name for path in (tmp_path / "layouts" / ".widget-cache").glob("*.json"))
    assert len(files) == 2
    assert storage.user_ids() == ["alice"]
    storage.close()


def test_purging_every_entry_of_a_user_removes_their_file(
    tmp_path: Path, clock: FakeWallClock
) -> None:
    cache = WidgetDataCache(JSONFileWidgetCacheStore(tmp_path), clock=clock)
    cache.put("alice", "w1", 1, ttl=5)
    clock.advance(5)

    assert cache.purge_expired() == 1
    assert list((tmp_path / ".widget-cache").glob("*.json")) == []


def test_a_damaged_json_cache_file_is_corrupt_and_left_as_found(
    tmp_path: Path, clock: FakeWallClock
) -> None:
    cache = WidgetDataCache(JSONFileWidgetCacheStore(tmp_path), clock=clock)
    cache.put("alice", "w1", 1, ttl=60)
    path = next((tmp_path / ".widget-cache").glob("*.json"))
    path.write_bytes(b'{"format": 1, "entries": ')

    with pytest.raises(CorruptStoreError):
        cache.get("alice", "w1")
    with pytest.raises(CorruptStoreError):
        cache.put("alice", "w2", 2, ttl=60)

    assert path.read_bytes() == b'{"format": 1, "entries": '

"""AsyncPersistenceManager: the same API as PersistenceManager, off the event loop.

Behaviour is tested once for both managers (tests/unit/test_manager.py runs every test
against each); this file covers what only the twin has: signature parity, the event loop
staying free, many tasks on one document, its lifecycle and its event delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
from collections.abc import Callable
from typing import Any

import pytest

from dashpersist import (
    AsyncPersistenceManager,
    Layout,
    ManagerClosedError,
    MemoryStorage,
    PersistenceConfig,
    PersistenceManager,
    Widget,
)
from dashpersist.events import ChangeEvent
from dashpersist.storage import Storage
from dashpersist.testing import FaultyStorage

DIRECT = PersistenceConfig(auto_save=False)

NOT_COROUTINES = {"register_migration", "register_widget_type"}
"""Setup calls without I/O, plain methods on purpose: hosts call them before a loop runs."""
RENAMED = {"close": "aclose", "__enter__": "__aenter__", "__exit__": "__aexit__"}
WIDER = {"AsyncSubscriber": "Subscriber"}
"""Twin parameter types that accept more (coroutine callbacks), by the sync type they widen."""
TWIN_ONLY = {"aclose", "from_manager", "manager", "__aenter__", "__aexit__"}


def sample(title: str = "Sales") -> Layout:
    return Layout(widgets=[Widget(id="w1", type="chart", title=title)])


def public_names(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")} | {
        name for name in ("__enter__", "__exit__", "__aenter__", "__aexit__") if name in vars(cls)
    }


def comparable(signature: inspect.Signature) -> list[tuple[str, object, object, object]]:
    return [
        (p.name, p.kind, p.default, WIDER.get(str(p.annotation), p.annotation))
        for p in signature.parameters.values()
        if p.name != "self"
    ]


def test_every_public_method_of_the_manager_has_a_twin_with_the_same_signature() -> None:
    sync_names = public_names(PersistenceManager)
    twin_names = public_names(AsyncPersistenceManager)

    assert {RENAMED.get(name, name) for name in sync_names} | TWIN_ONLY == twin_names
    for name in sync_names - {"close", "__enter__", "__exit__"}:
        sync_attr = inspect.getattr_static(PersistenceManager, name)
        twin_attr = inspect.getattr_static(AsyncPersistenceManager, name)
        if isinstance(sync_attr, property):
            assert isinstance(twin_attr, property), name
            continue
        assert comparable(inspect.signature(sync_attr)) == comparable(
            inspect.signature(twin_attr)
        ), name
        assert inspect.iscoroutinefunction(twin_attr) == (name not in NOT_COROUTINES), name


def test_the_constructor_takes_the_managers_arguments_and_max_workers() -> None:
    sync_params = comparable(inspect.signature(PersistenceManager.__init__))
    twin_params = comparable(inspect.signature(AsyncPersistenceManager.__init__))

    assert twin_params[:-1] == sync_params
    assert twin_params[-1][0] == "max_workers"


def test_storage_work_never_blocks_the_event_loop() -> None:
    storage = FaultyStorage(MemoryStorage())
    storage.set_latency(0.2, "write")

    async def scenario() -> tuple[float, int | None]:
        loop = asyncio.get_running_loop()
        gaps: list[float] = []

        async def tick() -> None:
            last = loop.time()
            while True:
                await asyncio.sleep(0.01)
                now = loop.time()
                gaps.append(now - last)
                last = now

        async with AsyncPersistenceManager(storage, config=DIRECT) as manager:
            ticker = asyncio.create_task(tick())
            result = await manager.save_layout("alice", sample())
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        return max(gaps), result.version

    longest_gap, version = asyncio.run(scenario())

    assert version == 1
    assert storage.calls["write"] == 1
    assert longest_gap < 0.15, f"the loop stalled for {longest_gap:.3f} s during a 0.2 s write"


def test_concurrent_saves_from_many_tasks_serialize_per_document(storage: Storage) -> None:
    async def scenario() -> tuple[list[int | None], dict[str, list[int]]]:
        async with AsyncPersistenceManager(storage, config=DIRECT, max_workers=8) as manager:

            async def edits(task: int) -> list[int | None]:
                results = []
                for i in range(3):
                    saved = await manager.save_layout(f"user{task % 2}", sample(f"{task}-{i}"))
                    results.append(saved.version)
                return results

            per_task = await asyncio.gather(*(edits(task) for task in range(16)))
            histories = {
                user: [v.version for v in await manager.get_version_history(user, limit=100)]
                for user in ("user0", "user1")
            }
        return [version for versions in per_task for version in versions], histories

    acknowledged, histories = asyncio.run(scenario())

    assert histories == {user: list(range(24, 0, -1)) for user in ("user0", "user1")}
    assert sorted(v for v in acknowledged if v is not None) == sorted([*range(1, 25)] * 2)


def test_a_twin_shares_a_sync_managers_documents_and_closes_it() -> None:
    sync = PersistenceManager(MemoryStorage(), config=DIRECT)
    twin = AsyncPersistenceManager.from_manager(sync)
    sync.save_layout("alice", sample("from sync code"))

    async def scenario() -> Layout | None:
        async with twin:
            return await twin.load_layout("alice")

    loaded = asyncio.run(scenario())

    assert loaded == sample("from sync code")
    assert twin.manager is sync
    assert sync.is_closed and twin.is_closed


def test_a_closed_twin_refuses_calls_and_closes_once() -> None:
    async def scenario() -> AsyncPersistenceManager:
        manager = AsyncPersistenceManager(MemoryStorage(), config=DIRECT)
        await manager.save_layout("alice", sample())
        await manager.aclose()
        await manager.aclose()
        with pytest.raises(ManagerClosedError):
            await manager.load_layout("alice")
        return manager

    manager = asyncio.run(scenario())

    assert manager.is_closed and manager.manager.is_closed


def test_calls_see_the_callers_context_variables() -> None:
    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")
    seen: list[str] = []

    class Recording(FaultyStorage):
        def layout_ids(self, user_id: str) -> list[str]:
            seen.append(request_id.get())
            return super().layout_ids(user_id)

    async def scenario() -> None:
        async with AsyncPersistenceManager(Recording(MemoryStorage()), config=DIRECT) as manager:
            request_id.set("req-42")
            await manager.list_layouts("alice")

    asyncio.run(scenario())

    assert seen == ["req-42"]


def test_a_cancelled_await_does_not_recall_a_save_already_running() -> None:
    storage = FaultyStorage(MemoryStorage())
    storage.set_latency(0.1, "write")

    async def scenario() -> Layout | None:
        async with AsyncPersistenceManager(storage, config=DIRECT) as manager:
            save = asyncio.create_task(manager.save_layout("alice", sample()))
            while storage.calls["write"] == 0:
                await asyncio.sleep(0.005)
            save.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await save
            await manager.flush()
            await asyncio.sleep(0.15)
            return await manager.load_layout("alice")

    assert asyncio.run(scenario()) == sample()


def _events_through(callback_of: Callable[[list[ChangeEvent]], Any]) -> list[ChangeEvent]:
    async def scenario() -> list[ChangeEvent]:
        heard: list[ChangeEvent] = []
        async with AsyncPersistenceManager(MemoryStorage(), config=DIRECT) as manager:
            unsubscribe = await manager.subscribe(callback_of(heard))
            await manager.save_layout("alice", sample("one"))
            await asyncio.sleep(0.05)
            unsubscribe()
            await manager.save_layout("alice", sample("two"))
            await asyncio.sleep(0.05)
        return heard

    return asyncio.run(scenario())


def test_sync_subscribers_hear_events_on_the_event_loop() -> None:
    threads: list[bool] = []

    def subscriber(heard: list[ChangeEvent]) -> Callable[[ChangeEvent], None]:
        def on_event(event: ChangeEvent) -> None:
            threads.append(asyncio.get_running_loop().is_running())
            heard.append(event)

        return on_event

    heard = _events_through(subscriber)

    assert [(e.kind, e.user_id, e.version) for e in heard] == [("saved", "alice", 1)]
    assert threads == [True]


def test_async_subscribers_are_awaited_on_the_event_loop() -> None:
    def subscriber(heard: list[ChangeEvent]) -> Callable[[ChangeEvent], Any]:
        async def on_event(event: ChangeEvent) -> None:
            await asyncio.sleep(0)
            heard.append(event)

        return on_event

    heard = _events_through(subscriber)

    assert [(e.kind, e.version) for e in heard] == [("saved", 1)]

"""Run the manager test suite against both managers: the sync one and its asyncio twin.

`BlockingTwin` is a blocking view of an `AsyncPersistenceManager`: each coroutine method
is run on a private event loop in its own thread, and the caller waits for the result.
Tests written against `PersistenceManager` thus drive the async twin unchanged, through
real coroutines on a real loop, from one thread or many.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, cast

from dashpersist import AsyncPersistenceManager, PersistenceManager

MANAGER_KINDS = ["async", "sync"]

ManagerFactory = Callable[..., PersistenceManager]
"""Builds a manager from `PersistenceManager`'s arguments."""


class LoopThread:
    """An event loop running forever in a daemon thread, until `stop`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        """Run *coroutine* on the loop and return its result (or raise its exception)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class BlockingTwin:
    """`PersistenceManager`'s interface, served by an `AsyncPersistenceManager` on a loop."""

    def __init__(self, twin: AsyncPersistenceManager, loop: LoopThread) -> None:
        self.twin = twin
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.twin, "aclose" if name == "close" else name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute

        def blocking(*args: Any, **kwargs: Any) -> Any:
            return self._loop.run(attribute(*args, **kwargs))

        return blocking

    def __enter__(self) -> BlockingTwin:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._loop.run(self.twin.aclose())


@contextmanager
def manager_factory(kind: str) -> Iterator[ManagerFactory]:
    """Yield a factory of managers of *kind*; async ones are closed afterwards."""
    if kind == "sync":
        yield PersistenceManager
        return
    loop = LoopThread()
    twins: list[AsyncPersistenceManager] = []

    def make(*args: Any, **kwargs: Any) -> PersistenceManager:
        twin = AsyncPersistenceManager(*args, **kwargs)
        twins.append(twin)
        # The view has every method of PersistenceManager with the same signature
        # (test_async_manager checks it), so the suite can type it as one.
        return cast(PersistenceManager, BlockingTwin(twin, loop))

    try:
        yield make
    finally:
        for twin in twins:
            loop.run(twin.aclose())
        loop.stop()

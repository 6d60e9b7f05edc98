"""The read cache: recently read documents of this process, dropped on every local write.

Every manager has its own cache, but managers sharing one `Storage` object share its
invalidations: `invalidate_everywhere` drops a key from every cache registered for that
storage, so two managers in one process never serve each other stale reads. Writes by
other processes become visible when an entry's TTL runs out.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from cachetools import TTLCache

from dashpersist.storage.protocol import DocumentKey

__all__ = ["ReadCache", "invalidate_everywhere", "register_cache"]

T = TypeVar("T")


class ReadCache(Generic[T]):
    """A thread-safe TTL cache of documents by key.

    What it holds must be immutable (or copied on the way out): the same object is
    handed to every caller. ``maxsize=0`` turns caching off.
    """

    def __init__(
        self, *, maxsize: int, ttl: float, timer: Callable[[], float] | None = None
    ) -> None:
        self._enabled = maxsize > 0 and ttl > 0
        self._entries: TTLCache[DocumentKey, T] = (
            TTLCache(maxsize=max(maxsize, 1), ttl=max(ttl, 1e-9), timer=timer)
            if timer is not None
            else TTLCache(maxsize=max(maxsize, 1), ttl=max(ttl, 1e-9))
        )
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: DocumentKey) -> T | None:
        """Return the cached value of *key*, or ``None``."""
        if not self._enabled:
            return None
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
            return value

    def put(self, key: DocumentKey, value: T) -> None:
        """Remember *value* for *key* until the TTL passes or the key is invalidated."""
        if self._enabled:
            with self._lock:
                self._entries[key] = value

    def invalidate(self, key: DocumentKey) -> None:
        """Forget *key*."""
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._entries.clear()


# id(storage) -> the caches of every manager using it. Caches are held weakly, so a
# closed-and-dropped manager falls out by itself. Keying by id() works for any storage
# (hashable or not); if an id is reused after its storage is gone, the only effect is an
# extra, harmless invalidation.
_REGISTRY: dict[int, weakref.WeakSet[ReadCache[Any]]] = {}
_REGISTRY_LOCK = threading.Lock()


def register_cache(storage: object, cache: ReadCache[Any]) -> None:
    """Make *cache* hear about writes that other managers make through *storage*."""
    with _REGISTRY_LOCK:
        for storage_id in [k for k, caches in _REGISTRY.items() if not caches]:
            del _REGISTRY[storage_id]
        _REGISTRY.setdefault(id(storage), weakref.WeakSet()).add(cache)


def invalidate_everywhere(
    storage: object, key: DocumentKey, *, besides: ReadCache[Any] | None = None
) -> None:
    """Drop *key* from every cache registered for *storage*, but *besides* (a writer's
    own cache, which it updates itself)."""
    with _REGISTRY_LOCK:
        registered = _REGISTRY.get(id(storage))
        if not registered:
            return
        caches = list(registered)
    for cache in caches:
        if cache is not besides:
            cache.invalidate(key)

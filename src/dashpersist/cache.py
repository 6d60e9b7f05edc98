"""The read cache: recently read documents of this process, dropped on every local write."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from cachetools import TTLCache

from dashpersist.storage.protocol import DocumentKey

__all__ = ["ReadCache"]

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

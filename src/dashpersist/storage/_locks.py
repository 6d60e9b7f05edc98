"""The locks of the files of a JSON folder: per file, a thread lock and a file lock.

A store serving many users would keep a pair for every file it ever touched if it held
them for good, so pairs are held weakly: one lives while somebody holds it, or while it
is among the latest made (making a file lock costs a quarter of taking one). Everyone
using a pair holds it from lookup to release, so two threads never hold different
pairs of one file.
"""

from __future__ import annotations

import collections
import threading
import weakref
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import filelock

__all__ = ["LockPair", "LockPairs"]

K = TypeVar("K", bound=Hashable)


class LockPair:
    """A thread lock (this process's threads) and a file lock (other processes)."""

    __slots__ = ("__weakref__", "file", "thread")

    def __init__(self, file: filelock.FileLock) -> None:
        self.thread = threading.Lock()
        self.file = file


class LockPairs(Generic[K]):
    """The `LockPair` of each name, made on first use and dropped once nobody holds it
    and *recent* others were made since."""

    def __init__(self, *, recent: int = 64) -> None:
        self._guard = threading.Lock()
        self._pairs: weakref.WeakValueDictionary[K, LockPair] = weakref.WeakValueDictionary()
        self._recent: collections.deque[LockPair] = collections.deque(maxlen=recent)

    def get(self, name: K, file_lock: Callable[[], filelock.FileLock]) -> LockPair:
        """Return *name*'s pair; a new one's file lock comes from *file_lock*. Hold the
        result for as long as its locks are used."""
        with self._guard:
            pair = self._pairs.get(name)
            if pair is None:
                pair = LockPair(file_lock())
                self._pairs[name] = pair
                self._recent.append(pair)
        return pair

    def clear(self) -> None:
        """Forget every pair (those in use stay valid for their holders)."""
        with self._guard:
            self._pairs.clear()
            self._recent.clear()

    def __len__(self) -> int:
        return len(self._pairs)

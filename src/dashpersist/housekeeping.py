"""Housekeeping after a write, off the saving thread: trimming a document's history.

Trimming reads and deletes a batch of history records every ``keyframe_interval``
saves; on the saving thread it made one save in 32 several times slower than the rest.
A `Housekeeper` runs it on one background thread instead, and the manager's readers of
history wait for what it asked for, so a manager always sees its own trims.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from dashpersist.storage.protocol import DocumentKey

__all__ = ["Housekeeper"]

_LOG = logging.getLogger(__name__)

Task = Callable[[], None]

IDLE_SECONDS = 10.0
"""How long the thread waits for work before it ends (the next request starts another)."""


class Housekeeper:
    """Run each document's housekeeping on one background thread, in the order asked.

    One task per document waits at a time: a newer request replaces one still waiting
    (a trim asked for after a later save covers what an earlier one would do). `wait` returns when
    what was asked for a document (or for all) is done; `close` runs what is left and
    stops the thread, which also ends after `IDLE_SECONDS` without work. Without the
    thread (``start_thread=False``, after `close`, at interpreter exit, in a forked
    child before it asks again) tasks run at once on the thread that asks. A task
    handles its own errors; one that raises anyway is logged, and the thread goes on.
    """

    def __init__(self, *, start_thread: bool) -> None:
        self._threaded = start_thread
        self._changed = threading.Condition()
        self._pending: dict[DocumentKey, Task] = {}  # in the order asked
        self._running: DocumentKey | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._pid = os.getpid()

    def submit(self, key: DocumentKey, task: Task) -> None:
        """Run *task* for *key* soon (or now, without the thread)."""
        with self._changed:
            if self._pid != os.getpid():
                # A forked child: the thread and the parent's tasks did not come along.
                self._pending, self._running, self._thread = {}, None, None
                self._pid = os.getpid()
            if self._threaded and not self._closed and self._has_thread():
                self._pending[key] = task  # keeps its turn, does the newest work
                self._changed.notify_all()
                return
        task()

    def wait(self, key: DocumentKey | None = None) -> None:
        """Return when nothing asked for *key* (``None``: for any document) is left to do."""
        with self._changed:
            if self._thread is threading.current_thread():
                return  # a task reading history must not wait for itself
            self._changed.wait_for(lambda: not self._busy(key))

    def close(self) -> None:
        """Run what is pending, then stop the thread. Idempotent."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
            thread = self._thread if self._pid == os.getpid() else None
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _busy(self, key: DocumentKey | None) -> bool:
        if key is None:
            return bool(self._pending) or self._running is not None
        return key in self._pending or self._running == key

    def _has_thread(self) -> bool:
        """Start the thread if it is not running; whether it runs (call with the lock)."""
        if self._thread is not None:
            return True
        thread = threading.Thread(target=self._work, name="dashpersist-housekeeping", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # "can't create new thread at interpreter shutdown"
            return False
        self._thread = thread
        return True

    def _work(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(
                    lambda: bool(self._pending) or self._closed, timeout=IDLE_SECONDS
                )
                if not self._pending:
                    # Closed, or idle for a while (a manager nobody closed must not keep a
                    # thread for good): the next request starts another.
                    self._thread = None
                    return
                key = next(iter(self._pending))
                task = self._pending.pop(key)
                self._running = key
            try:
                task()
            except Exception:  # noqa: BLE001 - a failed task must not end the thread
                _LOG.exception("housekeeping of %s failed", key)
            finally:
                with self._changed:
                    self._running = None
                    self._changed.notify_all()

"""AutosaveQueue: coalesce rapid saves per key and write them after a quiet period.

Timing
------
A key's write is due ``delay`` seconds after its last `AutosaveQueue.put`, but never
later than ``max_wait`` seconds after the first put not yet written, so a user who never
pauses is still saved every ``max_wait`` seconds. One daemon thread sleeps on a
`threading.Condition` until the next deadline and writes whatever is due; all times come
from the injected *clock*, and with ``start_worker=False`` nothing runs in the
background (tests advance a fake clock and call `AutosaveQueue.run_due`).

Writes of one key never overlap, and each writes the newest value at the moment it
starts. A put that arrives while its key is being written queues the key again.

Failures
--------
A write that raises is never dropped: the value stays queued (unless a newer put
replaced it), the exception goes to *on_error* and to the log (the key and the exception,
never the value), and the key is retried in the background after a bounded backoff of
``min(max_wait, max(delay, 0.05) * 2**(failures - 1))`` seconds, so a broken store is
not hammered. `AutosaveQueue.flush` and `AutosaveQueue.close` retry every queued value
at once, backoff or not, and raise if one still fails.

Durability
----------
A queued value lives in this process's memory only. `AutosaveQueue.flush` and
`AutosaveQueue.close` write on the calling thread and start no thread or executor, so an
``atexit`` handler can call them (at interpreter exit, starting one raises "can't
register atexit after shutdown"). The values queued since the last completed flush are
lost when the process dies without running ``atexit``: SIGKILL, ``os._exit()``, a fatal
interpreter error, and SIGTERM under its default disposition. `install_sigterm_handler`
turns SIGTERM into `SystemExit`, so the ``atexit`` flush runs; nothing can save the
debounce window from SIGKILL.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from types import FrameType
from typing import Generic, TypeVar, cast

from dashpersist.errors import ConfigurationError, ManagerClosedError

__all__ = ["AutosaveQueue", "install_sigterm_handler"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
R = TypeVar("R")

_LOG = logging.getLogger(__name__)

MIN_BACKOFF = 0.05
"""Shortest wait in seconds before a failed background write is retried (when ``delay`` is 0)."""


@dataclass(slots=True, eq=False)
class _Slot(Generic[V]):
    """The newest unwritten value of one key and when it was put."""

    value: V
    first_put: float
    last_put: float
    generation: int = 0
    failures: int = 0
    retry_at: float = -math.inf
    first_put_during_write: float | None = None


@dataclass(slots=True, frozen=True)
class _Outcome(Generic[R]):
    written: bool
    result: R | None = None
    error: Exception | None = None


CLOSE_PASSES = 4
"""How many flushes `AutosaveQueue.close` makes while writes put values back."""


class AutosaveQueue(Generic[K, V, R]):
    """Debounce writes per key: coalesce rapid `put` calls, then write the newest value.

    *write* stores one value and returns a result (the manager's `SaveResult`); it is
    called on the worker thread for due keys and on the caller's thread by `flush` and
    `close`. *delay* and *max_wait* are seconds (``0 <= delay <= max_wait``, ``max_wait >
    0``). *on_error* receives every failed write's key and exception, *on_written* every
    successful write's key and result, on the thread that wrote; an exception either
    callback raises is logged and otherwise ignored. Every method is thread-safe.
    """

    def __init__(
        self,
        write: Callable[[K, V], R],
        *,
        delay: float,
        max_wait: float,
        clock: Callable[[], float] = time.monotonic,
        on_error: Callable[[K, BaseException], None] | None = None,
        on_written: Callable[[K, R], None] | None = None,
        start_worker: bool = True,
    ) -> None:
        if not (delay >= 0 and max_wait > 0 and max_wait >= delay and math.isfinite(max_wait)):
            raise ConfigurationError(
                f"need 0 <= delay <= max_wait < inf and max_wait > 0, "
                f"not delay={delay}, max_wait={max_wait}"
            )
        self._write = write
        self._delay = delay
        self._max_wait = max_wait
        self._clock = clock
        self._on_error = on_error
        self._on_written = on_written
        self._cond = threading.Condition(threading.Lock())
        self._slots: dict[K, _Slot[V]] = {}
        self._writing: set[K] = set()
        self._in_write = threading.local()  # set on a thread while it runs *write*
        self._closed = False
        self._stopping = False
        # When the worker next wakes by itself; a put only notifies it for an earlier deadline.
        self._next_wake = -math.inf
        self._worker: threading.Thread | None = None
        if start_worker:
            self._worker = threading.Thread(
                target=self._work, name="dashpersist-autosave", daemon=True
            )
            self._worker.start()

    # -- queueing ------------------------------------------------------------------------

    def put(self, key: K, value: V, *, unless: Callable[[V], bool] | None = None) -> bool:
        """Queue *value* as the newest value of *key*; return at once, without I/O.

        With *unless*, a value of *key* queued already that *unless* says yes to stays,
        and *value* is not queued; return whether it was. The value is kept by reference,
        not copied: do not mutate it afterwards. Raises `ManagerClosedError` after `close`.
        """
        now = self._clock()
        with self._cond:
            if self._closed and not getattr(self._in_write, "active", False):
                raise ManagerClosedError("this autosave queue is closed")
            slot = self._slots.get(key)
            if slot is None:
                self._slots[key] = _Slot(value, now, now)
                if now + self._delay < self._next_wake:
                    self._cond.notify()
                return True
            if unless is not None and unless(slot.value):
                return False
            # An existing key's deadline only moves later, so the worker needs no wake-up.
            slot.value = value
            slot.last_put = now
            slot.generation += 1
            if slot.first_put_during_write is None and key in self._writing:
                slot.first_put_during_write = now
            return True

    def pending(self, key: K) -> V | None:
        """Return the newest queued value of *key* (read-your-writes), or ``None``.

        A value stays pending until a write of it (or of a newer value) has succeeded.
        """
        with self._cond:
            slot = self._slots.get(key)
            return None if slot is None else slot.value

    @property
    def has_pending_writes(self) -> bool:
        """Whether any value is queued or being written."""
        with self._cond:
            return bool(self._slots)

    def pending_keys(self) -> list[K]:
        """Return the keys with a queued value, oldest first."""
        with self._cond:
            return list(self._slots)

    def busy_keys(self) -> set[K]:
        """Return the keys with a value queued or being written."""
        with self._cond:
            return {*self._slots, *self._writing}

    def discard(self, key: K, *, only_if: Callable[[V], bool] | None = None) -> V | None:
        """Drop the queued value of *key* and return it (``None`` if there was none).

        With *only_if*, only a value it says yes to (a value older than some save, say).
        A write of *key* already in progress is not recalled; it completes or fails as usual.
        """
        with self._cond:
            slot = self._slots.get(key)
            if slot is None or (only_if is not None and not only_if(slot.value)):
                return None
            del self._slots[key]
            return slot.value

    # -- writing -------------------------------------------------------------------------

    def run_due(self) -> list[R]:
        """Write every key whose deadline has passed and return the results, in order.

        A failed write is not raised here: it goes to *on_error* and the log, its value
        stays queued, and the key is retried after a backoff (see the module docstring).
        """
        now = self._clock()
        with self._cond:
            due = [
                key
                for key, slot in self._slots.items()
                if key not in self._writing and self._due_time(slot) <= now
            ]
        results: list[R] = []
        for key in due:
            outcome = self._write_key(key, due_at=now)
            if outcome.written:
                results.append(cast(R, outcome.result))
        return results

    def flush(self) -> list[R]:
        """Write every queued value now, on the caller's thread; return the results.

        Each key queued when `flush` is called is attempted once, backoff or not; a key
        the worker is writing at that moment is waited for, then written again only if a
        value is still queued (the worker's result goes to *on_written*, not into this
        list). After attempting all keys, if any write raised, the first such exception
        is re-raised; the values whose writes failed stay queued. So when `flush` returns,
        every value queued at its start has been written. A background failure whose key
        this flush then writes successfully was already reported to *on_error* and is not
        raised again. Starts no thread: safe inside an ``atexit`` handler. Called by code
        that runs inside a write (a callback, an event subscriber) on the writing thread,
        it raises `ConfigurationError` instead of waiting for itself.
        """
        self._refuse_inside_a_write()
        with self._cond:
            keys = list(self._slots)
        results: list[R] = []
        first_error: Exception | None = None
        for key in keys:
            outcome = self._write_key(key, due_at=None)
            if outcome.error is not None:
                first_error = first_error or outcome.error
            elif outcome.written:
                results.append(cast(R, outcome.result))
        if first_error is not None:
            raise first_error
        return results

    def close(self) -> list[R]:
        """Stop accepting puts, `flush`, stop the worker; return the flush's results.

        Later `put` calls raise `ManagerClosedError`, but for those of a write this flush
        makes (a write that puts back what it could not store): what they queue is
        written by the same close, up to `CLOSE_PASSES` rounds. Calling `close` again is
        harmless: it flushes whatever a failed earlier flush left queued (usually
        nothing) and returns those results. Raises like `flush`; the worker is stopped
        regardless. Called from inside a write, it raises `ConfigurationError` and
        changes nothing.
        """
        self._refuse_inside_a_write()
        with self._cond:
            self._closed = True
            self._stopping = True
            self._cond.notify_all()
            worker = self._worker
        try:
            results = self.flush()
            for _ in range(CLOSE_PASSES - 1):
                if not self.has_pending_writes:
                    break
                results += self.flush()
            return results
        finally:
            if worker is not None and worker is not threading.current_thread():
                worker.join()

    @property
    def is_closed(self) -> bool:
        """Whether `close` has been called."""
        return self._closed

    # -- internals -----------------------------------------------------------------------

    def _due_time(self, slot: _Slot[V]) -> float:
        due = min(slot.last_put + self._delay, slot.first_put + self._max_wait)
        return max(due, slot.retry_at)

    def _backoff(self, failures: int) -> float:
        return min(self._max_wait, max(self._delay, MIN_BACKOFF) * 2.0 ** min(failures - 1, 32))

    def _write_key(self, key: K, *, due_at: float | None) -> _Outcome[R]:
        """Write the newest value of *key*; with *due_at*, only if it is still due then
        and no other write of it is running, else after waiting for that write."""
        with self._cond:
            while key in self._writing:
                if due_at is not None:
                    return _Outcome(written=False)
                self._cond.wait()
            slot = self._slots.get(key)
            if slot is None or (due_at is not None and self._due_time(slot) > due_at):
                return _Outcome(written=False)
            self._writing.add(key)
            value, generation = slot.value, slot.generation
            slot.first_put_during_write = None
        try:
            result = self._write_marked(key, value)
        except Exception as exc:  # noqa: BLE001 - any failure keeps the value queued and is reported
            self._record_failure(key, slot, exc)
            return _Outcome(written=False, error=exc)
        except BaseException:
            with self._cond:
                self._writing.discard(key)
                self._cond.notify_all()
            raise
        with self._cond:
            self._writing.discard(key)
            if self._slots.get(key) is slot:
                if slot.generation == generation:
                    del self._slots[key]
                else:
                    # Re-queued by a put during the write: its max-wait runs from that put.
                    slot.first_put = slot.first_put_during_write or slot.last_put
                    slot.failures = 0
                    slot.retry_at = -math.inf
            self._cond.notify_all()
        if self._on_written is not None:
            try:
                self._on_written(key, result)
            except Exception:  # noqa: BLE001 - a host callback must not kill the worker
                _LOG.exception("the on_written callback raised for %s", key)
        return _Outcome(written=True, result=result)

    def _refuse_inside_a_write(self) -> None:
        if getattr(self._in_write, "active", False):
            raise ConfigurationError(
                "flush() or close() was called by code running inside an autosave write "
                "(an event subscriber or callback), on the thread doing that write: it "
                "would wait for itself. Call it from another thread."
            )

    def _write_marked(self, key: K, value: V) -> R:
        """Run *write*, marking this thread as inside it (see `flush`)."""
        self._in_write.active = True
        try:
            return self._write(key, value)
        finally:
            self._in_write.active = False

    def _record_failure(self, key: K, slot: _Slot[V], exc: Exception) -> None:
        with self._cond:
            self._writing.discard(key)
            slot.failures += 1
            failures = slot.failures
            backoff = self._backoff(failures)
            slot.retry_at = self._clock() + backoff
            self._cond.notify_all()
        _LOG.error(
            "autosave write of %s failed (%d in a row); the value stays queued, "
            "retried in %.3g s or by the next flush",
            key,
            failures,
            backoff,
            exc_info=exc,
        )
        if self._on_error is not None:
            try:
                self._on_error(key, exc)
            except Exception:  # noqa: BLE001 - a host callback must not kill the worker
                _LOG.exception("the on_error callback raised for %s", key)

    def _work(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    now = self._clock()
                    due = min(
                        (
                            self._due_time(slot)
                            for key, slot in self._slots.items()
                            if key not in self._writing
                        ),
                        default=math.inf,
                    )
                    if due <= now:
                        break
                    self._next_wake = due
                    self._cond.wait(None if due == math.inf else due - now)
                self._next_wake = -math.inf
            self.run_due()


def install_sigterm_handler() -> None:
    """Make SIGTERM raise `SystemExit` (exit status 143) so ``atexit`` flushes still run.

    Opt-in, because a process has one SIGTERM handler and it belongs to the host. Under
    the default disposition SIGTERM ends the process without running ``atexit``, losing
    every value queued since the last flush; SIGKILL always does. After the first SIGTERM
    further ones are ignored, so a second signal cannot interrupt the exit flush. Raises
    `ConfigurationError` unless called from the main thread (a rule of `signal`).
    """

    def exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    try:
        signal.signal(signal.SIGTERM, exit_on_sigterm)
    except ValueError as exc:
        raise ConfigurationError(
            "install_sigterm_handler() must be called from the main thread"
        ) from exc

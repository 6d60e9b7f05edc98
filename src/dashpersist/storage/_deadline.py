"""A client-side deadline on PostgreSQL operations: one watchdog thread for stuck connections.

psycopg 3 has no socket read timeout, and TCP options do not help against a peer that
accepts and acknowledges but never answers (a hung server, a black-holing firewall or
proxy): the kernel ACKs keepalives and unacknowledged data, so a blocked call waits
forever. The server's ``statement_timeout`` cannot help either, since the server is the
party that does not answer.

So every pooled connection of a PostgreSQL engine is watched from checkout to checkin.
When one stays checked out longer than its deadline, the watchdog shuts its socket down
(``shutdown(SHUT_RDWR)``). The blocked call then fails at once with psycopg's
``OperationalError``; SQLAlchemy sees a disconnect and discards the connection, and
`SQLStorage` reports a transient `StorageUnavailableError`: retried, then parked in the
outbox. The pool's pre-ping runs inside the watched window too (SQLAlchemy's own
``pool_pre_ping`` pings before any checkout listener runs, where nothing would watch it).

One daemon thread serves every engine in the process; it runs while an engine is
attached or a connection is watched, and ends when the last engine is disposed.

The watchdog's lock is reentrant, and everything that can run inside it is safe to
re-enter: a connection checked in by the garbage collector, or an engine's finalizer,
can run in the middle of any allocation, on a thread that already holds the lock.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, Protocol, cast

from sqlalchemy import Connection, Engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from dashpersist.errors import ConfigurationError

__all__ = [
    "DEFAULT_OPERATION_TIMEOUT",
    "OPERATION_TIMEOUT_OPTION",
    "enforce_operation_timeout",
    "lift_deadline",
    "socket_deadline",
    "split_operation_timeout",
    "watchdog_thread",
    "watched_connections",
]

OPERATION_TIMEOUT_OPTION: Final = "operation_timeout"
"""The URL query option naming the deadline, in seconds (``0`` turns it off)."""
DEFAULT_OPERATION_TIMEOUT: Final = 30.0
"""Seconds one storage call may keep a PostgreSQL connection checked out."""

_FRESH: Final = "dashpersist_fresh_connection"
_WATCH_KEY: Final = "dashpersist_watch_key"
_THREAD_NAME: Final = "dashpersist-operation-deadline"
_JOIN_TIMEOUT: Final = 5.0
_RECHECK_SECONDS = 5.0
"""The longest the watchdog sleeps without looking whether it still has work."""
_LOG = logging.getLogger(__name__)


class _Socketed(Protocol):
    def fileno(self) -> int: ...


@dataclass(slots=True)
class _Watch:
    descriptor: int
    """A duplicate of the connection's socket, owned by whoever removes the watch."""
    expires_at: float
    timeout: float
    where: str
    setting: str
    """The setting that chose *timeout*, for the log."""


class _Watchdog:
    """Cut the sockets of connections checked out past their deadline, in one thread."""

    def __init__(self) -> None:
        # Reentrant: unwatch() and detach() run from the garbage collector (a checked-out
        # connection collected, an engine's finalizer), which can interrupt a thread
        # holding the lock. With a plain Lock that thread would wait for itself forever.
        self._lock = threading.RLock()
        self._wakeup = threading.Condition(self._lock)
        self._watches: dict[int, _Watch] = {}
        self._engines: set[int] = set()
        self._thread: threading.Thread | None = None
        self._next_check = math.inf

    @property
    def thread(self) -> threading.Thread | None:
        with self._lock:
            return self._thread

    def watched(self) -> int:
        with self._lock:
            return len(self._watches)

    def attach(self, engine_id: int) -> None:
        with self._lock:
            self._engines.add(engine_id)
        self._ensure_thread()

    def detach(self, engine_id: int, *, wait: bool = True) -> None:
        """Forget an engine; when nothing is left to watch, stop the thread.

        With *wait*, also wait for the thread to end. The engine's finalizer does not wait:
        it can run inside a section holding the lock, which the thread needs to end.
        """
        with self._lock:
            self._engines.discard(engine_id)
            thread = self._thread if self._is_idle() else None
            self._wakeup.notify()
        if (
            wait
            and thread is not None
            and thread is not threading.current_thread()
            and thread.ident is not None  # started: one about to start ends by itself
        ):
            thread.join(_JOIN_TIMEOUT)

    def watch(
        self,
        key: int,
        descriptor: int,
        *,
        engine_id: int | None,
        timeout: float,
        where: str,
        setting: str = OPERATION_TIMEOUT_OPTION,
    ) -> None:
        """Cut *descriptor*'s socket after *timeout* seconds unless *key* is unwatched
        first; the descriptor is the watchdog's to close from now on."""
        expires_at = time.monotonic() + timeout
        watch = _Watch(descriptor, expires_at, timeout, where, setting)
        with self._lock:
            replaced = self._watches.pop(key, None)
            self._watches[key] = watch
            if engine_id is not None:
                self._engines.add(engine_id)  # again, if the engine was disposed and reused
            if expires_at < self._next_check:
                self._wakeup.notify()
        if replaced is not None:
            os.close(replaced.descriptor)
        try:
            self._ensure_thread()  # after the watch is in: a thread ending now sees it
        except BaseException:  # no thread ("can't start new thread"): nothing watches
            with self._lock:
                ours = self._watches.get(key) is watch
                if ours:
                    del self._watches[key]
            if ours:
                os.close(descriptor)
            raise

    def unwatch(self, key: int) -> None:
        with self._lock:
            watch = self._watches.pop(key, None)
            if self._is_idle():
                self._wakeup.notify()
        if watch is not None:
            os.close(watch.descriptor)

    def forget_after_fork(self) -> None:
        """Reset in a forked child: the thread did not survive the fork, the watches are
        the parent's."""
        self._lock = threading.RLock()
        self._wakeup = threading.Condition(self._lock)
        for watch in self._watches.values():
            os.close(watch.descriptor)
        self._watches.clear()
        self._engines.clear()
        self._thread = None
        self._next_check = math.inf

    def _is_idle(self) -> bool:
        return not self._engines and not self._watches

    def _ensure_thread(self) -> None:
        """Start the thread unless one runs. Never with the lock held: a collection on
        the new thread while it starts can run a finalizer that takes the lock, and
        ``Thread.start`` waits for the thread, so holding the lock would deadlock."""
        with self._lock:
            if self._thread is not None:
                return
            thread = threading.Thread(target=self._run, name=_THREAD_NAME, daemon=True)
            self._thread = thread
        try:
            thread.start()
        except BaseException:  # "can't start new thread": then there is none
            with self._lock:
                if self._thread is thread:
                    self._thread = None
            raise

    def _run(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                # Iterate over a copy (dict.copy() allocates nothing the collector tracks
                # while copying): a collection in the loop can unwatch a connection.
                watches = self._watches.copy()
                expired = [key for key, w in watches.items() if w.expires_at <= now]
                due = [w for key in expired if (w := self._watches.pop(key, None)) is not None]
                if not due:
                    if self._is_idle():
                        self._thread = None
                        return
                    self._next_check = min(
                        (w.expires_at for w in watches.values()), default=math.inf
                    )
                    # Bounded even with nothing to watch: a collection between the idle
                    # check above and the wait can run an engine's finalizer, whose
                    # notify() then finds nobody waiting yet.
                    self._wakeup.wait(min(self._next_check - now, _RECHECK_SECONDS))
                    self._next_check = -math.inf  # not waiting: nobody needs to wake us
                    continue
            for watch in due:
                _cut(watch)


def _cut(watch: _Watch) -> None:
    """Shut down the socket *watch* duplicates, so a call blocked on it fails now."""
    _LOG.warning(
        "no answer from %s within %s=%.3g s: cutting the connection",
        watch.where,
        watch.setting,
        watch.timeout,
    )
    # The duplicate was taken at checkout by the connection's own thread, so it is the
    # connection's socket even if the driver closed its descriptor since and the number
    # was reused; shutdown() acts on the socket, reaching the driver's descriptor too.
    try:
        sock = socket.socket(fileno=watch.descriptor)
    except OSError:
        os.close(watch.descriptor)
        _LOG.exception("the socket of a connection to %s could not be cut", watch.where)
        return
    with sock:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError as exc:
            # ENOTCONN: the peer closed it already, and the blocked call has failed by itself.
            _LOG.debug("the connection to %s was already closed: %s", watch.where, exc)


_WATCHDOG = _Watchdog()
os.register_at_fork(after_in_child=_WATCHDOG.forget_after_fork)
_engine_ids = itertools.count(1)
_call_ids = itertools.count(1)


@contextmanager
def socket_deadline(
    connection: _Socketed, seconds: float, *, where: str, setting: str
) -> Iterator[None]:
    """Cut *connection*'s socket if the block still runs after *seconds*.

    For one call on a connection outside any pool (a listener's ping): a call blocked
    on a server that never answers then fails (psycopg raises ``OperationalError``), and
    the connection is of no further use.
    """
    descriptor = os.dup(connection.fileno())
    key = -next(_call_ids)  # never the id() of a pool record, which is positive
    _WATCHDOG.watch(key, descriptor, engine_id=None, timeout=seconds, where=where, setting=setting)
    try:
        yield
    finally:
        _WATCHDOG.unwatch(key)


def split_operation_timeout(url: URL) -> tuple[URL, float]:
    """Return *url* without its ``operation_timeout`` query option, and the seconds it sets.

    Absent, the default (`DEFAULT_OPERATION_TIMEOUT`) applies; ``0`` turns the deadline
    off. Raises `ConfigurationError` for a value that is not a finite number >= 0.
    """
    raw = url.query.get(OPERATION_TIMEOUT_OPTION)
    if raw is None:
        return url, DEFAULT_OPERATION_TIMEOUT
    seconds = _seconds(OPERATION_TIMEOUT_OPTION, raw, allow_zero=True)
    return url.difference_update_query([OPERATION_TIMEOUT_OPTION]), seconds


DEFAULT_CONNECT_TIMEOUT: Final = 5.0
"""Seconds connecting (and waiting for a pooled connection) may take, unless set."""


def connect_timeout_for(in_url: object, given: float | None) -> float:
    """Return the connect timeout to use: the URL's ``connect_timeout`` option (libpq's
    own, *in_url* as the URL gives it, ``None`` when absent), else *given*, else
    `DEFAULT_CONNECT_TIMEOUT`.

    Raises `ConfigurationError` for a value that is not seconds > 0, or a URL value that
    differs from *given*: a setting given twice must not be silently overridden.
    """
    if given is not None and not (isinstance(given, int | float) and 0 < given < math.inf):
        raise ConfigurationError("connect_timeout must be a finite number of seconds > 0")
    if in_url is None:
        return DEFAULT_CONNECT_TIMEOUT if given is None else given
    try:
        seconds = _seconds("connect_timeout", in_url, allow_zero=False)
    except ConfigurationError as exc:
        raise ConfigurationError(
            f"{exc} (libpq's 0, wait for ever, is not supported: a call must not hang)"
        ) from None
    if given is not None and given != seconds:
        raise ConfigurationError("connect_timeout is given twice: in the URL and as an argument")
    return seconds


def _seconds(option: str, raw: object, *, allow_zero: bool) -> float:
    """Return the seconds a URL query *option* gives: one finite number, > 0 (or >= 0
    with *allow_zero*); anything else is a `ConfigurationError`."""
    message = f"{option} must be a finite number of seconds {'>=' if allow_zero else '>'} 0"
    if not isinstance(raw, str):
        raise ConfigurationError(f"{message}, given once")
    try:
        seconds = float(raw)
    except ValueError as exc:
        raise ConfigurationError(message) from exc
    if not (math.isfinite(seconds) and (seconds > 0 or (allow_zero and seconds == 0))):
        raise ConfigurationError(message)
    return seconds


def enforce_operation_timeout(engine: Engine, seconds: float) -> None:
    """Watch every connection *engine*'s pool hands out; cut one checked out *seconds*.

    Also pings each reused connection at checkout (create the engine without
    ``pool_pre_ping``): a dead one is replaced, and the rest of the pool is recycled, as
    SQLAlchemy's pre-ping does. Meant for psycopg 3 connections; `dispose` of the engine
    detaches it from the watchdog (a later checkout attaches it again).
    """
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ConfigurationError(f"{OPERATION_TIMEOUT_OPTION} must be a finite number > 0")
    engine_id = next(_engine_ids)
    dialect = engine.dialect
    where = engine.url.render_as_string(hide_password=True)

    def on_connect(dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry) -> None:
        record.info[_FRESH] = True

    def on_checkout(
        dbapi_connection: DBAPIConnection,
        record: ConnectionPoolEntry,
        proxy: PoolProxiedConnection,
    ) -> None:
        try:
            descriptor = os.dup(cast(_Socketed, dbapi_connection).fileno())
        except Exception as exc:
            # No socket: the driver closed the connection. The pool replaces it.
            raise sa_exc.DisconnectionError() from exc
        _WATCHDOG.watch(id(record), descriptor, engine_id=engine_id, timeout=seconds, where=where)
        record.info[_WATCH_KEY] = id(record)
        if record.info.pop(_FRESH, False):
            return  # connected just now: nothing to ping
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as exc:
            if dialect.is_disconnect(cast(Any, exc), dbapi_connection, None):
                # As SQLAlchemy's pre-ping: the server probably restarted, so every older
                # connection is suspect; the pool reconnects and calls us again.
                raise sa_exc.InvalidatePoolError() from exc
            raise

    def on_release(dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry) -> None:
        _WATCHDOG.unwatch(id(record))

    def on_invalidate(
        dbapi_connection: DBAPIConnection,
        record: ConnectionPoolEntry,
        exception: BaseException | None,
    ) -> None:
        _WATCHDOG.unwatch(id(record))

    def on_disposed(engine: Engine) -> None:
        _WATCHDOG.detach(engine_id)

    event.listen(engine, "connect", on_connect)
    event.listen(engine, "checkout", on_checkout)
    # Each fires before the connection is closed or handed on, so the duplicate is closed
    # while it is still the connection's socket.
    event.listen(engine, "checkin", on_release)
    event.listen(engine, "close", on_release)
    event.listen(engine, "detach", on_release)
    event.listen(engine, "invalidate", on_invalidate)
    event.listen(engine, "engine_disposed", on_disposed)
    _WATCHDOG.attach(engine_id)
    weakref.finalize(engine, _WATCHDOG.detach, engine_id, wait=False).atexit = False


def lift_deadline(connection: Connection) -> None:
    """Stop watching *connection* for the rest of its checkout.

    For work that may rightly take long, such as a schema upgrade (or the wait for
    another process's upgrade, on its lock). Nothing happens on an engine without a
    deadline. The next checkout is watched again.
    """
    key = connection.connection.info.pop(_WATCH_KEY, None)
    if key is not None:
        _WATCHDOG.unwatch(key)


def watchdog_thread() -> threading.Thread | None:
    """The watchdog's thread, or ``None`` while no engine is attached (for tests)."""
    return _WATCHDOG.thread


def watched_connections() -> int:
    """How many connections are checked out under a deadline right now (for tests)."""
    return _WATCHDOG.watched()

"""Change notifications across processes, through PostgreSQL's LISTEN/NOTIFY.

On PostgreSQL, `SQLStorage` sends ``NOTIFY dashpersist_changes`` with a small JSON
payload (`encode_change`) inside the transaction of every document write, import and
delete. PostgreSQL delivers a notification only when its transaction commits, so a
listener never hears of a write that was rolled back, and hears committed ones in commit
order. A `ChangeListener` holds its own connection, listens on that channel in a daemon
thread, and hands each change, parsed and checked, to a callback as a `RemoteChange`.

SQLite and the JSON folder have no such channel: another process's writes become visible
to a manager when its read-cache entries expire (``cache_ttl``).

Notifications are not stored: those sent while a listener is disconnected are lost. A
listener therefore calls its *on_reconnect* callback each time it is listening again
after a gap, and the receiver should treat that as "anything may have changed".

A connection that only listens sends nothing, so nothing would notice a server that
stopped answering (hung, or behind a network that drops everything): the listener would
wait for good, deaf, while the kernel keeps the socket open. A listener that heard
nothing for *ping_interval* seconds therefore pings the server; no answer within
*ping_timeout* seconds counts as a lost connection.
"""

from __future__ import annotations

import logging
import math
import secrets
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from dashpersist._canonical import canonical_json, parse_json
from dashpersist.errors import (
    ConfigurationError,
    CorruptStoreError,
    ValidationError,
    ValidationIssue,
)
from dashpersist.storage._deadline import connect_timeout_for, socket_deadline
from dashpersist.storage.protocol import DocumentKey

if TYPE_CHECKING:
    import psycopg
    from sqlalchemy import Engine

__all__ = [
    "CHANNEL",
    "ChangeListener",
    "RemoteChange",
    "change_listener_for",
    "encode_change",
    "new_origin",
    "parse_change",
]

_LOG = logging.getLogger(__name__)

CHANNEL: Final = "dashpersist_changes"
"""The PostgreSQL notification channel every SQLStorage notifies and listeners LISTEN on."""

_MAX_PAYLOAD_BYTES: Final = 7999  # PostgreSQL refuses a payload of 8000 bytes or more


@dataclass(frozen=True, slots=True)
class RemoteChange:
    """A committed change to one document, as a listener heard it.

    ``version`` is the version the write committed, or ``None`` when the document was
    deleted. ``device_id`` is the writer's device, when the write named one. ``origin``
    names the `SQLStorage` object that wrote it (its ``change_origin``), so a process
    can tell its own writes from others'.
    """

    user_id: str
    layout_id: str
    version: int | None
    device_id: str | None
    origin: str

    @property
    def key(self) -> DocumentKey:
        """The changed document's key."""
        return DocumentKey(self.user_id, self.layout_id)

    @property
    def is_delete(self) -> bool:
        """Whether the document was deleted."""
        return self.version is None


def new_origin() -> str:
    """Return a fresh origin id for a writer (16 hex digits)."""
    return secrets.token_hex(8)


def encode_change(
    key: DocumentKey, version: int | None, device_id: str | None, *, origin: str
) -> str:
    """Return the NOTIFY payload for a change of *key* (*version* ``None``: a delete).

    The payload is canonical JSON: ``{"layout": ..., "origin": ..., "user": ...,
    "version": ..., "device": ...}``, with ``device`` left out when there is none or
    when it would make the payload longer than PostgreSQL allows.
    """
    fields: dict[str, Any] = {
        "layout": key.layout_id,
        "origin": origin,
        "user": key.user_id,
        "version": version,
    }
    if device_id is not None:
        with_device = canonical_json({**fields, "device": device_id})
        if len(with_device) <= _MAX_PAYLOAD_BYTES:
            return with_device.decode()
    return canonical_json(fields).decode()


def parse_change(payload: str) -> RemoteChange:
    """Return the change a NOTIFY *payload* describes.

    Raises `ValidationError` when it is not one `encode_change` makes (not JSON, missing
    or mistyped fields, ids `DocumentKey` refuses, a version below 1).
    """
    try:
        raw = parse_json(payload, source="a change notification")
    except CorruptStoreError as exc:
        raise _invalid("json", "not JSON") from exc
    if not isinstance(raw, dict):
        raise _invalid("object", "not a JSON object")
    user_id, layout_id, origin = raw.get("user"), raw.get("layout"), raw.get("origin")
    version, device_id = raw.get("version"), raw.get("device")
    if not (isinstance(user_id, str) and isinstance(layout_id, str)):
        raise _invalid("ids", "user and layout must be strings")
    if not isinstance(origin, str):
        raise _invalid("origin", "origin must be a string")
    if version is not None and (
        not isinstance(version, int) or isinstance(version, bool) or version < 1
    ):
        raise _invalid("version", "version must be an int >= 1 or null")
    if device_id is not None and not isinstance(device_id, str):
        raise _invalid("device", "device must be a string")
    DocumentKey(user_id, layout_id)  # ValidationError for ids no document can have
    return RemoteChange(user_id, layout_id, version, device_id, origin)


def _invalid(rule: str, message: str) -> ValidationError:
    return ValidationError(
        [ValidationIssue("$", rule, message)], message=f"bad change notification: {message}"
    )


class ChangeListener:
    """Hear the document changes committed to one PostgreSQL database, in a daemon thread.

    *url_or_engine* is a PostgreSQL URL (as `SQLStorage` takes) or an `Engine` for one
    (psycopg 3); the listener opens its own connection from it, outside any pool. Each
    notification is parsed and checked (`parse_change`; a bad one is logged and skipped)
    and passed to *callback*, on the listener's thread: keep it short, and do not wait
    in it for the listener. A callback that raises is logged; listening goes on. Changes
    whose origin is *ignore_origin* are not delivered (a process's own writes).

    When the connection is lost (the server restarted, the network failed), the listener
    reconnects, waiting *reconnect_delay* seconds and doubling that up to
    *max_reconnect_delay*; once listening again it calls *on_reconnect* (if given), because
    notifications sent meanwhile were lost. After *ping_interval* seconds without a
    notification it sends ``SELECT 1``; a server that does not answer within
    *ping_timeout* seconds has its connection cut, which counts as lost. `close` stops
    it within about *poll_interval* seconds, or what is left of a ping under way (give
    ``close(timeout=...)`` more than *ping_timeout* to wait for that too); no callback
    runs after `close` returns (unless called from a callback). *connect_timeout* bounds
    each connection attempt (default 5 s, or the URL's ``connect_timeout`` option).

    It satisfies `dashpersist.storage.ChangeNotifier`.
    """

    def __init__(
        self,
        url_or_engine: str | Engine,
        callback: Callable[[RemoteChange], None],
        *,
        on_reconnect: Callable[[], None] | None = None,
        ignore_origin: str | None = None,
        connect_timeout: float | None = None,
        reconnect_delay: float = 0.1,
        max_reconnect_delay: float = 5.0,
        poll_interval: float = 0.1,
        ping_interval: float = 15.0,
        ping_timeout: float = 10.0,
    ) -> None:
        for name, value in (
            ("reconnect_delay", reconnect_delay),
            ("max_reconnect_delay", max_reconnect_delay),
            ("poll_interval", poll_interval),
            ("ping_interval", ping_interval),
            ("ping_timeout", ping_timeout),
        ):
            if not (isinstance(value, int | float) and 0 < value < math.inf):
                raise ConfigurationError(f"{name} must be a finite number of seconds > 0")
        self._connect_args = _connect_args(url_or_engine)
        in_url = self._connect_args.get("connect_timeout")
        try:
            seconds = connect_timeout_for(in_url, connect_timeout)
        except ConfigurationError:
            if isinstance(url_or_engine, str):
                raise
            # An engine the host built, and SQLStorage took: not the place to refuse it.
            _LOG.warning("ignoring the engine URL's connect_timeout=%r for listening", in_url)
            seconds = connect_timeout_for(None, connect_timeout)
        self._connect_args["connect_timeout"] = max(2, math.ceil(seconds))
        self._callback = callback
        self._on_reconnect = on_reconnect
        self._ignore_origin = ignore_origin
        self._reconnect_delay = float(reconnect_delay)
        self._max_reconnect_delay = float(max(max_reconnect_delay, reconnect_delay))
        self._poll_interval = float(poll_interval)
        self._ping_interval = float(ping_interval)
        self._ping_timeout = float(ping_timeout)
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="dashpersist-change-listener", daemon=True
        )
        self._thread.start()

    @property
    def is_listening(self) -> bool:
        """Whether the listener is connected and listening right now."""
        return self._listening.is_set()

    def wait_until_listening(self, timeout: float) -> bool:
        """Wait up to *timeout* seconds until the listener listens; return whether it does."""
        return self._listening.wait(timeout)

    def close(self, *, timeout: float = 5.0) -> None:
        """Stop listening and wait up to *timeout* seconds for the thread; idempotent."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> ChangeListener:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self) -> None:
        import psycopg

        delay = self._reconnect_delay
        had_gap = False
        while not self._stop.is_set():
            try:
                with psycopg.connect(**self._connect_args, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")  # CHANNEL is a constant identifier
                    self._listening.set()
                    delay = self._reconnect_delay
                    if had_gap and not self._stop.is_set():
                        self._notify_reconnected()
                    had_gap = True  # from now on, a lost connection is a gap
                    heard_at = time.monotonic()
                    while not self._stop.is_set():
                        for notification in conn.notifies(timeout=self._poll_interval):
                            heard_at = time.monotonic()
                            self._deliver(notification.payload)
                            if self._stop.is_set():
                                break
                        if self._stop.is_set():
                            break  # closing: no ping to wait out
                        if time.monotonic() - heard_at >= self._ping_interval:
                            self._ping(conn)
                            heard_at = time.monotonic()
            except (psycopg.Error, OSError) as exc:  # OSError: the ping's socket duplicate
                had_gap = True
                # Names the error class and its first line: a connection error holds no values.
                first_line = (str(exc).strip().splitlines() or [""])[0]
                _LOG.warning(
                    "change listener lost its connection (%s: %s); reconnecting in %.1f s",
                    type(exc).__name__,
                    first_line,
                    delay,
                )
            except Exception:  # noqa: BLE001 - anything else must not end listening for good
                had_gap = True
                _LOG.exception("change listener failed; reconnecting in %.1f s", delay)
            finally:
                self._listening.clear()
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, self._max_reconnect_delay)

    def _ping(self, conn: psycopg.Connection[Any]) -> None:
        """Have the server answer within the ping timeout, or cut the connection (the
        ping then raises). Notifications that arrive during the ping are delivered."""
        heard: list[psycopg.Notify] = []
        keep = heard.append
        conn.add_notify_handler(keep)
        try:
            with socket_deadline(
                conn,
                self._ping_timeout,
                where="the change listener's server",
                setting="ping_timeout",
            ):
                conn.execute("SELECT 1")
        finally:
            # notifies() must not run with a handler (psycopg warns: both would get them).
            # psycopg >= 3.2.10 queues a notification for notifies() only when no handler
            # took it, so none is delivered twice.
            conn.remove_notify_handler(keep)
            for notification in heard:  # those that came before a failed ping too
                self._deliver(notification.payload)

    def _deliver(self, payload: str) -> None:
        if self._stop.is_set():
            return  # closed: no callback after close (a ping may have outlasted its wait)
        try:
            change = parse_change(payload)
        except ValidationError as exc:
            _LOG.warning("ignored a notification on %s: %s", CHANNEL, exc)
            return
        if self._ignore_origin is not None and change.origin == self._ignore_origin:
            return
        try:
            self._callback(change)
        except Exception:  # noqa: BLE001 - one failing callback must not stop listening
            _LOG.exception(
                "change listener callback failed on %r/%r", change.user_id, change.layout_id
            )

    def _notify_reconnected(self) -> None:
        if self._on_reconnect is None:
            return
        try:
            self._on_reconnect()
        except Exception:  # noqa: BLE001 - one failing callback must not stop listening
            _LOG.exception("change listener on_reconnect callback failed")


def _connect_args(url_or_engine: str | Engine) -> dict[str, Any]:
    """Return psycopg.connect() keyword arguments for a PostgreSQL URL or engine."""
    from sqlalchemy import Engine
    from sqlalchemy import exc as sa_exc
    from sqlalchemy.engine import make_url

    if isinstance(url_or_engine, Engine):
        url = url_or_engine.url
        dialect = url_or_engine.dialect
    else:
        try:
            url = make_url(url_or_engine)
        except sa_exc.ArgumentError as exc:
            raise ConfigurationError("not a database URL") from exc
        if url.drivername in ("postgresql", "postgres"):
            url = url.set(drivername="postgresql+psycopg")
        dialect = None
    if (url.get_backend_name(), url.get_driver_name()) != ("postgresql", "psycopg"):
        raise ConfigurationError(
            "change notifications need PostgreSQL through psycopg 3 (postgresql://...); "
            "SQLite and the JSON folder have none"
        )
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            "PostgreSQL needs psycopg 3: pip install 'dashpersist[postgres]'"
        ) from exc
    if dialect is None:
        dialect = url.get_dialect()()
    args, kwargs = dialect.create_connect_args(url)
    if args:
        kwargs["conninfo"] = args[0]
    return dict(kwargs)


def change_listener_for(
    storage: object,
    callback: Callable[[RemoteChange], None],
    *,
    on_reconnect: Callable[[], None] | None = None,
) -> ChangeListener | None:
    """Start a listener for the database of *storage*, or return ``None`` if it has none.

    Only a `SQLStorage` on PostgreSQL (or a wrapper whose ``inner`` is one) notifies;
    the listener skips the writes of *storage* itself (its ``change_origin``), which the
    process already knows about.
    """
    sql = sys.modules.get("dashpersist.storage.sql")  # not loaded: storage is no SQLStorage
    if sql is not None and isinstance(storage, sql.SQLStorage):
        if storage.engine.dialect.name != "postgresql":
            return None
        return ChangeListener(
            storage.engine,
            callback,
            on_reconnect=on_reconnect,
            ignore_origin=storage.change_origin,
        )
    inner = getattr(storage, "inner", None)
    if inner is not None and inner is not storage:
        return change_listener_for(inner, callback, on_reconnect=on_reconnect)
    return None

"""The listener's ping, on its two edges no server can be timed to hit: a notification
that arrives during a ping that then fails, and one that arrives after `close`.

The ping runs against a stand-in connection (fault injection: psycopg's notify-handler
calls and a failing ``execute``) on a real socket, which the ping's deadline watches.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from dashpersist.notify import ChangeListener, RemoteChange, encode_change
from dashpersist.storage import DocumentKey

pytest.importorskip("psycopg", reason="the postgres extra (psycopg) is not installed")

URL = "postgresql://nobody@127.0.0.1:1/nothing"  # never reached: the ping gets a stand-in


class _PingFailedError(Exception):
    pass


class _Connection:
    """A connection whose ping hears *payload*, then runs *then* (raise, or close)."""

    def __init__(self, payload: str, then: Callable[[], None]) -> None:
        self._socket, self._peer = socket.socketpair()
        self._handlers: list[Callable[[Any], None]] = []
        self._payload, self._then = payload, then

    def fileno(self) -> int:
        return self._socket.fileno()

    def add_notify_handler(self, handler: Callable[[Any], None]) -> None:
        self._handlers.append(handler)

    def remove_notify_handler(self, handler: Callable[[Any], None]) -> None:
        self._handlers.remove(handler)

    def execute(self, query: str) -> None:
        for handler in list(self._handlers):
            handler(SimpleNamespace(payload=self._payload))
        self._then()

    def close(self) -> None:
        self._socket.close()
        self._peer.close()


@pytest.fixture
def heard() -> Iterator[tuple[ChangeListener, list[RemoteChange]]]:
    changes: list[RemoteChange] = []
    listener = ChangeListener(URL, changes.append)
    yield listener, changes
    listener.close()


PAYLOAD = encode_change(DocumentKey("alice"), 3, None, origin="elsewhere")


def test_a_notification_heard_during_a_ping_that_fails_is_still_delivered(
    heard: tuple[ChangeListener, list[RemoteChange]],
) -> None:
    listener, changes = heard
    conn = _Connection(PAYLOAD, then=lambda: (_ for _ in ()).throw(_PingFailedError()))

    with pytest.raises(_PingFailedError):  # the loop then counts the connection as lost
        listener._ping(conn)  # type: ignore[arg-type]
    conn.close()

    assert [(c.user_id, c.version) for c in changes] == [("alice", 3)]
    assert conn._handlers == []  # the handler is gone: notifies() alone gets them now


def test_a_notification_heard_during_a_ping_that_close_interrupts_is_not_delivered(
    heard: tuple[ChangeListener, list[RemoteChange]],
) -> None:
    listener, changes = heard
    conn = _Connection(PAYLOAD, then=listener._stop.set)  # close() sets it

    listener._ping(conn)  # type: ignore[arg-type]
    conn.close()

    assert changes == []  # no callback after close

"""A change listener whose server stops answering notices, through the fault proxy.

A listening connection sends nothing, so without its ping the listener would wait for
good on a black-holed server while other processes' writes go unheard.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine

from dashpersist.errors import ConfigurationError
from dashpersist.notify import CHANNEL, ChangeListener, RemoteChange, encode_change
from dashpersist.storage import DocumentKey
from tests.faults.proxy import FaultProxy

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60)]

PING_INTERVAL = 0.2
PING_TIMEOUT = 2.0
SLACK = 3.0
"""Seconds beyond the ping interval and timeout the listener may take to notice."""


@pytest.fixture
def reconnected() -> threading.Event:
    return threading.Event()


@pytest.fixture
def heard() -> list[RemoteChange]:
    return []


@pytest.fixture
def listener(
    proxied_url: str, heard: list[RemoteChange], reconnected: threading.Event
) -> Iterator[ChangeListener]:
    listening = ChangeListener(
        proxied_url,
        heard.append,
        on_reconnect=reconnected.set,
        connect_timeout=2,
        reconnect_delay=0.1,
        max_reconnect_delay=0.5,
        ping_interval=PING_INTERVAL,
        ping_timeout=PING_TIMEOUT,
    )
    assert listening.wait_until_listening(10)
    yield listening
    listening.close()


def _wait_until(check: Callable[[], bool], seconds: float) -> float:
    """Poll *check* until it holds or *seconds* pass; return the seconds waited."""
    started = time.monotonic()
    while not check() and time.monotonic() - started < seconds:
        time.sleep(0.02)
    return time.monotonic() - started


def test_a_server_that_stops_answering_is_noticed_and_listening_resumes(
    fault_proxy: FaultProxy, listener: ChangeListener, reconnected: threading.Event
) -> None:
    fault_proxy.blackhole()  # the listening connection is established and idle
    took = _wait_until(lambda: not listener.is_listening, PING_INTERVAL + PING_TIMEOUT + SLACK)
    deaf = not listener.is_listening
    fault_proxy.passthrough()
    back = reconnected.wait(15)

    assert deaf, f"still 'listening' {took:.1f} s after the server went silent"
    assert back and listener.is_listening


def test_notifications_sent_while_the_listener_pings_are_delivered(
    fault_proxy: FaultProxy,
    postgres_url: str,
    listener: ChangeListener,
    heard: list[RemoteChange],
    reconnected: threading.Event,
) -> None:
    # Every round trip takes 0.2 s, so the listener, pinging whenever it heard nothing
    # for 0.2 s, spends most of its time in a ping.
    fault_proxy.latency(200)
    sender = create_engine(postgres_url)  # straight to the server, not through the proxy
    sent = []
    with sender.connect() as conn:
        for n in range(1, 6):
            key = DocumentKey("alice", f"board{n}")
            payload = encode_change(key, 1, None, origin="another process")
            conn.exec_driver_sql("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
            conn.commit()
            sent.append(key)
            time.sleep(0.15)
    sender.dispose()
    _wait_until(lambda: len(heard) >= len(sent), 10)
    fault_proxy.passthrough()

    assert [change.key for change in heard] == sent
    assert not reconnected.is_set()  # slow answers within the ping timeout are not a loss


@pytest.mark.parametrize("name", ["ping_interval", "ping_timeout"])
@pytest.mark.parametrize("value", [0, -1, float("inf"), float("nan")])
def test_a_ping_setting_that_is_not_seconds_is_refused(
    postgres_url: str, name: str, value: float
) -> None:
    with pytest.raises(ConfigurationError, match=name):
        ChangeListener(postgres_url, print, **{name: value})  # type: ignore[arg-type]


def test_a_ping_that_cannot_watch_its_socket_counts_as_a_lost_connection(
    listener: ChangeListener, reconnected: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_dup = os.dup
    refused: list[int] = []

    def dup_refused_once_on_the_listener(descriptor: int) -> int:
        if threading.current_thread().name == "dashpersist-change-listener" and not refused:
            refused.append(descriptor)
            raise OSError(errno.EMFILE, "Too many open files")
        return real_dup(descriptor)

    monkeypatch.setattr(os, "dup", dup_refused_once_on_the_listener)
    back = reconnected.wait(10)

    assert refused  # a ping tried, and its thread went on to reconnect
    assert back and listener.wait_until_listening(10)


def test_an_unexpected_error_in_the_listen_loop_is_logged_and_listening_resumes(
    listener: ChangeListener,
    reconnected: threading.Event,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from dashpersist import notify

    real_deadline = notify.socket_deadline
    raised: list[str] = []

    def no_thread_once(*args: Any, **kwargs: Any) -> Any:
        if not raised:  # as Thread.start() raises when no thread can be had
            raised.append("once")
            raise RuntimeError("can't start new thread")
        return real_deadline(*args, **kwargs)

    monkeypatch.setattr(notify, "socket_deadline", no_thread_once)
    back = reconnected.wait(10)

    assert raised
    assert back and listener.wait_until_listening(10)
    assert "change listener failed" in caplog.text

"""The operation-deadline watchdog when the garbage collector runs inside it.

SQLAlchemy checks in a connection whose owner was collected, and an engine's finalizer
detaches it from the watchdog: both run from the collector, which can start inside any
allocation, including one made while the watchdog's lock is held. CI once hung for five
minutes on exactly that (`test_a_manager_started_during_an_outage_...`): the finalizer
waited for a lock its own thread held. These tests run real collections inside the
locked section, so they hang, and time out, on a non-reentrant lock.
"""

from __future__ import annotations

import gc
import inspect
import os
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator

import pytest

from dashpersist.storage._deadline import _THREAD_NAME, _Watchdog

pytestmark = pytest.mark.timeout(30)

ENGINE = 1
CONNECTION = 7


class _Cycle:
    """Garbage only the cyclic collector frees: its finalizer runs inside `gc.collect()`."""

    def __init__(self) -> None:
        self.me = self


def _collected_calls(*calls: Callable[[], None]) -> None:
    for call in calls:
        weakref.finalize(_Cycle(), call)


def _in_a_thread(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(10)
    return thread


@pytest.fixture
def watchdog() -> Iterator[_Watchdog]:
    dog = _Watchdog()
    yield dog
    dog.detach(ENGINE)  # and stop its thread, whatever a test left behind


@pytest.fixture
def gc_enabled() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.enable()
    yield
    if not was_enabled:
        gc.disable()


def test_a_collection_inside_the_lock_can_unwatch_and_detach(
    watchdog: _Watchdog, gc_enabled: None
) -> None:
    read_end, write_end = os.pipe()  # the watchdog holds the only read end
    watchdog.watch(CONNECTION, read_end, engine_id=ENGINE, timeout=60.0, where="test")
    thread = watchdog.thread
    _collected_calls(
        lambda: watchdog.unwatch(CONNECTION),
        lambda: watchdog.detach(ENGINE, wait=False),
    )

    def collect_holding_the_lock() -> None:
        with watchdog._lock:  # a thread inside the watchdog when the collector starts
            gc.collect()

    collector = _in_a_thread(collect_holding_the_lock)
    assert thread is not None
    thread.join(10)

    assert not collector.is_alive()
    assert watchdog.watched() == 0
    assert not thread.is_alive() and watchdog.thread is None
    # The unwatch closed the read end: a write finds nobody to read it (whatever
    # reuses that descriptor number since).
    with pytest.raises(BrokenPipeError):
        os.write(write_end, b"x")
    os.close(write_end)


def test_the_thread_ends_even_if_the_last_detach_finds_it_not_yet_waiting(
    watchdog: _Watchdog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("dashpersist.storage._deadline._RECHECK_SECONDS", 0.05)
    watchdog.attach(ENGINE)
    thread = watchdog.thread
    time.sleep(0.1)  # waiting, with an engine and nothing to watch

    # What a finalizer run by a collection between the thread's idle check and its
    # wait leaves behind: the engine gone, and a notify() that reached nobody.
    with watchdog._lock:
        watchdog._engines.discard(ENGINE)
    assert thread is not None
    thread.join(5)

    assert not thread.is_alive() and watchdog.thread is None


def _locked_scan_lines() -> range:
    """The lines of `_Watchdog._run` from its scan of the watches to its wait, all run
    holding the lock."""
    lines, first = inspect.getsourcelines(_Watchdog._run)
    start = next(n for n, line in enumerate(lines) if "self._watches.copy()" in line)
    stop = next(n for n, line in enumerate(lines) if "self._wakeup.wait(" in line)
    return range(first + start, first + stop)


def test_a_collection_during_the_scan_can_unwatch_and_the_scan_goes_on(
    watchdog: _Watchdog, gc_enabled: None
) -> None:
    """The watchdog thread's own scan allocates, so a collection can run inside it and
    check a connection in (unwatch) while the scan walks the watches."""
    pipes = [os.pipe() for _ in range(3)]
    for key, (read_end, _) in enumerate(pipes):
        watchdog.watch(key, read_end, engine_id=ENGINE, timeout=60.0, where="test")
    unwatched: list[int] = []
    scan = _locked_scan_lines()

    def unwatch_inside_the_scan(phase: str, info: dict[str, int]) -> None:
        if phase != "start" or unwatched or threading.current_thread().name != _THREAD_NAME:
            return
        frame = sys._getframe(1)
        while frame is not None and frame.f_code is not _Watchdog._run.__code__:
            frame = frame.f_back
        if frame is None or frame.f_lineno not in scan:
            return  # not in the scan, which holds the lock
        unwatched.append(1)
        watchdog.unwatch(1)  # as SQLAlchemy's checkin of a collected connection does

    gc.callbacks.append(unwatch_inside_the_scan)
    threshold = gc.get_threshold()
    gc.set_threshold(1)  # every allocation the scan makes may start a collection
    try:
        deadline = time.monotonic() + 5
        while not unwatched and time.monotonic() < deadline:
            with watchdog._lock:
                watchdog._wakeup.notify()  # have the thread scan again
            time.sleep(0.01)
    finally:
        gc.set_threshold(*threshold)
        gc.callbacks.remove(unwatch_inside_the_scan)
    ours, peer = socket.socketpair()
    watchdog.watch(3, os.dup(ours.fileno()), engine_id=ENGINE, timeout=0.05, where="test")
    peer.settimeout(5)
    cut = peer.recv(1)  # the scan still runs: the new watch expires, its socket is shut

    assert unwatched
    assert cut == b""
    assert watchdog.thread is not None and watchdog.thread.is_alive()
    assert watchdog.watched() == 2  # keys 0 and 2; 1 was unwatched, 3 was cut
    with pytest.raises(BrokenPipeError):
        os.write(pipes[1][1], b"x")  # key 1's read end was closed
    for _, write_end in pipes:
        os.close(write_end)
    for key in (0, 2):
        watchdog.unwatch(key)
    ours.close()
    peer.close()


def test_a_watch_the_thread_cannot_start_for_is_refused_and_its_descriptor_closed(
    watchdog: _Watchdog, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    read_end, write_end = os.pipe()

    with pytest.raises(RuntimeError, match="can't start"):
        watchdog.watch(CONNECTION, read_end, engine_id=None, timeout=1.0, where="test")

    assert watchdog.watched() == 0 and watchdog.thread is None
    with pytest.raises(BrokenPipeError):
        os.write(write_end, b"x")  # the watchdog closed what it was handed
    os.close(write_end)


@pytest.mark.parametrize("starting", ["watch", "attach"])
def test_a_finalizer_on_the_starting_thread_does_not_deadlock_its_start(
    watchdog: _Watchdog, monkeypatch: pytest.MonkeyPatch, starting: str
) -> None:
    # Seen in CI: the collector ran an engine's finalizer (detach) on the new watchdog
    # thread while Thread.start, called with the lock held, waited for that thread.
    real_start = threading.Thread.start
    finalizer_done: list[bool] = []

    def start_running_a_finalizer_first(self: threading.Thread) -> None:
        if self.name == _THREAD_NAME:
            other = threading.Thread(
                target=lambda: (watchdog.detach(99, wait=False), finalizer_done.append(True)),
                daemon=True,
            )
            real_start(other)
            other.join(2)  # with the lock held by our caller, it could never finish
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start_running_a_finalizer_first)
    read_end, write_end = os.pipe()
    if starting == "watch":
        watchdog.watch(CONNECTION, read_end, engine_id=ENGINE, timeout=60.0, where="test")
    else:
        os.close(read_end)
        watchdog.attach(ENGINE)

    assert finalizer_done == [True]
    assert watchdog.thread is not None and watchdog.thread.is_alive()
    watchdog.unwatch(CONNECTION)
    os.close(write_end)


def test_a_detach_while_the_thread_is_being_started_does_not_join_it_early(
    watchdog: _Watchdog, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_start = threading.Thread.start
    errors: list[BaseException] = []

    def detach_everything_first(self: threading.Thread) -> None:
        if self.name == _THREAD_NAME:

            def detach() -> None:
                try:
                    watchdog.detach(ENGINE)  # waits for the thread, which has not started
                except BaseException as exc:  # reported by the assertion below
                    errors.append(exc)

            _in_a_thread(detach)
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", detach_everything_first)
    watchdog.attach(ENGINE)
    started = watchdog.thread

    assert errors == []  # joining a thread not yet started raises RuntimeError
    if started is not None:
        started.join(10)  # idle from the start: it ends by itself
        assert not started.is_alive()

"""AutosaveQueue: coalescing, deadlines, flush and close, failures, interpreter exit (S22, S03).

Timing is driven by a fake clock with ``start_worker=False`` and explicit `run_due` calls;
the few tests of the real worker wait on events with timeouts, never on sleeps.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from dashpersist.autosave import AutosaveQueue, install_sigterm_handler
from dashpersist.errors import ConfigurationError, ManagerClosedError, StorageUnavailableError

REPO_ROOT = Path(__file__).resolve().parents[2]
WAIT = 10.0  # seconds an event may take before a test fails; never a timing assumption


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class SpyWriter:
    """Record every write; fail with *failure* while it is set."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.failure: Exception | None = None

    def __call__(self, key: str, value: int) -> str:
        self.calls.append((key, value))
        if self.failure is not None:
            raise self.failure
        return f"{key}={value}"


def make_queue(
    writer: SpyWriter,
    clock: FakeClock,
    *,
    delay: float = 2.0,
    max_wait: float = 10.0,
    errors: list[tuple[str, BaseException]] | None = None,
) -> AutosaveQueue[str, int, str]:
    return AutosaveQueue(
        writer,
        delay=delay,
        max_wait=max_wait,
        clock=clock,
        on_error=None if errors is None else lambda key, exc: errors.append((key, exc)),
        start_worker=False,
    )


# -- coalescing and deadlines -------------------------------------------------------------


def test_a_hundred_puts_in_one_window_write_once_with_the_last_value() -> None:
    writer, clock = SpyWriter(), FakeClock()
    queue = make_queue(writer, clock)
    for value in range(100):
        queue.put("alice", value)
        clock.advance(0.01)

    clock.advance(2.0)
    results = queue.run_due()

    assert writer.calls == [("alice", 99)]
    assert results == ["alice=99"]
    assert not queue.has_pending_writes


def test_nothing_is_written_before_the_quiet_period_ends() -> None:
    writer, clock = SpyWriter(), FakeClock()
    queue = make_queue(writer, clock)
    queue.put("alice", 1)

    clock.advance(1.99)
    results = queue.run_due()

    assert results == []
    assert writer.calls == []
    assert queue.pending_keys() == ["alice"]


def test_max_wait_forces_writes_while_puts_keep_coming() -> None:
    writer, clock = SpyWriter(), FakeClock()
    queue = make_queue(writer, clock, delay=2.0, max_wait=10.0)

    for value in range(25):  # one put a second, never two seconds of quiet
        queue.put("alice", value)
        queue.run_due()
        clock.advance(1.0)

    # Written at t=10 (value 10, the first unsaved put being t=0) and at t=21 (value 21,
    # max-wait counting again from the first put after the first write, t=11).
    assert writer.calls == [("alice", 10), ("alice", 21)]
    assert queue.pending("alice") == 24


def test_keys_are_debounced_independently() -> None:
    writer, clock = SpyWriter(), FakeClock()
    queue = make_queue(writer, clock)
    queue.put("alice", 1)
    clock.advance(1.5)
    queue.put("bob", 2)

    clock.advance(0.5)
    first = queue.run_due()
    clock.advance(1.5)
    second = queue.run_due()

    assert (first, second) == (["alice=1"], ["bob=2"])


def test_a_put_during_a_write_queues_the_key_again_with_the_newer_value() -> None:
    clock = FakeClock()
    written: list[int] = []
    queue: AutosaveQueue[str, int, int] | None = None

    def write(key: str, value: int) -> int:
        written.append(value)
        if value == 1:
            assert queue is not None
            queue.put(key, 2)
        return value

    queue = AutosaveQueue(write, delay=2.0, max_wait=10.0, clock=clock, start_worker=False)
    queue.put("alice", 1)
    clock.advance(2.0)

    queue.run_due()
    pending_after_first_write = queue.pending("alice")
    clock.advance(2.0)
    queue.run_due()

    assert pending_after_first_write == 2
    assert written == [1, 2]
    assert not queue.has_pending_writes


# -- read-your-writes, flush, close, discard ----------------------------------------------


def test_pending_returns_the_newest_queued_value_until_it_is_written() -> None:
    writer, clock = SpyWriter(), FakeClock()
    queue = make_queue(writer, clock)
    queue.put("alice", 1)
    queue.put("alice", 2)

    before = queue.pending("alice")
    queue.flush()
    after = queue.pending("alice")

    assert (before, after) == (2, None)
    assert queue.pending("bob") is None


def test_flush_writes_every_pending_key_at_once_and_returns_the_results() -> None:
    writer, clock = SpyWriter(), FakeClock()
    queue = make_queue(writer, clock)
    queue.put("alice", 1)
    queue.put("bob", 2)
    queue.put("alice", 3)

    results = queue.flush()

    assert results == ["alice=3", "bob=2"]
    assert writer.calls == [("alice", 3), ("bob", 2)]
    assert not queue.has_pending_writes
    assert queue.flush() == []


def test_close_flushes_is_idempotent_and_a_later_put_raises() -> None:
    writer, clock = SpyWriter(), FakeClock()
    queue = make_queue(writer, clock)
    queue.put("alice", 1)

    first = queue.close()
    second = queue.close()

    assert (first, second) == (["alice=1"], [])
    assert writer.calls == [("alice", 1)]
    assert queue.is_closed
    with pytest.raises(ManagerClosedError):
        queue.put("alice", 2)


def test_discard_drops_the_pending_value_and_returns_it() -> None:
    writer, clock = SpyWriter(), FakeClock()
    queue = make_queue(writer, clock)
    queue.put("alice", 1)

    dropped = queue.discard("alice")
    results = queue.flush()

    assert dropped == 1
    assert results == []
    assert writer.calls == []
    assert queue.discard("alice") is None


def test_delays_that_cannot_work_are_refused() -> None:
    with pytest.raises(ConfigurationError):
        AutosaveQueue(SpyWriter(), delay=5.0, max_wait=1.0, start_worker=False)


# -- failures -----------------------------------------------------------------------------


def test_a_failed_background_write_stays_pending_and_reaches_on_error() -> None:
    writer, clock = SpyWriter(), FakeClock()
    errors: list[tuple[str, BaseException]] = []
    queue = make_queue(writer, clock, errors=errors)
    failure = StorageUnavailableError("store down")
    writer.failure = failure
    queue.put("alice", 1)
    clock.advance(2.0)

    results = queue.run_due()

    assert results == []
    assert errors == [("alice", failure)]
    assert queue.pending("alice") == 1


def test_a_failed_write_is_retried_after_a_backoff_not_at_once() -> None:
    writer, clock = SpyWriter(), FakeClock()
    errors: list[tuple[str, BaseException]] = []
    queue = make_queue(writer, clock, errors=errors, delay=2.0, max_wait=10.0)
    writer.failure = StorageUnavailableError("store down")
    queue.put("alice", 1)
    clock.advance(2.0)
    queue.run_due()

    clock.advance(1.5)  # the first backoff is delay * 2**0 = 2 s
    queue.run_due()
    attempts_within_backoff = len(writer.calls)
    clock.advance(0.5)
    queue.run_due()
    clock.advance(3.5)  # the second backoff is 4 s
    queue.run_due()
    attempts_within_second_backoff = len(writer.calls)

    assert attempts_within_backoff == 1
    assert attempts_within_second_backoff == 2
    assert len(errors) == 2  # once per failure
    assert queue.pending("alice") == 1


def test_the_next_flush_raises_a_failure_and_a_later_flush_writes_the_newest_value() -> None:
    writer, clock = SpyWriter(), FakeClock()
    errors: list[tuple[str, BaseException]] = []
    queue = make_queue(writer, clock, errors=errors)
    failure = StorageUnavailableError("store down")
    writer.failure = failure
    queue.put("alice", 1)
    clock.advance(2.0)
    queue.run_due()

    with pytest.raises(StorageUnavailableError) as raised:
        queue.flush()
    still_pending = queue.pending("alice")
    writer.failure = None
    queue.put("alice", 2)
    results = queue.flush()

    assert raised.value is failure
    assert still_pending == 1
    assert results == ["alice=2"]
    assert writer.calls[-1] == ("alice", 2)
    assert not queue.has_pending_writes
    assert len(errors) == 2  # the background failure and the failed flush


def test_flush_attempts_every_key_before_raising_the_first_failure() -> None:
    clock = FakeClock()
    written: list[str] = []

    def write(key: str, value: int) -> str:
        if key in ("alice", "carol"):
            raise StorageUnavailableError(f"{key} failed")
        written.append(key)
        return key

    queue: AutosaveQueue[str, int, str] = AutosaveQueue(
        write, delay=2.0, max_wait=10.0, clock=clock, start_worker=False
    )
    for key in ("alice", "bob", "carol", "dave"):
        queue.put(key, 1)

    with pytest.raises(StorageUnavailableError, match="alice failed"):
        queue.flush()

    assert written == ["bob", "dave"]
    assert queue.pending_keys() == ["alice", "carol"]


def test_close_raises_a_failed_write_stops_accepting_puts_and_can_be_retried() -> None:
    writer, clock = SpyWriter(), FakeClock()
    queue = make_queue(writer, clock)
    writer.failure = StorageUnavailableError("store down")
    queue.put("alice", 1)

    with pytest.raises(StorageUnavailableError):
        queue.close()
    writer.failure = None
    retried = queue.close()

    assert retried == ["alice=1"]
    with pytest.raises(ManagerClosedError):
        queue.put("alice", 2)


# -- the background worker ----------------------------------------------------------------


def test_the_worker_writes_a_queued_value_after_the_delay_without_a_flush() -> None:
    written = threading.Event()
    results: list[tuple[str, str]] = []

    def on_written(key: str, result: str) -> None:
        results.append((key, result))
        written.set()

    queue: AutosaveQueue[str, int, str] = AutosaveQueue(
        lambda key, value: f"{key}={value}", delay=0.01, max_wait=1.0, on_written=on_written
    )
    queue.put("alice", 7)

    assert written.wait(WAIT)
    assert results == [("alice", "alice=7")]
    assert queue.close() == []


def test_the_worker_reports_a_failed_write_to_on_error_and_keeps_the_value() -> None:
    failed = threading.Event()
    errors: list[tuple[str, BaseException]] = []

    def on_error(key: str, exc: BaseException) -> None:
        errors.append((key, exc))
        failed.set()

    def write(key: str, value: int) -> str:
        raise StorageUnavailableError("store down")

    queue: AutosaveQueue[str, int, str] = AutosaveQueue(
        write, delay=0.01, max_wait=5.0, on_error=on_error
    )
    queue.put("alice", 7)

    assert failed.wait(WAIT)
    assert errors[0][0] == "alice" and isinstance(errors[0][1], StorageUnavailableError)
    assert queue.pending("alice") == 7
    with pytest.raises(StorageUnavailableError):
        queue.close()


def test_writes_of_one_key_never_overlap_under_the_worker_and_concurrent_flushes() -> None:
    guard = threading.Lock()
    active: dict[str, int] = {}
    most_active: dict[str, int] = {}
    last_written: dict[str, int] = {}

    def write(key: str, value: int) -> int:
        with guard:
            active[key] = active.get(key, 0) + 1
            most_active[key] = max(most_active.get(key, 0), active[key])
        for _ in range(20):  # I/O releases the GIL: the window in which an overlap would show
            os.write(devnull, b"x" * 64)
        with guard:
            active[key] -= 1
            last_written[key] = value
        return value

    devnull = os.open(os.devnull, os.O_WRONLY)
    queue: AutosaveQueue[str, int, int] = AutosaveQueue(write, delay=0.0, max_wait=0.001)
    keys = ["alice", "bob"]

    def edit(thread_index: int) -> None:
        for value in range(300):
            queue.put(keys[value % 2], value)
            if value % 25 == thread_index:
                queue.flush()

    threads = [threading.Thread(target=edit, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    queue.close()
    os.close(devnull)

    assert not any(thread.is_alive() for thread in threads)
    assert most_active == {"alice": 1, "bob": 1}
    assert last_written == {"alice": 298, "bob": 299}
    assert not queue.has_pending_writes


def test_a_flush_during_a_background_write_of_the_key_waits_then_writes_the_newer_value() -> None:
    started, release = threading.Event(), threading.Event()
    calls: list[tuple[int, int]] = []  # (value, writes running when it started)
    running = [0]
    flusher_results: list[list[int]] = []

    def write(key: str, value: int) -> int:
        running[0] += 1
        calls.append((value, running[0]))
        if value == 1:
            started.set()
            release.wait(WAIT)
        running[0] -= 1
        return value

    queue: AutosaveQueue[str, int, int] = AutosaveQueue(write, delay=0.0, max_wait=1.0)
    queue.put("alice", 1)
    assert started.wait(WAIT)
    queue.put("alice", 2)
    flusher = threading.Thread(target=lambda: flusher_results.append(queue.flush()))
    flusher.start()

    flusher.join(0.2)  # bounded: the flush must still be waiting for the worker's write
    blocked_while_writing = flusher.is_alive()
    release.set()
    flusher.join(WAIT)
    queue.close()

    assert blocked_while_writing
    assert calls == [(1, 1), (2, 1)]
    # Value 2 was written once, by the flush or by the worker that got the lock first.
    assert flusher_results in ([[2]], [[]])
    assert queue.pending("alice") is None


def test_the_sigterm_helper_refuses_to_be_installed_off_the_main_thread() -> None:
    raised: list[BaseException] = []

    def install() -> None:
        try:
            install_sigterm_handler()
        except ConfigurationError as exc:
            raised.append(exc)

    thread = threading.Thread(target=install)
    thread.start()
    thread.join(WAIT)

    assert len(raised) == 1


# -- interpreter exit (S22 c-e) -----------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import atexit, os, signal, sys, threading
    from dashpersist.autosave import AutosaveQueue, install_sigterm_handler

    target, ending = sys.argv[1], sys.argv[2]

    def write(key, value):
        # Written on the main thread, and no thread but the queue's own worker exists:
        # the exit flush starts none (a thread or executor started in atexit fails).
        where = "main" if threading.current_thread() is threading.main_thread() else "other"
        others = [
            thread for thread in threading.enumerate()
            if thread is not threading.main_thread() and thread.name != "dashpersist-autosave"
        ]
        with open(target, "w") as file:
            file.write(f"{value} {where} {len(others)}")
            file.flush()
            os.fsync(file.fileno())
        return value

    if ending == "sigterm-helper":
        install_sigterm_handler()
    queue = AutosaveQueue(write, delay=60.0, max_wait=120.0)
    atexit.register(queue.close)
    queue.put("alice", "edited")
    if ending == "sigkill-after-flush":
        queue.flush()
        queue.put("alice", "lost")
    print("queued", flush=True)
    if ending == "sys.exit":
        sys.exit(0)
    if ending in ("sigterm-helper", "sigterm-default", "sigkill-after-flush"):
        signal.pause()
    """
)


def run_child(target: Path, ending: str, *, send: signal.Signals | None = None) -> int:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(target), ending],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline() == "queued\n"
    if send is not None:
        child.send_signal(send)
    _, err = child.communicate(timeout=60)
    assert "Traceback" not in err, err
    return child.returncode


@pytest.mark.parametrize("ending", ["normal", "sys.exit"])
def test_a_child_that_exits_inside_the_debounce_window_is_written_by_its_atexit_close(
    tmp_path: Path, ending: str
) -> None:
    target = tmp_path / "written"

    returncode = run_child(target, ending)

    assert returncode == 0
    assert target.read_text() == "edited main 0"


def test_a_child_with_the_sigterm_helper_is_written_when_sent_sigterm(tmp_path: Path) -> None:
    target = tmp_path / "written"

    returncode = run_child(target, "sigterm-helper", send=signal.SIGTERM)

    assert returncode == 128 + signal.SIGTERM
    assert target.read_text() == "edited main 0"


def test_a_child_with_the_default_sigterm_loses_its_debounce_window(tmp_path: Path) -> None:
    target = tmp_path / "written"

    returncode = run_child(target, "sigterm-default", send=signal.SIGTERM)

    # Documented: default SIGTERM ends the process without atexit; the edit is lost.
    assert returncode == -signal.SIGTERM
    assert not target.exists()


def test_a_child_killed_after_a_flush_keeps_exactly_the_flushed_value(tmp_path: Path) -> None:
    target = tmp_path / "written"

    returncode = run_child(target, "sigkill-after-flush", send=signal.SIGKILL)

    # S03: the edit queued after the completed flush is lost, the flushed one kept whole.
    assert returncode == -signal.SIGKILL
    assert target.read_text() == "edited main 0"

"""The housekeeper: history trims off the saving thread, seen by the manager's readers."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dashpersist import Layout, MemoryStorage, PersistenceConfig, PersistenceManager
from dashpersist.housekeeping import Housekeeper
from dashpersist.storage.jsonfile import JSONFileStorage
from dashpersist.storage.protocol import DocumentKey, Storage, VersionOutline
from dashpersist.testing import FaultyStorage

A, B, C = DocumentKey("alice"), DocumentKey("bob"), DocumentKey("carol")
HOLD = 30.0
"""Seconds a held trim waits for the test's release before going on by itself."""


def test_without_the_thread_a_task_runs_at_once() -> None:
    ran: list[str] = []
    keeper = Housekeeper(start_thread=False)

    keeper.submit(A, lambda: ran.append("a"))

    assert ran == ["a"]
    keeper.wait()
    keeper.close()


def test_a_task_runs_off_the_caller_and_wait_returns_when_it_is_done() -> None:
    keeper = Housekeeper(start_thread=True)
    release = threading.Event()
    threads: list[threading.Thread] = []

    def task() -> None:
        threads.append(threading.current_thread())
        release.wait(5)

    keeper.submit(A, task)  # returns while the task waits
    waiter = threading.Thread(target=keeper.wait, args=(A,))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive()  # A is still being worked on
    keeper.wait(B)  # nothing was asked for B

    release.set()
    waiter.join(5)
    assert not waiter.is_alive()
    assert threads and threads[0] is not threading.current_thread()
    keeper.close()


def test_requests_for_a_document_waiting_their_turn_run_once_the_newest() -> None:
    keeper = Housekeeper(start_thread=True)
    release = threading.Event()
    ran: list[str] = []
    keeper.submit(A, lambda: release.wait(5))  # keeps the thread busy

    for n in range(5):
        keeper.submit(B, lambda n=n: ran.append(f"b{n}"))
    keeper.submit(C, lambda: ran.append("c"))
    keeper.submit(B, lambda: ran.append("b5"))
    release.set()
    keeper.wait()

    assert ran == ["b5", "c"]  # B's newest request, in B's turn
    keeper.close()


def test_close_runs_what_is_pending_and_later_tasks_run_at_once() -> None:
    keeper = Housekeeper(start_thread=True)
    release = threading.Event()
    ran: list[str] = []
    keeper.submit(A, lambda: release.wait(5))
    keeper.submit(B, lambda: ran.append("pending"))
    release.set()

    keeper.close()
    keeper.submit(A, lambda: ran.append("after close"))

    assert ran == ["pending", "after close"]
    keeper.close()  # idempotent


def test_a_failing_task_is_logged_and_the_next_one_still_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    keeper = Housekeeper(start_thread=True)
    ran: list[str] = []

    def broken() -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="dashpersist.housekeeping"):
        keeper.submit(A, broken)
        keeper.wait()
        keeper.submit(B, lambda: ran.append("b"))
        keeper.wait()

    assert ran == ["b"]
    assert "housekeeping of" in caplog.text and "boom" in caplog.text
    keeper.close()


def test_a_task_that_waits_for_housekeeping_does_not_wait_for_itself() -> None:
    keeper = Housekeeper(start_thread=True)
    done = threading.Event()

    def task() -> None:
        keeper.wait(A)
        done.set()

    keeper.submit(A, task)

    assert done.wait(5)
    keeper.close()


class _Held(MemoryStorage):
    """A real MemoryStorage that holds the housekeeping thread at one point of a trim
    (its subclass's), says it got there (`reached`) and waits for `release`."""

    def __init__(self) -> None:
        super().__init__()
        self.reached = threading.Event()
        self.release = threading.Event()
        self.timed_out = False  # the hold ended by itself, not by the test: it proved nothing

    def _hold(self) -> None:
        self.reached.set()
        self.timed_out |= not self.release.wait(HOLD)


class _SlowTrims(_Held):
    """Held as a trim deletes."""

    def compact(self, key: DocumentKey, **trim: Any) -> None:
        self._hold()
        super().compact(key, **trim)


def test_a_save_does_not_wait_for_its_trim_and_readers_of_history_do() -> None:
    storage = _SlowTrims()
    pm = PersistenceManager(storage, config=PersistenceConfig(max_versions=2, keyframe_interval=2))
    for n in range(1, 5):  # version 4 asks for a trim: 4 - 2 is a multiple of 2
        result = pm.save_layout("alice", Layout(theme=f"t{n}"), immediate=True)

    assert result.version == 4
    assert storage.reached.wait(5)  # the save returned while its trim waits
    history: list[list[int]] = []
    reader = threading.Thread(
        target=lambda: history.append([v.version for v in pm.get_version_history("alice")])
    )
    reader.start()
    reader.join(0.2)
    assert reader.is_alive()  # it waits for the trim this manager asked for

    storage.release.set()
    reader.join(5)
    assert not storage.timed_out
    assert history == [[4, 3]]
    pm.close()


def test_an_idle_thread_ends_and_the_next_request_starts_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("dashpersist.housekeeping.IDLE_SECONDS", 0.05)
    keeper = Housekeeper(start_thread=True)
    workers: list[threading.Thread] = []

    def note_worker() -> None:
        workers.append(threading.current_thread())

    keeper.submit(A, note_worker)
    keeper.wait()
    workers[0].join(5)  # ends once idle
    keeper.submit(B, note_worker)
    keeper.wait()

    assert not workers[0].is_alive()
    assert workers[1] is not workers[0] and workers[1] is not threading.current_thread()
    keeper.close()


def test_without_a_thread_to_start_a_task_runs_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't create new thread at interpreter shutdown")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    keeper = Housekeeper(start_thread=True)
    ran: list[str] = []

    keeper.submit(A, lambda: ran.append("a"))

    assert ran == ["a"]
    keeper.close()


def _on_housekeeping_thread() -> bool:
    return threading.current_thread().name == "dashpersist-housekeeping"


class _HeldTrimReads(_Held):
    """Held as a trim starts reading what to remove."""

    def version_outline(self, key: DocumentKey, **page: Any) -> list[VersionOutline]:
        if _on_housekeeping_thread():
            self._hold()
        return super().version_outline(key, **page)


def test_a_trim_skips_a_document_deleted_and_created_again_meanwhile() -> None:
    storage = _HeldTrimReads()
    config = PersistenceConfig(max_versions=2, keyframe_interval=2)
    pm = PersistenceManager(storage, config=config)
    other = PersistenceManager(storage, config=config, start_threads=False)
    for n in range(1, 5):  # version 4 asks for a trim
        pm.save_layout("alice", Layout(theme=f"t{n}"), immediate=True)
    assert storage.reached.wait(5)

    # Another manager deletes the document and writes three new versions meanwhile.
    other.delete_layout("alice")
    for n in range(1, 4):
        other.save_layout("alice", Layout(theme=f"new {n}"), immediate=True)
    storage.release.set()
    pm.flush()  # waits for the trim
    assert not storage.timed_out

    # Counted from version 4, the trim would have left only version 3 of the new history.
    assert [v.version for v in other.get_version_history("alice")] == [3, 2, 1]
    pm.close()
    other.close()


def test_saves_go_on_while_a_trim_reads_and_the_newest_trim_asked_for_runs() -> None:
    storage = _HeldTrimReads()
    pm = PersistenceManager(storage, config=PersistenceConfig(max_versions=2, keyframe_interval=2))
    for n in range(1, 5):  # version 4 asks for a trim, whose first read is held
        pm.save_layout("alice", Layout(theme=f"t{n}"), immediate=True)
    assert storage.reached.wait(5)

    started = time.monotonic()
    for n in range(5, 9):  # versions 6 and 8 ask for trims while it reads
        pm.save_layout("alice", Layout(theme=f"t{n}"), immediate=True)
    saving = time.monotonic() - started
    storage.release.set()
    pm.flush()
    assert not storage.timed_out

    assert saving < 2  # no save waited for the held read (5 s)
    # Trimmed from version 8: the request of version 6 was replaced by the newer one.
    assert [v.version for v in pm.get_version_history("alice")] == [8, 7]
    pm.close()


class _HeldAfterPlanning(_Held):
    """Held, once, when a trim has read the history it plans from, before it takes the
    document's lock."""

    def version_outline(self, key: DocumentKey, **page: Any) -> list[VersionOutline]:
        outline = super().version_outline(key, **page)
        if _on_housekeeping_thread() and not self.reached.is_set():
            self._hold()
        return outline


def _history(pm: PersistenceManager[Layout]) -> list[tuple[int, str | None]]:
    return [(v.version, v.label) for v in pm.get_version_history("alice")]


def _trimming(storage: Storage) -> PersistenceManager[Layout]:
    """A manager that trims to 2 versions, at every even version from 4."""
    return PersistenceManager(
        storage, config=PersistenceConfig(max_versions=2, keyframe_interval=2)
    )


def _save_alice(
    pm: PersistenceManager[Layout], revisions: range, *, labelled: int | None = None
) -> None:
    for n in revisions:
        label = "keep me" if n == labelled else None
        pm.save_layout("alice", Layout(theme=f"t{n}"), immediate=True, label=label)


def _while_a_trim_waits(
    storage: _HeldAfterPlanning, meanwhile: Callable[[PersistenceManager[Layout]], None]
) -> PersistenceManager[Layout]:
    """Save versions 1 to 4 (4 asks for a trim, held once it has planned), run
    *meanwhile*, then let the trim finish; return the trimming manager."""
    pm = _trimming(storage)
    _save_alice(pm, range(1, 5))
    assert storage.reached.wait(5)
    meanwhile(pm)
    storage.release.set()
    pm.flush()
    assert not storage.timed_out
    return pm


def test_a_trim_planned_before_a_delete_leaves_the_new_history_alone() -> None:
    def rewrite(pm: PersistenceManager[Layout]) -> None:
        # Deleted and written again to the same content, but with version 2 labelled:
        # the plan (remove 1 and 2) knows nothing of it, and version 4 has the same
        # checksum.
        pm.delete_layout("alice")
        _save_alice(pm, range(1, 5), labelled=2)

    pm = _while_a_trim_waits(_HeldAfterPlanning(), rewrite)

    assert (2, "keep me") in _history(pm)
    assert pm.verify("alice").ok
    pm.close()


def test_a_trim_planned_before_another_writer_recreated_the_document_stands_down() -> None:
    storage = _HeldAfterPlanning()
    other = PersistenceManager(storage, start_threads=False)  # keeps all its versions

    def rewrite(pm: PersistenceManager[Layout]) -> None:
        # Another writer deletes it and writes the same content again, labelling
        # version 2: this manager sees no deletion, and version 4 has the same checksum.
        other.delete_layout("alice")
        _save_alice(other, range(1, 6), labelled=2)

    pm = _while_a_trim_waits(storage, rewrite)

    # Version 4's record is not the one this manager wrote: the plan is not carried out.
    assert _history(other) == [(5, None), (4, None), (3, None), (2, "keep me"), (1, None)]
    pm.close()
    other.close()


def test_a_trim_the_store_refuses_is_logged_and_the_next_one_catches_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage = FaultyStorage(MemoryStorage(), fail_on="compact", times=1)
    config = PersistenceConfig(max_versions=2, keyframe_interval=2, retry_attempts=1)
    pm = PersistenceManager(storage, config=config)
    with caplog.at_level(logging.WARNING, logger="dashpersist.committer"):
        for n in range(1, 5):  # version 4's trim fails
            result = pm.save_layout("alice", Layout(theme=f"t{n}"), immediate=True)
        pm.flush()
    after_failure = [version for version, _ in _history(pm)]
    for n in range(5, 7):  # version 6's trim succeeds
        pm.save_layout("alice", Layout(theme=f"t{n}"), immediate=True)
    pm.flush()

    assert result.version == 4 and result.source == "storage"  # the save is unaffected
    assert "could not trim the history" in caplog.text
    assert after_failure == [4, 3, 2, 1]
    assert [version for version, _ in _history(pm)] == [6, 5]
    pm.close()


def test_deleting_another_document_does_not_stop_a_trim() -> None:
    storage = _HeldAfterPlanning()
    pm = _trimming(storage)
    pm.save_layout("bob", Layout(theme="bob"), immediate=True)
    _save_alice(pm, range(1, 5))  # alice's version 4 asks for a trim, held once planned
    assert storage.reached.wait(5)

    pm.delete_layout("bob")
    storage.release.set()
    pm.flush()
    assert not storage.timed_out

    assert [version for version, _ in _history(pm)] == [4, 3]
    pm.close()


@pytest.mark.parametrize("backend", ["memory", "jsonfile"])
def test_trims_run_with_a_clock_that_gives_naive_times(backend: str, tmp_path: Path) -> None:
    """The JSON folder stores a naive time as UTC and reads it back aware: the trim's
    check that the version still holds what was written must see the same instant."""
    storage = MemoryStorage() if backend == "memory" else JSONFileStorage(tmp_path / "store")
    config = PersistenceConfig(max_versions=2, keyframe_interval=2)
    naive_utc = lambda: datetime.now(UTC).replace(tzinfo=None)  # noqa: E731
    pm = PersistenceManager(storage, config=config, clock=naive_utc)
    _save_alice(pm, range(1, 7))
    pm.flush()

    assert [version for version, _ in _history(pm)] == [6, 5]
    pm.close()
    storage.close()


class _StorageOfOld:
    """A storage written before `Storage.version_outline` existed (delegating to memory)."""

    def __init__(self) -> None:
        self._inner = MemoryStorage()

    def __getattr__(self, name: str) -> Any:
        if name == "version_outline":
            raise AttributeError(name)
        return getattr(self._inner, name)


def test_a_storage_without_the_outline_is_still_trimmed() -> None:
    storage = _StorageOfOld()
    pm = _trimming(storage)  # type: ignore[arg-type]  # no version_outline: not a Storage
    _save_alice(pm, range(1, 7), labelled=1)
    pm.flush()

    assert _history(pm) == [(6, None), (5, None), (1, "keep me")]
    pm.close()

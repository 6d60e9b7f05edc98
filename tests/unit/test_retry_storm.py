"""S10: many managers facing a refusing store retry boundedly, with jitter, and never spin."""

from __future__ import annotations

import statistics

import pytest

from dashpersist import (
    Layout,
    MemoryStorage,
    PersistenceConfig,
    PersistenceManager,
    StorageUnavailableError,
    ValidationError,
    Widget,
)
from dashpersist.testing import FaultyStorage

ATTEMPTS = 6


def storm_config() -> PersistenceConfig:
    return PersistenceConfig(
        retry_attempts=ATTEMPTS, retry_initial_delay=0.5, retry_max_delay=8.0, auto_save=False
    )


def board() -> Layout:
    return Layout(widgets=[Widget(id="w1", type="chart", w=4, h=2)])


def test_fifty_managers_retry_a_refusing_store_boundedly_and_out_of_step() -> None:
    storage = FaultyStorage(MemoryStorage())
    storage.go_offline()
    waits: list[list[float]] = []

    for index in range(50):
        sleeps: list[float] = []
        pm = PersistenceManager(storage, config=storm_config(), sleep=sleeps.append)
        with pytest.raises(StorageUnavailableError):  # no outbox for a bare wrapper
            pm.save_layout(f"user{index}", board(), immediate=True)
        pm.close()
        waits.append(sleeps)

    assert storage.calls["read"] == 50 * ATTEMPTS
    assert all(len(w) == ATTEMPTS - 1 for w in waits)
    for attempt in range(ATTEMPTS - 1):
        column = [w[attempt] for w in waits]
        cap = min(8.0, 0.5 * 2**attempt)
        assert all(0 <= wait <= cap for wait in column)
        # Full jitter: the 50 managers do not retry in step.
        assert len(set(column)) == 50
        assert statistics.pstdev(column) > cap / 10


def test_a_non_transient_error_is_attempted_exactly_once() -> None:
    storage = FaultyStorage(MemoryStorage(), fail_on="write", error=lambda: ValidationError([]))
    sleeps: list[float] = []
    pm = PersistenceManager(storage, config=storm_config(), sleep=sleeps.append)

    with pytest.raises(ValidationError):
        pm.save_layout("alice", board(), immediate=True)
    pm.close()

    assert storage.calls["write"] == 1
    assert sleeps == []

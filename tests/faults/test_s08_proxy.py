"""S08 through the fault proxy: PostgreSQL connections cut mid-transaction, or black-holed.

The pg_ctl variant (the server stops) is in ``tests/crash/test_postgres_outage.py``; these
reuse its save loop and its history checks. Here the server stays up and the network
between the manager and it fails: a TCP RST part-way through a transaction, or a peer
that accepts and never answers, which only the operation deadline gets a save out of.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dashpersist import PersistenceConfig, PersistenceManager
from dashpersist.storage.sql import SQLStorage
from tests.crash.test_postgres_outage import (
    USERS,
    assert_replayed_in_order_exactly_once,
    outage_config,
    save_versions,
)
from tests.faults.proxy import FaultProxy

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

CONNECT_TIMEOUT = 2.0
"""Seconds; psycopg's (and libpq's) smallest connect timeout."""
OPERATION_TIMEOUT = 1.0

RESET_POINTS = (0, 9, 30, 120, 400, 900, 1500)
"""Bytes a client may send before its connection is cut, one per round of the fault
window: in the ping, in BEGIN, in the SELECT, in the UPDATE, in the history INSERT, around
the NOTIFY and COMMIT (a save sends ~1.7 kB; new connections spend ~100 B on the startup)."""


def proxied_storage(url: str) -> SQLStorage:
    return SQLStorage(
        f"{url}?operation_timeout={OPERATION_TIMEOUT}", connect_timeout=CONNECT_TIMEOUT
    )


def save_budget(config: PersistenceConfig) -> float:
    """The longest a save may take against a black hole: a pooled connection waits out the
    deadline once, then every attempt waits out a connect, with backoff in between."""
    attempts = config.retry_attempts
    return OPERATION_TIMEOUT + attempts * CONNECT_TIMEOUT + (attempts - 1) * config.retry_max_delay


def test_saves_cut_mid_transaction_reach_history_in_order_exactly_once(
    fault_proxy: FaultProxy, proxied_url: str, tmp_path: Path
) -> None:
    def resets(index: int) -> None:
        if 8 <= index < 8 + len(RESET_POINTS):
            fault_proxy.reset_after(RESET_POINTS[index - 8])
        if index == 8 + len(RESET_POINTS):
            fault_proxy.passthrough()

    storage = proxied_storage(proxied_url)
    try:
        with PersistenceManager(storage, config=outage_config(tmp_path)) as pm:
            log = save_versions(pm, resets)
            assert_replayed_in_order_exactly_once(pm)
    finally:
        storage.close()

    for user in USERS:
        during = log.sources(user)[7:14]
        assert all(result.success for result in log.results[user])
        assert set(log.sources(user)[:7]) == set(log.sources(user)[14:]) == {"storage"}
        assert set(during) <= {"storage", "outbox", "unchanged"}
    # The first cuts come before anything can commit: those saves were parked.
    assert log.sources("alice")[7] == "outbox"


def test_saves_to_a_black_hole_return_in_bounded_time_and_replay_exactly_once(
    fault_proxy: FaultProxy,
    proxied_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = outage_config(tmp_path)

    def black_hole(index: int) -> None:
        if index == 8:  # the pool holds an established, idle connection now
            fault_proxy.blackhole()
        if index == 9:
            fault_proxy.passthrough()

    storage = proxied_storage(proxied_url)
    try:
        with (
            caplog.at_level(logging.WARNING, logger="dashpersist.storage._deadline"),
            PersistenceManager(storage, config=config) as pm,
        ):
            log = save_versions(pm, black_hole)
            assert_replayed_in_order_exactly_once(pm)
    finally:
        storage.close()

    for user in USERS:
        seen = log.sources(user)
        assert seen[7] == "outbox"
        assert set(seen[:7]) == set(seen[8:]) == {"storage"}
    black_holed = log.seconds[14:16]  # round 8: alice, then bob
    assert min(black_holed) >= CONNECT_TIMEOUT
    assert max(log.seconds) < 3 * save_budget(config)
    assert any("cutting the connection" in r.getMessage() for r in caplog.records)


def test_saves_and_replays_whose_commit_answer_was_cut_are_in_history_once(
    fault_proxy: FaultProxy, proxied_url: str, tmp_path: Path
) -> None:
    def faults(index: int) -> None:
        if index == 8:
            fault_proxy.reset_after(0)  # cut on the first byte: round 8 is parked
        if index in (9, 10):
            # Every COMMIT reaches the server, and the connection is cut before its
            # answer: round 9 replays round 8, then writes itself; round 10 writes.
            fault_proxy.reset_after_sending(b"COMMIT")
        if index == 11:
            fault_proxy.passthrough()

    storage = proxied_storage(proxied_url)
    try:
        with PersistenceManager(storage, config=outage_config(tmp_path)) as pm:
            log = save_versions(pm, faults)
            assert_replayed_in_order_exactly_once(pm)
    finally:
        storage.close()

    for user in USERS:
        assert all(result.success for result in log.results[user])
        assert log.sources(user)[7] == "outbox"

"""A real PostgreSQL server stopped and started under a working manager (S08)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dashpersist import Layout, PersistenceConfig, PersistenceManager, SaveResult, Widget
from tests.postgres import PostgresServer

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

USERS = ("alice", "bob")
SAVES = 20


def layout(title: str) -> Layout:
    return Layout(widgets=[Widget(id="w1", type="chart", title=title, w=4, h=2)])


def outage_config(tmp_path: Path) -> PersistenceConfig:
    return PersistenceConfig(
        outbox_dir=tmp_path / "outbox",
        retry_attempts=2,
        retry_initial_delay=0.01,
        retry_max_delay=0.05,
        outbox_probe_interval=60,  # replay is driven by the test, not the clock
    )


@dataclass
class SaveLog:
    """What `save_versions` saw: each user's results in order, and how long each save took."""

    results: dict[str, list[SaveResult]] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)

    def sources(self, user: str) -> list[str]:
        return [result.source for result in self.results[user]]


def save_versions(
    pm: PersistenceManager[Layout],
    fault: Callable[[int], None],
    *,
    users: Sequence[str] = USERS,
    count: int = SAVES,
) -> SaveLog:
    """Save versions 1..*count* of each user's layout (titled "<user> <n>") with
    ``immediate=True``, calling *fault* with n before each round."""
    log = SaveLog({user: [] for user in users})
    for index in range(1, count + 1):
        fault(index)
        for user in users:
            started = time.monotonic()
            log.results[user].append(
                pm.save_layout(user, layout(f"{user} {index}"), immediate=True)
            )
            log.seconds.append(time.monotonic() - started)
    return log


def assert_replayed_in_order_exactly_once(
    pm: PersistenceManager[Layout], *, users: Sequence[str] = USERS, count: int = SAVES
) -> None:
    """Sync each user twice: the history must hold the *count* saves in order, each once,
    and the second sync must write nothing (S08)."""
    first = {user: pm.sync(user) for user in users}
    second = {user: pm.sync(user) for user in users}
    for user in users:
        history = [
            pm.get_version(user, v.version).widget("w1").title
            for v in reversed(pm.get_version_history(user, limit=10 * count))
        ]
        assert history == [f"{user} {index}" for index in range(1, count + 1)]
        assert first[user].version == second[user].version == count
        assert second[user].replayed == 0


def test_saves_during_an_outage_reach_history_in_order_exactly_once(
    postgres_server: PostgresServer, postgres_url: str, tmp_path: Path
) -> None:
    def outage(index: int) -> None:
        if index == 8:
            postgres_server.stop("immediate")
        if index == 15:
            postgres_server.start()

    with PersistenceManager(postgres_url, config=outage_config(tmp_path)) as pm:
        log = save_versions(pm, outage)
        assert_replayed_in_order_exactly_once(pm)

    for user in USERS:
        seen = log.sources(user)
        assert seen[7:14] == ["outbox"] * 7
        assert set(seen[:7]) == set(seen[14:]) == {"storage"}
    assert max(log.seconds) < 5.0


def test_a_manager_started_during_an_outage_saves_to_the_outbox_then_catches_up(
    postgres_server: PostgresServer, postgres_url: str, tmp_path: Path
) -> None:
    postgres_server.stop("immediate")
    try:
        pm = PersistenceManager(postgres_url, config=outage_config(tmp_path))
        parked = pm.save_layout("alice", layout("written offline"), immediate=True)
        seen_offline = pm.load_layout("alice")
    finally:
        postgres_server.start()

    with pm:
        synced = pm.sync("alice")
        loaded = pm.load_layout("alice")
        listening = pm._listener is not None and pm._listener.wait_until_listening(5)
        activity = [e.action for e in pm.get_activity("alice").entries]

    assert parked.source == "outbox"
    assert seen_offline == layout("written offline")
    assert (synced.replayed, synced.version) == (1, 1)
    assert loaded == layout("written offline")
    assert listening  # started once the database came back
    assert activity == ["saved"]


def test_an_entry_postgres_refuses_for_good_blocks_only_its_document(
    postgres_url: str, tmp_path: Path
) -> None:
    from dashpersist import OutboxBlockedError
    from dashpersist.outbox import Outbox, OutboxEntry
    from dashpersist.storage import DocumentKey

    config = outage_config(tmp_path)
    # An entry an older version wrote straight to the outbox: jsonb refuses NUL in text,
    # though SQLite and the JSON folder would store it (S09).
    poison = layout("before").model_dump(mode="json")
    poison["widgets"][0]["title"] = "nul\x00inside"  # type: ignore[index]
    outbox = Outbox(config.outbox_dir)  # type: ignore[arg-type]
    outbox.append(OutboxEntry.create(DocumentKey("alice"), poison, base_version=None))
    outbox.append(
        OutboxEntry.create(
            DocumentKey("bob"), layout("fine").model_dump(mode="json"), base_version=None
        )
    )
    outbox.close()

    with PersistenceManager(postgres_url, config=config) as pm:
        with pytest.raises(OutboxBlockedError) as caught:
            pm.sync("alice")
        bob = pm.sync("bob")
        (blocked, reason) = pm.blocked_outbox_entries()[0]
        exported = pm.export_outbox_entry(blocked.entry_id)
        pm.discard_outbox_entry(blocked.entry_id)
        after = pm.sync("alice")

    assert caught.value.entry_id == blocked.entry_id
    assert "ValidationError" in reason
    assert exported["status"] == "blocked"
    assert (bob.replayed, bob.version) == (1, 1)
    assert (after.replayed, after.version) == (0, None)

"""A real PostgreSQL server stopped and started under a working manager (S08)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dashpersist import Layout, PersistenceConfig, PersistenceManager, Widget
from tests.postgres import PostgresServer

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


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


def test_saves_during_an_outage_reach_history_in_order_exactly_once(
    postgres_server: PostgresServer, postgres_url: str, tmp_path: Path
) -> None:
    sources: dict[str, list[str]] = {"alice": [], "bob": []}
    slowest = 0.0
    with PersistenceManager(postgres_url, config=outage_config(tmp_path)) as pm:
        for index in range(1, 21):
            if index == 8:
                postgres_server.stop("immediate")
            if index == 15:
                postgres_server.start()
            for user, seen in sources.items():
                started = time.monotonic()
                result = pm.save_layout(user, layout(f"{user} {index}"), immediate=True)
                slowest = max(slowest, time.monotonic() - started)
                seen.append(result.source)

        first = {user: pm.sync(user) for user in sources}
        second = {user: pm.sync(user) for user in sources}
        histories = {
            user: [
                pm.get_version(user, v.version).widget("w1").title
                for v in reversed(pm.get_version_history(user, limit=100))
            ]
            for user in sources
        }

    for user, seen in sources.items():
        assert seen[7:14] == ["outbox"] * 7
        assert set(seen[:7]) == set(seen[14:]) == {"storage"}
        assert histories[user] == [f"{user} {index}" for index in range(1, 21)]
        assert first[user].version == second[user].version == 20
        assert second[user].replayed == 0
    assert slowest < 5.0


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

"""A server manager shared by many clients, deletes with queued saves, events, encrypted marks."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict

from dashpersist import (
    KeyRing,
    Layout,
    MemoryStorage,
    PersistenceConfig,
    PersistenceManager,
    Widget,
)
from dashpersist.encryption import Encrypted
from dashpersist.events import ChangeEvent
from dashpersist.storage import DocumentKey
from dashpersist.testing import FakeClock


def board() -> Layout:
    return Layout(
        widgets=[
            Widget(id="w1", type="chart", w=4, h=2),
            Widget(id="w2", type="chart", x=4, w=4, h=2),
        ]
    )


def server(storage: MemoryStorage, **settings: object) -> PersistenceManager:
    clock = FakeClock()
    config = PersistenceConfig.model_validate({"retry_attempts": 1, **settings})
    return PersistenceManager(
        storage, config=config, timer=clock, sleep=clock.sleep, start_threads=False
    )


def test_two_clients_queued_saves_are_both_kept() -> None:
    pm = server(MemoryStorage())
    pm.save_layout("alice", board(), immediate=True)
    tab_a = pm.load_versioned("alice", client_id="tab-a")
    tab_b = pm.load_versioned("alice", client_id="tab-b")
    assert tab_a is not None
    assert tab_b is not None

    pm.save_layout(
        "alice",
        tab_a.document.update_widget("w1", title="from a"),
        base_version=tab_a.version,
        client_id="tab-a",
    )
    pm.save_layout(
        "alice",
        tab_b.document.update_widget("w2", title="from b"),
        base_version=tab_b.version,
        client_id="tab-b",
    )
    seen_by_a = pm.load_versioned("alice", client_id="tab-a")
    pm.flush()

    final = pm.load_layout("alice")
    assert seen_by_a is not None
    assert seen_by_a.is_pending
    assert seen_by_a.document.widget("w1").title == "from a"
    assert final is not None
    assert (final.widget("w1").title, final.widget("w2").title) == ("from a", "from b")


def test_one_clients_immediate_save_keeps_anothers_queued_save() -> None:
    pm = server(MemoryStorage())
    pm.save_layout("alice", board(), immediate=True)

    pm.save_layout(
        "alice", board().update_widget("w1", title="queued by a"), base_version=1, client_id="tab-a"
    )
    pm.save_layout(
        "alice",
        board().update_widget("w2", title="saved by b"),
        base_version=1,
        client_id="tab-b",
        immediate=True,
    )
    pm.flush()

    final = pm.load_layout("alice")
    assert final is not None
    assert (final.widget("w1").title, final.widget("w2").title) == ("queued by a", "saved by b")


def test_deleting_a_document_drops_its_queued_saves() -> None:
    storage = MemoryStorage()
    pm = server(storage)
    pm.save_layout("alice", board(), immediate=True)
    pm.save_layout("alice", board().with_changes(theme="dark"))

    pm.delete_layout("alice")
    pm.flush()

    assert storage.read(DocumentKey("alice")) is None
    assert pm.load_layout("alice") is None


def test_a_clone_is_written_at_once_and_can_be_deleted_right_away() -> None:
    pm = server(MemoryStorage())
    pm.save_layout("alice", board(), immediate=True)

    result = pm.clone_layout("alice", "default", "copy")
    pm.delete_layout("alice", layout_id="copy")

    assert (result.source, result.version) == ("storage", 1)
    assert pm.list_layouts("alice") == ["default"]


def test_sync_writes_a_queued_save_as_an_autosave() -> None:
    pm = server(MemoryStorage())
    pm.save_layout("alice", board(), immediate=True)
    pm.save_layout("alice", board().with_changes(theme="dark"))

    pm.sync("alice")

    assert pm.get_version_history("alice")[0].change_type == "auto"


def test_rollbacks_and_deletes_are_announced() -> None:
    pm = server(MemoryStorage())
    events: list[ChangeEvent] = []
    pm.subscribe(events.append)
    pm.save_layout("alice", board(), immediate=True)
    pm.save_layout("alice", board().with_changes(theme="dark"), immediate=True)

    pm.rollback_to_version("alice", 1)
    pm.delete_layout("alice")

    assert [(e.kind, e.version) for e in events] == [
        ("saved", 1),
        ("saved", 2),
        ("rolled_back", 3),
        ("deleted", None),
    ]


class ChartSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metric: str
    token: Annotated[str, Encrypted]


def test_fields_marked_encrypted_on_a_registered_settings_model_are_encrypted() -> None:
    storage = MemoryStorage()
    config = PersistenceConfig(enable_encryption=True, encrypted_fields=(), auto_save=False)
    pm = PersistenceManager(storage, config=config, keyring=KeyRing({"k1": KeyRing.generate_key()}))
    pm.register_widget_type("chart", ChartSettings)
    layout = Layout(
        widgets=[
            Widget(
                id="w1",
                type="chart",
                w=4,
                h=2,
                settings={"metric": "mrr", "token": "secret-token-123"},
            )
        ]
    )

    pm.save_layout("alice", layout)

    stored = storage.read(DocumentKey("alice"))
    assert stored is not None
    assert "secret-token-123" not in str(stored.document)
    loaded = pm.load_layout("alice")
    assert loaded is not None
    assert loaded.widget("w1").settings["token"] == "secret-token-123"


def test_a_history_trim_that_fails_after_the_commit_does_not_fail_the_save() -> None:
    from dashpersist import NotFoundError
    from dashpersist.testing import FaultyStorage

    storage = FaultyStorage(MemoryStorage())
    config = PersistenceConfig(max_versions=2, keyframe_interval=1, auto_save=False)
    # Trims run on the saving thread: each save's own trim meets the fault (in the
    # background, a newer save's trim could replace the third's before it ran).
    pm = PersistenceManager(storage, config=config, start_threads=False)
    pm.save_layout("alice", board())
    pm.save_layout("alice", board().with_changes(theme="dark"))
    # Another process trimmed this history a moment ago: our trim finds versions gone.
    storage.fail_next("compact", error=lambda: NotFoundError("version 1 is gone"))

    third = pm.save_layout("alice", board().with_changes(theme="blue"))
    fourth = pm.save_layout("alice", board().with_changes(theme="green"))

    assert (third.version, fourth.version) == (3, 4)
    assert [v.version for v in pm.get_version_history("alice")] == [4, 3]

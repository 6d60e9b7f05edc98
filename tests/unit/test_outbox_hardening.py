"""The outbox under the edges a review reproduced: a base trimmed while an entry waited, a
damaged file beside good ones, saves parked behind a blocked entry, two managers sharing
one outbox, a foreign file under an outbox name, and a discard racing a replay."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from dashpersist import (
    ConflictError,
    CorruptStoreError,
    Layout,
    MemoryStorage,
    NotFoundError,
    OutboxBlockedError,
    PersistenceConfig,
    PersistenceManager,
    StorageUnavailableError,
    ValidationError,
    Widget,
)
from dashpersist.errors import ValidationIssue
from dashpersist.outbox import _stem
from dashpersist.storage import DocumentKey
from dashpersist.testing import FaultyStorage

ALICE = DocumentKey("alice")


def layout(title: str, x: int = 0) -> Layout:
    return Layout(widgets=[Widget(id="w", type="chart", title=title, x=x, w=4, h=3)])


def manager(store: Any, folder: Path, **settings: Any) -> PersistenceManager:
    config = PersistenceConfig(outbox_dir=folder, retry_attempts=1, **settings)
    return PersistenceManager(store, config=config, device_id="laptop", start_threads=False)


def stored_title(store: Any, key: DocumentKey = ALICE) -> str:
    title = store.read(key).document["widgets"][0]["title"]
    assert isinstance(title, str)
    return title


def test_an_entry_whose_base_was_trimmed_meanwhile_blocks_instead_of_failing_for_ever(
    tmp_path: Path,
) -> None:
    store = FaultyStorage(MemoryStorage())
    pm = manager(store, tmp_path / "outbox", max_versions=2, keyframe_interval=1)
    pm.save_layout("alice", layout("v1"), immediate=True)
    store.go_offline()
    assert pm.save_layout("alice", layout("offline"), immediate=True).source == "outbox"
    store.go_online()
    other = PersistenceManager(
        store, config=PersistenceConfig(max_versions=2, keyframe_interval=1), start_threads=False
    )
    for n in range(6):  # another device: version 1 leaves history
        other.load_layout("alice")
        other.save_layout("alice", layout(f"other {n}"), immediate=True)

    with pytest.raises(OutboxBlockedError):
        pm.sync("alice")
    ((entry, reason),) = pm.blocked_outbox_entries()
    later = pm.save_layout("alice", layout("after"), immediate=True)

    assert entry.document["widgets"][0]["title"] == "offline"  # type: ignore[index]
    assert reason.startswith(ConflictError.__name__)
    assert "no longer in history" in reason
    assert later.source == "outbox"  # parked behind the blocked entry, not lost or raised
    assert pm.load_layout("alice") == layout("after")
    pm.close()


def test_a_damaged_outbox_file_does_not_hold_up_other_documents(tmp_path: Path) -> None:
    store = FaultyStorage(MemoryStorage())
    folder = tmp_path / "outbox"
    pm = manager(store, folder)
    pm.save_layout("alice", layout("a1"), immediate=True)
    pm.save_layout("bob", layout("b1"), immediate=True)
    store.go_offline()
    pm.save_layout("alice", layout("a2"), immediate=True)
    pm.save_layout("alice", layout("a3"), immediate=True)
    pm.save_layout("bob", layout("b2"), immediate=True)
    pm.close()
    damaged = folder / f"{_stem(ALICE)}.jsonl"
    first, second, *rest = damaged.read_bytes().split(b"\n")
    damaged.write_bytes(b"\n".join([first, second.replace(b'_id":"', b'_id":"#'), *rest]))
    store.go_online()
    reopened = manager(store, folder)

    with pytest.raises(CorruptStoreError):
        reopened.replay_outbox()  # raised once every other document had its turn

    assert stored_title(store, DocumentKey("bob")) == "b2"
    assert stored_title(store) == "a1"
    reopened.close()


def test_saves_parked_behind_a_blocked_entry_are_read_listed_and_chained(tmp_path: Path) -> None:
    store = FaultyStorage(MemoryStorage())
    pm = manager(store, tmp_path / "outbox")
    pm.save_layout("alice", layout("v1"), immediate=True)
    store.go_offline()
    pm.save_layout("alice", layout("refused"), immediate=True)
    store.go_online()
    store.fail_next("write", error=lambda: ValidationError([ValidationIssue("$", "db", "no")]))
    with pytest.raises(OutboxBlockedError) as blocked:
        pm.sync("alice")
    pm.save_layout("alice", layout("moved", x=3), immediate=True)  # behind the blocked one
    pm.save_layout("alice", layout("moved", x=0), immediate=True)  # the user's last word

    assert pm.load_layout("alice") == layout("moved", x=0)
    assert pm.load_versioned("alice").is_pending
    listed = pm.outbox_entries()
    assert [e.document["widgets"][0]["x"] for e in listed] == [0, 3, 0]  # type: ignore[index]
    assert [e.after_entry_id for e in listed[1:]] == [e.entry_id for e in listed[:-1]]

    pm.discard_outbox_entry(blocked.value.entry_id)
    store.fail_nth("write", 2)  # the first parked save lands, then the connection drops
    with pytest.raises(StorageUnavailableError):
        pm.sync("alice")
    pm.sync("alice")

    assert store.read(ALICE).document["widgets"][0]["x"] == 0  # type: ignore[index]
    pm.close()


class _PausedHistory(FaultyStorage):
    """Pauses the first history read after `pause_next` until `resume` is set."""

    def __init__(self, inner: MemoryStorage) -> None:
        super().__init__(inner)
        self.paused = threading.Event()
        self.resume = threading.Event()
        self._armed = False

    def pause_next(self) -> None:
        self._armed = True

    def versions(self, key: DocumentKey, **options: Any) -> Any:
        found = super().versions(key, **options)
        if self._armed:
            self._armed = False
            self.paused.set()
            assert self.resume.wait(10)
        return found


def test_two_managers_sharing_an_outbox_write_each_entry_once(tmp_path: Path) -> None:
    shared = MemoryStorage()
    folder = tmp_path / "outbox"
    first_store, second_store = _PausedHistory(shared), _PausedHistory(shared)
    first = manager(first_store, folder)
    first.save_layout("alice", layout("v1"), immediate=True)
    first_store.go_offline()
    first.save_layout("alice", layout("moved", x=3), immediate=True)
    first.save_layout("alice", layout("moved", x=0), immediate=True)
    first_store.go_online()
    second = manager(second_store, folder)
    second_store.pause_next()  # after it looked whether the first entry is stored already
    outcome: list[object] = []
    replaying = threading.Thread(target=lambda: outcome.append(second.replay_outbox()))
    replaying.start()
    assert second_store.paused.wait(10)

    first.replay_outbox()
    second_store.resume.set()
    replaying.join(10)

    history = shared.versions(ALICE, limit=10)
    keys = [record.idempotency_key for record in history if record.idempotency_key]
    assert len(keys) == len(set(keys)) == 2
    assert shared.read(ALICE).document["widgets"][0]["x"] == 0  # type: ignore[index]
    assert outcome == [2]  # the second manager found both stored
    first.close()
    second.close()


def test_a_folder_under_an_outbox_file_name_does_not_stop_a_manager(tmp_path: Path) -> None:
    folder = tmp_path / "outbox"
    folder.mkdir()
    (folder / f"{'ab' * 32}.jsonl").mkdir()
    store = FaultyStorage(MemoryStorage())

    pm = manager(store, folder)
    store.go_offline()
    parked = pm.save_layout("alice", layout("offline"), immediate=True)

    assert parked.source == "outbox"
    pm.close()


class _PausedWrite(FaultyStorage):
    """Pauses inside the next write (after it is stored) until `resume` is set."""

    def __init__(self, inner: MemoryStorage) -> None:
        super().__init__(inner)
        self.writing = threading.Event()
        self.resume = threading.Event()
        self._armed = False

    def pause_next(self) -> None:
        self._armed = True

    def write(self, *args: Any, **options: Any) -> int:
        version = super().write(*args, **options)
        if self._armed:
            self._armed = False
            self.writing.set()
            assert self.resume.wait(10)
        return version


def test_a_discard_waits_for_a_replay_of_its_document(tmp_path: Path) -> None:
    store = _PausedWrite(MemoryStorage())
    pm = manager(store, tmp_path / "outbox")
    pm.save_layout("alice", layout("v1"), immediate=True)
    store.go_offline()
    pm.save_layout("alice", layout("to be discarded"), immediate=True)
    store.go_online()
    (entry,) = pm.outbox_entries()
    store.pause_next()
    syncing = threading.Thread(target=pm.sync, args=("alice",))
    syncing.start()
    assert store.writing.wait(10)  # the entry is being written
    discarded: list[object] = []

    def discard() -> None:
        try:
            discarded.append(pm.discard_outbox_entry(entry.entry_id))
        except NotFoundError as exc:
            discarded.append(exc)

    discarding = threading.Thread(target=discard)
    discarding.start()
    discarding.join(0.3)
    assert discarded == []  # waits for the replay, instead of claiming a discard
    store.resume.set()
    syncing.join(10)
    discarding.join(10)

    assert stored_title(store) == "to be discarded"
    assert len(discarded) == 1
    assert isinstance(discarded[0], NotFoundError)
    pm.close()

"""Version history on every backend: deltas and keyframes, rebuilds, diffs, rollback,
retention, integrity checks and schema migrations."""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

import pytest
from pydantic import BaseModel

from dashpersist import (
    ConflictError,
    Layout,
    NotFoundError,
    PersistenceConfig,
    PersistenceManager,
    Widget,
)
from dashpersist._canonical import checksum
from dashpersist.patch import apply_patch
from dashpersist.storage import DocumentKey, Storage, outline_from_versions
from dashpersist.types import JsonObject


def board(revision: int, widgets: int = 4) -> Layout:
    return Layout(
        widgets=[
            Widget(
                id=f"w{i}",
                type="chart",
                title=f"Chart {i}",
                x=(i * 3) % 12,
                y=i,
                w=3,
                h=2,
                settings={"limit": revision if i == revision % widgets else i},
            )
            for i in range(widgets)
        ],
        theme="dark" if revision % 2 else "light",
    )


def manager_for(storage: Storage, **settings: object) -> PersistenceManager:
    settings.setdefault("auto_save", False)  # these tests are about what history holds
    return PersistenceManager(
        storage, device_id="laptop", config=PersistenceConfig.model_validate(settings)
    )


@pytest.mark.parametrize("before", [None, 6, 2, 1])
def test_the_version_outline_is_the_history_without_its_content(
    storage: Storage, before: int | None
) -> None:
    pm = manager_for(storage, keyframe_interval=3)
    for revision in range(1, 8):
        label = f"release {revision}" if revision in (2, 5) else None
        pm.save_layout("alice", board(revision), label=label)
    key = DocumentKey("alice")

    outline = storage.version_outline(key, before=before)
    records = storage.versions(key, before=before, limit=100)

    assert [(o.version, o.label, o.keyframe) for o in outline] == [
        (r.version, r.label, r.snapshot is not None) for r in records
    ]
    assert storage.version_outline(DocumentKey("nobody")) == []


@pytest.mark.parametrize("before", [None, 23, 22, 21, 16, 11, 6, 5, 2, 1])
def test_the_outline_read_page_by_page_is_the_same(
    storage: Storage, before: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`outline_from_versions`, for backends that cannot leave content out, across the
    edges of its pages (5 records here)."""
    monkeypatch.setattr("dashpersist.storage.protocol._PAGE", 5)
    pm = manager_for(storage, keyframe_interval=4)
    for revision in range(1, 23):
        pm.save_layout("alice", board(revision), label="kept" if revision % 7 == 0 else None)
    key = DocumentKey("alice")

    paged = outline_from_versions(storage, key, before=before)

    assert paged == storage.version_outline(key, before=before)
    assert [o.version for o in paged] == list(range(min(before or 23, 23) - 1, 0, -1))


def test_history_stores_patches_between_keyframes(storage: Storage) -> None:
    pm = manager_for(storage, keyframe_interval=4)
    for revision in range(1, 11):
        pm.save_layout("alice", board(revision))

    records = storage.versions(DocumentKey("alice"), limit=100)

    keyframes = sorted(r.version for r in records if r.snapshot is not None)
    assert keyframes == [1, 5, 9]
    assert all(r.patch is not None for r in records if r.version > 1)
    assert records[0].patch is not None and len(records[0].patch) <= 3


def test_every_version_rebuilds_exactly(storage: Storage) -> None:
    pm = manager_for(storage, keyframe_interval=4)
    for revision in range(1, 11):
        pm.save_layout("alice", board(revision))

    rebuilt = [pm.get_version("alice", version) for version in range(1, 11)]

    assert rebuilt == [board(revision) for revision in range(1, 11)]


def test_an_unknown_or_foreign_version_is_not_found(storage: Storage) -> None:
    pm = manager_for(storage)
    pm.save_layout("alice", board(1))
    pm.save_layout("bob", board(2))
    pm.save_layout("bob", board(3))

    with pytest.raises(NotFoundError):
        pm.get_version("alice", 2)
    with pytest.raises(NotFoundError):
        pm.get_version("carol", 1)
    with pytest.raises(NotFoundError):
        pm.compare_versions("alice", 1, 2)
    with pytest.raises(NotFoundError):
        pm.rollback_to_version("alice", 2)


def test_compare_versions_gives_a_patch_and_named_changes(storage: Storage) -> None:
    pm = manager_for(storage)
    first = board(1)
    pm.save_layout("alice", first)
    second = (
        first.update_widget("w0", x=9)
        .update_widget("w1", title="Renamed")
        .update_widget("w2", settings={**first.widget("w2").settings, "color": "red"})
        .without_widget("w3")
        .with_widget(Widget(id="new", type="text", x=0, y=20))
        .with_changes(theme="solarized")
    )
    pm.save_layout("alice", second)

    diff = pm.compare_versions("alice", 1, 2)

    described = {(c.kind, c.widget_id, c.paths) for c in diff.changes}
    assert described == {
        ("widget_moved", "w0", ()),
        ("widget_retitled", "w1", ()),
        ("widget_settings_changed", "w2", ("color",)),
        ("widget_removed", "w3", ()),
        ("widget_added", "new", ()),
        ("field_changed", None, ("/theme",)),
    }
    assert apply_patch(first.model_dump(mode="json"), diff.patch) == second.model_dump(mode="json")
    assert diff.summary.startswith("Moved widget 'w0'; retitled widget 'w1'")


def test_rollback_adds_a_new_version_with_the_old_content(storage: Storage) -> None:
    pm = manager_for(storage)
    for revision in range(1, 5):
        pm.save_layout("alice", board(revision))

    restored = pm.rollback_to_version("alice", 2)

    history = pm.get_version_history("alice")
    assert restored == board(2)
    assert pm.load_layout("alice") == board(2)
    assert [v.version for v in history] == [5, 4, 3, 2, 1]
    assert (history[0].change_type, history[0].description) == ("rollback", "Rollback to version 2")
    assert pm.get_version("alice", 4) == board(4)


def test_a_rollback_racing_another_writer_ends_in_one_conflict(storage: Storage) -> None:
    pm = manager_for(storage)
    other = manager_for(storage)
    pm.save_layout("alice", board(1))
    pm.save_layout("alice", board(2))
    key = DocumentKey("alice")
    current = storage.read(key)
    assert current is not None
    raced = {"done": False}
    original_read = storage.read

    def read_then_race(read_key: DocumentKey) -> object:
        result = original_read(read_key)
        if not raced["done"]:
            raced["done"] = True
            other.save_layout("alice", board(3))
        return result

    storage.read = read_then_race  # type: ignore[method-assign]
    try:
        with pytest.raises(ConflictError):
            pm.rollback_to_version("alice", 1)
    finally:
        storage.read = original_read  # type: ignore[method-assign]

    assert other.load_layout("alice") == board(3)
    assert [v.version for v in pm.get_version_history("alice")] == [3, 2, 1]


def test_retention_keeps_the_newest_versions_and_labelled_ones(storage: Storage) -> None:
    pm = manager_for(storage, max_versions=5, keyframe_interval=4)
    for revision in range(1, 13):
        pm.save_layout("alice", board(revision), label="release" if revision == 3 else None)

    history = pm.get_version_history("alice", limit=100)

    # Trimming cuts at a keyframe (every 4th version here): the newest 5 and up to 3
    # more are kept, and the labelled version 3 whatever its age.
    assert [v.version for v in history] == [12, 11, 10, 9, 8, 7, 6, 5, 3]
    pm.cleanup_old_versions("alice", keep=5)
    history = pm.get_version_history("alice", limit=100)
    assert [v.version for v in history] == [12, 11, 10, 9, 8, 3]
    assert [pm.get_version("alice", v.version) for v in history] == [
        board(v.version) for v in history
    ]
    assert pm.verify("alice").ok


def test_retention_refuses_to_trim_when_the_oldest_version_to_keep_is_gone(
    storage: Storage,
) -> None:
    pm = manager_for(storage, keyframe_interval=2)
    for revision in range(1, 7):
        pm.save_layout("alice", board(revision))
    keyframe = board(4).model_dump(mode="json")
    storage.compact(DocumentKey("alice"), remove=[3], snapshots={4: keyframe})

    with pytest.raises(NotFoundError, match="no version 3"):
        pm.cleanup_old_versions("alice", keep=4)

    assert [v.version for v in pm.get_version_history("alice")] == [6, 5, 4, 2, 1]


def test_cleanup_old_versions_removes_all_but_the_newest(storage: Storage) -> None:
    pm = manager_for(storage, keyframe_interval=3)
    for revision in range(1, 9):
        pm.save_layout("alice", board(revision))

    removed = pm.cleanup_old_versions("alice", keep=2)

    assert removed == 6
    assert [v.version for v in pm.get_version_history("alice")] == [8, 7]
    assert pm.get_version("alice", 7) == board(7)
    assert pm.verify("alice").ok


def test_versioning_off_keeps_only_the_current_version(storage: Storage) -> None:
    pm = manager_for(storage, enable_versioning=False)
    for revision in range(1, 4):
        pm.save_layout("alice", board(revision))

    assert [v.version for v in pm.get_version_history("alice")] == [3]
    assert pm.load_layout("alice") == board(3)


def test_verify_passes_on_an_untouched_history(storage: Storage) -> None:
    pm = manager_for(storage, keyframe_interval=3)
    for revision in range(1, 8):
        pm.save_layout("alice", board(revision))

    report = pm.verify("alice")

    assert report.ok
    assert report.versions_checked == 7


def test_verify_reports_a_changed_removed_or_reordered_record() -> None:
    from dashpersist import MemoryStorage

    storage = MemoryStorage()
    pm = manager_for(storage, keyframe_interval=3)
    for revision in range(1, 8):
        pm.save_layout("alice", board(revision))
    entry = storage._entries[DocumentKey("alice")]  # tampering needs the internals
    original = list(entry.history)

    entry.history[4] = replace(original[4], snapshot={"widgets": [], "theme": "forged"})
    changed = pm.verify("alice")
    entry.history = original[:2] + original[3:]
    removed = pm.verify("alice")
    entry.history = [original[0], original[2], original[1], *original[3:]]
    reordered = pm.verify("alice")
    entry.history = original[:-1]
    headless = pm.verify("alice")

    assert {p.version for p in changed.problems} >= {5}
    assert not removed.ok and "gap" in {p.kind for p in removed.problems}
    assert not reordered.ok and "order" in {p.kind for p in reordered.problems}
    assert not headless.ok and "head" in {p.kind for p in headless.problems}


def test_old_versions_upgrade_through_registered_migrations(storage: Storage) -> None:
    class PrefsV1(BaseModel):
        colour: str

    class PrefsV2(BaseModel):
        schema_version: ClassVar[int] = 2
        color: str
        dense: bool

    def v1_to_v2(document: JsonObject) -> JsonObject:
        return {"color": document["colour"], "dense": False}

    direct = PersistenceConfig(auto_save=False)
    old = PersistenceManager(storage, schema=PrefsV1, config=direct)
    old.save_layout("alice", PrefsV1(colour="red"))
    old.save_layout("alice", PrefsV1(colour="blue"))
    new = PersistenceManager(storage, schema=PrefsV2, config=direct)
    new.register_migration(1, v1_to_v2)

    assert new.load_layout("alice") == PrefsV2(color="blue", dense=False)
    assert new.get_version("alice", 1) == PrefsV2(color="red", dense=False)
    assert new.compare_versions("alice", 1, 2).patch == [
        {"op": "replace", "path": "/color", "value": "blue"}
    ]
    assert new.rollback_to_version("alice", 1) == PrefsV2(color="red", dense=False)
    record = storage.versions(DocumentKey("alice"), limit=1)[0]
    assert record.schema_version == 2
    assert record.checksum == checksum({"color": "red", "dense": False})


def test_auto_saves_get_a_summary_as_their_description(storage: Storage) -> None:
    pm = manager_for(storage)
    pm.save_layout("alice", board(1))
    moved = board(1).update_widget("w0", x=9)

    pm.save_layout("alice", moved, change_type="auto")

    assert pm.get_version_history("alice")[0].description == "Moved widget 'w0'"


def test_verify_store_checks_every_document_of_every_user(storage: Storage) -> None:
    pm = manager_for(storage, keyframe_interval=3)
    for user in ("alice", "bob"):
        for revision in range(1, 5):
            pm.save_layout(user, board(revision), layout_id=f"{user}-board")
    pm.save_layout("alice", board(9), layout_id="second")

    report = pm.verify_store()

    assert report.ok
    assert (report.documents_checked, report.versions_checked) == (3, 9)

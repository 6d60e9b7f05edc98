"""The one suite every Storage backend passes: memory, JSON folder, SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import unicodedata
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from dashpersist._canonical import canonical_json, checksum, checksum_bytes
from dashpersist.errors import (
    ConfigurationError,
    ConflictError,
    NotFoundError,
    ValidationError,
)
from dashpersist.patch import make_patch
from dashpersist.storage import DocumentKey, Storage, StoredDocument, VersionRecord
from dashpersist.types import ChangeType, JsonObject

HOSTILE_IDS = [
    "../../etc/passwd",
    "..",
    ".",
    "a/b",
    "a\\b",
    "..\\..\\win",
    "/abs/path",
    "C:\\win",
    "con",
    "NUL",
    "aux",
    "trailing.",
    "trailing ",
    "Alice",
    "alice",
    "\uff41\uff4c\uff49\uff43\uff45",
    "x" * 256,
    "emoji-\U0001f600",
    "quote'\"; DROP TABLE dashpersist_documents; --",
    "%2e%2e%2f",
]


def layout(*titles: str) -> JsonObject:
    return {"widgets": [{"id": f"w{i}", "title": t} for i, t in enumerate(titles)], "theme": "dark"}


def history_versions(storage: Storage, key: DocumentKey) -> list[int]:
    return [r.version for r in storage.versions(key, limit=10_000)]


def test_a_written_document_reads_back_equal_at_version_1(storage: Storage) -> None:
    key = DocumentKey("alice")
    document = layout("Sales", "Costs")

    version = storage.write(key, document, expected_version=None)

    stored = storage.read(key)
    assert version == 1
    assert stored is not None
    assert stored.document == document
    assert stored.version == 1
    assert stored.checksum == checksum(document)
    assert stored.updated_at.tzinfo is not None


def test_a_missing_document_reads_as_none(storage: Storage) -> None:
    assert storage.read(DocumentKey("nobody")) is None


def test_write_from_a_stale_version_is_refused_and_changes_nothing(storage: Storage) -> None:
    key = DocumentKey("alice")
    storage.write(key, layout("one"), expected_version=None)
    storage.write(key, layout("two"), expected_version=1)

    with pytest.raises(ConflictError) as caught:
        storage.write(key, layout("stale"), expected_version=1)

    stored = storage.read(key)
    assert stored is not None and stored.version == 2
    assert stored.document == layout("two")
    assert history_versions(storage, key) == [2, 1]
    assert (caught.value.expected_version, caught.value.actual_version) == (1, 2)
    assert caught.value.key == key


def test_creating_a_document_that_exists_is_a_conflict(storage: Storage) -> None:
    key = DocumentKey("alice")
    storage.write(key, layout("one"), expected_version=None)

    with pytest.raises(ConflictError) as caught:
        storage.write(key, layout("again"), expected_version=None)

    assert caught.value.actual_version == 1
    assert history_versions(storage, key) == [1]


def test_updating_a_document_that_does_not_exist_is_a_conflict(storage: Storage) -> None:
    key = DocumentKey("alice")

    with pytest.raises(ConflictError) as caught:
        storage.write(key, layout("one"), expected_version=3)

    assert caught.value.actual_version is None
    assert storage.read(key) is None


def test_history_lists_newest_first_with_a_cursor_and_a_limit(storage: Storage) -> None:
    key = DocumentKey("alice")
    for index in range(5):
        storage.write(key, layout(f"v{index + 1}"), expected_version=index or None)

    newest = storage.versions(key, limit=2)
    older = storage.versions(key, before=newest[-1].version, limit=10)

    assert [r.version for r in newest] == [5, 4]
    assert [r.version for r in older] == [3, 2, 1]
    assert storage.versions(key, limit=0) == []
    assert storage.versions(DocumentKey("nobody"), limit=5) == []


def test_history_records_form_a_hash_chain(storage: Storage) -> None:
    key = DocumentKey("alice")
    documents = [layout("a"), layout("a", "b"), layout("b")]
    for index, document in enumerate(documents):
        storage.write(key, document, expected_version=index or None)

    records = list(reversed(storage.versions(key, limit=10)))

    assert [r.checksum for r in records] == [checksum(d) for d in documents]
    assert [r.parent_checksum for r in records] == [
        None,
        checksum(documents[0]),
        checksum(documents[1]),
    ]
    assert all(r.created_at.tzinfo is not None for r in records)


def test_a_given_record_is_stored_with_its_metadata(storage: Storage) -> None:
    key = DocumentKey("alice", "sales")
    first = layout("one")
    storage.write(key, first, expected_version=None)
    second = layout("two")
    record = VersionRecord(
        version=2,
        checksum=checksum(second),
        parent_checksum=checksum(first),
        created_at=storage.versions(key, limit=1)[0].created_at,
        change_type="rollback",
        description="Rollback to version 1",
        device_id="laptop",
        label="before-demo",
        idempotency_key="entry-42",
        patch=[{"op": "replace", "path": "/widgets/0/title", "value": "two"}],
    )

    storage.write(key, second, record, expected_version=1)

    stored = storage.versions(key, limit=1)[0]
    assert stored == record


def test_the_writers_encoding_of_the_document_is_stored_and_never_kept_in_history(
    storage: Storage,
) -> None:
    key = DocumentKey("alice")
    document = layout("one")
    encoded = canonical_json(document)
    record = VersionRecord(
        version=1,
        checksum=checksum_bytes(encoded),
        parent_checksum=None,
        created_at=datetime.now(UTC),
        snapshot=document,
        encoded_document=encoded,
    )

    storage.write(key, document, record, expected_version=None)

    current = storage.read(key)
    assert current is not None
    assert canonical_json(current.document) == encoded
    assert current.checksum == record.checksum
    assert storage.versions(key)[0].encoded_document is None


def test_a_record_that_does_not_continue_the_chain_is_refused(storage: Storage) -> None:
    key = DocumentKey("alice")
    storage.write(key, layout("one"), expected_version=None)
    document = layout("two")
    good = VersionRecord(
        version=2,
        checksum=checksum(document),
        parent_checksum=checksum(layout("one")),
        created_at=storage.versions(key, limit=1)[0].created_at,
    )

    for bad in (
        replace(good, version=3),
        replace(good, checksum="0" * 64),
        replace(good, parent_checksum=None),
    ):
        with pytest.raises(ConfigurationError):
            storage.write(key, document, bad, expected_version=1)

    assert history_versions(storage, key) == [1]


def test_a_document_json_cannot_hold_is_refused_and_nothing_is_written(storage: Storage) -> None:
    key = DocumentKey("alice")

    with pytest.raises(ValidationError):
        storage.write(key, {"widgets": [], "ratio": float("nan")}, expected_version=None)

    assert storage.read(key) is None
    assert storage.layout_ids("alice") == []


@pytest.mark.parametrize("user_id", HOSTILE_IDS)
def test_users_never_see_each_others_documents_whatever_their_ids(
    storage: Storage, user_id: str
) -> None:
    others = ["alice", "bob", user_id.upper(), unicodedata.normalize("NFKC", user_id)]
    for owner in {user_id, *others}:
        storage.write(
            DocumentKey(owner, user_id), layout(f"owned by {owner}"), expected_version=None
        )

    for owner in {user_id, *others}:
        stored = storage.read(DocumentKey(owner, user_id))
        assert stored is not None
        assert stored.document == layout(f"owned by {owner}")
        assert storage.layout_ids(owner) == [user_id]


def test_layout_ids_are_listed_sorted_per_user(storage: Storage) -> None:
    for layout_id in ("sales", "costs", "default"):
        storage.write(DocumentKey("alice", layout_id), layout(layout_id), expected_version=None)
    storage.write(DocumentKey("bob", "secret"), layout("bob"), expected_version=None)

    assert storage.layout_ids("alice") == ["costs", "default", "sales"]
    assert storage.layout_ids("carol") == []


def test_delete_removes_the_document_and_its_history_only(storage: Storage) -> None:
    key, kept = DocumentKey("alice", "sales"), DocumentKey("alice", "costs")
    storage.write(key, layout("one"), expected_version=None)
    storage.write(key, layout("two"), expected_version=1)
    storage.write(kept, layout("kept"), expected_version=None)

    storage.delete(key)

    assert storage.read(key) is None
    assert storage.versions(key, limit=10) == []
    assert storage.layout_ids("alice") == ["costs"]
    assert storage.read(kept) is not None
    with pytest.raises(NotFoundError):
        storage.delete(key)


def test_a_deleted_document_can_be_created_again_from_version_1(storage: Storage) -> None:
    key = DocumentKey("alice")
    storage.write(key, layout("one"), expected_version=None)
    storage.delete(key)

    version = storage.write(key, layout("new"), expected_version=None)

    assert version == 1
    assert history_versions(storage, key) == [1]


def test_changing_what_read_returned_does_not_change_the_store(storage: Storage) -> None:
    key = DocumentKey("alice")
    storage.write(key, layout("one"), expected_version=None)
    first = storage.read(key)
    assert first is not None

    first.document["widgets"].append({"id": "intruder"})  # type: ignore[union-attr]
    first.document["theme"] = "changed"

    again = storage.read(key)
    assert again is not None and again.document == layout("one")


def test_changing_a_written_document_afterwards_does_not_change_the_store(storage: Storage) -> None:
    key = DocumentKey("alice")
    document = layout("one")
    storage.write(key, document, expected_version=None)

    document["theme"] = "changed"

    stored = storage.read(key)
    assert stored is not None and stored.document["theme"] == "dark"


@pytest.mark.parametrize(
    "text",
    [
        "line\u2028separator",
        "family \U0001f468\u200d\U0001f469\u200d\U0001f467",
        "Cafe\u0301",
        "Caf\u00e9",
        "tab\tand\nnewline",
        "<script>alert(1)</script>",
        "\u202eright-to-left",
    ],
)
def test_allowed_strings_round_trip_exactly(storage: Storage, text: str) -> None:
    key = DocumentKey("alice")
    document = {"title": text, "nested": {text: [text]}}

    storage.write(key, document, expected_version=None)

    stored = storage.read(key)
    assert stored is not None and stored.document == document


def test_numbers_keep_their_json_type(storage: Storage) -> None:
    key = DocumentKey("alice")
    document = {
        "int": 1,
        "float": 1.5,
        "whole_float": 2.0,
        "big": 2**53 - 1,
        "neg": -7,
        "bool": True,
        "none": None,
    }

    storage.write(key, document, expected_version=None)

    stored = storage.read(key)
    assert stored is not None
    assert stored.document == document
    assert {k: type(v) for k, v in stored.document.items()} == {
        k: type(v) for k, v in document.items()
    }


def test_eight_threads_saving_one_document_either_commit_or_conflict_with_no_gaps(
    storage: Storage,
) -> None:
    key = DocumentKey("alice")
    storage.write(key, {"tokens": []}, expected_version=None)
    committed: list[str] = []
    failures: list[BaseException] = []
    guard = threading.Lock()

    def writer(thread: int) -> None:
        for attempt in range(15):
            token = f"{thread}-{attempt}"
            current = storage.read(key)
            assert current is not None
            tokens = [*current.document["tokens"], token]  # type: ignore[misc]
            try:
                storage.write(key, {"tokens": tokens}, expected_version=current.version)
            except ConflictError:
                continue
            except BaseException as exc:
                with guard:
                    failures.append(exc)
                return
            with guard:
                committed.append(token)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    stored = storage.read(key)
    assert failures == []
    assert stored is not None
    assert sorted(stored.document["tokens"]) == sorted(committed)  # type: ignore[arg-type]
    assert stored.version == len(committed) + 1
    assert history_versions(storage, key) == list(range(stored.version, 0, -1))


def test_timestamps_are_aware_utc(storage: Storage) -> None:
    key = DocumentKey("alice")

    storage.write(key, layout("one"), expected_version=None)

    stored = storage.read(key)
    assert stored is not None
    assert stored.updated_at.utcoffset() == UTC.utcoffset(None)
    assert storage.versions(key, limit=1)[0].created_at.utcoffset() == UTC.utcoffset(None)


def test_close_is_idempotent(storage: Storage) -> None:
    storage.close()
    storage.close()


# -- listing users -------------------------------------------------------------------------


def test_user_ids_lists_every_user_with_a_document_once_sorted(storage: Storage) -> None:
    for user_id, layout_id in [("carol", "a"), ("alice", "x"), ("alice", "y"), ("bob", "z")]:
        storage.write(DocumentKey(user_id, layout_id), layout(layout_id), expected_version=None)

    listed = storage.user_ids()

    assert listed == ["alice", "bob", "carol"]


def test_user_ids_of_an_empty_store_is_empty(storage: Storage) -> None:
    assert storage.user_ids() == []


def test_hostile_user_ids_are_listed_exactly_as_written(storage: Storage) -> None:
    for user_id in HOSTILE_IDS:
        storage.write(DocumentKey(user_id, "board"), layout(user_id), expected_version=None)

    listed = storage.user_ids()

    assert listed == sorted(HOSTILE_IDS)
    assert len(set(listed)) == len(HOSTILE_IDS)


def test_a_user_whose_layouts_were_all_deleted_is_no_longer_listed(storage: Storage) -> None:
    for layout_id in ("one", "two"):
        storage.write(DocumentKey("alice", layout_id), layout(layout_id), expected_version=None)
    storage.write(DocumentKey("bob"), layout("bob"), expected_version=None)

    storage.delete(DocumentKey("alice", "one"))
    still_listed = storage.user_ids()
    storage.delete(DocumentKey("alice", "two"))

    assert still_listed == ["alice", "bob"]
    assert storage.user_ids() == ["bob"]


# -- importing a document with its history ------------------------------------------------


def _history_to_import(key: DocumentKey) -> tuple[StoredDocument, list[VersionRecord]]:
    """Return a document at version 4 and its history as another store wrote them:
    patches, a keyframe at version 3, a gap left by retention, odd times and metadata."""
    documents = [layout("a"), layout("a", "b"), layout("b", "c"), layout("c")]
    change_types: list[ChangeType] = ["manual", "auto", "rollback", "migration"]
    base = datetime(2021, 3, 4, 5, 6, 7, 123_457, tzinfo=UTC)
    records: list[VersionRecord] = []
    for index, document in enumerate(documents):
        version = index + 1
        previous = documents[index - 1] if index else None
        records.append(
            VersionRecord(
                version=version,
                checksum=checksum(document),
                parent_checksum=None if previous is None else checksum(previous),
                created_at=base + timedelta(days=version, microseconds=version),
                change_type=change_types[index],
                description=f"step {version}",
                device_id="tablet" if version % 2 else None,
                label="release" if version == 2 else None,
                schema_version=1 if version < 4 else 2,
                idempotency_key=f"entry-{version}",
                patch=None if previous is None else make_patch(previous, document),
                snapshot=document if version in (1, 3) else None,
            )
        )
    current = StoredDocument(
        key=key,
        document=documents[-1],
        version=4,
        checksum=checksum(documents[-1]),
        updated_at=records[-1].created_at,
        schema_version=2,
    )
    return current, records


def test_an_imported_document_keeps_every_version_exactly(storage: Storage) -> None:
    key = DocumentKey("alice", "imported")
    current, history = _history_to_import(key)

    storage.import_document(key, current, history)

    stored = storage.read(key)
    assert stored == current
    assert list(reversed(storage.versions(key, limit=100))) == history
    assert storage.layout_ids("alice") == ["imported"]
    assert storage.user_ids() == ["alice"]


def test_writes_after_an_import_continue_its_chain(storage: Storage) -> None:
    key = DocumentKey("alice")
    current, history = _history_to_import(key)
    storage.import_document(key, current, history)

    version = storage.write(key, layout("next"), expected_version=4)

    newest = storage.versions(key, limit=1)[0]
    assert version == 5
    assert newest.parent_checksum == current.checksum


def test_importing_over_an_existing_document_is_refused_and_writes_nothing(
    storage: Storage,
) -> None:
    key = DocumentKey("alice")
    storage.write(key, layout("mine"), expected_version=None)
    current, history = _history_to_import(key)

    with pytest.raises(ConflictError) as caught:
        storage.import_document(key, current, history)

    stored = storage.read(key)
    assert caught.value.actual_version == 1
    assert stored is not None and stored.document == layout("mine")
    assert history_versions(storage, key) == [1]


@pytest.mark.parametrize(
    "damage",
    ["no_history", "head_mismatch", "out_of_order", "wrong_checksum", "naive_time", "bare"],
)
def test_an_import_that_does_not_hold_together_is_refused_and_writes_nothing(
    storage: Storage, damage: str
) -> None:
    key = DocumentKey("alice")
    current, history = _history_to_import(key)
    if damage == "no_history":
        history = []
    elif damage == "head_mismatch":
        history = history[:-1]
    elif damage == "out_of_order":
        history = [history[1], history[0], *history[2:]]
    elif damage == "wrong_checksum":
        current = replace(current, checksum="0" * 64)
    elif damage == "naive_time":
        history[1] = replace(history[1], created_at=history[1].created_at.replace(tzinfo=None))
    else:
        history[1] = replace(history[1], patch=None, snapshot=None)

    with pytest.raises(ValidationError):
        storage.import_document(key, current, history)

    assert storage.read(key) is None
    assert storage.versions(key, limit=10) == []
    assert storage.user_ids() == []


# -- replacing a document with its whole history (key rotation) ---------------------------


def _write_versions(storage: Storage, key: DocumentKey, count: int) -> None:
    for index in range(count):
        storage.write(key, layout(f"old {index + 1}"), expected_version=index or None)


def test_a_replaced_document_reads_back_with_exactly_the_new_history(storage: Storage) -> None:
    key = DocumentKey("alice", "rotated")
    _write_versions(storage, key, 4)
    current, history = _history_to_import(key)

    storage.replace_document(key, current, history, expected_version=4)

    assert storage.read(key) == current
    assert list(reversed(storage.versions(key, limit=100))) == history
    assert storage.layout_ids("alice") == ["rotated"]


def test_a_replace_after_the_version_moved_on_is_refused_and_changes_nothing(
    storage: Storage,
) -> None:
    key = DocumentKey("alice")
    _write_versions(storage, key, 5)
    before = (storage.read(key), storage.versions(key, limit=100))
    current, history = _history_to_import(key)

    with pytest.raises(ConflictError) as caught:
        storage.replace_document(key, current, history, expected_version=4)

    assert (caught.value.expected_version, caught.value.actual_version) == (4, 5)
    assert (storage.read(key), storage.versions(key, limit=100)) == before


def test_replacing_a_document_that_does_not_exist_is_a_conflict(storage: Storage) -> None:
    key = DocumentKey("alice")
    current, history = _history_to_import(key)

    with pytest.raises(ConflictError) as caught:
        storage.replace_document(key, current, history, expected_version=4)

    assert caught.value.actual_version is None
    assert storage.read(key) is None
    assert storage.versions(key, limit=10) == []


@pytest.mark.parametrize(
    "damage",
    ["no_history", "head_mismatch", "out_of_order", "wrong_checksum", "naive_time", "bare"],
)
def test_a_replace_that_does_not_hold_together_is_refused_and_changes_nothing(
    storage: Storage, damage: str
) -> None:
    key = DocumentKey("alice")
    _write_versions(storage, key, 4)
    before = (storage.read(key), storage.versions(key, limit=100))
    current, history = _history_to_import(key)
    if damage == "no_history":
        history = []
    elif damage == "head_mismatch":
        history = history[:-1]
    elif damage == "out_of_order":
        history = [history[1], history[0], *history[2:]]
    elif damage == "wrong_checksum":
        current = replace(current, checksum="0" * 64)
    elif damage == "naive_time":
        history[1] = replace(history[1], created_at=history[1].created_at.replace(tzinfo=None))
    else:
        history[1] = replace(history[1], patch=None, snapshot=None)

    with pytest.raises(ValidationError):
        storage.replace_document(key, current, history, expected_version=4)

    assert (storage.read(key), storage.versions(key, limit=100)) == before


def test_writes_after_a_replace_continue_its_chain(storage: Storage) -> None:
    key = DocumentKey("alice")
    _write_versions(storage, key, 4)
    current, history = _history_to_import(key)
    storage.replace_document(key, current, history, expected_version=4)

    version = storage.write(key, layout("next"), expected_version=4)

    newest = storage.versions(key, limit=2)
    assert version == 5
    assert newest[0].parent_checksum == current.checksum
    assert newest[1] == history[-1]


def test_a_write_following_the_content_a_replace_rewrote_is_a_conflict(storage: Storage) -> None:
    key = DocumentKey("alice")
    _write_versions(storage, key, 4)
    stale = storage.read(key)
    assert stale is not None
    current, history = _history_to_import(key)
    storage.replace_document(key, current, history, expected_version=4)
    document = layout("written from the old content")
    record = VersionRecord(
        version=5,
        checksum=checksum(document),
        parent_checksum=stale.checksum,
        created_at=datetime.now(UTC),
        patch=make_patch(stale.document, document),
    )

    with pytest.raises(ConflictError) as caught:
        storage.write(key, document, record, expected_version=4)

    assert (caught.value.expected_version, caught.value.actual_version) == (4, 4)
    assert storage.read(key) == current
    assert history_versions(storage, key) == [4, 3, 2, 1]

"""JSONFileStorage on real folders: file naming from hostile ids (S21), planted symbolic
links, corrupt files (S14), stale temp files, the history commit protocol, the lock.

The behaviour every backend shares (round trip, stale writes, isolation, threads,
processes) is in tests/contract/; fault injection (fsync, disk full, permissions,
kills) is in test_jsonfile_faults.py.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import subprocess
import sys
import time
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import filelock
import orjson
import pytest

from dashpersist.errors import (
    ConfigurationError,
    ConflictError,
    CorruptStoreError,
    NotFoundError,
    StoragePermissionError,
    StorageUnavailableError,
    ValidationError,
)
from dashpersist.storage import jsonfile
from dashpersist.storage.jsonfile import JSONFileStorage
from dashpersist.storage.protocol import DocumentKey
from dashpersist.types import JsonObject
from dashpersist.versions import VersionService

FULLWIDTH_ALICE = "\uff41\uff4c\uff49\uff43\uff45"
HOSTILE_IDS = [
    "../../etc/passwd",
    "..",
    ".",
    "a/b",
    "a\\b",
    "..\\..\\win",
    "/etc/passwd",
    "/",
    "C:\\Windows\\system32",
    "C:",
    "con",
    "NUL",
    "aux",
    "COM1.txt",
    "trailing dot.",
    "trailing space ",
    " ",
    "~",
    "$HOME",
    "Alice",
    "alice",
    FULLWIDTH_ALICE,
    "x" * 256,
    ".dptmp.alice.0123456789abcdef",
    "alice.json",
    "\u0430lice",  # Cyrillic a
    "cafe\u0301",  # NFD
    "caf\u00e9",  # NFC
]
OUR_FILE_NAME = re.compile(
    r"(?:[a-z0-9]{1,16}-)?[0-9a-f]{64}(?:\.json|\.history\.[0-9]+\.jsonl|\.lock)?"
)


def layout(marker: str) -> JsonObject:
    return {"widgets": [{"id": "w1", "title": marker}], "theme": "dark"}


def tree(folder: Path) -> dict[str, bytes | str]:
    """Every path under *folder*, with file contents and link targets."""
    snapshot: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        relative = str(path.relative_to(folder))
        if path.is_symlink():
            snapshot[relative] = f"-> {os.readlink(path)}"
        elif path.is_file():
            snapshot[relative] = path.read_bytes()
        else:
            snapshot[relative] = "<dir>"
    return snapshot


def temp_files(root: Path) -> list[Path]:
    return sorted(root.rglob(".dptmp.*"))


def history_path(store: JSONFileStorage, key: DocumentKey) -> Path:
    """The one history file of *key* (its name carries a generation number)."""
    document_path = store.document_path(key)
    found = sorted(document_path.parent.glob(f"{document_path.stem}.history.*.jsonl"))
    assert len(found) <= 1, found
    return found[0] if found else document_path.with_suffix(".history.0.jsonl")


def history_lines(store: JSONFileStorage, key: DocumentKey) -> list[bytes]:
    return history_path(store, key).read_bytes().splitlines()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "layouts"


@pytest.fixture
def store(root: Path) -> Iterator[JSONFileStorage]:
    opened = JSONFileStorage(root)
    yield opened
    opened.close()


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    path = tmp_path / "canary.txt"
    path.write_bytes(b"precious bytes outside the store\n")
    return path


# -- S21: ids never become file names --------------------------------------------------


def test_hostile_ids_as_user_or_layout_id_create_nothing_outside_the_root(
    tmp_path: Path, root: Path, store: JSONFileStorage, canary: Path
) -> None:
    before = tree(tmp_path)

    for index, hostile in enumerate(HOSTILE_IDS):
        store.write(DocumentKey(hostile), layout(f"user {index}"), expected_version=None)
        store.write(DocumentKey("bob", hostile), layout(f"layout {index}"), expected_version=None)

    after = tree(tmp_path)
    created_outside = [
        path for path in after if path not in before and not path.startswith("layouts")
    ]
    assert created_outside == []
    assert {path: after[path] for path in before} == before
    assert canary.read_bytes() == b"precious bytes outside the store\n"


def test_hostile_ids_read_back_their_own_documents(store: JSONFileStorage) -> None:
    for index, hostile in enumerate(HOSTILE_IDS):
        store.write(DocumentKey(hostile), layout(f"user {index}"), expected_version=None)
        store.write(DocumentKey("bob", hostile), layout(f"layout {index}"), expected_version=None)

    for index, hostile in enumerate(HOSTILE_IDS):
        as_user = store.read(DocumentKey(hostile))
        as_layout = store.read(DocumentKey("bob", hostile))
        assert as_user is not None and as_user.document == layout(f"user {index}")
        assert as_layout is not None and as_layout.document == layout(f"layout {index}")
    assert store.layout_ids("bob") == sorted(HOSTILE_IDS)


def test_every_name_under_the_root_is_a_bounded_hash_derived_name(
    root: Path, store: JSONFileStorage
) -> None:
    for hostile in HOSTILE_IDS:
        store.write(DocumentKey(hostile, hostile), layout("x"), expected_version=None)

    names = [path.name for path in root.rglob("*")]

    assert names
    assert all(OUR_FILE_NAME.fullmatch(name) for name in names), names
    assert max(len(name) for name in names) <= 105
    assert all(path.parent.parent == root for path in root.glob("*/*"))


def test_distinct_ids_never_share_a_file_even_on_case_folding_normalizing_file_systems(
    store: JSONFileStorage,
) -> None:
    keys = [DocumentKey(hostile) for hostile in HOSTILE_IDS]
    keys += [DocumentKey("bob", hostile) for hostile in HOSTILE_IDS]

    paths = [str(store.document_path(key)) for key in keys]
    # What a case-insensitive, Unicode-normalizing file system (APFS, NTFS) would compare.
    folded = {unicodedata.normalize("NFKC", path).casefold() for path in paths}

    assert len(folded) == len(keys)


def test_alice_capital_alice_and_fullwidth_alice_are_three_separate_users(
    store: JSONFileStorage,
) -> None:
    users = ["alice", "Alice", FULLWIDTH_ALICE]
    for user in users:
        store.write(DocumentKey(user), layout(f"owned by {user}"), expected_version=None)

    documents = [store.read(DocumentKey(user)) for user in users]

    assert [stored.document if stored else None for stored in documents] == [
        layout(f"owned by {user}") for user in users
    ]
    assert len({store.document_path(DocumentKey(user)).parent for user in users}) == 3


@pytest.mark.parametrize("bad_id", ["", "\x00", "a\x00b", "tab\t", "x" * 300])
def test_ids_no_file_could_hold_are_refused_before_anything_is_created(
    root: Path, store: JSONFileStorage, bad_id: str
) -> None:
    with pytest.raises(ValidationError):
        store.layout_ids(bad_id)
    with pytest.raises(ValidationError):
        store.write(DocumentKey(bad_id), layout("x"), expected_version=None)

    assert list(root.iterdir()) == []


def test_a_document_file_moved_to_another_documents_name_is_refused(
    store: JSONFileStorage,
) -> None:
    alice, mallory = DocumentKey("alice"), DocumentKey("mallory")
    store.write(alice, layout("alice's"), expected_version=None)
    store.write(mallory, layout("mallory's"), expected_version=None)
    forged = store.document_path(mallory).read_bytes()

    store.document_path(alice).write_bytes(forged)

    with pytest.raises(CorruptStoreError, match="ids of another document") as raised:
        store.read(alice)
    assert raised.value.path == store.document_path(alice)


# -- symbolic links planted inside the store --------------------------------------------


def test_a_symlink_planted_at_the_document_file_is_refused_and_its_target_untouched(
    store: JSONFileStorage, canary: Path
) -> None:
    key = DocumentKey("alice")
    store.write(DocumentKey("alice", "other"), layout("x"), expected_version=None)
    target = store.document_path(key)
    target.symlink_to(canary)

    with pytest.raises(CorruptStoreError) as on_read:
        store.read(key)
    with pytest.raises(CorruptStoreError) as on_write:
        store.write(key, layout("overwrite?"), expected_version=None)

    assert on_read.value.path == target and on_write.value.path == target
    assert target.is_symlink()
    assert canary.read_bytes() == b"precious bytes outside the store\n"


def test_a_symlink_swapped_in_for_an_existing_document_is_refused(
    store: JSONFileStorage, canary: Path
) -> None:
    key = DocumentKey("alice")
    store.write(key, layout("v1"), expected_version=None)
    target = store.document_path(key)
    target.unlink()
    target.symlink_to(canary)

    with pytest.raises(CorruptStoreError):
        store.write(key, layout("v2"), expected_version=1)

    assert canary.read_bytes() == b"precious bytes outside the store\n"
    assert target.is_symlink()


@pytest.mark.parametrize("dangling", [False, True], ids=["to-canary", "dangling"])
def test_a_symlink_planted_at_the_lock_file_is_refused_and_its_target_untouched(
    tmp_path: Path, store: JSONFileStorage, canary: Path, dangling: bool
) -> None:
    key = DocumentKey("alice")
    store.write(DocumentKey("alice", "other"), layout("x"), expected_version=None)
    lock_path = store.document_path(key).with_suffix(".lock")
    victim = tmp_path / "would-be-created" if dangling else canary
    lock_path.symlink_to(victim)

    with pytest.raises(CorruptStoreError) as raised:
        store.write(key, layout("v1"), expected_version=None)

    assert raised.value.path == lock_path
    assert canary.read_bytes() == b"precious bytes outside the store\n"
    assert not (tmp_path / "would-be-created").exists()
    assert store.read(key) is None


@pytest.mark.parametrize("existing", [False, True], ids=["new-document", "existing-document"])
def test_a_symlink_planted_at_the_history_file_is_refused_and_its_target_untouched(
    store: JSONFileStorage, canary: Path, existing: bool
) -> None:
    key = DocumentKey("alice")
    store.write(DocumentKey("alice", "other"), layout("x"), expected_version=None)
    if existing:
        store.write(key, layout("v1"), expected_version=None)
    history_file = history_path(store, key)
    history_file.unlink(missing_ok=True)
    history_file.symlink_to(canary)

    with pytest.raises(CorruptStoreError) as raised:
        store.write(key, layout("next"), expected_version=1 if existing else None)

    assert raised.value.path == history_file
    assert history_file.is_symlink()
    assert canary.read_bytes() == b"precious bytes outside the store\n"
    stored = store.read(key)
    assert (stored.version if stored else None) == (1 if existing else None)
    assert temp_files(store.root) == []


def test_a_user_folder_replaced_by_a_symlink_is_refused_and_nothing_lands_outside(
    tmp_path: Path, store: JSONFileStorage
) -> None:
    key = DocumentKey("alice")
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = store.document_path(key).parent
    folder.symlink_to(outside, target_is_directory=True)

    with pytest.raises(CorruptStoreError) as on_write:
        store.write(key, layout("v1"), expected_version=None)
    with pytest.raises(CorruptStoreError):
        store.read(key)

    assert on_write.value.path == folder
    assert list(outside.iterdir()) == []


# -- S14: corrupt files are refused and never overwritten -------------------------------


def _newer_format(good: bytes, other: bytes) -> bytes:
    return good.replace(b'"format":1', b'"format":99')


def _foreign_ids(good: bytes, other: bytes) -> bytes:
    return other


def _tampered_document(good: bytes, other: bytes) -> bytes:
    return good.replace(b'"theme":"dark"', b'"theme":"pink"')


def _wrong_field_type(good: bytes, other: bytes) -> bytes:
    parsed = orjson.loads(good)
    parsed["version"] = "1"
    return orjson.dumps(parsed, option=orjson.OPT_INDENT_2)


CORRUPTIONS: dict[str, Callable[[bytes, bytes], bytes]] = {
    "empty": lambda good, other: b"",
    "truncated": lambda good, other: good[: len(good) // 2],
    "random bytes": lambda good, other: random.Random(14).randbytes(300),
    "json array": lambda good, other: b"[1, 2, 3]\n",
    "json string": lambda good, other: b'"a layout"',
    "object of another shape": lambda good, other: b'{"widgets": []}\n',
    "document not an object": lambda good, other: (
        good.replace(b'"document":{', b'"document":[{').replace(b"}\n", b"]\n")[:-2] + b"]}\n"
    ),
    "newer format": _newer_format,
    "utf-8 bom": lambda good, other: b"\xef\xbb\xbf" + good,
    "ids of another user": _foreign_ids,
    "document changed behind its checksum": _tampered_document,
    "version of the wrong type": _wrong_field_type,
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_corrupt_document_file_is_refused_for_reads_and_writes_and_left_byte_identical(
    store: JSONFileStorage, corruption: str
) -> None:
    alice, bob = DocumentKey("alice"), DocumentKey("bob")
    store.write(alice, layout("alice v1"), expected_version=None)
    store.write(bob, layout("bob v1"), expected_version=None)
    path = store.document_path(alice)
    corrupt = CORRUPTIONS[corruption](path.read_bytes(), store.document_path(bob).read_bytes())
    path.write_bytes(corrupt)

    refused: list[CorruptStoreError] = []
    for attempt in (
        lambda: store.read(alice),
        lambda: store.versions(alice),
        lambda: store.layout_ids("alice"),
        lambda: store.write(alice, layout("alice v2"), expected_version=1),
        lambda: store.write(alice, layout("fresh"), expected_version=None),
        lambda: store.delete(alice),
    ):
        with pytest.raises(CorruptStoreError) as raised:
            attempt()
        refused.append(raised.value)

    assert all(error.path == path and str(path) in str(error) for error in refused)
    assert path.read_bytes() == corrupt
    assert temp_files(store.root) == []
    assert store.write(bob, layout("bob v2"), expected_version=1) == 2


def test_a_newer_format_is_reported_as_newer(store: JSONFileStorage) -> None:
    key = DocumentKey("alice")
    store.write(key, layout("v1"), expected_version=None)
    path = store.document_path(key)
    path.write_bytes(path.read_bytes().replace(b'"format":1', b'"format":2'))

    with pytest.raises(CorruptStoreError, match="newer"):
        store.read(key)


def test_a_hand_formatted_but_valid_document_file_still_reads(store: JSONFileStorage) -> None:
    key = DocumentKey("alice")
    store.write(key, layout("v1"), expected_version=None)
    path = store.document_path(key)
    path.write_bytes(orjson.dumps(orjson.loads(path.read_bytes()), option=orjson.OPT_INDENT_2))

    stored = store.read(key)
    version = store.write(key, layout("v2"), expected_version=1)

    assert stored is not None and stored.document == layout("v1")
    assert version == 2


def test_a_history_file_shorter_than_its_document_says_is_refused_and_kept(
    store: JSONFileStorage,
) -> None:
    key = DocumentKey("alice")
    store.write(key, layout("v1"), expected_version=None)
    store.write(key, layout("v2"), expected_version=1)
    history_file = history_path(store, key)
    cut = history_file.read_bytes()[:-10]
    history_file.write_bytes(cut)

    with pytest.raises(CorruptStoreError) as on_versions:
        store.versions(key)
    with pytest.raises(CorruptStoreError):
        store.write(key, layout("v3"), expected_version=2)

    assert on_versions.value.path == history_file
    assert history_file.read_bytes() == cut
    stored = store.read(key)
    assert stored is not None and stored.version == 2


def test_a_missing_history_file_is_reported_as_corrupt(store: JSONFileStorage) -> None:
    key = DocumentKey("alice")
    store.write(key, layout("v1"), expected_version=None)
    history_file = history_path(store, key)
    history_file.unlink()

    with pytest.raises(CorruptStoreError, match="missing") as raised:
        store.versions(key)

    assert raised.value.path == history_file


# -- stale temp files ---------------------------------------------------------------------


def test_a_leftover_temp_file_of_ours_is_removed_at_open_and_foreign_files_are_kept(
    root: Path, store: JSONFileStorage
) -> None:
    key = DocumentKey("alice")
    store.write(key, layout("v1"), expected_version=None)
    folder = store.document_path(key).parent
    stem = store.document_path(key).stem
    leftover = folder / f".dptmp.{stem}.0123456789abcdef"
    leftover.write_bytes(b'{"half a save')
    foreign = [folder / "notes.txt", folder / ".dptmp.not-ours", root / ".dptmp.x.0123456789abcdef"]
    for path in foreign:
        path.write_bytes(b"someone else's")

    reopened = JSONFileStorage(root)
    stored = reopened.read(key)
    reopened.close()

    assert not leftover.exists()
    assert all(path.read_bytes() == b"someone else's" for path in foreign)
    assert stored is not None and stored.document == layout("v1")


def test_a_temp_file_of_a_save_in_flight_elsewhere_is_not_removed_at_open(
    root: Path, store: JSONFileStorage
) -> None:
    key = DocumentKey("alice")
    store.write(key, layout("v1"), expected_version=None)
    document_path = store.document_path(key)
    in_flight = document_path.parent / f".dptmp.{document_path.stem}.fedcba9876543210"
    in_flight.write_bytes(b"being written")
    other_writer = filelock.FileLock(document_path.with_suffix(".lock"), thread_local=False)

    with other_writer:
        JSONFileStorage(root).close()

    assert in_flight.read_bytes() == b"being written"


# -- the history commit protocol ----------------------------------------------------------


def test_history_lines_past_the_committed_end_are_ignored_then_trimmed_by_the_next_write(
    store: JSONFileStorage,
) -> None:
    key = DocumentKey("alice")
    store.write(key, layout("v1"), expected_version=None)
    store.write(key, layout("v2"), expected_version=1)
    history_file = history_path(store, key)
    with history_file.open("ab") as history:
        history.write(b'{"version":3,"checksum":"orphan of a killed save"}\n{"version":4,"chec')

    listed = [record.version for record in store.versions(key)]
    store.write(key, layout("v3"), expected_version=2)

    assert listed == [2, 1]
    lines = history_lines(store, key)
    assert [orjson.loads(line)["version"] for line in lines] == [1, 2, 3]
    assert [record.version for record in store.versions(key)] == [3, 2, 1]


def test_a_history_left_by_a_delete_cut_short_is_emptied_by_the_next_first_write(
    store: JSONFileStorage,
) -> None:
    key = DocumentKey("alice")
    store.write(key, layout("v1"), expected_version=None)
    store.write(key, layout("v2"), expected_version=1)
    store.document_path(key).unlink()  # a delete killed between its two unlinks

    version = store.write(key, layout("again"), expected_version=None)

    assert version == 1
    assert [record.version for record in store.versions(key)] == [1]
    assert len(history_lines(store, key)) == 1


def test_history_chain_links_each_record_to_its_parent(store: JSONFileStorage) -> None:
    key = DocumentKey("alice")
    for version in range(1, 6):
        store.write(
            key, layout(f"v{version}"), expected_version=None if version == 1 else version - 1
        )

    records = store.versions(key, limit=10)
    stored = store.read(key)

    assert [record.version for record in records] == [5, 4, 3, 2, 1]
    assert stored is not None and records[0].checksum == stored.checksum
    assert all(
        newer.parent_checksum == older.checksum for newer, older in itertools.pairwise(records)
    )
    assert records[-1].parent_checksum is None
    assert [r.version for r in store.versions(key, before=4, limit=2)] == [3, 2]


def test_delete_removes_document_and_history_and_a_second_delete_is_not_found(
    store: JSONFileStorage,
) -> None:
    key = DocumentKey("alice")
    store.write(key, layout("v1"), expected_version=None)
    document_path = store.document_path(key)

    store.delete(key)

    assert not document_path.exists()
    assert list(document_path.parent.glob("*.jsonl")) == []
    assert store.versions(key) == []
    with pytest.raises(NotFoundError):
        store.delete(key)
    with pytest.raises(NotFoundError):
        store.delete(DocumentKey("never-seen"))


def test_read_returns_a_fresh_document_each_time(store: JSONFileStorage) -> None:
    key = DocumentKey("alice")
    store.write(key, layout("v1"), expected_version=None)
    first = store.read(key)
    assert first is not None

    first.document["theme"] = "changed by the caller"
    second = store.read(key)

    assert second is not None and second.document == layout("v1")


def test_a_conflicting_write_leaves_no_history_line_behind(store: JSONFileStorage) -> None:
    key = DocumentKey("alice")
    store.write(key, layout("v1"), expected_version=None)
    before = history_path(store, key).read_bytes()

    with pytest.raises(ConflictError):
        store.write(key, layout("stale"), expected_version=None)

    assert history_path(store, key).read_bytes() == before


# -- compaction (history retention) -------------------------------------------------------


def write_versions(store: JSONFileStorage, key: DocumentKey, count: int) -> None:
    for version in range(1, count + 1):
        store.write(key, layout(f"v{version}"), expected_version=version - 1 or None)


def test_compact_removes_records_and_stores_snapshots_in_a_new_history_file(
    store: JSONFileStorage,
) -> None:
    key = DocumentKey("alice")
    write_versions(store, key, 5)
    old_history = history_path(store, key)
    before = store.read(key)

    store.compact(key, remove=[1, 2], snapshots={3: {"rebuilt": True}})

    records = store.versions(key)
    assert [record.version for record in records] == [5, 4, 3]
    assert records[-1].snapshot == {"rebuilt": True}
    assert not old_history.exists()
    assert len(list(old_history.parent.glob("*.jsonl"))) == 1
    assert store.read(key) == before
    assert store.write(key, layout("v6"), expected_version=5) == 6
    assert [record.version for record in store.versions(key)] == [6, 5, 4, 3]


def test_compact_refuses_to_remove_the_newest_record_and_changes_nothing(
    store: JSONFileStorage,
) -> None:
    key = DocumentKey("alice")
    write_versions(store, key, 3)
    history_before = history_path(store, key).read_bytes()

    with pytest.raises(ConfigurationError, match="newest"):
        store.compact(key, remove=[2, 3], snapshots={})

    assert history_path(store, key).read_bytes() == history_before
    assert [record.version for record in store.versions(key)] == [3, 2, 1]


def test_compact_of_a_missing_document_does_nothing(root: Path, store: JSONFileStorage) -> None:
    store.compact(DocumentKey("nobody"), remove=[1], snapshots={})

    assert list(root.iterdir()) == []


def test_a_history_file_left_by_a_crashed_compaction_is_ignored_then_replaced(
    store: JSONFileStorage,
) -> None:
    key = DocumentKey("alice")
    write_versions(store, key, 3)
    document_path = store.document_path(key)
    stray = document_path.with_suffix(".history.1.jsonl")
    stray.write_bytes(b'{"version": 99, "half written')

    listed = [record.version for record in store.versions(key)]
    store.compact(key, remove=[1], snapshots={})

    assert listed == [3, 2, 1]
    assert [record.version for record in store.versions(key)] == [3, 2]
    assert [path.name for path in document_path.parent.glob("*.jsonl")] == [stray.name]
    assert orjson.loads(stray.read_bytes().splitlines()[0])["version"] == 2


# -- looking up history near *before* -------------------------------------------------------
# versions() binary-searches the history file and reads only the lines near *before*; a
# block size far below a line's length makes every line straddle blocks.


@pytest.fixture(params=[64, jsonfile._BLOCK_SIZE], ids=["small blocks", "default blocks"])
def block_size(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(jsonfile, "_BLOCK_SIZE", request.param)
    return cast(int, request.param)


def newest_first(kept: list[int], before: int | None, limit: int) -> list[int]:
    """What versions(before=..., limit=...) must list when the history holds *kept*."""
    return [v for v in sorted(kept, reverse=True) if before is None or v < before][:limit]


def listed(store: JSONFileStorage, key: DocumentKey, before: int | None, limit: int) -> list[int]:
    return [record.version for record in store.versions(key, before=before, limit=limit)]


def damage_line(path: Path, index: int) -> bytes:
    """Overwrite line *index* of *path* with as many bytes that are not JSON; return the file."""
    lines = path.read_bytes().split(b"\n")
    lines[index] = b"#" * len(lines[index])
    damaged = b"\n".join(lines)
    path.write_bytes(damaged)
    return damaged


@pytest.mark.usefixtures("block_size")
def test_a_lookup_at_the_start_middle_or_end_returns_what_a_full_scan_would(
    store: JSONFileStorage,
) -> None:
    key = DocumentKey("alice")
    write_versions(store, key, 40)
    everything = store.versions(key, limit=100)

    for before in [None, -1, 0, *range(1, 44)]:
        for limit in (0, 1, 3, 40, 100):
            found = store.versions(key, before=before, limit=limit)
            assert found == [r for r in everything if before is None or r.version < before][:limit]
    assert [record.version for record in everything] == newest_first(list(range(1, 41)), None, 100)


@pytest.mark.usefixtures("block_size")
def test_a_lookup_steps_over_the_gaps_retention_left(store: JSONFileStorage) -> None:
    key = DocumentKey("alice")
    write_versions(store, key, 30)
    removed = [*range(1, 8), *range(12, 20), 25]
    store.compact(key, remove=removed, snapshots={})
    kept = [version for version in range(1, 31) if version not in removed]

    for before in [None, *range(0, 33)]:
        for limit in (1, 3, 30):
            assert listed(store, key, before, limit) == newest_first(kept, before, limit)


@pytest.mark.usefixtures("block_size")
def test_lines_past_the_committed_end_are_invisible_to_every_lookup(
    store: JSONFileStorage,
) -> None:
    key = DocumentKey("alice")
    write_versions(store, key, 20)
    with history_path(store, key).open("ab") as history:
        history.write(b'{"version":21,"checksum":"orphan of a killed save"}\n{"version":22,"che')

    for before in (None, 1, 5, 19, 20, 21, 22, 23, 100):
        assert listed(store, key, before, 3) == newest_first(list(range(1, 21)), before, 3)


@pytest.mark.usefixtures("block_size")
def test_a_damaged_line_a_lookup_reads_raises_corrupt_naming_the_file_and_is_kept(
    store: JSONFileStorage,
) -> None:
    key = DocumentKey("alice")
    write_versions(store, key, 30)
    history_file = history_path(store, key)
    damaged = damage_line(history_file, 14)  # version 15

    with pytest.raises(CorruptStoreError, match="unreadable") as raised:
        store.versions(key, before=18, limit=5)

    assert raised.value.path == history_file
    assert history_file.read_bytes() == damaged


@pytest.mark.usefixtures("block_size")
def test_lines_out_of_order_where_a_lookup_reads_raise_corrupt(store: JSONFileStorage) -> None:
    key = DocumentKey("alice")
    write_versions(store, key, 30)
    history_file = history_path(store, key)
    lines = history_file.read_bytes().split(b"\n")
    lines[11], lines[12] = lines[12], lines[11]  # versions 12 and 13
    history_file.write_bytes(b"\n".join(lines))

    with pytest.raises(CorruptStoreError, match="out of order") as raised:
        store.versions(key, before=15, limit=5)

    assert raised.value.path == history_file


@pytest.mark.usefixtures("block_size")
def test_a_damaged_line_outside_a_lookup_goes_unnoticed_there_and_verify_finds_it(
    root: Path,
) -> None:
    store = JSONFileStorage(root, fsync=False)
    key = DocumentKey("alice")
    write_versions(store, key, 600)  # more than one page of VersionService.verify
    service = VersionService(store)
    assert service.verify(key).ok
    history_file = history_path(store, key)
    damaged = damage_line(history_file, 2)  # version 3

    near_the_end = listed(store, key, 590, 3)
    with pytest.raises(CorruptStoreError) as by_a_lookup:
        store.versions(key, before=6, limit=5)
    with pytest.raises(CorruptStoreError) as by_verify:
        service.verify(key)

    assert near_the_end == [589, 588, 587]
    assert by_a_lookup.value.path == by_verify.value.path == history_file
    assert history_file.read_bytes() == damaged
    store.close()


# -- the lock -----------------------------------------------------------------------------

_HOLD_LOCK = """
import sys, filelock
lock = filelock.FileLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_lock_held_by_another_process_past_lock_timeout_raises_storage_unavailable(
    root: Path,
) -> None:
    key = DocumentKey("alice")
    store = JSONFileStorage(root, lock_timeout=0.2)
    store.write(DocumentKey("alice", "other"), layout("x"), expected_version=None)
    lock_path = store.document_path(key).with_suffix(".lock")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(lock_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        started = time.monotonic()

        with pytest.raises(StorageUnavailableError, match="locked"):
            store.write(key, layout("v1"), expected_version=None)

        waited = time.monotonic() - started
    finally:
        holder.communicate("", timeout=30)
    assert 0.15 <= waited < 5
    assert store.read(key) is None
    assert store.write(key, layout("v1"), expected_version=None) == 1
    store.close()


# -- opening and closing ------------------------------------------------------------------


def test_a_missing_root_is_created_with_its_parents(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b" / "layouts"

    JSONFileStorage(root).close()

    assert root.is_dir()


def test_a_root_that_is_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "layouts"
    path.write_bytes(b"not a folder")

    with pytest.raises(ConfigurationError, match="not a folder"):
        JSONFileStorage(path)


def test_a_missing_root_opened_read_only_is_refused_and_not_created(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        JSONFileStorage(tmp_path / "missing", read_only=True)

    assert not (tmp_path / "missing").exists()


def test_a_negative_lock_timeout_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="lock_timeout"):
        JSONFileStorage(tmp_path, lock_timeout=-1)


def test_a_store_opened_read_only_reads_and_refuses_writes(
    root: Path, store: JSONFileStorage
) -> None:
    key = DocumentKey("alice")
    store.write(key, layout("v1"), expected_version=None)
    reader = JSONFileStorage(root, read_only=True)

    stored = reader.read(key)
    with pytest.raises(StoragePermissionError, match="read-only") as raised:
        reader.write(key, layout("v2"), expected_version=1)
    with pytest.raises(StoragePermissionError):
        reader.delete(key)

    assert stored is not None and stored.version == 1
    assert raised.value.path == root
    assert [record.version for record in reader.versions(key)] == [1]
    reader.close()


def test_close_is_idempotent_and_a_closed_store_refuses_calls(store: JSONFileStorage) -> None:
    store.close()
    store.close()

    with pytest.raises(ConfigurationError, match="closed"):
        store.read(DocumentKey("alice"))
    with pytest.raises(ConfigurationError, match="closed"):
        store.write(DocumentKey("alice"), layout("x"), expected_version=None)

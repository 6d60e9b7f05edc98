"""Outbox: durable, ordered per document, crash-safe, shared by processes (S08, S09, S21).

Crash cases run real child interpreters and kill them with SIGKILL, after an
acknowledged append or at the outbox's named fault points, then reopen the folder.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import filelock
import pytest

from dashpersist import _faults
from dashpersist.errors import (
    ConfigurationError,
    CorruptStoreError,
    NotFoundError,
    StorageError,
    StorageUnavailableError,
    ValidationError,
)
from dashpersist.outbox import COMPACT_MIN_FINISHED, Outbox, OutboxEntry
from dashpersist.storage.protocol import DocumentKey

REPO_ROOT = Path(__file__).resolve().parents[2]
ALICE = DocumentKey("alice", "main")
BOB = DocumentKey("bob")
FILE_NAME = re.compile(r"[0-9a-f]{64}\.jsonl")


def entry(key: DocumentKey, marker: str, *, base_version: int | None = 1) -> OutboxEntry:
    return OutboxEntry.create(
        key,
        {"widgets": [{"id": "w1", "title": marker}], "settings": {"api_key": "ciphertext"}},
        base_version=base_version,
        change_type="auto",
        description=f"edit {marker}",
        device_id="laptop",
        created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )


def titles(entries: list[OutboxEntry]) -> list[str]:
    found = []
    for item in entries:
        widgets = item.document["widgets"]
        assert isinstance(widgets, list) and isinstance(widgets[0], dict)
        found.append(str(widgets[0]["title"]))
    return found


def only_file(folder: Path) -> Path:
    (path,) = [p for p in folder.iterdir() if FILE_NAME.fullmatch(p.name)]
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "outbox"


@pytest.fixture
def outbox(folder: Path) -> Outbox:
    return Outbox(folder)


# -- round trip and order -----------------------------------------------------------------


def test_an_appended_entry_reads_back_equal_after_reopening(folder: Path, outbox: Outbox) -> None:
    appended = entry(ALICE, "v1")
    outbox.append(appended)
    outbox.close()

    reopened = Outbox(folder)

    assert reopened.entries(ALICE) == [appended]
    assert reopened.keys() == [ALICE]
    assert reopened.entries(BOB) == []


def test_entries_keep_append_order_per_document(outbox: Outbox) -> None:
    for marker in ("a1", "b1", "a2", "a3", "b2"):
        outbox.append(entry(ALICE if marker[0] == "a" else BOB, marker))

    alice, bob, everything = outbox.entries(ALICE), outbox.entries(BOB), outbox.entries()

    assert titles(alice) == ["a1", "a2", "a3"]
    assert titles(bob) == ["b1", "b2"]
    assert titles(everything) == ["a1", "a2", "a3", "b1", "b2"]  # documents sorted by key
    assert outbox.keys() == [ALICE, BOB]


def test_mark_done_removes_an_entry_and_is_harmless_twice(outbox: Outbox) -> None:
    first, second = entry(ALICE, "v1"), entry(ALICE, "v2")
    outbox.append(first)
    outbox.append(second)

    outbox.mark_done(first.entry_id, version=2)
    outbox.mark_done(first.entry_id, version=2)

    assert outbox.entries(ALICE) == [second]


def test_a_document_whose_entries_are_all_done_leaves_no_file(folder: Path, outbox: Outbox) -> None:
    appended = entry(ALICE, "v1")
    outbox.append(appended)

    outbox.mark_done(appended.entry_id, version=2)

    assert outbox.keys() == []
    assert not any(FILE_NAME.fullmatch(p.name) for p in folder.iterdir())
    with pytest.raises(NotFoundError):  # forgotten once its file is gone
        outbox.mark_done(appended.entry_id, version=2)


def test_many_finished_entries_are_compacted_away_keeping_the_pending_ones(
    folder: Path,
) -> None:
    outbox = Outbox(folder, fsync=False)
    appended = [entry(ALICE, f"v{index}") for index in range(COMPACT_MIN_FINISHED + 3)]
    for item in appended:
        outbox.append(item)
    size_before = only_file(folder).stat().st_size

    for item in appended[:COMPACT_MIN_FINISHED]:
        outbox.mark_done(item.entry_id, version=5)

    assert only_file(folder).stat().st_size < size_before / 10
    assert len(only_file(folder).read_bytes().splitlines()) == 3
    assert outbox.entries(ALICE) == appended[COMPACT_MIN_FINISHED:]
    assert Outbox(folder).entries(ALICE) == appended[COMPACT_MIN_FINISHED:]


# -- blocked entries (S09) ----------------------------------------------------------------


def test_a_blocked_entry_stops_its_documents_queue_but_not_others(outbox: Outbox) -> None:
    a1, a2, a3, b1 = entry(ALICE, "a1"), entry(ALICE, "a2"), entry(ALICE, "a3"), entry(BOB, "b1")
    for item in (a1, a2, a3, b1):
        outbox.append(item)

    outbox.block(a2.entry_id, "the store refuses \\u0000 in strings")
    outbox.mark_done(a1.entry_id, version=2)

    assert outbox.entries(ALICE) == []  # a3 waits behind the blocked a2
    assert outbox.entries(BOB) == [b1]
    assert outbox.blocked() == [(a2, "the store refuses \\u0000 in strings")]
    assert outbox.blocked(BOB) == []
    assert outbox.keys() == [ALICE, BOB]


def test_discarding_the_blocked_entry_releases_the_rest_of_its_queue(
    folder: Path, outbox: Outbox
) -> None:
    a1, a2 = entry(ALICE, "a1"), entry(ALICE, "a2")
    outbox.append(a1)
    outbox.append(a2)
    outbox.block(a1.entry_id, "refused")

    discarded = outbox.discard(a1.entry_id)

    assert discarded == a1
    assert outbox.entries(ALICE) == [a2]
    assert outbox.blocked() == []
    assert Outbox(folder).entries(ALICE) == [a2]
    with pytest.raises(NotFoundError):
        outbox.export(a1.entry_id)


def test_export_returns_the_entry_as_plain_json_with_its_status(outbox: Outbox) -> None:
    blocked, pending = entry(ALICE, "a1"), entry(ALICE, "a2")
    outbox.append(blocked)
    outbox.append(pending)
    outbox.block(blocked.entry_id, "refused for good")

    exported = outbox.export(blocked.entry_id)

    assert exported["entry_id"] == blocked.entry_id
    assert exported["document"] == blocked.document
    assert exported["created_at"] == "2026-01-02T03:04:05+00:00"
    assert (exported["status"], exported["reason"]) == ("blocked", "refused for good")
    assert outbox.export(pending.entry_id)["status"] == "pending"


def test_unknown_entry_ids_are_refused(outbox: Outbox) -> None:
    unknown = "0" * 32

    for call in (
        lambda: outbox.mark_done(unknown, version=1),
        lambda: outbox.block(unknown, "x"),
        lambda: outbox.discard(unknown),
        lambda: outbox.export(unknown),
    ):
        with pytest.raises(NotFoundError):
            call()


# -- refusing bad input and damaged files -------------------------------------------------


def test_a_document_json_cannot_hold_is_refused_and_nothing_is_written(
    folder: Path, outbox: Outbox
) -> None:
    bad = OutboxEntry.create(ALICE, {"ratio": float("nan")}, base_version=None)

    with pytest.raises(ValidationError):
        outbox.append(bad)

    assert outbox.entries() == []
    assert not any(FILE_NAME.fullmatch(p.name) for p in folder.iterdir())


def test_an_entry_with_a_naive_time_or_a_bad_id_is_refused() -> None:
    with pytest.raises(ValidationError):
        OutboxEntry("0" * 32, "alice", "main", None, {}, "auto", created_at=datetime(2026, 1, 1))
    with pytest.raises(ValidationError):
        OutboxEntry("../../etc", "alice", "main", None, {}, "auto")


def test_a_torn_last_line_is_ignored_and_trimmed_before_the_next_append(
    folder: Path, outbox: Outbox
) -> None:
    first, second = entry(ALICE, "v1"), entry(ALICE, "v2")
    outbox.append(first)
    with only_file(folder).open("ab") as file:
        file.write(b'{"kind":"entry","format":1,"entry_id":"ab')

    seen_torn = outbox.entries(ALICE)
    outbox.append(second)

    assert seen_torn == [first]
    assert outbox.entries(ALICE) == [first, second]
    assert only_file(folder).read_bytes().count(b"\n") == 2
    assert b'"entry_id":"ab' not in only_file(folder).read_bytes()


BAD_LINES = {
    "not json": b"{not json",
    "not an object": b"[1, 2]",
    "wrong shape": b'{"kind":"entry","entry_id":"x"}',
    "unknown kind": b'{"kind":"rename","entry_id":"x"}',
    "marker for an unknown entry": b'{"entry_id":"' + b"f" * 32 + b'","kind":"done","version":3}',
}


@pytest.mark.parametrize("damage", sorted(BAD_LINES))
def test_a_damaged_line_is_reported_with_file_and_line_and_other_documents_keep_working(
    folder: Path, outbox: Outbox, damage: str
) -> None:
    a1, a2, b1 = entry(ALICE, "a1"), entry(ALICE, "a2"), entry(BOB, "b1")
    outbox.append(a1)
    path = only_file(folder)
    with path.open("ab") as file:
        file.write(BAD_LINES[damage] + b"\n")
    outbox.append(a2)
    outbox.append(b1)
    damaged_bytes = path.read_bytes()

    with pytest.raises(CorruptStoreError) as raised:
        outbox.entries(ALICE)
    with pytest.raises(CorruptStoreError):
        outbox.mark_done(a1.entry_id, version=2)

    assert str(path) in str(raised.value) and "line 2" in str(raised.value)
    assert raised.value.path == path
    assert outbox.entries(BOB) == [b1]
    assert outbox.keys() == [ALICE, BOB]  # still listed, so a replay loop meets the error
    outbox.mark_done(b1.entry_id, version=1)
    assert outbox.entries(BOB) == []
    assert path.read_bytes() == damaged_bytes  # left as found
    with pytest.raises(CorruptStoreError):
        outbox.entries()  # the whole-outbox view never skips a document silently


def test_an_entry_copied_into_another_documents_file_is_refused_and_logged(
    folder: Path, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    outbox.append(entry(ALICE, "a1"))
    alice_path = only_file(folder)
    copy_path = folder / f"{'b' * 64}.jsonl"
    copy_path.write_bytes(alice_path.read_bytes())

    keys = outbox.keys()

    # The copy names no document of its own: keys() cannot list it, so it logs it.
    assert keys == [ALICE]
    assert any(str(copy_path) in record.getMessage() for record in caplog.records)
    with pytest.raises(CorruptStoreError, match="another document"):
        outbox.entries()


# -- ids never become paths (S21) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("user_id", "layout_id"),
    [("../x", "default"), ("alice", "../../etc/passwd"), ("a/b\\c", ".."), ("/abs", "C:\\x")],
)
def test_file_names_never_contain_raw_ids(
    tmp_path: Path, folder: Path, outbox: Outbox, user_id: str, layout_id: str
) -> None:
    key = DocumentKey(user_id, layout_id)
    appended = entry(key, "v1")

    outbox.append(appended)

    assert outbox.entries(key) == [appended]
    assert outbox.keys() == [key]
    names = sorted(p.name for p in folder.iterdir())
    assert len(names) == 2 and names[0] == ".outbox.lock" and FILE_NAME.fullmatch(names[1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outbox"]


def test_the_outbox_folder_is_created_private(folder: Path) -> None:
    Outbox(folder / "nested")

    mode = stat.S_IMODE((folder / "nested").stat().st_mode)

    assert mode == 0o700


def test_a_closed_outbox_refuses_calls(outbox: Outbox) -> None:
    outbox.close()
    outbox.close()

    with pytest.raises(ConfigurationError):
        outbox.entries()


def test_a_lock_held_elsewhere_past_the_timeout_is_storage_unavailable(folder: Path) -> None:
    outbox = Outbox(folder, lock_timeout=0.05)
    holder = filelock.FileLock(folder / ".outbox.lock", thread_local=False)

    with holder, pytest.raises(StorageUnavailableError):
        outbox.append(entry(ALICE, "v1"))

    assert outbox.entries() == []


def test_a_failed_fsync_leaves_no_entry_behind_and_the_next_append_works(
    folder: Path, outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept = entry(ALICE, "kept")
    outbox.append(kept)
    monkeypatch.setitem(_faults._ACTIONS, "outbox_after_append_before_fsync", "raise:EIO")

    with pytest.raises(StorageError):
        outbox.append(entry(ALICE, "failed"))
    monkeypatch.delitem(_faults._ACTIONS, "outbox_after_append_before_fsync")
    later = entry(ALICE, "later")
    outbox.append(later)

    assert outbox.entries(ALICE) == [kept, later]


# -- crashes and other processes (S08) ----------------------------------------------------

CHILD = textwrap.dedent(
    """
    import signal, sys
    from datetime import UTC, datetime
    from dashpersist.outbox import Outbox, OutboxEntry
    from dashpersist.storage.protocol import DocumentKey

    folder, mode, name, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    outbox = Outbox(folder)
    for index in range(count):
        key = DocumentKey("shared") if index % 2 == 0 else DocumentKey(name)
        item = OutboxEntry.create(
            key, {"writer": name, "index": index, "padding": "x" * 5000}, base_version=index + 1
        )
        print("appending", item.entry_id, flush=True)
        outbox.append(item)
        print("acked", item.entry_id, flush=True)
    if mode == "wait":
        signal.pause()
    """
)


def start_child(
    folder: Path, mode: str, name: str, count: int, *, faults: str = ""
) -> subprocess.Popen[str]:
    env = {**os.environ, _faults.FAULTPOINTS_ENV: faults}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(folder), mode, name, str(count)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_an_entry_acked_before_a_sigkill_is_there_after_reopening(folder: Path) -> None:
    child = start_child(folder, "wait", "w1", 1)
    assert child.stdout is not None
    appending = child.stdout.readline().split()
    acked = child.stdout.readline().split()

    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=60)
    reopened = Outbox(folder)

    assert acked == ["acked", appending[1]]
    assert child.returncode == -signal.SIGKILL
    assert [e.entry_id for e in reopened.entries(DocumentKey("shared"))] == [acked[1]]


@pytest.mark.parametrize("point", ["outbox_after_append_before_fsync", "outbox_after_fsync"])
def test_a_child_killed_at_a_fault_point_leaves_the_entry_whole_or_absent(
    folder: Path, point: str
) -> None:
    child = start_child(folder, "exit", "w1", 1, faults=f"{point}=kill")

    out, err = child.communicate(timeout=60)
    reopened = Outbox(folder)
    found = reopened.entries(DocumentKey("shared"))
    after = OutboxEntry.create(DocumentKey("shared"), {"after": True}, base_version=None)
    reopened.append(after)

    assert child.returncode == -signal.SIGKILL, err
    (appending_id,) = [line.split()[1] for line in out.splitlines() if line.startswith("appending")]
    assert "acked" not in out
    assert found == [] or (
        [e.entry_id for e in found] == [appending_id]
        and found[0].document == {"writer": "w1", "index": 0, "padding": "x" * 5000}
    )
    if point == "outbox_after_fsync":
        assert found  # fsynced before the kill: it must be there
    assert reopened.entries(DocumentKey("shared")) == [*found, after]


def test_two_processes_appending_at_once_lose_and_repeat_nothing(folder: Path) -> None:
    count = 40
    children = [start_child(folder, "exit", name, count) for name in ("w1", "w2")]

    outputs = [child.communicate(timeout=120) for child in children]
    outbox = Outbox(folder)
    shared = outbox.entries(DocumentKey("shared"))
    own = {name: outbox.entries(DocumentKey(name)) for name in ("w1", "w2")}

    assert [child.returncode for child in children] == [0, 0], [err for _, err in outputs]
    acked = {
        line.split()[1] for out, _ in outputs for line in out.splitlines() if line[:5] == "acked"
    }
    found = [e.entry_id for e in [*shared, *own["w1"], *own["w2"]]]
    assert len(acked) == 2 * count
    assert sorted(found) == sorted(acked)  # every acked entry, once
    for name in ("w1", "w2"):
        mine = [e.document["index"] for e in shared if e.document["writer"] == name]
        assert mine == list(range(0, count, 2))  # each writer's order kept
        assert [e.document["index"] for e in own[name]] == list(range(1, count, 2))

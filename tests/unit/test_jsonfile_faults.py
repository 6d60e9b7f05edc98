"""JSONFileStorage under faults: fsync errors (S13), a full disk (S11), permissions
(S12) and processes killed at each named fault point (S01).

Every case checks the same things afterwards: the error is the documented one, the
previous version is still the visible one, no temp file is left, and the next write works.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from dashpersist.errors import (
    StorageError,
    StorageFullError,
    StoragePermissionError,
)
from dashpersist.storage.jsonfile import JSONFileStorage
from dashpersist.storage.protocol import DocumentKey
from dashpersist.types import JsonObject

SRC = Path(__file__).resolve().parents[2] / "src"
KEY = DocumentKey("alice", "main")


def layout(marker: str, *, padding: int = 0) -> JsonObject:
    return {"widgets": [{"id": "w1", "title": marker, "notes": "x" * padding}]}


def temp_files(root: Path) -> list[Path]:
    return sorted(root.rglob(".dptmp.*"))


def history_versions(store: JSONFileStorage, key: DocumentKey) -> list[int]:
    document_path = store.document_path(key)
    (history,) = document_path.parent.glob(f"{document_path.stem}.history.*.jsonl")
    return [orjson.loads(line)["version"] for line in history.read_bytes().splitlines()]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "layouts"


@pytest.fixture
def store(root: Path) -> Iterator[JSONFileStorage]:
    opened = JSONFileStorage(root)
    opened.write(KEY, layout("v1"), expected_version=None)
    yield opened
    opened.close()


class FailingCall:
    """Wrap an os function so that chosen calls raise ``OSError(code)``."""

    def __init__(self, real: Callable[..., object], code: int, fail_on: set[int] | None) -> None:
        self.real, self.code, self.fail_on = real, code, fail_on
        self.calls = 0
        self.failed_files: list[str] = []
        self.passed_files: list[str] = []

    def __call__(self, fd: int, *args: object) -> object:
        self.calls += 1
        name = os.readlink(f"/proc/self/fd/{fd}")
        if self.fail_on is None or self.calls in self.fail_on:
            self.failed_files.append(name)
            raise OSError(self.code, os.strerror(self.code))
        self.passed_files.append(name)
        return self.real(fd, *args)


def assert_still_at_version_one(store: JSONFileStorage) -> None:
    stored = store.read(KEY)
    assert stored is not None and (stored.version, stored.document) == (1, layout("v1"))
    assert [record.version for record in store.versions(KEY)] == [1]
    assert temp_files(store.root) == []


# -- S13: fsync fails ---------------------------------------------------------------------

# A save fsyncs the history file (call 1), the temp document file (2), then the folder (3).
FSYNC_BEFORE_COMMIT = {"history fsync": {1}, "temp file fsync": {2}, "every fsync": None}


@pytest.mark.parametrize("failing", sorted(FSYNC_BEFORE_COMMIT))
def test_an_fsync_error_before_the_commit_fails_the_save_and_keeps_the_old_version(
    store: JSONFileStorage, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    fsync = FailingCall(os.fsync, errno.EIO, FSYNC_BEFORE_COMMIT[failing])
    monkeypatch.setattr(os, "fsync", fsync)

    with pytest.raises(StorageError) as raised:
        store.write(KEY, layout("v2"), expected_version=1)

    assert not isinstance(raised.value, StorageFullError | StoragePermissionError)
    assert_still_at_version_one(store)
    assert history_versions(store, KEY) == [1]


def test_the_save_after_a_failed_fsync_writes_fresh_files_and_succeeds(
    store: JSONFileStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    fsync = FailingCall(os.fsync, errno.EIO, {2})
    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(StorageError):
        store.write(KEY, layout("v2"), expected_version=1)

    version = store.write(KEY, layout("v2"), expected_version=1)

    # The file whose fsync failed is never fsynced again: the retry writes a new temp file.
    (failed,) = fsync.failed_files
    assert ".dptmp." in failed
    assert failed not in fsync.passed_files
    assert any(".dptmp." in name for name in fsync.passed_files)
    assert version == 2
    assert [record.version for record in store.versions(KEY)] == [2, 1]
    assert temp_files(store.root) == []


def test_with_fsync_always_failing_reads_keep_working(
    store: JSONFileStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "fsync", FailingCall(os.fsync, errno.EIO, None))

    for attempt in range(3):
        with pytest.raises(StorageError):
            store.write(KEY, layout(f"attempt {attempt}"), expected_version=1)

    assert_still_at_version_one(store)
    assert store.layout_ids("alice") == ["main"]


def test_a_folder_fsync_error_after_the_rename_says_the_new_version_is_in_place(
    store: JSONFileStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "fsync", FailingCall(os.fsync, errno.EIO, {3}))

    with pytest.raises(StorageError, match=r"version 2 .* is in place"):
        store.write(KEY, layout("v2"), expected_version=1)

    monkeypatch.undo()
    stored = store.read(KEY)
    assert stored is not None and stored.version == 2
    assert [record.version for record in store.versions(KEY)] == [2, 1]
    assert temp_files(store.root) == []
    assert store.write(KEY, layout("v3"), expected_version=2) == 3


# -- S11 and friends: os.write fails --------------------------------------------------------

WRITE_ERRORS: dict[str, tuple[int, type[StorageError]]] = {
    "ENOSPC": (errno.ENOSPC, StorageFullError),
    "EDQUOT": (errno.EDQUOT, StorageFullError),
    "EFBIG": (errno.EFBIG, StorageFullError),
    "EACCES": (errno.EACCES, StoragePermissionError),
    "EPERM": (errno.EPERM, StoragePermissionError),
    "EROFS": (errno.EROFS, StoragePermissionError),
    "EIO": (errno.EIO, StorageError),
}
# A save writes the history line in two halves (calls 1 and 2), then the temp file (3).
WRITE_CALLS = {"history append": {1}, "second half of the history line": {2}, "temp file": {3}}


@pytest.mark.parametrize("code_name", sorted(WRITE_ERRORS))
@pytest.mark.parametrize("failing", sorted(WRITE_CALLS))
def test_a_failed_write_raises_the_translated_error_and_keeps_the_old_version(
    store: JSONFileStorage, monkeypatch: pytest.MonkeyPatch, code_name: str, failing: str
) -> None:
    code, expected = WRITE_ERRORS[code_name]
    monkeypatch.setattr(os, "write", FailingCall(os.write, code, WRITE_CALLS[failing]))

    with pytest.raises(expected) as raised:
        store.write(KEY, layout("v2"), expected_version=1)

    monkeypatch.undo()
    if expected is StorageError:
        assert not isinstance(raised.value, StorageFullError | StoragePermissionError)
    else:
        path = getattr(raised.value, "path", None)
        assert path is not None and store.root in path.parents
    assert_still_at_version_one(store)
    assert history_versions(store, KEY) == [1]
    assert store.write(KEY, layout("v2"), expected_version=1) == 2


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs under tmp_path, unmounted afterwards (needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the patched os.write variant covers ENOSPC")
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"could not mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_a_really_full_disk_raises_storage_full_and_the_store_recovers(
    small_tmpfs: Path,
) -> None:
    store = JSONFileStorage(small_tmpfs / "layouts")
    store.write(KEY, layout("v1"), expected_version=None)

    with pytest.raises(StorageFullError) as raised:
        store.write(KEY, layout("too big", padding=400 * 1024), expected_version=1)

    assert raised.value.path is not None and small_tmpfs in raised.value.path.parents
    assert_still_at_version_one(store)
    assert store.write(KEY, layout("fits", padding=20 * 1024), expected_version=1) == 2
    store.close()


# -- S12: permissions, as a child process running as nobody ---------------------------------

_NOBODY_PROBE = "import dashpersist.storage.jsonfile, filelock, orjson"


def _nobody_interpreter() -> tuple[list[str], dict[str, str]] | str:
    """Return a command prefix and environment that run Python as nobody, or why not."""
    if os.geteuid() != 0:
        return "dropping to nobody needs root"
    runuser = shutil.which("runuser")
    if runuser is None:
        return "runuser is not installed"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": os.pathsep.join([str(SRC), sysconfig.get_paths()["purelib"]]),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    # The virtualenv's interpreter may live under a folder nobody cannot enter (/root).
    for candidate in (sys.executable, shutil.which(version), f"/usr/bin/{version}"):
        if candidate is None:
            continue
        command = [runuser, "-u", "nobody", "--", candidate]
        probe = subprocess.run(
            [*command, "-c", _NOBODY_PROBE], env=env, capture_output=True, check=False
        )
        if probe.returncode == 0:
            return command, env
    return f"no {version} interpreter that nobody may run can import dashpersist"


_AS_NOBODY = """
import json, sys
from dashpersist.errors import DashPersistError, StorageError
from dashpersist.storage.jsonfile import JSONFileStorage
from dashpersist.storage.protocol import DocumentKey

root, read_only, action = sys.argv[1], sys.argv[2] == "read-only", sys.argv[3]
def outcome(step):
    try:
        return {"ok": step()}
    except DashPersistError as exc:
        return {"error": type(exc).__name__, "path": str(getattr(exc, "path", None))}
result = {"open": outcome(lambda: JSONFileStorage(root, read_only=read_only) and True)}
if "ok" in result["open"]:
    store = JSONFileStorage(root, read_only=read_only)
    key = DocumentKey("alice", "main")
    stored = store.read(key)
    result["read"] = outcome(lambda: None if stored is None else stored.version)
    result["versions"] = outcome(lambda: [r.version for r in store.versions(key)])
    if action == "write-existing":
        result["write"] = outcome(lambda: store.write(key, {"by": "nobody"}, expected_version=1))
    if action == "write-new-user":
        result["write"] = outcome(
            lambda: store.write(DocumentKey("newcomer"), {"by": "nobody"}, expected_version=None)
        )
print(json.dumps(result))
"""


@pytest.fixture
def shared_folder() -> Iterator[Path]:
    """A folder nobody can reach (pytest's tmp folders are 0700), removed afterwards."""
    reason = _nobody_interpreter()
    if isinstance(reason, str):
        pytest.skip(reason)
    folder = Path(tempfile.mkdtemp(prefix="dashpersist-s12-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


def run_as_nobody(root: Path, *, read_only: bool, action: str = "read") -> dict[str, object]:
    found = _nobody_interpreter()
    assert not isinstance(found, str), found
    command, env = found
    mode = "read-only" if read_only else "read-write"
    completed = subprocess.run(
        [*command, "-c", _AS_NOBODY, str(root), mode, action],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result: dict[str, object] = orjson.loads(completed.stdout)
    return result


def make_store_as_root(root: Path) -> None:
    store = JSONFileStorage(root)
    store.write(KEY, layout("v1"), expected_version=None)
    store.close()


def test_opening_a_store_nobody_may_not_write_fails_fast_naming_the_folder(
    shared_folder: Path,
) -> None:
    root = shared_folder / "layouts"
    make_store_as_root(root)  # 0755, owned by root

    result = run_as_nobody(root, read_only=False)

    assert result["open"] == {"error": "StoragePermissionError", "path": str(root)}


def test_opening_a_missing_store_where_nobody_may_not_create_it_fails_fast(
    shared_folder: Path,
) -> None:
    root = shared_folder / "missing" / "layouts"

    result = run_as_nobody(root, read_only=False)

    assert result["open"] == {"error": "StoragePermissionError", "path": str(root)}
    assert not root.exists()


def test_a_read_only_store_opened_read_only_serves_reads_and_refuses_writes(
    shared_folder: Path,
) -> None:
    root = shared_folder / "layouts"
    make_store_as_root(root)

    result = run_as_nobody(root, read_only=True, action="write-existing")

    assert result["open"] == {"ok": True}
    assert result["read"] == {"ok": 1}
    assert result["versions"] == {"ok": [1]}
    assert result["write"] == {"error": "StoragePermissionError", "path": str(root)}


def test_a_user_folder_nobody_may_not_write_refuses_writes_but_serves_reads(
    shared_folder: Path,
) -> None:
    root = shared_folder / "layouts"
    make_store_as_root(root)
    root.chmod(0o777)  # nobody may add users, but alice's folder stays root's 0755
    store = JSONFileStorage(root)
    alice_folder = store.document_path(KEY).parent
    store.close()

    existing = run_as_nobody(root, read_only=False, action="write-existing")
    newcomer = run_as_nobody(root, read_only=False, action="write-new-user")

    assert existing["read"] == {"ok": 1}
    assert existing["write"] == {
        "error": "StoragePermissionError",
        "path": str(alice_folder / f"{store.document_path(KEY).stem}.lock"),
    }
    assert newcomer["write"] == {"ok": 1}
    reopened = JSONFileStorage(root)
    stored = reopened.read(KEY)
    assert stored is not None and stored.version == 1
    reopened.close()


def test_a_stale_temp_file_in_a_folder_nobody_may_not_write_does_not_stop_the_open(
    shared_folder: Path,
) -> None:
    root = shared_folder / "layouts"
    make_store_as_root(root)
    root.chmod(0o777)
    store = JSONFileStorage(root)
    document_path = store.document_path(KEY)
    store.close()
    stale = document_path.parent / f".dptmp.{document_path.stem}.0123456789abcdef"
    stale.write_bytes(b"left by a crash")

    result = run_as_nobody(root, read_only=False)

    assert result["open"] == {"ok": True}
    assert result["read"] == {"ok": 1}
    assert stale.exists()


def test_an_unreadable_store_fails_fast_even_read_only(shared_folder: Path) -> None:
    root = shared_folder / "layouts"
    make_store_as_root(root)
    root.chmod(0o700)

    result = run_as_nobody(root, read_only=True)

    assert result["open"] == {"error": "StoragePermissionError", "path": str(root)}


# -- S01: the writer is killed at each named fault point --------------------------------------

_SAVE_IN_A_LOOP = """
import sys
from dashpersist.storage.jsonfile import JSONFileStorage
from dashpersist.storage.protocol import DocumentKey

store = JSONFileStorage(sys.argv[1])
key = DocumentKey("alice", "main")
while True:
    current = store.read(key)
    version = None if current is None else current.version
    number = (version or 0) + 1
    document = {"saved": number, "widgets": [
        {"id": f"w{i}", "title": f"widget {i} of save {number}", "notes": "n" * (2000 + number)}
        for i in range(40)
    ]}
    print(store.write(key, document, expected_version=version), flush=True)
"""

# Where a kill at each point leaves the document: before the rename, the old version;
# after it, the new one.
FAULT_POINTS = {
    "during_history_append": 3,
    "after_temp_write": 3,
    "after_temp_fsync": 3,
    "after_rename_before_dir_fsync": 4,
    "before_lock_release": 4,
}


@pytest.mark.parametrize("point", sorted(FAULT_POINTS))
def test_a_writer_killed_at_a_fault_point_leaves_a_store_that_reopens_consistent(
    root: Path, point: str
) -> None:
    store = JSONFileStorage(root)
    for version in (1, 2, 3):
        store.write(KEY, {"saved": version}, expected_version=version - 1 or None)
    store.close()
    env = {**os.environ, "DASHPERSIST_FAULTPOINTS": f"{point}=kill"}

    child = subprocess.run(
        [sys.executable, "-c", _SAVE_IN_A_LOOP, str(root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert child.returncode == -signal.SIGKILL, child.stderr
    acked = [int(line) for line in child.stdout.split()]
    reopened = JSONFileStorage(root)
    stored = reopened.read(KEY)
    assert stored is not None and stored.version == FAULT_POINTS[point]
    assert stored.version >= max([3, *acked])
    assert stored.document["saved"] == stored.version
    records = reopened.versions(KEY, limit=10)
    assert [record.version for record in records] == list(range(stored.version, 0, -1))
    assert records[0].checksum == stored.checksum
    assert temp_files(root) == []
    next_version = reopened.write(KEY, {"saved": 99}, expected_version=stored.version)
    assert history_versions(reopened, KEY) == list(range(1, next_version + 1))
    reopened.close()


def test_a_first_save_killed_before_its_commit_leaves_no_document_and_is_cleaned_at_open(
    root: Path,
) -> None:
    env = {**os.environ, "DASHPERSIST_FAULTPOINTS": "after_temp_fsync=kill"}
    for _round in range(3):
        subprocess.run(
            [sys.executable, "-c", _SAVE_IN_A_LOOP, str(root)],
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )
    leftovers = temp_files(root)

    store = JSONFileStorage(root)

    assert len(leftovers) == 1  # each child's open removed the one before it
    assert temp_files(root) == []
    assert store.read(KEY) is None
    assert store.versions(KEY) == []
    assert store.write(KEY, {"saved": 1}, expected_version=None) == 1
    assert history_versions(store, KEY) == [1]
    store.close()

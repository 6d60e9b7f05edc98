"""The ``dashpersist`` command, run through typer's CliRunner on real SQLite files, JSON
folders and PostgreSQL, plus one run as a real process."""

from __future__ import annotations

import base64
import json
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner, Result

from dashpersist import Layout, Widget, cli
from dashpersist.cli import ExitCode, app
from dashpersist.encryption import FieldEncryptor, KeyRing
from dashpersist.errors import StorageUnavailableError
from dashpersist.outbox import Outbox, OutboxEntry
from dashpersist.patch import make_patch
from dashpersist.storage import DocumentKey, Storage, StoredDocument, VersionRecord
from dashpersist.storage.urls import open_storage
from dashpersist.transfer import DocumentWithHistory, document_keys, read_with_history
from dashpersist.types import JsonObject
from dashpersist.versions import VersionService

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
ENCRYPTED_FIELDS = ["widgets[*].settings.api_key"]
KEY = KeyRing.generate_key()
KEYS_VAR = "TEST_DASHPERSIST_KEYS"
KEYS_ENV = {KEYS_VAR: f"k1:{base64.b64encode(KEY).decode()}"}
ALICE = DocumentKey("alice")

V1: JsonObject = {
    "widgets": [{"id": "w1", "type": "chart", "title": "Sales", "settings": {"api_key": "s3cret"}}]
}
V2: JsonObject = {
    "widgets": [
        {"id": "w1", "type": "chart", "title": "Sales", "x": 2, "settings": {"api_key": "s3cret"}}
    ],
    "theme": "dark",
}
V3: JsonObject = {
    "widgets": [
        {"id": "w1", "type": "chart", "title": "Sales", "x": 2, "settings": {"api_key": "s3cret"}},
        {"id": "w2", "type": "table", "title": "Costs", "settings": {}},
    ],
    "theme": "dark",
}


# -- helpers -------------------------------------------------------------------------------


def store_url(kind: str, folder: Path) -> str:
    return f"sqlite:///{folder / 'dash.db'}" if kind == "sqlite" else f"jsonfile://{folder / 'js'}"


@pytest.fixture(params=["sqlite", "jsonfile"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty store: a real SQLite file, then a real JSON folder."""
    return store_url(request.param, tmp_path)


@contextmanager
def opened(url: str) -> Iterator[Storage]:
    storage = open_storage(url)
    try:
        yield storage
    finally:
        storage.close()


def save(
    storage: Storage, key: DocumentKey, document: JsonObject, *, description: str | None = None
) -> int:
    """Commit *document* as the next version of *key*, its api_key encrypted, as a host would."""
    encryptor = FieldEncryptor(KeyRing({"k1": KEY}), ENCRYPTED_FIELDS)
    current = storage.read(key)
    stored = encryptor.encrypt_document(
        document,
        user_id=key.user_id,
        layout_id=key.layout_id,
        previous=None if current is None else current.document,
    )
    record = VersionService(storage).record_for(
        current, stored, description=description, device_id="laptop"
    )
    return storage.write(
        key, stored, record, expected_version=None if current is None else current.version
    )


def seed(url: str) -> None:
    """alice/default at versions 1-3, alice/ops and bob/default at version 1."""
    with opened(url) as storage:
        for number, document in enumerate((V1, V2, V3), start=1):
            save(storage, ALICE, document, description=f"step {number}")
        save(storage, DocumentKey("alice", "ops"), V1)
        save(storage, DocumentKey("bob"), V2)


def run(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
    result = CliRunner().invoke(app, list(args), input=input, env=env)
    # A dashpersist error becomes an exit code, never an escaped exception.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def assert_one_error_line(result: Result, code: ExitCode) -> str:
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    return lines[0]


def everything(url: str) -> dict[DocumentKey, DocumentWithHistory]:
    with opened(url) as storage:
        found = {key: read_with_history(storage, key) for key in document_keys(storage)}
    return {key: value for key, value in found.items() if value is not None}


def current_of(url: str, key: DocumentKey = ALICE) -> StoredDocument | None:
    with opened(url) as storage:
        return storage.read(key)


# -- reading -------------------------------------------------------------------------------


def test_layouts_lists_a_users_layouts_with_their_versions(url: str) -> None:
    seed(url)

    result = run("--store", url, "layouts", "alice")

    assert result.exit_code == ExitCode.OK
    rows = [line for line in result.stdout.splitlines() if "default" in line or "ops" in line]
    assert len(rows) == 2
    assert " 3 " in rows[0] and " 1 " in rows[1]
    assert "bob" not in result.stdout


def test_layouts_reads_the_store_from_the_environment(url: str) -> None:
    seed(url)

    result = run("layouts", "bob", env={"DASHPERSIST_URL": url})

    assert result.exit_code == ExitCode.OK
    assert "default" in result.stdout


def test_layouts_of_an_unknown_user_exits_3_with_one_line_on_stderr(url: str) -> None:
    seed(url)

    result = run("--store", url, "layouts", "carol")

    line = assert_one_error_line(result, ExitCode.NOT_FOUND)
    assert "'carol'" in line
    assert result.stdout == ""


def test_show_json_prints_the_stored_document_with_secrets_still_encrypted(url: str) -> None:
    seed(url)

    result = run("--store", url, "show", "alice", "--json")

    assert result.exit_code == ExitCode.OK
    shown = json.loads(result.stdout)
    stored = current_of(url)
    assert stored is not None and shown == stored.document
    assert shown["widgets"][0]["settings"]["api_key"].startswith("dp:v1:k1:")
    assert "s3cret" not in result.stdout


def test_show_decrypts_with_the_keys_named_by_key_env(url: str) -> None:
    seed(url)

    result = run("--store", url, "--key-env", KEYS_VAR, "show", "alice", "--json", env=KEYS_ENV)

    assert result.exit_code == ExitCode.OK
    assert json.loads(result.stdout) == V3


def test_show_an_older_version(url: str) -> None:
    seed(url)

    result = run(
        "--store", url, "--key-env", KEYS_VAR, "show", "alice", "--version", "1", "--json",
        env=KEYS_ENV,
    )  # fmt: skip

    assert result.exit_code == ExitCode.OK
    assert json.loads(result.stdout) == V1


def test_show_for_people_names_the_document_and_version(url: str) -> None:
    seed(url)

    result = run("--store", url, "show", "alice", "--layout", "ops")

    assert result.exit_code == ExitCode.OK
    assert result.stdout.startswith("document 'ops' of user 'alice', version 1\n")
    assert '"title": "Sales"' in result.stdout


def test_show_with_the_wrong_keys_exits_6(url: str) -> None:
    seed(url)
    wrong = {KEYS_VAR: f"k1:{base64.b64encode(KeyRing.generate_key()).decode()}"}

    result = run("--store", url, "--key-env", KEYS_VAR, "show", "alice", env=wrong)

    line = assert_one_error_line(result, ExitCode.INVALID)
    assert "--key-env" in line
    assert "s3cret" not in result.stdout + result.stderr


def test_show_with_unusable_keys_exits_2(url: str) -> None:
    seed(url)

    result = run("--store", url, "--key-env", "NOT_SET_ANYWHERE", "show", "alice")

    line = assert_one_error_line(result, ExitCode.USAGE)
    assert "NOT_SET_ANYWHERE" in line


def test_show_a_missing_version_or_document_exits_3(url: str) -> None:
    seed(url)

    missing_version = run("--store", url, "show", "alice", "--version", "9")
    missing_layout = run("--store", url, "show", "alice", "--layout", "nope")

    assert "no version 9" in assert_one_error_line(missing_version, ExitCode.NOT_FOUND)
    assert_one_error_line(missing_layout, ExitCode.NOT_FOUND)


def test_history_lists_versions_newest_first_up_to_the_limit(url: str) -> None:
    seed(url)

    everything_ = run("--store", url, "history", "alice")
    newest = run("--store", url, "history", "alice", "--limit", "2")

    assert everything_.exit_code == newest.exit_code == ExitCode.OK
    positions = [everything_.stdout.index(f"step {n}") for n in (3, 2, 1)]
    assert positions == sorted(positions)
    assert "step 3" in newest.stdout and "step 2" in newest.stdout
    assert "step 1" not in newest.stdout


def test_history_shows_control_characters_escaped(url: str) -> None:
    with opened(url) as storage:
        save(storage, ALICE, V1, description="\x1b[2Jwiped \u202egnirts")

    result = run("--store", url, "history", "alice")

    assert result.exit_code == ExitCode.OK
    assert "\x1b" not in result.stdout and "\u202e" not in result.stdout
    assert "\\u001b[2Jwiped" in result.stdout


def test_history_of_a_missing_document_exits_3(url: str) -> None:
    seed(url)

    result = run("--store", url, "history", "alice", "--layout", "nope")

    assert_one_error_line(result, ExitCode.NOT_FOUND)


def test_diff_names_the_changes_and_prints_the_patch(url: str) -> None:
    seed(url)

    result = run("--store", url, "diff", "alice", "2", "3")

    assert result.exit_code == ExitCode.OK
    assert "version 2 -> 3" in result.stdout
    assert "added widget 'w2'" in result.stdout
    operations = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert operations == make_patch(V2, V3)


def test_diff_with_keys_shows_a_changed_secret_in_plaintext(url: str) -> None:
    seed(url)
    changed: JsonObject = {
        "widgets": [{"id": "w1", "type": "chart", "title": "Sales", "settings": {"api_key": "n3w"}}]
    }
    with opened(url) as storage:
        save(storage, ALICE, changed)

    result = run("--store", url, "--key-env", KEYS_VAR, "diff", "alice", "3", "4", env=KEYS_ENV)

    assert result.exit_code == ExitCode.OK
    assert "changed settings api_key of widget 'w1'" in result.stdout
    assert '"value":"n3w"' in result.stdout


def test_diff_of_a_missing_version_exits_3(url: str) -> None:
    seed(url)

    result = run("--store", url, "diff", "alice", "1", "7")

    assert_one_error_line(result, ExitCode.NOT_FOUND)


# -- changing ------------------------------------------------------------------------------


def test_rollback_with_yes_writes_version_n_as_a_new_rollback_version(url: str) -> None:
    seed(url)
    with opened(url) as storage:
        first = VersionService(storage).get_document(ALICE, 1)[0]

    result = run("--store", url, "rollback", "alice", "1", "--yes")

    assert result.exit_code == ExitCode.OK
    with opened(url) as storage:
        stored = storage.read(ALICE)
        newest = storage.versions(ALICE, limit=1)[0]
        report = VersionService(storage).verify(ALICE)
    assert stored is not None and stored.version == 4 and stored.document == first
    assert (newest.change_type, newest.description) == ("rollback", "Rollback to version 1")
    assert newest.device_id == cli.CLI_DEVICE_ID
    assert newest.snapshot == first
    assert report.ok


def test_rollback_asks_and_goes_ahead_on_yes(url: str) -> None:
    seed(url)

    result = run("--store", url, "rollback", "alice", "2", input="y\n")

    stored = current_of(url)
    assert result.exit_code == ExitCode.OK
    assert "Make version 2" in result.stdout
    assert stored is not None and stored.version == 4


@pytest.mark.parametrize("answer", ["n\n", "", "\n"])
def test_a_declined_rollback_exits_1_and_writes_nothing(url: str, answer: str) -> None:
    seed(url)

    result = run("--store", url, "rollback", "alice", "1", input=answer)

    assert "declined" in assert_one_error_line(result, ExitCode.PROBLEMS)
    stored = current_of(url)
    assert stored is not None and stored.version == 3


def test_rollback_to_a_missing_version_exits_3_and_writes_nothing(url: str) -> None:
    seed(url)

    result = run("--store", url, "rollback", "alice", "8", "--yes")

    assert_one_error_line(result, ExitCode.NOT_FOUND)
    stored = current_of(url)
    assert stored is not None and stored.version == 3


def test_rollback_to_the_current_content_writes_nothing(url: str) -> None:
    seed(url)

    result = run("--store", url, "rollback", "alice", "3", "--yes")

    assert result.exit_code == ExitCode.OK
    assert "nothing written" in result.stdout
    stored = current_of(url)
    assert stored is not None and stored.version == 3


# -- checking ------------------------------------------------------------------------------


def test_verify_checks_the_whole_store(url: str) -> None:
    seed(url)

    result = run("--store", url, "verify")

    assert result.exit_code == ExitCode.OK
    assert "checked 3 documents, 5 versions: ok" in result.stdout


def test_verify_of_one_user_checks_only_theirs(url: str) -> None:
    seed(url)

    result = run("--store", url, "verify", "bob")

    assert result.exit_code == ExitCode.OK
    assert "checked 1 documents, 1 versions: ok" in result.stdout


def test_verify_of_an_unknown_user_exits_3(url: str) -> None:
    seed(url)

    assert_one_error_line(run("--store", url, "verify", "carol"), ExitCode.NOT_FOUND)


def tamper_with_version_3(url: str, folder: Path) -> None:
    """Change the patch stored for version 3 of alice/default ("Costs" to "Cxsts")."""
    if url.startswith("sqlite"):
        with sqlite3.connect(folder / "dash.db") as connection:
            changed = connection.execute(
                "UPDATE dashpersist_versions SET patch = replace(patch, 'Costs', 'Cxsts') "
                "WHERE user_id = 'alice' AND layout_id = 'default' AND version = 3"
            ).rowcount
        assert changed == 1
        return
    histories = [
        p for p in (folder / "js").rglob("*.history.*.jsonl") if b"Costs" in p.read_bytes()
    ]
    assert len(histories) == 1
    histories[0].write_bytes(histories[0].read_bytes().replace(b"Costs", b"Cxsts"))


def test_verify_lists_a_tampered_version_and_exits_1(url: str, tmp_path: Path) -> None:
    seed(url)
    tamper_with_version_3(url, tmp_path)

    result = run("--store", url, "verify")

    assert result.exit_code == ExitCode.PROBLEMS
    assert "document 'default' of user 'alice' version 3: checksum" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: checked 3 documents")
    assert "Traceback" not in result.stderr


# -- export and import ---------------------------------------------------------------------


@pytest.mark.parametrize("target_kind", ["sqlite", "jsonfile"])
def test_an_export_imported_into_an_empty_store_restores_it_exactly(
    url: str, tmp_path: Path, target_kind: str
) -> None:
    seed(url)
    exported = run("--store", url, "export")
    export_file = tmp_path / "all.jsonl"
    export_file.write_bytes(exported.stdout_bytes)
    target = store_url(target_kind, tmp_path / "target")
    (tmp_path / "target").mkdir()

    result = run("--store", target, "import", str(export_file))

    assert exported.exit_code == ExitCode.OK
    assert "exported 3 documents" in exported.stderr
    assert result.exit_code == ExitCode.OK
    assert "imported 3 documents" in result.stdout
    assert everything(target) == everything(url)
    assert run("--store", target, "export").stdout_bytes == exported.stdout_bytes


def test_export_of_one_user_to_a_file(url: str, tmp_path: Path) -> None:
    seed(url)
    output = tmp_path / "bob.jsonl"

    result = run("--store", url, "export", "bob", "--output", str(output))

    lines = output.read_bytes().splitlines()
    assert result.exit_code == ExitCode.OK
    assert len(lines) == 1
    assert json.loads(lines[0])["user_id"] == "bob"


def test_export_keeps_secrets_encrypted_unless_asked_to_decrypt(url: str) -> None:
    seed(url)

    plain = run("--store", url, "export", "bob")
    decrypted = run(
        "--store", url, "--key-env", KEYS_VAR, "export", "bob", "--decrypt", env=KEYS_ENV
    )

    assert b"s3cret" not in plain.stdout_bytes
    line = json.loads(decrypted.stdout_bytes)
    assert line["decrypted_document"] == V2
    assert line["document"]["widgets"][0]["settings"]["api_key"].startswith("dp:v1:")


def test_export_decrypt_without_keys_exits_2(url: str) -> None:
    seed(url)

    assert_one_error_line(run("--store", url, "export", "--decrypt"), ExitCode.USAGE)


def test_export_of_an_unknown_user_exits_3(url: str) -> None:
    seed(url)

    assert_one_error_line(run("--store", url, "export", "carol"), ExitCode.NOT_FOUND)


@pytest.fixture
def export_file(tmp_path: Path) -> Path:
    """An export of the seeded documents, made from a SQLite store of its own."""
    (tmp_path / "source").mkdir()
    source = store_url("sqlite", tmp_path / "source")
    seed(source)
    path = tmp_path / "export.jsonl"
    path.write_bytes(run("--store", source, "export").stdout_bytes)
    return path


def test_import_refuses_existing_documents_and_then_imports_nothing(
    url: str, export_file: Path
) -> None:
    with opened(url) as storage:
        save(storage, DocumentKey("bob"), {"widgets": []})

    result = run("--store", url, "import", str(export_file))

    line = assert_one_error_line(result, ExitCode.CONFLICT)
    assert "user 'bob'" in line and "--skip-existing" in line
    assert list(everything(url)) == [DocumentKey("bob")]


def test_import_with_skip_existing_imports_the_others(url: str, export_file: Path) -> None:
    with opened(url) as storage:
        save(storage, DocumentKey("bob"), {"widgets": []})

    result = run("--store", url, "import", str(export_file), "--skip-existing")

    assert result.exit_code == ExitCode.OK
    assert "imported 2 documents, skipped 1" in result.stdout
    bob = current_of(url, DocumentKey("bob"))
    assert bob is not None and bob.document == {"widgets": []}
    assert len(everything(url)) == 3


def test_a_damaged_export_line_exits_6_and_imports_nothing(url: str, export_file: Path) -> None:
    lines = export_file.read_bytes().splitlines(keepends=True)
    damaged = json.loads(lines[1])
    damaged["history"][0]["checksum"] = "0" * 64
    lines[1] = json.dumps(damaged).encode() + b"\n"
    export_file.write_bytes(b"".join(lines))

    result = run("--store", url, "import", str(export_file))

    assert "line 2" in assert_one_error_line(result, ExitCode.INVALID)
    assert everything(url) == {}


def test_a_file_that_is_not_an_export_exits_6(url: str, tmp_path: Path) -> None:
    other = tmp_path / "other.jsonl"
    other.write_text('{"hello": "world"}\n')

    result = run("--store", url, "import", str(other))

    assert "line 1" in assert_one_error_line(result, ExitCode.INVALID)


def test_import_of_a_missing_file_is_a_usage_error(url: str, tmp_path: Path) -> None:
    result = run("--store", url, "import", str(tmp_path / "missing.jsonl"))

    assert result.exit_code == ExitCode.USAGE


# -- store errors --------------------------------------------------------------------------


def test_an_unknown_store_url_exits_2() -> None:
    line = assert_one_error_line(run("--store", "ftp://somewhere", "layouts", "a"), ExitCode.USAGE)

    assert "store URL" in line


def test_a_store_that_is_not_a_database_exits_5(tmp_path: Path) -> None:
    (tmp_path / "dash.db").write_bytes(b"this is not a database" * 100)

    result = run("--store", f"sqlite:///{tmp_path / 'dash.db'}", "layouts", "alice")

    assert "backup" in assert_one_error_line(result, ExitCode.STORAGE)


def test_a_corrupt_document_file_exits_5_naming_it(tmp_path: Path) -> None:
    url = store_url("jsonfile", tmp_path)
    seed(url)
    with opened(url) as storage:
        path = storage.document_path(DocumentKey("bob"))  # type: ignore[attr-defined]
    path.write_bytes(b"{ not json")

    result = run("--store", url, "show", "bob")

    assert str(path) in assert_one_error_line(result, ExitCode.STORAGE)


def test_an_unreachable_database_exits_5(tmp_path: Path) -> None:
    url = f"postgresql://nobody@/nowhere?host={tmp_path}&connect_timeout=2"

    result = run("--store", url, "layouts", "alice")

    assert "reachable" in assert_one_error_line(result, ExitCode.STORAGE)


# -- migrate -------------------------------------------------------------------------------


def seed_for_migration(url: str) -> None:
    """Several users and layouts, long histories (keyframes and patches), odd ids."""
    seed(url)
    with opened(url) as storage:
        for user_id in ("carol", "dave/../x", "Eve \u00e9"):
            for layout_id in ("default", "ops"):
                key = DocumentKey(user_id, layout_id)
                for step in range(1, 37 if user_id == "carol" else 3):
                    save(storage, key, {"widgets": [], "metadata": {"step": step}})


@pytest.mark.parametrize("destination_kind", ["sqlite", "jsonfile"])
def test_migrate_from_a_json_folder_keeps_every_version_checksum_and_time(
    tmp_path: Path, destination_kind: str
) -> None:
    source = store_url("jsonfile", tmp_path)
    seed_for_migration(source)
    destination = store_url(destination_kind, tmp_path / "dst")
    (tmp_path / "dst").mkdir()

    result = run("migrate", source, destination)

    assert result.exit_code == ExitCode.OK, result.stderr
    assert "copied 9 documents, 0 already there, 0 differ" in result.stdout
    assert "verified 9 documents" in result.stdout
    copied = everything(destination)
    assert copied == everything(source)
    assert len(copied[DocumentKey("carol")].history) == 36


@pytest.mark.postgres
def test_migrate_from_a_json_folder_to_postgresql(tmp_path: Path, postgres_url: str) -> None:
    source = store_url("jsonfile", tmp_path)
    seed_for_migration(source)

    result = run("migrate", source, postgres_url)

    assert result.exit_code == ExitCode.OK, result.stderr
    assert "copied 9 documents" in result.stdout
    assert everything(postgres_url) == everything(source)
    assert run("--store", postgres_url, "verify").exit_code == ExitCode.OK


class FailsAfterImports:
    """A real destination store that goes away after *successes* imports."""

    def __init__(self, inner: Storage, successes: int) -> None:
        self.inner = inner
        self.successes = successes

    def import_document(
        self, key: DocumentKey, current: StoredDocument, history: list[VersionRecord]
    ) -> None:
        if self.successes == 0:
            raise StorageUnavailableError("injected: the destination went away")
        self.successes -= 1
        self.inner.import_document(key, current, history)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def test_an_interrupted_migration_resumes_where_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = store_url("jsonfile", tmp_path)
    seed_for_migration(source)
    destination = store_url("sqlite", tmp_path)

    def open_failing(url: str) -> Storage:
        storage = open_storage(url)
        return FailsAfterImports(storage, 4) if url == destination else storage  # type: ignore[return-value]

    monkeypatch.setattr(cli, "open_storage", open_failing)
    interrupted = run("migrate", source, destination)
    monkeypatch.undo()
    partial = everything(destination)
    resumed = run("migrate", source, destination)

    assert_one_error_line(interrupted, ExitCode.STORAGE)
    assert len(partial) == 4
    assert resumed.exit_code == ExitCode.OK, resumed.stderr
    assert "copied 5 documents, 4 already there, 0 differ" in resumed.stdout
    assert everything(destination) == everything(source)


def test_migrate_reports_a_document_that_differs_at_the_destination(tmp_path: Path) -> None:
    source = store_url("jsonfile", tmp_path)
    seed(source)
    destination = store_url("sqlite", tmp_path)
    with opened(destination) as storage:
        save(storage, DocumentKey("bob"), {"widgets": [], "theme": "mine"})

    result = run("migrate", source, destination)

    assert result.exit_code == ExitCode.CONFLICT
    assert "differs: document 'default' of user 'bob'" in result.stderr
    assert "copied 2 documents, 0 already there, 1 differ" in result.stdout
    bob = current_of(destination, DocumentKey("bob"))
    assert bob is not None and bob.document == {"widgets": [], "theme": "mine"}
    assert current_of(destination) == current_of(source)


def test_migrate_dry_run_writes_nothing(tmp_path: Path) -> None:
    source = store_url("jsonfile", tmp_path)
    seed(source)
    destination = store_url("sqlite", tmp_path)

    result = run("migrate", source, destination, "--dry-run")

    assert result.exit_code == ExitCode.OK
    assert "would copy 3 documents" in result.stdout
    assert everything(destination) == {}


def test_migrate_to_the_same_store_is_a_usage_error(tmp_path: Path) -> None:
    url = store_url("sqlite", tmp_path)

    assert_one_error_line(run("migrate", url, url), ExitCode.USAGE)


# -- the outbox ----------------------------------------------------------------------------


def parked_layout(title: str) -> JsonObject:
    return Layout(widgets=[Widget(id="w1", type="chart", title=title, w=4, h=2)]).model_dump(
        mode="json"
    )


@pytest.fixture
def outbox(tmp_path: Path) -> tuple[Path, OutboxEntry, OutboxEntry]:
    """An outbox folder holding a pending entry for zed and a blocked one for yan."""
    folder = tmp_path / "outbox"
    box = Outbox(folder)
    pending = OutboxEntry.create(DocumentKey("zed"), parked_layout("parked"), base_version=None)
    blocked = OutboxEntry.create(DocumentKey("yan"), parked_layout("refused"), base_version=None)
    box.append(pending)
    box.append(blocked)
    box.block(blocked.entry_id, "ValidationError: refused by the store")
    box.close()
    return folder, pending, blocked


def test_outbox_list_shows_pending_and_blocked_entries(
    url: str, outbox: tuple[Path, OutboxEntry, OutboxEntry]
) -> None:
    folder, pending, blocked = outbox

    result = run("--store", url, "outbox", "--outbox-dir", str(folder), "list")

    assert result.exit_code == ExitCode.OK
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{pending.entry_id}  pending  document 'default' of user 'zed'")
    assert lines[1].startswith(f"{blocked.entry_id}  blocked")
    assert lines[1].endswith("ValidationError: refused by the store")


def test_an_empty_outbox_lists_nothing(url: str, tmp_path: Path) -> None:
    result = run("--store", url, "outbox", "--outbox-dir", str(tmp_path / "none"), "list")

    assert result.exit_code == ExitCode.OK
    assert result.stdout == "the outbox is empty\n"


def test_outbox_replay_writes_the_pending_entries_and_exits_1_for_a_blocked_one(
    url: str, outbox: tuple[Path, OutboxEntry, OutboxEntry]
) -> None:
    folder, _, blocked = outbox

    result = run("--store", url, "outbox", "--outbox-dir", str(folder), "replay")

    assert result.exit_code == ExitCode.PROBLEMS
    assert "replayed 1 entries; 0 still waiting" in result.stdout
    assert f"blocked: entry {blocked.entry_id}" in result.stderr
    zed = current_of(url, DocumentKey("zed"))
    assert zed is not None and zed.document == parked_layout("parked")
    assert current_of(url, DocumentKey("yan")) is None


def test_outbox_discard_removes_an_entry_for_good(
    url: str, outbox: tuple[Path, OutboxEntry, OutboxEntry]
) -> None:
    folder, _, blocked = outbox
    outbox_args = ("--store", url, "outbox", "--outbox-dir", str(folder))

    declined = run(*outbox_args, "discard", blocked.entry_id, input="n\n")
    discarded = run(*outbox_args, "discard", blocked.entry_id, "--yes")
    again = run(*outbox_args, "discard", blocked.entry_id, "--yes")
    replayed = run(*outbox_args, "replay")

    assert "declined" in assert_one_error_line(declined, ExitCode.PROBLEMS)
    assert discarded.exit_code == ExitCode.OK
    assert f"discarded entry {blocked.entry_id}" in discarded.stdout
    assert "dashpersist outbox list" in assert_one_error_line(again, ExitCode.NOT_FOUND)
    assert replayed.exit_code == ExitCode.OK
    assert current_of(url, DocumentKey("yan")) is None


# -- the command as a whole ----------------------------------------------------------------


def documented_commands() -> set[str]:
    headings = re.findall(r"^#+ `?dashpersist ([a-z-]+(?: [a-z-]+)?)", DOCS.read_text(), re.M)
    return set(headings)


def app_commands() -> set[str]:
    names: set[str] = set()
    root = get_command(app)
    for name, command in root.commands.items():  # type: ignore[attr-defined]
        subcommands = getattr(command, "commands", None)
        if subcommands:
            names.update(f"{name} {sub}" for sub in subcommands)
        else:
            names.add(name)
    return names


def test_every_command_is_documented_in_docs_cli_md() -> None:
    missing = app_commands() - documented_commands()

    assert missing == set(), f"commands without a `## dashpersist <command>` section: {missing}"
    assert {"layouts", "show", "migrate", "import"} <= app_commands()


def test_every_exit_code_is_documented() -> None:
    text = DOCS.read_text()

    for code in ExitCode:
        assert re.search(rf"^\| {int(code)} ", text, re.M), f"exit code {int(code)} undocumented"


def test_the_command_runs_as_a_real_process() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "dashpersist.cli", "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )

    assert completed.returncode == 0, completed.stderr
    assert "migrate" in completed.stdout and "verify" in completed.stdout


def test_importing_dashpersist_does_not_import_the_cli_dependencies() -> None:
    code = (
        "import sys, dashpersist, dashpersist.transfer\n"
        "loaded = [m for m in ('typer', 'rich', 'click') if m in sys.modules]\n"
        "print(loaded)\n"
    )

    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


# -- rotating keys -------------------------------------------------------------------------

NEW_KEY = KeyRing.generate_key()


def keys_env(**keys: bytes) -> dict[str, str]:
    """A --key-env variable holding *keys* in order (the last is the primary)."""
    entries = ",".join(f"{key_id}:{base64.b64encode(key).decode()}" for key_id, key in keys.items())
    return {KEYS_VAR: entries}


def stored_text(url: str) -> str:
    """Every stored byte of every document: current versions, keyframes and patches."""
    return json.dumps(
        [
            [found.current.document, [repr(record) for record in found.history]]
            for found in everything(url).values()
        ]
    )


def test_rotate_keys_re_encrypts_every_version_so_the_old_key_can_go(url: str) -> None:
    seed(url)

    result = run(
        "--store", url, "--key-env", KEYS_VAR, "rotate-keys", "--yes",
        env=keys_env(k1=KEY, k2=NEW_KEY),
    )  # fmt: skip

    assert result.exit_code == ExitCode.OK, (result.stdout, result.stderr)
    assert "k2" in result.stdout and "dropped" in result.stdout
    assert "dp:v1:k1:" not in stored_text(url)
    expected = {ALICE: [V1, V2, V3], DocumentKey("alice", "ops"): [V1], DocumentKey("bob"): [V2]}
    for key, versions in expected.items():
        for number, document in enumerate(versions, start=1):
            shown = run(
                "--store", url, "--key-env", KEYS_VAR, "show", key.user_id,
                "--layout", key.layout_id, "--version", str(number), "--json",
                env=keys_env(k2=NEW_KEY),
            )  # fmt: skip
            assert shown.exit_code == ExitCode.OK, (key, number, shown.stderr)
            assert json.loads(shown.stdout) == document


def test_rotate_keys_again_rewrites_nothing(url: str) -> None:
    seed(url)
    env = keys_env(k1=KEY, k2=NEW_KEY)
    run("--store", url, "--key-env", KEYS_VAR, "rotate-keys", "--yes", env=env)
    before = everything(url)

    again = run("--store", url, "--key-env", KEYS_VAR, "rotate-keys", "--yes", env=env)

    assert again.exit_code == ExitCode.OK
    assert everything(url) == before


def test_rotate_keys_with_a_key_missing_from_the_ring_exits_1_naming_it(url: str) -> None:
    seed(url)
    before = everything(url)

    result = run(
        "--store", url, "--key-env", KEYS_VAR, "rotate-keys", "--yes", env=keys_env(k2=NEW_KEY)
    )

    assert result.exit_code == ExitCode.PROBLEMS
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: 3 of 3 documents were not rotated")
    assert all("'k1'" in line for line in lines[:-1]) and len(lines) == 4
    assert "Traceback" not in result.stderr
    for secret in (KEY, NEW_KEY):
        assert base64.b64encode(secret).decode() not in result.stdout + result.stderr
    assert "s3cret" not in result.stdout + result.stderr
    assert everything(url) == before


@pytest.mark.parametrize("answer", ["n\n", "", "\n"])
def test_a_declined_rotation_exits_1_and_writes_nothing(url: str, answer: str) -> None:
    seed(url)
    before = everything(url)

    result = run(
        "--store", url, "--key-env", KEYS_VAR, "rotate-keys",
        input=answer, env=keys_env(k1=KEY, k2=NEW_KEY),
    )  # fmt: skip

    assert "declined" in assert_one_error_line(result, ExitCode.PROBLEMS)
    assert "under key 'k2'" in result.stdout
    assert everything(url) == before


def test_rotate_keys_without_keys_is_a_usage_error(url: str) -> None:
    seed(url)

    result = run("--store", url, "rotate-keys", "--yes")

    assert "--key-env" in assert_one_error_line(result, ExitCode.USAGE)


def test_rotate_keys_leaves_fields_not_named_by_field_as_they_are(url: str) -> None:
    seed(url)

    result = run(
        "--store", url, "--key-env", KEYS_VAR, "rotate-keys", "--yes",
        "--field", "widgets[*].settings.token", env=keys_env(k1=KEY, k2=NEW_KEY),
    )  # fmt: skip

    assert result.exit_code == ExitCode.OK
    assert "dp:v1:k2:" not in stored_text(url)

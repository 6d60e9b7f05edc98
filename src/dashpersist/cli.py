"""The ``dashpersist`` command: look into, repair and move stores from a shell.

Install with ``pip install 'dashpersist[cli]'``. The store is ``--store URL`` (or the
``DASHPERSIST_URL`` environment variable; default: the embedded default store); see
``dashpersist --help`` and docs/cli.md for every command.

The commands work on the stored form of documents, whatever model the host validates
them with: encrypted fields are shown as stored unless keys are given with
``--key-env VAR`` (a `KeyRing.from_env` variable), and exports keep them encrypted.

Exit codes, for scripts:

== ==========================================================================
0  success
1  problems found (``verify``, ``migrate``'s check, blocked outbox entries, documents
   ``rotate-keys`` could not rotate), or a confirmation declined
2  usage: a bad option or argument, an unknown store URL, unusable or missing keys
3  not found: no such user, layout, version or outbox entry
4  conflict: the document exists, or moved on while the command ran
5  storage unavailable, full, refused or corrupt
6  invalid input (an import line, a document) or a field that does not decrypt
== ==========================================================================

Every failure prints one line on stderr, ``error: <what> (<what to do>)``, never a
traceback of a dashpersist error.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path
from typing import Annotated, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Column, Table
from rich.text import Text

from dashpersist.changes import LayoutChange, describe_changes, summarize
from dashpersist.config import PersistenceConfig
from dashpersist.encryption import FieldEncryptor, KeyRing
from dashpersist.errors import (
    ConfigurationError,
    ConflictError,
    CorruptStoreError,
    DashPersistError,
    DecryptionError,
    NotFoundError,
    PatchError,
    StorageError,
    StorageUnavailableError,
    ValidationError,
)
from dashpersist.manager import PersistenceManager, default_store_url
from dashpersist.outbox import OutboxEntry
from dashpersist.patch import make_patch
from dashpersist.rotation import RotationProgress, RotationReport
from dashpersist.storage.protocol import DocumentKey, Storage, StoredDocument
from dashpersist.storage.urls import open_storage
from dashpersist.transfer import (
    CopyOutcome,
    copy_document,
    document_keys,
    encode_export_line,
    read_export,
    read_with_history,
    verify_copy,
)
from dashpersist.types import JsonObject, JsonValue
from dashpersist.versions import IntegrityProblem, VersionService

__all__ = ["ExitCode", "app", "main"]

P = ParamSpec("P")
R = TypeVar("R")


class ExitCode(IntEnum):
    """What a ``dashpersist`` run ended with (see the module docstring)."""

    OK = 0
    PROBLEMS = 1
    USAGE = 2
    NOT_FOUND = 3
    CONFLICT = 4
    STORAGE = 5
    INVALID = 6


CLI_DEVICE_ID = "dashpersist-cli"
"""The device id recorded with versions the command writes (rollbacks)."""

_HISTORY_WINDOW = 100_000
"""How far back a rebuild looks for a keyframe. The host's keyframe interval is not
known here; any interval up to this one reads."""

# C0/C1 control characters and bidirectional overrides in ids, descriptions or document
# strings could move the cursor, recolour or reorder a terminal; they are shown escaped.
_UNSAFE_FOR_TERMINALS = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
# json.dumps escapes C0 inside strings already; what remains there is layout whitespace.
_UNSAFE_IN_JSON = re.compile(r"[\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

app = typer.Typer(
    name="dashpersist",
    help="Look into, repair and move dashpersist stores.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
outbox_app = typer.Typer(
    help="Writes parked in the durable outbox while the store was unreachable.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(outbox_app, name="outbox")


@dataclass(frozen=True, slots=True)
class _Settings:
    """The global options, resolved lazily so that their errors reach a command's handler."""

    store_url: str | None
    key_env: str | None
    encrypted_fields: tuple[str, ...]

    def url(self) -> str:
        return self.store_url or default_store_url()

    def keyring(self) -> KeyRing | None:
        return None if self.key_env is None else KeyRing.from_env(self.key_env)

    def encryptor(self) -> FieldEncryptor | None:
        keyring = self.keyring()
        return None if keyring is None else FieldEncryptor(keyring, self.encrypted_fields)


# -- output --------------------------------------------------------------------------------


def _out() -> Console:
    # Made per call: the console then writes to whatever sys.stdout is now (test runners
    # swap it). Markup is off, so text from the store is never read as rich markup.
    return Console(markup=False, highlight=False, soft_wrap=True)


def _err() -> Console:
    return Console(stderr=True, markup=False, highlight=False, soft_wrap=True)


def _printable(text: str) -> str:
    """Return *text* with characters that could steer a terminal shown as ``\\uXXXX``."""
    return _UNSAFE_FOR_TERMINALS.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def _json_text(value: JsonValue, *, indent: int | None = 2) -> str:
    """Return *value* as JSON, safe to print: still valid JSON, denoting the same value."""
    separators = None if indent else (",", ":")
    text = json.dumps(
        value, indent=indent, sort_keys=True, ensure_ascii=False, separators=separators
    )
    return _UNSAFE_IN_JSON.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def _describe(key: DocumentKey) -> str:
    return _printable(str(key))


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _time_column(header: str) -> Column:
    return Column(header, no_wrap=True, min_width=19)


def _exit(code: ExitCode) -> NoReturn:
    raise typer.Exit(int(code))


def _fail(message: str, code: ExitCode) -> NoReturn:
    typer.echo(f"error: {_printable(' '.join(message.split()))}", err=True)
    _exit(code)


_HINTS: list[tuple[type[DashPersistError], ExitCode, str]] = [
    (
        NotFoundError,
        ExitCode.NOT_FOUND,
        "see what exists with `dashpersist layouts USER` and `dashpersist history USER`",
    ),
    (ConflictError, ExitCode.CONFLICT, "look at `dashpersist history USER` and run it again"),
    (
        StorageUnavailableError,
        ExitCode.STORAGE,
        "check that the store is reachable (--store or DASHPERSIST_URL) and try again",
    ),
    (
        CorruptStoreError,
        ExitCode.STORAGE,
        "the store was left as found: restore it from a backup or an export",
    ),
    (StorageError, ExitCode.STORAGE, "check the store's disk space and permissions"),
    (
        DecryptionError,
        ExitCode.INVALID,
        "give the keys the documents were encrypted with: --key-env VAR",
    ),
    (ValidationError, ExitCode.INVALID, "nothing was written"),
    (PatchError, ExitCode.INVALID, "nothing was written"),
    (ConfigurationError, ExitCode.USAGE, "see `dashpersist --help`"),
]


def _reports_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn a dashpersist error raised by *command* into one line on stderr and an exit code."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except DashPersistError as exc:
            for kind, code, hint in _HINTS:
                if isinstance(exc, kind):
                    _fail(f"{exc} ({hint})", code)
            _fail(str(exc), ExitCode.PROBLEMS)

    return run


def _settings(ctx: typer.Context) -> _Settings:
    settings = ctx.find_root().obj
    assert isinstance(settings, _Settings)
    return settings


@contextmanager
def _opened(url: str) -> Iterator[Storage]:
    storage = open_storage(url)
    try:
        yield storage
    finally:
        storage.close()


def _key(user_id: str, layout_id: str) -> DocumentKey:
    return DocumentKey(user_id, layout_id)


def _versions(storage: Storage) -> VersionService:
    return VersionService(storage, keyframe_interval=_HISTORY_WINDOW)


def _plain(encryptor: FieldEncryptor | None, key: DocumentKey, document: JsonObject) -> JsonObject:
    if encryptor is None:
        return document
    return encryptor.decrypt_document(document, user_id=key.user_id, layout_id=key.layout_id)


def _current(storage: Storage, key: DocumentKey) -> StoredDocument:
    current = storage.read(key)
    if current is None:
        raise NotFoundError(f"{key} does not exist")
    return current


# -- global options ------------------------------------------------------------------------

_LAYOUT_OPTION = typer.Option("--layout", "-l", help="The layout id.")


@app.callback()
def _global_options(
    ctx: typer.Context,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            envvar="DASHPERSIST_URL",
            metavar="URL",
            help="Store URL: sqlite:///file.db, postgresql://host/db, jsonfile:///folder. "
            "Default: the embedded default store.",
        ),
    ] = None,
    key_env: Annotated[
        str | None,
        typer.Option(
            "--key-env",
            metavar="VAR",
            help="Environment variable holding the encryption keys (key_id:base64,...), "
            "to decrypt encrypted fields for show, diff and export --decrypt, and the "
            "ring rotate-keys re-encrypts under (the last key is the primary).",
        ),
    ] = None,
    encrypted_field: Annotated[
        list[str] | None,
        typer.Option(
            "--encrypted-field",
            metavar="PATH",
            help="A path of encrypted fields, as in PersistenceConfig.encrypted_fields "
            "(repeatable; default: widgets[*].settings.api_key).",
        ),
    ] = None,
) -> None:
    """Look into, repair and move dashpersist stores."""
    fields = tuple(encrypted_field or PersistenceConfig().encrypted_fields)
    ctx.obj = _Settings(store_url=store, key_env=key_env, encrypted_fields=fields)


# -- reading -------------------------------------------------------------------------------


@app.command("layouts")
@_reports_errors
def layouts(ctx: typer.Context, user_id: Annotated[str, typer.Argument(metavar="USER")]) -> None:
    """List a user's layouts with their current version."""
    with _opened(_settings(ctx).url()) as storage:
        layout_ids = storage.layout_ids(user_id)
        if not layout_ids:
            raise NotFoundError(f"user {user_id!r} has no layouts")
        table = Table("layout", "version", _time_column("updated (UTC)"), "checksum")
        for layout_id in layout_ids:
            current = storage.read(_key(user_id, layout_id))
            if current is None:
                continue  # deleted since the listing
            table.add_row(
                Text(_printable(layout_id)),
                str(current.version),
                _time(current.updated_at),
                current.checksum[:12],
            )
    _out().print(table)


@app.command("show")
@_reports_errors
def show(
    ctx: typer.Context,
    user_id: Annotated[str, typer.Argument(metavar="USER")],
    layout_id: Annotated[str, _LAYOUT_OPTION] = "default",
    version: Annotated[
        int | None, typer.Option("--version", "-v", min=1, help="An older version.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print only the document's JSON.")] = (
        False
    ),
) -> None:
    """Print a document (the current version, or --version N)."""
    settings = _settings(ctx)
    key = _key(user_id, layout_id)
    encryptor = settings.encryptor()
    with _opened(settings.url()) as storage:
        if version is None:
            current = _current(storage, key)
            document, shown_version, when = current.document, current.version, current.updated_at
        else:
            document, record = _versions(storage).get_document(key, version)
            shown_version, when = version, record.created_at
    document = _plain(encryptor, key, document)
    if as_json:
        typer.echo(_json_text(document))
        return
    console = _out()
    console.print(Text(f"{_describe(key)}, version {shown_version}", style="bold"))
    console.print(Text(f"saved {_time(when)} UTC", style="dim"))
    console.print(Text(_json_text(document)))


@app.command("history")
@_reports_errors
def history(
    ctx: typer.Context,
    user_id: Annotated[str, typer.Argument(metavar="USER")],
    layout_id: Annotated[str, _LAYOUT_OPTION] = "default",
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="How many versions.")] = 20,
) -> None:
    """List a document's versions, newest first."""
    key = _key(user_id, layout_id)
    with _opened(_settings(ctx).url()) as storage:
        records = storage.versions(key, limit=limit)
    if not records:
        raise NotFoundError(f"{key} has no history")
    table = Table(
        "version",
        _time_column("saved (UTC)"),
        "change",
        Column("device", overflow="fold"),
        "label",
        "description",
    )
    for record in records:
        table.add_row(
            str(record.version),
            _time(record.created_at),
            record.change_type,
            Text(_printable(record.device_id or "")),
            Text(_printable(record.label or "")),
            Text(_printable(record.description or "")),
        )
    _out().print(table)


_CHANGE_STYLES: dict[str, str] = {
    "widget_added": "green",
    "widget_removed": "red",
    "widgets_reordered": "cyan",
}
_OP_STYLES: dict[str, str] = {
    "add": "green",
    "remove": "red",
    "replace": "yellow",
    "move": "cyan",
    "copy": "cyan",
    "test": "dim",
}


@app.command("diff")
@_reports_errors
def diff(
    ctx: typer.Context,
    user_id: Annotated[str, typer.Argument(metavar="USER")],
    version_a: Annotated[int, typer.Argument(metavar="A", min=1)],
    version_b: Annotated[int, typer.Argument(metavar="B", min=1)],
    layout_id: Annotated[str, _LAYOUT_OPTION] = "default",
) -> None:
    """Show what changed from version A to version B: named changes and the RFC 6902 patch."""
    settings = _settings(ctx)
    key = _key(user_id, layout_id)
    encryptor = settings.encryptor()
    with _opened(settings.url()) as storage:
        versions = _versions(storage)
        before = _plain(encryptor, key, versions.get_document(key, version_a)[0])
        after = _plain(encryptor, key, versions.get_document(key, version_b)[0])
    changes = describe_changes(before, after)
    patch = make_patch(before, after)
    console = _out()
    console.print(
        Text(f"{_describe(key)}: version {version_a} -> {version_b}: ", style="bold")
        + Text(_printable(summarize(changes)))
    )
    for change in changes:
        console.print(_change_line(change))
    if patch:
        console.print(Text("patch (RFC 6902):", style="bold"))
    for operation in patch:
        op = str(operation.get("op"))
        console.print(Text(_json_text(operation, indent=None), style=_OP_STYLES.get(op, "")))


def _change_line(change: LayoutChange) -> Text:
    style = _CHANGE_STYLES.get(change.kind, "yellow")
    return Text("  * ", style=style) + Text(_printable(change.describe()), style=style)


# -- changing ------------------------------------------------------------------------------


@app.command("rollback")
@_reports_errors
def rollback(
    ctx: typer.Context,
    user_id: Annotated[str, typer.Argument(metavar="USER")],
    version: Annotated[int, typer.Argument(metavar="N", min=1)],
    layout_id: Annotated[str, _LAYOUT_OPTION] = "default",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = (
        False
    ),
) -> None:
    """Make version N's content the newest version again (history is kept)."""
    key = _key(user_id, layout_id)
    with _opened(_settings(ctx).url()) as storage:
        versions = _versions(storage)
        current = _current(storage, key)
        document, record = versions.get_document(key, version)
        if record.checksum == current.checksum:
            typer.echo(
                f"version {current.version} of {_describe(key)} already holds version "
                f"{version}'s content; nothing written"
            )
            return
        prompt = (
            f"Make version {version} of {_describe(key)} the newest version "
            f"({current.version + 1})?"
        )
        if not yes and not _confirmed(prompt):
            _fail("rollback declined; nothing was written", ExitCode.PROBLEMS)
        new_record = versions.record_for(
            current,
            document,
            change_type="rollback",
            description=f"Rollback to version {version}",
            device_id=CLI_DEVICE_ID,
            schema_version=record.schema_version,
        )
        # A keyframe whatever the host's keyframe interval: later versions can always be
        # rebuilt from here, even if this one lands where the host expects a keyframe.
        new_record = replace(new_record, snapshot=document)
        written = storage.write(key, document, new_record, expected_version=current.version)
    typer.echo(f"rolled back {_describe(key)}: version {written} = version {version}")


def _confirmed(prompt: str) -> bool:
    try:
        return typer.confirm(prompt, default=False)
    except typer.Abort:  # end of input: nobody said yes
        return False


# -- checking ------------------------------------------------------------------------------


@app.command("verify")
@_reports_errors
def verify(
    ctx: typer.Context,
    user_id: Annotated[
        str | None, typer.Argument(metavar="[USER]", help="Only this user's documents.")
    ] = None,
) -> None:
    """Check every checksum and hash chain (of one user, or of the whole store)."""
    with _opened(_settings(ctx).url()) as storage:
        keys = document_keys(storage, user_id)
        if user_id is not None and not keys:
            raise NotFoundError(f"user {user_id!r} has no layouts")
        versions = _versions(storage)
        problems: list[IntegrityProblem] = []
        checked_versions = 0
        for key in keys:
            try:
                report = versions.verify(key)
            except CorruptStoreError as exc:
                problems.append(IntegrityProblem(key, None, "unreadable", str(exc)))
                continue
            problems += report.problems
            checked_versions += report.versions_checked
    _report_problems(problems)
    summary = f"checked {len(keys)} documents, {checked_versions} versions"
    if problems:
        _fail(f"{summary}: {len(problems)} problems", ExitCode.PROBLEMS)
    typer.echo(f"{summary}: ok")


def _report_problems(problems: list[IntegrityProblem]) -> None:
    console = _err()
    for problem in problems:
        at = "" if problem.version is None else f" version {problem.version}"
        console.print(
            Text(f"{_describe(problem.key)}{at}: {problem.kind}: ", style="red")
            + Text(_printable(problem.message))
        )


# -- keys ----------------------------------------------------------------------------------


@app.command("rotate-keys")
@_reports_errors
def rotate_keys(
    ctx: typer.Context,
    field: Annotated[
        list[str] | None,
        typer.Option(
            "--field",
            metavar="PATH",
            help="A path of encrypted fields, as in PersistenceConfig.encrypted_fields "
            "(repeatable; default: the --encrypted-field paths, widgets[*].settings.api_key).",
        ),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = (
        False
    ),
) -> None:
    """Re-encrypt every version of every document under the primary key of --key-env."""
    settings = _settings(ctx)
    keyring = settings.keyring()
    if keyring is None:
        _fail(
            "rotate-keys needs the keys: --key-env VAR holding every key in use, "
            "the new one last (the primary)",
            ExitCode.USAGE,
        )
    primary = keyring.primary_key_id
    config = PersistenceConfig(
        enable_encryption=True,
        encrypted_fields=tuple(field) if field else settings.encrypted_fields,
        auto_save=False,
    )
    with _opened(settings.url()) as storage:
        total = len(document_keys(storage))
        prompt = (
            f"Re-encrypt every version of the {total} documents in the store under key "
            f"{_printable(primary)!r}?"
        )
        if not yes and not _confirmed(prompt):
            _fail("rotation declined; nothing was written", ExitCode.PROBLEMS)
        # Through a manager, so that rotations are recorded in the activity log; this
        # machine's outbox for the store is replayed first, so its entries rotate too.
        with (
            PersistenceManager(
                storage,
                config=config,
                keyring=keyring,
                device_id=CLI_DEVICE_ID,
                start_threads=False,
            ) as manager,
            _progress() as progress,
        ):
            task = progress.add_task(f"re-encrypting under {_printable(primary)}", total=total)

            def advance(step: RotationProgress) -> None:
                progress.update(task, total=step.documents_total, completed=step.documents_done)

            report = manager.rotate_keys(progress=advance)
    _out().print(_rotation_table(report))
    for failure in report.failures:
        # Error messages name users, layouts, paths and key ids, never keys or plaintext.
        _err().print(
            Text(f"{_describe(failure.key)}: {type(failure.error).__name__}: ", style="red")
            + Text(_printable(str(failure.error)))
        )
    if not report.ok:
        _fail(
            f"{len(report.failures)} of {report.documents_total} documents were not rotated "
            "and were left as they were; keep the old keys in the ring (give the keys they "
            "name in --key-env and run rotate-keys again)",
            ExitCode.PROBLEMS,
        )
    typer.echo(
        f"every stored version is encrypted under {_printable(primary)!r}: "
        "the other keys can be dropped from the ring once no app's outbox holds older entries"
    )


def _rotation_table(report: RotationReport) -> Table:
    unchanged = len(report.outcomes) - report.documents_rotated
    table = Table(
        "primary key", "documents", "rotated", "already rotated", "failed", "versions rewritten"
    )
    table.add_row(
        Text(_printable(report.primary_key_id)),
        str(report.documents_total),
        str(report.documents_rotated),
        str(unchanged),
        str(len(report.failures)),
        str(sum(outcome.versions for outcome in report.outcomes)),
    )
    return table


# -- moving --------------------------------------------------------------------------------


@app.command("export")
@_reports_errors
def export(
    ctx: typer.Context,
    user_id: Annotated[
        str | None, typer.Argument(metavar="[USER]", help="Only this user's documents.")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write to this file instead of standard output."),
    ] = None,
    decrypt: Annotated[
        bool,
        typer.Option(
            "--decrypt",
            help="Also write each current document decrypted (needs --key-env); "
            "the file then holds plaintext secrets.",
        ),
    ] = False,
) -> None:
    """Write documents with their full history as JSON Lines (one document per line)."""
    settings = _settings(ctx)
    encryptor = settings.encryptor() if decrypt else None
    if decrypt and encryptor is None:
        _fail("--decrypt needs the keys: --key-env VAR", ExitCode.USAGE)
    exported = 0
    with _opened(settings.url()) as storage, _sink(output) as write:
        keys = document_keys(storage, user_id)
        if user_id is not None and not keys:
            raise NotFoundError(f"user {user_id!r} has no layouts")
        for key in keys:
            found = read_with_history(storage, key)
            if found is None:
                continue  # deleted since the listing
            plain = None if encryptor is None else _plain(encryptor, key, found.current.document)
            write(encode_export_line(found, decrypted_document=plain))
            exported += 1
    typer.echo(f"exported {exported} documents", err=True)


@contextmanager
def _sink(path: Path | None) -> Iterator[Callable[[bytes], object]]:
    if path is None:
        stream = typer.get_binary_stream("stdout")
        yield stream.write
        stream.flush()
        return
    with path.open("wb") as file:
        yield file.write


@app.command("import")
@_reports_errors
def import_(
    ctx: typer.Context,
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE", exists=True, dir_okay=False, readable=True, help="A .jsonl export."
        ),
    ],
    skip_existing: Annotated[
        bool,
        typer.Option("--skip-existing", help="Leave documents that exist alone, import the rest."),
    ] = False,
) -> None:
    """Restore documents with their full history from an export."""
    with _opened(_settings(ctx).url()) as storage:
        # A first pass checks every line and finds the documents that exist, so that a bad
        # line or a refused document stops the import before anything is written.
        with file.open("rb") as lines:
            existing = [
                found.key for found in read_export(lines) if storage.read(found.key) is not None
            ]
        if existing and not skip_existing:
            shown = ", ".join(_describe(key) for key in existing[:3])
            more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
            _fail(
                f"{shown}{more} already exist; nothing was imported "
                "(run again with --skip-existing to import the others)",
                ExitCode.CONFLICT,
            )
        imported = skipped = 0
        with file.open("rb") as lines:
            for found in read_export(lines):
                try:
                    storage.import_document(found.key, found.current, found.history)
                except ConflictError:
                    if not skip_existing:
                        raise
                    skipped += 1
                    continue
                imported += 1
    typer.echo(f"imported {imported} documents, skipped {skipped} that exist")


@app.command("migrate")
@_reports_errors
def migrate(
    source_url: Annotated[str, typer.Argument(metavar="SRC_URL", help="Store to copy from.")],
    destination_url: Annotated[str, typer.Argument(metavar="DST_URL", help="Store to copy to.")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be copied; write nothing.")
    ] = False,
) -> None:
    """Copy every document with its full history to another store; safe to run again."""
    if source_url == destination_url:
        _fail("the source and destination are the same store", ExitCode.USAGE)
    with _opened(source_url) as source, _opened(destination_url) as destination:
        keys = document_keys(source)
        outcomes: dict[CopyOutcome, list[DocumentKey]] = {}
        with _progress() as progress:
            task = progress.add_task("copying" if not dry_run else "checking", total=len(keys))
            for key in keys:
                outcome = copy_document(source, destination, key, dry_run=dry_run)
                outcomes.setdefault(outcome, []).append(key)
                progress.advance(task)
        copied, present = outcomes.get("copied", []), outcomes.get("present", [])
        differing = outcomes.get("differs", [])
        if dry_run:
            typer.echo(
                f"dry run: would copy {len(outcomes.get('would_copy', []))} documents, "
                f"{len(present)} already there, {len(differing)} differ; nothing written"
            )
        else:
            typer.echo(
                f"copied {len(copied)} documents, {len(present)} already there, "
                f"{len(differing)} differ"
            )
        problems: list[IntegrityProblem] = []
        if not dry_run:
            with _progress() as progress:
                checked = [*copied, *present]
                task = progress.add_task("verifying", total=len(checked))
                for key in checked:
                    problems += verify_copy(source, destination, key)
                    progress.advance(task)
    for key in differing:
        typer.echo(
            f"differs: {_describe(key)} exists at the destination with other content; "
            "left as it is (delete it there and run migrate again to copy it)",
            err=True,
        )
    _report_problems(problems)
    if differing:
        _fail(f"{len(differing)} documents differ at the destination", ExitCode.CONFLICT)
    if problems:
        _fail(f"verification found {len(problems)} problems", ExitCode.PROBLEMS)
    if not dry_run:
        typer.echo(f"verified {len(copied) + len(present)} documents: checksums match")


# -- the outbox ----------------------------------------------------------------------------


@outbox_app.callback()
def _outbox_options(
    ctx: typer.Context,
    outbox_dir: Annotated[
        Path | None,
        typer.Option(
            "--outbox-dir",
            help="The app's PersistenceConfig.outbox_dir. Default: the folder the app uses "
            "for the same --store URL (give the URL exactly as the app does).",
        ),
    ] = None,
) -> None:
    """Writes parked in the durable outbox while the store was unreachable."""
    ctx.obj = outbox_dir


@contextmanager
def _manager(ctx: typer.Context) -> Iterator[PersistenceManager]:
    """Open a manager on the store and its outbox, as the app that parked the writes did."""
    settings = _settings(ctx)
    outbox_dir = ctx.obj if isinstance(ctx.obj, Path) else None
    keyring = settings.keyring()
    config = PersistenceConfig(
        outbox_dir=outbox_dir,
        enable_encryption=keyring is not None,
        encrypted_fields=settings.encrypted_fields,
    )
    manager: PersistenceManager = PersistenceManager(
        settings.url(),
        config=config,
        keyring=keyring,
        device_id=CLI_DEVICE_ID,
        start_threads=False,
    )
    try:
        yield manager
    finally:
        manager.close()


def _waiting_and_blocked(
    manager: PersistenceManager,
) -> tuple[list[OutboxEntry], list[tuple[OutboxEntry, str]]]:
    """The outbox's entries that are not blocked (some may wait behind a blocked one),
    and the blocked ones with the reason."""
    blocked = manager.blocked_outbox_entries()
    refused = {entry.entry_id for entry, _ in blocked}
    return [e for e in manager.outbox_entries() if e.entry_id not in refused], blocked


@outbox_app.command("list")
@_reports_errors
def outbox_list(ctx: typer.Context) -> None:
    """List the writes waiting in the outbox, and the ones the store refused."""
    with _manager(ctx) as manager:
        waiting, blocked = _waiting_and_blocked(manager)
    if not waiting and not blocked:
        typer.echo("the outbox is empty")
        return
    console = _out()
    rows = [(entry, "pending", "") for entry in waiting]
    rows += [(entry, "blocked", reason) for entry, reason in blocked]
    for entry, status, reason in rows:
        base = "new" if entry.base_version is None else f"on version {entry.base_version}"
        line = Text(f"{entry.entry_id}  ") + Text(
            status, style="red" if status == "blocked" else "yellow"
        )
        line += Text(
            f"  {_describe(entry.key)}, {entry.change_type} {base}, "
            f"parked {_time(entry.created_at)} UTC"
        )
        if reason:
            line += Text(f": {_printable(reason)}", style="red")
        console.print(line)


@outbox_app.command("replay")
@_reports_errors
def outbox_replay(ctx: typer.Context) -> None:
    """Write the waiting entries to the store now, oldest first per document."""
    with _manager(ctx) as manager:
        replayed = manager.replay_outbox()
        waiting, blocked = _waiting_and_blocked(manager)
    typer.echo(f"replayed {replayed} entries; {len(waiting)} still waiting")
    for entry, reason in blocked:
        typer.echo(
            f"blocked: entry {entry.entry_id} for {_describe(entry.key)}: {_printable(reason)}",
            err=True,
        )
    if blocked:
        _fail(
            f"{len(blocked)} entries are blocked (look at them with `dashpersist outbox list`, "
            "then `dashpersist outbox discard ENTRY_ID`)",
            ExitCode.PROBLEMS,
        )


@outbox_app.command("discard")
@_reports_errors
def outbox_discard(
    ctx: typer.Context,
    entry_id: Annotated[str, typer.Argument(metavar="ENTRY_ID")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = (
        False
    ),
) -> None:
    """Remove an outbox entry for good: its write is lost."""
    with _manager(ctx) as manager:
        try:
            entry = manager.export_outbox_entry(entry_id)
        except NotFoundError as exc:
            _fail(f"{exc} (list the entries with `dashpersist outbox list`)", ExitCode.NOT_FOUND)
        where = _describe(DocumentKey(str(entry["user_id"]), str(entry["layout_id"])))
        prompt = f"Discard entry {entry_id} ({entry['status']}) for {where}? Its write is lost"
        if not yes and not _confirmed(prompt):
            _fail("discard declined; the entry is kept", ExitCode.PROBLEMS)
        manager.discard_outbox_entry(entry_id)
    typer.echo(f"discarded entry {entry_id} for {where}")


# -- progress --------------------------------------------------------------------------------


@contextmanager
def _progress() -> Iterator[Progress]:
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=_err(),
        transient=True,
    ) as progress:
        yield progress


def main() -> None:
    """Run the ``dashpersist`` command (the console script's entry point)."""
    app()


if __name__ == "__main__":
    main()

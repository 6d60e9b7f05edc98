"""JSONFileStorage: one JSON file per document, replaced atomically, locked across processes.

On disk
-------
::

    <root>/
      <user stem>/                         one folder per user
        <layout stem>.json                 the current version: one JSON object (below)
        <layout stem>.history.<n>.jsonl    the history: one JSON record per line, oldest first
        <layout stem>.lock                 sidecar lock (filelock); kept after a delete
        .dptmp.<layout stem>.<16 hex>      a save in flight; removed at open if stale

A *stem* is derived from an id, never the id itself: up to 16 lowercase ASCII letters
and digits taken from the id for humans, a dash, and the lowercase hex SHA-256 of the
id's UTF-8 bytes (``alice-2bd806c9...``; only the hash when the id has no such
characters). Stems are therefore injective, bounded (file names are at most 105
characters), free of path separators and dots (so never ``..``, a reserved device name
like ``con``, or a trailing dot or space), and distinct on case-insensitive and
Unicode-normalizing file systems: ``Alice``, ``alice`` and the
fullwidth form of ``alice`` are three users with three folders. The raw ids are stored
in the file and checked on every read, so a file moved or copied to another document's
name is refused.

The document file holds ``format``, ``user_id``, ``layout_id``, ``version``,
``checksum`` (SHA-256 of the canonical document), ``schema_version``, ``updated_at``
(ISO 8601, UTC), ``history_generation`` (the *n* of the history file), ``history_end``
(the byte length of its committed part) and, last, ``document`` in canonical bytes. A
reader verifies the checksum over those bytes.

Commit protocol
---------------
A write holds the document's lock (a per-document `threading.Lock`, then a
`filelock.FileLock` on the sidecar ``.lock`` file: never on the data file, whose inode
changes at every save) and:

1. reads the current version, checksum and ``history_end`` and checks the
   compare-and-swap and hash chain (`prepare_write`);
2. truncates the history file to ``history_end``, dropping the lines a failed or killed
   save left behind, appends the new record and fsyncs it;
3. writes the new document file to a temp file created with
   ``O_CREAT | O_EXCL | O_NOFOLLOW`` in the same folder, and fsyncs it;
4. ``os.replace``s it over the document file (**the commit point**) and fsyncs the folder.

`compact` (history retention) cannot append: it writes the kept records to a new
history file ``<n+1>``, fsyncs it, then commits by replacing the document file with one
naming generation ``n+1`` (same document, same version), and only then removes the old
file. `replace_document` (key rotation) commits a rewritten history the same way, with
the rewritten document in the new document file. The first write of a document removes
history files any earlier, deleted or crashed, document of that name left behind.

The document and its history record are one atomic step: until the rename, readers see
the old document, whose ``history_end`` hides the new line; after it, both. A crash at
any point leaves the old version or the new one, never a mix. If the folder fsync after
the rename fails, the new version is already visible (the rename happened) but not
known to be durable: the write raises `StorageError` saying so, and the caller must
re-read before retrying.

Files this backend did not write are never overwritten: a document or history file
that does not parse, has the wrong shape, a newer ``format``, foreign ids or a wrong
checksum raises `CorruptStoreError` naming the file, for reads and writes alike, and is
left byte for byte as found. A symbolic link (or any non-regular file) where a store
file, lock file or user folder should be is treated the same way: `CorruptStoreError`,
link left in place, its target untouched (files are opened with ``O_NOFOLLOW``).

Reading history
---------------
History lines are appended in version order, so `versions` finds the records below
*before* by a binary search over the byte offsets of the committed part and reads only
the lines it returns, the newest line (which must match the document) and the dozen or
so lines the search looks at, a block at a time; a lookup costs about the same in a long
history as in a short one. Every line it reads is checked: one that does not parse, or
lines read out of version order, raise `CorruptStoreError` naming the history file. A
damaged line outside what a call reads is not noticed by that call; the first call that
reads it reports it, and `VersionService.verify`, which pages through every record,
always does. `compact` reads (and so checks) the whole file.

Operating-system errors become `StorageFullError` (ENOSPC, EDQUOT, EFBIG),
`StoragePermissionError` (EACCES, EPERM, EROFS) or `StorageError`; a busy lock, after
*lock_timeout* seconds, becomes `StorageUnavailableError`. After a failed write no temp
file is left and the previous version stays visible. Readers take no lock, so a store
the process may only read (``read_only=True``) works.

Requires a local file system with ``flock``; network file systems are not supported.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, cast, get_args

import filelock

from dashpersist._canonical import canonical_json, checksum_bytes, parse_json
from dashpersist._faults import faultpoint
from dashpersist._fsync import fsync_folder
from dashpersist.errors import (
    ConfigurationError,
    ConflictError,
    CorruptStoreError,
    NotFoundError,
    StorageError,
    StorageFullError,
    StoragePermissionError,
    StorageUnavailableError,
    ValidationError,
)
from dashpersist.storage._locks import LockPairs
from dashpersist.storage.protocol import (
    DocumentKey,
    StoredDocument,
    VersionOutline,
    VersionRecord,
    outline_from_versions,
    prepare_import,
    prepare_write,
)
from dashpersist.types import ChangeType, JsonObject, JsonPatch, JsonValue

__all__ = ["FORMAT_VERSION", "JSONFileStorage"]

FORMAT_VERSION: Final = 1
"""The on-disk format this module writes and the newest it reads."""

_READABLE_PREFIX_LENGTH = 16
_STEM_PATTERN = r"(?:[a-z0-9]{1,16}-)?[0-9a-f]{64}"
_STEM = re.compile(_STEM_PATTERN)
_DOCUMENT_NAME = re.compile(rf"({_STEM_PATTERN})\.json")
_TEMP_PREFIX = ".dptmp."
_TEMP_NAME = re.compile(rf"\.dptmp\.({_STEM_PATTERN})\.[0-9a-f]{{16}}")
_HISTORY_NAME = re.compile(rf"({_STEM_PATTERN})\.history\.([0-9]+)\.jsonl")

_DOCUMENT_MARKER = b',"document":'
_PATCH_MARKER = b',"patch":'
_UTF8_BOM = b"\xef\xbb\xbf"
_CHANGE_TYPES: Final = frozenset(get_args(ChangeType))

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_FILE_MODE = 0o666  # narrowed by the process umask, like any file the host creates

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_DENIED_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
_LOCK_POLL_INTERVAL = 0.002  # seconds; filelock polls a held lock


def _stem(raw_id: str) -> str:
    readable = re.sub(r"[^a-z0-9]", "", raw_id.encode("ascii", "ignore").decode().lower())
    digest = hashlib.sha256(raw_id.encode("utf-8")).hexdigest()
    prefix = readable[:_READABLE_PREFIX_LENGTH]
    return f"{prefix}-{digest}" if prefix else digest


def _iso_utc(moment: datetime) -> str:
    if moment.tzinfo is None:  # a naive time is taken to be UTC
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


def _translated(exc: OSError, path: Path, action: str, *, note: str = "") -> StorageError:
    message = f"could not {action} {path}: {exc.strerror or type(exc).__name__}{note}"
    if exc.errno in _FULL_ERRNOS:
        return StorageFullError(message, path=path)
    if exc.errno in _DENIED_ERRNOS:
        return StoragePermissionError(message, path=path)
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return CorruptStoreError(
            f"{path} is a symbolic link or not what dashpersist made there; "
            "links inside a store are never followed, and it was left as found",
            path=path,
        )
    return StorageError(message)


@contextlib.contextmanager
def _os_errors(path: Path, action: str) -> Iterator[None]:
    try:
        yield
    except filelock.Timeout:
        raise
    except OSError as exc:
        raise _translated(exc, path, action) from exc


def _corrupt(path: Path, reason: str) -> CorruptStoreError:
    return CorruptStoreError(f"{path} {reason}; it was left as found", path=path)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _read_all(fd: int) -> bytes:
    # Sized by fstat: os.read allocates the whole request up front.
    chunk_size = os.fstat(fd).st_size + 1
    chunks: list[bytes] = []
    while chunk := os.read(fd, chunk_size):
        chunks.append(chunk)
        chunk_size = 1 << 16
    return b"".join(chunks)


def _open_regular(name: str, folder_fd: int, path: Path, flags: int) -> int:
    """Open *name* in the folder without following links; refuse anything but a file."""
    fd = os.open(name, flags | _NOFOLLOW | _CLOEXEC, _FILE_MODE, dir_fd=folder_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _corrupt(path, "is not a regular file")
    return fd


@dataclass(frozen=True, slots=True)
class _Envelope:
    """A document file, decoded: its metadata and the canonical bytes of the document."""

    user_id: str
    layout_id: str
    version: int
    checksum: str
    schema_version: int
    updated_at: datetime
    history_generation: int
    history_end: int
    body: bytes


def _require(value: object, kind: type, path: Path, field: str) -> None:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _corrupt(path, f"has no valid {field!r}")


def _split_envelope(data: bytes, path: Path) -> tuple[dict[str, JsonValue], bytes]:
    # The file is written as the canonical header with the document appended last, so the
    # header parses on its own and the document's bytes are exactly the checksummed ones.
    # (The marker cannot occur earlier: quotes inside header strings are escaped.)
    marker_at = data.find(_DOCUMENT_MARKER)
    if marker_at > 0 and data.endswith(b"}\n"):
        with contextlib.suppress(CorruptStoreError):
            header = parse_json(data[:marker_at] + b"}", source=str(path))
            if isinstance(header, dict):
                return header, data[marker_at + len(_DOCUMENT_MARKER) : -2]
    # Anything else (hand-edited, foreign or damaged) is parsed as a whole for a clear error.
    try:
        whole = parse_json(data, source=str(path))
    except CorruptStoreError as exc:
        raise _corrupt(path, f"is not valid JSON ({exc})") from exc
    if not isinstance(whole, dict):
        raise _corrupt(path, "is not a dashpersist document (not a JSON object)")
    document = whole.pop("document", None)
    _check_format(whole, path)
    if not isinstance(document, dict):
        raise _corrupt(path, "has no valid 'document'")
    try:
        return whole, canonical_json(document)
    except ValidationError as exc:
        raise _corrupt(path, "holds a document JSON cannot represent") from exc


def _check_format(header: dict[str, JsonValue], path: Path) -> None:
    format_version = header.get("format")
    _require(format_version, int, path, "format")
    if cast(int, format_version) > FORMAT_VERSION:
        raise _corrupt(
            path,
            f"has format {format_version}, newer than this dashpersist reads ({FORMAT_VERSION})",
        )
    if format_version != FORMAT_VERSION:
        raise _corrupt(path, f"has an unknown format {format_version}")


def _decode_envelope(data: bytes, path: Path) -> _Envelope:
    if not data:
        raise _corrupt(path, "is empty")
    if data.startswith(_UTF8_BOM):
        raise _corrupt(path, "starts with a UTF-8 byte order mark, which dashpersist never writes")
    header, body = _split_envelope(data, path)
    _check_format(header, path)
    for field, kind in (
        ("user_id", str),
        ("layout_id", str),
        ("version", int),
        ("checksum", str),
        ("schema_version", int),
        ("updated_at", str),
        ("history_generation", int),
        ("history_end", int),
    ):
        _require(header.get(field), kind, path, field)
    version = cast(int, header["version"])
    history_generation = cast(int, header["history_generation"])
    history_end = cast(int, header["history_end"])
    if version < 1 or history_end < 1 or history_generation < 0:
        raise _corrupt(path, "has a version, history_generation or history_end out of range")
    try:
        updated_at = datetime.fromisoformat(cast(str, header["updated_at"]))
    except ValueError as exc:
        raise _corrupt(path, "has an 'updated_at' that is not an ISO 8601 time") from exc
    checksum = cast(str, header["checksum"])
    if checksum_bytes(body) != checksum:
        raise _corrupt(path, "holds a document that does not match its checksum")
    return _Envelope(
        user_id=cast(str, header["user_id"]),
        layout_id=cast(str, header["layout_id"]),
        version=version,
        checksum=checksum,
        schema_version=cast(int, header["schema_version"]),
        updated_at=updated_at,
        history_generation=history_generation,
        history_end=history_end,
        body=body,
    )


def _encode_envelope(envelope: _Envelope) -> bytes:
    header = canonical_json(
        {
            "checksum": envelope.checksum,
            "format": FORMAT_VERSION,
            "history_end": envelope.history_end,
            "history_generation": envelope.history_generation,
            "layout_id": envelope.layout_id,
            "schema_version": envelope.schema_version,
            "updated_at": _iso_utc(envelope.updated_at),
            "user_id": envelope.user_id,
            "version": envelope.version,
        }
    )
    return b"".join((header[:-1], _DOCUMENT_MARKER, envelope.body, b"}\n"))


def _encode_record(
    record: VersionRecord, encoded_patch: bytes | None, encoded_snapshot: bytes | None
) -> bytes:
    header = canonical_json(
        {
            "change_type": record.change_type,
            "checksum": record.checksum,
            "created_at": _iso_utc(record.created_at),
            "description": record.description,
            "device_id": record.device_id,
            "idempotency_key": record.idempotency_key,
            "label": record.label,
            "parent_checksum": record.parent_checksum,
            "schema_version": record.schema_version,
            "version": record.version,
        }
    )
    # Canonical JSON never holds a raw newline, so one record is exactly one line; the
    # patch and snapshot come last so that the header parses on its own (_line_version).
    return b"".join(
        (
            header[:-1],
            _PATCH_MARKER,
            encoded_patch or b"null",
            b',"snapshot":',
            encoded_snapshot or b"null",
            b"}\n",
        )
    )


def _line_header(line: bytes, path: Path) -> dict[str, JsonValue]:
    """Return the fields of one history line but its patch and snapshot, parsing as little
    of it as it can; raise `CorruptStoreError` unless it holds a valid version."""
    marker_at = line.find(_PATCH_MARKER)
    header: JsonValue = None
    if marker_at > 0:
        with contextlib.suppress(CorruptStoreError):
            header = parse_json(line[:marker_at] + b"}", source=str(path))
    if not isinstance(header, dict):
        try:
            header = parse_json(line, source=str(path))
        except CorruptStoreError as exc:
            raise _corrupt(path, "has an unreadable history record") from exc
    if not isinstance(header, dict) or not _is_version(header.get("version")):
        raise _corrupt(path, "has a history record without a valid version")
    return header


def _line_version(line: bytes, path: Path) -> int:
    """Return the version of one history line, parsing as little of it as it can."""
    return cast(int, _line_header(line, path)["version"])


def _is_version(value: JsonValue) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _optional_str(raw: dict[str, JsonValue], field: str, path: Path) -> str | None:
    value = raw.get(field)
    if value is not None and not isinstance(value, str):
        raise _corrupt(path, f"has a history record with an invalid {field!r}")
    return value


def _decode_record(line: bytes, path: Path, version: int | None = None) -> VersionRecord:
    """Decode one history line; with *version*, refuse a line that holds another one."""
    try:
        raw = parse_json(line, source=str(path))
    except CorruptStoreError as exc:
        which = "history record" if version is None else f"record for version {version}"
        raise _corrupt(path, f"has an unreadable {which}") from exc
    if version is not None and (not isinstance(raw, dict) or raw.get("version") != version):
        raise _corrupt(path, f"does not hold version {version} where it should")
    if not isinstance(raw, dict) or not _is_version(raw.get("version")):
        raise _corrupt(path, "has a history record without a valid version")
    version = cast(int, raw["version"])
    _require(raw.get("checksum"), str, path, "checksum")
    _require(raw.get("schema_version"), int, path, "schema_version")
    change_type = raw.get("change_type")
    if change_type not in _CHANGE_TYPES:
        raise _corrupt(path, f"has an unknown change type in version {version}")
    patch, snapshot = raw.get("patch"), raw.get("snapshot")
    if (patch is not None and not isinstance(patch, list)) or (
        snapshot is not None and not isinstance(snapshot, dict)
    ):
        raise _corrupt(path, f"has an invalid patch or snapshot in version {version}")
    try:
        created_at = datetime.fromisoformat(cast(str, raw.get("created_at")))
    except (TypeError, ValueError) as exc:
        raise _corrupt(path, f"has an invalid time in version {version}") from exc
    return VersionRecord(
        version=version,
        checksum=cast(str, raw["checksum"]),
        parent_checksum=_optional_str(raw, "parent_checksum", path),
        created_at=created_at,
        change_type=cast(ChangeType, change_type),
        description=_optional_str(raw, "description", path),
        device_id=_optional_str(raw, "device_id", path),
        label=_optional_str(raw, "label", path),
        schema_version=cast(int, raw["schema_version"]),
        idempotency_key=_optional_str(raw, "idempotency_key", path),
        patch=cast(JsonPatch | None, patch),
        snapshot=snapshot,
    )


@dataclass(frozen=True, slots=True)
class _Place:
    """Where one document lives: its user's folder and the names derived from the ids."""

    folder: Path
    stem: str

    @classmethod
    def of(cls, root: Path, key: DocumentKey) -> _Place:
        return cls(root / _stem(key.user_id), _stem(key.layout_id))

    @property
    def document_name(self) -> str:
        return f"{self.stem}.json"

    def history_name(self, generation: int) -> str:
        return f"{self.stem}.history.{generation}.jsonl"

    @property
    def lock_path(self) -> Path:
        return self.folder / f"{self.stem}.lock"

    @property
    def document_path(self) -> Path:
        return self.folder / self.document_name

    def history_path(self, generation: int) -> Path:
        return self.folder / self.history_name(generation)


@dataclass(frozen=True, slots=True)
class _History:
    """The history file a write appends to, and where its committed part ends."""

    place: _Place
    generation: int
    committed_end: int

    @property
    def path(self) -> Path:
        return self.place.history_path(self.generation)


_BLOCK_SIZE: Final = 1 << 14
"""How many bytes `_HistoryReader` reads at a time: many patch records, or one keyframe."""


@dataclass(frozen=True, slots=True)
class _Line:
    """One history line: the offset of its first byte, and its bytes without the newline."""

    start: int
    data: bytes

    @property
    def end(self) -> int:
        """The offset of the line after it."""
        return self.start + len(self.data) + 1


class _HistoryReader:
    """Read lines of the committed part of an open history file, one block at a time.

    Only the blocks the lines asked for lie in are read, each once, so looking up a few
    records costs about the same in a long history as in a short one. Nothing at or past
    *end* (the document's ``history_end``) is read: lines of saves that never committed
    are invisible. A file shorter than *end*, or whose committed part does not end with a
    newline, raises `CorruptStoreError` naming *path*.
    """

    def __init__(self, fd: int, path: Path, end: int) -> None:
        self.path = path
        self._fd = fd
        self._end = end
        self._blocks: dict[int, bytes] = {}

    def committed_lines(self) -> list[bytes]:
        """Return every committed line (without newlines), reading them in one go."""
        committed = os.pread(self._fd, self._end, 0)
        if len(committed) != self._end or not committed.endswith(b"\n"):
            raise self._cut_short()
        return committed[:-1].split(b"\n")

    def last_line(self) -> _Line:
        """Return the newest committed line."""
        return self.line_holding(self._end - 1)

    def line_holding(self, offset: int) -> _Line:
        """Return the line byte *offset* belongs to."""
        start = self._line_start(offset)
        return _Line(start, self._read(start, self._newline_after(start)))

    def line_before(self, start: int) -> _Line | None:
        """Return the line that ends just before *start*, or ``None`` at the first line."""
        return None if start == 0 else self.line_holding(start - 1)

    def _line_start(self, offset: int) -> int:
        index, stop = divmod(offset, _BLOCK_SIZE)
        while index >= 0:
            newline = self._block(index).rfind(b"\n", 0, stop)
            if newline >= 0:
                return index * _BLOCK_SIZE + newline + 1
            index, stop = index - 1, _BLOCK_SIZE
        return 0

    def _newline_after(self, start: int) -> int:
        index, begin = divmod(start, _BLOCK_SIZE)
        while index * _BLOCK_SIZE < self._end:
            newline = self._block(index).find(b"\n", begin)
            if newline >= 0:
                return index * _BLOCK_SIZE + newline
            index, begin = index + 1, 0
        raise self._cut_short()

    def _read(self, start: int, stop: int) -> bytes:
        first, last = start // _BLOCK_SIZE, max(start, stop - 1) // _BLOCK_SIZE
        data = b"".join(self._block(index) for index in range(first, last + 1))
        return data[start - first * _BLOCK_SIZE : stop - first * _BLOCK_SIZE]

    def _block(self, index: int) -> bytes:
        block = self._blocks.get(index)
        if block is None:
            offset = index * _BLOCK_SIZE
            size = min(_BLOCK_SIZE, self._end - offset)
            block = os.pread(self._fd, size, offset)
            if len(block) != size:
                raise self._cut_short()
            self._blocks[index] = block
        return block

    def _cut_short(self) -> CorruptStoreError:
        return _corrupt(self.path, "is shorter than its document says")


def _select_records(
    history: _HistoryReader, envelope: _Envelope, before: int | None, limit: int
) -> list[VersionRecord]:
    """Return up to *limit* records below *before*, newest first, reading only those lines,
    the newest line and the lines a binary search looks at.

    Every line read is checked: it must parse, and the lines read must hold rising
    versions in file order. A damaged line elsewhere is not noticed here.
    """
    head = history.last_line()
    header = _line_header(head.data, history.path)
    if header["version"] != envelope.version or header.get("checksum") != envelope.checksum:
        raise _corrupt(history.path, "does not end with the current version's record")
    versions_read = {head.start: envelope.version}
    if limit < 1:
        return []
    if before is None or before > envelope.version:
        line: _Line | None = head
    else:
        line = history.line_before(_first_line_from(history, head, before, versions_read))
    records: list[VersionRecord] = []
    while line is not None and len(records) < limit:
        record = _decode_record(line.data, history.path)
        versions_read[line.start] = record.version
        records.append(record)
        line = history.line_before(line.start)
    _check_order(versions_read, history.path)
    return records


def _first_line_from(
    history: _HistoryReader, head: _Line, version: int, versions_read: dict[int, int]
) -> int:
    """Return where the first line of *version* or newer starts (*head* is one such line).

    A binary search over byte offsets, relying on lines being in version order; each line
    it parses is added to *versions_read* (its start: its version) for `_check_order`.
    """
    low, high = 0, head.start  # lines before *low* are older; *high* starts a newer line
    while low < high:
        line = history.line_holding((low + high) // 2)
        line_version = _line_version(line.data, history.path)
        versions_read[line.start] = line_version
        if line_version < version:
            low = line.end
        else:
            high = line.start
    return low


def _check_order(versions_read: Mapping[int, int], path: Path) -> None:
    """Raise `CorruptStoreError` unless the lines read hold rising versions in file order."""
    versions = [versions_read[start] for start in sorted(versions_read)]
    if any(newer <= older for older, newer in itertools.pairwise(versions)):
        raise _corrupt(path, "holds records out of order")


def _compacted_lines(
    lines: list[bytes],
    path: Path,
    *,
    remove: Collection[int],
    snapshots: Mapping[int, JsonObject],
) -> list[bytes]:
    kept: list[bytes] = []
    for line in lines:
        version = _line_version(line, path)
        if version in remove:
            continue
        if version not in snapshots:
            kept.append(line)
            continue
        record = _decode_record(line, path, version)
        patch = None if record.patch is None else canonical_json(cast(JsonValue, record.patch))
        snapshot = canonical_json(snapshots[version])
        kept.append(_encode_record(record, patch, snapshot)[:-1])
    return kept


class JSONFileStorage:
    """Store each document as a JSON file under *root*, safe across threads and processes.

    *root* is created (with its parents) when missing. *lock_timeout* (seconds) bounds
    the wait for another writer of the same document; past it a write raises
    `StorageUnavailableError`. ``fsync=False`` skips every fsync: the store then survives
    a killed process but not a power loss (use it for tests only). ``read_only=True``
    opens a store this process may only read; writes then raise
    `StoragePermissionError`. *clock* stamps records made without one (default: UTC now).

    Raises `StoragePermissionError` naming *root* when it cannot be read, or written
    unless ``read_only``; `ConfigurationError` when it is not a folder. Opening (unless
    ``read_only``) removes temp files that crashed saves of this backend left behind;
    no other file is touched. See the module docstring for the on-disk layout.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        lock_timeout: float = 10.0,
        fsync: bool = True,
        read_only: bool = False,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if not lock_timeout >= 0:
            raise ConfigurationError(f"lock_timeout must be >= 0 seconds, not {lock_timeout}")
        self._root = Path(os.path.abspath(os.fspath(root)))
        self._lock_timeout = float(lock_timeout)
        self._fsync = fsync
        self._read_only = read_only
        self._clock = clock or (lambda: datetime.now(UTC))
        self._closed = False
        self._guard = threading.Lock()
        self._locks: LockPairs[DocumentKey] = LockPairs()
        self._open_root()
        if not read_only:
            self._remove_stale_temp_files()

    @property
    def root(self) -> Path:
        """The folder this store keeps its files in (absolute)."""
        return self._root

    def document_path(self, key: DocumentKey) -> Path:
        """Return the file that holds *key*'s current version, whether or not it exists."""
        return _Place.of(self._root, key).document_path

    def read(self, key: DocumentKey) -> StoredDocument | None:
        """Return the current version of *key*, or ``None``; a fresh copy every call.

        Raises `CorruptStoreError` naming the file when it cannot be read back.
        """
        self._check_open()
        place = _Place.of(self._root, key)
        envelope = self._read_envelope(place, key)
        if envelope is None:
            return None
        document = parse_json(envelope.body, source=str(place.document_path))
        if not isinstance(document, dict):
            raise _corrupt(place.document_path, "holds a document that is not a JSON object")
        return StoredDocument(
            key=key,
            document=document,
            version=envelope.version,
            checksum=envelope.checksum,
            updated_at=envelope.updated_at,
            schema_version=envelope.schema_version,
        )

    def write(
        self,
        key: DocumentKey,
        document: JsonObject,
        record: VersionRecord | None = None,
        *,
        expected_version: int | None,
    ) -> int:
        """Store *document* and *record* if *key* is still at *expected_version*.

        Return the new version. Raises `ConflictError` (nothing written) on a version
        mismatch, `CorruptStoreError` when the stored file cannot be read back (it is
        never overwritten), `StorageUnavailableError` when the lock stays busy past
        *lock_timeout*, and `StorageFullError`, `StoragePermissionError` or
        `StorageError` for operating-system failures; after any of them the previous
        version is the visible one, except as the module docstring says for a failed
        folder fsync after the commit.
        """
        self._check_open()
        self._check_writable()
        place = _Place.of(self._root, key)
        with self._locked(key, place, create=True) as folder_fd:
            version = self._write_locked(
                folder_fd,
                place,
                key,
                document=document,
                record=record,
                expected_version=expected_version,
            )
            faultpoint("before_lock_release")
        return version

    def delete(self, key: DocumentKey) -> None:
        """Remove the document and its history; raise `NotFoundError` if it does not exist.

        A document whose file cannot be read back is not deleted (`CorruptStoreError`).
        """
        self._check_open()
        self._check_writable()
        place = _Place.of(self._root, key)
        with self._locked(key, place, create=False) as folder_fd:
            if self._read_envelope_in(folder_fd, place, key) is None:
                raise NotFoundError(f"{key} does not exist")
            # Removing the document is the commit point; a history file left by a
            # crash right after it is removed by the next first write.
            with _os_errors(place.document_path, "delete"):
                os.unlink(place.document_name, dir_fd=folder_fd)
                self._sync(folder_fd)
            self._remove_history_files(folder_fd, place, keep=None)

    def layout_ids(self, user_id: str) -> list[str]:
        """Return the layout ids *user_id* has, sorted, read back from the files."""
        self._check_open()
        folder = _Place.of(self._root, DocumentKey(user_id)).folder
        folder_fd = self._open_folder(folder, create=False)
        if folder_fd is None:
            return []
        try:
            with _os_errors(folder, "list"):
                names = os.listdir(folder_fd)
            layout_ids: list[str] = []
            for name in sorted(names):
                match = _DOCUMENT_NAME.fullmatch(name)
                if match is None:
                    continue
                place = _Place(folder, match.group(1))
                envelope = self._load_envelope(folder_fd, place)
                if envelope is None:
                    continue  # deleted since the listing
                if envelope.user_id != user_id or _stem(envelope.layout_id) != place.stem:
                    raise _corrupt(place.document_path, "holds the ids of another document")
                layout_ids.append(envelope.layout_id)
        finally:
            os.close(folder_fd)
        return sorted(layout_ids)

    def user_ids(self) -> list[str]:
        """Return every user id that has at least one document, sorted.

        Folder names are hashes, so each user's id is read back from one of their
        document files; one that cannot be read, or whose ids do not belong to its
        folder, raises `CorruptStoreError` naming it.
        """
        self._check_open()
        with _os_errors(self._root, "list"):
            names = sorted(name for name in os.listdir(self._root) if _STEM.fullmatch(name))
        user_ids = []
        for name in names:
            user_id = self._user_id_in(self._root / name)
            if user_id is not None:
                user_ids.append(user_id)
        return sorted(user_ids)

    def versions(
        self, key: DocumentKey, *, before: int | None = None, limit: int = 20
    ) -> list[VersionRecord]:
        """Return up to *limit* history records of *key*, newest first, below *before*.

        Only committed records are returned: lines a failed save appended past the
        document's ``history_end`` are ignored. Only the lines near *before* are read (see
        "Reading history" in the module docstring). Raises `CorruptStoreError` naming the
        history file when it does not continue up to the current document, or when a line
        it reads does not parse or is out of order.
        """
        self._check_open()
        place = _Place.of(self._root, key)
        envelope = self._read_envelope(place, key)
        for _attempt in range(3):
            if envelope is None:
                return []
            try:
                with self._history(place, envelope) as history:
                    return _select_records(history, envelope, before, limit)
            except CorruptStoreError:
                # A writer or a delete may have moved on between the two reads: look again.
                latest = self._read_envelope(place, key)
                if latest == envelope:
                    raise
                envelope = latest
        raise StorageUnavailableError(f"{key} kept changing while its history was read")

    def version_outline(
        self, key: DocumentKey, *, before: int | None = None
    ) -> list[VersionOutline]:
        """Return version, label and keyframe flag of *key*'s records below *before*,
        newest first (read through `versions`: each line is one whole record)."""
        return outline_from_versions(self, key, before=before)

    def compact(
        self,
        key: DocumentKey,
        *,
        remove: Collection[int],
        snapshots: Mapping[int, JsonObject],
    ) -> None:
        """Apply retention to *key*'s history in one atomic step.

        Store each of *snapshots* as the snapshot of the history record with that version,
        then delete the records *remove* names. The current document is never changed;
        removing the newest record is a `ConfigurationError`. Versions that do not exist
        are ignored, and so is a document that does not exist. The kept records go to a
        new history file, committed by replacing the document file (see the module
        docstring).
        """
        self._check_open()
        self._check_writable()
        place = _Place.of(self._root, key)
        with (
            contextlib.suppress(NotFoundError),
            self._locked(key, place, create=False) as folder_fd,
        ):
            current = self._read_envelope_in(folder_fd, place, key)
            if current is None:
                return
            if current.version in remove:
                raise ConfigurationError(f"the newest version of {key} cannot be removed")
            lines = self._committed_lines(place, current)
            kept = _compacted_lines(
                lines,
                place.history_path(current.history_generation),
                remove=remove,
                snapshots=snapshots,
            )
            if kept == lines:
                return
            self._commit_new_history(
                folder_fd, place, current, kept, what=f"the compacted history of {key}"
            )

    def import_document(
        self, key: DocumentKey, current: StoredDocument, history: list[VersionRecord]
    ) -> None:
        """Store *current* and its *history* exactly as given, in one atomic step.

        The whole history is written as the document's history file first, then the
        document file is renamed into place: the commit point, as for `write`. Raises
        `ConflictError` and writes nothing if *key* exists, `ValidationError` for what
        `prepare_import` refuses, and the errors `write` raises.
        """
        self._check_open()
        self._check_writable()
        prepared = prepare_import(key, current, history)
        lines = b"".join(
            _encode_record(item.record, item.patch, item.snapshot) for item in prepared.records
        )
        envelope = _Envelope(
            user_id=key.user_id,
            layout_id=key.layout_id,
            version=current.version,
            checksum=current.checksum,
            schema_version=current.schema_version,
            updated_at=current.updated_at,
            history_generation=0,
            history_end=len(lines),
            body=prepared.body,
        )
        place = _Place.of(self._root, key)
        with self._locked(key, place, create=True) as folder_fd:
            existing = self._read_envelope_in(folder_fd, place, key)
            if existing is not None:
                raise ConflictError(key, expected_version=None, actual_version=existing.version)
            self._remove_history_files(folder_fd, place, keep=None, refuse_foreign=True)
            history_file = _History(place, 0, 0)
            try:
                self._append_history(folder_fd, history_file, lines)
                self._replace_document(folder_fd, place, _encode_envelope(envelope))
            except BaseException as exc:
                self._discard_history_tail(folder_fd, history_file, exc)
                raise
            self._sync_after_commit(folder_fd, place, f"the imported {key}")

    def replace_document(
        self,
        key: DocumentKey,
        current: StoredDocument,
        history: list[VersionRecord],
        *,
        expected_version: int,
    ) -> None:
        """Replace *key*'s document and whole history, if it is still at *expected_version*.

        As `compact` does: the new history is written as the next history generation,
        then committed by replacing the document file with one naming it; a crash leaves
        the old document with its old history or the new with the new. Raises
        `ConflictError` and changes nothing if *key* does not exist or is at another
        version, `ValidationError` for what `prepare_import` refuses, and the errors
        `write` raises.
        """
        self._check_open()
        self._check_writable()
        prepared = prepare_import(key, current, history)
        lines = [
            _encode_record(item.record, item.patch, item.snapshot)[:-1] for item in prepared.records
        ]
        place = _Place.of(self._root, key)
        try:
            with self._locked(key, place, create=False) as folder_fd:
                existing = self._read_envelope_in(folder_fd, place, key)
                actual_version = None if existing is None else existing.version
                if existing is None or actual_version != expected_version:
                    raise ConflictError(
                        key, expected_version=expected_version, actual_version=actual_version
                    )
                envelope = _Envelope(
                    user_id=key.user_id,
                    layout_id=key.layout_id,
                    version=current.version,
                    checksum=current.checksum,
                    schema_version=current.schema_version,
                    updated_at=current.updated_at,
                    history_generation=existing.history_generation,
                    history_end=0,  # set by _commit_new_history
                    body=prepared.body,
                )
                self._commit_new_history(
                    folder_fd, place, envelope, lines, what=f"the replaced history of {key}"
                )
        except NotFoundError as exc:  # no folder: the user has no document at all
            raise ConflictError(
                key, expected_version=expected_version, actual_version=None
            ) from exc

    def close(self) -> None:
        """Mark the store closed; idempotent. No file or lock stays open between calls."""
        with self._guard:
            self._closed = True
            self._locks.clear()

    # -- opening -------------------------------------------------------------------------

    def _open_root(self) -> None:
        root = self._root
        if not root.exists():
            if self._read_only:
                raise ConfigurationError(f"{root} does not exist (read-only: not created)")
            with _os_errors(root, "create the store folder"):
                root.mkdir(parents=True, exist_ok=True)
        if not root.is_dir():
            raise ConfigurationError(f"{root} is not a folder")
        if not os.access(root, os.R_OK | os.X_OK):
            raise StoragePermissionError(f"cannot read the store folder {root}", path=root)
        if not self._read_only and not os.access(root, os.W_OK | os.X_OK):
            raise StoragePermissionError(
                f"cannot write to the store folder {root}; pass read_only=True to only read it",
                path=root,
            )

    def _remove_stale_temp_files(self) -> None:
        # Only temp files of this backend's own naming, and only while their document's
        # lock is free: a locked one belongs to a save in flight in another process.
        with _os_errors(self._root, "list"):
            folders = [e for e in os.scandir(self._root) if _STEM.fullmatch(e.name)]
        for folder in folders:
            if not folder.is_dir(follow_symlinks=False):
                continue
            with _os_errors(Path(folder.path), "list"):
                entries = list(os.scandir(folder.path))
            for entry in entries:
                match = _TEMP_NAME.fullmatch(entry.name)
                if match is None or not entry.is_file(follow_symlinks=False):
                    continue
                lock_path = Path(folder.path) / f"{match.group(1)}.lock"
                lock = self._file_lock(lock_path)
                try:
                    with _os_errors(lock_path, "lock"):
                        lock.acquire(timeout=0)
                except (filelock.Timeout, StoragePermissionError):
                    continue  # a save in flight, or a folder this process may only read
                try:
                    with (
                        _os_errors(Path(entry.path), "remove"),
                        contextlib.suppress(FileNotFoundError),
                    ):
                        os.unlink(entry.path)
                finally:
                    lock.release()

    # -- reading -------------------------------------------------------------------------

    def _user_id_in(self, folder: Path) -> str | None:
        """Return the user id the documents in *folder* hold; ``None`` when it holds none."""
        folder_fd = self._open_folder(folder, create=False)
        if folder_fd is None:
            return None  # removed since the listing
        try:
            with _os_errors(folder, "list"):
                names = sorted(os.listdir(folder_fd))
            for name in names:
                match = _DOCUMENT_NAME.fullmatch(name)
                if match is None:
                    continue
                place = _Place(folder, match.group(1))
                envelope = self._load_envelope(folder_fd, place)
                if envelope is None:
                    continue  # deleted since the listing
                if (
                    _stem(envelope.user_id) != folder.name
                    or _stem(envelope.layout_id) != place.stem
                ):
                    raise _corrupt(place.document_path, "holds the ids of another document")
                return envelope.user_id
        finally:
            os.close(folder_fd)
        return None

    def _open_folder(self, folder: Path, *, create: bool) -> int | None:
        """Open a user folder without following links; ``None`` when it does not exist."""
        flags = os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC
        try:
            return os.open(folder, flags)
        except FileNotFoundError:
            if not create:
                return None
        except OSError as exc:
            raise _translated(exc, folder, "open") from exc
        # Another writer may create it at the same moment: that is as good.
        with _os_errors(folder, "create"), contextlib.suppress(FileExistsError):
            os.mkdir(folder)
            self._sync_root()
        with _os_errors(folder, "open"):
            return os.open(folder, flags)

    def _read_envelope(self, place: _Place, key: DocumentKey) -> _Envelope | None:
        folder_fd = self._open_folder(place.folder, create=False)
        if folder_fd is None:
            return None
        try:
            return self._read_envelope_in(folder_fd, place, key)
        finally:
            os.close(folder_fd)

    def _read_envelope_in(
        self, folder_fd: int, place: _Place, key: DocumentKey
    ) -> _Envelope | None:
        envelope = self._load_envelope(folder_fd, place)
        if envelope is not None and (envelope.user_id, envelope.layout_id) != (
            key.user_id,
            key.layout_id,
        ):
            raise _corrupt(place.document_path, f"holds the ids of another document, not {key}")
        return envelope

    def _load_envelope(self, folder_fd: int, place: _Place) -> _Envelope | None:
        path = place.document_path
        with _os_errors(path, "read"):
            try:
                fd = _open_regular(place.document_name, folder_fd, path, os.O_RDONLY)
            except FileNotFoundError:
                return None
            try:
                data = _read_all(fd)
            finally:
                os.close(fd)
        return _decode_envelope(data, path)

    @contextlib.contextmanager
    def _history(self, place: _Place, envelope: _Envelope) -> Iterator[_HistoryReader]:
        """Open the history file *envelope* names, to read its committed part."""
        path = place.history_path(envelope.history_generation)
        folder_fd = self._open_folder(place.folder, create=False)
        if folder_fd is None:
            raise _corrupt(path, "is missing")
        try:
            with _os_errors(path, "read"):
                try:
                    fd = _open_regular(path.name, folder_fd, path, os.O_RDONLY)
                except FileNotFoundError as exc:
                    raise _corrupt(path, "is missing") from exc
        finally:
            os.close(folder_fd)
        try:
            with _os_errors(path, "read"):
                yield _HistoryReader(fd, path, envelope.history_end)
        finally:
            os.close(fd)

    def _committed_lines(self, place: _Place, envelope: _Envelope) -> list[bytes]:
        """Return the committed history lines the document names (without newlines)."""
        with self._history(place, envelope) as history:
            return history.committed_lines()

    # -- writing -------------------------------------------------------------------------

    def _write_locked(
        self,
        folder_fd: int,
        place: _Place,
        key: DocumentKey,
        *,
        document: JsonObject,
        record: VersionRecord | None,
        expected_version: int | None,
    ) -> int:
        current = self._read_envelope_in(folder_fd, place, key)
        prepared = prepare_write(
            key,
            document,
            record,
            expected_version=expected_version,
            current=None if current is None else (current.version, current.checksum),
            clock=self._clock,
        )
        if current is None:
            self._remove_history_files(folder_fd, place, keep=None, refuse_foreign=True)
        generation = 0 if current is None else current.history_generation
        committed_end = 0 if current is None else current.history_end
        line = _encode_record(prepared.record, prepared.encoded_patch, prepared.encoded_snapshot)
        envelope = _Envelope(
            user_id=key.user_id,
            layout_id=key.layout_id,
            version=prepared.record.version,
            checksum=prepared.record.checksum,
            schema_version=prepared.record.schema_version,
            updated_at=prepared.record.created_at,
            history_generation=generation,
            history_end=committed_end + len(line),
            body=prepared.body,
        )
        history = _History(place, generation, committed_end)
        try:
            self._append_history(folder_fd, history, line)
            self._replace_document(folder_fd, place, _encode_envelope(envelope))
        except BaseException as exc:
            self._discard_history_tail(folder_fd, history, exc)
            raise
        faultpoint("after_rename_before_dir_fsync")
        self._sync_after_commit(folder_fd, place, f"version {envelope.version} of {key}")
        return envelope.version

    def _sync_after_commit(self, folder_fd: int, place: _Place, what: str) -> None:
        try:
            self._sync(folder_fd)
        except OSError as exc:
            raise _translated(
                exc,
                place.folder,
                "sync the folder of",
                note=f"; {what} is in place but may not survive a power loss: re-read it",
            ) from exc

    def _append_history(self, folder_fd: int, history: _History, line: bytes) -> None:
        path, committed_end = history.path, history.committed_end
        with _os_errors(path, "append to"):
            fd = _open_regular(path.name, folder_fd, path, os.O_RDWR | os.O_CREAT)
            try:
                size = os.fstat(fd).st_size
                if size < committed_end or (
                    committed_end and os.pread(fd, 1, committed_end - 1) != b"\n"
                ):
                    raise _corrupt(path, "is shorter than its document says")
                if size > committed_end:  # lines of a save that never committed
                    os.ftruncate(fd, committed_end)
                os.lseek(fd, committed_end, os.SEEK_SET)
                half = len(line) // 2
                _write_all(fd, line[:half])
                faultpoint("during_history_append")
                _write_all(fd, line[half:])
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)

    def _commit_new_history(
        self, folder_fd: int, place: _Place, envelope: _Envelope, lines: list[bytes], *, what: str
    ) -> None:
        """Write *lines* as history generation n+1 (*envelope* names n), then commit by
        replacing the document file with *envelope* naming it; remove the old generations."""
        generation = envelope.history_generation + 1
        path = place.history_path(generation)
        content = b"".join(line + b"\n" for line in lines)
        with _os_errors(path, "write"):
            with contextlib.suppress(FileNotFoundError):  # a compaction that crashed
                os.unlink(path.name, dir_fd=folder_fd)
            fd = os.open(
                path.name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC,
                _FILE_MODE,
                dir_fd=folder_fd,
            )
            try:
                _write_all(fd, content)
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        committed = replace(envelope, history_generation=generation, history_end=len(content))
        try:
            self._replace_document(folder_fd, place, _encode_envelope(committed))
        except BaseException as exc:
            try:
                os.unlink(path.name, dir_fd=folder_fd)
            except OSError as cleanup:
                exc.add_note(f"{path} could not be removed: {cleanup}")
            raise
        self._sync_after_commit(folder_fd, place, what)
        self._remove_history_files(folder_fd, place, keep=generation)

    def _remove_history_files(
        self, folder_fd: int, place: _Place, *, keep: int | None, refuse_foreign: bool = False
    ) -> None:
        """Remove *place*'s history files of every generation but *keep*.

        Anything else under such a name (a link, a folder) is left in place; with
        *refuse_foreign* it raises `CorruptStoreError` instead.
        """
        with _os_errors(place.folder, "list"):
            names = os.listdir(folder_fd)
        for name in names:
            match = _HISTORY_NAME.fullmatch(name)
            if match is None or match.group(1) != place.stem or int(match.group(2)) == keep:
                continue
            path = place.folder / name
            with _os_errors(path, "remove"), contextlib.suppress(FileNotFoundError):
                if not stat.S_ISREG(os.stat(name, dir_fd=folder_fd, follow_symlinks=False).st_mode):
                    if refuse_foreign:
                        raise _corrupt(path, "is not a regular file")
                    continue
                os.unlink(name, dir_fd=folder_fd)

    def _replace_document(self, folder_fd: int, place: _Place, envelope: bytes) -> None:
        temp_name = f"{_TEMP_PREFIX}{place.stem}.{secrets.token_hex(8)}"
        temp_path = place.folder / temp_name
        try:
            with _os_errors(temp_path, "write"):
                fd = os.open(
                    temp_name,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC,
                    _FILE_MODE,
                    dir_fd=folder_fd,
                )
                try:
                    _write_all(fd, envelope)
                    faultpoint("after_temp_write")
                    if self._fsync:
                        os.fsync(fd)
                    faultpoint("after_temp_fsync")
                finally:
                    os.close(fd)
            # os.replace() is atomic: after a crash the folder holds the old document or
            # the new one, never a torn mix. Hence the fsync before it.
            with _os_errors(place.document_path, "replace"):
                os.replace(
                    temp_name, place.document_name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd
                )
        except BaseException as exc:
            try:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp_name, dir_fd=folder_fd)
            except OSError as cleanup:
                exc.add_note(f"the temp file {temp_path} could not be removed: {cleanup}")
            raise

    def _discard_history_tail(
        self, folder_fd: int, history: _History, failure: BaseException
    ) -> None:
        # Best effort, to free the space at once; the next write trims it anyway.
        path = history.path
        try:
            fd = os.open(path.name, os.O_WRONLY | _NOFOLLOW | _CLOEXEC, dir_fd=folder_fd)
        except OSError as exc:
            if not isinstance(exc, FileNotFoundError):
                failure.add_note(f"{path} was not trimmed: {exc}")
            return
        try:
            info = os.fstat(fd)
            if stat.S_ISREG(info.st_mode) and info.st_size > history.committed_end:
                os.ftruncate(fd, history.committed_end)
        except OSError as exc:
            failure.add_note(f"{path} was not trimmed: {exc}")
        finally:
            os.close(fd)

    def _sync(self, fd: int) -> None:
        if self._fsync:
            os.fsync(fd)

    def _sync_root(self) -> None:
        if not self._fsync:
            return
        with _os_errors(self._root, "sync"):
            fsync_folder(self._root)

    # -- locking -------------------------------------------------------------------------

    def _file_lock(self, path: Path) -> filelock.FileLock:
        return filelock.FileLock(
            path,
            timeout=self._lock_timeout,
            thread_local=False,
            poll_interval=_LOCK_POLL_INTERVAL,
            fallback_to_soft=False,
        )

    @contextlib.contextmanager
    def _locked(self, key: DocumentKey, place: _Place, *, create: bool) -> Iterator[int]:
        """Hold *key*'s thread lock and file lock; yield its folder, opened without links."""
        locks = self._locks.get(key, lambda: self._file_lock(place.lock_path))
        thread_lock, file_lock = locks.thread, locks.file
        deadline = time.monotonic() + self._lock_timeout
        if not thread_lock.acquire(timeout=self._lock_timeout):
            raise self._busy(key)
        try:
            folder_fd = self._open_folder(place.folder, create=create)
            if folder_fd is None:
                raise NotFoundError(f"{key} does not exist")
            try:
                try:
                    with _os_errors(place.lock_path, "lock"):
                        file_lock.acquire(timeout=max(0.0, deadline - time.monotonic()))
                except filelock.Timeout as exc:
                    raise self._busy(key) from exc
                try:
                    yield folder_fd
                finally:
                    file_lock.release()
            finally:
                os.close(folder_fd)
        finally:
            thread_lock.release()

    def _busy(self, key: DocumentKey) -> StorageUnavailableError:
        return StorageUnavailableError(
            f"{key} stayed locked by another writer for {self._lock_timeout} s; nothing was written"
        )

    def _check_open(self) -> None:
        if self._closed:
            raise ConfigurationError(f"this JSONFileStorage ({self._root}) is closed")

    def _check_writable(self) -> None:
        if self._read_only:
            raise StoragePermissionError(
                f"the store {self._root} was opened read-only", path=self._root
            )

"""Save and load through each backend and the manager, as ratios to raw baselines of the same run.

Baselines: stdlib sqlite3 (WAL, synchronous=NORMAL) doing the same upsert + history insert
in one transaction with the body pre-serialized; raw psycopg doing the same on PostgreSQL;
a raw atomic file write (temp + fsync + rename + directory fsync) of the same bytes.

``storage_write`` is the backend's write as the manager makes it: the record carries the
document's canonical bytes and checksum, which the manager computed for the checksum,
just as the baselines get their body serialized. ``encoding_write_ratio`` is the same
write of a plain dict that the storage must encode and hash itself (SHA-256 and sorted
canonical JSON cost about 35 µs of a 50-widget write here).

``save_layout`` is measured three ways, each a new version with one widget changed:
``save_layout_*`` saves what an app's edit makes (the last layout with one widget
changed by `Layout.update_widget`, the other widgets the same objects), the headline
figure; ``fresh_model_ratio`` saves layouts validated from dicts (every widget a new
object); ``dict_ratio`` saves plain dicts (JSON from a browser). ``single_save_*`` time
single saves of an edit chain an app's pause apart, median and 97th percentile, over the
median raw save timed in the same loop.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._timing import format_table, layout_document, median_seconds
from dashpersist import DocumentKey, Layout, PersistenceConfig, PersistenceManager, Storage
from dashpersist._canonical import canonical_json, checksum_bytes
from dashpersist.storage.jsonfile import JSONFileStorage
from dashpersist.storage.protocol import VersionRecord
from dashpersist.storage.sql import SQLStorage

SIZES = (10, 50, 500)


def _per_size(size: int) -> tuple[int, int]:
    return (7, 30) if size < 500 else (5, 8)


class RawSQLite:
    """The floor: stdlib sqlite3 doing one document upsert and one history insert."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE doc (u TEXT, l TEXT, version INT, body TEXT, PRIMARY KEY (u, l))"
        )
        self.db.execute(
            "CREATE TABLE hist (u TEXT, l TEXT, version INT, body TEXT, "
            "PRIMARY KEY (u, l, version))"
        )
        self.db.execute("INSERT INTO doc VALUES ('u', 'l', 0, '{}')")
        self.version = 0

    def save(self, body: str) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        cursor = self.db.execute(
            "UPDATE doc SET body = ?, version = version + 1 "
            "WHERE u = 'u' AND l = 'l' AND version = ?",
            (body, self.version),
        )
        assert cursor.rowcount == 1
        self.version += 1
        self.db.execute("INSERT INTO hist VALUES ('u', 'l', ?, ?)", (self.version, body))
        self.db.execute("COMMIT")

    def load(self) -> object:
        row = self.db.execute("SELECT body FROM doc WHERE u = 'u' AND l = 'l'").fetchone()
        return orjson.loads(row[0])


def raw_atomic_write(folder: Path, body: bytes) -> None:
    """The JSON folder's floor: write a temp file, fsync, rename, fsync the directory."""
    final = folder / "doc.json"
    temp = folder / "doc.json.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, body)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, final)
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _writer(
    storage: Storage, documents: list[dict[str, Any]], *, encoded: bool
) -> Callable[[], None]:
    """Return a function that writes the next of *documents* (cycling) with compare-and-swap
    and a keyframe history record (the whole document, as the raw baselines store).

    With *encoded*, the write is the one the manager makes: its record carries the
    document's canonical bytes and checksum, computed beforehand like the baselines'
    body (the manager has them from computing the checksum). Without, the storage
    encodes and hashes the document itself.
    """
    key = DocumentKey("u")
    prepared = itertools.cycle(
        [
            (document, body, checksum_bytes(body))
            for document in documents
            for body in [canonical_json(document)]
        ]
    )
    state: dict[str, Any] = {"version": 0, "parent": None}

    def write() -> None:
        document, body, digest = next(prepared)
        version = state["version"]
        record = None
        if encoded:
            record = VersionRecord(
                version=version + 1,
                checksum=digest,
                parent_checksum=state["parent"],
                created_at=datetime.now(UTC),
                snapshot=document,
                encoded_document=body,
            )
        state["version"] = storage.write(key, document, record, expected_version=version or None)
        state["parent"] = digest

    return write


def _bodies(size: int) -> list[dict[str, Any]]:
    return [layout_document(size, revision) for revision in range(64)]


def _saves_needed(size: int) -> int:
    batches, per_batch = _per_size(size)
    return 3 + batches * per_batch  # the warm-up, then every timed call


def _edits(size: int, count: int | None = None) -> Iterator[Layout]:
    """Layouts as an app makes them: each is the last one with one widget retitled
    (`update_widget`), so the other widgets are the same objects as in the last save."""
    layout = Layout.model_validate(layout_document(size, 0))
    chain = []
    for revision in range(_saves_needed(size) if count is None else count):
        layout = layout.update_widget(f"w{revision % size}", title=f"Edit {revision}")
        chain.append(layout)
    return iter(chain)


def _fresh(size: int) -> Iterator[Layout]:
    """Layouts validated from dicts, each save's widgets new objects never saved before."""
    return iter(
        [
            Layout.model_validate(layout_document(size, revision))
            for revision in range(_saves_needed(size))
        ]
    )


def _manager_saves(
    store: str | Storage, size: int, make: Callable[[int], Iterator[Any]]
) -> Callable[[], None]:
    """Return a function that saves the next layout *make* yields, at once, through a new
    manager of *store*."""
    manager: PersistenceManager[Layout] = PersistenceManager(store)
    layouts = make(size)
    _MANAGERS.append(manager)
    return lambda: manager.save_layout("u", next(layouts), immediate=True)


def _dicts(size: int) -> Iterator[dict[str, Any]]:
    """Layouts as plain dicts (a browser's JSON), one widget changed from the last."""
    return (layout_document(size, revision) for revision in itertools.count())


_MANAGERS: list[PersistenceManager[Layout]] = []


def _single_saves(root: Path, size: int, raw_save: Callable[[], None]) -> tuple[float, float]:
    """Return the median and the 97th percentile of single `save_layout` calls, each
    over the median raw save timed beside it in the same loop.

    The saves are an app's: an edit chain with a short pause between saves, so history
    trims and WAL checkpoints fall where they would; the percentile shows how much the
    slowest saves stand out, which a mean of batches hides.
    """
    calls = 400 if size < 500 else 120  # a dozen history trims at 50 widgets
    layouts = _edits(size, calls)
    manager: PersistenceManager[Layout] = PersistenceManager(
        f"sqlite:///{root / f'single-{size}.db'}"
    )
    ours, raw = [], []
    for layout in layouts:
        start = time.perf_counter()
        manager.save_layout("u", layout, immediate=True)
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        raw_save()
        raw.append(time.perf_counter() - start)
        time.sleep(0.0005)
    manager.close()
    baseline = statistics.median(raw)
    return statistics.median(ours) / baseline, statistics.quantiles(ours, n=100)[96] / baseline


def bench_sqlite(root: Path, size: int) -> dict[str, object]:
    documents = _bodies(size)
    encoded = [orjson.dumps(d, option=orjson.OPT_SORT_KEYS).decode() for d in documents]
    models = [Layout.model_validate(d) for d in documents]
    raw = RawSQLite(root / f"raw-{size}.db")
    storage = SQLStorage(f"sqlite:///{root / f'storage-{size}.db'}")
    encoding = SQLStorage(f"sqlite:///{root / f'encoding-{size}.db'}")
    managed = PersistenceManager(f"sqlite:///{root / f'manager-{size}.db'}")
    uncached = PersistenceManager(
        f"sqlite:///{root / f'manager-{size}.db'}", config=PersistenceConfig(cache_size=0)
    )
    raw_cycle = itertools.cycle(encoded)
    managed.save_layout("u", models[0], immediate=True)  # what the loads read

    times = median_seconds(
        {
            "raw_save": lambda: raw.save(next(raw_cycle)),
            "storage_write": _writer(storage, documents, encoded=True),
            "encoding_write": _writer(encoding, documents, encoded=False),
            "manager_save": _manager_saves(f"sqlite:///{root / f'edits-{size}.db'}", size, _edits),
            "fresh_model_save": _manager_saves(
                f"sqlite:///{root / f'fresh-{size}.db'}", size, _fresh
            ),
            "dict_save": _manager_saves(f"sqlite:///{root / f'dicts-{size}.db'}", size, _dicts),
        },
        batches=_per_size(size)[0],
        per_batch=_per_size(size)[1],
    )
    single_median, single_p97 = _single_saves(root, size, lambda: raw.save(next(raw_cycle)))
    load_times = median_seconds(
        {
            "raw_load": raw.load,
            "cold_load": lambda: uncached.load_layout("u"),
            "cached_load": lambda: managed.load_layout("u"),
        },
        batches=_per_size(size)[0],
        per_batch=_per_size(size)[1],
    )
    storage.close()
    encoding.close()
    managed.close()
    uncached.close()
    while _MANAGERS:
        _MANAGERS.pop().close()
    return {
        "backend": "sqlite",
        "widgets": size,
        "raw_save_us": times["raw_save"] * 1e6,
        "storage_write_us": times["storage_write"] * 1e6,
        "storage_write_ratio": times["storage_write"] / times["raw_save"],
        "encoding_write_ratio": times["encoding_write"] / times["raw_save"],
        "save_layout_us": times["manager_save"] * 1e6,
        "save_layout_ratio": times["manager_save"] / times["raw_save"],
        "fresh_model_ratio": times["fresh_model_save"] / times["raw_save"],
        "dict_ratio": times["dict_save"] / times["raw_save"],
        "single_save_ratio": single_median,
        "single_save_p97_ratio": single_p97,
        "cold_load_us": load_times["cold_load"] * 1e6,
        "cached_load_us": load_times["cached_load"] * 1e6,
        "cached_to_cold": load_times["cached_load"] / load_times["cold_load"],
    }


def bench_jsonfile(root: Path, size: int) -> dict[str, object]:
    documents = _bodies(size)
    encoded = [orjson.dumps(d, option=orjson.OPT_SORT_KEYS) for d in documents]
    raw_folder = root / f"raw-json-{size}"
    raw_folder.mkdir()
    storage = JSONFileStorage(root / f"json-{size}")
    encoding = JSONFileStorage(root / f"json-encoding-{size}")
    raw_cycle = itertools.cycle(encoded)

    batches, per_batch = _per_size(size)
    times = median_seconds(
        {
            "raw_save": lambda: raw_atomic_write(raw_folder, next(raw_cycle)),
            "storage_write": _writer(storage, documents, encoded=True),
            "encoding_write": _writer(encoding, documents, encoded=False),
            "manager_save": _manager_saves(
                JSONFileStorage(root / f"json-manager-{size}"), size, _edits
            ),
        },
        batches=batches,
        per_batch=per_batch,
    )
    storage.close()
    encoding.close()
    while _MANAGERS:
        _MANAGERS.pop().close()
    return {
        "backend": "jsonfile",
        "widgets": size,
        "raw_save_us": times["raw_save"] * 1e6,
        "storage_write_us": times["storage_write"] * 1e6,
        "storage_write_ratio": times["storage_write"] / times["raw_save"],
        "encoding_write_ratio": times["encoding_write"] / times["raw_save"],
        "save_layout_us": times["manager_save"] * 1e6,
        "save_layout_ratio": times["manager_save"] / times["raw_save"],
    }


def bench_postgres(size: int, server: Any) -> dict[str, object]:
    import psycopg

    documents = _bodies(size)
    encoded = [orjson.dumps(d, option=orjson.OPT_SORT_KEYS).decode() for d in documents]
    url = server.create_database()
    raw = psycopg.connect(
        host=str(server.socket_dir), user="postgres", dbname=url.split("?")[0].rsplit("/", 1)[1]
    )
    raw.execute("CREATE TABLE doc (u TEXT, l TEXT, version INT, body JSONB, PRIMARY KEY (u, l))")
    raw.execute(
        "CREATE TABLE hist (u TEXT, l TEXT, version INT, body TEXT, PRIMARY KEY (u, l, version))"
    )
    raw.execute("INSERT INTO doc VALUES ('u', 'l', 0, '{}')")
    raw.commit()
    raw_state = {"version": 0}

    def raw_save(body: str) -> None:
        with raw.transaction():
            cursor = raw.execute(
                "UPDATE doc SET body = %s::jsonb, version = version + 1 "
                "WHERE u = 'u' AND l = 'l' AND version = %s",
                (body, raw_state["version"]),
            )
            assert cursor.rowcount == 1
            raw_state["version"] += 1
            raw.execute("INSERT INTO hist VALUES ('u', 'l', %s, %s)", (raw_state["version"], body))

    raw.autocommit = True
    storage = SQLStorage(url)
    encoding = SQLStorage(server.create_database())
    raw_cycle = itertools.cycle(encoded)

    batches, per_batch = _per_size(size)
    times = median_seconds(
        {
            "raw_save": lambda: raw_save(next(raw_cycle)),
            "storage_write": _writer(storage, documents, encoded=True),
            "encoding_write": _writer(encoding, documents, encoded=False),
        },
        batches=batches,
        per_batch=per_batch,
    )
    storage.close()
    encoding.close()
    raw.close()
    return {
        "backend": "postgres",
        "widgets": size,
        "raw_save_us": times["raw_save"] * 1e6,
        "storage_write_us": times["storage_write"] * 1e6,
        "storage_write_ratio": times["storage_write"] / times["raw_save"],
        "encoding_write_ratio": times["encoding_write"] / times["raw_save"],
    }


def run() -> list[dict[str, object]]:
    """Return one row per backend and layout size."""
    from tests.postgres import start_server

    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="dashpersist-bench-") as folder:
        root = Path(folder)
        for size in SIZES:
            rows.append(bench_sqlite(root, size))
            rows.append(bench_jsonfile(root, size))
        server = start_server()
        if isinstance(server, str):
            print(f"PostgreSQL skipped: {server}")
        else:
            try:
                rows += [bench_postgres(size, server) for size in SIZES]
            finally:
                server.destroy()
    return rows


COLUMNS = [
    "backend",
    "widgets",
    "raw_save_us",
    "storage_write_us",
    "storage_write_ratio",
    "encoding_write_ratio",
    "save_layout_us",
    "save_layout_ratio",
    "fresh_model_ratio",
    "dict_ratio",
    "single_save_ratio",
    "single_save_p97_ratio",
    "cold_load_us",
    "cached_load_us",
    "cached_to_cold",
]

if __name__ == "__main__":
    print(format_table(run(), COLUMNS))

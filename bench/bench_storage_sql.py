"""SQLStorage.write on SQLite against stdlib sqlite3 doing the same transaction.

The floor is sqlite3 (WAL, ``synchronous=NORMAL``, the same tables SQLStorage creates)
running the statements SQLStorage runs: ``BEGIN IMMEDIATE``, read the current version and
checksum, update the document row (compare-and-swap), insert the history row with the
snapshot, ``COMMIT``, with the body pre-serialized and its checksum pre-computed.
SQLStorage.write also encodes the document (canonical JSON) and hashes it. A second,
leaner floor skips the read: one UPDATE and one INSERT, as in ``bench_storage.py``. Each
revision changes the layout's size, so neither side is flattered by same-size rewrites.

Run: ``.venv/bin/python bench/bench_storage_sql.py [folder]`` (default: a temp folder
beside this file, on the same disk as the checkout).
"""

from __future__ import annotations

import itertools
import sqlite3
import sys
import tempfile
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._timing import format_table, layout_document, median_seconds
from dashpersist._canonical import checksum_bytes
from dashpersist.storage.protocol import DocumentKey
from dashpersist.storage.sql import SQLStorage

SIZES = (10, 50, 500)
REVISIONS = 16
CREATED_AT = "2026-11-22T00:00:00.000000+00:00"


class RawSQLite:
    """The floor: stdlib sqlite3 on the schema SQLStorage made, the same statements."""

    def __init__(self, path: Path) -> None:
        SQLStorage(f"sqlite:///{path}").close()  # the same tables and indexes
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.version = 0
        self.checksum: str | None = None

    def save(self, body: str, digest: str, *, with_read: bool) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        if with_read:
            row = db.execute(
                "SELECT version, checksum FROM dashpersist_documents "
                "WHERE user_id = ? AND layout_id = ?",
                ("u", "default"),
            ).fetchone()
            assert row is None or row[0] == self.version
        if self.version == 0:
            db.execute(
                "INSERT INTO dashpersist_documents VALUES (?, ?, ?, ?, ?, ?, ?)",
                ("u", "default", 1, digest, 1, body, CREATED_AT),
            )
        else:
            cursor = db.execute(
                "UPDATE dashpersist_documents SET version = ?, checksum = ?, "
                "schema_version = ?, body = ?, updated_at = ? WHERE user_id = ? "
                "AND layout_id = ? AND version = ? AND checksum = ?",
                (
                    self.version + 1,
                    digest,
                    1,
                    body,
                    CREATED_AT,
                    "u",
                    "default",
                    self.version,
                    self.checksum,
                ),
            )
            assert cursor.rowcount == 1
        db.execute(
            "INSERT INTO dashpersist_versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                "u",
                "default",
                self.version + 1,
                digest,
                self.checksum,
                CREATED_AT,
                "manual",
                None,
                None,
                None,
                1,
                None,
                None,
                body,
            ),
        )
        db.execute("COMMIT")
        self.version += 1
        self.checksum = digest

    def close(self) -> None:
        self.db.close()


def measure(size: int, base: Path, synchronous: str) -> dict[str, object]:
    documents = [layout_document(size, revision) for revision in range(REVISIONS)]
    encoded = [orjson.dumps(d, option=orjson.OPT_SORT_KEYS).decode() for d in documents]
    digests = [checksum_bytes(body.encode()) for body in encoded]
    raw_full = RawSQLite(base / f"raw-full-{size}-{synchronous}.db")
    raw_lean = RawSQLite(base / f"raw-lean-{size}-{synchronous}.db")
    if synchronous != "NORMAL":
        for raw in (raw_full, raw_lean):
            raw.db.execute(f"PRAGMA synchronous={synchronous}")
    store = SQLStorage(
        f"sqlite:///{base / f'store-{size}-{synchronous}.db'}",
        synchronous=synchronous,  # type: ignore[arg-type]
    )
    key = DocumentKey("u")
    version = 0
    full_cycle, lean_cycle = itertools.cycle(range(REVISIONS)), itertools.cycle(range(REVISIONS))
    document_cycle = itertools.cycle(documents)

    def save_raw_full() -> None:
        index = next(full_cycle)
        raw_full.save(encoded[index], digests[index], with_read=True)

    def save_raw_lean() -> None:
        index = next(lean_cycle)
        raw_lean.save(encoded[index], digests[index], with_read=False)

    def save_storage() -> None:
        nonlocal version
        version = store.write(key, next(document_cycle), expected_version=version or None)

    batches, per_batch = (9, 40) if size < 500 else (7, 12)
    seconds = median_seconds(
        {"floor": save_raw_full, "lean": save_raw_lean, "storage": save_storage},
        batches=batches,
        per_batch=per_batch,
    )
    store.close()
    raw_full.close()
    raw_lean.close()
    return {
        "widgets": size,
        "synchronous": synchronous,
        "body KiB": len(encoded[-1]) / 1024,
        "floor µs": seconds["floor"] * 1e6,
        "lean floor µs": seconds["lean"] * 1e6,
        "SQLStorage µs": seconds["storage"] * 1e6,
        "ratio": seconds["storage"] / seconds["floor"],
        "ratio to lean": seconds["storage"] / seconds["lean"],
    }


def main() -> None:
    parent = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory(prefix="bench-sql-", dir=parent) as folder:
        rows = [
            measure(size, Path(folder), synchronous)
            for synchronous in ("NORMAL", "FULL")
            for size in SIZES
        ]
    columns = ["widgets", "synchronous", "body KiB", "floor µs", "lean floor µs"]
    print(format_table(rows, [*columns, "SQLStorage µs", "ratio", "ratio to lean"]))


if __name__ == "__main__":
    main()

"""Benchmark validation on the save path: `Validator.check_json` against a bare pydantic
`model_validate` and a raw SQLite save of the same layout, in the same run.

Usage: ``python bench/bench_validation.py``. Prints one row per layout size: median
microseconds of each variant (interleaved batches), and each as a share of a nominal
0.5 ms save and of the measured raw SQLite save (upsert + history row, WAL, NORMAL).
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path

import orjson

from bench._timing import format_table, layout_document, median_seconds
from dashpersist.models import Layout
from dashpersist.validation import Validator

SIZES = (50, 500)
NOMINAL_SAVE_SECONDS = 0.0005
COLUMNS = [
    "widgets",
    "pydantic µs",
    "check µs",
    "check_json unchanged µs",
    "check_json 1 changed µs",
    "raw sqlite save µs",
    "1 changed / 0.5 ms",
    "1 changed / sqlite save",
]


def raw_sqlite_save(folder: Path) -> Callable[[bytes], None]:
    """Return a function that saves a body like the storage floor of BASELINES.md."""
    connection = sqlite3.connect(folder / "floor.db", isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("CREATE TABLE doc (id TEXT PRIMARY KEY, version INT, body BLOB)")
    connection.execute("CREATE TABLE history (id TEXT, version INT, body BLOB)")
    version = [0]

    def save(body: bytes) -> None:
        version[0] += 1
        connection.execute("BEGIN IMMEDIATE")
        connection.execute(
            "INSERT INTO doc VALUES ('u', ?, ?) ON CONFLICT(id) DO UPDATE "
            "SET version = excluded.version, body = excluded.body",
            (version[0], body),
        )
        connection.execute("INSERT INTO history VALUES ('u', ?, ?)", (version[0], body))
        connection.execute("COMMIT")

    return save


def bench_size(size: int, save: Callable[[bytes], None]) -> dict[str, object]:
    """Return the row for layouts of *size* widgets."""
    validator = Validator()
    base = layout_document(size, 0)
    validator.check_json(base)  # type: ignore[arg-type]
    revisions = [layout_document(size, revision) for revision in range(1, 200)]
    body = orjson.dumps(base)
    counter = [0]

    def one_changed() -> None:
        counter[0] += 1
        validator.check_json(revisions[counter[0] % len(revisions)])  # type: ignore[arg-type]

    seconds = median_seconds(
        {
            "pydantic": lambda: Layout.model_validate(base),
            "check": lambda: validator.check(base),  # type: ignore[arg-type]
            "unchanged": lambda: validator.check_json(base),  # type: ignore[arg-type]
            "one changed": one_changed,
            "save": lambda: save(body),
        },
        per_batch=20 if size <= 50 else 4,
    )
    return {
        "widgets": size,
        "pydantic µs": seconds["pydantic"] * 1e6,
        "check µs": seconds["check"] * 1e6,
        "check_json unchanged µs": seconds["unchanged"] * 1e6,
        "check_json 1 changed µs": seconds["one changed"] * 1e6,
        "raw sqlite save µs": seconds["save"] * 1e6,
        "1 changed / 0.5 ms": f"{seconds['one changed'] / NOMINAL_SAVE_SECONDS:.0%}",
        "1 changed / sqlite save": f"{seconds['one changed'] / seconds['save']:.0%}",
    }


def run() -> list[dict[str, object]]:
    """Return one row per layout size."""
    with tempfile.TemporaryDirectory(prefix="dashpersist-bench-") as folder:
        save = raw_sqlite_save(Path(folder))
        return [bench_size(size, save) for size in SIZES]


if __name__ == "__main__":
    print(format_table(run(), COLUMNS))

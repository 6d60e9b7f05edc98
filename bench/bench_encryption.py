"""Benchmark field encryption on the save and load paths: 5 encrypted fields in a layout,
against `orjson.dumps` of the layout and a raw SQLite save, in the same run.

Usage: ``python bench/bench_encryption.py``. Prints one row per layout size: median
microseconds to encrypt (fresh, and against a previous version whose secrets are
unchanged), to decrypt, and encrypt + decrypt as a share of a nominal 0.5 ms save.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, cast

import orjson

from bench._timing import format_table, layout_document, median_seconds
from bench.bench_validation import NOMINAL_SAVE_SECONDS, raw_sqlite_save
from dashpersist.encryption import FieldEncryptor, KeyRing
from dashpersist.types import JsonObject

SIZES = (50, 500)
SECRETS = 5
COLUMNS = [
    "widgets",
    "encrypt µs",
    "encrypt vs previous µs",
    "decrypt µs",
    "orjson.dumps µs",
    "raw sqlite save µs",
    "encrypt+decrypt / 0.5 ms",
    "encrypt vs previous / sqlite save",
]


def layout_with_secrets(size: int) -> JsonObject:
    """Return a layout of *size* widgets, the first `SECRETS` holding an API key."""
    doc = cast(dict[str, Any], layout_document(size, 0))
    for index, widget in enumerate(doc["widgets"][:SECRETS]):
        widget["settings"]["api_key"] = f"sk-live-{index:04d}-" + "x" * 32
    return cast(JsonObject, doc)


def bench_size(size: int, save: Any) -> dict[str, object]:
    """Return the row for layouts of *size* widgets."""
    encryptor = FieldEncryptor(
        KeyRing({"k1": KeyRing.generate_key()}), ["widgets[*].settings.api_key"]
    )
    doc = layout_with_secrets(size)
    ids = {"user_id": "alice", "layout_id": "main"}
    sealed = encryptor.encrypt_document(doc, **ids)
    body = orjson.dumps(sealed)
    seconds = median_seconds(
        {
            "encrypt": lambda: encryptor.encrypt_document(doc, **ids),
            "previous": lambda: encryptor.encrypt_document(doc, previous=sealed, **ids),
            "decrypt": lambda: encryptor.decrypt_document(sealed, **ids),
            "dumps": lambda: orjson.dumps(doc),
            "save": lambda: save(body),
        },
        per_batch=20 if size <= 50 else 4,
    )
    return {
        "widgets": size,
        "encrypt µs": seconds["encrypt"] * 1e6,
        "encrypt vs previous µs": seconds["previous"] * 1e6,
        "decrypt µs": seconds["decrypt"] * 1e6,
        "orjson.dumps µs": seconds["dumps"] * 1e6,
        "raw sqlite save µs": seconds["save"] * 1e6,
        "encrypt+decrypt / 0.5 ms": (
            f"{(seconds['encrypt'] + seconds['decrypt']) / NOMINAL_SAVE_SECONDS:.0%}"
        ),
        "encrypt vs previous / sqlite save": f"{seconds['previous'] / seconds['save']:.0%}",
    }


def run() -> list[dict[str, object]]:
    """Return one row per layout size."""
    with tempfile.TemporaryDirectory(prefix="dashpersist-bench-") as folder:
        save = raw_sqlite_save(Path(folder))
        return [bench_size(size, save) for size in SIZES]


if __name__ == "__main__":
    print(format_table(run(), COLUMNS))

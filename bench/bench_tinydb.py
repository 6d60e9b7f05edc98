"""The JSON folder against TinyDB, the single-file JSON store many small apps start with.

1,000 users' 50-widget layouts: TinyDB keeps them in one file and rewrites it in place on
every save (not crash-safe); dashpersist's JSON folder writes one file per document with
temp + fsync + rename. Both measured in the same run, saving one user's layout.
"""

from __future__ import annotations

import itertools
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._timing import format_table, layout_document, median_seconds
from dashpersist import DocumentKey
from dashpersist.storage.jsonfile import JSONFileStorage

USERS = 1000


def run() -> list[dict[str, object]]:
    """Return one row: µs per save for TinyDB and the JSON folder, and their ratio."""
    from tinydb import Query, TinyDB

    documents = [layout_document(50, revision) for revision in range(16)]
    with tempfile.TemporaryDirectory(prefix="dashpersist-tinydb-") as folder:
        root = Path(folder)
        tiny = TinyDB(root / "tiny.json")
        tiny.insert_multiple({"user": f"u{n}", "layout": documents[0]} for n in range(USERS))
        storage = JSONFileStorage(root / "layouts")
        versions: dict[str, int] = {}
        for n in range(USERS):
            versions[f"u{n}"] = storage.write(
                DocumentKey(f"u{n}"), documents[0], expected_version=None
            )
        user = Query()
        cycle = itertools.cycle(documents[1:])

        def folder_save() -> None:
            versions["u500"] = storage.write(
                DocumentKey("u500"), next(cycle), expected_version=versions["u500"]
            )

        times = median_seconds(
            {
                "tinydb": lambda: tiny.update({"layout": next(cycle)}, user.user == "u500"),
                "jsonfolder": folder_save,
            },
            batches=5,
            per_batch=3,
        )
        tiny.close()
        storage.close()
    return [
        {
            "users": USERS,
            "widgets": 50,
            "tinydb_us": times["tinydb"] * 1e6,
            "jsonfolder_us": times["jsonfolder"] * 1e6,
            "jsonfolder_to_tinydb": times["jsonfolder"] / times["tinydb"],
        }
    ]


if __name__ == "__main__":
    rows = run()
    print(format_table(rows, list(rows[0])))
